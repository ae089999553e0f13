//! pgbatch against diesel-async, tokio-postgres and a hand-written pipeline, on the
//! scenario workloads, through a proxy that adds 0, 1 and 10 ms of round-trip time; plus a
//! hot-row contention run and the client's CPU cost per statement.
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin compare -- --quick
//! ```
//!
//! Prints the tables and rewrites `docs/benchmarks.md` and `docs/benchmarks.svg`.
//! `--quick` takes well under two minutes on two cores; without it, about three times
//! longer with tighter figures.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use diesel::pg::{Pg, PgQueryBuilder};
use diesel::prelude::*;
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{QueryBuilder, QueryFragment};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use pgbatch_bench::contenders::{BoxError, Clients, Contender, diesel_transaction, plain};
use pgbatch_bench::report::{Cpu, HotRow, Latency, Report};
use pgbatch_bench::workload::{EXTRA_SCHEMA, NoCustomTypes, Workload, hot_row};
use pgbatch_bench::{BENCHMARKS_MD, KEPT_SECTIONS, Setup, quantile, section, thread_cpu, with_section};
use pgbatch_scenarios::schema::project;
use pgbatch_scenarios::seed::{Quotas, seed};
use uuid::Uuid;

const RTTS_MS: [u64; 3] = [0, 1, 10];
const HOT_ROW_CLIENTS: usize = 32;
const HOT_ROW_POOL: u32 = 8;

struct Plan {
    mode: &'static str,
    samples: usize,
    hot_row_duration: Duration,
    cpu_iterations: usize,
    cpu_transactions: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                mode: "quick",
                samples: 15,
                hot_row_duration: Duration::from_secs(4),
                cpu_iterations: 20_000,
                cpu_transactions: 30,
            }
        } else {
            Plan {
                mode: "full",
                samples: 41,
                hot_row_duration: Duration::from_secs(10),
                cpu_iterations: 100_000,
                cpu_transactions: 100,
            }
        }
    }
}

async fn compare(plan: Plan) -> Result<Report, BoxError> {
    let setup = Setup::new(&format!("{}{EXTRA_SCHEMA}", pgbatch_scenarios::SCHEMA_SQL)).await?;
    let mut admin = pgbatch::Connection::connect_with(setup.db.config()).await?;
    let silo =
        seed(&mut admin, "bench", Quotas { cpus: i64::MAX / 4, ram: i64::MAX / 4, storage: i64::MAX / 4 }).await?.silo;

    let mut latencies = Vec::new();
    let mut select_one = HashMap::new();
    let mut round = 0i64;
    for rtt_ms in RTTS_MS {
        let rtt = Duration::from_millis(rtt_ms);
        let proxy = setup.proxy_with(rtt / 2, true).await?;
        let config = setup.db.config_via(&proxy);
        let mut clients = Clients::connect(&config, &setup.db.url_via(&proxy)).await?;
        let probe = plain(&config).await?;
        let mut probe_latencies = Vec::new();
        for _ in 0..plan.samples {
            let start = Instant::now();
            probe.query_typed("SELECT 1", &[]).await?;
            probe_latencies.push(start.elapsed());
        }
        select_one.insert(rtt, quantile(&probe_latencies, 0.5));
        for workload in Workload::ALL {
            for contender in Contender::ALL {
                for _ in 0..3 {
                    round += 1;
                    clients.run(contender, &workload.statements(silo, round)).await?;
                }
            }
            let mut samples: HashMap<Contender, Vec<Duration>> = HashMap::new();
            for i in 0..plan.samples {
                for k in 0..Contender::ALL.len() {
                    let contender = Contender::ALL[(i + k) % Contender::ALL.len()];
                    round += 1;
                    let statements = workload.statements(silo, round);
                    let start = Instant::now();
                    clients.run(contender, &statements).await?;
                    samples.entry(contender).or_default().push(start.elapsed());
                }
            }
            for contender in Contender::ALL {
                let taken = &samples[&contender];
                latencies.push(Latency {
                    workload,
                    rtt,
                    contender,
                    median: quantile(taken, 0.5),
                    p99: quantile(taken, 0.99),
                    round_trips: None,
                });
            }
            eprintln!("measured {} at {rtt_ms} ms", workload.name());
        }
    }
    let measured = |rtt: Duration| select_one[&rtt].saturating_sub(select_one[&Duration::ZERO]);
    let baseline: HashMap<(Workload, Contender), Duration> =
        latencies.iter().filter(|l| l.rtt.is_zero()).map(|l| ((l.workload, l.contender), l.median)).collect();
    for latency in latencies.iter_mut().filter(|l| !l.rtt.is_zero()) {
        let added = latency.median.as_secs_f64() - baseline[&(latency.workload, latency.contender)].as_secs_f64();
        latency.round_trips = Some(added / measured(latency.rtt).as_secs_f64());
    }

    let hot_row = hot_row_run(&setup, silo, plan.hot_row_duration).await?;
    // Synchronous: the measuring thread is the one the CPU clock reads.
    let mut cpu = render_cost(plan.cpu_iterations, silo)?;
    cpu.extend(client_cpu(&setup, silo, plan.cpu_transactions)?);
    let single_query = pgbatch_bench::single_query::measure(&setup, plan.samples * 20, plan.samples * 2).await?;
    let environment = environment(&mut admin, plan.mode).await?;
    Ok(Report {
        mode: plan.mode,
        samples: plan.samples,
        environment,
        measured_rtts: RTTS_MS.iter().map(|ms| Duration::from_millis(*ms)).map(|rtt| (rtt, measured(rtt))).collect(),
        latencies,
        hot_row,
        cpu,
        single_query,
    })
}

