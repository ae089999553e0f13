//! No session state outlives a batch, by any route. The mechanism is the reset: every batch
//! that ran statements is followed, in the same write, by `DISCARD ALL` and the session
//! setup, so whatever a statement did to the session (directly, or through a `DO` block, a
//! function, a procedure, a trigger, a view, `UPDATE pg_settings`, `SELECT ... INTO TEMP`)
//! is gone before the next batch. Plain `SET`, `LISTEN`, `PREPARE` and temporary tables are
//! still refused before anything is sent, with the transaction-scoped form to write instead.
//!
//! Each route below runs in a plain batch, in a two-phase batch (committed, rolled back and
//! dropped undecided); after each, the next request on the same pooled connection, and
//! requests on other connections (through PgBouncer: other clients), must see a default
//! session.

use diesel::sql_types::{BigInt, Text};
use pgbatch::error::BuildError;
use pgbatch::{Batch, Connection, Error, RetryPolicy};

use crate::common::*;

/// Functions, a procedure, a trigger and a view that change the session from inside.
const ROUTES_SCHEMA: &str = r#"
DO $$ BEGIN CREATE ROLE pgbatch_other; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.tenant', t, false) $$;
CREATE FUNCTION set_tenant_plpgsql(t text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.tenant', t, false); END $$;
CREATE PROCEDURE set_tenant_procedure(t text) LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.tenant', t, false); END $$;
CREATE FUNCTION take_session_lock() RETURNS void LANGUAGE sql AS $$ SELECT pg_advisory_lock(4242) $$;
CREATE FUNCTION tenant_from_row() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.tenant', NEW.body, false); RETURN NEW; END $$;
CREATE TABLE tenant_log (id bigserial PRIMARY KEY, body text NOT NULL);
CREATE TRIGGER tenant_log_sets_tenant BEFORE INSERT ON tenant_log
    FOR EACH ROW EXECUTE FUNCTION tenant_from_row();
CREATE VIEW tenant_setter AS SELECT set_config('app.tenant', 'view', false) AS tenant;
CREATE FUNCTION become_other() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET ROLE pgbatch_other'; END $$;
CREATE FUNCTION make_temp_table() RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN EXECUTE 'CREATE TEMP TABLE made_in_function (a int)'; END $$;
CREATE FUNCTION listen_inside() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'LISTEN from_function'; END $$;
"#;

/// Routes by which a statement can change the session; every one is accepted by pgbatch's
/// checks (the statement is sent).
const ROUTES: &[(&str, &str)] = &[
    ("DO: set_config", "DO $$ BEGIN PERFORM set_config('app.tenant', 'do', false); END $$"),
    ("DO: SET", "DO $$ BEGIN SET statement_timeout = 12345; END $$"),
    ("DO: EXECUTE SET", "DO $$ BEGIN EXECUTE 'SET search_path = nowhere'; END $$"),
    ("DO: SET ROLE", "DO $$ BEGIN SET ROLE pgbatch_other; END $$"),
    ("DO: SET SESSION AUTHORIZATION", "DO $$ BEGIN EXECUTE 'SET SESSION AUTHORIZATION pgbatch_other'; END $$"),
    ("DO: advisory lock", "DO $$ BEGIN PERFORM pg_advisory_lock(77); END $$"),
    ("DO: LISTEN", "DO $$ BEGIN EXECUTE 'LISTEN from_do'; END $$"),
    ("DO: PREPARE", "DO $$ BEGIN EXECUTE 'PREPARE leaked AS SELECT 1'; END $$"),
    ("DO: temporary table", "DO $$ BEGIN CREATE TEMP TABLE made_in_do (a int); END $$"),
    ("SQL function", "SELECT set_tenant('sql function')"),
    ("PL/pgSQL function", "SELECT set_tenant_plpgsql('plpgsql function')"),
    ("procedure", "CALL set_tenant_procedure('procedure')"),
    ("trigger", "INSERT INTO tenant_log (body) VALUES ('trigger')"),
    ("view", "SELECT * FROM tenant_setter"),
    ("function: SET ROLE", "SELECT become_other()"),
    ("function: temporary table", "SELECT make_temp_table()"),
    ("function: LISTEN", "SELECT listen_inside()"),
    ("function: session advisory lock", "SELECT take_session_lock()"),
    ("UPDATE pg_settings", "UPDATE pg_settings SET setting = 'nowhere' WHERE name = 'search_path'"),
    ("quoted set_config", r#"SELECT "set_config"('app.tenant', 'quoted', false)"#),
    ("qualified quoted set_config", r#"SELECT pg_catalog."set_config"('app.tenant', 'qualified', false)"#),
    ("escaped set_config", r#"SELECT U&"set\005Fconfig"('app.tenant', 'escaped', false)"#),
    ("set_config on role", "SELECT set_config('role', 'pgbatch_other', false)"),
    ("set_config in a CTE", "WITH t AS (SELECT set_config('app.tenant', 'cte', false)) SELECT * FROM t"),
    ("plain set_config", "SELECT set_config('search_path', 'x', false)"),
    ("plain advisory lock", "SELECT pg_advisory_lock(42)"),
    ("shared advisory lock", "SELECT pg_try_advisory_lock_shared(43)"),
    ("SELECT INTO TEMP", "SELECT 1 AS a INTO TEMP scratch"),
    ("SELECT INTO TEMPORARY shadowing a table", "SELECT * INTO TEMPORARY note FROM note WHERE false"),
    ("CREATE TABLE pg_temp.", "CREATE TABLE pg_temp.scratch (a int)"),
    ("CREATE OR REPLACE TEMP VIEW", "CREATE OR REPLACE TEMP VIEW scratch_view AS SELECT 1 AS a"),
    ("temporary function", "CREATE FUNCTION pg_temp.scratch_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    ("cursor WITH HOLD inside DO", "DO $$ BEGIN EXECUTE 'DECLARE held CURSOR WITH HOLD FOR SELECT 1'; END $$"),
];

/// What a session looks like from inside a batch: every kind of state a batch could leave.
#[derive(Debug, PartialEq, Eq)]
struct SessionView {
    session_settings: String,
    tenant: String,
    search_path: String,
    current_user: String,
    session_user: String,
    temp_relations: i64,
    temp_functions: i64,
    prepared: i64,
    cursors: i64,
    listening: i64,
    advisory_locks: i64,
}

fn view_batch() -> (Batch, impl FnOnce(&pgbatch::Committed) -> SessionView) {
    let text = |sql: &str| diesel::select(diesel::dsl::sql::<Text>(sql));
    let count = |sql: &str| diesel::select(diesel::dsl::sql::<BigInt>(sql));
    let mut batch = Batch::new();
    let session_settings = batch
        .push(text(
            "(SELECT coalesce(string_agg(name || '=' || setting, ',' ORDER BY name), '') \
             FROM pg_settings WHERE source = 'session')",
        ))
        .one::<String>();
    let tenant = batch.push(text("coalesce(current_setting('app.tenant', true), '')")).one::<String>();
    let search_path = batch.push(text("current_setting('search_path')")).one::<String>();
    let current_user = batch.push(text("current_user::text")).one::<String>();
    let session_user = batch.push(text("session_user::text")).one::<String>();
    let temp_relations =
        batch.push(count("(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())")).one::<i64>();
    let temp_functions =
        batch.push(count("(SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema())")).one::<i64>();
    let prepared = batch.push(count("(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)")).one::<i64>();
    let cursors = batch.push(count("(SELECT count(*) FROM pg_cursors)")).one::<i64>();
    let listening = batch.push(count("(SELECT count(*) FROM pg_listening_channels())")).one::<i64>();
    let advisory_locks = batch
        .push(count("(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"))
        .one::<i64>();
    // Long enough that concurrent views through PgBouncer hold different server connections.
    batch.push(diesel::sql_query("SELECT pg_sleep(0.02)"));
    let read = move |seen: &pgbatch::Committed| SessionView {
        session_settings: seen.get(&session_settings).unwrap(),
        tenant: seen.get(&tenant).unwrap(),
        search_path: seen.get(&search_path).unwrap(),
        current_user: seen.get(&current_user).unwrap(),
        session_user: seen.get(&session_user).unwrap(),
        temp_relations: seen.get(&temp_relations).unwrap(),
        temp_functions: seen.get(&temp_functions).unwrap(),
        prepared: seen.get(&prepared).unwrap(),
        cursors: seen.get(&cursors).unwrap(),
        listening: seen.get(&listening).unwrap(),
        advisory_locks: seen.get(&advisory_locks).unwrap(),
    };
    (batch, read)
}

async fn view(target: impl pgbatch::Acquire) -> SessionView {
    let (batch, read) = view_batch();
    read(&batch.run(target).await.expect("a batch that reads the session"))
}

/// The session as other clients see it: one view on each of several connections at once
/// (through PgBouncer in transaction mode, these land on different server connections).
async fn others_see(h: &Harness) -> Vec<SessionView> {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let config = h.db.config().clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::connect_with(&config).await.expect("another client");
            view(&mut connection).await
        }));
    }
    let mut views = Vec::new();
    for task in tasks {
        views.push(task.await.expect("a view task"));
    }
    views
}

/// How a route's statement is run.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Plain,
    TwoPhaseCommitted,
    TwoPhaseRolledBack,
    TwoPhaseDropped,
    /// Under CockroachDB's restart savepoint (PostgreSQL runs it as a plain savepoint).
    RestartCommitted,
    /// The same, with a statement after the route that fails: the unit leaves its
    /// transaction open, so the reset written after it fails and comes after the rollback.
    RestartFailed,
}

