//! What a service's telemetry sees of a batch: the span with OpenTelemetry's conventional
//! attributes, and the metrics, recorded by a collecting subscriber and metrics-util's
//! debugging recorder, both installed for this test's thread only (the runtime is a
//! current-thread one, so the multiplexed client's driver runs on it too). Exact: every
//! span of pgbatch's and every metric increment is listed, and no value of a bind
//! appears in any field or label.

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pgbatch::idempotency;
use pgbatch::{Batch, ConnectionManager, Error, IdempotencyKey, Multiplexed, RetryPolicy};
use pgbatch_testing::{ClosedSpan, Fault, SpanCollector};
use tokio_postgres::config::Host;
use tracing_subscriber::prelude::*;

use crate::common::*;

/// Every bind of these tests carries it; no field or label may.
const SECRET: &str = "telemetry-secret";

/// A subscriber and a metrics recorder for this thread, and what they saw.
struct Watch {
    spans: SpanCollector,
    snapshotter: Snapshotter,
    _recorder: metrics::LocalRecorderGuard<'static>,
    _subscriber: tracing::subscriber::DefaultGuard,
}

impl Watch {
    fn install() -> Watch {
        let spans = SpanCollector::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone());
        // Leaked so that the guard can live in the struct: one small recorder per test.
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        Watch {
            spans,
            snapshotter: recorder.snapshotter(),
            _recorder: metrics::set_default_local_recorder(recorder),
            _subscriber: tracing::subscriber::set_default(subscriber),
        }
    }

    /// pgbatch's spans that closed.
    fn spans(&self) -> Vec<ClosedSpan> {
        self.spans.closed().into_iter().filter(|span| span.name.starts_with("pgbatch.")).collect()
    }

    /// Every metric recorded since the last call, as `name{label=value,...}`: a counter's
    /// increments, a gauge's value, a histogram's number of samples.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let mut seen = BTreeMap::new();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> =
                key.labels().map(|label| format!("{}={}", label.key(), label.value())).collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(count) => count as f64,
                DebugValue::Gauge(value) => value.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            seen.insert(name, value);
        }
        seen
    }
}

/// The one span of pgbatch's that closed, by name.
fn only_span(spans: &[ClosedSpan], name: &str) -> BTreeMap<String, String> {
    let found: Vec<_> = spans.iter().filter(|span| span.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0].fields.clone()
}

/// What every span of an operation on the harness's server says about where it ran.
fn server_fields(h: &Harness) -> BTreeMap<String, String> {
    let config = h.db.config();
    let Host::Tcp(host) = &config.get_hosts()[0] else { panic!("the test server is reached over TCP") };
    BTreeMap::from([
        ("db.namespace".to_owned(), config.get_dbname().expect("a database name").to_owned()),
        ("server.address".to_owned(), host.clone()),
        ("server.port".to_owned(), config.get_ports()[0].to_string()),
    ])
}

/// The fields of a `pgbatch.run` span of a batch of `statements`, with `more` besides.
fn run_fields(h: &Harness, statements: usize, more: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut fields = server_fields(h);
    for (field, value) in [
        ("otel.kind", "client"),
        ("db.system.name", "postgresql"),
        ("db.operation.name", "BATCH"),
        ("db.operation.batch.size", &statements.to_string()),
        ("statements", &statements.to_string()),
        ("attempt", "1"),
    ]
    .into_iter()
    .chain(more.iter().copied())
    {
        fields.insert(field.to_owned(), value.to_owned());
    }
    fields
}

/// `fields` without those whose values differ run to run (times) or are checked apart
/// (labels, the error's summary).
fn comparable(mut fields: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for varying in ["round_trip_ms", "labels", "error"] {
        fields.remove(varying);
    }
    fields
}

