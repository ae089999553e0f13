//! A small service in the shape of scenario C1: create a project *and* count it against
//! its tenant's quota, both or neither, in one round trip.
//!
//! Its reads are ordinary diesel-async queries and its writes are batches, on one pool:
//! pgbatch's connection is a diesel-async connection (feature `diesel-async`).
//!
//! Its tests (`tests/projects.rs`) show how a service tests itself with `pgbatch-testing`:
//! a database of its own per test, the schema from the service's Diesel migrations, and a
//! pool ready to use. Run them with `cargo test -p quota-service`.

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use pgbatch::{Batch, Cause, Error};
use uuid::Uuid;

#[allow(missing_docs)]
pub mod schema {
    diesel::table! {
        quota (tenant) {
            tenant -> Text,
            projects_max -> Int8,
            projects_used -> Int8,
        }
    }

    diesel::table! {
        project (id) {
            id -> Uuid,
            tenant -> Text,
            name -> Text,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(quota, project);
}

use schema::{project, quota};

/// Why a project was not created. Nothing was written in any of these cases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateProjectError {
    /// The tenant has used all its projects: raise `projects_max` or delete one.
    #[error("tenant {0} has no project left in its quota")]
    QuotaExhausted(String),
    /// The tenant already has a project of this name: pick another name.
    #[error("tenant {tenant} already has a project named {name}")]
    NameTaken {
        /// The tenant.
        tenant: String,
        /// The name asked for.
        name: String,
    },
    /// The database failed otherwise; the error says whether anything may have
    /// committed ([`Error::may_have_committed`]).
    #[error(transparent)]
    Database(Error),
}

/// Creates project `name` for `tenant` and counts it in the tenant's quota, atomically.
///
/// # Errors
///
/// [`CreateProjectError::QuotaExhausted`] and [`CreateProjectError::NameTaken`] leave
/// everything as it was; [`CreateProjectError::Database`] for anything else.
pub async fn create_project(pool: &pgbatch::Pool, tenant: &str, name: &str) -> Result<Uuid, CreateProjectError> {
    let id = Uuid::new_v4();
    let mut batch = Batch::new();
    batch
        .push(
            diesel::update(quota::table.find(tenant.to_owned()).filter(quota::projects_used.lt(quota::projects_max)))
                .set(quota::projects_used.eq(quota::projects_used + 1)),
        )
        .label("count the project")
        .expect_rows(1);
    batch
        .push(diesel::insert_into(project::table).values((
            project::id.eq(id),
            project::tenant.eq(tenant.to_owned()),
            project::name.eq(name.to_owned()),
        )))
        .label("insert the project");
    let error = match batch.run(pool).await {
        Ok(_) => return Ok(id),
        Err(error) => error,
    };
    Err(match error.cause() {
        Some(Cause::GuardFailed(_)) => CreateProjectError::QuotaExhausted(tenant.to_owned()),
        Some(Cause::UniqueViolation(violation)) if violation.constraint() == Some("project_tenant_name_key") => {
            CreateProjectError::NameTaken { tenant: tenant.to_owned(), name: name.to_owned() }
        }
        _ => CreateProjectError::Database(error),
    })
}

/// The projects of `tenant`, by name: a diesel-async query on a connection of the same pool
/// the batches use.
///
/// # Errors
///
/// [`ReadError::Pool`] when no connection can be had, [`ReadError::Query`] when the query
/// fails.
pub async fn list_projects(pool: &pgbatch::Pool, tenant: &str) -> Result<Vec<(Uuid, String)>, ReadError> {
    let mut connection = pool.get().await.map_err(|error| ReadError::Pool(error.to_string()))?;
    Ok(project::table
        .filter(project::tenant.eq(tenant))
        .order(project::name)
        .select((project::id, project::name))
        .load(&mut *connection)
        .await?)
}

/// How many more projects `tenant` may create.
///
/// # Errors
///
/// As for [`list_projects`]; `diesel::result::Error::NotFound` inside
/// [`ReadError::Query`] for an unknown tenant.
pub async fn projects_left(pool: &pgbatch::Pool, tenant: &str) -> Result<i64, ReadError> {
    let mut connection = pool.get().await.map_err(|error| ReadError::Pool(error.to_string()))?;
    Ok(quota::table.find(tenant).select(quota::projects_max - quota::projects_used).first(&mut *connection).await?)
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No pooled connection could be had (the database unreachable, the pool exhausted):
    /// try again later.
    #[error("no database connection: {0}")]
    Pool(String),
    /// The query failed.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}
