//! pgbatch against libpq's pipeline mode on the S1 transaction (20 sync messages and the
//! clock: 41 statements between `BEGIN` and `COMMIT`), with no added network delay.
//!
//! libpq's pipeline mode, driven by `pgbench` (`\startpipeline` ... `\endpipeline`, one
//! `Sync` for the whole transaction), is the floor a client can reach on this shape: with
//! unnamed statements (`-M extended`, parsed and planned each time) and with prepared ones
//! (`-M prepared`). pgbatch runs with its statement cache on (the default) on a held
//! connection, and on a pool of one where every batch is a checkout of its own, so that
//! each batch is a new holder whose unit starts with the session reset; and with the cache
//! off on a held connection, as every statement was sent before the cache. All run in
//! alternating rounds so that they share the machine's noise; each round's mean latency is
//! taken, and the medians of the rounds are compared. pgbatch's client CPU per
//! statement is read from the kernel's per-thread clock (the connection needs no driver
//! task: the measuring thread does all of the client's work, building the batch included).
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin pipeline
//! ```
//!
//! Exits with status 1 when PostgreSQL or `pgbench` cannot be found.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgbatch_bench::contenders::BoxError;
use pgbatch_bench::workload::{EXTRA_SCHEMA, Workload};
use pgbatch_bench::{Setup, thread_cpu};
use uuid::Uuid;

const ROUNDS: usize = 11;
const TRANSACTIONS_PER_ROUND: usize = 500;

/// The S1 transaction as a pgbench pipeline: the same statements as Diesel renders them
/// for pgbatch, the message ids made by the server.
fn pgbench_script() -> String {
    let mut script = String::from("\\set round random(1, 1000000000)\n\\startpipeline\nBEGIN;\n");
    for item in 0..20 {
        script.push_str(&format!(
            "UPDATE \"sync_item\" SET \"value\" = 'v' || :round WHERE (\"sync_item\".\"id\" = {item});\n\
             INSERT INTO \"sync_message\" (\"id\", \"item_id\", \"value\", \"clock\") VALUES (gen_random_uuid(), {item}, 'v' || :round, :round);\n"
        ));
    }
    script.push_str(
        "UPDATE \"sync_clock\" SET \"clock\" = :round WHERE (\"sync_clock\".\"id\" = 1);\nCOMMIT;\n\\endpipeline\n",
    );
    script
}

/// `pgbench` on the PATH, or in PostgreSQL's usual binary directories.
fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin/pgbench"));
    on_path.chain(installed).find(|path| path.is_file())
}

/// The children's CPU time so far, from `/proc/self/stat` (in clock ticks of 10 ms).
fn children_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 16 and 17 of the whole line (cutime, cstime) are 13 and 14 after the name.
    let ticks: u64 = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct Round {
    mean: Duration,
    cpu_per_statement: Duration,
    /// The part of it spent in the kernel (system calls, wake-ups), from clock ticks.
    kernel_per_statement: Duration,
}

/// The calling thread's (user, system) CPU time, in clock ticks of 10 ms.
fn thread_user_system() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rfind(')')
        .map(|at| stat[at + 2..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let ticks = |index: usize| Duration::from_millis(fields.get(index).copied().unwrap_or(0) * 10);
    (ticks(11), ticks(12))
}

fn pgbench_round(pgbench: &PathBuf, script: &PathBuf, setup: &Setup, mode: &str) -> Result<Round, BoxError> {
    let config = setup.db.config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let mut command = std::process::Command::new(pgbench);
    command.args(["-n", "-M", mode, "-t", &TRANSACTIONS_PER_ROUND.to_string(), "-h", &host, "-p", &port]);
    command.args(["-U", config.get_user().unwrap_or("postgres"), "-f"]).arg(script).arg(setup.db.name());
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
    }
    let cpu_before = children_cpu().unwrap_or_default();
    let output = command.output()?;
    let cpu = children_cpu().unwrap_or_default().saturating_sub(cpu_before);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("pgbench failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr)).into());
    }
    let average: f64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("latency average = ")?.strip_suffix(" ms")?.parse().ok())
        .ok_or("no latency average in pgbench's output")?;
    Ok(Round {
        mean: Duration::from_secs_f64(average / 1e3),
        cpu_per_statement: cpu / (TRANSACTIONS_PER_ROUND * 41) as u32,
        kernel_per_statement: Duration::ZERO,
    })
}

