//! An answer given after a lost connection is final. A proxy closes the client's side of
//! the connection the moment a batch goes out, keeps the batch's bytes, and delivers them
//! to the server a little later, as a load balancer, PgBouncer or a stalled path can. The
//! client sees its connection lost after `COMMIT` was written (an unknown outcome); what it
//! is then told (by `resolve`, or by its pool settling the outcome) must still hold after
//! the late bytes have run: "not committed" never becomes "committed", and no batch ever
//! commits twice.
//!
//! Half the rounds hold the whole batch (the late copy arrives after the answer and must
//! collide with the fence), half hold it from `COMMIT` on (the server has run the
//! statements and holds the key's lock; the answer must wait for the late `COMMIT`).

use std::time::Duration;

use diesel::prelude::*;
use pgbatch::idempotency::{self, Resolution};
use pgbatch::{Batch, Connection, ConnectionManager, Error, IdempotencyKey, RetryPolicy};
use pgbatch_testing::{Fault, Proxy};

use crate::support::*;

const ROUNDS: usize = 50;
/// How long the proxy holds a batch's bytes.
const HELD_FOR: Duration = Duration::from_millis(150);
/// Long enough after the hold for the late bytes to have run.
const SETTLED_AFTER: Duration = Duration::from_millis(350);

diesel::table! {
    event (id) {
        id -> Int8,
        tag -> Text,
    }
}

/// Rows with no unique column besides their serial id: nothing but the idempotency key can
/// keep a batch from being applied twice.
const EVENTS: &str = "CREATE TABLE event (id bigserial PRIMARY KEY, tag text NOT NULL)";

fn keyed_event(tag: &str) -> (Batch, IdempotencyKey) {
    let key = IdempotencyKey::new(tag);
    let mut batch = Batch::new();
    batch.idempotency_key(key.clone());
    batch.push(diesel::insert_into(event::table).values(event::tag.eq(tag.to_owned()))).label("insert event");
    batch
        .push(diesel::update(counter::table.find(1)).set(counter::projects.eq(counter::projects + 1)))
        .label("count event")
        .expect_rows(1);
    (batch, key)
}

/// Who answers the question "did it commit?".
#[derive(Debug, Clone, Copy)]
enum Answerer {
    /// The caller, with `idempotency::resolve`, after a bare connection's unknown outcome.
    Resolve,
    /// A pool settling the outcome itself, with retries off.
    PoolWithoutRetries,
    /// A pool settling the outcome itself and replaying, with the default retries.
    PoolWithRetries,
}

#[derive(Debug, Default)]
struct Rounds {
    overturned: usize,
    doubled: usize,
    misreported: usize,
    unknown: usize,
    not_committed: usize,
    examples: Vec<String>,
}

async fn rows(faults: &Faults, tag: &str) -> i64 {
    faults.count(&format!("SELECT count(*) FROM event WHERE tag = '{tag}'")).await
}

