//! Many callers, few connections: 256 concurrent callers running C1 (create project, 2
//! statements) and S1 (sync 20 messages and the clock, 41 statements) batches, on a bb8
//! pool of pgbatch connections and on a [`pgbatch::Multiplexed`] client with the same
//! number of connections, at 0, 1 and 10 ms of added round-trip time. Batches per second
//! and p50/p99 latency per caller's batch, side by side in one run.
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin multiplexing -- --quick
//! ```
//!
//! Prints the table and rewrites the `multiplexing` section of `docs/benchmarks.md`.
//! `--quick` runs each cell for 2 s (about two minutes in all); without it, 5 s.
//!
//! `--statement-cache` measures instead, at 0 ms only, each client with its connections'
//! statement cache off (every statement parsed and planned each time, as before the cache)
//! and on, the two interleaved cell by cell, `--rounds N` times (default 2); prints the
//! table and writes nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgbatch::{Batch, ConnectionManager, Multiplexed, Pool};
use pgbatch_bench::contenders::BoxError;
use pgbatch_bench::workload::{EXTRA_SCHEMA, Workload};
use pgbatch_bench::{MULTIPLEXING_SECTION, Setup, quantile, write_section};
use pgbatch_scenarios::seed::{Quotas, seed};
use uuid::Uuid;

const CALLERS: usize = 256;
const CONNECTIONS: [usize; 2] = [4, 16];
/// Added round-trip times. The proxy delays each direction by half, on tokio's millisecond
/// timer (not spinning: 256 callers keep bytes in flight all the time), so the 1 ms row's
/// delay is rounded up to between 1 and 2 ms.
const RTTS_MS: [u64; 3] = [0, 1, 10];
const WORKLOADS: [Workload; 2] = [Workload::CreateProject, Workload::Sync];

/// Where batches run.
#[derive(Clone)]
enum Target {
    Pool(Pool),
    Multiplexed(Multiplexed),
}

impl Target {
    async fn run(&self, batch: &Batch) -> Result<(), pgbatch::Error> {
        match self {
            Target::Pool(pool) => batch.run(pool).await.map(drop),
            Target::Multiplexed(client) => batch.run_multiplexed(client).await.map(drop),
        }
    }
}

/// One cell's figures.
struct Cell {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// `CALLERS` tasks running `workload` batches on `target` for `duration`.
async fn measure(target: &Target, workload: Workload, silo: Uuid, duration: Duration) -> Result<Cell, BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let (target, stop) = (target.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut round = caller as i64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Batch::new();
                for statement in workload.statements(silo, round) {
                    statement.push_to(&mut batch);
                }
                round += 1;
                let started = Instant::now();
                target.run(&batch).await?;
                latencies.push((started, started.elapsed()));
            }
            Ok::<_, pgbatch::Error>(latencies)
        }));
    }
    // The first half second warms the connections up and is not counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted_from = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = counted_from.elapsed();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??.into_iter().filter(|(at, _)| *at >= counted_from).map(|(_, latency)| latency));
    }
    Ok(Cell {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
    })
}

/// A database with the scenarios' schema and a silo with quotas no batch exhausts.
async fn seeded() -> Result<(Setup, Uuid), BoxError> {
    let setup = Setup::new(&format!("{}{EXTRA_SCHEMA}", pgbatch_scenarios::SCHEMA_SQL)).await?;
    let mut admin = pgbatch::Connection::connect_with(setup.db.config()).await?;
    let silo =
        seed(&mut admin, "bench", Quotas { cpus: i64::MAX / 4, ram: i64::MAX / 4, storage: i64::MAX / 4 }).await?.silo;
    Ok((setup, silo))
}

/// A bb8 pool and a multiplexed client of `connections` connections each, opened by
/// `manager`.
async fn clients(manager: ConnectionManager, connections: usize) -> Result<(Target, Target), BoxError> {
    let pool = bb8::Pool::builder()
        .max_size(connections as u32)
        .min_idle(Some(connections as u32))
        .build(manager.clone())
        .await?;
    let client = Multiplexed::builder(manager).connections(connections).build().await?;
    Ok((Target::Pool(pool), Target::Multiplexed(client)))
}

