//! A statement failing at every position of a batch: nothing changes, and the error names
//! the statement, its typed cause and what became of the others.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use pgbatch::error::StatementOutcome;
use pgbatch::{Batch, Cause, Error};

use crate::common::*;

#[derive(Debug, Clone, Copy)]
enum Failing {
    Unique,
    ForeignKey,
    Check,
    NotNull,
}

/// Five statements that succeed on the test schema, with statement `k` replaced by one
/// that fails with `failing`.
fn batch_failing_at(k: usize, failing: Failing) -> Batch {
    let mut batch = Batch::new();
    for i in 0..5 {
        let label = format!("s{i}");
        if i == k {
            match failing {
                Failing::Unique => {
                    batch.push(insert_account(20, "first@example.com")).label(label);
                }
                Failing::ForeignKey => {
                    batch.push(insert_note(999, "orphan")).label(label);
                }
                Failing::Check => {
                    batch
                        .push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance - 1000)))
                        .label(label);
                }
                Failing::NotNull => {
                    batch
                        .push(
                            diesel::sql_query("INSERT INTO note (account_id, body) VALUES ($1, NULL)")
                                .bind::<BigInt, _>(1),
                        )
                        .label(label);
                }
            }
            continue;
        }
        match i {
            0 => {
                batch.push(insert_account(10, "ten@example.com")).label(label);
            }
            1 => {
                batch.push(insert_note(1, "one")).label(label);
            }
            2 => {
                batch
                    .push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance - 10)))
                    .label(label);
            }
            3 => {
                batch.push(insert_account(11, "eleven@example.com")).label(label);
            }
            _ => {
                batch.push(diesel::delete(account::table.find(11))).label(label);
            }
        }
    }
    batch
}

async fn fails_at_every_position(failing: Failing, check: impl Fn(&Cause)) {
    let h = Harness::new().await;
    for k in 0..5 {
        let before = h.snapshot().await;
        let err = batch_failing_at(k, failing).run(&h.pool).await.expect_err("the batch must fail");
        assert!(!err.may_have_committed());
        let Error::Statement(failure) = &err else { panic!("expected a statement failure at {k}, got {err}") };
        assert_eq!(failure.index(), k, "{err}");
        assert_eq!(failure.label(), Some(format!("s{k}").as_str()));
        assert_eq!(failure.statement_count(), 5);
        check(failure.cause());
        for (i, outcome) in failure.outcomes().enumerate() {
            let expected = match i.cmp(&k) {
                std::cmp::Ordering::Less => StatementOutcome::RolledBack,
                std::cmp::Ordering::Equal => StatementOutcome::Failed,
                std::cmp::Ordering::Greater => StatementOutcome::Skipped,
            };
            assert_eq!(outcome, expected, "statement {i} when {k} fails");
        }
        assert_eq!(h.snapshot().await, before, "a failure at {k} must leave the database as it was");
        let message = err.to_string();
        assert!(message.starts_with(&format!("statement {k} (\"s{k}\") of 5 failed: ")), "{message}");
        assert!(!message.contains("25P02") && !message.contains("current transaction is aborted"), "{message}");
    }
    // The same statements without the failure commit: the failure was the only obstacle.
    let mut batch = Batch::new();
    batch.push(insert_account(10, "ten@example.com"));
    batch.run(&h.pool).await.unwrap();
    assert_eq!(h.idle_in_transaction().await, 0);
}

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_violation_at_each_position() {
    fails_at_every_position(Failing::Unique, |cause| {
        let Cause::UniqueViolation(v) = cause else { panic!("{cause}") };
        assert_eq!(v.constraint(), Some("account_email_unique"));
        assert_eq!(v.table(), Some("account"));
        assert!(v.detail().unwrap().contains("first@example.com"), "the detail names the key");
        assert!(!cause.to_string().contains("first@example.com"), "Display leaves values out of logs");
    })
    .await;
}

