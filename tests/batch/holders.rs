//! Sessions between holders. A holder (a pool checkout, a bare connection, one multiplexed
//! batch) keeps its session; the next holder's first unit resets it first, in the unit's own
//! segment, so that a reset stopped by a `statement_timeout` or a cancel request makes the
//! server skip the unit: no unit ever runs on a session the reset did not clear.
//!
//! The dirty holder leaves every kind of state (a tenant set with `set_config`, 800
//! temporary tables, one of them shadowing `note`, a prepared statement, a listener, an
//! advisory lock) and a short session `statement_timeout`, under which the next reset
//! (dropping 800 tables takes tens of milliseconds) is stopped: at 5 ms within `DISCARD ALL`
//! (or `DISCARD TEMP`, the first long step of the reset that keeps the statement cache),
//! which leaves the session as it was; or, found by bisection from the reset's measured
//! time, after the reset has become uninterruptible, which holds the cancel over to the step
//! after it. Behind PgBouncer in transaction mode (CI runs this suite
//! there too) every unit is reset, since each may land on a server session another client
//! left.

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer, Text};
use pgbatch::{Batch, Committed, Connection, Error, Multiplexed, RetryPolicy, StatementCache};

use crate::common::*;

/// How the dirty holder's reset is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The dirty session's own `statement_timeout`, in milliseconds, fires during the reset.
    Timeout(u32),
    /// `pg_cancel_backend` from another session while the reset runs.
    CancelRequest,
}

/// A timeout that stops dropping 800 tables while it can still be interrupted.
const STOPPED_IN_DISCARD: Stop = Stop::Timeout(5);

/// The dirty holder's batch: every kind of session state, and enough temporary tables that
/// resetting them takes longer than the timeout it leaves.
pub fn dirty_batch(stop: Stop) -> (Batch, pgbatch::One<i32>) {
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("SET LOCAL statement_timeout = 0"));
    batch.push(diesel::sql_query(
        "DO $$ BEGIN
            PERFORM set_config('app.tenant', 'A', false);
            FOR i IN 1..800 LOOP
                EXECUTE format('CREATE TEMP TABLE IF NOT EXISTS pgbatch_scratch_%s (a int)', i);
            END LOOP;
            CREATE TEMP TABLE IF NOT EXISTS note (LIKE public.note INCLUDING ALL);
            BEGIN
                EXECUTE 'PREPARE leaked AS SELECT 1';
            EXCEPTION WHEN duplicate_prepared_statement THEN NULL;
            END;
            EXECUTE 'LISTEN leaked';
            -- A key of its own: two dirty sessions of one database must not wait for each other.
            PERFORM pg_advisory_lock(pg_backend_pid());
        END $$",
    ));
    if let Stop::Timeout(timeout) = stop {
        batch.push(diesel::sql_query(format!("SELECT set_config('statement_timeout', '{timeout}ms', false)")));
    }
    let pid = batch.push(diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))).one::<i32>();
    (batch, pid)
}

/// What a unit saw of its session, and the backend it ran on.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub tenant: String,
    pub temp_relations: i64,
    pub prepared: i64,
    pub listening: i64,
    pub advisory_locks: i64,
    pub pid: i32,
}

impl Seen {
    pub fn is_clean(&self) -> bool {
        self.tenant.is_empty()
            && self.temp_relations == 0
            && self.prepared == 0
            && self.listening == 0
            && self.advisory_locks == 0
    }
}

/// A batch that inserts a note with `body` (into the real table, unless a temporary one
/// shadows it) and reads its session.
pub fn probe(body: &str) -> (Batch, impl FnOnce(&Committed) -> Seen + use<>) {
    let text = |sql: &str| diesel::select(diesel::dsl::sql::<Text>(sql));
    let count = |sql: &str| diesel::select(diesel::dsl::sql::<BigInt>(sql));
    let mut batch = Batch::new();
    // A holder's own next batch runs under the short timeout it left.
    batch.push(diesel::sql_query("SET LOCAL statement_timeout = 0"));
    batch.push(insert_note(1, body)).label("the probe's note");
    let tenant = batch.push(text("coalesce(current_setting('app.tenant', true), '')")).one::<String>();
    let temp_relations =
        batch.push(count("(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())")).one::<i64>();
    let prepared = batch.push(count("(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)")).one::<i64>();
    let listening = batch.push(count("(SELECT count(*) FROM pg_listening_channels())")).one::<i64>();
    let advisory_locks = batch
        .push(count("(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"))
        .one::<i64>();
    let pid = batch.push(diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))).one::<i32>();
    let read = move |seen: &Committed| Seen {
        tenant: seen.get(&tenant).unwrap(),
        temp_relations: seen.get(&temp_relations).unwrap(),
        prepared: seen.get(&prepared).unwrap(),
        listening: seen.get(&listening).unwrap(),
        advisory_locks: seen.get(&advisory_locks).unwrap(),
        pid: seen.get(&pid).unwrap(),
    };
    (batch, read)
}

