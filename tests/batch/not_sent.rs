//! Statements that cannot be sent fail the batch before a single byte leaves the client.

use diesel::prelude::*;
use pgbatch::error::BuildError;
use pgbatch::{Batch, Error};

use crate::common::*;

/// Runs `batch` through a proxy and returns its error, after checking that the proxy saw
/// no byte of it and the database did not change.
async fn fails_with_nothing_sent(h: &Harness, batch: Batch) -> Error {
    let (proxy, pool) = h.behind_proxy().await;
    let (before, bytes) = (h.snapshot().await, proxy.client_bytes());
    let err = batch.run(&pool).await.expect_err("the batch must be refused");
    assert_eq!(proxy.client_bytes(), bytes, "nothing may reach the server");
    assert_eq!(h.snapshot().await, before);
    err
}

#[tokio::test]
async fn a_bind_that_cannot_be_encoded_sends_nothing() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "first"));
    batch
        .push(diesel::insert_into(note::table).values((note::account_id.eq(1), note::body.eq(Unencodable))))
        .label("bad bind");
    batch.push(insert_note(1, "third"));
    let err = fails_with_nothing_sent(&h, batch).await;
    let Error::Invalid { statement, source } = &err else { panic!("{err}") };
    let statement = statement.as_ref().expect("the statement is named");
    assert_eq!((statement.index(), statement.label()), (1, Some("bad bind")));
    assert!(matches!(**source, BuildError::Encode { bind: 1, .. }), "{source:?}");
    assert!(err.to_string().contains("refuses to be encoded"), "{err}");
}

#[tokio::test]
async fn a_statement_with_65536_binds_sends_nothing() {
    let h = Harness::new().await;
    let rows: Vec<_> = (0..32_768).map(|i| (note::account_id.eq(1), note::body.eq(format!("n{i}")))).collect();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "first"));
    batch.push(diesel::insert_into(note::table).values(&rows)).label("too many binds");
    let err = fails_with_nothing_sent(&h, batch).await;
    let Error::Invalid { source, statement } = &err else { panic!("{err}") };
    assert!(matches!(**source, BuildError::TooManyBinds { count: 65_536, .. }), "{source:?}");
    assert_eq!(statement.as_ref().unwrap().label(), Some("too many binds"));

    // 65535 binds is the protocol's limit and goes through.
    let mut batch = Batch::new();
    let rows: Vec<_> = (0..21_845)
        .map(|i| (account::id.eq(100 + i), account::email.eq(format!("a{i}@x")), account::balance.eq(0)))
        .collect();
    batch.push(diesel::insert_into(account::table).values(&rows));
    batch.run(&h.pool).await.unwrap();
    assert_eq!(h.count("SELECT count(*) FROM account").await, 21_846);
}

#[tokio::test]
async fn transaction_control_statements_are_refused_before_sending() {
    let h = Harness::new().await;
    for sql in ["COMMIT", "rollback", "SAVEPOINT s", "VACUUM account", "COPY note FROM STDIN"] {
        let mut batch = Batch::new();
        batch.push(insert_note(1, "before"));
        batch.push(diesel::sql_query(sql));
        let err = fails_with_nothing_sent(&h, batch).await;
        assert!(
            matches!(&err, Error::Invalid { source, .. } if matches!(**source, BuildError::NotAllowedInTransaction { .. })),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn an_unknown_custom_type_sends_nothing_of_the_batch() {
    let h = Harness::new().await;
    h.client.batch_execute("ALTER TABLE feeling ALTER COLUMN mood TYPE text; DROP TYPE mood").await.unwrap();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before"));
    batch.push(diesel::insert_into(feeling::table).values((feeling::account_id.eq(1), feeling::mood.eq(Mood::Sad))));
    let before = h.snapshot().await;
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { source, .. } if matches!(**source, BuildError::UnknownType { ref name } if name == "mood")),
        "{err}"
    );
    assert_eq!(h.snapshot().await, before);
}

#[tokio::test]
async fn sql_with_a_nul_byte_sends_nothing() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "first"));
    batch.push(diesel::sql_query("SELECT 1 -- \0"));
    let err = fails_with_nothing_sent(&h, batch).await;
    assert!(
        matches!(&err, Error::Invalid { source, .. } if matches!(**source, BuildError::InvalidSql { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_line_comment_ended_by_a_carriage_return_does_not_hide_a_commit() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before"));
    batch.push(diesel::sql_query("-- note\rCOMMIT")).label("hidden commit");
    batch.push(insert_note(1, "after"));
    let err = fails_with_nothing_sent(&h, batch).await;
    assert!(
        matches!(&err, Error::Invalid { source, .. } if matches!(**source, BuildError::NotAllowedInTransaction { .. })),
        "{err}"
    );
}