fn metric(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// The metrics of one pooled checkout, `idle` connections left idle as it lent one.
fn checkout(idle: f64) -> [(String, f64); 3] {
    [
        (metric("db.client.connection.wait_time", &[]), 1.0),
        (metric("db.client.connection.count", &[("db.client.connection.state", "idle")]), idle),
        (metric("db.client.connection.count", &[("db.client.connection.state", "used")]), 1.0),
    ]
}

fn duration(outcome: &str, error_type: Option<&str>) -> (String, f64) {
    let mut labels =
        vec![("db.system.name", "postgresql"), ("db.operation.name", "BATCH"), ("pgbatch.outcome", outcome)];
    labels.extend(error_type.map(|class| ("error.type", class)));
    (metric("db.client.operation.duration", &labels), 1.0)
}

fn batches(outcome: &str, transport: &str) -> (String, f64) {
    (metric("pgbatch.batches", &[("pgbatch.outcome", outcome), ("pgbatch.transport", transport)]), 1.0)
}

/// No span field and no metric label holds a bind's value.
fn no_secret(spans: &[ClosedSpan], metrics: &BTreeMap<String, f64>) {
    for span in spans {
        for (field, value) in &span.fields {
            assert!(!value.contains(SECRET), "{}.{field} holds a bind value: {value}", span.name);
        }
    }
    for name in metrics.keys() {
        assert!(!name.contains(SECRET), "a metric label holds a bind value: {name}");
    }
}

#[tokio::test]
async fn a_committed_batch_is_a_client_span_with_the_conventional_attributes_and_counts_once() {
    let h = Harness::new().await;
    let watch = Watch::install();
    let mut batch = Batch::new();
    batch.push(insert_account(100, &format!("{SECRET}@example.com")));
    batch.push(insert_note(1, SECRET));
    batch.run(&h.pool).await.expect("the batch commits");

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    assert_eq!(comparable(run.clone()), run_fields(&h, 2, &[("outcome", "committed"), ("settled", "false")]));
    assert!(run["round_trip_ms"].parse::<f64>().is_ok(), "{run:?}");
    let metrics = watch.metrics();
    let idle = metrics[&metric("db.client.connection.count", &[("db.client.connection.state", "idle")])];
    let expected: BTreeMap<String, f64> =
        checkout(idle).into_iter().chain([duration("committed", None), batches("committed", "pooled")]).collect();
    assert_eq!(metrics, expected);
    no_secret(&spans, &metrics);
}

#[tokio::test]
async fn a_unique_violation_carries_its_sqlstate_and_error_class() {
    let h = Harness::new().await;
    let mut first = Batch::new();
    first.push(insert_account(100, &format!("{SECRET}@example.com")));
    first.run(&h.pool).await.expect("the first account");
    let watch = Watch::install();
    let mut batch = Batch::new();
    batch.push(insert_account(101, &format!("{SECRET}@example.com"))).label("taken email");
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(matches!(err, Error::Statement(_)), "{err}");

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    let failed = [
        ("outcome", "not_committed"),
        ("otel.status_code", "ERROR"),
        ("error.type", "statement"),
        ("db.response.status_code", "23505"),
    ];
    assert_eq!(comparable(run.clone()), run_fields(&h, 1, &failed));
    assert_eq!(run["labels"], "taken email");
    let metrics = watch.metrics();
    let idle = metrics[&metric("db.client.connection.count", &[("db.client.connection.state", "idle")])];
    let expected: BTreeMap<String, f64> = checkout(idle)
        .into_iter()
        .chain([duration("not_committed", Some("statement")), batches("not_committed", "pooled")])
        .collect();
    assert_eq!(metrics, expected);
    no_secret(&spans, &metrics);
}

#[tokio::test]
async fn a_connection_cut_after_commit_is_an_unknown_outcome_in_spans_and_metrics() {
    let h = Harness::new().await;
    let (proxy, pool) = h.behind_proxy().await;
    let watch = Watch::install();
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let mut batch = Batch::new();
    batch.retry(RetryPolicy::never());
    batch.push(insert_note(1, SECRET));
    let err = batch.run(&pool).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err}");

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    let mut expected_fields =
        run_fields(&h, 1, &[("outcome", "unknown"), ("otel.status_code", "ERROR"), ("error.type", "outcome_unknown")]);
    // Through the proxy: its address, on the same database.
    let proxied = h.db.config_via(&proxy);
    expected_fields.insert("server.port".into(), proxied.get_ports()[0].to_string());
    let Host::Tcp(host) = &proxied.get_hosts()[0] else { panic!("the proxy listens on TCP") };
    expected_fields.insert("server.address".into(), host.clone());
    assert_eq!(comparable(run), expected_fields);
    let metrics = watch.metrics();
    let expected: BTreeMap<String, f64> = checkout(0.0)
        .into_iter()
        .chain([duration("unknown", Some("outcome_unknown")), batches("unknown", "pooled")])
        .collect();
    assert_eq!(metrics, expected);
    no_secret(&spans, &metrics);
}

#[tokio::test]
async fn a_keyed_batch_whose_commit_was_cut_counts_its_settlement() {
    let h = Harness::new().await;
    idempotency::install(&h.pool, idempotency::DEFAULT_TABLE).await.unwrap();
    let (proxy, pool) = h.behind_proxy().await;
    let watch = Watch::install();
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let mut batch = Batch::new();
    batch.idempotency_key(IdempotencyKey::new("telemetry-settled"));
    batch.push(insert_note(1, SECRET));
    let err = batch.run(&pool).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyCommitted(_)), "settled as committed: {err}");

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    assert_eq!(run["outcome"], "already_committed");
    assert_eq!(run["settled"], "true");
    assert!(!run.contains_key("error.type"), "a batch that committed did not fail: {run:?}");
    let metrics = watch.metrics();
    assert_eq!(metrics[&metric("pgbatch.settlements", &[("pgbatch.settled_as", "committed")])], 1.0);
    assert_eq!(metrics[&batches("already_committed", "pooled").0], 1.0);
    assert_eq!(metrics[&duration("already_committed", None).0], 1.0);
    assert!(!metrics.keys().any(|name| name.starts_with("pgbatch.keys_fenced")), "nothing fenced: {metrics:?}");
    no_secret(&spans, &metrics);
}

