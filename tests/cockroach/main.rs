//! The guarantees on CockroachDB, the engine the first users run (v22.1, as Oxide's omicron
//! does). Runs where Docker answers, when `PGBATCH_TEST_COCKROACH=1`: testcontainers starts
//! a single insecure node, and each check gets a database of its own. Elsewhere it prints
//! why it was skipped and passes.
//!
//! ```sh
//! PGBATCH_TEST_COCKROACH=1 cargo test --test cockroach
//! ```

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use pgbatch::idempotency::{self, Resolution};
use pgbatch::{Batch, Cause, ConnectionManager, Error, IdempotencyKey, RetryPolicy};
use pgbatch_testing::Fault;
use testcontainers::ImageExt;
use testcontainers::runners::AsyncRunner;
use testcontainers_modules::cockroach_db::CockroachDb;

/// The version the first users run.
const VERSION: &str = "v22.1.22";

diesel::table! {
    account (id) {
        id -> Int8,
        balance -> Int8,
    }
}

const SCHEMA: &str = "
    CREATE TABLE account (id INT8 PRIMARY KEY, balance INT8 NOT NULL CONSTRAINT balance_nonnegative CHECK (balance >= 0));
    INSERT INTO account VALUES (1, 100);
";

use pgbatch::Pool;

/// A database of its own on the node, and a pool on it whose sessions refuse full table
/// scans, as omicron's do.
async fn database(node: &tokio_postgres::Config) -> (tokio_postgres::Config, Pool) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("pgbatch_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let (client, connection) = node.connect(tokio_postgres::NoTls).await.expect("the node");
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut config = node.clone();
    config.dbname(&name);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(SCHEMA).await.unwrap();
    let manager = ConnectionManager::new(config.clone()).session_setup(["SET disallow_full_table_scans = on"]);
    let pool = bb8::Pool::builder().max_size(4).build(manager).await.unwrap();
    (config, pool)
}

async fn balance(pool: &Pool) -> i64 {
    let mut batch = Batch::new();
    let balance = batch.push(account::table.find(1).select(account::balance)).one::<i64>();
    batch.run(pool).await.unwrap().get(&balance).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarantees_hold_on_cockroachdb() {
    if std::env::var("PGBATCH_TEST_COCKROACH").as_deref() != Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "cockroach: skipped: set PGBATCH_TEST_COCKROACH=1 on a machine where Docker runs to test against \
             CockroachDB {VERSION} (testcontainers starts cockroachdb/cockroach)"
        );
        return;
    }
    let node =
        CockroachDb::default().with_tag(VERSION).start().await.expect("a CockroachDB container (is Docker running?)");
    let mut config = tokio_postgres::Config::new();
    config
        .host(node.get_host().await.unwrap().to_string())
        .port(node.get_host_port_ipv4(26257).await.unwrap())
        .user("root")
        .dbname("defaultdb");

    atomic_with_attributed_failures(&config).await;
    guards(&config).await;
    idempotency_with_index_only_purges(&config).await;
    retries_through_cockroach_restart(&config).await;
    unknown_outcomes_settle(&config).await;
    let _ = writeln!(std::io::stderr(), "cockroach: the guarantees hold on CockroachDB {VERSION}");
}

async fn atomic_with_attributed_failures(node: &tokio_postgres::Config) {
    let (_, pool) = database(node).await;
    let mut batch = Batch::new();
    batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance - 10))).label("debit");
    batch
        .push(diesel::insert_into(account::table).values((account::id.eq(1), account::balance.eq(0))))
        .label("duplicate");
    batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance + 1)));
    let err = batch.run(&pool).await.unwrap_err();
    let Error::Statement(failure) = &err else { panic!("{err}") };
    assert_eq!(failure.label(), Some("duplicate"));
    assert!(matches!(failure.cause(), Cause::UniqueViolation(_)), "{err}");
    assert_eq!(balance(&pool).await, 100, "nothing of the batch committed");
}

