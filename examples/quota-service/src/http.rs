//! The service over HTTP, with axum (tokio's own web framework: the service already runs on
//! tokio, and a router is all it needs; dropshot, which Oxide's services use, adds an OpenAPI
//! document that this example has no client for).
//!
//! | request | answer |
//! |---|---|
//! | `PUT /tenants/{tenant}` `{"projects_max": 3}` | `204`: the tenant's quota, set |
//! | `POST /tenants/{tenant}/projects` `{"name": "web"}`, optional `Idempotency-Key` | `201` `{"id", "name", "replayed"}`; `409` the name is taken; `422` the quota is used up; `503` with `Retry-After` when the outcome is unknown or the database unreachable; `400` a body that is not this JSON |
//! | `GET /tenants/{tenant}/projects` | `200` `[{"id", "name"}]` (diesel-async reads on the same pool) |
//! | `GET /metrics` | pgbatch's metrics (and any other), in Prometheus's text format |
//!
//! **Idempotency.** With an `Idempotency-Key`, the batch carries the key: a request whose
//! database connection was lost after `COMMIT` is settled through it (answered `201` when it
//! had committed), and a retry with the same key after a `503` or a lost answer is answered
//! with the project the first request created (`"replayed": true`), counted once. Without a
//! key, a `503` means the project may or may not exist: retrying may meet `409` (it did) or
//! create it (it did not); the client cannot tell which run made it.

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use metrics_exporter_prometheus::PrometheusHandle;
use pgbatch::Error;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CreateProjectError, ReadError, create_project, create_project_once, list_projects};

/// The header a client names its request with.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the handlers share.
#[derive(Clone)]
pub struct Service {
    pool: pgbatch::Pool,
    metrics: Option<PrometheusHandle>,
}

impl Service {
    /// A service on `pool`; `metrics` renders `/metrics` (none: `404`).
    pub fn new(pool: pgbatch::Pool, metrics: Option<PrometheusHandle>) -> Self {
        Service { pool, metrics }
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/tenants/{tenant}", put(set_quota))
            .route("/tenants/{tenant}/projects", get(projects).post(create))
            .route("/metrics", get(render_metrics))
            .with_state(self)
    }
}

/// `PUT /tenants/{tenant}`'s body.
#[derive(Debug, Deserialize)]
pub struct Quota {
    /// How many projects the tenant may have.
    pub projects_max: i64,
}

/// `POST /tenants/{tenant}/projects`'s body.
#[derive(Debug, Deserialize)]
pub struct NewProject {
    /// The project's name, unique within the tenant.
    pub name: String,
}

/// A project, as answered.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProjectView {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// True when an earlier request with the same `Idempotency-Key` created it.
    #[serde(default)]
    pub replayed: bool,
}

/// An error's body: a word to branch on, and a sentence for a person.
#[derive(Debug, Serialize)]
struct Problem {
    code: &'static str,
    message: String,
}

fn problem(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, Json(Problem { code, message })).into_response()
}

/// `503` with `Retry-After: 1`.
fn unavailable(code: &'static str, message: String) -> Response {
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A body that is not the JSON asked for: `400`, in the service's own error shape (axum's
/// own rejection would be a `422` in plain text, which a client could take for a quota).
fn bad_body(rejection: &JsonRejection) -> Response {
    problem(StatusCode::BAD_REQUEST, "bad_body", rejection.body_text())
}

async fn set_quota(
    State(service): State<Service>,
    Path(tenant): Path<String>,
    quota: Result<Json<Quota>, JsonRejection>,
) -> Response {
    use crate::schema::quota;
    let Json(quota) = match quota {
        Ok(quota) => quota,
        Err(rejection) => return bad_body(&rejection),
    };
    use diesel::ExpressionMethods;
    use diesel::upsert::excluded;
    let mut batch = pgbatch::Batch::new();
    batch.push(
        diesel::insert_into(quota::table)
            .values((quota::tenant.eq(&tenant), quota::projects_max.eq(quota.projects_max)))
            .on_conflict(quota::tenant)
            .do_update()
            .set(quota::projects_max.eq(excluded(quota::projects_max))),
    );
    match batch.run(&service.pool).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => database_error(error),
    }
}

async fn create(
    State(service): State<Service>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    new: Result<Json<NewProject>, JsonRejection>,
) -> Response {
    let Json(new) = match new {
        Ok(new) => new,
        Err(rejection) => return bad_body(&rejection),
    };
    let key = match headers.get(IDEMPOTENCY_KEY).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= 255 => Some(key),
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            );
        }
    };
    let created = match key {
        Some(key) => create_project_once(&service.pool, &tenant, &new.name, key).await,
        None => create_project(&service.pool, &tenant, &new.name).await.map(|id| crate::Created {
            id,
            name: new.name.clone(),
            replayed: false,
        }),
    };
    match created {
        Ok(created) => {
            (StatusCode::CREATED, Json(ProjectView { id: created.id, name: created.name, replayed: created.replayed }))
                .into_response()
        }
        Err(CreateProjectError::NameTaken { .. }) => problem(
            StatusCode::CONFLICT,
            "name_taken",
            format!("tenant {tenant} already has a project named {}: pick another name", new.name),
        ),
        Err(CreateProjectError::QuotaExhausted(_)) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "quota_exhausted",
            format!("tenant {tenant} has no project left in its quota: raise it or delete a project"),
        ),
        Err(CreateProjectError::Database(error)) => database_error(error),
        Err(CreateProjectError::Read(error)) => unavailable("unavailable", format!("{error}: retry with the same key")),
    }
}

/// The answer to a batch's error that is not the domain's.
fn database_error(error: Error) -> Response {
    if error.may_have_committed() {
        return unavailable(
            "outcome_unknown",
            "the database connection was lost while the request committed, and it could not be settled: \
             retry with the same Idempotency-Key to learn what became of it"
                .into(),
        );
    }
    match error {
        Error::Pool(_) | Error::Connection(_) | Error::ConnectionClosed | Error::Begin(_) | Error::SessionReset(_) => {
            unavailable("unavailable", format!("nothing was written: {error}; retry"))
        }
        other => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    }
}

async fn projects(State(service): State<Service>, Path(tenant): Path<String>) -> Response {
    match list_projects(&service.pool, &tenant).await {
        Ok(projects) => {
            let projects: Vec<ProjectView> =
                projects.into_iter().map(|(id, name)| ProjectView { id, name, replayed: false }).collect();
            Json(projects).into_response()
        }
        Err(ReadError::Pool(message)) => unavailable("unavailable", message),
        Err(ReadError::Query(error)) => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()),
    }
}

async fn render_metrics(State(service): State<Service>) -> Response {
    match service.metrics {
        Some(handle) => handle.render().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Applies the service's migrations that are not applied yet, on a connection of `pool`,
/// and creates pgbatch's idempotency table. Needs a multi-threaded runtime: diesel-async's
/// migration harness blocks its thread while it runs.
///
/// # Errors
///
/// When no connection can be had or a migration fails; the failing migration is not
/// applied.
pub async fn migrate(pool: &pgbatch::Pool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use diesel_async::AsyncMigrationHarness;
    use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
    const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
    let mut harness = AsyncMigrationHarness::from(pool.get_owned().await?);
    harness.run_pending_migrations(MIGRATIONS)?;
    pgbatch::idempotency::install(pool, pgbatch::idempotency::DEFAULT_TABLE).await?;
    Ok(())
}