/// Runs `probe` while, for [`Stop::CancelRequest`], another session cancels the reset in
/// front of it; returns the probe's result and whether a cancel was sent.
async fn probe_while_stopping<T>(h: &Harness, stop: Stop, probe: impl Future<Output = T>) -> (T, bool) {
    match stop {
        Stop::Timeout(_) => (probe.await, false),
        Stop::CancelRequest => {
            // Watches until it cancels a reset or the probe is done, whichever comes first.
            let mut probe = std::pin::pin!(probe);
            tokio::select! {
                biased;
                result = &mut probe => (result, false),
                cancelled = pgbatch_testing::cancel_session_reset(&h.client, Duration::from_secs(10)) => (probe.await, cancelled),
            }
        }
    }
}

/// What a round of one target showed.
#[derive(Default)]
struct Tally {
    units: usize,
    leaks: Vec<String>,
    /// Units whose first attempt the server skipped because the reset before it failed.
    reset_failures: usize,
}

impl Tally {
    fn see(&mut self, what: &str, seen: &Seen, attempts: u32) {
        self.units += 1;
        if !seen.is_clean() {
            self.leaks.push(format!("{what}: {seen:?}"));
        }
        if attempts > 1 {
            self.reset_failures += 1;
        }
    }

    fn report(&self, target: &str, stop: Stop) {
        println!(
            "reset stopped ({stop:?}) on {target}: units={} session_leaks={} reset_failures={}",
            self.units,
            self.leaks.len(),
            self.reset_failures
        );
        assert!(self.leaks.is_empty(), "units ran on a session the reset had not cleared:\n{}", self.leaks.join("\n"));
    }
}

/// The notes with `body` in the real table, as another session sees them.
async fn notes(h: &Harness, body: &str) -> i64 {
    h.count(&format!("SELECT count(*) FROM note WHERE body = '{body}'")).await
}