/// 32 clients through a pool of 8 connections, each running the hot-row transaction until
/// the time is up.
async fn hot_row_run(
    setup: &Setup,
    silo: Uuid,
    duration: Duration,
) -> Result<(Duration, Duration, Vec<HotRow>), BoxError> {
    let rtt = Duration::from_millis(1);
    // tokio's timer (not spinning: 8 connections would need the two cores for it).
    let proxy = setup.proxy_with(rtt / 2, true).await?;
    let config = setup.db.config_via(&proxy);
    let probe = plain(&config).await?;
    probe.query_typed("SELECT 1", &[]).await?;
    let start = Instant::now();
    for _ in 0..20 {
        probe.query_typed("SELECT 1", &[]).await?;
    }
    let measured = start.elapsed() / 20;

    let pgbatch_pool =
        bb8::Pool::builder().max_size(HOT_ROW_POOL).build(pgbatch::ConnectionManager::new(config.clone())).await?;
    let diesel_pool = bb8::Pool::builder()
        .max_size(HOT_ROW_POOL)
        .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(setup.db.url_via(&proxy)))
        .await?;
    let mut rows = Vec::new();
    for contender in [Contender::Pgbatch, Contender::DieselAsync] {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        for _ in 0..HOT_ROW_CLIENTS {
            let (pgbatch_pool, diesel_pool) = (pgbatch_pool.clone(), diesel_pool.clone());
            tasks.push(tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let statements = hot_row(silo);
                    let start = Instant::now();
                    let result: Result<(), BoxError> = match contender {
                        Contender::Pgbatch => {
                            let mut batch = pgbatch::Batch::new();
                            for statement in &statements {
                                statement.push_to(&mut batch);
                            }
                            batch.run(&pgbatch_pool).await.map(drop).map_err(Into::into)
                        }
                        _ => match diesel_pool.get().await {
                            Ok(mut connection) => diesel_transaction(&mut connection, &statements).await,
                            Err(error) => Err(error.to_string().into()),
                        },
                    };
                    match result {
                        Ok(()) => latencies.push(start.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            }));
        }
        let (mut latencies, mut failed) = (Vec::new(), 0);
        for task in tasks {
            let (taken, failures) = task.await?;
            latencies.extend(taken);
            failed += failures;
        }
        rows.push(HotRow {
            contender,
            tps: latencies.len() as f64 / duration.as_secs_f64(),
            median: quantile(&latencies, 0.5),
            p99: quantile(&latencies, 0.99),
            failed,
        });
        eprintln!("measured the hot row with {}", contender.name());
    }
    Ok((rtt, measured, rows))
}

/// Per-statement cost of turning a Diesel statement into SQL and binary binds: pgbatch's
/// `push` against the same rendering as diesel-async does it per query.
fn render_cost(iterations: usize, silo: Uuid) -> Result<Vec<Cpu>, BoxError> {
    let statement = |i: usize| {
        diesel::insert_into(project::table)
            .values((
                project::id.eq(Uuid::from_u128(i as u128)),
                project::silo_id.eq(silo),
                project::name.eq(format!("p{i}")),
            ))
            .returning(project::id)
    };
    let start = thread_cpu()?;
    let mut batch = pgbatch::Batch::new();
    for i in 0..iterations {
        batch.push(statement(i));
        if batch.len() == 1000 {
            batch = pgbatch::Batch::new();
        }
    }
    drop(batch);
    let pgbatch_ns = (thread_cpu()? - start).as_nanos() as f64 / iterations as f64;

    let start = thread_cpu()?;
    for i in 0..iterations {
        let query = statement(i);
        let mut builder = PgQueryBuilder::default();
        query.to_sql(&mut builder, &Pg).expect("renders");
        let sql = builder.finish();
        let mut binds = RawBytesBindCollector::<Pg>::new();
        query.collect_binds(&mut binds, &mut NoCustomTypes, &Pg).expect("encodes");
        std::hint::black_box((sql, binds));
    }
    let diesel_ns = (thread_cpu()? - start).as_nanos() as f64 / iterations as f64;
    Ok(vec![
        Cpu { what: "pgbatch `push` (render, encode, check, keep for replay)", nanos_per_statement: pgbatch_ns },
        Cpu { what: "Diesel render + encode, as diesel-async does per query", nanos_per_statement: diesel_ns },
    ])
}

