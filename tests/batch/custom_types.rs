//! Custom PostgreSQL types (an enum) in binds and in returned rows.

use diesel::prelude::*;
use pgbatch::{Batch, Connection};

use crate::common::*;

fn mood_batch() -> (Batch, pgbatch::One<(i64, Mood)>, pgbatch::All<Mood>) {
    let mut batch = Batch::new();
    batch.push(diesel::insert_into(feeling::table).values((feeling::account_id.eq(1), feeling::mood.eq(Mood::Happy))));
    let inserted = batch
        .push(
            diesel::insert_into(feeling::table)
                .values((feeling::account_id.eq(1), feeling::mood.eq(Mood::Curious)))
                .returning((feeling::account_id, feeling::mood)),
        )
        .one();
    // An array of the custom type: its encoding embeds the type's OID.
    let matching = batch
        .push(feeling::table.filter(feeling::mood.eq_any(vec![Mood::Curious, Mood::Sad])).select(feeling::mood))
        .all();
    (batch, inserted, matching)
}

#[tokio::test]
async fn an_enum_in_binds_arrays_and_returning_rows_works_on_fresh_connections() {
    let h = Harness::new().await;
    for round in 1..=2 {
        // A fresh connection each round, then a second batch on the same one (cached OIDs).
        let mut connection = Connection::connect(&h.db.url()).await.unwrap();
        for _ in 0..2 {
            let (batch, inserted, matching) = mood_batch();
            let committed = batch.run(&mut connection).await.unwrap();
            assert_eq!(committed.get(&inserted).unwrap(), (1, Mood::Curious));
            assert!(committed.get(&matching).unwrap().iter().all(|m| *m == Mood::Curious));
        }
        assert_eq!(h.count("SELECT count(*) FROM feeling WHERE mood = 'curious'").await, 2 * round);
    }
    assert_eq!(h.count("SELECT count(*) FROM feeling").await, 8);
}

#[tokio::test]
async fn a_recreated_type_is_found_again_after_clearing_the_cache() {
    let h = Harness::new().await;
    let mut connection = Connection::connect(&h.db.url()).await.unwrap();
    mood_batch().0.run(&mut connection).await.unwrap();
    h.client
        .batch_execute(
            "DELETE FROM feeling; ALTER TABLE feeling ALTER COLUMN mood TYPE text; DROP TYPE mood; \
             CREATE TYPE mood AS ENUM ('sad', 'happy', 'curious'); \
             ALTER TABLE feeling ALTER COLUMN mood TYPE mood USING mood::mood",
        )
        .await
        .unwrap();
    connection.clear_type_cache();
    let (batch, inserted, _) = mood_batch();
    let committed = batch.run(&mut connection).await.unwrap();
    assert_eq!(committed.get(&inserted).unwrap(), (1, Mood::Curious));
}

/// Many new connections at once (each looks the enum up), with the enum in binds and
/// returned rows, or only in returned rows. Behind a transaction-pooling PgBouncer their
/// lookups and batches share fewer server connections than there are clients: every batch
/// must commit, and every reported outcome must match what the server holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enums_on_many_new_connections_at_once_all_commit_and_are_reported_truly() {
    const CONNECTIONS: usize = 16;
    const BATCHES: usize = 10;
    let h = Harness::new().await;
    h.client.batch_execute("INSERT INTO feeling (account_id, mood) VALUES (1, 'happy')").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CONNECTIONS {
        let url = h.db.url();
        tasks.spawn(async move {
            let mut connection = Connection::connect(&url).await.expect("a connection");
            let mut outcomes = Vec::new();
            for round in 0..BATCHES {
                let tag = format!("client {client} batch {round}");
                let mut batch = Batch::new();
                batch.push(insert_note(1, &tag));
                let result = if round % 2 == 0 {
                    let inserted = batch
                        .push(
                            diesel::insert_into(feeling::table)
                                .values((feeling::account_id.eq(1), feeling::mood.eq(Mood::Sad)))
                                .returning(feeling::mood),
                        )
                        .one();
                    batch.run(&mut connection).await.map(|committed| committed.get(&inserted).ok() == Some(Mood::Sad))
                } else {
                    let first = batch.push(feeling::table.select(feeling::mood).order(feeling::id).limit(1)).one();
                    batch.run(&mut connection).await.map(|committed| committed.get(&first).ok() == Some(Mood::Happy))
                };
                outcomes.push((tag, result.map_err(|error| (error.may_have_committed(), error.to_string()))));
            }
            outcomes
        });
    }
    let (mut failures, mut misreports) = (Vec::new(), Vec::new());
    for outcome in tasks.join_all().await.into_iter().flatten() {
        let (tag, result) = outcome;
        let rows = h.count(&format!("SELECT count(*) FROM note WHERE body = '{tag}'")).await;
        match result {
            Ok(decoded) if rows == 1 && decoded => {}
            Ok(decoded) => misreports.push(format!("{tag}: reported committed, rows {rows}, rows decoded {decoded}")),
            Err((may_have_committed, error)) => {
                if rows == 1 && !may_have_committed {
                    misreports.push(format!("{tag}: reported not committed, but committed: {error}"));
                }
                failures.push(format!("{tag}: {error}"));
            }
        }
    }
    assert_eq!((failures.len(), misreports.len()), (0, 0), "failures: {failures:#?}\nmisreports: {misreports:#?}");
    assert_eq!(h.count("SELECT count(*) FROM note").await, (CONNECTIONS * BATCHES) as i64);
}
