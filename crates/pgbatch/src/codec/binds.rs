//! Collecting a Diesel statement's binds in PostgreSQL's binary format, custom types
//! included.
//!
//! Custom types (`#[diesel(postgres_type(name = "..."))]`) have no OID until a connection
//! tells it. Following diesel-async, binds are collected twice: once with a constant fake
//! OID and once with a distinct fake OID per type; where the two outputs differ, the bytes
//! hold an OID (as array and record encodings do) and are patched once the real OIDs are
//! known on a connection.

use std::collections::{HashMap, HashSet};

use diesel::pg::{Pg, PgMetadataLookup, PgTypeMetadata};
use diesel::query_builder::QueryFragment;
use diesel::query_builder::bind_collector::RawBytesBindCollector;

use crate::error::BuildError;

/// A custom type's name, as Diesel asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TypeName {
    pub(crate) schema: Option<String>,
    pub(crate) name: String,
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

/// A statement's binds: their bytes (`None` is SQL `NULL`) and type OIDs, and where
/// custom types need a connection's OIDs.
#[derive(Debug, Clone)]
pub(crate) struct Binds {
    pub(crate) values: Vec<Option<Vec<u8>>>,
    /// Each bind's type OID; `0` where a custom type's goes.
    pub(crate) oids: Vec<u32>,
    /// The custom types the binds use, if any (rarely: kept out of line).
    pub(crate) custom: Option<Box<CustomTypes>>,
}

/// The custom types a statement's binds use, and where their OIDs go.
#[derive(Debug, Clone)]
pub(crate) struct CustomTypes {
    /// The types; `CustomBind` and `OidPatch` index them.
    names: Vec<TypeName>,
    binds: Vec<CustomBind>,
    patches: Vec<OidPatch>,
}

impl Binds {
    /// Whether the binds can be sent as they are, without a connection's custom OIDs.
    pub(crate) fn is_portable(&self) -> bool {
        self.custom.is_none()
    }

    /// The custom types the binds use.
    pub(crate) fn custom_types(&self) -> &[TypeName] {
        self.custom.as_ref().map_or(&[], |custom| &custom.names)
    }

    /// The OIDs and values to send on a connection that knows each custom type's
    /// `(oid, array oid)` through `custom`.
    pub(crate) fn resolved(
        &self,
        mut oids_of: impl FnMut(&TypeName) -> (u32, u32),
    ) -> (Vec<u32>, Vec<Option<Vec<u8>>>) {
        let (mut oids, mut values) = (self.oids.clone(), self.values.clone());
        let Some(custom) = &self.custom else { return (oids, values) };
        let mut oid_of = |type_index: usize, array: bool| {
            let (oid, array_oid) = oids_of(&custom.names[type_index]);
            if array { array_oid } else { oid }
        };
        for bind in &custom.binds {
            oids[bind.bind] = oid_of(bind.type_index, bind.array);
        }
        for patch in &custom.patches {
            let oid = oid_of(patch.type_index, patch.array);
            if let Some(bytes) = values[patch.bind].as_mut() {
                bytes[patch.offset..patch.offset + 4].copy_from_slice(&oid.to_be_bytes());
            }
        }
        (oids, values)
    }
}

/// The OID written for every custom type in the first collection pass.
const FAKE_OID: u32 = 0;

/// Collects `query`'s binds.
pub(crate) fn collect<Q>(query: &Q) -> Result<Binds, BuildError>
where
    Q: QueryFragment<Pg> + ?Sized,
{
    let mut constant = RecordingLookup::new(|_| (FAKE_OID, FAKE_OID));
    let first = collect_with(query, &mut constant)?;
    if constant.names.is_empty() {
        let oids = first.metadata.iter().map(oid_of).collect();
        return Ok(Binds { values: first.binds, oids, custom: None });
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

    let custom_binds: Vec<CustomBind> = second
        .metadata
        .iter()
        .enumerate()
        .filter_map(|(bind, m)| fake.get(&oid_of(m)).map(|&(type_index, array)| CustomBind { bind, type_index, array }))
        .collect();
    let mut oids: Vec<u32> = second.metadata.iter().map(oid_of).collect();
    for bind in &custom_binds {
        oids[bind.bind] = FAKE_OID;
    }
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
    let custom = CustomTypes { names: distinct.names, binds: custom_binds, patches: oid_patches };
    Ok(Binds { values: second.binds, oids, custom: Some(Box::new(custom)) })
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
