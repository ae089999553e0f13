//! Batches of many callers multiplexed on a few shared connections: every guarantee of a
//! batch holds per batch, and one caller's batch never touches another's.

use std::collections::BTreeSet;
use std::time::Duration;

use diesel::prelude::*;
use pgbatch::{Batch, ConnectionManager, Error, Multiplexed, RetryPolicy};
use pgbatch_testing::{Fault, drop_after_polls};

use crate::common::*;

async fn client(config: tokio_postgres::Config, connections: usize) -> Multiplexed {
    Multiplexed::builder(ConnectionManager::new(config)).connections(connections).build().await.expect("a client")
}

/// A batch that inserts account `id` and a note, and returns what the server computed
/// from `id`: a caller that got another caller's results would see another number.
fn own_batch(id: i64) -> (Batch, pgbatch::One<Value>) {
    let mut batch = Batch::new();
    batch.push(insert_account(id, &format!("{id}@example.com")));
    batch.push(insert_note(id, &format!("note of {id}")));
    let echo = batch.push(diesel::sql_query(format!("SELECT {id}::bigint * 7 AS value"))).label("echo").one::<Value>();
    (batch, echo)
}

/// The rows batch `id` wrote, account and note, read in one snapshot: a batch whose
/// outcome is unknown may commit on its orphaned backend between two reads.
async fn rows_of(h: &Harness, id: i64) -> i64 {
    h.count(&format!(
        "SELECT (SELECT count(*) FROM account WHERE id = {id}) + (SELECT count(*) FROM note WHERE account_id = {id})"
    ))
    .await
}

