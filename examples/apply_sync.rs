//! Scenario S1: apply a batch of sync messages (per message: the item's new value and its
//! log entry; then the merged clock), all or nothing, in one round trip — and see that one
//! bad message leaves the data, the log and the clock unchanged, and is named.
//!
//! ```sh
//! cargo run --example apply_sync
//! ```
//!
//! The example works in a throwaway database of its own (see `pgbatch-testing`).

use pgbatch::Batch;
use pgbatch_scenarios::example::report_failure;
use pgbatch_scenarios::sync::{self, Message, SyncError};
use uuid::Uuid;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (db, pool) = pgbatch_scenarios::seed::playground().await?;
    db.execute(
        "INSERT INTO sync_item (id, value) SELECT g, 'initial' FROM generate_series(0, 9) g; \
         INSERT INTO sync_clock (id, clock) VALUES (1, 0);",
    )
    .await?;
    let client = db.connect().await?;
    let messages = |clock: i64, bad: Option<(usize, Message)>| -> Vec<Message> {
        let mut set: Vec<Message> = (0..10)
            .map(|item| Message { id: Uuid::new_v4(), item, value: format!("v{clock}-{item}"), clock })
            .collect();
        if let Some((index, message)) = bad {
            set[index] = message;
        }
        set
    };

    // 1. Ten messages and the clock: 21 statements, one round trip, committed together.
    let mut batch = Batch::<SyncError>::default();
    batch.append(sync::apply(&messages(1, None), 1));
    batch.run(&pool).await?;
    println!("applied 10 messages at clock 1 ({} statements)", batch.len());
    println!("  {}", state(&client).await?);

    // 2. The same, with message 6 writing a value the item table refuses, and 3. with
    //    message 3 naming an item that does not exist: nothing changes.
    let too_long = Message { id: Uuid::new_v4(), item: 6, value: "x".repeat(500), clock: 2 };
    let unknown = Message { id: Uuid::new_v4(), item: 42, value: "lost".into(), clock: 2 };
    for (case, bad) in [("a value too long", (6, too_long)), ("an unknown item", (3, unknown))] {
        let mut batch = Batch::<SyncError>::default();
        batch.append(sync::apply(&messages(2, Some(bad)), 2));
        report_failure(case, batch.run(&pool).await);
        println!("  {}", state(&client).await?);
    }
    Ok(())
}

/// The items' values, the log's length and the clock.
async fn state(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (SELECT string_agg(DISTINCT value, ',') FROM sync_item), \
             (SELECT count(*) FROM sync_message), (SELECT clock FROM sync_clock WHERE id = 1)",
            &[],
        )
        .await?;
    let (values, logged, clock): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(format!("item values: {{{values}}}  log entries: {logged}  clock: {clock}"))
}
