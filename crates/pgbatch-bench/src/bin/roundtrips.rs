//! Counts the network round trips a batch really costs.
//!
//! Puts a TCP proxy that delays each direction by D between pgbatch and PostgreSQL, runs
//! batches of 1, 5 and 20 statements (and batches with guards), and prints for each
//! `effective_round_trips = (median latency with D - median latency with D = 0) / 2D`. One
//! round trip per batch, whatever its size, prints values close to 1.
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin roundtrips
//! ```
//!
//! Exits with status 1 when PostgreSQL cannot be reached.

use std::process::ExitCode;
use std::time::Duration;

use diesel::prelude::*;
use pgbatch::{Batch, Connection};
use pgbatch_bench::{Setup, effective_round_trips, quantile, sample};

/// The probe's one table.
#[allow(missing_docs)]
mod schema {
    diesel::table! {
        probe (id) {
            id -> Int8,
            n -> Int8,
        }
    }
}

use schema::probe;

const SCHEMA: &str = "CREATE TABLE probe (id bigserial PRIMARY KEY, n bigint NOT NULL);
                      INSERT INTO probe (n) VALUES (0);";
const ONE_WAY: Duration = Duration::from_millis(10);
const WARMUP: usize = 3;
const SAMPLES: usize = 21;

/// A batch of `statements` statements, `guards` of which are guards.
fn batch(statements: usize, guards: usize) -> Batch {
    let mut batch = Batch::new();
    for i in 0..statements - guards {
        batch.push(diesel::insert_into(probe::table).values(probe::n.eq(i as i64)));
    }
    for i in 0..guards {
        if i % 2 == 0 {
            batch.guard_exists(probe::table.filter(probe::n.eq(0)).select(probe::id)).label("a row exists");
        } else {
            batch.push(diesel::update(probe::table.find(1)).set(probe::n.eq(0))).label("one row").expect_rows(1);
        }
    }
    batch
}

async fn median_latency(connection: &mut Connection, batch: &Batch) -> Result<Duration, pgbatch::Error> {
    let latencies = sample(WARMUP, SAMPLES, async || batch.run(&mut *connection).await.map(drop)).await?;
    Ok(quantile(&latencies, 0.5))
}

async fn probe() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let setup = Setup::new(SCHEMA).await?;
    let direct = setup.proxy_with(Duration::ZERO, true).await?;
    let delayed = setup.proxy_with(ONE_WAY, true).await?;
    let mut fast = setup.connect_via(&direct).await?;
    let mut slow = setup.connect_via(&delayed).await?;
    println!("# one-way delay {} ms, median of {SAMPLES} batches", ONE_WAY.as_millis());
    for (statements, guards) in [(1, 0), (5, 0), (20, 0), (5, 2), (20, 4)] {
        let batch = batch(statements, guards);
        let without = median_latency(&mut fast, &batch).await?;
        let with = median_latency(&mut slow, &batch).await?;
        let guards = if guards > 0 { format!(" guards={guards}") } else { String::new() };
        println!(
            "statements={statements}{guards} effective_round_trips={:.2}",
            effective_round_trips(with, without, ONE_WAY)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match probe().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("roundtrips: {error}");
            ExitCode::FAILURE
        }
    }
}
