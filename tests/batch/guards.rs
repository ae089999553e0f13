//! Guards: every kind passes and fails, on the server, rolling back what came before.

use diesel::dsl::{count_star, exists};
use diesel::prelude::*;
use pgbatch::error::{BuildError, StatementOutcome};
use pgbatch::guard::Expectation;
use pgbatch::{Batch, Cause, Error};

use crate::common::*;

/// Runs a batch of: a note insert, the guard under test, a second note insert. Returns
/// the guard's failure when the batch fails, after checking the failure is attributed to
/// the guard (statement 1) and that nothing remains.
async fn run_guarded(h: &Harness, add_guard: impl FnOnce(&mut Batch)) -> Option<pgbatch::guard::GuardFailure> {
    let before = h.snapshot().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before the guard")).label("first");
    add_guard(&mut batch);
    batch.push(insert_note(1, "after the guard")).label("last");
    match batch.run(&h.pool).await {
        Ok(_) => {
            assert_eq!(h.count("SELECT count(*) FROM note WHERE body LIKE '%the guard'").await, 2);
            h.client.batch_execute("DELETE FROM note").await.unwrap();
            None
        }
        Err(Error::Statement(failure)) => {
            assert_eq!(failure.index(), 1);
            assert_eq!(failure.outcome(0), Some(StatementOutcome::RolledBack));
            assert_eq!(failure.outcome(2), Some(StatementOutcome::Skipped));
            assert_eq!(h.snapshot().await, before, "a failed guard rolls back the statements before it");
            let Cause::GuardFailed(guard) = failure.cause() else { panic!("not a guard failure: {failure}") };
            assert_eq!(failure.label(), guard.label());
            Some(guard.clone())
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn expect_rows_passes_on_the_count_and_fails_with_the_actual_count() {
    let h = Harness::new().await;
    let passed = run_guarded(&h, |b| {
        b.push(diesel::update(account::table.find(1)).set(account::balance.eq(7))).label("one row").expect_rows(1);
    })
    .await;
    assert!(passed.is_none());

    let failed = run_guarded(&h, |b| {
        b.push(diesel::update(account::table.find(404)).set(account::balance.eq(7)))
            .label("no such account")
            .expect_rows(1);
    })
    .await
    .expect("the guard fails");
    assert_eq!(failed.label(), Some("no such account"));
    assert_eq!(failed.expectation(), Expectation::Rows { min: 1, max: Some(1) });
    assert_eq!(failed.actual_rows(), Some(0));
    assert_eq!(failed.to_string(), "guard \"no such account\" failed: expected exactly 1 row, got 0");
}

#[tokio::test]
async fn a_row_count_range_on_a_returning_statement_keeps_its_rows() {
    let h = Harness::new().await;
    h.client.batch_execute("INSERT INTO account (id, email) VALUES (2, 'b'), (3, 'c')").await.unwrap();
    let mut batch = Batch::new();
    let ids = batch
        .push(diesel::update(account::table).set(account::balance.eq(1)).returning(account::id))
        .label("update all")
        .expect_rows_in(2..=5)
        .all::<i64>();
    let touched = batch.push(diesel::delete(account::table.filter(account::id.eq(3)))).expect_rows_in(1..).affected();
    let committed = batch.run(&h.pool).await.unwrap();
    let mut ids = committed.get(&ids).unwrap();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3], "a guarded RETURNING statement still returns its rows");
    assert_eq!(committed.get(&touched).unwrap(), 1, "a guarded statement still reports its row count");

    let failed = run_guarded(&h, |b| {
        b.push(diesel::update(account::table).set(account::balance.eq(2))).label("at most one").expect_rows_in(..=1);
    })
    .await
    .expect("two rows is too many");
    assert_eq!(failed.actual_rows(), Some(2));
    assert_eq!(failed.expectation(), Expectation::Rows { min: 0, max: Some(1) });
}

#[tokio::test]
async fn a_query_guarded_to_return_nothing_fails_on_a_row() {
    let h = Harness::new().await;
    let failed = run_guarded(&h, |b| {
        b.push(account::table.filter(account::id.eq(1)).select(account::id)).label("no rows").expect_rows(0);
    })
    .await
    .expect("the query returns a row");
    assert_eq!(failed.actual_rows(), Some(1));
}

#[tokio::test]
async fn exists_and_not_exists_guards() {
    let h = Harness::new().await;
    let exists_one = account::table.filter(account::id.eq(1)).select(account::id);
    let exists_none = account::table.filter(account::id.eq(404)).select(account::id);
    assert!(
        run_guarded(&h, |b| {
            b.guard_exists(exists_one).label("account 1 exists");
        })
        .await
        .is_none()
    );
    assert!(
        run_guarded(&h, |b| {
            b.guard_not_exists(exists_none).label("404 absent");
        })
        .await
        .is_none()
    );

    let failed = run_guarded(&h, |b| {
        b.guard_exists(exists_none).label("404 exists");
    })
    .await
    .unwrap();
    assert_eq!(
        (failed.label(), failed.expectation(), failed.actual_rows()),
        (Some("404 exists"), Expectation::RowExists, None)
    );
    let failed = run_guarded(&h, |b| {
        b.guard_not_exists(exists_one).label("1 absent");
    })
    .await
    .unwrap();
    assert_eq!(failed.expectation(), Expectation::NoRow);
}

#[tokio::test]
async fn boolean_expression_guards() {
    let h = Harness::new().await;
    let balance_of_1 = || account::table.find(1).select(account::balance).single_value();
    assert!(
        run_guarded(&h, |b| {
            b.guard(balance_of_1().ge(100)).label("rich");
        })
        .await
        .is_none()
    );
    assert!(
        run_guarded(&h, |b| {
            b.guard(exists(account::table.find(1))).label("exists");
        })
        .await
        .is_none()
    );

    let failed = run_guarded(&h, |b| {
        b.guard(balance_of_1().gt(100)).label("richer");
    })
    .await
    .unwrap();
    assert_eq!(failed.expectation(), Expectation::Condition);
    // NULL is not true: a condition on a missing row fails.
    let missing = account::table.find(404).select(account::balance).single_value();
    let failed = run_guarded(&h, |b| {
        b.guard(missing.ge(0)).label("missing");
    })
    .await
    .unwrap();
    assert_eq!(failed.label(), Some("missing"));
    let notes = note::table.select(count_star()).single_value();
    assert!(
        run_guarded(&h, |b| {
            b.guard(notes.eq(1)).label("sees the first insert");
        })
        .await
        .is_none()
    );
}

#[tokio::test]
async fn a_guard_sees_the_statements_before_it() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(insert_account(2, "two@example.com"));
    batch.guard_exists(account::table.find(2).select(account::id)).label("sees account 2");
    batch.run(&h.pool).await.expect("the guard sees the insert of the same transaction");
}

