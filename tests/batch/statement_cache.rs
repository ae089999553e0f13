//! The statement cache: a batch's statements prepared once per connection under names of
//! pgbatch's own, kept across the session reset, sent again unnamed when the server can no
//! longer run them as they were prepared, never confused by a unit the server skipped or a
//! future dropped mid-flight, and off behind a transaction-mode pooler (CI runs this suite
//! through PgBouncer too).

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use pgbatch::{Batch, Connection, ConnectionManager, Error, Multiplexed, RetryPolicy, SessionReset, StatementCache};

use crate::common::*;

/// Whether the test's connections go through a pooler (CI's PgBouncer leg), where the
/// cache is off by default.
async fn behind_a_pooler(h: &Harness) -> bool {
    !Connection::connect_with(h.db.config()).await.expect("a connection").has_own_backend()
}

/// A connection of its own to the test's database, where the cache is on by default; none
/// behind a transaction-mode pooler, where the cache is off and no statement outlives its
/// transaction (the test then has nothing to show).
async fn caching_connection(h: &Harness) -> Option<Connection> {
    let connection = Connection::connect_with(h.db.config()).await.expect("a connection");
    connection.has_own_backend().then_some(connection)
}

/// A batch that writes a note and reads the bodies back: the read's result type is the
/// column's type, so altering the column invalidates its cached plan.
fn write_and_read(body: &str) -> Batch {
    let mut batch = Batch::new();
    batch.push(insert_note(1, body));
    batch.push(note::table.select(note::body).filter(note::account_id.eq(1i64)));
    batch.retry(RetryPolicy::never());
    batch
}

/// The protocol-level statements the connection's session holds whose SQL starts with
/// `prefix`, as `name=executions`; and how many statements were prepared with SQL
/// `PREPARE`. Read on the same session, in a batch of its own.
async fn server_statements(connection: &mut Connection, prefix: &str) -> (Vec<String>, i64) {
    let mut batch = Batch::new();
    let names = batch
        .push(diesel::select(diesel::dsl::sql::<Text>(&format!(
            "coalesce((SELECT string_agg(name || '=' || (generic_plans + custom_plans), ',' ORDER BY name) \
             FROM pg_prepared_statements WHERE NOT from_sql AND statement LIKE '{prefix}%'), '')"
        ))))
        .one::<String>();
    let from_sql = batch
        .push(diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)",
        )))
        .one::<i64>();
    let committed = batch.run(&mut *connection).await.expect("reading the session's statements");
    let names = committed.get(&names).unwrap();
    let names = names.split(',').filter(|name| !name.is_empty()).map(str::to_owned).collect();
    (names, committed.get(&from_sql).unwrap())
}

const INSERT_NOTE: &str = "INSERT INTO \"note\"";

#[tokio::test]
async fn a_repeated_batch_binds_its_statements_by_name_without_preparing_them_again() {
    let h = Harness::new().await;
    let mut connection = Connection::connect_with(h.db.config()).await.unwrap();
    if behind_a_pooler(&h).await {
        assert_eq!(connection.cached_statements(), 0, "off behind a transaction-mode pooler by default");
        write_and_read("through a pooler").run(&mut connection).await.expect("uncached batches run");
        assert_eq!(connection.cached_statements(), 0);
        return;
    }
    write_and_read("first").run(&mut connection).await.unwrap();
    assert_eq!(connection.cached_statements(), 2);
    let (first, _) = server_statements(&mut connection, INSERT_NOTE).await;
    for round in 0..3 {
        write_and_read(&format!("again {round}")).run(&mut connection).await.unwrap();
    }
    let (again, from_sql) = server_statements(&mut connection, INSERT_NOTE).await;
    assert_eq!(first.len(), 1, "one statement for the insert: {first:?}");
    let (name, executions) = first[0].split_once('=').unwrap();
    assert!(name.starts_with("pgbatch:"), "{first:?}");
    assert_eq!(executions, "1");
    assert_eq!(again, [format!("{name}=4")], "the same statement, bound again, never prepared again");
    assert_eq!(from_sql, 0);
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body LIKE 'again %'").await, 3);
}

