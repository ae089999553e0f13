//! What the session reset between holders costs: C1 and S1 batches run on a pool, each run a
//! checkout of its own and so a new holder whose first unit resets the session
//! ([`SessionReset::BetweenHolders`], the default: the reset written in the unit's own
//! segment; directly connected, the one that keeps the statement cache), against the same
//! pool with [`SessionReset::WhenRecognised`] (no reset at all for these workloads, which
//! call no session function). Latency interleaved sample by sample on
//! two pools of one connection, at 0 ms and 10 ms added RTT, and through PgBouncer in
//! transaction mode when one answers; then C1 throughput at 0 ms on pools of 4 connections,
//! the two modes alternating in windows.
//!
//! ```sh
//! .ci/pgbouncer transaction   # optional: adds the PgBouncer rows
//! cargo run --release -p pgbatch-bench --bin session_reset -- 6432
//! ```
//!
//! Prints the figures and writes them into `docs/benchmarks.md`'s session-reset section.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgbatch::{Connection, ConnectionManager, Pool, SessionReset};
use pgbatch_bench::workload::{EXTRA_SCHEMA, Workload};
use pgbatch_bench::{SESSION_RESET_SECTION, Setup, main_with_pgbouncer_port, quantile, write_section};
use pgbatch_scenarios::seed::{Quotas, seed};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MODES: [SessionReset; 2] = [SessionReset::BetweenHolders, SessionReset::WhenRecognised];
const THROUGHPUT_CONNECTIONS: usize = 4;
/// Callers per connection in the throughput windows: enough that a connection never waits
/// for a caller.
const CALLERS_PER_CONNECTION: usize = 2;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);
const THROUGHPUT_ROUNDS: usize = 3;

fn quotas() -> Quotas {
    Quotas { cpus: i64::MAX / 4, ram: i64::MAX / 4, storage: i64::MAX / 4 }
}

/// Runs one batch of `workload` on `target`: given a pool, a checkout of its own (a new
/// holder, whose first unit resets the session); given a held connection, one more batch of
/// the same holder.
async fn timed_batch(
    target: impl pgbatch::Acquire,
    workload: Workload,
    silo: Uuid,
    round: i64,
) -> Result<Duration, BoxError> {
    let mut batch = pgbatch::Batch::new();
    for statement in workload.statements(silo, round) {
        statement.push_to(&mut batch);
    }
    let started = Instant::now();
    batch.run(target).await?;
    Ok(started.elapsed())
}

/// How the throughput windows' callers hold connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Every batch a checkout of its own: every batch a new holder.
    PerBatch,
    /// Each of [`THROUGHPUT_CONNECTIONS`] callers keeps one checkout for the whole window,
    /// as a service request that runs several batches does.
    PerCaller,
}

async fn pool_of(config: &tokio_postgres::Config, mode: SessionReset, size: u32) -> Result<Pool, BoxError> {
    let manager = ConnectionManager::new(config.clone()).session_reset(mode);
    Ok(bb8::Pool::builder().max_size(size).min_idle(Some(size)).build(manager).await?)
}

/// Median latencies of `workload` in each mode, interleaved: one pool of one connection per
/// mode.
async fn medians(
    config: &tokio_postgres::Config,
    workload: Workload,
    silo: Uuid,
    warmup: usize,
    samples: usize,
) -> Result<[Duration; 2], BoxError> {
    let mut pools = Vec::new();
    for mode in MODES {
        pools.push(pool_of(config, mode, 1).await?);
    }
    let mut latencies = [Vec::new(), Vec::new()];
    for sample in 0..warmup + samples {
        for (pool, latencies) in pools.iter().zip(&mut latencies) {
            let latency = timed_batch(pool, workload, silo, sample as i64).await?;
            if sample >= warmup {
                latencies.push(latency);
            }
        }
    }
    Ok([quantile(&latencies[0], 0.5), quantile(&latencies[1], 0.5)])
}

