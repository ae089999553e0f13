//! Shared pieces of pgbatch's measurement binaries: a database behind a delaying proxy,
//! latency statistics, the workloads, the contenders and the report.

pub mod contenders;
pub mod report;
pub mod single_query;
pub mod workload;

use std::time::{Duration, Instant};

use pgbatch::Connection;
use pgbatch_testing::{Proxy, TestDatabase};

/// A throwaway database, reached directly or through a proxy that delays each direction.
pub struct Setup {
    /// The database (dropped with this value).
    pub db: TestDatabase,
}

impl Setup {
    /// Creates a database (found as `pgbatch-testing` describes) and runs `schema` in it.
    ///
    /// # Errors
    ///
    /// When no PostgreSQL can be reached or the schema fails.
    pub async fn new(schema: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let db = TestDatabase::create().await?;
        db.execute(schema).await?;
        Ok(Setup { db })
    }

    /// A proxy in front of the server that delays each direction by `one_way`, to the
    /// microsecond when `precise` (see [`pgbatch_testing::ProxyBuilder::precise`]).
    ///
    /// # Errors
    ///
    /// When the proxy cannot listen.
    pub async fn proxy_with(
        &self,
        one_way: Duration,
        precise: bool,
    ) -> Result<Proxy, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.db.proxy().await?.delay(one_way).precise(precise).start().await?)
    }

    /// A pgbatch connection through `proxy`.
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub async fn connect_via(&self, proxy: &Proxy) -> Result<Connection, pgbatch::ConnectError> {
        Connection::connect_with(&self.db.config_via(proxy)).await
    }
}

/// Runs `run` `warmup + samples` times and returns the latencies of the last `samples`.
///
/// # Errors
///
/// The first error `run` returns.
pub async fn sample<E>(
    warmup: usize,
    samples: usize,
    mut run: impl AsyncFnMut() -> Result<(), E>,
) -> Result<Vec<Duration>, E> {
    for _ in 0..warmup {
        run().await?;
    }
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        run().await?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

/// The `q`-quantile (0.5 for the median) of `latencies`, by nearest rank.
pub fn quantile(latencies: &[Duration], q: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// How many round trips of `2 * one_way` the delay added: `(with - without) / (2 * one_way)`.
pub fn effective_round_trips(with_delay: Duration, without: Duration, one_way: Duration) -> f64 {
    (with_delay.as_secs_f64() - without.as_secs_f64()) / (2.0 * one_way.as_secs_f64())
}

/// CPU time of the calling thread (Linux).
///
/// # Errors
///
/// When `/proc/thread-self/schedstat` cannot be read.
pub fn thread_cpu() -> Result<Duration, String> {
    let stat =
        std::fs::read_to_string("/proc/thread-self/schedstat").map_err(|e| format!("per-thread CPU time: {e}"))?;
    let nanos: u64 = stat.split_whitespace().next().and_then(|n| n.parse().ok()).ok_or("unreadable schedstat")?;
    Ok(Duration::from_nanos(nanos))
}

/// `docs/benchmarks.md`, which `compare` writes and other binaries add sections to.
pub const BENCHMARKS_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/benchmarks.md");

/// The section of `docs/benchmarks.md` that the `pgbouncer` binary writes.
pub const PGBOUNCER_SECTION: &str = "pgbouncer";

/// The section of `docs/benchmarks.md` that the `session_reset` binary writes.
pub const SESSION_RESET_SECTION: &str = "session-reset";

/// The section of `docs/benchmarks.md` the `multiplexing` binary writes.
pub const MULTIPLEXING_SECTION: &str = "multiplexing";

/// The sections of `docs/benchmarks.md` that other binaries write, which `compare` keeps.
pub const KEPT_SECTIONS: [&str; 3] = [PGBOUNCER_SECTION, SESSION_RESET_SECTION, MULTIPLEXING_SECTION];

/// Where the section named `name` of `doc` lies, markers (`<!-- name -->` and
/// `<!-- /name -->`) included.
fn section_range(doc: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let close = format!("<!-- /{name} -->");
    let start = doc.find(&format!("<!-- {name} -->"))?;
    let end = start + doc[start..].find(&close)? + close.len();
    Some(start..end)
}

/// The body of the section named `name` of `doc`: what one binary wrote, for another to
/// keep when it rewrites the rest.
pub fn section<'d>(doc: &'d str, name: &str) -> Option<&'d str> {
    let range = section_range(doc, name)?;
    let open = format!("<!-- {name} -->\n");
    let close = format!("\n<!-- /{name} -->");
    doc[range].strip_prefix(&open)?.strip_suffix(&close)
}

/// Replaces the section `name` of `docs/benchmarks.md` with `body`.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_section(name: &str, body: &str) -> Result<(), String> {
    let doc = std::fs::read_to_string(BENCHMARKS_MD).unwrap_or_default();
    std::fs::write(BENCHMARKS_MD, with_section(&doc, name, body)).map_err(|e| format!("writing {BENCHMARKS_MD}: {e}"))
}

/// The `main` of a binary whose one argument is PgBouncer's port on 127.0.0.1 (6432 when
/// it is left out): runs `measure` with the port and reports its error under `name`.
pub async fn main_with_pgbouncer_port<F, Fut>(name: &str, measure: F) -> std::process::ExitCode
where
    F: FnOnce(u16) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let port = std::env::args().nth(1).map_or(Ok(6432), |port| port.parse::<u16>());
    let Ok(port) = port else {
        eprintln!("{name}: the argument is PgBouncer's port on 127.0.0.1 (default 6432)");
        return std::process::ExitCode::FAILURE;
    };
    match measure(port).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `doc` with its section `name` replaced by `body` (appended when it has none).
pub fn with_section(doc: &str, name: &str, body: &str) -> String {
    let section_text = format!("<!-- {name} -->\n{}\n<!-- /{name} -->", body.trim_end());
    match section_range(doc, name) {
        Some(range) => format!("{}{section_text}{}", &doc[..range.start], &doc[range.end..]),
        None => format!("{}\n\n{section_text}\n", doc.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let values = [ms(5), ms(1), ms(3), ms(2), ms(4)];
        assert_eq!(quantile(&values, 0.5), ms(3));
        assert_eq!(quantile(&values, 0.99), ms(5));
        assert_eq!(quantile(&values, 0.0), ms(1));
        assert!((effective_round_trips(ms(25), ms(5), ms(10)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_section_is_replaced_in_place_and_appended_once() {
        let doc = with_section("# B\n\ntext", "extra", "first");
        assert_eq!(doc, "# B\n\ntext\n\n<!-- extra -->\nfirst\n<!-- /extra -->\n");
        let doc = with_section(&doc, "extra", "second\n");
        assert_eq!(section(&doc, "extra"), Some("second"));
        assert_eq!(doc.matches("<!-- extra -->").count(), 1);
    }
}
