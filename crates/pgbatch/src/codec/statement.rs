//! Rendering a Diesel statement into an owned, fully encoded statement.
//!
//! A statement is rendered the moment it is pushed: SQL text from `QueryFragment::to_sql`,
//! binary binds and their type OIDs from `collect_binds`. Nothing of the Diesel value is
//! kept, so queries that borrow (`values(&new)`) can be pushed and the batch replayed.
//!
//! The SQL of a query type with a static query id that Diesel deems safe to cache is the
//! same for every value of that type (diesel's own prepared-statement cache relies on
//! this): it is rendered and checked once per process, and shared.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use diesel::pg::{Pg, PgQueryBuilder};
use diesel::query_builder::{QueryBuilder, QueryFragment, QueryId};

use super::binds::{self, Binds};
use super::refusal;
use crate::error::BuildError;

/// The largest number of binds the PostgreSQL wire protocol can carry in one statement.
pub const MAX_BINDS: usize = u16::MAX as usize;

/// The largest value the protocol can carry in one bind (its length is an `i32`).
const MAX_BIND_BYTES: usize = i32::MAX as usize;

/// SQL text that passed the checks a batch makes before sending.
#[derive(Debug, Clone)]
pub(crate) struct CheckedSql {
    pub(crate) text: Arc<str>,
    /// Whether the statement may leave state in the session that outlives its
    /// transaction (it calls `set_config`, a session advisory lock, ...): the connection
    /// is then reset after the batch.
    pub(crate) touches_session: bool,
    /// Whether the statement cache may keep it: every statement of a batch (the cache is
    /// keyed by the SQL text and bounded, so SQL that varies costs only its own entries); a
    /// diesel-async query only when Diesel says it is worth keeping
    /// (`is_safe_to_cache_prepared`: not a `sql_query`, an `UPDATE` or an `IN` list whose
    /// length varies), so that what is kept, and its `CacheQuery` events, match
    /// `AsyncPgConnection`'s.
    pub(crate) cacheable: bool,
}

impl CheckedSql {
    /// Checks SQL text: no NUL byte, nothing that moves the transaction's boundaries or
    /// changes the session (see [`refusal`]).
    pub(crate) fn new(sql: &str, cacheable: bool) -> Result<Self, BuildError> {
        if sql.contains('\0') {
            return Err(BuildError::InvalidSql { reason: "the SQL text contains a NUL byte" });
        }
        let touches_session = refusal::check(sql)?;
        Ok(CheckedSql { text: Arc::from(sql), touches_session, cacheable })
    }

    /// SQL pgbatch wrote around this one (a guard): checked by construction.
    pub(crate) fn wrapped(&self, sql: String) -> Self {
        CheckedSql { text: Arc::from(sql), touches_session: self.touches_session, cacheable: self.cacheable }
    }
}

/// Checked SQL by query type, for the types whose SQL never changes.
static SQL_BY_TYPE: RwLock<Option<HashMap<TypeId, CheckedSql>>> = RwLock::new(None);

/// A statement rendered to SQL and encoded binds, ready to be sent on any connection.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: CheckedSql,
    pub(crate) binds: Binds,
}

impl Statement {
    /// Renders a Diesel statement. Fails, without side effects, when Diesel cannot render
    /// it, a bind cannot be encoded, it has more binds than the protocol can carry, or it is
    /// not allowed inside the batch's transaction.
    pub(crate) fn render<Q>(query: &Q) -> Result<Self, BuildError>
    where
        Q: QueryFragment<Pg> + QueryId + ?Sized,
    {
        let sql = match Q::query_id() {
            Some(id) if query.is_safe_to_cache_prepared(&Pg).unwrap_or(false) => {
                let cached = SQL_BY_TYPE.read().ok().and_then(|cache| cache.as_ref()?.get(&id).cloned());
                match cached {
                    Some(sql) => sql,
                    None => {
                        let sql = CheckedSql::new(&render_sql(query)?, true)?;
                        if let Ok(mut cache) = SQL_BY_TYPE.write() {
                            cache.get_or_insert_with(HashMap::new).insert(id, sql.clone());
                        }
                        sql
                    }
                }
            }
            _ => CheckedSql::new(&render_sql(query)?, true)?,
        };
        Self::from_parts(sql, binds::collect(query)?)
    }