/// Runs callers `ids`, each on the client `client_for` picks for it, and checks that each
/// got its own batch's results.
async fn each_gets_its_own_results(ids: std::ops::Range<i64>, client_for: impl Fn(i64) -> Multiplexed) {
    let mut tasks = Vec::new();
    for id in ids {
        let client = client_for(id);
        tasks.push(tokio::spawn(async move {
            let (batch, echo) = own_batch(id);
            let committed = batch.run_multiplexed(&client).await.expect("commits");
            (id, committed.get(&echo).expect("its echo").value)
        }));
    }
    for task in tasks {
        let (id, echo) = task.await.unwrap();
        assert_eq!(echo, id * 7, "caller {id} received another caller's results");
    }
}

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    value: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_on_two_connections_each_get_their_own_results() {
    let h = Harness::new().await;
    let client = client(h.db.config().clone(), 2).await;
    each_gets_its_own_results(100..356, |_| client.clone()).await;
    assert_eq!(h.count("SELECT count(*) FROM account WHERE id >= 100").await, 256);
    assert_eq!(h.count("SELECT count(*) FROM note WHERE account_id >= 100").await, 256);
    assert_eq!(h.idle_in_transaction().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_fails_alone_among_concurrent_ones() {
    let h = Harness::new().await;
    let client = client(h.db.config().clone(), 1).await;
    let mut tasks = Vec::new();
    for id in 100..164 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Batch::new();
            batch.push(insert_account(id, &format!("{id}@example.com")));
            if id % 3 == 0 {
                // Duplicates account 1's email: a unique violation at statement 1.
                batch.push(insert_account(id + 1000, "first@example.com")).label("duplicate");
            } else if id % 3 == 1 {
                batch.guard_exists(account::table.find(-1).select(account::id)).label("missing");
            }
            (id, batch.run_multiplexed(&client).await)
        }));
    }
    let mut committed = BTreeSet::new();
    for task in tasks {
        let (id, result) = task.await.unwrap();
        match (id % 3, result) {
            (2, Ok(_)) => {
                committed.insert(id);
            }
            (0, Err(Error::Statement(failure))) => assert_eq!(failure.label(), Some("duplicate"), "{failure}"),
            (1, Err(Error::Statement(failure))) => assert_eq!(failure.label(), Some("missing"), "{failure}"),
            (_, other) => panic!("batch {id}: {other:?}"),
        }
    }
    let rows = h.value("SELECT string_agg(id::text, ',' ORDER BY id) FROM account WHERE id >= 100").await;
    let expected = committed.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    assert_eq!(rows, expected, "exactly the batches that committed left rows");
    assert_eq!(h.idle_in_transaction().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_set_by_one_batch_never_reaches_the_next() {
    let h = Harness::new().await;
    let client = client(h.db.config().clone(), 1).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Batch::new();
            // What earlier batches set in the session must be gone.
            let seen = batch
                .push(diesel::sql_query("SELECT coalesce(current_setting('app.tenant', true), '') AS value"))
                .one::<Text>();
            // A session-level setting (not LOCAL), made through a function call.
            batch.push(diesel::sql_query(format!("SELECT set_config('app.tenant', 'tenant {i}', false)")));
            let committed = batch.run_multiplexed(&client).await.expect("commits");
            committed.get(&seen).expect("a row").value
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), "", "a setting of an earlier batch reached a later one");
    }
}

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_types_are_looked_up_on_a_shared_connection() {
    let h = Harness::new().await;
    let client = client(h.db.config().clone(), 2).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Batch::new();
            let mood = if i % 2 == 0 { Mood::Happy } else { Mood::Curious };
            batch.push(diesel::insert_into(feeling::table).values((feeling::account_id.eq(1), feeling::mood.eq(mood))));
            batch.run_multiplexed(&client).await.map(drop)
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("commits");
    }
    assert_eq!(h.count("SELECT count(*) FROM feeling WHERE mood = 'happy'").await, 16);
    assert_eq!(h.count("SELECT count(*) FROM feeling WHERE mood = 'curious'").await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_stream_gives_every_batch_in_flight_an_honest_verdict() {
    let h = Harness::new().await;
    let proxy = h.db.proxy().await.unwrap().start().await.unwrap();
    let client = client(h.db.config_via(&proxy), 1).await;
    let (mut misreports, mut unknown, mut committed, mut not_committed) = (0, 0, 0, 0);
    for round in 0..6u64 {
        // Cut somewhere inside the stream of the next 64 batches.
        proxy.arm(Fault::CutAfterClientBytes(300 + round * 3_000));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let id = 1_000 + round as i64 * 100 + i;
            let client = client.clone();
            tasks.push(tokio::spawn(async move { (id, own_batch(id).0.run_multiplexed(&client).await) }));
        }
        for task in tasks {
            let (id, result) = task.await.unwrap();
            let rows = rows_of(&h, id).await;
            match result {
                Ok(_) if rows == 2 => committed += 1,
                Err(error) if !error.may_have_committed() && rows == 0 => not_committed += 1,
                Err(error) if error.may_have_committed() && (rows == 0 || rows == 2) => unknown += 1,
                other => {
                    eprintln!("batch {id}: {other:?} with {rows} rows");
                    misreports += 1;
                }
            }
        }
        proxy.disarm();
    }
    eprintln!(
        "multiplexed cut: committed={committed} not_committed={not_committed} unknown={unknown} misreports={misreports} cuts={}",
        proxy.cuts()
    );
    assert_eq!(misreports, 0);
    assert!(proxy.cuts() > 0, "the proxy cut the stream");
    assert!(not_committed + unknown > 0, "some batches were in flight when the stream was cut");
    // The lost connection was replaced: the client still commits.
    own_batch(5_000).0.run_multiplexed(&client).await.expect("a replaced connection commits");
    assert_eq!(h.db.transactions_left(Duration::from_secs(10)).await, 0, "no transaction left behind");
}

