//! Cancel storms and timeout storms: batches loop on a bare connection, on a pool and on a
//! multiplexed client while another session cancels their backends over and over, or while
//! every statement runs under `statement_timeout = 1ms`. Whatever step a cancel lands on
//! (`BEGIN`, a session reset, a closing `ROLLBACK` included), a batch must be all there or
//! not there, its verdict must say which, and every connection must come back outside any
//! transaction. Where the storm's batches set session marks, each batch also reads the mark
//! it starts with: it must never see another holder's (`session_leaks`), and never fail on
//! another holder's transaction state (`foreign_failures`).
//!
//! Each storm lasts 5 s, 20 s with `PGBATCH_TEST_SIZE=full` (what CI runs), or what
//! `PGBATCH_STORM_SECONDS` says.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use pgbatch::{Batch, Connection, Multiplexed, One};

use crate::support::*;

/// A storm batch that reads the session mark it starts with, creates a project, and, when
/// `mark` is given, leaves a mark of its own in the session (`set_config(.., false)`, which
/// outlives the transaction).
fn marked_project(tag: &str, silo: i32, mark: Option<&str>) -> (Batch, One<String>) {
    let mut batch = Batch::new();
    let seen =
        batch.push(diesel::select(diesel::dsl::sql::<Text>("coalesce(current_setting('app.mark', true), '')"))).one();
    push_create_project(&mut batch, tag, silo);
    if let Some(mark) = mark {
        batch.push(diesel::sql_query(format!("SELECT set_config('app.mark', '{mark}', false)")));
    }
    (batch, seen)
}

/// What the storm's batches saw of one another's sessions.
#[derive(Debug, Default)]
struct Sessions {
    /// Batches that started with a mark another holder left.
    leaks: Vec<String>,
    /// Batches that failed on a transaction another holder's batch left aborted (`25P02`).
    foreign_failures: Vec<String>,
}

impl Sessions {
    /// Takes in one batch's result: `own` says whether a mark it saw is its holder's own.
    fn see(
        &mut self,
        tag: &str,
        result: &Result<pgbatch::Committed, pgbatch::Error>,
        seen: &One<String>,
        own: impl Fn(&str) -> bool,
    ) {
        match result {
            Ok(committed) => {
                let mark = committed.get(seen).expect("the mark");
                if !mark.is_empty() && !own(&mark) {
                    self.leaks.push(format!("{tag} started with {mark:?}"));
                }
            }
            Err(error) if error.to_string().contains("25P02") => self.foreign_failures.push(format!("{tag}: {error}")),
            Err(_) => {}
        }
    }