/// One batch through the proxy, armed to hold it; returns what the caller was told
/// (`Some(true)` committed, `Some(false)` not committed, `None` unknown).
async fn one_round(faults: &Faults, proxy: &Proxy, answerer: Answerer, tag: &str, pattern: &[u8]) -> Option<bool> {
    let (batch, key) = keyed_event(tag);
    let config = faults.db.config_via(proxy);
    let told = match answerer {
        Answerer::Resolve => {
            let mut connection = Connection::connect_with(&config).await.expect("a connection through the proxy");
            proxy.arm(Fault::DeliverLater { pattern: pattern.to_vec(), after: HELD_FOR });
            match batch.run(&mut connection).await {
                Ok(_) => Some(true),
                Err(error) if error.may_have_committed() => {
                    if pattern.starts_with(b"COMMIT") {
                        // Let the held batch's statements run first, so that the answer
                        // has to wait for the key's lock.
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    match idempotency::resolve(&faults.inspect, &key).await.expect("a resolution") {
                        Resolution::Committed { .. } => Some(true),
                        Resolution::NotCommitted { .. } => Some(false),
                        other => panic!("{other:?}"),
                    }
                }
                Err(error) => panic!("{tag}: a lost connection after COMMIT was written: {error}"),
            }
        }
        Answerer::PoolWithoutRetries | Answerer::PoolWithRetries => {
            let policy = match answerer {
                Answerer::PoolWithoutRetries => RetryPolicy::never(),
                _ => RetryPolicy::default(),
            };
            let pool = bb8::Pool::builder()
                .max_size(1)
                .build(ConnectionManager::new(config).retry(policy))
                .await
                .expect("a pool through the proxy");
            drop(pool.get().await.expect("a connection through the proxy"));
            proxy.arm(Fault::DeliverLater { pattern: pattern.to_vec(), after: HELD_FOR });
            match batch.run(&pool).await {
                Ok(_) | Err(Error::AlreadyCommitted(_)) => Some(true),
                Err(error) if error.may_have_committed() => None,
                Err(_) => Some(false),
            }
        }
    };
    proxy.disarm();
    told
}

async fn rounds(answerer: Answerer) -> Rounds {
    let faults = Faults::new().await;
    faults.db.execute(EVENTS).await.expect("the event table");
    let proxy = faults.db.proxy().await.expect("a TCP server").start().await.expect("a proxy");
    let mut tally = Rounds::default();
    for round in 0..ROUNDS {
        let tag = format!("{answerer:?}-{round}");
        // Even rounds hold the whole batch, odd ones only its COMMIT.
        let pattern: &[u8] = if round % 2 == 0 { b"BEGIN\0" } else { b"COMMIT\0" };
        let told = one_round(&faults, &proxy, answerer, &tag, pattern).await;
        tokio::time::sleep(HELD_FOR + SETTLED_AFTER).await;
        let found = rows(&faults, &tag).await;
        match told {
            Some(false) if found > 0 => {
                tally.overturned += 1;
                tally.examples.push(format!("{tag}: told not committed, then it committed"));
            }
            Some(true) if found == 0 => {
                tally.misreported += 1;
                tally.examples.push(format!("{tag}: told committed, nothing there"));
            }
            Some(false) => tally.not_committed += 1,
            None => tally.unknown += 1,
            Some(true) => {}
        }
        if found > 1 {
            tally.doubled += 1;
            tally.examples.push(format!("{tag}: applied {found} times"));
        }
        if let (Answerer::Resolve, Some(false)) = (answerer, told) {
            // The caller replays with the key the (latest) resolution returns: it commits
            // once; a replay with the plain key is refused.
            let (batch, key) = keyed_event(&tag);
            let Resolution::NotCommitted { replay } =
                idempotency::resolve(&faults.inspect, &key).await.expect("a resolution")
            else {
                panic!("{tag}: the second resolution overturned the first");
            };
            let (mut replayed, _) = keyed_event(&tag);
            replayed.idempotency_key(replay);
            replayed.run(&faults.inspect).await.expect("the replay commits");
            let again = batch.run(&faults.inspect).await.expect_err("a second run with the key");
            assert!(matches!(again, Error::AlreadyCommitted(_)), "{tag}: {again}");
            assert_eq!(rows(&faults, &tag).await, 1, "{tag}: the replay applied once");
        }
    }
    println!(
        "fence ({answerer:?}): rounds={ROUNDS} overturned={} doubled={} misreported={} not_committed={} unknown={}",
        tally.overturned, tally.doubled, tally.misreported, tally.not_committed, tally.unknown
    );
    assert_eq!((tally.overturned, tally.doubled, tally.misreported), (0, 0, 0), "{:#?}", tally.examples);
    tally
}

#[tokio::test]
async fn a_resolution_that_says_not_committed_is_never_overturned() {
    let tally = rounds(Answerer::Resolve).await;
    assert!(tally.not_committed > 0, "some rounds were answered before the late bytes ran: {tally:?}");
}

#[tokio::test]
async fn a_pool_without_retries_never_reports_not_committed_for_a_batch_that_commits_later() {
    let tally = rounds(Answerer::PoolWithoutRetries).await;
    assert!(tally.not_committed > 0, "some rounds were settled before the late bytes ran: {tally:?}");
}

#[tokio::test]
async fn a_pool_with_retries_commits_each_batch_exactly_once() {
    let tally = rounds(Answerer::PoolWithRetries).await;
    assert_eq!(tally.unknown + tally.not_committed, 0, "every batch settles and replays: {tally:?}");
}
