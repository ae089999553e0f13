//! A small service in the shape of scenario C1: create a project *and* count it against
//! its tenant's quota, both or neither, in one round trip.
//!
//! Its reads are ordinary diesel-async queries and its writes are batches, on one pool:
//! pgbatch's connection is a diesel-async connection (feature `diesel-async`).
//!
//! [`http`] serves it over HTTP (`cargo run -p quota-service`), with `Idempotency-Key`
//! carried into the batch's idempotency key, so that a request retried after a lost answer
//! applies once.
//!
//! Its tests (`tests/projects.rs`) show how a service tests itself with `pgbatch-testing`:
//! a database of its own per test, the schema from the service's Diesel migrations, and a
//! pool ready to use. Run them with `cargo test -p quota-service`.

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use pgbatch::idempotency::Resolution;
use pgbatch::{Acquire, Batch, Cause, Error, IdempotencyKey};
use uuid::Uuid;

pub mod http;

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
    /// The project an earlier request with the same key created could not be read back:
    /// it was created, so retry the request with the same key.
    #[error("the project an earlier request created could not be read: {0}")]
    Read(diesel::result::Error),
}

/// Creates project `name` for `tenant` and counts it in the tenant's quota, atomically.
///
/// # Errors
///
/// [`CreateProjectError::QuotaExhausted`] and [`CreateProjectError::NameTaken`] leave
/// everything as it was; [`CreateProjectError::Database`] for anything else.
pub async fn create_project(pool: &pgbatch::Pool, tenant: &str, name: &str) -> Result<Uuid, CreateProjectError> {
    let id = Uuid::new_v4();
    run_create(pool, tenant, name, id, None).await
}

/// What [`create_project_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Created {
    /// The project's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// True when an earlier request with the same key had created it: this one applied
    /// nothing, and answers with what that one made.
    pub replayed: bool,
}

/// Creates project `name` for `tenant` once per `request_key` (a client's
/// `Idempotency-Key`): a request retried after its answer was lost, or after an unknown
/// outcome, gets the project the first one created, and the quota counts it once.
///
/// The project's id is derived from the tenant and the key, and the batch carries the key
/// as its idempotency key: an unknown outcome is settled by the pool (the project returned
/// when the batch had committed), and a retry of a committed request is refused by the
/// key's marker and answered from the database. A key a resolution fenced (an earlier
/// request with it did not commit) is resolved again and the batch run with the key the
/// resolution returns.
///
/// # Errors
///
/// As [`create_project`]; [`CreateProjectError::Database`] with
/// [`Error::OutcomeUnknown`] when the outcome could not be settled (no connection to settle
/// on): retry with the same key.
pub async fn create_project_once(
    pool: &pgbatch::Pool,
    tenant: &str,
    name: &str,
    request_key: &str,
) -> Result<Created, CreateProjectError> {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{tenant}\0{request_key}").as_bytes());
    let key = IdempotencyKey::new(format!("create-project/{tenant}/{request_key}"));
    let created = match run_create(pool, tenant, name, id, Some(key.clone())).await {
        // A resolution (this service's own settlement when it could not replay, or an
        // operator's) found an earlier request with this key not committed and fenced the key:
        // only the key it hands back may still commit, once.
        Err(CreateProjectError::Database(fenced @ Error::KeyFenced { .. })) => {
            match pgbatch::idempotency::resolve(pool, &key).await.map_err(CreateProjectError::Database)? {
                Resolution::NotCommitted { replay } => run_create(pool, tenant, name, id, Some(replay)).await,
                Resolution::Committed { .. } => return created_earlier(pool, id).await,
                // A resolution this service does not know yet: the fence stands.
                _ => Err(CreateProjectError::Database(fenced)),
            }
        }
        other => other,
    };
    match created {
        Ok(id) => Ok(Created { id, name: name.to_owned(), replayed: false }),
        Err(CreateProjectError::Database(Error::AlreadyCommitted(_))) => created_earlier(pool, id).await,
        Err(error) => Err(error),
    }
}

/// The project `id` an earlier request with the same key created.
async fn created_earlier(pool: &pgbatch::Pool, id: Uuid) -> Result<Created, CreateProjectError> {
    let mut connection = pool.acquire().await.map_err(|error| CreateProjectError::Database(Error::Pool(error)))?;
    let name = project::table
        .find(id)
        .select(project::name)
        .first::<String>(&mut *connection)
        .await
        .map_err(CreateProjectError::Read)?;
    Ok(Created { id, name, replayed: true })
}

/// The batch that counts project `id` in `tenant`'s quota and inserts it.
async fn run_create(
    pool: &pgbatch::Pool,
    tenant: &str,
    name: &str,
    id: Uuid,
    key: Option<IdempotencyKey>,
) -> Result<Uuid, CreateProjectError> {
    let mut batch = Batch::new();
    if let Some(key) = key {
        batch.idempotency_key(key);
    }
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
