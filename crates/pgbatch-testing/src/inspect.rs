//! Looking at what a server holds with simple queries: text results, no named statements,
//! so the same checks run directly and through a transaction-pooling PgBouncer (where a
//! statement prepared in one transaction may be gone in the next).

use tokio_postgres::{Client, SimpleQueryMessage};

/// Every row `sql` returns, each as its columns' text (`None` for NULL).
///
/// # Errors
///
/// The server's error for `sql`, or a lost connection.
pub async fn query_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|index| row.get(index).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The first column of the first row `sql` returns, as text; `None` when there is no row
/// or the value is NULL.
///
/// ```no_run
/// # async fn example(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let count = pgbatch_testing::query_value(client, "SELECT count(*) FROM pg_class").await?;
/// assert!(count.is_some());
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The server's error for `sql`, or a lost connection.
pub async fn query_value(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(query_rows(client, sql).await?.into_iter().next().and_then(|row| row.into_iter().next().flatten()))
}

/// The count `sql` returns (its first column of its first row, read as an integer), with
/// a simple query. Panics, naming `sql`, when the query fails or returns no count: it is
/// meant for assertions in tests.
///
/// ```no_run
/// # async fn example(client: &tokio_postgres::Client) {
/// assert_eq!(pgbatch_testing::count(client, "SELECT count(*) FROM pg_prepared_xacts").await, 0);
/// # }
/// ```
pub async fn count(client: &Client, sql: &str) -> i64 {
    let value = query_value(client, sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
    value.and_then(|value| value.parse().ok()).unwrap_or_else(|| panic!("{sql} returned no count"))
}

/// Cancels, from `client`'s session, the first session reset it sees running in its
/// database within `within` (`DISCARD ALL`, or `DISCARD TEMP`, the long step of the reset
/// that keeps the statement cache); true when it cancelled one.
pub async fn cancel_session_reset(client: &Client, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let cancelled = count(
            client,
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' \
             AND query IN ('DISCARD ALL', 'DISCARD TEMP') AND pid <> pg_backend_pid()",
        )
        .await;
        if cancelled > 0 {
            return true;
        }
    }
    false
}
