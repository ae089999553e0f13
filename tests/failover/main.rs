//! Several hosts in one URL, and `target_session_attrs` as libpq means it, against real
//! servers: a private primary and a hot standby streaming from it, and a primary that is
//! still read-only, as one is for a moment during a failover.

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod formation;

use std::time::Duration;

use pgbatch::{Batch, Cause, ConnectError, Connection, Error, RetryPolicy};
use pgbatch_testing::{LocalCluster, TestDatabase};

/// A primary and a hot standby of it.
struct Pair {
    primary: LocalCluster,
    standby: LocalCluster,
}

fn pair() -> Pair {
    let primary = LocalCluster::start(&[]).expect("a private primary");
    let standby = primary.start_standby().expect("a hot standby of it");
    Pair { primary, standby }
}

/// A URL listing `ports` on 127.0.0.1, in order.
fn url(ports: &[u16], options: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    format!("postgres://postgres@{}/postgres?connect_timeout=10&sslmode=disable&{options}", hosts.join(","))
}

/// A batch that inserts a note saying `body`.
fn insert(body: &str) -> Batch {
    let mut batch = Batch::new();
    batch.push(diesel::sql_query(format!("INSERT INTO note (body) VALUES ('{body}')"))).label("insert note");
    batch
}

async fn in_recovery(connection: &mut Connection) -> bool {
    let mut batch = Batch::new();
    let recovery =
        batch.push(diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>("pg_is_in_recovery()"))).one::<bool>();
    batch.run(connection).await.expect("a read").get(&recovery).unwrap()
}

#[tokio::test]
async fn target_session_attrs_chooses_the_kind_of_server_it_names() {
    let Pair { primary, standby } = pair();
    let (p, s) = (primary.port(), standby.port());
    // (hosts in order, target_session_attrs, lands on the standby?)
    let cases: [(&[u16], &str, bool); 9] = [
        (&[s, p], "any", true),
        (&[s, p], "read-write", false),
        (&[s, p], "primary", false),
        (&[p, s], "read-only", true),
        (&[p, s], "standby", true),
        (&[p, s], "prefer-standby", true),
        (&[p], "prefer-standby", false),
        (&[s], "read-only", true),
        (&[p, s], "any", false),
    ];
    for (ports, attrs, on_standby) in cases {
        let url = url(ports, &format!("target_session_attrs={attrs}"));
        let mut connection = Connection::connect(&url).await.unwrap_or_else(|e| panic!("{attrs}: {e}"));
        assert_eq!(in_recovery(&mut connection).await, on_standby, "{url}");
    }
}

#[tokio::test]
async fn a_url_with_no_suitable_host_fails_with_each_hosts_reason() {
    let Pair { primary: _primary, standby } = pair();
    // A port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = url(&[standby.port(), closed], "target_session_attrs=read-write");
    let started = std::time::Instant::now();
    let error = Connection::connect(&url).await.expect_err("no host accepts writes");
    assert!(started.elapsed() < Duration::from_secs(10), "within the connect timeout");
    let ConnectError::NoSuitableHost { failures } = &error else { panic!("{error}") };
    assert_eq!(failures.len(), 2, "{error}");
    assert!(matches!(&failures[0].1, ConnectError::WrongServer { found: "a hot standby", .. }), "{error}");
    assert!(matches!(&failures[1].1, ConnectError::Io { .. }), "{error}");
    let message = error.to_string();
    for port in [standby.port(), closed] {
        assert!(message.contains(&format!("127.0.0.1:{port}")), "each host is named: {message}");
    }
    assert!(message.contains("hot standby") && message.contains("read-write"), "{message}");
}

#[tokio::test]
async fn options_pgbatch_cannot_honour_are_refused_by_name() {
    for (option, named) in [
        ("channel_binding=require", "channel_binding"),
        ("sslnegotiation=direct", "sslnegotiation"),
        ("target_session_attrs=leader", "target_session_attrs"),
    ] {
        let url = url(&[5432], option);
        let error = Connection::connect(&url).await.expect_err(option);
        assert!(matches!(error, ConnectError::Config(_)), "{option}: {error}");
        assert!(error.to_string().contains(named), "{option}: the error names it: {error}");
    }
}