#[tokio::test]
async fn a_plan_invalidated_under_a_cached_statement_commits_the_next_batch() {
    let h = Harness::new().await;
    let mut connection = Connection::connect_with(h.db.config()).await.unwrap();
    let multiplexed =
        Multiplexed::builder(ConnectionManager::new(h.db.config().clone())).connections(1).build().await.unwrap();
    let held = pool(h.db.config().clone(), 1).await;
    for (round, column_type) in ["varchar(200)", "text", "varchar(300)"].into_iter().enumerate() {
        write_and_read(&format!("bare {round}")).run(&mut connection).await.unwrap();
        write_and_read(&format!("multiplexed {round}")).run_multiplexed(&multiplexed).await.unwrap();
        write_and_read(&format!("pooled {round}")).run(&held).await.unwrap();
        // The read's result type changes: a cached plan of it can no longer run
        // (`0A000 cached plan must not change result type`).
        h.client.batch_execute(&format!("ALTER TABLE note ALTER COLUMN body TYPE {column_type}")).await.unwrap();
        let after = format!("after alter {round}");
        write_and_read(&format!("{after} bare")).run(&mut connection).await.expect("the bare connection's batch");
        write_and_read(&format!("{after} multiplexed"))
            .run_multiplexed(&multiplexed)
            .await
            .expect("the multiplexed batch");
        write_and_read(&format!("{after} pooled")).run(&held).await.expect("the pooled batch");
        for kind in ["bare", "multiplexed", "pooled"] {
            let count = h.count(&format!("SELECT count(*) FROM note WHERE body = '{after} {kind}'")).await;
            assert_eq!(count, 1, "{after} {kind}: committed once");
        }
    }
}

/// A statement the caller prepared under a name of the form pgbatch uses (a quoted
/// identifier, in SQL text of the caller's) takes the name the cache would give the next
/// statement: the batch's `Parse` fails with `42P05`, which is not the batch's failure (it
/// is sent again and commits). pgbatch never closes the caller's statement: the holder
/// keeps it, and the next holder's reset removes it while keeping pgbatch's.
#[tokio::test]
async fn a_users_prepare_never_collides_with_the_caches_names_and_the_reset_removes_it() {
    use diesel_async::SimpleAsyncConnection as _;

    let h = Harness::new().await;
    if behind_a_pooler(&h).await {
        return; // No statement outlives its transaction there; the cache is off.
    }
    let pool = pool(h.db.config().clone(), 1).await;
    let mut holder = pool.get().await.unwrap();
    // SQL text runs unnamed, outside the cache: the connection has prepared nothing yet.
    holder
        .batch_execute("PREPARE \"pgbatch:00000000\" AS SELECT 1; PREPARE mine AS SELECT 2")
        .await
        .expect("the caller's PREPAREs");
    let mut taken = Batch::new();
    taken.push(insert_note(1, "names taken"));
    taken.retry(RetryPolicy::never());
    taken.run(&mut *holder).await.expect("a name the caller took is not the batch's failure");
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'names taken'").await, 1);
    // Sent again unnamed, the statement is prepared into the cache by the next batch.
    let mut again = Batch::new();
    again.push(insert_note(1, "names taken again"));
    again.run(&mut *holder).await.unwrap();
    let (ours, users) = server_statements(&mut holder, INSERT_NOTE).await;
    assert_eq!(users, 2, "the holder keeps its own statements");
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(!ours[0].starts_with("pgbatch:00000000="), "{ours:?}");
    drop(holder);

    let mut next = pool.get().await.unwrap();
    let (kept, users) = server_statements(&mut next, INSERT_NOTE).await;
    assert_eq!(users, 0, "the reset deallocated every statement prepared with SQL");
    assert_eq!(kept, ours, "and kept pgbatch's");
    let mut after = Batch::new();
    after.push(insert_note(1, "after the reset"));
    after.run(&mut *next).await.unwrap();
    let (bound, _) = server_statements(&mut next, INSERT_NOTE).await;
    let name = ours[0].split_once('=').unwrap().0;
    assert_eq!(bound, [format!("{name}=2")], "the next holder binds it without preparing it again");
}

