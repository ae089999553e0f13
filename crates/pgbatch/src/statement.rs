//! Rendering a Diesel statement into an owned, fully encoded statement.
//!
//! A statement is rendered the moment it is pushed: SQL text from `QueryFragment::to_sql`,
//! binary binds and their type metadata from `collect_binds`. Nothing of the Diesel value is
//! kept, so queries that borrow (`values(&new)`) can be pushed and the batch replayed.
//!
//! Custom types (`#[diesel(postgres_type(name = "..."))]`) have no OID until a connection
//! tells it. Following diesel-async, binds are collected twice: once with a constant fake
//! OID and once with a distinct fake OID per type; where the two outputs differ, the bytes
//! hold an OID (as array and record encodings do) and are patched once the real OIDs are
//! known on a connection.

use std::collections::{HashMap, HashSet};

use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{QueryBuilder, QueryFragment};
use tokio_postgres::types::{Kind, Type};

use crate::error::BuildError;
use crate::sql_shape;

/// The largest number of binds the PostgreSQL wire protocol can carry in one statement.
pub const MAX_BINDS: usize = u16::MAX as usize;

/// A custom type's name, as Diesel asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TypeName {
    pub(crate) schema: Option<String>,
    pub(crate) name: String,
}

impl TypeName {
    /// The type as SQL: a quoted, optionally schema-qualified identifier.
    pub(crate) fn to_sql(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.name)),
            None => quote(&self.name),
        }
    }
}

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A bind whose type is a custom type, resolved per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CustomBind {
    pub(crate) bind: usize,
    pub(crate) type_index: usize,
    /// Whether the bind is an array of the custom type.
    pub(crate) array: bool,
}

/// Four bytes inside a bind's encoding that hold a custom type's OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OidPatch {
    pub(crate) bind: usize,
    pub(crate) offset: usize,
    pub(crate) type_index: usize,
    pub(crate) array: bool,
}

/// A statement rendered to SQL and encoded binds, ready to be sent on any connection.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) binds: Vec<Option<Vec<u8>>>,
    /// Each bind's type; a placeholder where `custom_binds` names a custom type.
    pub(crate) types: Vec<Type>,
    /// The custom types this statement's binds use; `CustomBind` and `OidPatch` index it.
    pub(crate) custom_types: Vec<TypeName>,
    pub(crate) custom_binds: Vec<CustomBind>,
    pub(crate) oid_patches: Vec<OidPatch>,
}

impl Statement {
    /// Renders a Diesel statement. Fails, without side effects, when Diesel cannot render
    /// it, a bind cannot be encoded, it has more binds than the protocol can carry, or it is
    /// not allowed inside the batch's transaction.
    pub(crate) fn render<Q>(query: &Q) -> Result<Self, BuildError>
    where
        Q: QueryFragment<Pg> + ?Sized,
    {
        let mut builder = PgQueryBuilder::default();
        query.to_sql(&mut builder, &Pg).map_err(|source| BuildError::Render { source })?;
        let sql = builder.finish();
        if sql.contains('\0') {
            return Err(BuildError::InvalidSql { reason: "the SQL text contains a NUL byte" });
        }
        if let Some((keywords, reason)) = sql_shape::refusal(&sql) {
            return Err(BuildError::NotAllowedInTransaction { keywords, reason });
        }
        let binds = collect_binds(query)?;
        let bind_count = binds.binds.len();
        if bind_count > MAX_BINDS {
            return Err(BuildError::TooManyBinds { count: bind_count });
        }
        if let Some(bind) = binds.binds.iter().position(|b| b.as_ref().is_some_and(|b| b.len() > i32::MAX as usize)) {
            return Err(BuildError::Encode {
                bind,
                source: "the encoded value is larger than the protocol's 2 GiB limit".into(),
            });
        }
        Ok(Statement {
            sql,
            binds: binds.binds,
            types: binds.types,
            custom_types: binds.custom_types,
            custom_binds: binds.custom_binds,
            oid_patches: binds.oid_patches,
        })
    }
}

struct CollectedBinds {
    binds: Vec<Option<Vec<u8>>>,
    types: Vec<Type>,
    custom_types: Vec<TypeName>,
    custom_binds: Vec<CustomBind>,
    oid_patches: Vec<OidPatch>,
}

/// The OID written for every custom type in the first collection pass.
const FAKE_OID: u32 = 0;

