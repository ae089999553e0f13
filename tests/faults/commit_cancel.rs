//! A cancel request that lands on `COMMIT`: nothing is committed, the error says so, and
//! the pooled connection it happened on runs the next batch.

use std::time::Duration;

use pgbatch::{Cause, Error};

use crate::support::*;

/// A deferred constraint trigger that sleeps: `COMMIT` runs it, so a cancel sent while it
/// sleeps lands on `COMMIT` and nowhere else.
const SLOW_COMMIT: &str = "
    CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON ledger
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_lands_on_commit_commits_nothing_and_the_connection_runs_on() {
    let faults = Faults::new().await;
    faults.client.batch_execute(SLOW_COMMIT).await.unwrap();
    let pool = faults.pool("pgbatch-commit-cancel", None, 1).await;
    let pid = |connection: &pgbatch::Connection| connection.cancel_token().process_id();
    let before = pid(&pool.get().await.unwrap());

    let canceller = async {
        // Wait until the backend is inside COMMIT's trigger, then cancel it.
        loop {
            let sleeping = faults
                .count(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = {before} AND wait_event = 'PgSleep'"
                ))
                .await;
            if sleeping > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        faults.count(&format!("SELECT count(*) FROM pg_stat_activity WHERE pg_cancel_backend({before})")).await;
    };
    // Bounded, so that a COMMIT that never sleeps fails the test instead of hanging it.
    let canceller = async {
        tokio::time::timeout(Duration::from_secs(20), canceller).await.expect("COMMIT's trigger never slept");
    };
    let batch = create_project("cancelled", 1);
    let (result, ()) = tokio::join!(batch.run(&pool), canceller);
    let err = result.expect_err("the cancel landed on COMMIT");
    let Error::Commit(failure) = &err else { panic!("reported against COMMIT, not {err}") };
    assert!(matches!(failure.cause(), Cause::Server(e) if e.code().code() == "57014"), "{failure}");
    assert!(!err.may_have_committed());
    assert_eq!(faults.count("SELECT count(*) FROM project").await, 0, "nothing committed");
    assert_eq!(faults.count("SELECT projects FROM counter WHERE silo = 1").await, 0);

    // The same pooled connection, clean again, runs the next, unrelated batch.
    faults.client.batch_execute("DROP TRIGGER slow_commit ON ledger").await.unwrap();
    create_project("next", 1).run(&pool).await.expect("the next batch on the same connection");
    assert_eq!(pid(&pool.get().await.unwrap()), before, "the connection was reused, not replaced");
    assert_eq!(faults.leaked_transactions("pgbatch-commit-cancel").await, 0);
}
