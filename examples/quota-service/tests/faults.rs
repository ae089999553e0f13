//! The service's operation under faults, with `pgbatch-testing`'s fault helpers: a
//! connection cut before or after `COMMIT`, a future dropped at every point. Whatever
//! happens, a project and its count are there together or not at all, the error says which,
//! and nothing is left inside a transaction.

use std::time::Duration;

use pgbatch_testing::{Cut, TestDatabase, count, drop_after_polls};
use quota_service::{CreateProjectError, create_project};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

async fn service_database() -> TestDatabase {
    let (db, _) = TestDatabase::create_migrated(MIGRATIONS).await.expect("a migrated database");
    db.execute("INSERT INTO quota (tenant, projects_max) VALUES ('acme', 100)").await.unwrap();
    db
}

/// (projects, projects counted), as another session sees them.
async fn projects(db: &TestDatabase) -> (i64, i64) {
    let client = db.connect().await.unwrap();
    let made = count(&client, "SELECT count(*) FROM project").await;
    let counted = count(&client, "SELECT projects_used FROM quota WHERE tenant = 'acme'").await;
    (made, counted)
}

/// COMMIT never reaches the server. The client wrote it into its socket, so it cannot know
/// whether it arrived: unknown is the honest answer, never success.
#[tokio::test]
async fn cut_before_commit_nothing_is_written_and_success_is_never_claimed() {
    let db = service_database().await;
    let faulty = db.pool_with_cut(Cut::BeforeCommit).await.unwrap();
    let error = create_project(faulty.pool(), "acme", "web").await.unwrap_err();
    assert!(matches!(error, CreateProjectError::Database(_)), "{error}");
    assert_eq!(db.transactions_left(Duration::from_secs(5)).await, 0);
    assert_eq!(projects(&db).await, (0, 0));
}

#[tokio::test]
async fn cut_after_commit_the_outcome_is_unknown_and_the_rows_are_whole() {
    let db = service_database().await;
    let faulty = db.pool_with_cut(Cut::AfterCommit).await.unwrap();
    let error = create_project(faulty.pool(), "acme", "web").await.unwrap_err();
    let CreateProjectError::Database(error) = error else { panic!("{error}") };
    assert!(error.may_have_committed(), "the answer was lost: {error}");
    assert_eq!(db.transactions_left(Duration::from_secs(5)).await, 0);
    assert_eq!(projects(&db).await, (1, 1), "the server committed all of it");
}

#[tokio::test]
async fn a_create_dropped_at_any_point_is_all_or_nothing() {
    let db = service_database().await;
    let pool = db.pool(1).await.unwrap();
    for polls in 0..25 {
        drop_after_polls(create_project(&pool, "acme", &format!("p{polls}")), polls).await;
        assert_eq!(db.transactions_left(Duration::from_secs(5)).await, 0, "after {polls} polls");
        let (made, counted) = projects(&db).await;
        assert_eq!(made, counted, "after {polls} polls: a project and its count, together");
    }
    create_project(&pool, "acme", "after the drops").await.expect("the pool serves on");
}
