//! Scenario B1 under crashes: the `upload_and_bill` example run as a child process and
//! killed with SIGKILL at every step boundary and at random moments, hundreds of times;
//! then recovered and audited. The books must balance: bytes billed equal bytes stored, no
//! object without a row, no row without its object, no upload billed twice.
//!
//! 10 rounds run, 30 with `PGBATCH_TEST_SIZE=full` (what CI runs), or what
//! `PGBATCH_CRASH_ROUNDS` says; each round kills one upload at each of the six step
//! boundaries and six at random moments.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgbatch_testing::TestDatabase;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PAUSE_POINTS: [&str; 6] =
    ["before-intent", "after-intent", "during-upload", "after-upload", "during-completion", "after-completion"];

/// The example's binary: built next to this test by `cargo test`; built now when missing
/// or older than its source (a run of this test target alone does not build examples).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/effects-<hash> -> target/<profile>/examples/upload_and_bill
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("a target directory");
    let binary = profile_dir.join("examples").join(format!("upload_and_bill{}", std::env::consts::EXE_SUFFIX));
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/upload_and_bill.rs");
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&binary) < modified(&source) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", "upload_and_bill"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the upload_and_bill example failed");
    }
    binary
}

struct Run {
    binary: PathBuf,
    url: String,
    store: PathBuf,
}

impl Run {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("DATABASE_URL", &self.url)
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    fn upload(&self, customer: &str, pause_at: Option<&str>) -> Child {
        let bytes = rand::rng().random_range(1..20_000).to_string();
        let mut args = vec!["upload", "--customer", customer, "--bytes", &bytes];
        if let Some(point) = pause_at {
            args.extend(["--pause-at", point]);
        }
        self.command(&args).spawn().expect("the example starts")
    }

    /// Runs a command to its end: its exit success and its stdout.
    async fn output(&self, args: &[&str]) -> (bool, String) {
        let output = self.command(args).output().await.expect("the example runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned() + &stderr)
    }

    /// Sweeps until a sweep finds nothing stale.
    async fn recover(&self) {
        for _ in 0..50 {
            let (ok, output) = self.output(&["recover", "--older-than", "0"]).await;
            assert!(ok, "recover failed: {output}");
            assert!(!output.contains("failed=1") && !output.contains("lost=1"), "{output}");
            if output.contains("claimed=0 ") {
                return;
            }
        }
        panic!("recovery never ran out of stale intents");
    }
}

/// Kills `child` once it reports that it paused at `point`.
async fn kill_at_pause(mut child: Child, point: &str) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("the child's stdout") {
            if line == format!("paused at {point}") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the upload reaches its pause point within a minute");
    if !paused {
        let output = child.wait_with_output().await.expect("the child's output");
        panic!("the upload ended before pausing at {point}: {}", String::from_utf8_lossy(&output.stderr));
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("the killed child is reaped");
}

/// Kills `child` after `delay`, wherever it is (it may have finished already).
async fn kill_after(mut child: Child, delay: Duration) {
    tokio::time::sleep(delay).await;
    let _ = child.start_kill();
    let status = child.wait().await.expect("the child is reaped");
    if status.success() || status.code().is_none() {
        return; // finished in time, or killed
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    panic!("an upload failed on its own: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_killed_at_every_step_and_at_random_leave_balanced_books_after_recovery() {
    let rounds: usize = pgbatch_testing::TestSize::from_env().pick("PGBATCH_CRASH_ROUNDS", 10, 30);
    let db = TestDatabase::create().await.expect("a test database");
    let store = std::env::temp_dir().join(format!("pgbatch-upload-crash-{}", std::process::id()));
    let run = Run { binary: example_binary(), url: db.url(), store: store.clone() };

    // A clean upload first: it creates the tables, and tells how long a whole run takes.
    let started = Instant::now();
    let (ok, output) = run.output(&["upload", "--customer", "first", "--bytes", "100"]).await;
    assert!(ok, "a clean upload: {output}");
    let whole_run = started.elapsed();

    let mut kills = 0;
    for round in 0..rounds {
        let customer = format!("customer-{}", round % 3);
        let mut children = Vec::new();
        for point in PAUSE_POINTS {
            let child = run.upload(&customer, Some(point));
            children.push(tokio::spawn(kill_at_pause(child, point)));
        }
        for _ in 0..PAUSE_POINTS.len() {
            let child = run.upload(&customer, None);
            let delay = whole_run.mul_f64(rand::rng().random_range(0.0..1.5));
            children.push(tokio::spawn(kill_after(child, delay)));
        }
        kills += children.len();
        for child in children {
            child.await.expect("a kill task");
        }
        // Recover every few rounds, so that sweeps also meet intents left since the last.
        if round % 4 == 3 {
            run.recover().await;
        }
    }
    run.recover().await;

    let (balanced, audit) = run.output(&["audit"]).await;
    println!("upload-crash: kills={kills} {}", audit.trim());
    assert!(balanced, "the books balance after recovery: {audit}");

    // Nothing is billed twice: the bill is exactly the sizes of the completed intents,
    // each completed intent has exactly one file row, and nothing is left pending.
    let client = db.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(sum(total_bytes), 0) FROM customer)::bigint, \
             (SELECT coalesce(sum((payload->>'size')::bigint), 0) FROM pgbatch_intent WHERE state = 'done')::bigint, \
             (SELECT count(*) FROM pgbatch_intent i WHERE state = 'done' AND \
                 (SELECT count(*) FROM file f WHERE f.object_key = i.key) <> 1), \
             (SELECT count(*) FROM file f WHERE NOT EXISTS \
                 (SELECT 1 FROM pgbatch_intent i WHERE i.key = f.object_key AND i.state = 'done')), \
             (SELECT count(*) FROM pgbatch_intent WHERE state = 'pending')",
            &[],
        )
        .await
        .unwrap();
    let (billed, done_bytes, done_without_one_row, rows_without_done, pending): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(billed, done_bytes, "billed exactly the completed uploads");
    assert_eq!(done_without_one_row, 0, "every completed upload has exactly one file row");
    assert_eq!(rows_without_done, 0, "every file row belongs to a completed upload");
    assert_eq!(pending, 0, "recovery left nothing pending");
    let _ = std::fs::remove_dir_all(&store);
}