#[tokio::test]
async fn a_multiplexed_batch_is_counted_as_multiplexed_and_leaves_no_batch_in_flight() {
    let h = Harness::new().await;
    let client = Multiplexed::builder(ConnectionManager::new(h.db.config().clone()))
        .connections(1)
        .build()
        .await
        .expect("a client");
    let watch = Watch::install();
    let mut batch = Batch::new();
    batch.push(insert_note(1, SECRET));
    batch.push(insert_note(1, SECRET));
    batch.push(insert_note(1, SECRET));
    batch.run_multiplexed(&client).await.expect("the batch commits");

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    let expected_fields = run_fields(&h, 3, &[("outcome", "committed"), ("settled", "false"), ("multiplexed", "true")]);
    assert_eq!(comparable(run), expected_fields);
    let metrics = watch.metrics();
    let expected = BTreeMap::from([
        duration("committed", None),
        batches("committed", "multiplexed"),
        // One batch given and answered; one caller that waited and was taken.
        (metric("pgbatch.multiplexed.in_flight", &[("pgbatch.connection", "0")]), 0.0),
        (metric("pgbatch.multiplexed.waiting", &[]), 0.0),
    ]);
    assert_eq!(metrics, expected);
    no_secret(&spans, &metrics);
}

#[tokio::test]
async fn a_diesel_async_query_is_a_client_span_and_a_failing_one_says_why() {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;

    let h = Harness::new().await;
    let mut connection = h.pool.get().await.expect("a connection");
    let watch = Watch::install();
    diesel::sql_query("SELECT $1::text").bind::<Text, _>(SECRET).execute(&mut *connection).await.expect("a query");
    let err = diesel::sql_query("SELECT $1::int").bind::<Text, _>(SECRET).execute(&mut *connection).await;
    assert!(err.is_err(), "{SECRET} is not an int");

    let spans = watch.spans();
    let queries: Vec<_> = spans.iter().filter(|span| span.name == "pgbatch.query").collect();
    assert_eq!(queries.len(), 2, "{spans:#?}");
    let mut expected = server_fields(&h);
    expected.insert("otel.kind".into(), "client".into());
    expected.insert("db.system.name".into(), "postgresql".into());
    assert_eq!(queries[0].fields, expected, "no operation name: the text is the caller's");
    expected.insert("otel.status_code".into(), "ERROR".into());
    expected.insert("error.type".into(), "statement".into());
    expected.insert("db.response.status_code".into(), "22P02".into());
    assert_eq!(queries[1].fields, expected);
    let metrics = watch.metrics();
    let duration = |labels: &[(&str, &str)]| metric("db.client.operation.duration", labels);
    let expected = BTreeMap::from([
        (duration(&[("db.system.name", "postgresql")]), 1.0),
        (duration(&[("db.system.name", "postgresql"), ("error.type", "statement")]), 1.0),
    ]);
    assert_eq!(metrics, expected);
    no_secret(&spans, &metrics);
}

#[tokio::test]
async fn a_two_phase_batch_is_a_prepare_and_a_decide_span_and_counts_once_when_decided() {
    let h = Harness::new().await;
    let watch = Watch::install();
    let mut batch = Batch::new();
    batch.push(insert_note(1, SECRET));
    batch.push(insert_note(1, SECRET));
    let prepared = batch.prepare(&h.pool).await.expect("the first round trip");
    prepared.commit().await.expect("the commit");

    let spans = watch.spans();
    let prepare = only_span(&spans, "pgbatch.prepare");
    let mut expected = run_fields(&h, 2, &[("outcome", "open")]);
    expected.remove("attempt");
    assert_eq!(comparable(prepare), expected);
    let decide = only_span(&spans, "pgbatch.decide");
    let mut expected = server_fields(&h);
    for (field, value) in [
        ("otel.kind", "client"),
        ("db.system.name", "postgresql"),
        ("db.operation.name", "COMMIT"),
        ("decision", "commit"),
        ("outcome", "committed"),
    ] {
        expected.insert(field.to_owned(), value.to_owned());
    }
    assert_eq!(comparable(decide), expected);
    let metrics = watch.metrics();
    let idle = metrics[&metric("db.client.connection.count", &[("db.client.connection.state", "idle")])];
    let decided = metric(
        "db.client.operation.duration",
        &[("db.system.name", "postgresql"), ("db.operation.name", "COMMIT"), ("pgbatch.outcome", "committed")],
    );
    let expected: BTreeMap<String, f64> = checkout(idle)
        .into_iter()
        .chain([duration("open", None), (decided, 1.0), batches("committed", "two_phase")])
        .collect();
    assert_eq!(metrics, expected, "the batch counts once, when decided");
    no_secret(&spans, &metrics);
}