async fn run_route(pool: &Pool, sql: &str, mode: Mode) -> Result<(), Error> {
    let mut batch = Batch::new();
    batch.push(insert_note(1, "before"));
    batch.push(diesel::sql_query(sql)).label("session route");
    match mode {
        Mode::Plain => batch.run(pool).await.map(drop),
        Mode::TwoPhaseCommitted => batch.prepare(pool).await?.commit().await.map(drop),
        Mode::TwoPhaseRolledBack => batch.prepare(pool).await?.rollback().await,
        Mode::TwoPhaseDropped => batch.prepare(pool).await.map(drop),
        Mode::RestartCommitted => batch.retry(RetryPolicy::default().cockroach_restart()).run(pool).await.map(drop),
        Mode::RestartFailed => {
            batch.push(diesel::sql_query("SELECT 1 / 0")).label("fails");
            batch.retry(RetryPolicy::default().cockroach_restart()).run(pool).await.map(drop)
        }
    }
}

/// Runs every route in `mode` on a pool of one connection; after each, the next request on
/// that connection and requests on other connections must see the default session.
async fn every_route_leaves_no_trace(mode: Mode) {
    let h = Harness::new().await;
    h.db.execute(ROUTES_SCHEMA).await.expect("the routes' functions");
    let pool = pool(h.db.config().clone(), 1).await;
    let default = view(&pool).await;
    let mut leaks = Vec::new();
    let mut failed = Vec::new();
    for (name, sql) in ROUTES {
        if let Err(error) = run_route(&pool, sql, mode).await {
            failed.push(format!("{name}: {error}"));
        }
        let next = view(&pool).await;
        if next != default {
            leaks.push(format!("{name}: the next request saw {next:?}"));
        }
        for other in others_see(&h).await {
            if other != default {
                leaks.push(format!("{name}: another client saw {other:?}"));
            }
        }
    }
    println!(
        "session routes ({mode:?}): routes={} failed_on_server={} leaks={}",
        ROUTES.len(),
        failed.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "session state outlived its batch:\n{}", leaks.join("\n"));
    // A route that fails on the server would test nothing; in RestartFailed the batch's
    // last statement fails on purpose, after the route ran.
    let expected_failures = if matches!(mode, Mode::RestartFailed) { ROUTES.len() } else { 0 };
    assert_eq!(failed.len(), expected_failures, "routes failed:\n{}", failed.join("\n"));
    assert_eq!(h.idle_in_transaction().await, 0);
}