/// A connection cut just after the first of many pipelined batches was answered, the others
/// still running on the server: whoever uses that server session next (behind a pooler,
/// another client) reads only its own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cut_between_answers_the_next_user_of_the_server_session_reads_only_its_own() {
    let h = Harness::new().await;
    let proxy = h.db.proxy().await.unwrap().start().await.unwrap();
    let client = client(h.db.config_via(&proxy), 1).await;
    let slow_batch = |id: i64| {
        let (mut batch, _) = own_batch(id);
        batch.push(diesel::sql_query("SELECT pg_sleep(0.005)"));
        batch
    };
    slow_batch(8_000).run_multiplexed(&client).await.expect("commits");
    let before = proxy.server_bytes();
    slow_batch(8_001).run_multiplexed(&client).await.expect("commits");
    let one_answer = proxy.server_bytes() - before;
    let mut misreports = 0;
    for round in 0..4i64 {
        proxy.arm(Fault::CutAfterServerBytes(one_answer));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (client, id) = (client.clone(), 8_100 + round * 100 + i);
                tokio::spawn(async move { (id, slow_batch(id).run_multiplexed(&client).await) })
            })
            .collect();
        for task in tasks {
            let (id, result) = task.await.unwrap();
            let rows = rows_of(&h, id).await;
            match result {
                Ok(_) if rows == 2 => {}
                Err(error) if !error.may_have_committed() && rows == 0 => {}
                Err(error) if error.may_have_committed() => {}
                other => {
                    eprintln!("batch {id}: {other:?} with {rows} rows");
                    misreports += 1;
                }
            }
        }
        // Other sessions' queries (through a pooler, on its server connections): each must
        // read its own answer, not one the cut connection's batches left due.
        for _ in 0..32 {
            assert_eq!(h.count("SELECT 7").await, 7);
        }
        proxy.disarm();
    }
    assert_eq!(misreports, 0);
    assert!(proxy.cuts() > 0, "the proxy cut the stream");
    assert_eq!(h.db.transactions_left(Duration::from_secs(10)).await, 0, "no transaction left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_batches_cut_mid_stream_settle_their_outcome() {
    let h = Harness::new().await;
    pgbatch::idempotency::install(&h.pool, pgbatch::idempotency::DEFAULT_TABLE).await.unwrap();
    let proxy = h.db.proxy().await.unwrap().start().await.unwrap();
    let client = client(h.db.config_via(&proxy), 1).await;
    proxy.arm(Fault::CutAfterClientBytes(6_000));
    let mut tasks = Vec::new();
    for id in 2_000..2_064 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut batch, _) = own_batch(id);
            batch.idempotency_key(pgbatch::IdempotencyKey::new(format!("batch {id}")));
            (id, batch.run_multiplexed(&client).await)
        }));
    }
    let mut unknown = 0;
    for task in tasks {
        let (id, result) = task.await.unwrap();
        let rows = rows_of(&h, id).await;
        match result {
            Ok(_) | Err(Error::AlreadyCommitted(_)) => assert_eq!(rows, 2, "batch {id} committed"),
            Err(error) if error.may_have_committed() => unknown += 1,
            Err(error) => assert_eq!(rows, 0, "batch {id}: {error}"),
        }
    }
    assert_eq!(unknown, 0, "a keyed batch's outcome is settled");
    assert!(proxy.cuts() > 0, "the proxy cut the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_drop_their_futures_leave_the_others_and_the_data_whole() {
    let h = Harness::new().await;
    let client = client(h.db.config().clone(), 2).await;
    let mut tasks = Vec::new();
    for id in 3_000..3_128i64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (batch, echo) = own_batch(id);
            if id % 2 == 0 {
                // Dropped after a few polls: sent whole or not at all.
                let polls = (id % 7) as usize;
                drop_after_polls(batch.run_multiplexed(&client), polls).await;
                None
            } else {
                let committed = batch.run_multiplexed(&client).await.expect("commits");
                Some(committed.get(&echo).unwrap().value == id * 7)
            }
        }));
    }
    for task in tasks {
        assert_ne!(task.await.unwrap(), Some(false), "a caller received another caller's results");
    }
    let half = h
        .count(
            "SELECT count(*) FROM account a WHERE a.id >= 3000 AND \
             (SELECT count(*) FROM note n WHERE n.account_id = a.id) <> 1",
        )
        .await;
    assert_eq!(half, 0, "a dropped batch left half its writes");
    assert_eq!(h.count("SELECT count(*) FROM account WHERE id >= 3000 AND id % 2 = 1").await, 64);
    assert_eq!(h.db.transactions_left(Duration::from_secs(10)).await, 0, "no transaction left behind");
    own_batch(4_000).0.run_multiplexed(&client).await.expect("the client still commits");
}