fn collect_binds<Q>(query: &Q) -> Result<CollectedBinds, BuildError>
where
    Q: QueryFragment<Pg> + ?Sized,
{
    let mut constant = RecordingLookup::new(|_| (FAKE_OID, FAKE_OID));
    let first = collect_with(query, &mut constant)?;
    if constant.names.is_empty() {
        let types = first.metadata.iter().map(|m| known_type(oid_of(m))).collect();
        return Ok(CollectedBinds {
            binds: first.binds,
            types,
            custom_types: Vec::new(),
            custom_binds: Vec::new(),
            oid_patches: Vec::new(),
        });
    }

    // Distinct fake OIDs above every OID Diesel reported, so none can collide with a real one.
    let floor = first.metadata.iter().flat_map(|m| [oid_of(m), array_oid_of(m)]).max().unwrap_or(0);
    let mut distinct = RecordingLookup::new(move |index| {
        let oid = floor + 2 + 2 * index as u32;
        (oid, oid + 1)
    });
    let second = collect_with(query, &mut distinct)?;
    let fake: HashMap<u32, (usize, bool)> = (0..distinct.names.len())
        .flat_map(|index| {
            let (oid, array_oid) = (distinct.generate)(index);
            [(oid, (index, false)), (array_oid, (index, true))]
        })
        .collect();

    let types = second.metadata.iter().map(|m| known_type(oid_of(m))).collect();
    let custom_binds = second
        .metadata
        .iter()
        .enumerate()
        .filter_map(|(bind, m)| fake.get(&oid_of(m)).map(|&(type_index, array)| CustomBind { bind, type_index, array }))
        .collect();
    let fake_oids: HashSet<u32> = fake.keys().copied().collect();
    let oid_patches = first
        .binds
        .iter()
        .zip(&first.metadata)
        .zip(&second.binds)
        .enumerate()
        // Only a custom type's own encoding can embed a custom OID (arrays, records).
        .filter(|(_, ((_, metadata), _))| oid_of(metadata) == FAKE_OID)
        .flat_map(|(bind, ((constant_bytes, _), distinct_bytes))| {
            let constant_bytes = constant_bytes.as_deref().unwrap_or_default();
            let distinct_bytes = distinct_bytes.as_deref().unwrap_or_default();
            let fake = &fake;
            let fake_oids = &fake_oids;
            constant_bytes.windows(4).zip(distinct_bytes.windows(4)).enumerate().filter_map(move |(offset, (c, d))| {
                let d = u32::from_be_bytes(d.try_into().expect("windows of four bytes"));
                (c == FAKE_OID.to_be_bytes() && fake_oids.contains(&d)).then(|| {
                    let (type_index, array) = fake[&d];
                    OidPatch { bind, offset, type_index, array }
                })
            })
        })
        .collect();
    Ok(CollectedBinds { binds: second.binds, types, custom_types: distinct.names, custom_binds, oid_patches })
}

fn collect_with<Q, F>(query: &Q, lookup: &mut RecordingLookup<F>) -> Result<RawBytesBindCollector<Pg>, BuildError>
where
    Q: QueryFragment<Pg> + ?Sized,
    F: FnMut(usize) -> (u32, u32) + 'static,
{
    let mut collector = RawBytesBindCollector::<Pg>::new();
    query
        .collect_binds(&mut collector, lookup, &Pg)
        .map_err(|source| BuildError::Encode { bind: collector.binds.len(), source: Box::new(source) })?;
    Ok(collector)
}

/// The tokio-postgres type for an OID. Only the OID is sent, so an OID tokio-postgres does
/// not know (or a custom type's placeholder) gets a nameless type.
fn known_type(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| Type::new(String::new(), oid, Kind::Simple, String::new()))
}

/// Metadata produced by `RecordingLookup` or by Diesel's static types always has an OID.
fn oid_of(metadata: &PgTypeMetadata) -> u32 {
    metadata.oid().unwrap_or(FAKE_OID)
}

fn array_oid_of(metadata: &PgTypeMetadata) -> u32 {
    metadata.array_oid().unwrap_or(FAKE_OID)
}

/// A metadata lookup that answers with generated OIDs and records the names asked for.
struct RecordingLookup<F> {
    names: Vec<TypeName>,
    generate: F,
}

impl<F: FnMut(usize) -> (u32, u32)> RecordingLookup<F> {
    fn new(generate: F) -> Self {
        RecordingLookup { names: Vec::new(), generate }
    }
}

impl<F: FnMut(usize) -> (u32, u32) + 'static> PgMetadataLookup for RecordingLookup<F> {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        let name = TypeName { schema: schema.map(str::to_owned), name: type_name.to_owned() };
        let index = match self.names.iter().position(|n| *n == name) {
            Some(index) => index,
            None => {
                self.names.push(name);
                self.names.len() - 1
            }
        };
        let (oid, array_oid) = (self.generate)(index);
        PgTypeMetadata::new(oid, array_oid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{Integer, Text};

    #[test]
    fn renders_sql_binds_and_types() {
        let query = diesel::sql_query("SELECT $1 + 1, $2").bind::<Integer, _>(41).bind::<Text, _>("x");
        let statement = Statement::render(&query).unwrap();
        assert_eq!(statement.sql, "SELECT $1 + 1, $2");
        assert_eq!(statement.binds, vec![Some(41i32.to_be_bytes().to_vec()), Some(b"x".to_vec())]);
        assert_eq!(statement.types, vec![Type::INT4, Type::TEXT]);
    }

    #[test]
    fn refuses_transaction_control() {
        let err = Statement::render(&diesel::sql_query("COMMIT")).unwrap_err();
        assert!(matches!(err, BuildError::NotAllowedInTransaction { ref keywords, .. } if keywords == "COMMIT"));
    }

    #[test]
    fn quotes_type_names() {
        let name = TypeName { schema: Some("my schema".into()), name: "we\"ird".into() };
        assert_eq!(name.to_sql(), r#""my schema"."we""ird""#);
    }
}