    fn report_and_assert(&self, name: &str) {
        let _ = writeln!(
            std::io::stderr(),
            "{name}: session_leaks={} foreign_failures={}",
            self.leaks.len(),
            self.foreign_failures.len()
        );
        assert!(self.leaks.is_empty(), "{name}: {:?}", &self.leaks[..self.leaks.len().min(5)]);
        assert!(
            self.foreign_failures.is_empty(),
            "{name}: {:?}",
            &self.foreign_failures[..self.foreign_failures.len().min(5)]
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storm {
    /// Another session loops `pg_cancel_backend` on the batches' backends.
    Cancel,
    /// Every statement runs under `statement_timeout = 1ms`.
    Timeout,
}

fn storm_length() -> Duration {
    let seconds = pgbatch_testing::TestSize::from_env().pick("PGBATCH_STORM_SECONDS", 5, 20);
    Duration::from_secs(seconds)
}

type Runs = Arc<Mutex<Vec<(String, Verdict)>>>;

async fn storm(kind: Storm) {
    let faults = Faults::new().await;
    let name = format!("pgbatch-storm-{kind:?}").to_lowercase();
    let options = (kind == Storm::Timeout).then_some("-c statement_timeout=1ms");
    let pool = faults.pool(&name, options, 2).await;
    let deadline = Instant::now() + storm_length();
    let runs: Runs = Arc::default();
    let unclean: Arc<Mutex<Vec<String>>> = Arc::default();

    let mut loopers = Vec::new();
    let config = faults.config(&name, options);
    {
        let (runs, unclean) = (Arc::clone(&runs), Arc::clone(&unclean));
        loopers.push(tokio::spawn(async move {
            let mut connection = Connection::connect_with(&config).await.expect("a connection");
            for i in 0.. {
                if Instant::now() > deadline {
                    break;
                }
                let tag = format!("bare-{i}");
                let result = create_project(&tag, 1 + i % 2).run(&mut connection).await;
                runs.lock().unwrap().push((tag, Verdict::of(&result)));
                // Every batch leaves its connection idle, whatever a cancel hit.
                if let Err(error) = connection.check() {
                    unclean
                        .lock()
                        .unwrap()
                        .push(format!("{error} after {:?}: {connection:?}", runs.lock().unwrap().last()));
                    connection = Connection::connect_with(&config).await.expect("a connection");
                }
            }
        }));
    }
    for looper in 0..2 {
        let (runs, pool) = (Arc::clone(&runs), pool.clone());
        loopers.push(tokio::spawn(async move {
            for i in 0.. {
                if Instant::now() > deadline {
                    break;
                }
                let tag = format!("pool-{looper}-{i}");
                let result = create_project(&tag, 1 + i % 2).run(&pool).await;
                runs.lock().unwrap().push((tag, Verdict::of(&result)));
            }
        }));
    }
    if kind == Storm::Cancel {
        let cancel = format!("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'");
        let mut jitter = 0u64;
        while Instant::now() < deadline {
            faults.client.simple_query(&cancel).await.expect("the cancel query");
            jitter = (jitter * 7 + 3) % 1000;
            tokio::time::sleep(Duration::from_micros(jitter)).await;
        }
    }
    for looper in loopers {
        looper.await.expect("a looper");
    }
    let runs = runs.lock().unwrap().clone();
    let tally = Tally::check(&faults, &runs).await;
    let leaked = faults.leaked_transactions(&name).await;
    tally.report(&format!("storm-{name}"), leaked);

    assert!(tally.batches >= 1000, "a storm runs thousands of batches: {tally:?}");
    assert!(tally.not_committed > 0, "the storm reached the batches: {tally:?}");
    assert_eq!(tally.partial_states, 0, "{tally:?}");
    assert_eq!(tally.misreports, 0, "{tally:?}");
    assert_eq!(leaked, 0, "no backend may be left inside a transaction");
    assert_eq!(*unclean.lock().unwrap(), Vec::<String>::new(), "every batch leaves its connection idle");
    // The pool still works once the storm is over.
    let result = create_project("after", 1).run(&pool).await;
    assert!(result.is_ok() || kind == Storm::Timeout, "{result:?}");
}

/// Batches loop on three bare connections while another task sends cancel requests with
/// their [`CancelToken`](pgbatch::CancelToken)s, one after another, as fast as the server
/// (or PgBouncer) acknowledges them. CI runs it directly and through PgBouncer 1.18 in
/// transaction mode, where a request that is not waited for is dropped unforwarded, and an
/// early close trips a PgBouncer bug that ends PgBouncer itself.
async fn token_cancel_storm() {
    let faults = Faults::new().await;
    let name = "pgbatch-storm-token";
    let config = faults.config(name, None);
    let deadline = Instant::now() + storm_length();
    let runs: Runs = Arc::default();
    let sessions: Arc<Mutex<Sessions>> = Arc::default();
    let tokens: Arc<Mutex<Vec<pgbatch::CancelToken>>> = Arc::default();
    let mut loopers = Vec::new();
    for looper in 0..3 {
        let (runs, sessions, tokens, config) =
            (Arc::clone(&runs), Arc::clone(&sessions), Arc::clone(&tokens), config.clone());
        loopers.push(tokio::spawn(async move {
            let connect = async || {
                let connection = Connection::connect_with(&config).await.expect("a connection");
                tokens.lock().unwrap().push(connection.cancel_token());
                connection
            };
            let mut connection = connect().await;
            for i in 0.. {
                if Instant::now() > deadline {
                    break;
                }
                let tag = format!("token-{looper}-{i}");
                // Every fourth batch leaves a session mark: its holder (this looper's
                // connection) keeps it, directly connected; nobody else may see it, and
                // behind a pooler, where every unit is reset, not even its holder.
                let mark = (i % 4 == 0).then(|| format!("{looper}:{i}"));
                let (batch, seen) = marked_project(&tag, 1 + i % 2, mark.as_deref());
                let result = batch.run(&mut connection).await;
                let own_session = connection.has_own_backend();
                sessions
                    .lock()
                    .unwrap()
                    .see(&tag, &result, &seen, |mark| own_session && mark.starts_with(&format!("{looper}:")));
                runs.lock().unwrap().push((tag, Verdict::of(&result)));
                if connection.check().is_err() {
                    connection = connect().await;
                }
            }
        }));
    }
    let (mut sent, mut refused) = (0usize, Vec::new());
    while Instant::now() < deadline {
        let batch_of_tokens = tokens.lock().unwrap().clone();
        for token in batch_of_tokens {
            match token.cancel_query().await {
                Ok(()) => sent += 1,
                Err(error) => refused.push(error.to_string()),
            }
        }
    }
    for looper in loopers {
        looper.await.expect("a looper");
    }
    let runs = runs.lock().unwrap().clone();
    let cancelled =
        runs.iter().filter(|(_, verdict)| matches!(verdict, Verdict::NotCommitted(e) if e.contains("57014"))).count();
    let tally = Tally::check(&faults, &runs).await;
    let leaked = faults.leaked_transactions(name).await;
    tally.report("storm-token-cancel", leaked);
    println!("storm-token-cancel: cancels_sent={sent} cancels_refused={} batches_cancelled={cancelled}", refused.len());
    sessions.lock().unwrap().report_and_assert("storm-token-cancel");
    assert!(tally.batches >= 1000, "a storm runs thousands of batches: {tally:?}");
    assert!(refused.is_empty(), "every cancel request was acknowledged: {refused:?}");
    assert!(cancelled > 0, "the cancels reached the server: {tally:?}");
    assert_eq!(tally.partial_states, 0, "{tally:?}");
    assert_eq!(tally.misreports, 0, "{tally:?}");
    assert_eq!(leaked, 0, "no backend may be left inside a transaction");
    // Whatever is in between (PgBouncer) is still up, and a new connection works.
    let mut connection = Connection::connect_with(&config).await.expect("a connection after the storm");
    create_project("after-token-storm", 1).run(&mut connection).await.expect("a batch after the storm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_storm_sent_with_cancel_tokens_never_leaves_half_a_batch() {
    token_cancel_storm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_storm_never_leaves_half_a_batch() {
    storm(Storm::Cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_storm_never_leaves_half_a_batch() {
    storm(Storm::Timeout).await;
}

/// Callers loop their batches on a multiplexed client of two connections (each batch a
/// holder of its own, written behind the others) while another session cancels the
/// client's backends over and over; every fourth batch leaves a session mark, and one in
/// eight fails on purpose, so that cancels also land on the resets and closing `ROLLBACK`s
/// between batches. No batch may see any mark, nor fail on another batch's aborted
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_storm_on_a_multiplexed_client_never_lets_one_batch_see_anothers_session() {
    let faults = Faults::new().await;
    let name = "pgbatch-storm-multiplexed";
    let manager = pgbatch::ConnectionManager::new(faults.config(name, None));
    let client = Multiplexed::builder(manager).connections(2).build().await.expect("a multiplexed client");
    let deadline = Instant::now() + storm_length();
    let runs: Runs = Arc::default();
    let sessions: Arc<Mutex<Sessions>> = Arc::default();
    let mut callers = Vec::new();
    for caller in 0..16 {
        let (runs, sessions, client) = (Arc::clone(&runs), Arc::clone(&sessions), client.clone());
        callers.push(tokio::spawn(async move {
            for i in 0.. {
                if Instant::now() > deadline {
                    break;
                }
                let tag = format!("multiplexed-{caller}-{i}");
                let mark = (i % 4 == 0).then(|| tag.clone());
                let (mut batch, seen) = marked_project(&tag, 1 + i % 2, mark.as_deref());
                if i % 8 == 3 {
                    batch.push(diesel::sql_query("SELECT 1 / 0")).label("fails on purpose");
                }
                let result = batch.run_multiplexed(&client).await;
                // Each multiplexed batch is a holder of its own: every mark is another's.
                sessions.lock().unwrap().see(&tag, &result, &seen, |_| false);
                let verdict = match &result {
                    // A batch that fails on purpose commits nothing.
                    Err(error) if error.to_string().contains("fails on purpose") => {
                        Verdict::NotCommitted(error.to_string())
                    }
                    _ => Verdict::of(&result),
                };
                runs.lock().unwrap().push((tag, verdict));
            }
        }));
    }
    let cancel = format!("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'");
    let mut jitter = 0u64;
    while Instant::now() < deadline {
        faults.client.simple_query(&cancel).await.expect("the cancel query");
        jitter = (jitter * 7 + 3) % 1000;
        tokio::time::sleep(Duration::from_micros(jitter)).await;
    }
    for caller in callers {
        caller.await.expect("a caller");
    }
    let runs = runs.lock().unwrap().clone();
    let tally = Tally::check(&faults, &runs).await;
    let leaked = faults.leaked_transactions(name).await;
    tally.report("storm-multiplexed-cancel", leaked);
    sessions.lock().unwrap().report_and_assert("storm-multiplexed-cancel");
    assert!(tally.batches >= 1000, "a storm runs thousands of batches: {tally:?}");
    assert!(tally.not_committed > 0, "the storm reached the batches: {tally:?}");
    assert_eq!(tally.partial_states, 0, "{tally:?}");
    assert_eq!(tally.misreports, 0, "{tally:?}");
    assert_eq!(leaked, 0, "no backend may be left inside a transaction");
}