#[tokio::test]
async fn no_route_leaves_session_state_after_a_batch() {
    every_route_leaves_no_trace(Mode::Plain).await;
}

#[tokio::test]
async fn no_route_leaves_session_state_after_a_committed_two_phase_batch() {
    every_route_leaves_no_trace(Mode::TwoPhaseCommitted).await;
}

#[tokio::test]
async fn no_route_leaves_session_state_after_a_rolled_back_two_phase_batch() {
    every_route_leaves_no_trace(Mode::TwoPhaseRolledBack).await;
}

#[tokio::test]
async fn no_route_leaves_session_state_after_a_two_phase_batch_dropped_undecided() {
    every_route_leaves_no_trace(Mode::TwoPhaseDropped).await;
}

#[tokio::test]
async fn no_route_leaves_session_state_after_a_batch_under_the_restart_savepoint() {
    every_route_leaves_no_trace(Mode::RestartCommitted).await;
}

#[tokio::test]
async fn no_route_leaves_session_state_after_a_failed_batch_under_the_restart_savepoint() {
    every_route_leaves_no_trace(Mode::RestartFailed).await;
}

/// A temporary table made by one request shadows the real table for the next request on
/// that connection: its insert would be reported committed and seen by nobody else.
#[tokio::test]
async fn a_temporary_table_left_by_one_request_does_not_swallow_the_next_ones_writes() {
    let h = Harness::new().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let mut shadow = Batch::new();
    shadow.push(diesel::sql_query("SELECT * INTO TEMP note FROM note WHERE false"));
    shadow.run(&pool).await.expect("the shadowing batch commits");
    let mut write = Batch::new();
    write.push(insert_note(1, "must be seen by everyone"));
    write.run(&pool).await.expect("reported committed");
    assert_eq!(
        h.count("SELECT count(*) FROM note WHERE body = 'must be seen by everyone'").await,
        1,
        "a write reported committed is in the real table, seen by other sessions"
    );
}

