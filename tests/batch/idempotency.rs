//! Idempotency keys: at most once, and the truth after an unknown outcome.

use std::time::Duration;

use pgbatch::idempotency::{self, Resolution};
use pgbatch::{Batch, Error, IdempotencyKey};
use pgbatch_testing::Fault;

use crate::common::*;

fn keyed(key: &str) -> Batch {
    let mut batch = Batch::new();
    batch.idempotency_key(IdempotencyKey::new(key));
    batch.push(insert_note(1, &format!("keyed {key}")));
    batch
}

async fn harness() -> Harness {
    let h = Harness::new().await;
    idempotency::install(&h.pool, idempotency::DEFAULT_TABLE).await.unwrap();
    h
}

async fn notes(h: &Harness, key: &str) -> i64 {
    h.count(&format!("SELECT count(*) FROM note WHERE body = 'keyed {key}'")).await
}

#[tokio::test]
async fn a_keyed_batch_applies_once_and_then_reports_already_committed() {
    let h = harness().await;
    keyed("create-x").run(&h.pool).await.unwrap();
    let err = keyed("create-x").run(&h.pool).await.unwrap_err();
    let Error::AlreadyCommitted(already) = &err else { panic!("{err}") };
    assert_eq!(already.key(), "create-x");
    let age = already.committed_at().unwrap().elapsed().unwrap_or_default();
    assert!(age < Duration::from_secs(60), "committed moments ago, not {age:?}");
    assert!(!err.may_have_committed(), "this run committed nothing");
    assert_eq!(notes(&h, "create-x").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_commit_exactly_once() {
    let h = harness().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = h.pool.clone();
        tasks.push(tokio::spawn(async move { keyed("same").run(&pool).await.map(drop) }));
    }
    let mut committed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => committed += 1,
            Err(Error::AlreadyCommitted(_)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(notes(&h, "same").await, 1);
}

#[tokio::test]
async fn a_missing_marker_table_fails_the_batch_and_says_what_to_do() {
    let h = Harness::new().await;
    let err = keyed("k").run(&h.pool).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyMarker { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(notes(&h, "k").await, 0);
}

// On a bare connection: a batch run on a pool settles its own unknown outcome (see the
// tests below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_commit_is_unknown_and_resolves_to_committed() {
    let h = harness().await;
    let (proxy, _) = h.behind_proxy().await;
    let mut connection = pgbatch::Connection::connect_with(h.db.config_via(&proxy)).await.unwrap();
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let err = keyed("i1").run(&mut connection).await.unwrap_err();
    let Error::OutcomeUnknown(unknown) = &err else { panic!("{err}") };
    assert_eq!(unknown.idempotency_key(), Some("i1"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let resolution = idempotency::resolve(&h.pool, &IdempotencyKey::new("i1")).await.unwrap();
    assert!(matches!(resolution, Resolution::Committed { .. }), "{resolution:?}");
    assert_eq!(notes(&h, "i1").await, 1, "resolve agrees with the rows");
    // Replaying the request with its key never applies it twice.
    assert!(matches!(keyed("i1").run(&h.pool).await, Err(Error::AlreadyCommitted(_))));
    assert_eq!(notes(&h, "i1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_before_commit_is_written_is_not_committed_and_resolve_agrees() {
    let h = harness().await;
    let (proxy, pool) = h.behind_proxy().await;
    let batch = keyed("i2");
    let prepared = batch.prepare(&pool).await.unwrap();
    proxy.kill_all();
    tokio::time::sleep(Duration::from_millis(200)).await; // the client sees the close
    let err = prepared.commit().await.unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed), "{err}");
    assert!(!err.may_have_committed());
    let resolution = idempotency::resolve(&h.pool, &IdempotencyKey::new("i2")).await.unwrap();
    let Resolution::NotCommitted { replay } = resolution else { panic!("{resolution:?}") };
    assert!(replay.is_replay() && replay.key() == "i2");
    assert_eq!(notes(&h, "i2").await, 0);
    // The key is fenced: a run with the plain key is refused, as the lost run would be.
    let refused = keyed("i2").run(&h.pool).await.unwrap_err();
    assert!(matches!(&refused, Error::KeyFenced { key, .. } if key == "i2"), "{refused}");
    assert!(refused.to_string().contains("resolve the key"), "the error says what to do: {refused}");
    let mut replayed = keyed("i2");
    replayed.idempotency_key(replay.clone());
    replayed.run(&h.pool).await.expect("a request that did not commit can be replayed with the resolution's key");
    assert_eq!(notes(&h, "i2").await, 1);
    // The fence is spent: the same replay key cannot apply it again.
    let mut again = keyed("i2");
    again.idempotency_key(replay);
    assert!(matches!(again.run(&h.pool).await, Err(Error::AlreadyCommitted(_))));
    assert_eq!(notes(&h, "i2").await, 1);
}

/// A marker table made before fences existed gets its `fence` column from `install`, and
/// keeps its markers.
#[tokio::test]
async fn install_adds_fences_to_a_marker_table_of_an_earlier_version() {
    let h = Harness::new().await;
    h.db.execute(
        "CREATE TABLE pgbatch_idempotency (key text PRIMARY KEY, committed_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO pgbatch_idempotency (key) VALUES ('before')",
    )
    .await
    .unwrap();
    idempotency::install(&h.pool, idempotency::DEFAULT_TABLE).await.unwrap();
    let resolution = idempotency::resolve(&h.pool, &IdempotencyKey::new("before")).await.unwrap();
    assert!(matches!(resolution, Resolution::Committed { .. }), "{resolution:?}");
    let resolution = idempotency::resolve(&h.pool, &IdempotencyKey::new("never-ran")).await.unwrap();
    assert!(matches!(resolution, Resolution::NotCommitted { .. }), "{resolution:?}");
}

#[tokio::test]
async fn purging_removes_exactly_the_old_keys() {
    let h = harness().await;
    for key in ["old-1", "old-2", "new-1"] {
        keyed(key).run(&h.pool).await.unwrap();
    }
    h.client
        .batch_execute(
            "UPDATE pgbatch_idempotency SET committed_at = now() - interval '2 hours' WHERE key LIKE 'old-%'",
        )
        .await
        .unwrap();
    let purged =
        idempotency::purge_older_than(&h.pool, idempotency::DEFAULT_TABLE, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(purged, 2);
    assert_eq!(h.value("SELECT string_agg(key, ',') FROM pgbatch_idempotency").await, "new-1");
}

#[tokio::test]
async fn a_custom_marker_table() {
    let h = Harness::new().await;
    h.client.batch_execute("CREATE SCHEMA ops").await.unwrap();
    idempotency::install(&h.pool, "ops.batch_keys").await.unwrap();
    let key = IdempotencyKey::new("k").table("ops.batch_keys");
    let mut batch = Batch::new();
    batch.idempotency_key(key.clone());
    batch.push(insert_note(1, "custom"));
    batch.run(&h.pool).await.unwrap();
    assert!(matches!(idempotency::resolve(&h.pool, &key).await.unwrap(), Resolution::Committed { .. }));
    assert_eq!(
        idempotency::resolve(&h.pool, &IdempotencyKey::new("k").table("ops.batch_keys_missing"))
            .await
            .map(drop)
            .unwrap_err()
            .cause()
            .and_then(|c| c.code())
            .map(|c| c.code()),
        Some("42P01")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_on_a_pool_settles_a_lost_commit_as_already_committed() {
    let h = harness().await;
    let (proxy, pool) = h.behind_proxy().await;
    // COMMIT reaches the server, its answer never reaches the client.
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let err = keyed("settled").run(&pool).await.unwrap_err();
    let Error::AlreadyCommitted(already) = &err else { panic!("settled, not {err}") };
    assert!(already.committed_by_this_call(), "this call's own run committed");
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(notes(&h, "settled").await, 1, "the rows exist once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_on_a_pool_replays_a_lost_batch_that_did_not_commit() {
    let h = harness().await;
    let (proxy, pool) = h.behind_proxy().await;
    // The client writes everything; the server never gets COMMIT and rolls back.
    proxy.arm(Fault::CutBeforeClientSends { pattern: b"COMMIT\0".to_vec() });
    let committed = keyed("replayed").run(&pool).await.expect("settled as not committed, then replayed");
    assert!(committed.replayed_after_unknown());
    assert_eq!(committed.attempts(), 2);
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(notes(&h, "replayed").await, 1, "the rows exist once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_batch_on_a_pool_stays_unknown() {
    let h = harness().await;
    let (proxy, pool) = h.behind_proxy().await;
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let mut batch = Batch::new();
    batch.push(insert_note(1, "unkeyed"));
    let err = batch.run(&pool).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err}");
}

/// The original batch lost its connection while its backend waits on a lock, its marker
/// written but not committed: `resolve` must not answer before that batch ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_waits_for_a_batch_still_running_on_the_server() {
    let h = harness().await;
    let blocker = h.db.connect().await.unwrap();
    blocker.batch_execute("BEGIN; SELECT * FROM account WHERE id = 1 FOR UPDATE").await.unwrap();
    let (proxy, _) = h.behind_proxy().await;
    let mut connection = pgbatch::Connection::connect_with(h.db.config_via(&proxy)).await.unwrap();
    let mut batch = keyed("in-flight");
    batch.push(diesel::sql_query("UPDATE account SET balance = balance + 1 WHERE id = 1")).label("waits on the lock");
    let cut = async {
        while h
            .count(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.kill_all();
    };
    let (result, ()) = tokio::join!(batch.run(&mut connection), cut);
    assert!(matches!(result, Err(Error::OutcomeUnknown(_))), "{result:?}");

    // The lock is released while resolve runs; the original batch then commits.
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        blocker.batch_execute("COMMIT").await.unwrap();
    };
    let key = IdempotencyKey::new("in-flight");
    let (resolution, ()) = tokio::join!(idempotency::resolve(&h.pool, &key), release);
    let committed = notes(&h, "in-flight").await == 1;
    assert_eq!(matches!(resolution.unwrap(), Resolution::Committed { .. }), committed, "resolve's answer is final");
    assert!(committed, "the original batch committed once the lock was released");
}