async fn run(duration: Duration) -> Result<String, BoxError> {
    let (setup, silo) = seeded().await?;
    let mut table = String::from(
        "| workload | RTT | connections | bb8 pool: batches/s | p50 | p99 | multiplexed: batches/s | p50 | p99 | throughput ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for rtt in RTTS_MS {
        let proxy = match rtt {
            0 => None,
            ms => Some(setup.proxy_with(Duration::from_millis(ms) / 2, false).await?),
        };
        let config = match &proxy {
            Some(proxy) => setup.db.config_via(proxy),
            None => setup.db.config().clone(),
        };
        for connections in CONNECTIONS {
            let (pool, client) = clients(ConnectionManager::new(config.clone()), connections).await?;
            for workload in WORKLOADS {
                let pooled = measure(&pool, workload, silo, duration).await?;
                let multiplexed = measure(&client, workload, silo, duration).await?;
                let row = format!(
                    "| {} | {} ms | {connections} | {:.0} | {:.1} ms | {:.1} ms | {:.0} | {:.1} ms | {:.1} ms | {:.2} |\n",
                    workload.name(),
                    rtt,
                    pooled.per_second,
                    pooled.p50.as_secs_f64() * 1e3,
                    pooled.p99.as_secs_f64() * 1e3,
                    multiplexed.per_second,
                    multiplexed.p50.as_secs_f64() * 1e3,
                    multiplexed.p99.as_secs_f64() * 1e3,
                    multiplexed.per_second / pooled.per_second,
                );
                eprint!("{row}");
                table.push_str(&row);
            }
        }
    }
    Ok(table)
}

/// At 0 ms, each client and workload with the statement cache off and on, interleaved.
async fn statement_cache(duration: Duration, rounds: usize) -> Result<String, BoxError> {
    let (setup, silo) = seeded().await?;
    let connections = CONNECTIONS[0];
    let mut targets = Vec::new();
    for cache in [pgbatch::StatementCache::Off, pgbatch::StatementCache::default()] {
        let manager = ConnectionManager::new(setup.db.config().clone()).statement_cache(cache);
        targets.push(clients(manager, connections).await?);
    }
    let mut table = String::from(
        "| workload | client | round | cache off: batches/s | p50 | cache on: batches/s | p50 | on / off |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for round in 1..=rounds {
        for workload in WORKLOADS {
            for (client, pick) in [("bb8 pool", 0), ("multiplexed", 1)] {
                let target = |index: usize| if pick == 0 { &targets[index].0 } else { &targets[index].1 };
                let off = measure(target(0), workload, silo, duration).await?;
                let on = measure(target(1), workload, silo, duration).await?;
                let row = format!(
                    "| {} | {client}, {connections} connections | {round} | {:.0} | {:.1} ms | {:.0} | {:.1} ms | {:.2} |\n",
                    workload.name(),
                    off.per_second,
                    off.p50.as_secs_f64() * 1e3,
                    on.per_second,
                    on.p50.as_secs_f64() * 1e3,
                    on.per_second / off.per_second,
                );
                eprint!("{row}");
                table.push_str(&row);
            }
        }
    }
    Ok(table)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = Duration::from_secs(if quick { 2 } else { 5 });
    if std::env::args().any(|a| a == "--statement-cache") {
        let args: Vec<String> = std::env::args().collect();
        let rounds =
            args.iter().position(|a| a == "--rounds").and_then(|at| args.get(at + 1)?.parse().ok()).unwrap_or(2);
        return match statement_cache(duration, rounds).await {
            Ok(table) => {
                println!("{table}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("multiplexing: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let table = match run(duration).await {
        Ok(table) => table,
        Err(error) => {
            eprintln!("multiplexing: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{table}");
    let body = format!(
        "## Many callers, few connections\n\n\
         {CALLERS} concurrent callers, each running one batch after another for {} s per cell, on a bb8 pool of \
         pgbatch connections and on a `Multiplexed` client with the same connections (`cargo run --release -p \
         pgbatch-bench --bin multiplexing{}`; RTT added by a proxy on loopback; 2 cores, client, proxy and \
         server on one machine). Latency is per batch, from the caller's call to its answer, waiting for a \
         connection included.\n\n{table}\n\
         How to read it. A pooled batch holds its connection for the whole round trip, so the pool's \
         throughput falls with RTT (connections / RTT at most); the multiplexed client keeps up to 32 \
         batches in flight per connection, so C1's throughput barely moves with RTT. S1 updates the same \
         20 items and clock row in every batch: its batches queue on those row locks on the server, which \
         bounds both clients once the network no longer does. At 0 ms the two should be within noise of \
         each other. The pool's p99 is far above its p50 because bb8 wakes waiting callers in no fixed \
         order, so some wait through many turns; the multiplexed client serves callers in arrival order, \
         so its p50 is close to the mean (callers / throughput) and its p99 close to its p50.",
        duration.as_secs(),
        if quick { " -- --quick" } else { "" },
    );
    if let Err(error) = write_section(MULTIPLEXING_SECTION, &body) {
        eprintln!("multiplexing: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