async fn guards(node: &tokio_postgres::Config) {
    let (_, pool) = database(node).await;
    let mut batch = Batch::new();
    batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(1))).label("pay");
    batch
        .push(diesel::update(account::table.find(404)).set(account::balance.eq(7)))
        .label("no such account")
        .expect_rows(1);
    let err = batch.run(&pool).await.unwrap_err();
    let Some(Cause::GuardFailed(guard)) = err.cause() else { panic!("{err}") };
    assert_eq!(
        (guard.label(), guard.actual_rows()),
        (Some("no such account"), Some(0)),
        "CockroachDB's wording parses"
    );
    let mut batch = Batch::new();
    batch.guard_exists(account::table.find(1).select(account::id)).label("exists");
    batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(99))).expect_rows_in(1..=1);
    batch.run(&pool).await.expect("guards that hold");
    assert_eq!(balance(&pool).await, 99);
}

async fn idempotency_with_index_only_purges(node: &tokio_postgres::Config) {
    let (_, pool) = database(node).await;
    idempotency::install(&pool, idempotency::DEFAULT_TABLE).await.unwrap();
    let keyed = || {
        let mut batch = Batch::new();
        batch.idempotency_key(IdempotencyKey::new("k"));
        batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance - 1)));
        batch
    };
    keyed().run(&pool).await.unwrap();
    assert!(matches!(keyed().run(&pool).await, Err(Error::AlreadyCommitted(_))));
    assert_eq!(balance(&pool).await, 99, "applied once");
    let resolved = idempotency::resolve(&pool, &IdempotencyKey::new("k")).await.unwrap();
    assert!(matches!(resolved, Resolution::Committed { .. }));
    // The sessions refuse full table scans: the purge must read the index.
    idempotency::purge_older_than(&pool, idempotency::DEFAULT_TABLE, Duration::from_secs(3600)).await.unwrap();
}

async fn retries_through_cockroach_restart(node: &tokio_postgres::Config) {
    let (_, pool) = database(node).await;
    let mut batch = Batch::new();
    batch.retry(RetryPolicy::default().cockroach_restart().max_attempts(20).base_delay(Duration::from_millis(20)));
    batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance + 1)));
    // Fails with a retryable error until the transaction is 100 ms old.
    batch.push(diesel::sql_query("SELECT crdb_internal.force_retry('100ms')"));
    let committed = batch.run(&pool).await.expect("retries inside the transaction commit");
    assert!(committed.attempts() > 1, "the transaction was retried");
    assert_eq!(balance(&pool).await, 101, "applied once");
}

async fn unknown_outcomes_settle(node: &tokio_postgres::Config) {
    let (config, _) = database(node).await;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let address = tokio::net::lookup_host((host.as_str(), config.get_ports()[0])).await.unwrap().next().unwrap();
    let proxy = pgbatch_testing::Proxy::builder(address).start().await.unwrap();
    let mut proxied = tokio_postgres::Config::new();
    proxied.host("127.0.0.1").port(proxy.addr().port()).user("root").dbname(config.get_dbname().unwrap());
    proxied.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let pool: Pool = bb8::Pool::builder().max_size(2).build(ConnectionManager::new(proxied)).await.unwrap();
    idempotency::install(&pool, idempotency::DEFAULT_TABLE).await.unwrap();
    drop(pool.get().await.unwrap());
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let mut batch = Batch::new();
    batch.idempotency_key(IdempotencyKey::new("lost"));
    batch.push(diesel::update(account::table.find(1)).set(account::balance.eq(account::balance + 5)));
    let result = batch.run(&pool).await;
    assert!(
        matches!(&result, Ok(c) if c.replayed_after_unknown())
            || matches!(&result, Err(Error::AlreadyCommitted(a)) if a.committed_by_this_call()),
        "{result:?}"
    );
    assert_eq!(balance(&pool).await, 105, "applied once");
}
