//! The intent protocol's building blocks: record, complete, cancel, sweep, purge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use pgbatch::intent::{Decision, IntentError, Intents, SweepOptions};
use pgbatch::{Batch, Error, Fragment};
use uuid::Uuid;

use crate::common::Harness;

/// The database change an effect implies: one ledger row per key.
fn ledger_row(key: &str, amount: i64) -> Fragment {
    let mut fragment = Fragment::new();
    fragment
        .push(
            diesel::sql_query("INSERT INTO ledger (key, amount) VALUES ($1, $2)")
                .bind::<Text, _>(key.to_owned())
                .bind::<BigInt, _>(amount),
        )
        .label("ledger row");
    fragment
}

async fn record(h: &Harness, kind: &str, key: &str) -> Result<Uuid, Error<IntentError>> {
    let mut batch = Batch::<IntentError>::default();
    let (fragment, recorded) = h.intents.record(kind, key, r#"{"bytes": 10}"#);
    batch.append(fragment);
    let committed = batch.run(&h.pool).await?;
    Ok(committed.get(&recorded).expect("the new intent's id").id)
}

async fn complete(h: &Harness, key: &str, amount: i64) -> Result<(), Error<IntentError>> {
    let mut batch = Batch::<IntentError>::default();
    batch.append(h.intents.complete("upload", key));
    batch.append(ledger_row(key, amount));
    batch.run(&h.pool).await.map(drop)
}

fn domain(error: Error<IntentError>) -> IntentError {
    match error {
        Error::Domain { error, .. } => error,
        other => panic!("a typed intent error, not: {other}"),
    }
}

#[tokio::test]
async fn completing_twice_applies_the_changes_once_and_says_already_completed() {
    let h = Harness::new().await;
    record(&h, "upload", "a").await.unwrap();
    complete(&h, "a", 10).await.expect("the first completion");
    let second = domain(complete(&h, "a", 10).await.unwrap_err());
    assert_eq!(second, IntentError::AlreadyCompleted { kind: "upload".into(), key: "a".into() });
    assert_eq!(h.count("SELECT count(*) FROM ledger").await, 1, "the ledger row was written once");
    assert_eq!(h.state("a").await, "done");
}

#[tokio::test]
async fn a_cancelled_or_unknown_intent_cannot_complete_and_writes_nothing() {
    let h = Harness::new().await;
    record(&h, "upload", "gone").await.unwrap();
    let mut cancel = Batch::<IntentError>::default();
    cancel.append(h.intents.cancel("upload", "gone"));
    cancel.run(&h.pool).await.expect("cancelling a pending intent");
    let cancelled = domain(complete(&h, "gone", 5).await.unwrap_err());
    assert_eq!(cancelled, IntentError::Cancelled { kind: "upload".into(), key: "gone".into() });
    let unknown = domain(complete(&h, "never", 5).await.unwrap_err());
    assert_eq!(unknown, IntentError::NotFound { kind: "upload".into(), key: "never".into() });
    assert_eq!(h.count("SELECT count(*) FROM ledger").await, 0);
    assert!(unknown.to_string().contains("upload/never"), "{unknown}");
}

#[tokio::test]
async fn recording_a_key_twice_is_a_duplicate_and_bad_json_is_refused_by_the_server() {
    let h = Harness::new().await;
    let first = record(&h, "upload", "k").await.unwrap();
    let again = domain(record(&h, "upload", "k").await.unwrap_err());
    assert_eq!(again, IntentError::Duplicate { kind: "upload".into(), key: "k".into() });
    let other_kind = record(&h, "email", "k").await.expect("a key is unique within its kind only");
    assert_ne!(first, other_kind);

    let mut batch = Batch::<IntentError>::default();
    let (fragment, _) = h.intents.record("upload", "bad", "{not json");
    batch.append(fragment);
    let invalid = domain(batch.run(&h.pool).await.unwrap_err());
    assert_eq!(invalid, IntentError::InvalidPayload);
    assert_eq!(h.count("SELECT count(*) FROM pgbatch_intent").await, 2);
}

#[tokio::test]
async fn recording_joins_the_requests_other_statements_atomically() {
    let h = Harness::new().await;
    let mut batch = Batch::<IntentError>::default();
    let (fragment, _) = h.intents.record("upload", "with-row", "{}");
    batch.append(fragment);
    batch.append(ledger_row("with-row", 1));
    batch.append(ledger_row("with-row", 2)); // the ledger's key is unique: this fails
    let error = batch.run(&h.pool).await.unwrap_err();
    assert_eq!(error.statement_failure().map(|f| f.index()), Some(2), "{error}");
    assert_eq!(h.count("SELECT count(*) FROM pgbatch_intent").await, 0, "the intent went with the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeps_at_once_handle_every_intent_exactly_once() {
    let h = Harness::new().await;
    const INTENTS: usize = 60;
    for i in 0..INTENTS {
        record(&h, "upload", &format!("stale-{i}")).await.unwrap();
    }
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sweep = |name: &'static str| {
        let (intents, pool, calls) = (h.intents.clone(), h.pool.clone(), calls.clone());
        tokio::spawn(async move {
            let options = SweepOptions::default().older_than(Duration::ZERO).limit(7);
            let mut total = pgbatch::intent::SweepReport::default();
            // Each sweep runs until it finds nothing left, as a recovery loop would.
            loop {
                let report = intents
                    .sweep(&pool, options, |intent| {
                        *calls.lock().unwrap().entry(intent.key.clone()).or_default() += 1;
                        async move {
                            // Deciding takes a while: the other sweep runs meanwhile.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            Decision::RollForward(ledger_row(&intent.key, i64::from(intent.attempts)))
                        }
                    })
                    .await
                    .unwrap_or_else(|e| panic!("sweep {name}: {e}"));
                if report.claimed == 0 {
                    return total;
                }
                total.claimed += report.claimed;
                total.rolled_forward += report.rolled_forward;
                total.lost += report.lost;
                total.failed += report.failed;
            }
        })
    };
    let (a, b) = tokio::join!(sweep("a"), sweep("b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), INTENTS, "every intent was handed over");
    assert!(calls.values().all(|&n| n == 1), "no intent was handed over twice: {calls:?}");
    assert_eq!(a.claimed + b.claimed, INTENTS);
    assert_eq!(a.rolled_forward + b.rolled_forward, INTENTS, "a={a:?} b={b:?}");
    assert!(a.claimed > 0 && b.claimed > 0, "both sweeps took part: a={a:?} b={b:?}");
    assert_eq!(h.count("SELECT count(*) FROM ledger").await, INTENTS as i64);
    assert_eq!(
        h.count("SELECT count(*) FROM pgbatch_intent WHERE state = 'done' AND attempts = 1").await,
        INTENTS as i64
    );
}

/// Three sweepers loop over the same intents while every decision takes longer than
/// lease / limit (with short leases, longer than the lease itself). At every hand-out the
/// intent's claim must be live, and no intent may ever be with two deciders at once.
async fn three_sweepers(options: SweepOptions, intents: usize, decision: Duration) {
    let h = Harness::new().await;
    for i in 0..intents {
        record(&h, "upload", &format!("stale-{i}")).await.unwrap();
    }
    #[derive(Default)]
    struct Watch {
        deciding: std::collections::HashSet<String>,
        handouts: usize,
        without_live_claim: usize,
        at_once: usize,
        decided: HashMap<String, usize>,
    }
    let watch: Arc<Mutex<Watch>> = Arc::default();
    // The sweepers share a pool big enough that renewals never queue for a connection, and
    // the check at each hand-out has connections of its own.
    let pool = h.db.pool(8).await.expect("the sweepers' pool");
    let inspect = h.db.pool(3).await.expect("an inspection pool");
    let sweeper = |name: usize| {
        let (intents, pool, watch, inspect) = (h.intents.clone(), pool.clone(), watch.clone(), inspect.clone());
        tokio::spawn(async move {
            loop {
                let report = intents
                    .sweep(&pool, options, |intent| {
                        let (watch, inspect) = (watch.clone(), inspect.clone());
                        async move {
                            let mut live = Batch::new();
                            let claims = live
                                .push(diesel::select(diesel::dsl::sql::<BigInt>(&format!(
                                    "(SELECT count(*) FROM pgbatch_intent WHERE id = '{}' AND claimed_until > now())",
                                    intent.id
                                ))))
                                .one::<i64>();
                            let live = live.run(&inspect).await.unwrap().get(&claims).unwrap() == 1;
                            {
                                let mut watch = watch.lock().unwrap();
                                watch.handouts += 1;
                                watch.without_live_claim += usize::from(!live);
                                if !watch.deciding.insert(intent.key.clone()) {
                                    watch.at_once += 1;
                                }
                            }
                            // The decision's side effect takes a while.
                            tokio::time::sleep(decision).await;
                            let mut watch = watch.lock().unwrap();
                            watch.deciding.remove(&intent.key);
                            *watch.decided.entry(intent.key.clone()).or_default() += 1;
                            Decision::RollForward(ledger_row(&intent.key, 1))
                        }
                    })
                    .await
                    .unwrap_or_else(|e| panic!("sweeper {name}: {e}"));
                if report.claimed == 0 {
                    return;
                }
            }
        })
    };
    let (a, b, c) = tokio::join!(sweeper(0), sweeper(1), sweeper(2));
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let (handouts, without_live_claim, at_once, decided) = {
        let watch = watch.lock().unwrap();
        (watch.handouts, watch.without_live_claim, watch.at_once, watch.decided.clone())
    };
    println!(
        "sweepers: intents={intents} lease_ms={} limit={} decision_ms={} handouts={handouts} \
         without_live_claim={without_live_claim} at_once={at_once}",
        options.lease.as_millis(),
        options.limit,
        decision.as_millis(),
    );
    assert_eq!(without_live_claim, 0, "an intent was handed out without a live claim");
    assert_eq!(at_once, 0, "an intent was with two deciders at once");
    assert!(decided.len() == intents && decided.values().all(|&n| n == 1), "each decided once: {decided:?}");
    assert_eq!(h.count("SELECT count(*) FROM ledger").await, intents as i64, "every intent applied once");
    assert_eq!(h.count("SELECT count(*) FROM pgbatch_intent WHERE state = 'done'").await, intents as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sweepers_with_the_default_options_never_decide_without_a_live_claim() {
    three_sweepers(SweepOptions::default().older_than(Duration::ZERO), 9, Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sweepers_with_short_leases_never_decide_without_a_live_claim() {
    // Decisions take longer than the lease itself: only the renewals keep the claims live.
    let options = SweepOptions::default().older_than(Duration::ZERO).lease(Duration::from_millis(300)).limit(5);
    three_sweepers(options, 30, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_sweep_rolls_forward_compensates_and_leaves_for_later_as_told() {
    let h = Harness::new().await;
    for key in ["forward", "back", "later"] {
        record(&h, "upload", key).await.unwrap();
    }
    let options = SweepOptions::default().older_than(Duration::ZERO);
    let decide = |intent: pgbatch::intent::Intent| async move {
        match intent.key.as_str() {
            "forward" => Decision::RollForward(ledger_row("forward", 1)),
            "back" => Decision::Compensate(Fragment::new()),
            _ => Decision::Later,
        }
    };
    let report = h.intents.sweep(&h.pool, options, decide).await.unwrap();
    assert_eq!((report.claimed, report.rolled_forward, report.compensated, report.later), (3, 1, 1, 1), "{report}");
    assert_eq!(h.state("forward").await, "done");
    assert_eq!(h.state("back").await, "cancelled");
    assert_eq!(h.state("later").await, "pending");

    // What was left for later is claimed again at once, its attempts counted.
    let report = h.intents.sweep(&h.pool, options, decide).await.unwrap();
    assert_eq!((report.claimed, report.later), (1, 1), "{report}");
    assert_eq!(h.count("SELECT attempts::bigint FROM pgbatch_intent WHERE key = 'later'").await, 2);
    assert_eq!(h.count("SELECT count(*) FROM ledger").await, 1);
}

#[tokio::test]
async fn a_decision_whose_statements_fail_applies_nothing_and_is_retried_later() {
    let h = Harness::new().await;
    record(&h, "upload", "clash").await.unwrap();
    h.execute("INSERT INTO ledger (key, amount) VALUES ('clash', 1)").await;
    let options = SweepOptions::default().older_than(Duration::ZERO);
    let report =
        h.intents.sweep(&h.pool, options, |_| async { Decision::RollForward(ledger_row("clash", 2)) }).await.unwrap();
    assert_eq!((report.claimed, report.failed), (1, 1), "{report}");
    assert_eq!(h.state("clash").await, "pending", "the intent is not completed without its rows");
    let report = h.intents.sweep(&h.pool, options, |_| async { Decision::Compensate(Fragment::new()) }).await.unwrap();
    assert_eq!(report.compensated, 1, "the claim was let go at once: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_held_for_as_long_as_its_decision_takes() {
    let h = Harness::new().await;
    record(&h, "upload", "slow").await.unwrap();
    // A lease long enough that a renewal delayed by a loaded machine still lands in time.
    let short = SweepOptions::default().older_than(Duration::ZERO).lease(Duration::from_millis(600));
    let (intents, pool) = (h.intents.clone(), h.pool.clone());
    let report = h
        .intents
        .sweep(&h.pool, short, move |_| {
            let (intents, pool) = (intents.clone(), pool.clone());
            async move {
                // Three leases long: the sweep renews the claim meanwhile, so another sweep
                // finds nothing to take over.
                tokio::time::sleep(Duration::from_millis(1800)).await;
                let other = intents.sweep(&pool, short, |_| async { panic!("taken over") }).await.unwrap();
                assert_eq!(other.claimed, 0, "the claim was still held: {other}");
                Decision::RollForward(ledger_row("first", 1))
            }
        })
        .await
        .unwrap();
    assert_eq!((report.claimed, report.rolled_forward), (1, 1), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_whose_claim_was_taken_over_while_deciding_applies_nothing() {
    let h = Harness::new().await;
    record(&h, "upload", "slow").await.unwrap();
    let short = SweepOptions::default().older_than(Duration::ZERO).lease(Duration::from_millis(60));
    let pool = h.pool.clone();
    let report = h
        .intents
        .sweep(&h.pool, short, move |intent| {
            let pool = pool.clone();
            async move {
                // Another sweep takes the intent over, as it could after the database was
                // out of this sweep's reach for longer than the lease.
                let mut steal = Batch::new();
                steal.push(diesel::sql_query(format!(
                    "UPDATE pgbatch_intent SET claim = gen_random_uuid() WHERE id = '{}'",
                    intent.id
                )));
                steal.run(&pool).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                Decision::RollForward(ledger_row("first", 1))
            }
        })
        .await
        .unwrap();
    assert_eq!((report.claimed, report.lost), (1, 1), "{report}");
    assert_eq!(
        h.count("SELECT count(*) FROM ledger WHERE key = 'first'").await,
        0,
        "the lost decision applied nothing"
    );
}

#[tokio::test]
async fn a_sweep_leaves_young_intents_to_their_requests() {
    let h = Harness::new().await;
    record(&h, "upload", "young").await.unwrap();
    let options = SweepOptions::default().older_than(Duration::from_secs(3600));
    let report =
        h.intents.sweep(&h.pool, options, |_| async { panic!("a young intent was handed over") }).await.unwrap();
    assert_eq!(report.claimed, 0);
}

#[tokio::test]
async fn purging_removes_finished_intents_only() {
    let h = Harness::new().await;
    for key in ["done", "cancelled", "pending"] {
        record(&h, "upload", key).await.unwrap();
    }
    complete(&h, "done", 1).await.unwrap();
    let mut cancel = Batch::<IntentError>::default();
    cancel.append(h.intents.cancel("upload", "cancelled"));
    cancel.run(&h.pool).await.unwrap();
    assert_eq!(h.intents.purge_older_than(&h.pool, Duration::from_secs(3600)).await.unwrap(), 0, "nothing that old");
    assert_eq!(h.intents.purge_older_than(&h.pool, Duration::ZERO).await.unwrap(), 2);
    assert_eq!(h.state("pending").await, "pending");
    assert_eq!(h.count("SELECT count(*) FROM pgbatch_intent").await, 1);
}

#[tokio::test]
async fn intents_live_in_a_table_of_the_callers_choosing() {
    let h = Harness::new().await;
    h.execute("CREATE SCHEMA ops").await;
    let intents = Intents::in_table("ops.effects").unwrap();
    intents.install(&h.pool).await.unwrap();
    intents.install(&h.pool).await.expect("installing twice is harmless");
    let mut batch = Batch::<IntentError>::default();
    batch.append(intents.record("upload", "x", "{}").0);
    batch.run(&h.pool).await.unwrap();
    assert_eq!(h.count("SELECT count(*) FROM ops.effects").await, 1);
    assert!(
        intents.create_table_sql().contains("ops.effects")
            || intents.create_table_sql().contains("\"ops\".\"effects\"")
    );
    assert!(Intents::in_table("bad name; DROP TABLE x").is_err(), "a name that is not an identifier is refused");
}