#[tokio::test]
async fn foreign_key_violation_at_each_position() {
    fails_at_every_position(Failing::ForeignKey, |cause| {
        let Cause::ForeignKeyViolation(v) = cause else { panic!("{cause}") };
        assert_eq!(v.constraint(), Some("note_account_fk"));
        assert_eq!(v.table(), Some("note"));
    })
    .await;
}

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_violation_at_each_position() {
    fails_at_every_position(Failing::Check, |cause| {
        let Cause::CheckViolation(v) = cause else { panic!("{cause}") };
        assert_eq!(v.constraint(), Some("balance_nonnegative"));
        assert_eq!(cause.constraint(), Some("balance_nonnegative"));
    })
    .await;
}

#[tokio::test]
async fn not_null_violation_at_each_position() {
    fails_at_every_position(Failing::NotNull, |cause| {
        let Cause::NotNullViolation(v) = cause else { panic!("{cause}") };
        // PostgreSQL names the column of a not-null violation, not a constraint.
        assert_eq!((v.table(), v.column()), (Some("note"), Some("body")));
    })
    .await;
}

#[tokio::test]
async fn other_server_errors_keep_code_message_and_hint() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before"));
    batch.push(diesel::sql_query("SELECT no_such_column FROM account")).label("bad column");
    let err = batch.run(&h.pool).await.unwrap_err();
    let cause = err.cause().expect("a server cause");
    let Cause::Server(db_error) = cause else { panic!("{cause}") };
    assert_eq!(db_error.code().code(), "42703");
    assert!(
        err.to_string().contains(
            "statement 1 (\"bad column\") of 2 failed: ERROR 42703: column \"no_such_column\" does not exist"
        ),
        "{err}"
    );
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0);
}

#[tokio::test]
async fn a_deferred_foreign_key_fails_at_commit_not_at_a_statement() {
    let h = Harness::new().await;
    let before = h.snapshot().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "kept until commit"));
    batch
        .push(diesel::insert_into(audit::table).values((audit::account_id.eq(404), audit::action.eq("ghost"))))
        .label("audit a ghost");
    let err = batch.run(&h.pool).await.unwrap_err();
    let Error::Commit(failure) = &err else { panic!("expected a commit failure, got {err}") };
    let Cause::ForeignKeyViolation(v) = failure.cause() else { panic!("{}", failure.cause()) };
    assert_eq!(v.constraint(), Some("audit_account_deferred_fk"));
    assert_eq!(failure.statement_count(), 2);
    assert!(err.statement_failure().is_none());
    assert!(
        err.to_string().starts_with("commit failed: foreign-key violation on \"audit_account_deferred_fk\""),
        "{err}"
    );
    assert_eq!(h.snapshot().await, before);
}

#[tokio::test]
async fn an_exclusion_violation_names_its_constraint() {
    let h = Harness::new().await;
    h.client
        .batch_execute(
            "CREATE TABLE booking (id int PRIMARY KEY, during int4range NOT NULL, \
             CONSTRAINT booking_no_overlap EXCLUDE USING gist (during WITH &&)); \
             INSERT INTO booking VALUES (1, '[1,10)')",
        )
        .await
        .unwrap();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before"));
    batch.push(diesel::sql_query("INSERT INTO booking VALUES (2, '[5,15)')")).label("overlapping booking");
    let err = batch.run(&h.pool).await.unwrap_err();
    let Cause::ExclusionViolation(v) = err.cause().expect("a cause") else { panic!("{err}") };
    assert_eq!((v.constraint(), v.table()), (Some("booking_no_overlap"), Some("booking")));
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0);
}

#[tokio::test]
async fn a_pool_that_cannot_hand_out_a_connection_times_out_with_nothing_sent() {
    let h = Harness::new().await;
    let pool = bb8::Pool::builder()
        .max_size(1)
        .connection_timeout(std::time::Duration::from_millis(200))
        .build(pgbatch::ConnectionManager::new(h.db.config().clone()))
        .await
        .unwrap();
    let held = pool.get().await.unwrap();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "waiting"));
    let err = batch.run(&pool).await.unwrap_err();
    assert!(matches!(err, Error::Pool(pgbatch::error::PoolError::TimedOut { last_connect_error: None })), "{err}");
    assert!(!err.may_have_committed());
    drop(held);
    batch.run(&pool).await.expect("the connection is free again");
    assert_eq!(h.count("SELECT count(*) FROM note").await, 1);
}