async fn on_a_pool(stop: Stop) {
    let h = Harness::new().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let mut tally = Tally::default();
    for round in 0..3 {
        let (dirty, _) = dirty_batch(stop);
        dirty.run(&pool).await.expect("the dirty holder's batch");
        let body = format!("pool round {round}");
        let (batch, read) = probe(&body);
        let (committed, cancelled) = probe_while_stopping(&h, stop, batch.run(&pool)).await;
        let committed = committed.expect("replayed on a clean session");
        tally.see(&body, &read(&committed), committed.attempts());
        assert_eq!(notes(&h, &body).await, 1, "the probe's note is in the real table");
        if stop == Stop::CancelRequest && !behind_a_pooler(&h).await {
            assert!(cancelled, "round {round}: the reset was seen running and cancelled");
        }
    }
    tally.report("a pool", stop);
    assert!(tally.reset_failures > 0 || behind_a_pooler(&h).await, "no reset was stopped: the test exercised nothing");
    assert!(no_transaction_left_within(&h, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_reset_stopped_by_statement_timeout_on_a_pool_never_lets_the_next_holder_run_on_the_dirty_session() {
    on_a_pool(STOPPED_IN_DISCARD).await;
}

#[tokio::test]
async fn a_reset_stopped_by_a_cancel_request_on_a_pool_never_lets_the_next_holder_run_on_the_dirty_session() {
    on_a_pool(Stop::CancelRequest).await;
}

async fn on_a_multiplexed_client(stop: Stop) {
    let h = Harness::new().await;
    let manager = pgbatch::ConnectionManager::new(h.db.config().clone());
    let client = Multiplexed::builder(manager).connections(1).build().await.expect("a multiplexed client");
    let mut tally = Tally::default();
    for round in 0..3 {
        let (dirty, _) = dirty_batch(stop);
        let dirtied = {
            let client = client.clone();
            tokio::spawn(async move { dirty.run_multiplexed(&client).await.map(drop) })
        };
        // Written behind the dirty batch while it runs (the connection is shared).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut callers = Vec::new();
        for caller in 0..8 {
            let client = client.clone();
            let body = format!("multiplexed round {round} caller {caller}");
            callers.push(tokio::spawn(async move {
                let (batch, read) = probe(&body);
                let committed = batch.run_multiplexed(&client).await;
                (body, committed.map(|committed| (read(&committed), committed.attempts())))
            }));
        }
        let (results, cancelled) = probe_while_stopping(&h, stop, async {
            let mut results = Vec::new();
            for caller in callers {
                results.push(caller.await.expect("a caller"));
            }
            results
        })
        .await;
        dirtied.await.unwrap().expect("the dirty batch commits");
        for (body, result) in results {
            let (seen, attempts) = result.unwrap_or_else(|error| panic!("{body}: {error}"));
            tally.see(&body, &seen, attempts);
            assert_eq!(notes(&h, &body).await, 1, "{body}: the note is in the real table");
        }
        // Behind a pooler the batches may land on other server sessions than the dirty one.
        if stop == Stop::CancelRequest && !behind_a_pooler(&h).await {
            assert!(cancelled, "round {round}: the reset was seen running and cancelled");
        }
    }
    tally.report("a multiplexed client", stop);
    assert!(tally.reset_failures > 0 || behind_a_pooler(&h).await, "no reset was stopped: the test exercised nothing");
}

#[tokio::test]
async fn a_reset_stopped_by_statement_timeout_on_a_multiplexed_connection_never_lets_the_batches_behind_run_dirty() {
    on_a_multiplexed_client(STOPPED_IN_DISCARD).await;
}

#[tokio::test]
async fn a_reset_stopped_by_a_cancel_request_on_a_multiplexed_connection_never_lets_the_batches_behind_run_dirty() {
    on_a_multiplexed_client(Stop::CancelRequest).await;
}

/// A bare connection is its owner's for as long as it lives: directly connected, its session
/// is never reset, and its batches see what the earlier ones left. Behind a pooler each
/// unit is reset; a stopped reset skips the unit, and the connection is closed unless the
/// reset had cleared the session.
async fn on_a_bare_connection(stop: Stop) {
    let h = Harness::new().await;
    let mut connection = Connection::connect_with(h.db.config()).await.expect("a connection");
    let (dirty, _) = dirty_batch(stop);
    dirty.run(&mut connection).await.expect("the dirty batch");
    let (mut batch, read) = probe("bare");
    if connection.has_own_backend() {
        let seen = read(&batch.run(&mut connection).await.expect("the holder's next batch"));
        assert_eq!(seen.tenant, "A", "the holder keeps its session: {seen:?}");
        assert!(seen.temp_relations > 800, "{seen:?}");
        assert_eq!(notes(&h, "bare").await, 0, "its own temporary note table took the insert");
        return;
    }
    batch.retry(RetryPolicy::never());
    let (result, _) = probe_while_stopping(&h, stop, batch.run(&mut connection)).await;
    match result {
        // Behind a pooler the unit may have landed on another server session than the dirty
        // one, whose reset nothing stopped: then it must have run clean.
        Ok(committed) => {
            let seen = read(&committed);
            assert!(seen.is_clean(), "{seen:?}");
        }
        Err(Error::SessionReset(failure)) => {
            assert_eq!(notes(&h, "bare").await, 0, "nothing of the batch ran");
            assert_eq!(connection.is_closed(), !failure.session_cleared(), "{failure}");
            if connection.is_closed() {
                let (again, _) = probe("bare, again");
                assert!(matches!(again.run(&mut connection).await, Err(Error::ConnectionClosed)));
            } else {
                let (again, read) = probe("bare, again");
                let seen = read(&again.run(&mut connection).await.expect("reset again, then run"));
                assert!(seen.is_clean(), "{seen:?}");
            }
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_bare_connection_keeps_its_session_or_behind_a_pooler_never_runs_on_a_session_whose_reset_timed_out() {
    on_a_bare_connection(STOPPED_IN_DISCARD).await;
}

#[tokio::test]
async fn a_bare_connection_keeps_its_session_or_behind_a_pooler_never_runs_on_a_session_whose_reset_was_cancelled() {
    on_a_bare_connection(Stop::CancelRequest).await;
}

/// Two clients: the first leaves its session dirty, the second runs batches. Directly
/// connected they have sessions of their own; behind PgBouncer in transaction mode the
/// second gets the server session the first left (PgBouncer reuses the last one first), its
/// reset is stopped, and pgbatch ends that server session (PgBouncer closes a server
/// connection its client leaves inside a transaction) instead of leaving it to the pooler.
async fn a_second_client(stop: Stop) {
    let h = Harness::new().await;
    let mut first = Connection::connect_with(h.db.config()).await.expect("the first client");
    let second = pool(h.db.config().clone(), 1).await;
    let mut tally = Tally::default();
    for round in 0..3 {
        let (dirty, pid) = dirty_batch(stop);
        let dirty_pid = dirty.run(&mut first).await.expect("the first client's batch").get(&pid).unwrap();
        let body = format!("second client round {round}");
        let (mut once, read) = probe(&body);
        once.retry(RetryPolicy::never());
        let (result, _) = probe_while_stopping(&h, stop, once.run(&second)).await;
        match result {
            Ok(committed) => tally.see(&body, &read(&committed), 1),
            Err(Error::SessionReset(failure)) => {
                assert_eq!(notes(&h, &body).await, 0, "nothing of the batch ran");
                if !failure.session_cleared() {
                    assert!(
                        gone_within(&h, dirty_pid, Duration::from_secs(5)).await,
                        "the server session its reset could not clear was ended, not handed on"
                    );
                }
                let (batch, read) = probe(&body);
                let committed = batch.run(&second).await.expect("the second client's batch, again");
                tally.see(&body, &read(&committed), 2);
            }
            Err(other) => panic!("{other}"),
        }
    }
    tally.report("a second client", stop);
    assert!(no_transaction_left_within(&h, Duration::from_secs(5)).await);
}

/// Whether the test's connections go through a pooler (CI's PgBouncer leg).
async fn behind_a_pooler(h: &Harness) -> bool {
    !Connection::connect_with(h.db.config()).await.expect("a connection").has_own_backend()
}

/// Whether the backend `pid` has exited within `within`.
async fn gone_within(h: &Harness, pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while h.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).await > 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Whether no backend of this database is inside a transaction within `within`: a server
/// session a pooler is made to close (left inside a transaction on purpose) ends a moment
/// after its client goes.
async fn no_transaction_left_within(h: &Harness, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while h.idle_in_transaction().await > 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn a_second_client_never_runs_on_a_server_session_whose_reset_timed_out() {
    a_second_client(STOPPED_IN_DISCARD).await;
}

#[tokio::test]
async fn a_second_client_never_runs_on_a_server_session_whose_reset_was_cancelled() {
    a_second_client(Stop::CancelRequest).await;
}

/// PostgreSQL holds over a `statement_timeout` that fires while `DISCARD ALL` cannot be
/// interrupted, and delivers it to the next statement. The reset ends with a step of its own
/// that takes it: the unit is reported as skipped by its reset (the session cleared, the
/// connection kept), never as a failure of its own, and replayed on the same connection.
///
/// With the statement cache off, so that the reset is `DISCARD ALL` (as behind a pooler and
/// on CockroachDB). The reset that keeps the cache runs `RESET ALL` before the commit that
/// drops the temporary tables' files, so a holder's timeout cannot reach that part; the same
/// closing step would take a cancel request held over from it.
#[tokio::test]
async fn a_timeout_held_over_from_the_reset_is_the_resets_and_the_batch_is_replayed_on_the_same_connection() {
    let h = Harness::new().await;
    let manager = pgbatch::ConnectionManager::new(h.db.config().clone()).statement_cache(StatementCache::Off);
    let pool = bb8::Pool::builder().max_size(1).build(manager).await.expect("a pool");
    // How long the reset takes on this machine is where the search starts. The timeout must
    // fire within the reset's last part, where `DISCARD ALL` drops the temporary tables'
    // files and cannot be interrupted; a measurement taken while other tests run can be far
    // off, so each round moves the timeout by what the last one saw: a reset that finished
    // first means the timeout was too long, a reset stopped while interruptible that it was
    // too short, and the next one is halfway between the nearest of each.
    let reset_ms = time_a_reset(&h).await;
    let mut search = TimeoutSearch::starting_at(reset_ms * 0.75);
    let (mut held_over, mut cancelled_in_the_reset, mut completed, mut rounds) = (0, 0, 0, 0);
    while rounds < 24 && held_over < 3 {
        rounds += 1;
        let timeout = search.next_ms();
        let (dirty, pid) = dirty_batch(Stop::Timeout(timeout));
        let dirty_pid = dirty.run(&pool).await.expect("the dirty batch").get(&pid).unwrap();
        let body = format!("held over {rounds}");
        let (mut once, read) = probe(&body);
        once.retry(RetryPolicy::never());
        match once.run(&pool).await {
            Err(Error::SessionReset(failure)) if failure.session_cleared() => {
                held_over += 1;
                assert!(
                    failure.cause().server_error().is_some_and(|e| e.code().code() == "57014"),
                    "the timeout is named: {failure}"
                );
                assert_eq!(notes(&h, &body).await, 0, "nothing of the batch ran");
                let (batch, read) = probe(&body);
                let committed = batch.run(&pool).await.expect("the replay");
                let seen = read(&committed);
                assert!(seen.is_clean(), "{seen:?}");
                assert_eq!(seen.pid, dirty_pid, "on the same connection: the reset had cleared it");
            }
            Err(Error::SessionReset(_)) => {
                cancelled_in_the_reset += 1;
                search.too_short(timeout);
                assert_eq!(notes(&h, &body).await, 0, "nothing of the batch ran");
            }
            // The reset finished within the timeout this time: the batch ran, on a clean
            // session.
            Ok(committed) => {
                completed += 1;
                search.too_long(timeout);
                assert!(read(&committed).is_clean());
            }
            Err(other) => panic!("{other}"),
        }
    }
    println!(
        "held-over timeouts: reset_ms={reset_ms:.1} rounds={rounds} held_over={held_over} \
         stopped_in_the_reset={cancelled_in_the_reset} completed={completed}"
    );
    assert!(held_over > 0, "no timeout was held over to the step after the reset");
}

/// The bisection that looks for a timeout firing within the reset's uninterruptible part:
/// between the longest timeout seen too short and the shortest seen too long. A bound the
/// other has crossed (timings vary between rounds) is dropped.
struct TimeoutSearch {
    next_ms: f64,
    too_short: Option<f64>,
    too_long: Option<f64>,
}

impl TimeoutSearch {
    fn starting_at(ms: f64) -> Self {
        TimeoutSearch { next_ms: ms, too_short: None, too_long: None }
    }

    fn next_ms(&self) -> u32 {
        (self.next_ms.round() as u32).max(1)
    }

    fn too_short(&mut self, ms: u32) {
        let ms = f64::from(ms);
        self.too_short = Some(ms);
        self.too_long = self.too_long.filter(|&long| long > ms);
        self.next_ms = self.too_long.map_or(ms * 1.5, |long| (ms + long) / 2.0);
    }

    fn too_long(&mut self, ms: u32) {
        let ms = f64::from(ms);
        self.too_long = Some(ms);
        self.too_short = self.too_short.filter(|&short| short < ms);
        self.next_ms = self.too_short.map_or(ms * 0.6, |short| (short + ms) / 2.0);
    }
}

/// How long, in milliseconds, `DISCARD ALL` takes on a session the dirty batch left (the
/// median of three), timed on a session of the test's own.
async fn time_a_reset(h: &Harness) -> f64 {
    let client = h.db.connect().await.expect("a session to time the reset on");
    let mut times = Vec::new();
    for _ in 0..3 {
        client
            .batch_execute(
                "DO $$ BEGIN
                    FOR i IN 1..800 LOOP
                        EXECUTE format('CREATE TEMP TABLE IF NOT EXISTS pgbatch_scratch_%s (a int)', i);
                    END LOOP;
                END $$",
            )
            .await
            .expect("the temporary tables");
        let started = Instant::now();
        client.batch_execute("DISCARD ALL").await.expect("the reset");
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[1]
}

/// A holder keeps what its own statements left: a temporary table and a session setting
/// made by one batch are there for its next batch on the same checkout, and gone for the
/// next holder of the same connection. Behind a pooler a holder keeps only what lives inside
/// one transaction: each unit is reset.
#[tokio::test]
async fn a_pool_checkout_keeps_its_session_and_the_next_checkout_starts_clean() {
    let h = Harness::new().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let holder_pid;
    {
        let mut conn = pool.get().await.unwrap();
        let mut leave = Batch::new();
        leave.push(diesel::sql_query("SELECT set_config('app.tenant', 'holder', false)"));
        leave.push(diesel::sql_query("SELECT 1 AS a INTO TEMP scratch"));
        leave.run(&mut conn).await.unwrap();
        let (batch, read) = probe("holder");
        let seen = read(&batch.run(&mut conn).await.unwrap());
        holder_pid = seen.pid;
        if conn.has_own_backend() {
            assert_eq!((seen.tenant.as_str(), seen.temp_relations), ("holder", 1), "{seen:?}");
        } else {
            assert!(seen.is_clean(), "behind a pooler each unit is reset: {seen:?}");
        }
    }
    let (batch, read) = probe("next holder");
    let seen = read(&batch.run(&pool).await.unwrap());
    assert!(seen.is_clean(), "{seen:?}");
    if pool.get().await.unwrap().has_own_backend() {
        assert_eq!(seen.pid, holder_pid, "the same connection, reset");
    }
}

/// A closing `ROLLBACK` that fails on the server (here it is rewritten on its way into a
/// statement that fails, as a cancel request landing on it would make it fail) leaves the
/// failed batch's transaction aborted. The batch written behind it on the same shared
/// connection starts with a `ROLLBACK` of its own: it is not failed by what its neighbour
/// left.
#[tokio::test]
async fn a_closing_rollback_stopped_on_a_multiplexed_connection_does_not_fail_the_next_callers_batch() {
    let h = Harness::new().await;
    let proxy = h.db.proxy().await.expect("a TCP server").delay(Duration::from_millis(20)).start().await.unwrap();
    let manager = pgbatch::ConnectionManager::new(h.db.config_via(&proxy));
    let client = Multiplexed::builder(manager).connections(1).build().await.expect("a multiplexed client");
    proxy.arm(pgbatch_testing::Fault::RewriteClient {
        from: b"Q\0\0\0\x0dROLLBACK\0".to_vec(),
        to: b"Q\0\0\0\x0dROLLBACX\0".to_vec(),
    });
    let mut failing = Batch::new();
    failing.push(insert_note(1, "rolled back")).label("ran");
    failing.push(diesel::sql_query("SELECT 1 / 0")).label("fails");
    let failing = {
        let client = client.clone();
        tokio::spawn(async move { failing.run_multiplexed(&client).await.map(drop) })
    };
    // Written behind the failing batch, before its answers are back.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut next = Batch::new();
    next.push(insert_note(1, "the next caller"));
    next.retry(RetryPolicy::never());
    let next = next.run_multiplexed(&client).await;
    let failed = failing.await.unwrap().expect_err("division by zero");
    assert_eq!(failed.statement_failure().and_then(|f| f.label()), Some("fails"), "{failed}");
    assert_eq!(proxy.cuts(), 1, "the closing ROLLBACK was rewritten");
    next.expect("the next caller's batch, in one attempt");
    assert_eq!(notes(&h, "the next caller").await, 1);
    assert_eq!(notes(&h, "rolled back").await, 0);
    assert!(no_transaction_left_within(&h, Duration::from_secs(5)).await);
}

/// The reset gives the session back what the connection asked for at start-up: a batch
/// behind a reset runs under its own `application_name`, never the server session's
/// start-up value. Behind a pooler `DISCARD ALL` alone would bring back the value the
/// pooler's server connection started with (another client's name), so that monitoring,
/// and every tool that finds a client's backends by name, would lose it.
#[tokio::test]
async fn a_batch_behind_a_reset_runs_under_its_own_application_name() {
    let h = Harness::new().await;
    let names = ["pgbatch-name-a", "pgbatch-name-b"];
    let pools = [h.pool_named(names[0], 1).await, h.pool_named(names[1], 1).await];
    let read_name = || {
        let mut batch = Batch::new();
        let name =
            batch.push(diesel::select(diesel::dsl::sql::<Text>("current_setting('application_name')"))).one::<String>();
        (batch, name)
    };
    // Each pool's connection is used, then changes hands, several times over, and behind a
    // pooler the two clients' units take turns on whatever server session is free.
    for round in 0..4 {
        for (pool, expected) in pools.iter().zip(names) {
            let (batch, name) = read_name();
            let committed = batch.run(pool).await.unwrap();
            assert_eq!(committed.get(&name).unwrap(), expected, "round {round}");
        }
    }
}
