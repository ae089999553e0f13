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

impl Captured {
    /// Captures debug-level events and span closings of this thread until the guard drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(self.clone())
            .with_span_events(FmtSpan::CLOSE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn a_run_is_a_span_with_its_outcome_and_no_bind_values() {
    let h = Harness::new().await;
    let logs = Captured::default();
    let _default = logs.install();

    let mut batch = Batch::new();
    batch.retry(RetryPolicy::never());
    batch.push(insert_note(1, "a-secret-in-a-bind")).label("insert note");
    // The server's message for this failure quotes the offending value.
    batch.push(diesel::sql_query("SELECT $1::int").bind::<Text, _>("another-secret")).label("bad cast");
    let err = batch.run(&h.pool).await.unwrap_err();
    assert!(err.to_string().contains("another-secret"), "the error itself keeps the server's message: {err}");

    let logs = logs.text();
    assert!(logs.contains("pgbatch.run"), "{logs}");
    assert!(logs.contains("statements=2"), "{logs}");
    assert!(logs.contains("labels=insert note, bad cast"), "{logs}");
    assert!(logs.contains("attempt=1"), "{logs}");
    assert!(logs.contains("round_trip_ms="), "{logs}");
    assert!(logs.contains("outcome=\"not_committed\""), "{logs}");
    assert!(logs.contains("error=statement 1 (\"bad cast\") of 2 failed: server error 22P02"), "{logs}");
    assert!(!logs.contains("secret"), "bind values must not be logged: {logs}");
}

#[tokio::test]
async fn outcomes_are_words_a_log_query_can_filter_on() {
    let h = Harness::new().await;
    let logs = Captured::default();
    let _default = logs.install();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "kept")).label("insert note");
    batch.run(&h.pool).await.unwrap();
    let logs = logs.text();
    let run = logs.lines().find(|line| line.contains("pgbatch.run")).expect("the run's span");
    assert!(run.contains("outcome=\"committed\"") && run.contains("settled=false"), "{logs}");
    assert!(!run.contains("error="), "a committed run has no error field: {logs}");
}

#[tokio::test]
async fn two_phase_batches_have_spans_for_both_round_trips() {
    let h = Harness::new().await;
    let logs = Captured::default();
    let _default = logs.install();
    for decision in ["commit", "rollback", "fail"] {
        let mut batch = Batch::new();
        batch.push(insert_note(1, decision)).label("insert note");
        if decision == "fail" {
            batch.push(insert_note(999_999, "no such account")).label("orphan note");
            batch.prepare(&h.pool).await.unwrap_err();
            continue;
        }
        let prepared = batch.prepare(&h.pool).await.unwrap();
        match decision {
            "commit" => drop(prepared.commit().await.unwrap()),
            _ => prepared.rollback().await.unwrap(),
        }
    }
    let logs = logs.text();
    let lines = |name: &str| logs.lines().filter(|line| line.contains(name)).map(str::to_owned).collect::<Vec<_>>();
    let (prepares, decisions) = (lines("pgbatch.prepare"), lines("pgbatch.decide"));
    assert_eq!(prepares.len(), 3, "{logs}");
    assert!(prepares[..2].iter().all(|l| l.contains("outcome=\"open\"") && l.contains("labels=insert note")), "{logs}");
    assert!(prepares[2].contains("outcome=\"not_committed\"") && prepares[2].contains("error=statement 1"), "{logs}");
    assert_eq!(decisions.len(), 2, "{logs}");
    assert!(decisions[0].contains("decision=\"commit\"") && decisions[0].contains("outcome=\"committed\""), "{logs}");
    assert!(decisions[1].contains("decision=\"rollback\"") && decisions[1].contains("outcome=\"rolled_back\""));
    assert!(decisions.iter().all(|line| line.contains("round_trip_ms=")), "{logs}");
}
