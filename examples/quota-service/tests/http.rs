//! The service over real HTTP: the router served on a loopback port, requests written by
//! hand (HTTP/1.1, one per connection), the database's connections through the test proxy
//! where a fault is needed.

use std::net::SocketAddr;
use std::time::Duration;

use pgbatch_testing::{Fault, Proxy, TestDatabase, count};
use quota_service::http::{ProjectView, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// A migrated database with pgbatch's idempotency table and tenant `acme` of `projects_max`.
async fn service_database(projects_max: i64) -> TestDatabase {
    let (db, _) = TestDatabase::create_migrated(MIGRATIONS).await.expect("a migrated database");
    db.execute(&format!("INSERT INTO quota (tenant, projects_max) VALUES ('acme', {projects_max})")).await.unwrap();
    let pool = db.pool(1).await.unwrap();
    pgbatch::idempotency::install(&pool, pgbatch::idempotency::DEFAULT_TABLE).await.unwrap();
    db
}

/// Serves the router on `pool` at a free loopback port.
async fn serve(pool: pgbatch::Pool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Service::new(pool, None).router()).await });
    addr
}

/// An answer: its status, its headers (lower-case names) and its body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(found, _)| found == name).map(|(_, value)| value.as_str())
    }

    fn project(&self) -> ProjectView {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("{error}: {}", self.body))
    }
}

