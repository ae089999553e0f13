//! A test database's schema, from SQL files or a Diesel migrations directory, and a pool
//! of pgbatch connections on it.

use std::path::{Path, PathBuf};

use pgbatch::{ConnectError, ConnectionManager};

use crate::TestDatabase;

/// Why a test database's schema could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A SQL file or the migrations directory could not be read. Relative paths are
    /// relative to the working directory, which `cargo test` sets to the package's root.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A migration directory has no `up.sql`. Every Diesel migration needs one.
    #[error("migration {} has no up.sql", path.display())]
    NoUpSql {
        /// The migration's directory.
        path: PathBuf,
    },
    /// The test database did not accept a connection (it was dropped, or the server
    /// stopped).
    #[error("cannot connect to the test database: {}", crate::database::chain(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A file's SQL failed on the server. Each file runs as one transaction, so nothing of
    /// it was kept; files before it were applied. Fix the SQL the message names.
    #[error("{} failed: {}", path.display(), crate::database::chain(source))]
    Sql {
        /// The file that failed.
        path: PathBuf,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Diesel's own bookkeeping table, so that the Diesel CLI sees the migrations as applied.
const DIESEL_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
     version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

impl TestDatabase {
    /// Runs each SQL file, in the order given, each as one transaction.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Read`] when a file cannot be read, [`SchemaError::Sql`] when its SQL
    /// fails (the files before it stay applied), [`SchemaError::Connect`] when the database
    /// cannot be reached.
    pub async fn run_sql_files<P: AsRef<Path>>(&self, files: impl IntoIterator<Item = P>) -> Result<(), SchemaError> {
        let client = self.connect().await.map_err(SchemaError::Connect)?;
        for file in files {
            let path = file.as_ref();
            let sql = read(path)?;
            client.batch_execute(&sql).await.map_err(|source| SchemaError::Sql { path: path.to_owned(), source })?;
        }
        Ok(())
    }

    /// Applies a Diesel migrations directory: every `<version>_<name>/up.sql`, in name
    /// order, each in one transaction that also records its version in
    /// `__diesel_schema_migrations`, as `diesel migration run` does. Returns the versions
    /// applied.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let db = pgbatch_testing::TestDatabase::create().await?;
    /// db.run_migrations("migrations").await?;
    /// let pool = db.pool(4).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SchemaError::Read`] when the directory cannot be read, [`SchemaError::NoUpSql`]
    /// for a migration without `up.sql`, [`SchemaError::Sql`] when a migration fails (the
    /// ones before it stay applied).
    pub async fn run_migrations(&self, dir: impl AsRef<Path>) -> Result<Vec<String>, SchemaError> {
        let dir = dir.as_ref();
        let read_dir = |source| SchemaError::Read { path: dir.to_owned(), source };
        let mut migrations = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if path.is_dir() {
                migrations.push(path);
            }
        }
        migrations.sort();
        let client = self.connect().await.map_err(SchemaError::Connect)?;
        client
            .batch_execute(DIESEL_MIGRATIONS_TABLE)
            .await
            .map_err(|source| SchemaError::Sql { path: dir.to_owned(), source })?;
        let mut applied = Vec::new();
        for migration in migrations {
            let up = migration.join("up.sql");
            if !up.is_file() {
                return Err(SchemaError::NoUpSql { path: migration });
            }
            let version = diesel_version(&migration);
            // A multi-statement simple query is one transaction: the migration and its
            // record land together.
            let sql = format!(
                "{}\n;\nINSERT INTO __diesel_schema_migrations (version) VALUES ('{}')",
                read(&up)?,
                version.replace('\'', "''")
            );
            client.batch_execute(&sql).await.map_err(|source| SchemaError::Sql { path: up, source })?;
            applied.push(version);
        }
        Ok(applied)
    }

    /// A bb8 pool of at most `size` pgbatch connections on this database, with one
    /// connection already open.
    ///
    /// # Errors
    ///
    /// The [`ConnectError`] of the first connection.
    pub async fn pool(&self, size: u32) -> Result<pgbatch::Pool, ConnectError> {
        bb8::Pool::builder()
            .max_size(size)
            .min_idle(Some(1))
            .build(ConnectionManager::new(self.connection_config()))
            .await
    }
}

fn read(path: &Path) -> Result<String, SchemaError> {
    std::fs::read_to_string(path).map_err(|source| SchemaError::Read { path: path.to_owned(), source })
}

/// Diesel's version of a migration: its directory name up to the first `_`, without `-`.
fn diesel_version(migration: &Path) -> String {
    let name = migration.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.split('_').next().unwrap_or_default().replace('-', "")
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_named_as_diesel_names_them() {
        let version = |dir: &str| super::diesel_version(std::path::Path::new(dir));
        assert_eq!(version("migrations/2026-01-02-030405_create_projects"), "20260102030405");
        assert_eq!(version("00000000000000_diesel_initial_setup"), "00000000000000");
    }
}
