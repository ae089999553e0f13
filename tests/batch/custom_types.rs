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
