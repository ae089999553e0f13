//! What the session reset after every batch costs: C1 and S1 batches with
//! [`SessionReset::BetweenHolders`] (the default) against [`SessionReset::WhenRecognised`]
//! (the reset only after recognised session functions, as before it was the default),
//! interleaved sample by sample on two connections, at 0 ms and 10 ms added RTT, and through
//! PgBouncer in transaction mode when one answers; then C1 throughput at 0 ms on 4
//! connections, the two modes alternating.
//!
//! ```sh
//! .ci/pgbouncer transaction   # optional: adds the PgBouncer rows
//! cargo run --release -p pgbatch-bench --bin session_reset -- 6432
//! ```
//!
//! Prints the figures and writes them into `docs/benchmarks.md`'s session-reset section.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgbatch::{Connection, SessionReset};
use pgbatch_bench::workload::{EXTRA_SCHEMA, Workload};
use pgbatch_bench::{SESSION_RESET_SECTION, Setup, main_with_pgbouncer_port, quantile, write_section};
use pgbatch_scenarios::seed::{Quotas, seed};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MODES: [SessionReset; 2] = [SessionReset::BetweenHolders, SessionReset::WhenRecognised];
const THROUGHPUT_CONNECTIONS: usize = 4;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);
const THROUGHPUT_ROUNDS: usize = 3;

fn quotas() -> Quotas {
    Quotas { cpus: i64::MAX / 4, ram: i64::MAX / 4, storage: i64::MAX / 4 }
}

async fn timed_batch(
    connection: &mut Connection,
    workload: Workload,
    silo: Uuid,
    round: i64,
) -> Result<Duration, BoxError> {
    let mut batch = pgbatch::Batch::new();
    for statement in workload.statements(silo, round) {
        statement.push_to(&mut batch);
    }
    let started = Instant::now();
    batch.run(connection).await?;
    Ok(started.elapsed())
}

/// Median latencies of `workload` in each mode, interleaved: one connection per mode.
async fn medians(
    config: &tokio_postgres::Config,
    workload: Workload,
    silo: Uuid,
    warmup: usize,
    samples: usize,
) -> Result<[Duration; 2], BoxError> {
    let mut connections = Vec::new();
    for mode in MODES {
        let mut connection = Connection::connect_with(config).await?;
        connection.set_session_reset(mode);
        connections.push(connection);
    }
    let mut latencies = [Vec::new(), Vec::new()];
    for sample in 0..warmup + samples {
        for (connection, latencies) in connections.iter_mut().zip(&mut latencies) {
            let latency = timed_batch(connection, workload, silo, sample as i64).await?;
            if sample >= warmup {
                latencies.push(latency);
            }
        }
    }
    Ok([quantile(&latencies[0], 0.5), quantile(&latencies[1], 0.5)])
}

/// C1 batches per second on [`THROUGHPUT_CONNECTIONS`] connections, each on a silo of its
/// own, in each mode; the modes alternate in windows so that machine noise hits both.
async fn throughput(config: &tokio_postgres::Config, silos: &[Uuid]) -> Result<[f64; 2], BoxError> {
    let mut committed = [0u64; 2];
    let mut elapsed = [Duration::ZERO; 2];
    for _ in 0..THROUGHPUT_ROUNDS {
        for (index, mode) in MODES.into_iter().enumerate() {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for &silo in silos {
                let config = config.clone();
                tasks.push(tokio::spawn(async move {
                    let mut connection = Connection::connect_with(&config).await?;
                    connection.set_session_reset(mode);
                    let (mut count, mut round) = (0u64, 0);
                    let window = Instant::now();
                    while window.elapsed() < THROUGHPUT_WINDOW {
                        round += 1;
                        timed_batch(&mut connection, Workload::CreateProject, silo, round).await?;
                        count += 1;
                    }
                    Ok::<_, BoxError>(count)
                }));
            }
            for task in tasks {
                committed[index] += task.await??;
            }
            elapsed[index] += started.elapsed();
        }
    }
    Ok([committed[0] as f64 / elapsed[0].as_secs_f64(), committed[1] as f64 / elapsed[1].as_secs_f64()])
}

async fn measure(pgbouncer_port: u16) -> Result<(), BoxError> {
    let setup = Setup::new(&format!("{}{EXTRA_SCHEMA}", pgbatch_scenarios::SCHEMA_SQL)).await?;
    let mut seeding = Connection::connect_with(setup.db.config()).await?;
    let mut silos = Vec::new();
    for index in 0..THROUGHPUT_CONNECTIONS {
        silos.push(seed(&mut seeding, &format!("bench-{index}"), quotas()).await?.silo);
    }
    let proxy = setup.proxy_with(Duration::from_millis(5), true).await?;
    let mut pgbouncer = tokio_postgres::Config::new();
    pgbouncer.host("127.0.0.1").port(pgbouncer_port).user("postgres").dbname(setup.db.name());
    let pgbouncer_answers = Connection::connect_with(&pgbouncer).await.is_ok();
    let mut paths = vec![("direct, 0 ms", setup.db.config().clone(), 50, 1_000)];
    if pgbouncer_answers {
        paths.push(("PgBouncer (transaction mode), 0 ms", pgbouncer, 50, 1_000));
    } else {
        eprintln!("session_reset: no PgBouncer on port {pgbouncer_port}; its rows are left out");
    }
    paths.push(("direct, 10 ms RTT", setup.db.config_via(&proxy), 5, 100));

    let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
    let mut table = String::from(
        "| path | workload | reset after every batch, median ms | reset when recognised, median ms | added ms |\n\
         |---|---|---|---|---|\n",
    );
    for (path, config, warmup, samples) in &paths {
        for (workload, name) in [(Workload::CreateProject, "C1, 2 statements"), (Workload::Sync, "S1, 41 statements")] {
            let [always, recognised] = medians(config, workload, silos[0], *warmup, *samples).await?;
            let row = format!(
                "| {path} | {name} | {:.3} | {:.3} | {:+.3} |\n",
                ms(always),
                ms(recognised),
                ms(always) - ms(recognised)
            );
            print!("{row}");
            table.push_str(&row);
        }
    }
    let [always, recognised] = throughput(setup.db.config(), &silos).await?;
    let summary = format!(
        "C1 throughput at 0 ms on {THROUGHPUT_CONNECTIONS} connections: {always:.0} batches/s with the reset after \
         every batch, {recognised:.0} with the reset when recognised ({:.2}×).",
        always / recognised
    );
    println!("{summary}");
    let body = format!(
        "## The session reset\n\n\
         Generated by `.ci/pgbouncer transaction && cargo run --release -p pgbatch-bench --bin session_reset`. \
         Every batch is followed, in the same write, by `DISCARD ALL` (and the session setup, none here); the \
         opt-out `SessionReset::WhenRecognised` resets only after recognised session functions, which is what \
         every batch did before the reset became the default. Two connections, one per mode, interleaved sample \
         by sample; the added milliseconds at 0 ms are the server's work on the reset plus one more \
         `ReadyForQuery` to read.\n\n{table}\n{summary}\n"
    );
    write_section(SESSION_RESET_SECTION, &body)?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    main_with_pgbouncer_port("session_reset", measure).await
}
