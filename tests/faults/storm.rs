//! Cancel storms and timeout storms: batches loop on a bare connection and on a pool while
//! another session cancels their backends over and over, or while every statement runs
//! under `statement_timeout = 1ms`. Whatever step a cancel lands on (`BEGIN` included), a
//! batch must be all there or not there, its verdict must say which, and every connection
//! must come back outside any transaction.
//!
//! `PGBATCH_STORM_SECONDS` sets each storm's length (20 s by default).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgbatch::Connection;

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storm {
    /// Another session loops `pg_cancel_backend` on the batches' backends.
    Cancel,
    /// Every statement runs under `statement_timeout = 1ms`.
    Timeout,
}

fn storm_length() -> Duration {
    let seconds = std::env::var("PGBATCH_STORM_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
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
    let tokens: Arc<Mutex<Vec<pgbatch::CancelToken>>> = Arc::default();
    let mut loopers = Vec::new();
    for looper in 0..3 {
        let (runs, tokens, config) = (Arc::clone(&runs), Arc::clone(&tokens), config.clone());
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
                let result = create_project(&tag, 1 + i % 2).run(&mut connection).await;
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
