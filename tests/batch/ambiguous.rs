//! A `COMMIT` the server cannot vouch for: CockroachDB answers `40003` ("result is
//! ambiguous") when it cannot tell whether a commit applied. Shown on PostgreSQL with the
//! test proxy rewriting `COMMIT`'s answer into that error (the server did commit).

use pgbatch::error::UnknownReason;
use pgbatch::idempotency::{self, Resolution};
use pgbatch::{Batch, Connection, Error, IdempotencyKey};
use pgbatch_testing::Fault;

use crate::common::*;

/// `CommandComplete` with the tag `COMMIT`, as the server sends it.
const COMMIT_COMPLETE: &[u8] = b"C\0\0\0\x0bCOMMIT\0";

/// An `ErrorResponse` with SQLSTATE 40003, as CockroachDB sends it.
fn ambiguous() -> Vec<u8> {
    let fields: &[&[u8]] = &[b"SERROR\0", b"VERROR\0", b"C40003\0", b"Mresult is ambiguous (error=rpc error)\0", b"\0"];
    let body: Vec<u8> = fields.concat();
    let mut message = vec![b'E'];
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

fn rewrite_commit() -> Fault {
    Fault::RewriteServer { from: COMMIT_COMPLETE.to_vec(), to: ambiguous() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_commit_is_an_unknown_outcome_never_a_rollback_and_is_not_replayed() {
    let h = Harness::new().await;
    let (proxy, _) = h.behind_proxy().await;
    let mut connection = Connection::connect_with(h.db.config_via(&proxy)).await.unwrap();
    proxy.arm(rewrite_commit());
    let mut batch = Batch::new();
    batch.retry(pgbatch::RetryPolicy::default().max_attempts(5));
    batch.push(insert_note(1, "ambiguous"));
    let err = batch.run(&mut connection).await.unwrap_err();
    assert_eq!(proxy.cuts(), 1, "the proxy rewrote COMMIT's answer");
    let Error::OutcomeUnknown(unknown) = &err else { panic!("unknown, never a rollback: {err}") };
    let UnknownReason::Ambiguous(error) = unknown.reason() else { panic!("{unknown}") };
    assert_eq!(error.code().code(), "40003");
    assert!(err.to_string().contains("result is ambiguous"), "the server's message is kept: {err}");
    assert_eq!(err.attempts(), 1, "an unkeyed batch whose outcome is unknown is never replayed");
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'ambiguous'").await, 1, "it did commit, once");
    // The connection itself is fine.
    Batch::new().run(&mut connection).await.expect("the connection runs on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_with_an_ambiguous_commit_resolves() {
    let h = Harness::new().await;
    idempotency::install(&h.pool, idempotency::DEFAULT_TABLE).await.unwrap();
    let (proxy, pool) = h.behind_proxy().await;
    let mut connection = Connection::connect_with(h.db.config_via(&proxy)).await.unwrap();
    let keyed = |key: &str| {
        let mut batch = Batch::new();
        batch.idempotency_key(IdempotencyKey::new(key));
        batch.push(insert_note(1, key));
        batch
    };

    // On a bare connection: unknown, and resolving the key tells the truth.
    proxy.arm(rewrite_commit());
    let err = keyed("bare").run(&mut connection).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err}");
    let resolution = idempotency::resolve(&h.pool, &IdempotencyKey::new("bare")).await.unwrap();
    assert!(matches!(resolution, Resolution::Committed { .. }), "{resolution:?}");

    // On a pool: settled by pgbatch, never replayed into a second commit. The pool's one
    // connection answered and is lent again for the settling read: no cancel request may be
    // sent, since it could land on that read.
    proxy.arm(rewrite_commit());
    let accepted = proxy.connections_accepted();
    let err = keyed("pooled").run(&pool).await.unwrap_err();
    assert!(matches!(&err, Error::AlreadyCommitted(already) if already.committed_by_this_call()), "{err}");
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(proxy.connections_accepted(), accepted, "no cancel request, no new connection");
    for key in ["bare", "pooled"] {
        assert_eq!(
            h.count(&format!("SELECT count(*) FROM note WHERE body = '{key}'")).await,
            1,
            "{key} committed once"
        );
    }
}

/// An `ErrorResponse` with SQLSTATE 57014, as a statement timeout that fires after `COMMIT`
/// completed but before the server reached the `Sync` produces it.
fn timeout_after_commit() -> Vec<u8> {
    let fields: &[&[u8]] =
        &[b"SERROR\0", b"VERROR\0", b"C57014\0", b"Mcanceling statement due to statement timeout\0", b"\0"];
    let body: Vec<u8> = fields.concat();
    let mut message = COMMIT_COMPLETE.to_vec();
    message.push(b'E');
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_commit_answered_does_not_turn_the_commit_into_a_failure() {
    let h = Harness::new().await;
    let (proxy, _) = h.behind_proxy().await;
    let mut connection = Connection::connect_with(h.db.config_via(&proxy)).await.unwrap();
    proxy.arm(Fault::RewriteServer { from: COMMIT_COMPLETE.to_vec(), to: timeout_after_commit() });
    let mut batch = Batch::new();
    batch.push(insert_note(1, "late error"));
    let committed = batch.run(&mut connection).await;
    assert_eq!(proxy.cuts(), 1, "the proxy added the error after COMMIT's answer");
    assert!(committed.is_ok(), "COMMIT answered: committed, whatever follows: {committed:?}");
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'late error'").await, 1);
    Batch::new().run(&mut connection).await.expect("the connection runs on");
}