#[tokio::test]
async fn a_guard_on_a_statement_without_rows_is_refused_before_sending() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("CREATE TABLE x (a int)")).label("ddl").expect_rows(1);
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { source, .. } if matches!(**source, BuildError::GuardOnStatementWithoutRows)),
        "{err}"
    );
    assert_eq!(h.count("SELECT count(*) FROM pg_tables WHERE tablename = 'x'").await, 0);
}

#[tokio::test]
async fn a_failing_user_cast_is_not_mistaken_for_a_guard() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("SELECT 'pgbatch guard failed: rows=3'::bool")).label("user cast");
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(matches!(err.cause(), Some(Cause::Server(_))), "{err}");
}

#[tokio::test]
async fn a_row_range_that_accepts_no_count_is_refused_before_sending() {
    let h = Harness::new().await;
    #[allow(clippy::reversed_empty_ranges)]
    for (index, build) in [
        (|b: &mut Batch| {
            b.push(diesel::update(account::table.find(1)).set(account::balance.eq(1))).expect_rows_in(..0);
        }) as fn(&mut Batch),
        |b: &mut Batch| {
            b.push(diesel::update(account::table.find(1)).set(account::balance.eq(1))).expect_rows_in(5..=2);
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut batch = Batch::new();
        build(&mut batch);
        let err = batch.run(&h.pool).await.unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { source, .. } if matches!(**source, BuildError::EmptyRowRange { .. })),
            "range {index}: {err}"
        );
    }
    assert_eq!(h.count("SELECT balance FROM account WHERE id = 1").await, 100);
}

#[tokio::test]
async fn labels_with_comment_marks_and_control_characters_keep_the_sql_whole() {
    let h = Harness::new().await;
    for label in ["a /* nested", "closes */ early", "nul \0 inside", "line\nbreak"] {
        let failed = run_guarded(&h, |b| {
            b.push(diesel::update(account::table.find(404)).set(account::balance.eq(7))).label(label).expect_rows(1);
        })
        .await
        .expect("the guard runs and fails on its own terms");
        assert_eq!((failed.label(), failed.actual_rows()), (Some(label), Some(0)));
        assert!(
            run_guarded(&h, |b| {
                b.guard_exists(account::table.find(1).select(account::id)).label(label);
            })
            .await
            .is_none()
        );
    }
}

#[tokio::test]
async fn a_guarded_statement_ending_in_a_comment_or_semicolon() {
    let h = Harness::new().await;
    for sql in [
        "UPDATE account SET balance = 7 WHERE id = 404 -- a note",
        "UPDATE account SET balance = 7 WHERE id = 404; /* x */",
    ] {
        let failed = run_guarded(&h, |b| {
            b.push(diesel::sql_query(sql)).label("commented").expect_rows(1);
        })
        .await
        .expect("the guard fails");
        assert_eq!(failed.actual_rows(), Some(0), "{sql}");
    }
}

#[tokio::test]
async fn a_guarded_statements_own_cast_error_is_not_its_guards_failure() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("SELECT 'pgbatch guard failed: rows=3'::bool")).label("user cast").expect_rows(1);
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(matches!(err.cause(), Some(Cause::Server(e)) if e.code().code() == "22P02"), "{err}");
}
