//! Every run is a span with its outcome; bind values never reach the logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use diesel::sql_types::Text;
use pgbatch::{Batch, RetryPolicy};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn a_run_is_a_span_with_its_outcome_and_no_bind_values() {
    let h = Harness::new().await;
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(logs.clone())
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let mut batch = Batch::new();
    batch.retry(RetryPolicy::never());
    batch.push(insert_note(1, "a-secret-in-a-bind")).label("insert note");
    // The server's message for this failure quotes the offending value.
    batch.push(diesel::sql_query("SELECT $1::int").bind::<Text, _>("another-secret")).label("bad cast");
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(err.to_string().contains("another-secret"), "the error itself keeps the server's message: {err}");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("pgbatch.run"), "{logs}");
    assert!(logs.contains("statements=2"), "{logs}");
    assert!(logs.contains("labels=insert note, bad cast"), "{logs}");
    assert!(logs.contains("attempt=1"), "{logs}");
    assert!(logs.contains("round_trip_ms="), "{logs}");
    assert!(logs.contains("outcome=statement 1 (\"bad cast\") of 2 failed: server error 22P02"), "{logs}");
    assert!(!logs.contains("secret"), "bind values must not be logged: {logs}");
}