/// Where pgbatch's batches run.
enum Target<'a> {
    /// A connection the measuring thread holds: no reset between its batches.
    Held(&'a mut pgbatch::Connection),
    /// A pool of one connection, each batch a checkout of its own: a new holder each time.
    CheckedOut(&'a pgbatch::Pool),
}

fn pgbatch_round(target: &mut Target<'_>, runtime: &tokio::runtime::Runtime, round: usize) -> Result<Round, BoxError> {
    let transactions: Vec<_> = (0..TRANSACTIONS_PER_ROUND)
        .map(|i| Workload::Sync.statements(Uuid::nil(), (round * TRANSACTIONS_PER_ROUND + i) as i64))
        .collect();
    let cpu_before = thread_cpu()?;
    let (_, kernel_before) = thread_user_system();
    let started = Instant::now();
    runtime.block_on(async {
        for statements in &transactions {
            let mut batch = pgbatch::Batch::new();
            for statement in statements {
                statement.push_to(&mut batch);
            }
            match target {
                Target::Held(connection) => batch.run(&mut **connection).await?,
                Target::CheckedOut(pool) => batch.run(*pool).await?,
            };
        }
        Ok::<_, pgbatch::Error>(())
    })?;
    let elapsed = started.elapsed();
    let cpu = thread_cpu()?.saturating_sub(cpu_before);
    let kernel = thread_user_system().1.saturating_sub(kernel_before);
    Ok(Round {
        mean: elapsed / TRANSACTIONS_PER_ROUND as u32,
        cpu_per_statement: cpu / (TRANSACTIONS_PER_ROUND * 41) as u32,
        kernel_per_statement: kernel / (TRANSACTIONS_PER_ROUND * 41) as u32,
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn run() -> Result<(), BoxError> {
    let pgbench = find_pgbench().ok_or("pgbench not found: install PostgreSQL's client programs")?;
    // The measuring thread does all the client's work: one thread, one runtime.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let setup = runtime.block_on(Setup::new(&format!("{}{EXTRA_SCHEMA}", pgbatch_scenarios::SCHEMA_SQL)))?;
    let script = std::env::temp_dir().join(format!("pgbatch-s1-pipeline-{}.sql", std::process::id()));
    std::fs::write(&script, pgbench_script())?;
    let mut cached = runtime.block_on(pgbatch::Connection::connect_with(setup.db.config()))?;
    let mut uncached = runtime.block_on(pgbatch::Connection::connect_with(setup.db.config()))?;
    uncached.set_statement_cache(pgbatch::StatementCache::Off);
    let pool = runtime
        .block_on(bb8::Pool::builder().max_size(1).build(pgbatch::ConnectionManager::new(setup.db.config().clone())))?;

    let names = [
        "libpq pipeline, unnamed statements (pgbench -M extended)",
        "libpq pipeline, prepared statements (pgbench -M prepared)",
        "pgbatch, statement cache off, held connection",
        "pgbatch, statement cache, held connection",
        "pgbatch, statement cache, a checkout per batch (session reset each batch)",
    ];
    let mut rounds: Vec<Vec<Round>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..=ROUNDS {
        let measured = [
            pgbench_round(&pgbench, &script, &setup, "extended")?,
            pgbench_round(&pgbench, &script, &setup, "prepared")?,
            pgbatch_round(&mut Target::Held(&mut uncached), &runtime, round)?,
            pgbatch_round(&mut Target::Held(&mut cached), &runtime, round)?,
            pgbatch_round(&mut Target::CheckedOut(&pool), &runtime, round)?,
        ];
        // Round 0 warms every contender up.
        if round > 0 {
            for (kept, measured) in rounds.iter_mut().zip(measured) {
                kept.push(measured);
            }
            eprintln!("round {round} of {ROUNDS}");
        }
    }
    let _ = std::fs::remove_file(&script);
    let means: Vec<Duration> = rounds.iter().map(|rounds| median(rounds.iter().map(|r| r.mean).collect())).collect();
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
    let us = |d: Duration| format!("{:.2} µs", d.as_secs_f64() * 1e6);
    println!(
        "# S1, 41 statements per transaction, no added delay; median of {ROUNDS} rounds of {TRANSACTIONS_PER_ROUND}"
    );
    let prepared = means[1].as_secs_f64();
    for (name, mean) in names.iter().zip(&means) {
        println!(
            "{name:<74} {:>10} per transaction, {:.3}x the prepared pipeline",
            ms(*mean),
            mean.as_secs_f64() / prepared
        );
    }
    println!("statements cached on pgbatch's held connection: {}", cached.cached_statements());
    let cpu = |index: usize| median(rounds[index].iter().map(|r| r.cpu_per_statement).collect());
    let kernel = median(rounds[3].iter().map(|r| r.kernel_per_statement).collect());
    println!(
        "client CPU per statement: pgbatch with its cache {} (build, encode, send, read, decode; {} of it in \
         the kernel), pgbench -M prepared {} (process clock ticks)",
        us(cpu(3)),
        us(kernel.min(cpu(3))),
        us(cpu(1)),
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pipeline: {error}");
            ExitCode::FAILURE
        }
    }
}
