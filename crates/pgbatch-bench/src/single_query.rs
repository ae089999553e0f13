//! One diesel-async query at a time (a point select, an insert) on pgbatch's connection
//! against `AsyncPgConnection`, with its statement cache warm and with it disabled (each
//! query then prepared first: two round trips), interleaved sample by sample at each RTT.

use std::time::{Duration, Instant};

use diesel::connection::CacheSize;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{Setup, quantile};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod schema {
    diesel::table! {
        bench_item (id) {
            id -> Int8,
            name -> Text,
        }
    }
}

use schema::bench_item;

/// The table the queries read and write.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bench_item (id bigserial PRIMARY KEY, name text NOT NULL); \
                          INSERT INTO bench_item (name) SELECT 'item ' || g FROM generate_series(1, 1000) g";

/// The section of `docs/benchmarks.md` these figures go in.
pub const SECTION: &str = "single-query";

/// The connections compared, in table order.
const CONTENDERS: [&str; 3] =
    ["AsyncPgConnection, statement cache warm", "AsyncPgConnection, cache disabled", "pgbatch Connection"];

/// One connection of each contender.
struct Connections {
    warm: AsyncPgConnection,
    unprepared: AsyncPgConnection,
    ours: pgbatch::Connection,
}

#[derive(Debug, Clone, Copy)]
enum Query {
    PointSelect,
    Insert,
}

impl Query {
    fn name(self) -> &'static str {
        match self {
            Query::PointSelect => "point select",
            Query::Insert => "insert",
        }
    }
}

/// Runs `query` once on `connection` (either kind).
macro_rules! run_query {
    ($query:expr, $connection:expr, $n:expr) => {
        match $query {
            Query::PointSelect => bench_item::table
                .find(1 + $n % 1000)
                .select(bench_item::name)
                .first::<String>($connection)
                .await
                .map(drop),
            Query::Insert => diesel::insert_into(bench_item::table)
                .values(bench_item::name.eq(format!("new {}", $n)))
                .execute($connection)
                .await
                .map(drop),
        }
    };
}

/// Median latencies of `query` on each contender, interleaved, the order rotating.
async fn medians(connections: &mut Connections, query: Query, samples: usize) -> Result<[Duration; 3], BoxError> {
    let mut latencies = [Vec::new(), Vec::new(), Vec::new()];
    let warmup = 5;
    for n in 0..(warmup + samples) as i64 {
        // Each sample starts with another contender, so that none always runs right after
        // the same neighbour (an insert's commit waits on the WAL flush the one before began).
        for offset in 0..3 {
            let contender = (n as usize + offset) % 3;
            let latencies = &mut latencies[contender];
            let started = Instant::now();
            match contender {
                0 => run_query!(query, &mut connections.warm, n)?,
                1 => run_query!(query, &mut connections.unprepared, n)?,
                _ => run_query!(query, &mut connections.ours, n)?,
            }
            if n >= warmup as i64 {
                latencies.push(started.elapsed());
            }
        }
    }
    Ok(latencies.map(|taken| quantile(&taken, 0.5)))
}

/// Measures at 0 and 10 ms of added RTT and returns the section's markdown.
///
/// # Errors
///
/// When a connection or a query fails.
pub async fn measure(setup: &Setup, samples_at_zero: usize, samples_at_ten: usize) -> Result<String, BoxError> {
    pgbatch_testing::TestDatabase::execute(&setup.db, SCHEMA).await?;
    let mut rows = Vec::new();
    for (rtt_ms, samples) in [(0u64, samples_at_zero), (10, samples_at_ten)] {
        let proxy = setup.proxy_with(Duration::from_millis(rtt_ms) / 2, true).await?;
        let url = setup.db.url_via(&proxy);
        let mut unprepared = AsyncPgConnection::establish(&url).await?;
        unprepared.set_prepared_statement_cache_size(CacheSize::Disabled);
        let mut connections = Connections {
            warm: AsyncPgConnection::establish(&url).await?,
            unprepared,
            ours: <pgbatch::Connection as AsyncConnection>::establish(&url).await?,
        };
        for query in [Query::PointSelect, Query::Insert] {
            let medians = medians(&mut connections, query, samples).await?;
            eprintln!("single query: {} at {rtt_ms} ms: {medians:?}", query.name());
            rows.push((query, rtt_ms, medians));
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut markdown = String::from(
        "## One diesel-async query on pgbatch's connection\n\n\
         A single diesel-async query, run through the diesel-async traits on pgbatch's `Connection` and on \
         diesel-async's `AsyncPgConnection`, interleaved sample by sample on one connection each, median \
         latency (`cargo run --release -p pgbatch-bench --bin compare`, or this part alone: `--bin \
         single_query`). pgbatch keeps the statement in its connection's statement cache: prepared under a \
         name of its own with the first run, in the same write (Parse, Bind, Execute, Sync), then bound by \
         that name (Bind, Execute, Sync); `AsyncPgConnection` prepares a statement once and reuses it \
         (cache warm), or prepares it before every run (cache disabled: two round trips).\n\n",
    );
    markdown.push_str(&format!(
        "| query | added RTT | {} | pgbatch / warm |\n|---|---|---|---|---|---|\n",
        CONTENDERS.join(" | ")
    ));
    for (query, rtt_ms, [warm, unprepared, ours]) in &rows {
        markdown.push_str(&format!(
            "| {} | {rtt_ms} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}× |\n",
            query.name(),
            ms(*warm),
            ms(*unprepared),
            ms(*ours),
            ms(*ours) / ms(*warm),
        ));
    }
    Ok(markdown)
}