/// Sends one request and reads its whole answer (the server closes after it).
async fn request(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let key = key.map(|key| format!("Idempotency-Key: {key}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: quota\r\nConnection: close\r\nContent-Type: application/json\r\n\
         {key}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

async fn create(addr: SocketAddr, name: &str, key: Option<&str>) -> Answer {
    request(addr, "POST", "/tenants/acme/projects", key, &format!(r#"{{"name":"{name}"}}"#)).await
}

/// (projects, projects counted in the quota).
async fn projects(db: &TestDatabase) -> (i64, i64) {
    let client = db.connect().await.unwrap();
    let made = count(&client, "SELECT count(*) FROM project").await;
    let counted = count(&client, "SELECT projects_used FROM quota WHERE tenant = 'acme'").await;
    (made, counted)
}

/// A pool of one connection through `proxy`, already open, that gives up on a checkout
/// after a second.
async fn pool_via(db: &TestDatabase, proxy: &Proxy) -> pgbatch::Pool {
    let manager = pgbatch::ConnectionManager::new(db.config_via(proxy));
    let pool =
        bb8::Pool::builder().max_size(1).connection_timeout(Duration::from_secs(1)).build(manager).await.unwrap();
    drop(pool.get().await.expect("a connection through the proxy"));
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_exceed_the_quota_and_the_rest_are_told_why() {
    let db = service_database(5).await;
    let addr = serve(db.pool(4).await.unwrap()).await;
    let requests = (0..20).map(|i| tokio::spawn(async move { create(addr, &format!("p{i}"), None).await }));
    let mut statuses = Vec::new();
    for request in requests {
        let answer = request.await.unwrap();
        if answer.status == 422 {
            assert!(answer.body.contains("\"code\":\"quota_exhausted\""), "{}", answer.body);
        }
        statuses.push(answer.status);
    }
    statuses.sort();
    assert_eq!(statuses, [[201; 5].as_slice(), [422; 15].as_slice()].concat(), "five fit the quota");
    assert_eq!(projects(&db).await, (5, 5));

    let listed = request(addr, "GET", "/tenants/acme/projects", None, "").await;
    assert_eq!(listed.status, 200);
    let listed: Vec<ProjectView> = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(listed.len(), 5, "the read sees what the batches wrote");
    // A body that is not the JSON asked for is the client's mistake, not a quota.
    let garbled = request(addr, "POST", "/tenants/acme/projects", None, r#"{"nom":"x"}"#).await;
    assert_eq!((garbled.status, garbled.body.contains("\"code\":\"bad_body\"")), (400, true), "{garbled:?}");
    // With room in the quota, a taken name is the refusal.
    let raised = request(addr, "PUT", "/tenants/acme", None, r#"{"projects_max":6}"#).await;
    assert_eq!(raised.status, 204, "{raised:?}");
    let taken = create(addr, &listed[0].name, None).await;
    assert_eq!((taken.status, taken.body.contains("\"code\":\"name_taken\"")), (409, true), "{}", taken.body);
    assert_eq!(projects(&db).await, (5, 5), "a refused request writes nothing");
}

/// The connection is cut after `COMMIT` was sent: the server committed, the service never
/// heard. With a key, the pool settles the outcome, so the request is answered with the
/// project (or, at worst, 503); a retry with the same key gets the same project, and the
/// database holds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_commit_was_cut_is_settled_and_a_retry_gets_the_same_project() {
    let db = service_database(10).await;
    let proxy = db.proxy().await.unwrap().start().await.unwrap();
    let addr = serve(pool_via(&db, &proxy).await).await;
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let first = create(addr, "web", Some("request-1")).await;
    assert_eq!(proxy.cuts(), 1, "the cut fired");
    assert!(first.status == 201 || first.status == 503, "created, or unknown: {first:?}");
    let retried = create(addr, "web", Some("request-1")).await;
    assert_eq!(retried.status, 201, "{retried:?}");
    let project = retried.project();
    assert!(project.replayed, "answered from the first request's project: {project:?}");
    if first.status == 201 {
        assert_eq!(first.project().id, project.id, "the settled answer and the retry name one project");
    }
    assert_eq!(projects(&db).await, (1, 1), "one project, counted once");
}

/// The same cut, while the database refuses new connections, so that no settlement is
/// possible: the answer is 503 with `Retry-After`, never a success or a failure it cannot
/// know; once the database is back, the retry with the same key gets the project the lost
/// run created, and the database holds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_outcome_is_503_and_a_retry_with_the_same_key_applies_once() {
    let db = service_database(10).await;
    let proxy = db.proxy().await.unwrap().start().await.unwrap();
    let addr = serve(pool_via(&db, &proxy).await).await;
    proxy.refuse_connections(true);
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let first = create(addr, "web", Some("request-2")).await;
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(first.header("retry-after"), Some("1"));
    assert!(first.body.contains("\"code\":\"outcome_unknown\""), "{}", first.body);
    assert_eq!(projects(&db).await, (1, 1), "the lost run did commit");

    proxy.refuse_connections(false);
    let retried = create(addr, "web", Some("request-2")).await;
    assert_eq!(retried.status, 201, "{retried:?}");
    assert!(retried.project().replayed, "{retried:?}");
    let again = create(addr, "web", Some("request-2")).await;
    assert_eq!(again.project(), retried.project(), "every retry names the same project");
    assert_eq!(projects(&db).await, (1, 1), "applied once");
}

/// Without a key, the same 503 leaves the client unable to tell: its retry meets the name
/// the lost run took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_a_retry_after_an_unknown_outcome_meets_the_lost_runs_project() {
    let db = service_database(10).await;
    let proxy = db.proxy().await.unwrap().start().await.unwrap();
    let addr = serve(pool_via(&db, &proxy).await).await;
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let first = create(addr, "web", None).await;
    assert_eq!(first.status, 503, "an unkeyed batch's unknown outcome stays unknown: {first:?}");
    let retried = create(addr, "web", None).await;
    assert_eq!(retried.status, 409, "{retried:?}");
    assert_eq!(projects(&db).await, (1, 1));
}

/// A key that a resolution fenced before the request came (an operator's, or this
/// service's own settlement that could not replay): the plain key can never commit, so the
/// service resolves it again and runs the batch with the key the resolution returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_key_a_resolution_fenced_still_creates_its_project_once() {
    let db = service_database(10).await;
    let pool = db.pool(2).await.unwrap();
    let fenced = pgbatch::IdempotencyKey::new("create-project/acme/request-3");
    let resolution = pgbatch::idempotency::resolve(&pool, &fenced).await.unwrap();
    assert!(matches!(resolution, pgbatch::idempotency::Resolution::NotCommitted { .. }), "{resolution:?}");
    let addr = serve(pool).await;
    let first = create(addr, "web", Some("request-3")).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(!first.project().replayed);
    let retried = create(addr, "web", Some("request-3")).await;
    assert_eq!((retried.status, retried.project().id), (201, first.project().id), "{retried:?}");
    assert!(retried.project().replayed);
    assert_eq!(projects(&db).await, (1, 1));
}
