//! Opening connections: bounded by the connect timeout whatever the server does, and a
//! pool that cannot open one says why.

use std::time::{Duration, Instant};

use pgbatch::error::PoolError;
use pgbatch::{Batch, ConnectError, Connection, Error};

use crate::common::*;

#[tokio::test]
async fn a_server_that_accepts_but_never_answers_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=1");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), Connection::connect(&url)).await;
    let err = result.expect("bounded by connect_timeout").expect_err("no answer, no connection");
    assert!(matches!(err, ConnectError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    accepting.abort();
}

/// A server that accepts TCP and never answers; the listener task holds the sockets.
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    (port, accepting)
}

/// libpq waits forever for a server that accepts and never answers when no
/// `connect_timeout` is set; pgbatch gives up after its default of 10 s.
#[tokio::test]
async fn without_a_connect_timeout_a_server_that_never_answers_fails_within_the_default() {
    let (port, accepting) = silent_server().await;
    let started = Instant::now();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let result = tokio::time::timeout(Duration::from_secs(30), Connection::connect(&url)).await;
    let err = result.expect("bounded by the default connect timeout").expect_err("no answer, no connection");
    assert!(matches!(err, ConnectError::Timeout { after, .. } if after == Duration::from_secs(10)), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(12), "{waited:?}");
    accepting.abort();
}

/// A pool's checkout answers within the pool's own `connection_timeout`, also when it looks
/// for the reason connections cannot be opened.
#[tokio::test]
async fn a_checkout_from_a_pool_whose_server_never_answers_fails_within_the_pools_timeout() {
    let (port, accepting) = silent_server().await;
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
    let pool = bb8::Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_secs(3))
        .build_unchecked(pgbatch::ConnectionManager::new(config));
    let started = Instant::now();
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("SELECT 1"));
    let err = batch.run(&pool).await.expect_err("no connection");
    let waited = started.elapsed();
    assert!(matches!(err, Error::Pool(PoolError::TimedOut { .. })), "{err}");
    assert!(waited < Duration::from_millis(3_500), "the pool's 3 s timeout, not more: {waited:?}");
    accepting.abort();
}

async fn pool_to(config: tokio_postgres::Config) -> Pool {
    bb8::Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_millis(2000))
        .build_unchecked(pgbatch::ConnectionManager::new(config))
}

#[tokio::test]
async fn a_pool_that_cannot_connect_reports_the_last_connection_error() {
    let h = Harness::new().await;
    let refused = {
        // (Config::port adds a port to the ones the config has: build a fresh one.)
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
        config
    };
    let unknown_database = {
        let mut config = h.db.config().clone();
        config.dbname("pgbatch_no_such_database");
        config
    };
    for (name, config) in [("refused port", refused), ("unknown database", unknown_database)] {
        let pool = pool_to(config).await;
        let mut batch = Batch::new();
        batch.push(insert_note(1, "never"));
        let err = batch.run(&pool).await.unwrap_err();
        let Error::Pool(PoolError::TimedOut { last_connect_error: Some(cause) }) = &err else {
            panic!("{name}: the cause is kept: {err}")
        };
        match name {
            "refused port" => assert!(matches!(**cause, ConnectError::Io { .. }), "{name}: {cause}"),
            // PostgreSQL says 3D000; PgBouncer passes the message on under 08P01.
            _ => assert!(
                matches!(&**cause, ConnectError::Server { error, .. } if error.message().contains("pgbatch_no_such_database")),
                "{name}: {cause}"
            ),
        }
        assert!(err.to_string().contains(&cause.to_string()), "the message says why: {err}");
    }
}

#[tokio::test]
async fn a_pooled_connection_whose_session_the_server_ended_is_not_lent_out() {
    let h = Harness::new().await;
    let pool = h.pool_named("pgbatch-ended", 1).await;
    for round in 0..20 {
        let pid = pool.get().await.unwrap().cancel_token().process_id();
        h.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pg_terminate_backend({pid})")).await;
        while h.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).await > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut batch = Batch::new();
        batch.push(insert_note(1, &format!("after {round}")));
        batch
            .run(&pool)
            .await
            .unwrap_or_else(|err| panic!("round {round}: a fresh connection, not the ended one: {err}"));
    }
    assert_eq!(h.count("SELECT count(*) FROM note").await, 20);
}

/// A connection whose session the server ended while it sat idle, lent out before the
/// server's notice arrived (here it is held back by a slow network): the batch's `BEGIN`
/// meets the end of the session, nothing ran, and the batch is replayed on a fresh
/// connection, on a pool as on a multiplexed client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_given_a_connection_whose_session_just_ended_is_replayed_on_a_fresh_one() {
    let h = Harness::new().await;
    let proxy = h.db.proxy().await.unwrap().delay(Duration::from_millis(200)).start().await.unwrap();
    for (round, on_pool) in [(1, true), (2, false)] {
        let mut config = h.db.config_via(&proxy);
        let name = format!("pgbatch-stale-{round}");
        config.application_name(&name);
        // Each client opens its connection before its backend is ended.
        let pooled = pool(config.clone(), 1).await;
        let multiplexed = pgbatch::Multiplexed::builder(pgbatch::ConnectionManager::new(config))
            .connections(1)
            .build()
            .await
            .unwrap();
        let ended_pid = pooled.get().await.unwrap().cancel_token().process_id();
        let ended = h
            .count(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await;
        assert_eq!(ended, 2, "round {round}: the pool's backend and the multiplexed client's");
        while h.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'")).await > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut batch = Batch::new();
        batch.push(insert_note(1, &format!("stale {round}")));
        let committed = if on_pool { batch.run(&pooled).await } else { batch.run_multiplexed(&multiplexed).await }
            .unwrap_or_else(|error| panic!("round {round}: replayed on a fresh connection: {error}"));
        assert_eq!(committed.attempts(), 2, "round {round}: the first attempt met the ended session");
        if on_pool {
            assert_ne!(pooled.get().await.unwrap().cancel_token().process_id(), ended_pid, "the pool replaced it");
        }
    }
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body LIKE 'stale %'").await, 2, "each committed once");
}

/// The test server accepts writes: `read-write` and `primary` connect to it, `read-only` and
/// `standby` refuse it, naming what it is. Directly, the server's state comes from what it
/// reports at start-up; through PgBouncer (which does not pass those reports on), from one
/// query.
#[tokio::test]
async fn target_session_attrs_judges_the_server_it_reaches() {
    use pgbatch::TargetSessionAttrs::*;
    let h = Harness::new().await;
    for (attrs, accepted) in [(ReadWrite, true), (Primary, true), (Any, true), (ReadOnly, false), (Standby, false)] {
        let mut config = pgbatch::Config::from(h.db.config());
        config.target_session_attrs(attrs);
        match Connection::connect_with(&config).await {
            Ok(mut connection) => {
                assert!(accepted, "{attrs:?} connected to a server that accepts writes");
                let mut batch = Batch::new();
                batch.push(insert_note(1, "through target_session_attrs"));
                batch.run(&mut connection).await.expect("a write");
            }
            Err(error) => {
                assert!(!accepted, "{attrs:?}: {error}");
                assert!(
                    matches!(
                        &error,
                        ConnectError::WrongServer { found: "a server that accepts writes" | "not a standby", .. }
                    ),
                    "{attrs:?}: {error}"
                );
            }
        }
    }
}