/// A client of one connection that takes two batches at most, and waits 200 ms for a place.
async fn client_of_two_places(h: &Harness) -> Multiplexed {
    Multiplexed::builder(ConnectionManager::new(h.db.config().clone()))
        .connections(1)
        .in_flight_per_connection(2)
        .max_waiting(2)
        .admission_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

/// Callers whose batches insert accounts `ids` once they get advisory lock `lock` (which
/// the test holds, so that they wait on the server); returns once they were written.
async fn callers_behind_lock(
    client: &Multiplexed,
    lock: i64,
    ids: [i64; 2],
) -> Vec<tokio::task::JoinHandle<Result<(), Error>>> {
    let callers = ids
        .into_iter()
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut batch = Batch::new();
                batch.push(diesel::sql_query(format!("SELECT pg_advisory_xact_lock({lock})")));
                batch.push(insert_account(id, &format!("{id}@example.com")));
                batch.run_multiplexed(&client).await.map(drop)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    callers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_beyond_the_bound_wait_then_fail_with_nothing_sent() {
    let h = Harness::new().await;
    let client = client_of_two_places(&h).await;
    // Two batches wait on a lock the test holds, filling the client.
    let holder = h.db.connect().await.unwrap();
    holder.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(42)").await.unwrap();
    let blocked = callers_behind_lock(&client, 42, [6_000, 6_001]).await;
    let refused = own_batch(6_002).0.run_multiplexed(&client).await;
    assert!(
        matches!(refused, Err(Error::Pool(pgbatch::error::PoolError::TimedOut { .. }))),
        "a caller beyond the bound times out: {refused:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    for task in blocked {
        task.await.unwrap().expect("the waiting batches commit once the lock is free");
    }
    assert_eq!(h.count("SELECT count(*) FROM account WHERE id = 6002").await, 0, "nothing of the refused batch");
}

/// A caller that gives up on a batch already written does not free its place: the batch
/// still runs whole on the server, and counts against `max_waiting` until it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_holds_its_place_until_its_batch_is_answered() {
    let h = Harness::new().await;
    let client = client_of_two_places(&h).await;
    let holder = h.db.connect().await.unwrap();
    holder.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(43)").await.unwrap();
    let given_up = callers_behind_lock(&client, 43, [6_100, 6_101]).await;
    for task in &given_up {
        task.abort();
    }
    for task in given_up {
        assert!(task.await.unwrap_err().is_cancelled(), "the callers gave up");
    }
    let refused = own_batch(6_102).0.run_multiplexed(&client).await;
    assert!(
        matches!(refused, Err(Error::Pool(pgbatch::error::PoolError::TimedOut { .. }))),
        "the given-up batches still hold the bound: {refused:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    // Once they are answered, their places are free.
    let mut next = own_batch(6_103).0.run_multiplexed(&client).await;
    for _ in 0..20 {
        if next.is_ok() {
            break;
        }
        next = own_batch(6_103).0.run_multiplexed(&client).await;
    }
    next.expect("a place frees once the given-up batches are answered");
    // Both were written, unless the client keeps one batch in flight (behind a pooler):
    // then the second, given up before it was written, was never sent.
    let written = client.in_flight_per_connection().min(2) as i64;
    assert_eq!(
        h.count("SELECT count(*) FROM account WHERE id IN (6100, 6101)").await,
        written,
        "batches written before their callers gave up ran whole, the others not at all"
    );
    assert_eq!(h.count("SELECT count(*) FROM account WHERE id = 6102").await, 0, "nothing of the refused batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_needs_its_own_connection_is_refused() {
    let h = Harness::new().await;
    let client = client(h.db.config().clone(), 1).await;
    let (mut batch, _) = own_batch(7_000);
    batch.retry(RetryPolicy::default().cockroach_restart());
    let refused = batch.run_multiplexed(&client).await;
    assert!(matches!(refused, Err(Error::NotMultiplexable { .. })), "{refused:?}");
    assert_eq!(h.count("SELECT count(*) FROM account WHERE id = 7000").await, 0);
    // Its pool runs it.
    batch.run(client.pool()).await.expect("the client's pool runs it");
}

/// Behind a pooler that may hand a server connection on with answers still due (PgBouncer
/// before 1.21), a client keeps one batch in flight per connection. CI runs this directly
/// and through PgBouncer, so both branches are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_pooler_one_batch_is_in_flight_per_connection_unless_it_keeps_pipelines() {
    let h = Harness::new().await;
    // The process id a connection is given names a live backend only when nothing pools
    // connections in between (PgBouncer makes one up).
    let given = h.pool.get().await.unwrap().cancel_token().process_id();
    let behind_pooler = h.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {given}")).await == 0;
    assert_eq!(h.pool.get().await.unwrap().has_own_backend(), !behind_pooler);

    let by_default = client(h.db.config().clone(), 2).await;
    assert_eq!(by_default.in_flight_per_connection(), if behind_pooler { 1 } else { 32 });
    let told = Multiplexed::builder(ConnectionManager::new(h.db.config().clone()))
        .in_flight_per_connection(8)
        .pooler_keeps_pipelines(true)
        .build()
        .await
        .unwrap();
    assert_eq!(told.in_flight_per_connection(), 8);

    // Either way, every caller's batch commits with its own results.
    each_gets_its_own_results(7_100..7_164, |id| if id % 2 == 0 { by_default.clone() } else { told.clone() }).await;
    assert_eq!(h.count("SELECT count(*) FROM account WHERE id >= 7100").await, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_server_is_down_fails_to_build() {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(1).user("postgres").connect_timeout(Duration::from_secs(2));
    let built = Multiplexed::builder(ConnectionManager::new(config)).build().await;
    let error = built.expect_err("nothing listens on port 1");
    assert!(error.to_string().contains("127.0.0.1"), "the error names the server: {error}");
}

/// Runs `batches` callers' batches on `client` while `storm` strikes the client's backends
/// from outside; checks each batch's verdict against what the server holds.
async fn under_storm(h: &Harness, client: &Multiplexed, first_id: i64, batches: i64, storm: &str) -> StormCounts {
    let storm_client = h.db.connect().await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let striker = {
        let stop = stop.clone();
        let storm = storm.to_owned();
        tokio::spawn(async move {
            let mut strikes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = storm_client.batch_execute(&storm).await;
                strikes += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            strikes
        })
    };
    let mut tasks = Vec::new();
    for id in first_id..first_id + batches {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (batch, echo) = own_batch(id);
            let result = batch.run_multiplexed(&client).await;
            let crossed = result.as_ref().is_ok_and(|committed| committed.get(&echo).unwrap().value != id * 7);
            (id, result.map(drop), crossed)
        }));
    }
    let mut counts = StormCounts::default();
    for task in tasks {
        let (id, result, crossed) = task.await.unwrap();
        counts.crossed += usize::from(crossed);
        let rows = rows_of(h, id).await;
        match (&result, rows) {
            (_, 1) => counts.partial_states += 1,
            (Ok(()), 2) => counts.committed += 1,
            (Err(error), 0) if !error.may_have_committed() => counts.failed += 1,
            (Err(error), _) if error.may_have_committed() => counts.unknown += 1,
            _ => {
                eprintln!("batch {id}: {result:?} with {rows} rows");
                counts.misreports += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    counts.strikes = striker.await.unwrap();
    counts.leaked_transactions = h.db.transactions_left(Duration::from_secs(10)).await;
    counts
}

#[derive(Debug, Default)]
struct StormCounts {
    committed: usize,
    failed: usize,
    unknown: usize,
    misreports: usize,
    partial_states: usize,
    crossed: usize,
    strikes: usize,
    leaked_transactions: i64,
}

impl StormCounts {
    fn assert_clean(&self, what: &str) {
        eprintln!("multiplexed {what}: {self:?}");
        assert_eq!(
            (self.partial_states, self.misreports, self.crossed, self.leaked_transactions),
            (0, 0, 0, 0),
            "{what}: {self:?}"
        );
        assert!(self.committed > 0, "{what}: batches still commit between strikes: {self:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_from_outside_fail_only_what_they_hit() {
    let h = Harness::new().await;
    let mut config = h.db.config().clone();
    config.application_name("multiplexed-storm");
    let client = client(config, 2).await;
    let storm = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'multiplexed-storm'";
    let counts = under_storm(&h, &client, 10_000, 512, storm).await;
    counts.assert_clean("cancel storm");
    assert!(counts.strikes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_killed_mid_flight_give_honest_verdicts_and_are_replaced() {
    let h = Harness::new().await;
    let mut config = h.db.config().clone();
    config.application_name("multiplexed-kill");
    let client = client(config, 2).await;
    let storm = "SELECT pg_sleep(0.02); \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'multiplexed-kill'";
    let counts = under_storm(&h, &client, 20_000, 512, storm).await;
    counts.assert_clean("kill storm");
    assert!(counts.failed + counts.unknown > 0, "the kills hit batches in flight: {counts:?}");
    own_batch(30_000).0.run_multiplexed(&client).await.expect("the client commits after the kills");
}
