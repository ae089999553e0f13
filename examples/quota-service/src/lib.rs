//! A small service in the shape of scenario C1: create a project *and* count it against
//! its tenant's quota, both or neither, in one round trip.
//!
//! Its tests (`tests/projects.rs`) show how a service tests itself with `pgbatch-testing`:
//! a database of its own per test, the schema from the service's Diesel migrations, and a
//! pool ready to use. Run them with `cargo test -p quota-service`.

use diesel::prelude::*;
use pgbatch::{Batch, Cause, ConnectionManager, Error};
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
pub async fn create_project(
    pool: &bb8::Pool<ConnectionManager>,
    tenant: &str,
    name: &str,
) -> Result<Uuid, CreateProjectError> {
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