/// A caller who prepared the next 64 names of the form pgbatch uses makes every statement
/// the cache would prepare fail with `42P05`. Each batch, multiplexed batch and diesel-async
/// query is sent once more with its statements unnamed, which no name can fail, and
/// commits on its first attempt (the policy allows no retry); the caller's statements stay.
#[tokio::test]
async fn a_resend_after_a_cache_miss_cannot_miss_again() {
    let h = Harness::new().await;
    let Some(mut connection) = caching_connection(&h).await else { return };
    // Without resets between the multiplexed batches, so that the caller's statements stay
    // on the session (the reset would deallocate them).
    let multiplexed =
        Multiplexed::builder(ConnectionManager::new(h.db.config().clone()).session_reset(SessionReset::WhenRecognised))
            .connections(1)
            .build()
            .await
            .unwrap();
    let squat = || {
        let mut batch = Batch::new();
        batch.push(diesel::sql_query(
            "DO $$ BEGIN
                FOR i IN 0..63 LOOP
                    BEGIN
                        EXECUTE format('PREPARE %I AS SELECT 1', 'pgbatch:' || lpad(i::text, 8, '0'));
                    EXCEPTION WHEN duplicate_prepared_statement THEN NULL;
                    END;
                END LOOP;
            END $$",
        ));
        batch
    };
    squat().run(&mut connection).await.expect("the caller's PREPAREs");
    let (_, squatted) = server_statements(&mut connection, INSERT_NOTE).await;
    assert!(squatted >= 60, "the caller holds the cache's next names: {squatted}");
    let committed = write_and_read("bare").run(&mut connection).await.expect("the batch, sent again unnamed");
    assert_eq!(committed.attempts(), 1);
    let query = note::table.select(note::body).filter(note::body.eq("bare"));
    let bodies: Vec<String> = diesel_async::RunQueryDsl::load(query, &mut connection)
        .await
        .expect("the diesel-async query, sent again unnamed");
    assert_eq!(bodies, ["bare"]);
    let (_, kept) = server_statements(&mut connection, INSERT_NOTE).await;
    assert_eq!(kept, squatted, "pgbatch closed none of the caller's statements");

    squat().run_multiplexed(&multiplexed).await.expect("the caller's PREPAREs, multiplexed");
    let committed = write_and_read("multiplexed")
        .run_multiplexed(&multiplexed)
        .await
        .expect("the multiplexed batch, sent again unnamed");
    assert_eq!(committed.attempts(), 1);
    for body in ["bare", "multiplexed"] {
        assert_eq!(h.count(&format!("SELECT count(*) FROM note WHERE body = '{body}'")).await, 1, "{body}");
    }
}

/// The codes of a cache miss raised while a cached statement runs (a function raising
/// `feature_not_supported`, `0A000`) are the statement's own failure: its `Parse` and `Bind`
/// had succeeded. The batch is not sent again (the sequence the function advances outside
/// the transaction moves once per run, the first run preparing the statement, the second
/// binding it) and the cache keeps its statements.
#[tokio::test]
async fn a_miss_code_raised_while_a_cached_statement_runs_is_its_own_failure() {
    let h = Harness::new().await;
    let Some(mut connection) = caching_connection(&h).await else { return };
    h.client
        .batch_execute(
            "CREATE SEQUENCE runs;
             CREATE FUNCTION unsupported() RETURNS int LANGUAGE plpgsql AS $$ BEGIN
                 PERFORM nextval('runs');
                 RAISE EXCEPTION 'not here' USING ERRCODE = 'feature_not_supported';
             END $$",
        )
        .await
        .unwrap();
    for run in 1..=2 {
        let mut batch = write_and_read(&format!("run {run}"));
        batch.push(diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("unsupported()")));
        let error = batch.run(&mut connection).await.expect_err("the function fails");
        let Error::Statement(failure) = &error else { panic!("{error}") };
        assert_eq!(failure.index(), 2, "{error}");
        assert_eq!(failure.cause().server_error().map(|e| e.code().code()), Some("0A000"), "{error}");
        assert_eq!(h.count("SELECT last_value FROM runs").await, run, "run {run} ran once, not sent again");
        assert_eq!(connection.cached_statements(), 3, "run {run}: the cache kept its statements");
    }
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body LIKE 'run %'").await, 0);
}

