//! The pool's hooks: statements every new connection runs once, and an observer of every
//! statement of every run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgbatch::error::PoolError;
use pgbatch::{Batch, ConnectError, ConnectionManager, Error, Observed, RetryPolicy, StatementEvent};

use crate::common::*;

#[tokio::test]
async fn session_setup_runs_on_every_new_connection() {
    let h = Harness::new().await;
    let manager = ConnectionManager::new(h.db.config().clone())
        .session_setup(["SET application_name = 'hooked'", "SET lock_timeout = '1234ms'"]);
    let pool = bb8::Pool::builder().max_size(2).build(manager).await.unwrap();
    let mut batch = Batch::new();
    let text = |sql: &str| diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(sql));
    let name = batch.push(text("current_setting('application_name')")).one::<String>();
    let timeout = batch.push(text("current_setting('lock_timeout')")).one::<String>();
    let seen = batch.run(&pool).await.unwrap();
    assert_eq!((seen.get(&name).unwrap().as_str(), seen.get(&timeout).unwrap().as_str()), ("hooked", "1234ms"));
}

#[tokio::test]
async fn a_failing_session_setup_fails_the_connection_with_the_servers_reason() {
    let h = Harness::new().await;
    let manager = ConnectionManager::new(h.db.config().clone()).session_setup(["SET no_such_setting = 1"]);
    let pool = bb8::Pool::builder().connection_timeout(Duration::from_millis(500)).build_unchecked(manager);
    let mut batch = Batch::new();
    batch.push(insert_note(1, "never"));
    let err = batch.run(&pool).await.unwrap_err();
    let Error::Pool(PoolError::TimedOut { last_connect_error: Some(cause) }) = &err else { panic!("{err}") };
    assert!(matches!(&**cause, ConnectError::Server { error, .. } if error.code().code() == "42704"), "{cause}");
}

/// `(label, outcome, attempt)` of every event heard.
type Heard = Arc<Mutex<Vec<(Option<String>, Observed, u32)>>>;

/// An observer that keeps what it hears.
fn recorder() -> (Heard, impl Fn(&StatementEvent<'_>) + Send + Sync + 'static) {
    let seen: Arc<Mutex<Vec<_>>> = Arc::default();
    let keep = Arc::clone(&seen);
    (seen, move |event: &StatementEvent<'_>| {
        assert!(event.elapsed > Duration::ZERO);
        keep.lock().unwrap().push((event.label.map(str::to_owned), event.outcome, event.attempt));
    })
}

#[tokio::test]
async fn the_observer_hears_every_statement_of_every_run() {
    let h = Harness::new().await;
    let (seen, observer) = recorder();
    let pool = bb8::Pool::builder()
        .max_size(1)
        .build(
            ConnectionManager::new(h.db.config().clone())
                .observer(observer)
                .retry(RetryPolicy::default().base_delay(Duration::from_millis(1))),
        )
        .await
        .unwrap();
    let label = |l: &str| Some(l.to_owned());

    let mut batch = Batch::new();
    batch.push(insert_note(1, "a")).label("first");
    batch.push(insert_note(1, "b")).label("second");
    batch.run(&pool).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(label("first"), Observed::Committed, 1), (label("second"), Observed::Committed, 1)]
    );
    seen.lock().unwrap().clear();

    let mut batch = Batch::new();
    batch.push(insert_note(1, "c")).label("ran");
    batch.push(insert_note(404, "orphan")).label("fails");
    batch.push(insert_note(1, "d"));
    batch.run(&pool).await.unwrap_err();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (label("ran"), Observed::RolledBack, 1),
            (label("fails"), Observed::Failed, 1),
            (None, Observed::Skipped, 1)
        ]
    );
    seen.lock().unwrap().clear();

    // A serialization failure on the first attempt, then a commit: both runs are heard.
    h.client.batch_execute("CREATE SEQUENCE attempts").await.unwrap();
    let mut batch = Batch::new();
    batch
        .push(diesel::sql_query(
            "DO $$ BEGIN IF nextval('attempts') = 1 THEN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END IF; END $$",
        ))
        .label("conflicts once");
    let committed = batch.run(&pool).await.unwrap();
    assert_eq!(committed.attempts(), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(label("conflicts once"), Observed::Failed, 1), (label("conflicts once"), Observed::Committed, 2)]
    );
}

/// A two-phase batch is heard of once, with the decision: committed, rolled back, dropped
/// undecided, or failed in its first round trip.
#[tokio::test]
async fn the_observer_hears_every_statement_of_a_two_phase_batch() {
    let h = Harness::new().await;
    let (seen, observer) = recorder();
    let pool = bb8::Pool::builder()
        .max_size(1)
        .build(ConnectionManager::new(h.db.config().clone()).observer(observer))
        .await
        .unwrap();
    let label = |l: &str| Some(l.to_owned());
    let two = |first: &str| {
        let mut batch = Batch::new();
        batch.push(insert_note(1, first)).label("first");
        batch.push(insert_note(1, "second")).label("second");
        batch
    };
    let heard = |outcome| vec![(label("first"), outcome, 1), (label("second"), outcome, 1)];

    let prepared = two("committed").prepare(&pool).await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "nothing is heard before the decision");
    prepared.commit().await.unwrap();
    assert_eq!(std::mem::take(&mut *seen.lock().unwrap()), heard(Observed::Committed));

    two("rolled back").prepare(&pool).await.unwrap().rollback().await.unwrap();
    assert_eq!(std::mem::take(&mut *seen.lock().unwrap()), heard(Observed::RolledBack));

    drop(two("dropped").prepare(&pool).await.unwrap());
    assert_eq!(std::mem::take(&mut *seen.lock().unwrap()), heard(Observed::RolledBack));

    let mut failing = Batch::new();
    failing.push(insert_note(1, "ran")).label("ran");
    failing.push(insert_note(404, "orphan")).label("fails");
    failing.prepare(&pool).await.unwrap_err();
    assert_eq!(
        std::mem::take(&mut *seen.lock().unwrap()),
        vec![(label("ran"), Observed::RolledBack, 1), (label("fails"), Observed::Failed, 1)]
    );
}