/// C1 batches per second on a pool of [`THROUGHPUT_CONNECTIONS`] connections, callers on
/// silos of their own, in each mode; the modes alternate in windows so that machine noise
/// hits both.
async fn throughput(config: &tokio_postgres::Config, silos: &[Uuid], holding: Holding) -> Result<[f64; 2], BoxError> {
    let mut committed = [0u64; 2];
    let mut elapsed = [Duration::ZERO; 2];
    let mut pools = Vec::new();
    for mode in MODES {
        pools.push(pool_of(config, mode, THROUGHPUT_CONNECTIONS as u32).await?);
    }
    for _ in 0..THROUGHPUT_ROUNDS {
        for (index, pool) in pools.iter().enumerate() {
            let started = Instant::now();
            let mut tasks = Vec::new();
            let callers = match holding {
                Holding::PerBatch => THROUGHPUT_CONNECTIONS * CALLERS_PER_CONNECTION,
                Holding::PerCaller => THROUGHPUT_CONNECTIONS,
            };
            for caller in 0..callers {
                let (pool, silo) = (pool.clone(), silos[caller % silos.len()]);
                tasks.push(tokio::spawn(async move {
                    let (mut count, mut round) = (0u64, 0);
                    let mut held = match holding {
                        Holding::PerCaller => Some(pool.get().await?),
                        Holding::PerBatch => None,
                    };
                    let window = Instant::now();
                    while window.elapsed() < THROUGHPUT_WINDOW {
                        round += 1;
                        match held.as_mut() {
                            Some(connection) => timed_batch(connection, Workload::CreateProject, silo, round).await?,
                            None => timed_batch(&pool, Workload::CreateProject, silo, round).await?,
                        };
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
    let mut throughput_paths = vec![("direct", setup.db.config().clone())];
    if pgbouncer_answers {
        paths.push(("PgBouncer (transaction mode), 0 ms", pgbouncer.clone(), 50, 1_000));
        throughput_paths.push(("PgBouncer, transaction mode", pgbouncer));
    } else {
        eprintln!("session_reset: no PgBouncer on port {pgbouncer_port}; its rows are left out");
    }
    paths.push(("direct, 10 ms RTT", setup.db.config_via(&proxy), 5, 100));

    let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
    let mut table = String::from(
        "| path | workload | reset between holders, median ms | no reset, median ms | added ms |\n\
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
    let mut summary = String::new();
    for (path, config) in throughput_paths {
        for (holding, holders) in [
            (Holding::PerBatch, "every batch a new holder"),
            (Holding::PerCaller, "each of 4 callers holding its connection"),
        ] {
            let [always, never] = throughput(&config, &silos, holding).await?;
            let line = format!(
                "- C1 throughput at 0 ms on a pool of {THROUGHPUT_CONNECTIONS} connections ({path}), {holders}: \
                 {always:.0} batches/s with the reset between holders, {never:.0} without a reset ({:.2}×).\n",
                always / never
            );
            print!("{line}");
            summary.push_str(&line);
        }
    }
    let body = format!(
        "## The session reset\n\n\
         Generated by `.ci/pgbouncer transaction && cargo run --release -p pgbatch-bench --bin session_reset`. \
         Every batch runs on a pool as a checkout of its own, so each is a new holder whose first unit resets \
         the session, written before `BEGIN` in the batch's own `Sync` segment (`SessionReset::BetweenHolders`, \
         the default). Directly connected the statement cache is on and the reset keeps it: `CLOSE ALL`, \
         `DISCARD TEMP`, `SET SESSION AUTHORIZATION DEFAULT`, `RESET ALL`, `UNLISTEN *`, \
         `pg_advisory_unlock_all()`, `DISCARD SEQUENCES`, a `DO` block that deallocates statements prepared \
         with SQL, `COMMIT`, then an empty query that takes a cancel the reset may draw, each step itself \
         bound from the cache; behind PgBouncer the cache is off and the reset is `DISCARD ALL` and the empty \
         query. Against the same pool with `SessionReset::WhenRecognised`, which resets nothing for these \
         workloads. Two pools of one connection, one per mode, interleaved sample by sample; the added \
         milliseconds at 0 ms are the server's work on the reset.\n\n{table}\n{summary}\n\
         Where it goes: nine more statements for the server to run, each cheap, about 0.02 ms apiece on \
         this machine, the `DO` block (compiled at each run) the most. Measured with `pgbench -M prepared` \
         on a 2-statement insert, one connection, pipelined: the insert alone about 2,950 transactions/s, \
         with this reset about 1,920, with the same reset checking for statements prepared with SQL in a \
         plain `SELECT` instead of deallocating them in a `DO` block about 2,280 (a session holding one \
         would then have to be given up rather than cleaned), without any deallocation about 2,450. A \
         caller that holds its connection for several requests (a service request that checks out once) \
         pays the reset once per checkout: the rows \"each of 4 callers holding its connection\". Behind a \
         pooler a holder keeps nothing across transactions, so every unit is reset whoever holds the \
         connection.\n"
    );
    write_section(SESSION_RESET_SECTION, &body)?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    main_with_pgbouncer_port("session_reset", measure).await
}
