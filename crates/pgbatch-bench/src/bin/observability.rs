//! What watching pgbatch costs: C1 batches (a project and its provisioning counter) on one
//! connection at 0 ms added delay, with nothing installed and with a `tracing` subscriber
//! that keeps every field of every span (`pgbatch_testing::SpanCollector`, as an exporter's
//! layer does) and metrics-util's recorder, interleaved sample by sample on one
//! current-thread runtime.
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin observability
//! ```
//!
//! Prints both medians and their ratio. Exits with status 1 when no server can be had.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use metrics_util::debugging::DebuggingRecorder;
use pgbatch::Connection;
use pgbatch_bench::workload::Workload;
use pgbatch_bench::{Setup, quantile};
use pgbatch_scenarios::seed::{Quotas, seed};
use pgbatch_testing::SpanCollector;
use tracing_subscriber::prelude::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WARMUP: usize = 100;
const SAMPLES: usize = 3_000;

async fn measure() -> Result<(), BoxError> {
    let setup = Setup::new(pgbatch_scenarios::SCHEMA_SQL).await?;
    let mut connection = Connection::connect_with(setup.db.config()).await?;
    let quotas = Quotas { cpus: i64::MAX / 4, ram: i64::MAX / 4, storage: i64::MAX / 4 };
    let silo = seed(&mut connection, "bench", quotas).await?.silo;
    // Keeps every field of every span, as an exporter's layer does.
    let spans = SpanCollector::default();
    let subscriber: tracing::Dispatch = tracing_subscriber::registry().with(spans.clone()).into();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut round = 0;
    let (mut bare, mut watched) = (Vec::new(), Vec::new());
    for sample in 0..WARMUP + SAMPLES {
        // Interleaved, and in turn first, so that machine noise and order hit both alike.
        let mut one = |watch: bool| {
            round += 1;
            let mut batch = pgbatch::Batch::new();
            for statement in Workload::CreateProject.statements(silo, round) {
                statement.push_to(&mut batch);
            }
            (watch, batch)
        };
        let pair = if sample % 2 == 0 { [one(false), one(true)] } else { [one(true), one(false)] };
        for (watch, batch) in pair {
            let started = Instant::now();
            let elapsed = if watch {
                let _subscriber = tracing::dispatcher::set_default(&subscriber);
                let _recorder = metrics::set_default_local_recorder(&recorder);
                batch.run(&mut connection).await?;
                started.elapsed()
            } else {
                batch.run(&mut connection).await?;
                started.elapsed()
            };
            spans.clear();
            if sample >= WARMUP {
                if watch { watched.push(elapsed) } else { bare.push(elapsed) }
            }
        }
    }
    let recorded = snapshotter.snapshot().into_vec().len();
    let ms = |latency: Duration| latency.as_secs_f64() * 1e3;
    let (bare_median, watched_median) = (quantile(&bare, 0.5), quantile(&watched, 0.5));
    println!("| C1 at 0 ms, one connection | median ms | p90 ms |");
    println!("|---|---|---|");
    println!("| nothing installed | {:.3} | {:.3} |", ms(bare_median), ms(quantile(&bare, 0.9)));
    println!("| subscriber and recorder installed | {:.3} | {:.3} |", ms(watched_median), ms(quantile(&watched, 0.9)));
    println!(
        "\nwatched / bare median: {:.3} ({SAMPLES} samples each after {WARMUP} warm-up; {recorded} metrics recorded)",
        watched_median.as_secs_f64() / bare_median.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match measure().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("observability: {error}");
            ExitCode::FAILURE
        }
    }
}
