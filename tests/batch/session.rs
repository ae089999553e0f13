//! No session state outlives a batch: statements that would change the session are refused
//! before anything is sent, and a batch that may have changed it (through `set_config` or a
//! session-level advisory lock) resets the session in the same round trip. Either way the
//! next, unrelated batch on the same pooled connection sees a default session.

use pgbatch::{Batch, BuildError, Error};

use crate::common::*;

/// What a default session looks like from inside a batch.
#[derive(Debug, PartialEq, Eq)]
struct SessionView {
    search_path: String,
    statement_timeout: String,
    role: String,
    read_only: String,
    temp_tables: i64,
    prepared: i64,
    listening: i64,
    advisory_locks: i64,
}

async fn view(pool: &Pool) -> SessionView {
    use diesel::sql_types::{BigInt, Text};
    let text = |sql: &str| diesel::select(diesel::dsl::sql::<Text>(sql));
    let count = |sql: &str| diesel::select(diesel::dsl::sql::<BigInt>(sql));
    let mut batch = Batch::new();
    let search_path = batch.push(text("current_setting('search_path')")).one::<String>();
    let statement_timeout = batch.push(text("current_setting('statement_timeout')")).one::<String>();
    let role = batch.push(text("current_user::text")).one::<String>();
    let read_only = batch.push(text("current_setting('default_transaction_read_only')")).one::<String>();
    let temp_tables = batch.push(count("(SELECT count(*) FROM pg_class WHERE relpersistence = 't')")).one::<i64>();
    let prepared = batch.push(count("(SELECT count(*) FROM pg_prepared_statements)")).one::<i64>();
    let listening = batch.push(count("(SELECT count(*) FROM pg_listening_channels())")).one::<i64>();
    let advisory_locks = batch
        .push(count("(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"))
        .one::<i64>();
    let seen = batch.run(pool).await.expect("a batch on the same connection");
    SessionView {
        search_path: seen.get(&search_path).unwrap(),
        statement_timeout: seen.get(&statement_timeout).unwrap(),
        role: seen.get(&role).unwrap(),
        read_only: seen.get(&read_only).unwrap(),
        temp_tables: seen.get(&temp_tables).unwrap(),
        prepared: seen.get(&prepared).unwrap(),
        listening: seen.get(&listening).unwrap(),
        advisory_locks: seen.get(&advisory_locks).unwrap(),
    }
}

/// Runs `sql` in a batch on a pool of one connection, then checks the session the next
/// batch sees; returns the first batch's result.
async fn then_default(h: &Harness, sql: &str) -> Result<(), Error> {
    let pool = pool(h.db.config().clone(), 1).await;
    let default = view(&pool).await;
    let pid = pool.get().await.unwrap().cancel_token().process_id();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before"));
    batch.push(diesel::sql_query(sql)).label("session statement");
    let result = batch.run(&pool).await.map(drop);
    assert_eq!(view(&pool).await, default, "after {sql:?} the next batch sees a default session");
    assert_eq!(pool.get().await.unwrap().cancel_token().process_id(), pid, "on the same connection");
    result
}

#[tokio::test]
async fn statements_that_change_the_session_are_refused_with_the_transaction_scoped_form() {
    let h = Harness::new().await;
    for sql in [
        "SET search_path = nowhere",
        "SET statement_timeout = 1",
        "SET ROLE pgbatch_other",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "LISTEN x",
        "PREPARE p AS SELECT 1",
        "CREATE TEMP TABLE t (a int)",
    ] {
        let err = then_default(&h, sql).await.expect_err("refused");
        let Error::Invalid { source, statement } = &err else { panic!("{sql}: {err}") };
        let BuildError::SessionState { hint, .. } = &**source else { panic!("{sql}: {err}") };
        assert_eq!(statement.as_ref().and_then(|s| s.label()), Some("session statement"));
        assert!(err.to_string().contains(hint), "the error says what to write instead: {err}");
    }
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0, "nothing of a refused batch was sent");
}

#[tokio::test]
async fn session_functions_are_reset_after_the_batch_in_the_same_round_trip() {
    let h = Harness::new().await;
    for sql in ["SELECT set_config('search_path', 'x', false)", "SELECT pg_advisory_lock(42)"] {
        then_default(&h, sql).await.expect("committed");
    }
    assert_eq!(h.count("SELECT count(*) FROM note").await, 2);
}

#[tokio::test]
async fn transaction_scoped_forms_work_and_end_with_the_batch() {
    let h = Harness::new().await;
    for sql in [
        "SET LOCAL search_path = nowhere",
        "SET LOCAL statement_timeout = 1000",
        "SELECT set_config('search_path', 'x', true)",
        "SELECT pg_advisory_xact_lock(42)",
        "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
    ] {
        then_default(&h, sql).await.expect("a transaction-scoped statement runs");
    }
}

#[tokio::test]
async fn the_pool_setup_comes_back_after_a_reset() {
    let h = Harness::new().await;
    let manager =
        pgbatch::ConnectionManager::new(h.db.config().clone()).session_setup(["SET application_name = 'set-up'"]);
    let pool = bb8::Pool::builder().max_size(1).build(manager).await.unwrap();
    let name = || {
        let mut batch = Batch::new();
        let name = batch
            .push(diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("current_setting('application_name')")))
            .one::<String>();
        (batch, name)
    };
    let (batch, handle) = name();
    assert_eq!(batch.run(&pool).await.unwrap().get(&handle).unwrap(), "set-up");
    let mut reset = Batch::new();
    reset.push(diesel::sql_query("SELECT set_config('application_name', 'changed', false)"));
    reset.run(&pool).await.unwrap();
    let (batch, handle) = name();
    assert_eq!(batch.run(&pool).await.unwrap().get(&handle).unwrap(), "set-up", "the reset ran the setup again");
}