/// A primary that is still read-only (as a just-promoted one is for a moment, or one a
/// failover tool fenced): a pooled batch that hits 25006 wrote nothing, its connection is
/// given up, and the batch is replayed on a fresh one, committing once.
#[tokio::test]
async fn a_batch_on_a_read_only_server_is_replayed_on_a_fresh_connection_and_commits_once() {
    let db = TestDatabase::create().await.expect("a test database");
    db.execute("CREATE TABLE note (body text NOT NULL)").await.unwrap();
    let read_only = format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", db.name());
    db.execute(&read_only).await.unwrap();
    let manager = pgbatch::ConnectionManager::new(db.config().clone())
        .retry(RetryPolicy::default().base_delay(Duration::from_millis(1)));
    let pool = bb8::Pool::builder().max_size(1).build(manager).await.unwrap();
    drop(pool.get().await.unwrap()); // opened while the database is read-only
    let mut bare = Connection::connect_with(db.config()).await.unwrap();
    // The database's sessions are read-only now: this one asks for a read-write transaction.
    let writable =
        format!("BEGIN READ WRITE; ALTER DATABASE \"{}\" RESET default_transaction_read_only; COMMIT", db.name());
    db.execute(&writable).await.unwrap();

    // A bare connection has no other: the error says what happened and what to set.
    let error = insert("bare").run(&mut bare).await.expect_err("the session is read-only");
    assert!(matches!(error.cause(), Some(Cause::ReadOnly(_))), "{error}");
    assert!(error.to_string().contains("target_session_attrs=read-write"), "{error}");
    assert!(!error.may_have_committed());

    let committed = insert("pooled").run(&pool).await.expect("replayed on a fresh connection");
    assert_eq!(committed.attempts(), 2);
    let count = pgbatch_testing::count(&db.connect().await.unwrap(), "SELECT count(*) FROM note").await;
    assert_eq!(count, 1, "committed once, the bare connection's insert not at all");
    assert!(matches!(error, Error::Statement(_)));
}

/// The same on a multiplexed client: the shared connection that met a read-only session
/// is retired (every write on it would fail the same way), the batch is replayed on a new
/// one and commits once; with retries off the batch fails, and the next one still finds a
/// writable connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_batch_on_a_read_only_server_is_replayed_on_a_new_connection_and_commits_once() {
    let db = TestDatabase::create().await.expect("a test database");
    db.execute("CREATE TABLE note (body text NOT NULL)").await.unwrap();
    db.execute(&format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", db.name())).await.unwrap();
    let client = |policy: RetryPolicy| {
        let manager = pgbatch::ConnectionManager::new(db.config().clone()).retry(policy);
        pgbatch::Multiplexed::builder(manager).connections(1).build()
    };
    // Both open their connection while the database is read-only.
    let replaying = client(RetryPolicy::default().base_delay(Duration::from_millis(1))).await.unwrap();
    let not_retrying = client(RetryPolicy::never()).await.unwrap();
    let writable =
        format!("BEGIN READ WRITE; ALTER DATABASE \"{}\" RESET default_transaction_read_only; COMMIT", db.name());
    db.execute(&writable).await.unwrap();

    let committed = insert("replayed").run_multiplexed(&replaying).await.expect("replayed on a new connection");
    assert_eq!(committed.attempts(), 2);

    let error = insert("not retried").run_multiplexed(&not_retrying).await.expect_err("the session is read-only");
    assert!(matches!(error.cause(), Some(Cause::ReadOnly(_))), "{error}");
    assert!(!error.may_have_committed());
    let next = insert("next").run_multiplexed(&not_retrying).await.expect("a new connection is writable");
    assert_eq!(next.attempts(), 1);

    let count = pgbatch_testing::count(&db.connect().await.unwrap(), "SELECT count(*) FROM note").await;
    assert_eq!(count, 2, "the replayed batch and the next committed once each, the failed one not at all");
}