/// On a bare connection, a two-phase batch dropped undecided leaves its rollback queued; the
/// next batch reads it first. What the rollback undoes is gone (a transaction-scoped setting,
/// a temporary table made in the transaction); a session advisory lock outlives a rollback,
/// and stays with the connection's holder, as its session does (directly connected: behind a
/// pooler every unit is reset).
#[tokio::test]
async fn a_two_phase_batch_dropped_undecided_on_a_bare_connection_rolls_back_and_the_holder_keeps_its_session() {
    let h = Harness::new().await;
    h.db.execute(ROUTES_SCHEMA).await.expect("the routes' functions");
    let mut connection = Connection::connect_with(h.db.config()).await.unwrap();
    let default = view(&mut connection).await;
    for sql in ["SELECT set_tenant('dropped')", "SELECT make_temp_table()"] {
        let mut batch = Batch::new();
        batch.push(diesel::sql_query(sql));
        drop(batch.prepare(&mut connection).await.expect("the first round trip"));
        assert_eq!(view(&mut connection).await, default, "after dropping {sql:?} undecided");
    }
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("SELECT take_session_lock()"));
    drop(batch.prepare(&mut connection).await.expect("the first round trip"));
    let held = if connection.has_own_backend() { 1 } else { 0 };
    assert_eq!(view(&mut connection).await.advisory_locks, held, "the holder's session lock");
}

/// The opt-out gives up exactly what its docs say: a route the recognition does not see
/// leaves its state, while a recognised one is still reset.
#[tokio::test]
async fn when_recognised_resets_only_what_it_recognises() {
    let h = Harness::new().await;
    h.db.execute(ROUTES_SCHEMA).await.expect("the routes' functions");
    let manager =
        pgbatch::ConnectionManager::new(h.db.config().clone()).session_reset(pgbatch::SessionReset::WhenRecognised);
    let pool = bb8::Pool::builder().max_size(1).build(manager).await.unwrap();
    let default = view(&pool).await;
    run_route(&pool, "SELECT set_config('app.tenant', 'recognised', false)", Mode::Plain).await.unwrap();
    assert_eq!(view(&pool).await, default, "a recognised call is reset");
    run_route(&pool, "SELECT set_tenant('unrecognised')", Mode::Plain).await.unwrap();
    assert_eq!(view(&pool).await.tenant, "unrecognised", "an unrecognised route is not");
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
        assert_eq!(statement.as_ref().and_then(|s| s.label()), Some("session route"));
        assert!(err.to_string().contains(hint), "the error says what to write instead: {err}");
    }
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0, "nothing of a refused batch was sent");
}

/// Runs `sql` in a batch on a pool of one connection, then checks the session the next
/// batch sees; returns the first batch's result.
async fn then_default(h: &Harness, sql: &str) -> Result<(), Error> {
    let pool = pool(h.db.config().clone(), 1).await;
    let default = view(&pool).await;
    let pid = pool.get().await.unwrap().cancel_token().process_id();
    let result = run_route(&pool, sql, Mode::Plain).await;
    assert_eq!(view(&pool).await, default, "after {sql:?} the next batch sees a default session");
    assert_eq!(pool.get().await.unwrap().cancel_token().process_id(), pid, "on the same connection");
    result
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