/// A unit pipelined behind another cannot use a statement whose `Parse` is in the unit
/// ahead: that unit fails at its first statement, so the server skips the `Parse`. The
/// batch behind it commits, and the statement is prepared again afterwards.
#[tokio::test]
async fn a_parse_the_server_skipped_in_the_unit_ahead_is_never_bound_by_the_unit_behind() {
    let h = Harness::new().await;
    for round in 0..6 {
        let client = Multiplexed::builder(ConnectionManager::new(h.db.config().clone()))
            .connections(1)
            .in_flight_per_connection(8)
            .build()
            .await
            .unwrap();
        let mut ahead = Batch::new();
        ahead.push(insert_account(1, "taken@example.com")).label("duplicate");
        ahead.push(insert_note(1, &format!("ahead {round}")));
        ahead.retry(RetryPolicy::never());
        let behind: Vec<Batch> = (0..4).map(|i| write_and_read(&format!("behind {round} {i}"))).collect();
        let behind_runs = futures_util::future::join_all(behind.iter().map(|batch| batch.run_multiplexed(&client)));
        let (ahead_result, behind_results) = tokio::join!(ahead.run_multiplexed(&client), behind_runs);
        assert!(matches!(ahead_result, Err(Error::Statement(_))), "{ahead_result:?}");
        for result in behind_results {
            result.expect("a batch behind the failed one commits");
        }
        write_and_read(&format!("after {round}")).run_multiplexed(&client).await.expect("prepared again");
    }
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body LIKE 'behind %'").await, 24);
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body LIKE 'ahead %'").await, 0);
}

/// A batch dropped before its answers came leaves its statements' fate unknown: the next
/// batch reads those answers without them, and prepares the statements again.
#[tokio::test]
async fn a_statement_whose_batch_was_dropped_mid_flight_is_prepared_again() {
    let h = Harness::new().await;
    let Some(mut connection) = caching_connection(&h).await else { return };
    let mut slow = Batch::new();
    slow.push(insert_note(1, "dropped"));
    slow.push(diesel::select(diesel::dsl::sql::<BigInt>("(SELECT count(*) FROM pg_sleep(0.3))")));
    let dropped = tokio::time::timeout(Duration::from_millis(50), slow.run(&mut connection)).await;
    assert!(dropped.is_err(), "the batch was still in flight");
    for round in 0..2 {
        write_and_read(&format!("after the drop {round}")).run(&mut connection).await.unwrap();
    }
    let (names, _) = server_statements(&mut connection, INSERT_NOTE).await;
    // Kept as pending, the dropped batch's entry would never be used: the rounds would
    // parse the insert unnamed, and the dropped batch's statement would show one execution.
    assert_eq!(names.len(), 1, "the insert is on the server once: {names:?}");
    assert!(names[0].ends_with("=2"), "prepared again and bound by both rounds: {names:?}");
}

#[tokio::test]
async fn a_full_cache_closes_what_it_evicts_and_an_off_cache_prepares_nothing() {
    let h = Harness::new().await;
    let Some(mut connection) = caching_connection(&h).await else { return };
    connection.set_statement_cache(StatementCache::Always { capacity: 2 });
    let statements: [fn(&mut Batch); 4] = [
        |batch| {
            batch.push(insert_note(1, "evicted"));
        },
        |batch| {
            batch.push(insert_account(9, "nine@example.com"));
        },
        |batch| {
            batch.push(diesel::update(account::table).set(account::balance.eq(account::balance)));
        },
        |batch| {
            batch.push(diesel::delete(audit::table));
        },
    ];
    for push in &statements {
        let mut batch = Batch::new();
        push(&mut batch);
        batch.run(&mut connection).await.unwrap();
    }
    assert_eq!(connection.cached_statements(), 2);
    let (names, _) = server_statements(&mut connection, "").await;
    // The reading batch's two statements evict the two cached ones, which are closed at the
    // start of that batch's own unit: the server then holds only the reading statement that
    // lists them (parsed just before it ran; the second is parsed after it).
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with("=1"), "{names:?}");

    connection.set_statement_cache(StatementCache::Off);
    for round in 0..2 {
        write_and_read(&format!("off {round}")).run(&mut connection).await.unwrap();
    }
    assert_eq!(connection.cached_statements(), 0);
    let (names, _) = server_statements(&mut connection, "").await;
    assert!(names.is_empty(), "every cached statement was closed: {names:?}");
}

