//! What a test suite spends on migrations: a migrations directory applied to each of 100
//! fresh databases (`TestDatabase::create` then `run_migrations`, as every test did before),
//! against 100 copies of one migrated template (`TestDatabase::create_migrated`), the two
//! alternating in rounds of 10 so that machine noise hits both. Two directories:
//! `examples/quota-service`'s (two tables) and the scenarios' schema as one migration (the
//! control-plane tables of the examples).
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin migrations
//! ```
//!
//! Prints `migrations (<which>): databases=100 replay_ms=... template_ms=... ratio=...`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgbatch_testing::TestDatabase;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quota-service/migrations");
const DATABASES: usize = 100;
const ROUND: usize = 10;

async fn measure(migrations: &std::path::Path) -> Result<(Duration, Duration), BoxError> {
    let (mut replay, mut template) = (Duration::ZERO, Duration::ZERO);
    // One warm-up of each: the server found, the template made.
    let (_warm, _) = TestDatabase::create_migrated(migrations).await?;
    for _ in 0..DATABASES / ROUND {
        let started = Instant::now();
        for _ in 0..ROUND {
            let db = TestDatabase::create().await?;
            db.run_migrations(migrations).await?;
        }
        replay += started.elapsed();
        let started = Instant::now();
        for _ in 0..ROUND {
            TestDatabase::create_migrated(migrations).await?;
        }
        template += started.elapsed();
    }
    Ok((replay, template))
}

/// The scenarios' schema as a migrations directory of one migration.
fn scenarios_migrations() -> Result<std::path::PathBuf, BoxError> {
    let dir = std::env::temp_dir().join(format!("pgbatch-bench-migrations-{}", std::process::id()));
    let migration = dir.join("2026-01-01-000000_scenarios");
    std::fs::create_dir_all(&migration)?;
    std::fs::write(migration.join("up.sql"), pgbatch_scenarios::SCHEMA_SQL)?;
    Ok(dir)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let scenarios = match scenarios_migrations() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("migrations: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut status = ExitCode::SUCCESS;
    for (which, dir) in [("quota-service", std::path::PathBuf::from(MIGRATIONS)), ("scenarios", scenarios.clone())] {
        match measure(&dir).await {
            Ok((replay, template)) => println!(
                "migrations ({which}): databases={DATABASES} replay_ms={:.0} template_ms={:.0} ratio={:.2}",
                replay.as_secs_f64() * 1e3,
                template.as_secs_f64() * 1e3,
                template.as_secs_f64() / replay.as_secs_f64()
            ),
            Err(error) => {
                eprintln!("migrations ({which}): {error}");
                status = ExitCode::FAILURE;
            }
        }
    }
    let _ = std::fs::remove_dir_all(scenarios);
    status
}