/// A pool of one connection through a proxy of its own, already open, that gives up on a
/// checkout after a second.
async fn quick_pool_behind_proxy(h: &Harness) -> (pgbatch_testing::Proxy, pgbatch::Pool) {
    let proxy = h.db.proxy().await.unwrap().start().await.unwrap();
    let manager = ConnectionManager::new(h.db.config_via(&proxy));
    let pool = bb8::Pool::builder()
        .max_size(1)
        .connection_timeout(std::time::Duration::from_secs(1))
        .build(manager)
        .await
        .unwrap();
    drop(pool.get().await.expect("a connection through the proxy"));
    (proxy, pool)
}

/// The settlement's own step fails: no connection can be had to fence the key on. The
/// outcome stays unknown, and the metrics say so: a settlement counted as unknown, the
/// settlement's checkout timed out.
#[tokio::test]
async fn a_settlement_that_finds_no_connection_is_counted_as_unknown() {
    let h = Harness::new().await;
    idempotency::install(&h.pool, idempotency::DEFAULT_TABLE).await.unwrap();
    let (proxy, pool) = quick_pool_behind_proxy(&h).await;
    let watch = Watch::install();
    proxy.refuse_connections(true);
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });
    let mut batch = Batch::new();
    batch.idempotency_key(IdempotencyKey::new("telemetry-unsettled"));
    batch.push(insert_note(1, SECRET));
    let err = batch.run(&pool).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err}");

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    assert_eq!((run["outcome"].as_str(), run["error.type"].as_str()), ("unknown", "outcome_unknown"));
    let metrics = watch.metrics();
    let expected = BTreeMap::from([
        // The batch's checkout, then the settlement's, which timed out.
        (metric("db.client.connection.wait_time", &[]), 2.0),
        (metric("db.client.connection.timeouts", &[]), 1.0),
        (metric("db.client.connection.count", &[("db.client.connection.state", "idle")]), 0.0),
        (metric("db.client.connection.count", &[("db.client.connection.state", "used")]), 1.0),
        (metric("pgbatch.settlements", &[("pgbatch.settled_as", "unknown")]), 1.0),
        duration("unknown", Some("outcome_unknown")),
        batches("unknown", "pooled"),
    ]);
    assert_eq!(metrics, expected);
    no_secret(&spans, &metrics);
}

/// `COMMIT` never reached the server: the settlement fences the key, and the batch is
/// replayed under the fence and commits. Each step is counted once.
#[tokio::test]
async fn a_fenced_key_and_its_replay_are_counted() {
    let h = Harness::new().await;
    idempotency::install(&h.pool, idempotency::DEFAULT_TABLE).await.unwrap();
    let (proxy, pool) = quick_pool_behind_proxy(&h).await;
    let watch = Watch::install();
    proxy.arm(Fault::CutBeforeClientSends { pattern: b"COMMIT\0".to_vec() });
    let mut batch = Batch::new();
    batch.idempotency_key(IdempotencyKey::new("telemetry-fenced"));
    batch.push(insert_note(1, SECRET));
    let committed = batch.run(&pool).await.expect("replayed under the fence, and committed");
    assert_eq!(committed.attempts(), 2);

    let spans = watch.spans();
    let run = only_span(&spans, "pgbatch.run");
    assert_eq!((run["outcome"].as_str(), run["settled"].as_str(), run["attempt"].as_str()), ("committed", "true", "2"));
    let metrics = watch.metrics();
    for (name, count) in [
        (metric("pgbatch.settlements", &[("pgbatch.settled_as", "not_committed")]), 1.0),
        (metric("pgbatch.keys_fenced", &[]), 1.0),
        (metric("pgbatch.replays", &[("pgbatch.replay", "after_settlement")]), 1.0),
        batches("committed", "pooled"),
        duration("committed", None),
    ] {
        assert_eq!(metrics.get(&name), Some(&count), "{name}: {metrics:#?}");
    }
    assert_eq!(metrics.keys().filter(|name| name.starts_with("pgbatch.")).count(), 4, "{metrics:#?}");
    no_secret(&spans, &metrics);
}
