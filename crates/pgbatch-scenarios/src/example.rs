//! What the runnable examples share: logs that honour `RUST_LOG`, and errors printed for
//! people (their message and causes, not a debug dump) with a failing exit status.

use std::error::Error;
use std::process::ExitCode;

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (for example
/// `RUST_LOG=pgbatch=debug` shows every batch's span with its outcome); warnings only
/// when it is unset or invalid.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs an example's body with logging set up; prints its error, if any, with every cause,
/// and exits non-zero.
pub async fn run(body: impl Future<Output = Result<(), Box<dyn Error>>>) -> ExitCode {
    init_logging();
    match body.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                // Some errors already quote their causes in their own message.
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    message.push_str(&format!("\n  caused by: {cause_text}"));
                }
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what became of a batch expected to fail: its domain error and the statement it
/// failed at, by position and label.
pub fn report_failure<T, E: std::fmt::Display + std::fmt::Debug>(case: &str, result: Result<T, pgbatch::Error<E>>) {
    match result {
        Err(pgbatch::Error::Domain { error, failure }) => {
            println!("{case}: {error}");
            println!("  failed at statement {} ({})", failure.index(), failure.label().unwrap_or("unlabelled"));
        }
        Err(other) => println!("{case}: {other}"),
        Ok(_) => println!("{case}: unexpectedly committed"),
    }
}
