//! Scenarios C2 (a silo with everything it owns) and S1 (a set of sync messages): all or
//! nothing, and the failing statement named.

use pgbatch::{Batch, Error};
use pgbatch_scenarios::seed::Quotas;
use pgbatch_scenarios::silo::{self, NewSilo, SiloError};
use pgbatch_scenarios::sync::{self, Message, MessageFault, SyncError};
use pgbatch_testing::TestDatabase;
use uuid::Uuid;

use crate::world::Pool;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

async fn empty_world() -> (TestDatabase, Pool, tokio_postgres::Client) {
    let (db, pool) = pgbatch_scenarios::seed::playground().await.expect("a database with the schema");
    let client = db.connect().await.unwrap();
    (db, pool, client)
}

async fn rows(client: &tokio_postgres::Client, tables: &[&str]) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in tables {
        counts.push(client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0));
    }
    counts
}

fn new_silo(name: &str, certificates: &[&str]) -> NewSilo {
    NewSilo {
        id: Uuid::new_v4(),
        name: name.into(),
        admin_group: Uuid::new_v4(),
        certificates: certificates.iter().map(|c| (*c).to_owned()).collect(),
        quotas: Quotas { cpus: 8, ram: 1 << 30, storage: 1 << 34 },
        device_token_max_ttl_seconds: 600,
    }
}

async fn create_silo(pool: &Pool, new: &NewSilo) -> Result<(), Error<SiloError>> {
    let mut batch = Batch::<SiloError>::default();
    batch.append(silo::create(new));
    batch.run(pool).await.map(drop)
}

#[tokio::test]
async fn a_silo_commits_with_everything_it_owns() {
    let (_db, pool, client) = empty_world().await;
    create_silo(&pool, &new_silo("eng", &[PEM, PEM, PEM])).await.unwrap();
    assert_eq!(rows(&client, &silo::TABLES).await, [1, 1, 1, 1, 3, 1, 1]);
}

#[tokio::test]
async fn a_bad_certificate_leaves_zero_rows_everywhere_and_names_its_statement() {
    let (_db, pool, client) = empty_world().await;
    for bad_at in 0..3 {
        let mut certificates = vec![PEM; 3];
        certificates[bad_at] = "garbage";
        let error = create_silo(&pool, &new_silo("eng", &certificates)).await.unwrap_err();
        let Error::Domain { error, failure } = error else { panic!("a typed silo error: {error}") };
        assert_eq!(error, SiloError::BadCertificate { index: bad_at });
        assert_eq!(failure.label(), Some(silo::labels::insert_certificate(bad_at).as_str()));
        assert!(failure.to_string().contains(&format!("insert certificate {bad_at}")), "{failure}");
        assert_eq!(rows(&client, &silo::TABLES).await, [0; 7], "nothing of the silo is left");
    }
}

#[tokio::test]
async fn a_duplicate_silo_name_leaves_no_row_of_the_second_silo() {
    let (_db, pool, client) = empty_world().await;
    create_silo(&pool, &new_silo("eng", &[PEM])).await.unwrap();
    let before = rows(&client, &silo::TABLES).await;
    let error = create_silo(&pool, &new_silo("eng", &[PEM, PEM])).await.unwrap_err();
    let Error::Domain { error, failure } = error else { panic!("a typed silo error: {error}") };
    assert_eq!(error, SiloError::NameTaken("eng".into()));
    assert_eq!(failure.label(), Some(silo::labels::INSERT_SILO));
    assert_eq!(rows(&client, &silo::TABLES).await, before, "the second silo wrote nothing");
}

async fn sync_world() -> (TestDatabase, Pool, tokio_postgres::Client) {
    let (db, pool, client) = empty_world().await;
    client
        .batch_execute(
            "INSERT INTO sync_item (id, value) SELECT g, 'initial' FROM generate_series(0, 9) g; \
             INSERT INTO sync_clock (id, clock) VALUES (1, 0);",
        )
        .await
        .unwrap();
    (db, pool, client)
}

fn messages(clock: i64) -> Vec<Message> {
    (0..10).map(|item| Message { id: Uuid::new_v4(), item, value: format!("v{clock}-{item}"), clock }).collect()
}

async fn apply(pool: &Pool, set: &[Message], clock: i64) -> Result<(), Error<SyncError>> {
    let mut batch = Batch::<SyncError>::default();
    batch.append(sync::apply(set, clock));
    batch.run(pool).await.map(drop)
}

/// Items' values, log length, clock.
async fn sync_state(client: &tokio_postgres::Client) -> (Vec<String>, i64, i64) {
    let values = client.query("SELECT value FROM sync_item ORDER BY id", &[]).await.unwrap();
    let row = client
        .query_one("SELECT (SELECT count(*) FROM sync_message), (SELECT clock FROM sync_clock)", &[])
        .await
        .unwrap();
    (values.iter().map(|r| r.get(0)).collect(), row.get(0), row.get(1))
}

#[tokio::test]
async fn a_set_of_messages_applies_data_log_and_clock_together() {
    let (_db, pool, client) = sync_world().await;
    apply(&pool, &messages(1), 1).await.unwrap();
    let (values, logged, clock) = sync_state(&client).await;
    assert!(values.iter().enumerate().all(|(i, v)| *v == format!("v1-{i}")), "{values:?}");
    assert_eq!((logged, clock), (10, 1));
}

#[tokio::test]
async fn a_failing_message_changes_nothing_and_is_named() {
    let (_db, pool, client) = sync_world().await;
    apply(&pool, &messages(1), 1).await.unwrap();
    let before = sync_state(&client).await;
    // A message replayed: its id is in the log already.
    let logged: Uuid = client.query_one("SELECT id FROM sync_message LIMIT 1", &[]).await.unwrap().get(0);
    type Breaker = Box<dyn Fn(&mut Message)>;
    let cases: Vec<(usize, Breaker, MessageFault)> = vec![
        (0, Box::new(|m| m.value = "x".repeat(201)), MessageFault::BadValue),
        (4, Box::new(|m| m.item = 99), MessageFault::UnknownItem),
        (9, Box::new(|m| m.value = "y".repeat(300)), MessageFault::BadValue),
        (7, Box::new(move |m| m.id = logged), MessageFault::AlreadyApplied),
    ];
    for (index, break_it, fault) in cases {
        let mut set = messages(2);
        break_it(&mut set[index]);
        let error = apply(&pool, &set, 2).await.unwrap_err();
        let Error::Domain { error: SyncError::Message { index: named, id, reason }, failure } = error else {
            panic!("a typed sync error: {error}")
        };
        assert_eq!((named, id, reason), (index, set[index].id, fault), "{failure}");
        assert!(failure.label().is_some_and(|l| l.starts_with(&format!("message {index}:"))), "{failure}");
        assert_eq!(sync_state(&client).await, before, "data, log and clock unchanged");
    }
}