/// On a shared connection, the warning that a commit stopped waiting for its standby goes
/// with the batch whose commit it was, not with the batch pipelined behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_batchs_replication_warning_goes_with_its_own_commit() {
    let primary = LocalCluster::start(&[("synchronous_standby_names", "absent_standby")]).expect("a primary");
    let (admin, connection) = primary.config().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    admin.batch_execute("SET synchronous_commit = local; CREATE TABLE note (body text NOT NULL)").await.unwrap();
    let mut config = primary.config();
    config.application_name("shared");
    let client =
        pgbatch::Multiplexed::builder(pgbatch::ConnectionManager::new(config)).connections(1).build().await.unwrap();

    let caller = |sql: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut batch = Batch::new();
            batch.push(diesel::sql_query(sql));
            batch.run_multiplexed(&client).await
        })
    };
    let write = caller("INSERT INTO note (body) VALUES ('waited')");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read = caller("SELECT 1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The write's COMMIT is waiting for the standby: cancel that wait.
    let cancelled = admin
        .query("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'shared'", &[])
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1, "one shared backend");
    assert!(cancelled[0].get::<_, bool>(0), "its wait was cancelled");
    let written = write.await.unwrap().expect("committed locally");
    let read = read.await.unwrap().expect("the read behind it commits");
    assert!(written.replication_unconfirmed(), "the write's commit says a failover could lose it");
    assert!(!read.replication_unconfirmed(), "the read pipelined behind it does not");
}

/// A commit waiting for a synchronous standby that never answers is cancelled: PostgreSQL
/// commits locally with a WARNING. The batch is committed, and says that a failover could
/// lose it.
#[tokio::test]
async fn a_commit_whose_synchronous_replication_wait_was_cancelled_says_so() {
    let primary = LocalCluster::start(&[("synchronous_standby_names", "absent_standby")]).expect("a primary");
    let mut setup = Connection::connect_with(primary.config()).await.unwrap();
    let mut ddl = Batch::new();
    ddl.push(diesel::sql_query("CREATE TABLE note (body text NOT NULL)"));
    // DDL commits wait too: set the wait off for this one transaction.
    ddl.push(diesel::sql_query("SET LOCAL synchronous_commit = local"));
    ddl.run(&mut setup).await.unwrap();

    let mut connection = Connection::connect_with(primary.config()).await.unwrap();
    let cancel = connection.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query().await
    });
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("INSERT INTO note (body) VALUES ('waited')"));
    let committed = batch.run(&mut connection).await.expect("committed locally");
    canceller.await.unwrap().expect("the cancel was acknowledged");
    assert!(committed.replication_unconfirmed(), "the commit says a failover could lose it");
    let mut read = Batch::new();
    let rows = read
        .push(diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM note)")))
        .one::<i64>();
    let seen = read.run(&mut connection).await.unwrap();
    assert_eq!(seen.get(&rows).unwrap(), 1, "committed on this server");
    assert!(!seen.replication_unconfirmed(), "a read-only batch's commit does not wait");

    // Without synchronous replication, never.
    let db = TestDatabase::create().await.unwrap();
    let mut plain = Connection::connect_with(db.config()).await.unwrap();
    let mut batch = Batch::new();
    batch.push(diesel::sql_query("SELECT 1"));
    assert!(!batch.run(&mut plain).await.unwrap().replication_unconfirmed());
}

/// A URL that lists a hot standby first, with `target_session_attrs=read-write`, as users of
/// a failover formation write it: the test harness creates its database on the primary (it
/// cannot on the standby), pgbatch's connections reach it there, and the main example runs
/// with it as its `DATABASE_URL`.
#[tokio::test]
async fn a_standby_first_url_serves_the_test_harness_and_the_main_example() {
    let Pair { primary, standby } = pair();
    let url = url(&[standby.port(), primary.port()], "target_session_attrs=read-write");
    let config: pgbatch::Config = url.parse().expect("the URL");
    let db = TestDatabase::create_on(config.postgres()).await.expect("the harness creates its database on the primary");
    db.execute("CREATE TABLE note (body text)").await.expect("the schema");
    let mut connection = Connection::connect_with(db.config()).await.expect("a connection");
    assert!(!in_recovery(&mut connection).await, "on the primary");
    insert("through the harness").run(&mut connection).await.expect("a batch");

    // The main example, as a user runs it: the binary `cargo test --workspace` built beside
    // this test's own.
    let built = std::env::current_exe()
        .ok()
        .and_then(|test| test.parent()?.parent().map(|dir| dir.join("examples").join("create_project")))
        .filter(|example| example.exists());
    let Some(example) = built else {
        eprintln!("the create_project example is not built (cargo test --workspace builds it): not run");
        return;
    };
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(example).env("DATABASE_URL", url).output())
            .await
            .unwrap()
            .expect("the example runs");
    assert!(
        output.status.success(),
        "the example failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