/// The whole client-side CPU per statement of W3 over a direct connection: every
/// contender on one thread of its own (client and connection driver alike), measured by
/// the kernel's per-thread CPU clock.
fn client_cpu(setup: &Setup, silo: Uuid, transactions: usize) -> Result<Vec<Cpu>, BoxError> {
    let config = setup.db.config().clone();
    let url = setup.db.url();
    let thread = std::thread::spawn(move || -> Result<Vec<Cpu>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut clients = Clients::connect(&config, &url).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for contender in Contender::ALL {
                for round in 0..3 {
                    clients.run(contender, &Workload::Sync.statements(silo, round)).await.map_err(|e| e.to_string())?;
                }
                let statements: Vec<_> =
                    (0..transactions).map(|round| Workload::Sync.statements(silo, round as i64)).collect();
                let before = thread_cpu()?;
                for statements in &statements {
                    clients.run(contender, statements).await.map_err(|e| e.to_string())?;
                }
                let spent = thread_cpu()?.saturating_sub(before);
                let per_statement = spent.as_nanos() as f64 / (transactions * statements[0].len()) as f64;
                out.push(Cpu { what: client_cpu_label(contender), nanos_per_statement: per_statement });
            }
            Ok(out)
        })
    });
    thread.join().map_err(|_| "the CPU measurement panicked")?.map_err(Into::into)
}

fn client_cpu_label(contender: Contender) -> &'static str {
    match contender {
        Contender::Pgbatch => "W3 client total: pgbatch",
        Contender::DieselAsync => "W3 client total: diesel-async interactive",
        Contender::TokioPostgres => "W3 client total: tokio-postgres interactive",
        Contender::Pipeline => "W3 client total: hand-written pipeline",
    }
}

async fn environment(admin: &mut pgbatch::Connection, mode: &str) -> Result<Vec<String>, BoxError> {
    let mut batch = pgbatch::Batch::new();
    let version = batch.push(diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("version()"))).one::<String>();
    let server = batch.run(admin).await?.get(&version)?;
    let read = |path: &str, key: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| {
                text.lines().find(|l| l.starts_with(key)).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap_or_default();
    let version_of = |name: &str| {
        let marker = format!("name = \"{name}\"\nversion = \"");
        lock.find(&marker)
            .and_then(|at| lock[at + marker.len()..].split('"').next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    };
    Ok(vec![
        format!("date: {} (mode: {mode})", command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        format!(
            "machine: {} cores ({}), {} memory",
            std::thread::available_parallelism().map_or(0, usize::from),
            read("/proc/cpuinfo", "model name"),
            read("/proc/meminfo", "MemTotal")
        ),
        format!("server: {server}, on the same machine"),
        format!("client: {}", command("rustc", &["--version"])),
        format!(
            "crates: pgbatch {}, diesel {}, diesel-async {}, tokio-postgres {}, bb8 {}",
            env!("CARGO_PKG_VERSION"),
            version_of("diesel"),
            version_of("diesel-async"),
            version_of("tokio-postgres"),
            version_of("bb8")
        ),
    ])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let report = match compare(Plan::new(quick)).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("compare: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.latency_table());
    println!("{}", report.ratio_table());
    println!("{}", report.hot_row_table());
    println!("{}", report.cpu_table());
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
    // Sections other binaries wrote (PgBouncer's figure, the session reset's) stay.
    let previous = std::fs::read_to_string(BENCHMARKS_MD).unwrap_or_default();
    let markdown = KEPT_SECTIONS.iter().fold(report.markdown(), |markdown, name| match section(&previous, name) {
        Some(kept) => with_section(&markdown, name, kept),
        None => markdown,
    });
    let written = std::fs::write(BENCHMARKS_MD, markdown)
        .and_then(|()| std::fs::write(format!("{docs}/benchmarks.svg"), report.svg()));
    if let Err(error) = written {
        eprintln!("compare: could not write docs/benchmarks.md: {error}");
        return ExitCode::FAILURE;
    }
    eprintln!("wrote docs/benchmarks.md and docs/benchmarks.svg in {:.0} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