/// Guards (pgbatch's SQL around the caller's query), idempotency markers and two-phase
/// batches go through the cache like any statement: run twice on one connection, each of
/// their statements is prepared once and bound twice.
#[tokio::test]
async fn guards_markers_and_two_phase_batches_bind_their_statements_by_name() {
    let h = Harness::new().await;
    let Some(mut connection) = caching_connection(&h).await else { return };
    pgbatch::idempotency::install(&h.pool, pgbatch::idempotency::DEFAULT_TABLE).await.unwrap();
    for round in 0..2 {
        let mut batch = Batch::new();
        batch.idempotency_key(pgbatch::IdempotencyKey::new(format!("cached {round}")));
        batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(7))).expect_rows(1);
        batch.push(insert_note(1, &format!("guarded {round}")));
        batch.run(&mut connection).await.unwrap();

        let mut two_phase = Batch::new();
        two_phase.push(insert_note(1, &format!("two-phase {round}")));
        two_phase.prepare(&mut connection).await.unwrap().commit().await.unwrap();
    }
    let (inserts, _) = server_statements(&mut connection, "INSERT").await;
    let (guarded, _) = server_statements(&mut connection, "WITH pgbatch_guarded").await;
    // The note's insert ran four times (two batches of each kind), the marker's twice, the
    // guard's wrapped update twice: each prepared once, then bound by name.
    assert!(inserts.iter().any(|entry| entry.ends_with("=4")), "{inserts:?}");
    assert!(inserts.iter().any(|entry| entry.ends_with("=2")), "{inserts:?}");
    assert_eq!(guarded.len(), 1, "one guarded statement, the same SQL each run: {guarded:?}");
    assert!(guarded[0].ends_with("=2"), "{guarded:?}");
}

/// A caller that deallocates every prepared statement (`DEALLOCATE ALL`, here inside a `DO`
/// block) takes pgbatch's with it, the reset's own steps included. The holder's next batch
/// binds a statement the server no longer has (`26000`): it is sent again, prepared anew,
/// and commits. After a later holder deallocates again, the next holder's reset binds its
/// first step by a name the server no longer has: the reset fails before it cleared
/// anything, the server skips the batch, the connection is given up with its session, and
/// the batch is replayed on a fresh one.
#[tokio::test]
async fn a_caller_deallocating_pgbatchs_statements_costs_a_resend_and_then_a_connection() {
    let h = Harness::new().await;
    if behind_a_pooler(&h).await {
        return;
    }
    let pool = pool(h.db.config().clone(), 1).await;
    let pid = |body: &str| {
        let mut batch = write_and_read(body);
        let pid =
            batch.push(diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"))).one::<i32>();
        (batch, pid)
    };
    // Two holders, so that the reset's steps are prepared and confirmed.
    let (first, first_pid) = pid("first holder");
    let holder_pid = first.run(&pool).await.unwrap().get(&first_pid).unwrap();
    write_and_read("second holder").run(&pool).await.unwrap();

    let mut holder = pool.get().await.unwrap();
    write_and_read("third holder").run(&mut *holder).await.unwrap();
    let mut deallocate = Batch::new();
    deallocate.push(diesel::sql_query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"));
    deallocate.run(&mut *holder).await.unwrap();
    // Cached, and gone from the server: sent once more (the policy allows no retry).
    write_and_read("after the deallocation").run(&mut *holder).await.expect("sent again, prepared anew");
    drop(holder);

    let mut deallocate = Batch::new();
    deallocate.push(diesel::sql_query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"));
    // The resend forgot the whole cache, the reset's steps with it: this holder's reset
    // prepared them anew, and the deallocation now takes them while the cache still counts
    // on them.
    let attempts = deallocate.run(&pool).await.unwrap().attempts();
    assert_eq!(attempts, 1, "the reset before it was prepared anew");
    let (next, next_pid) = pid("next holder");
    let mut next = next;
    next.retry(RetryPolicy::default());
    let committed = next.run(&pool).await.expect("replayed on a fresh connection");
    assert_ne!(committed.get(&next_pid).unwrap(), holder_pid, "the connection whose reset failed was given up");
    assert_eq!(committed.attempts(), 2, "the batch the failed reset skipped, then its replay");
    for body in ["third holder", "after the deallocation", "next holder"] {
        assert_eq!(h.count(&format!("SELECT count(*) FROM note WHERE body = '{body}'")).await, 1, "{body}");
    }
}