    /// Renders a statement whose SQL is not worth caching: a guard's query, which pgbatch
    /// wraps in SQL of its own.
    pub(crate) fn render_uncached<Q>(query: &Q) -> Result<Self, BuildError>
    where
        Q: QueryFragment<Pg> + ?Sized,
    {
        Self::from_parts(CheckedSql::new(&render_sql(query)?, true)?, binds::collect(query)?)
    }

    /// Renders a statement the caller runs on its own (a diesel-async query), not inside
    /// a batch: none of a batch's checks on the SQL apply, only the protocol's limits.
    #[cfg(feature = "diesel-async")]
    pub(crate) fn render_for_caller<Q>(query: &Q) -> Result<Self, BuildError>
    where
        Q: QueryFragment<Pg> + ?Sized,
    {
        let sql = render_sql(query)?;
        if sql.contains('\0') {
            return Err(BuildError::InvalidSql { reason: "the SQL text contains a NUL byte" });
        }
        let cacheable = query.is_safe_to_cache_prepared(&Pg).unwrap_or(false);
        let sql = CheckedSql { text: Arc::from(sql), touches_session: true, cacheable };
        Self::from_parts(sql, binds::collect(query)?)
    }

    /// A statement of checked SQL and the binds collected for it.
    fn from_parts(sql: CheckedSql, binds: Binds) -> Result<Self, BuildError> {
        let count = binds.values.len();
        if count > MAX_BINDS {
            return Err(BuildError::TooManyBinds { count, max: MAX_BINDS });
        }
        if let Some(bind) = binds.values.iter().position(|b| b.as_ref().is_some_and(|b| b.len() > MAX_BIND_BYTES)) {
            return Err(BuildError::Encode {
                bind,
                source: "the encoded value is larger than the protocol's 2 GiB limit".into(),
            });
        }
        Ok(Statement { sql, binds })
    }
}

fn render_sql<Q>(query: &Q) -> Result<String, BuildError>
where
    Q: QueryFragment<Pg> + ?Sized,
{
    let mut builder = PgQueryBuilder::default();
    query.to_sql(&mut builder, &Pg).map_err(|source| BuildError::Render { source })?;
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{Integer, Text};

    #[test]
    fn renders_sql_binds_and_types() {
        let query = diesel::sql_query("SELECT $1 + 1, $2").bind::<Integer, _>(41).bind::<Text, _>("x");
        let statement = Statement::render(&query).unwrap();
        assert_eq!(&*statement.sql.text, "SELECT $1 + 1, $2");
        assert_eq!(statement.binds.values, vec![Some(41i32.to_be_bytes().to_vec()), Some(b"x".to_vec())]);
        assert_eq!(statement.binds.oids, vec![23, 25]);
        assert!(statement.binds.is_portable());
    }

    #[test]
    fn a_static_query_type_is_rendered_once() {
        diesel::table! { t (id) { id -> Int8, name -> Text } }
        use diesel::prelude::*;
        let insert =
            |id: i64, name: &str| diesel::insert_into(t::table).values((t::id.eq(id), t::name.eq(name.to_owned())));
        let first = Statement::render(&insert(1, "a")).unwrap();
        let second = Statement::render(&insert(2, "b")).unwrap();
        assert!(Arc::ptr_eq(&first.sql.text, &second.sql.text), "the same type shares its SQL");
        assert_ne!(first.binds.values, second.binds.values, "binds are collected every time");
        let other = Statement::render(&t::table.find(1).select(t::name)).unwrap();
        assert!(!Arc::ptr_eq(&first.sql.text, &other.sql.text));
        // Diesel marks UPDATE as unsafe to cache (a changeset can skip columns): rendered
        // each time.
        let update = |id: i64| diesel::update(t::table.find(id)).set(t::name.eq("x"));
        let (a, b) = (Statement::render(&update(1)).unwrap(), Statement::render(&update(2)).unwrap());
        assert!(!Arc::ptr_eq(&a.sql.text, &b.sql.text));
    }

    #[test]
    fn refuses_transaction_control() {
        let err = Statement::render(&diesel::sql_query("COMMIT")).unwrap_err();
        assert!(matches!(err, BuildError::NotAllowedInTransaction { ref keywords, .. } if keywords == "COMMIT"));
    }
}
