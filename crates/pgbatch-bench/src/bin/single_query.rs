//! One diesel-async query at a time (a point select, an insert) on pgbatch's connection
//! against `AsyncPgConnection` with its statement cache warm and disabled: the
//! `single-query` part of `compare`, on its own.
//!
//! ```sh
//! cargo run --release -p pgbatch-bench --bin single_query
//! ```
//!
//! Prints the table (as `compare` writes it into `docs/benchmarks.md`) and writes nothing.
//! `--quick` takes 300 samples at 0 ms and 30 at 10 ms; without it, 820 and 82.

use std::process::ExitCode;

use pgbatch_bench::Setup;
use pgbatch_bench::workload::EXTRA_SCHEMA;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let (at_zero, at_ten) = if quick { (300, 30) } else { (820, 82) };
    let measured = async {
        let setup = Setup::new(&format!("{}{EXTRA_SCHEMA}", pgbatch_scenarios::SCHEMA_SQL)).await?;
        pgbatch_bench::single_query::measure(&setup, at_zero, at_ten).await
    };
    match measured.await {
        Ok(markdown) => {
            println!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("single_query: {error}");
            ExitCode::FAILURE
        }
    }
}
