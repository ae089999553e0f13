//! Migrations run once per test process: into a template database, which every test's
//! database then copies (`CREATE DATABASE ... TEMPLATE`, a file copy on the server), so that
//! a suite of a hundred tests does not replay its migrations a hundred times.
//!
//! The template lives as long as a database cloned from it does, and is dropped with the
//! last one: a run leaves nothing behind. (A suite run with `--test-threads=1` drops and
//! remakes it between tests, which is correct, only not faster.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::database::DropWith;
use crate::{SchemaError, SetupError, TestDatabase};

/// A template in use: its database, the versions its migrations applied, and how many
/// test databases cloned from it are alive.
struct Template {
    name: String,
    versions: Vec<String>,
    users: usize,
}

/// The templates of this process, by migrations directory.
static TEMPLATES: Mutex<Option<HashMap<PathBuf, Template>>> = Mutex::new(None);

/// Held while a template is looked up or made, so that concurrent tests make one.
static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a clone waits for the template's last session (the one that ran the
/// migrations) to end: PostgreSQL copies a template only when nobody is connected to it.
const TEMPLATE_FREE_TIMEOUT: Duration = Duration::from_secs(10);

fn with_templates<T>(f: impl FnOnce(&mut HashMap<PathBuf, Template>) -> T) -> T {
    let mut templates = TEMPLATES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(templates.get_or_insert_with(HashMap::new))
}

/// Why a migrated test database could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigratedError {
    /// No server, or the server refused the database: see [`SetupError`].
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The migrations could not be read or failed: see [`SchemaError`], which names the
    /// file and the cause.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl TestDatabase {
    /// Creates a fresh database with the Diesel migrations in `dir` applied (as
    /// [`run_migrations`](Self::run_migrations) applies them), returning it and the versions
    /// applied. The migrations run once per process, into a template database; every call
    /// copies it, which costs the same whatever the migrations do.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let (db, versions) = pgbatch_testing::TestDatabase::create_migrated("migrations").await?;
    /// let pool = db.pool(4).await?;
    /// # let _ = (versions, pool); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MigratedError::Schema`] when the directory cannot be read or a migration fails
    /// (naming the file); [`MigratedError::Setup`] when no server can be found or it refuses
    /// the database.
    pub async fn create_migrated(dir: impl AsRef<Path>) -> Result<(TestDatabase, Vec<String>), MigratedError> {
        let given = dir.as_ref();
        let dir =
            std::fs::canonicalize(given).map_err(|source| SchemaError::Read { path: given.to_owned(), source })?;
        let (admin, source) = TestDatabase::server().await?;
        let (template, versions) = {
            let _making = MAKING.lock().await;
            let found = with_templates(|templates| {
                templates.get_mut(&dir).map(|template| {
                    template.users += 1;
                    (template.name.clone(), template.versions.clone())
                })
            });
            match found {
                Some(found) => found,
                None => {
                    let template = TestDatabase::create_from(&admin, source, None).await?;
                    // A failure drops the half-made template with `template`.
                    let versions = template.run_migrations(&dir).await?;
                    let name = template.into_name();
                    let made = Template { name: name.clone(), versions: versions.clone(), users: 1 };
                    with_templates(|templates| templates.insert(dir.clone(), made));
                    (name, versions)
                }
            }
        };
        let started = std::time::Instant::now();
        loop {
            match TestDatabase::create_from(&admin, source, Some(&template)).await {
                Ok(mut db) => {
                    db.drop_with = Some(DropWith(Box::new(move || release(&dir))));
                    return Ok((db, versions));
                }
                Err(SetupError::Server { error, .. })
                    if error.code() == Some(&SqlState::OBJECT_IN_USE) && started.elapsed() < TEMPLATE_FREE_TIMEOUT =>
                {
                    // Someone is still connected to the template: the session that ran the
                    // migrations on its way out, or, behind PgBouncer, a server connection
                    // it keeps. End them; nothing else uses a template.
                    end_sessions_on(&admin, &template).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => {
                    if let Some(unused) = release(&dir) {
                        TestDatabase::drop_databases(&admin, vec![unused]);
                    }
                    return Err(error.into());
                }
            }
        }
    }
}

/// Ends every session connected to `template`.
async fn end_sessions_on(admin: &tokio_postgres::Config, template: &str) {
    if let Ok(client) = crate::database::connect(admin).await {
        let end = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            template.replace('\'', "''")
        );
        let _ = client.batch_execute(&end).await;
    }
}

/// A database cloned from `dir`'s template is gone; returns the template's name when it
/// was the last, for the caller to drop.
fn release(dir: &Path) -> Option<String> {
    with_templates(|templates| {
        let template = templates.get_mut(dir)?;
        template.users -= 1;
        if template.users > 0 {
            return None;
        }
        templates.remove(dir).map(|template| template.name)
    })
}
