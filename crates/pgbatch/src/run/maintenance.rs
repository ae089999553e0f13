//! The batches the extensions run to keep their tables: creating them and deleting old rows.

use std::time::Duration;

use diesel::sql_types::Double;

use super::batch::Batch;
use crate::error::Error;
use crate::pool::Acquire;

/// Runs `statements` (DDL that is safe to repeat) as one batch.
pub(crate) async fn run_ddl<A: Acquire>(target: A, statements: impl IntoIterator<Item = String>) -> Result<(), Error> {
    let mut batch = Batch::new();
    for statement in statements {
        batch.push(diesel::sql_query(statement));
    }
    batch.run(target).await.map(drop)
}

/// Runs `delete`, a `DELETE` whose `$1` is an age in seconds, with `age`; returns how many
/// rows it deleted.
pub(crate) async fn delete_older_than<A: Acquire>(target: A, delete: String, age: Duration) -> Result<u64, Error> {
    let mut batch = Batch::new();
    let deleted = batch.push(diesel::sql_query(delete).bind::<Double, _>(age.as_secs_f64())).affected();
    let committed = batch.run(target).await?;
    Ok(committed.get(&deleted).expect("a DELETE reports its row count"))
}
