//! What the fault tests share: a database with a small control-plane schema, a batch that
//! writes three rows that must land together, and the checks every case ends with.

use std::io::Write;

use std::time::{Duration, Instant};

use diesel::prelude::*;
use pgbatch::idempotency::{self, Resolution};
use pgbatch::{Batch, ConnectionManager, Error, IdempotencyKey};
use pgbatch_testing::TestDatabase;

pub use pgbatch::Pool;

diesel::table! {
    project (tag) {
        tag -> Text,
        silo -> Int4,
    }
}

diesel::table! {
    counter (silo) {
        silo -> Int4,
        projects -> Int8,
    }
}

diesel::table! {
    ledger (tag) {
        tag -> Text,
    }
}

pub const SCHEMA: &str = "
    CREATE TABLE project (tag text PRIMARY KEY, silo int NOT NULL);
    CREATE TABLE counter (silo int PRIMARY KEY, projects bigint NOT NULL);
    CREATE TABLE ledger (tag text PRIMARY KEY);
    INSERT INTO counter VALUES (1, 0), (2, 0);
";

/// A database with [`SCHEMA`] and the idempotency marker table, an inspection client, and
/// a pool for resolving keys on connections no fault touches.
pub struct Faults {
    pub db: TestDatabase,
    pub client: tokio_postgres::Client,
    pub inspect: Pool,
}

impl Faults {
    pub async fn new() -> Faults {
        Self::with(TestDatabase::create().await.expect("a test database")).await
    }

    /// The same on the server `admin` reaches (a private cluster).
    pub async fn on(admin: &tokio_postgres::Config) -> Faults {
        Self::with(TestDatabase::create_on(admin).await.expect("a test database")).await
    }

    async fn with(db: TestDatabase) -> Faults {
        db.execute(SCHEMA).await.expect("the schema");
        let (client, inspect) = Self::inspectors(&db).await;
        idempotency::install(&inspect, idempotency::DEFAULT_TABLE).await.expect("the marker table");
        Faults { db, client, inspect }
    }

    async fn inspectors(db: &TestDatabase) -> (tokio_postgres::Client, Pool) {
        let client = db.connect().await.expect("an inspection connection");
        let inspect = db.pool(2).await.expect("an inspection pool");
        (client, inspect)
    }

    /// New inspection connections, after the server restarted.
    pub async fn reconnect(&mut self) {
        (self.client, self.inspect) = Self::inspectors(&self.db).await;
    }

    /// Waits (up to 10 s) until no backend named `application_name` is running a statement
    /// or sits inside a transaction: whatever a fault left the server doing has ended.
    /// Returns false if one is still inside a transaction then.
    pub async fn settle(&self, application_name: &str) -> bool {
        let busy = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}' \
             AND (state = 'active' OR state LIKE 'idle in transaction%')"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(&busy).await > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// A pool whose connections carry `application_name` (so that they can be found and
    /// cancelled) and `options`.
    pub async fn pool(&self, application_name: &str, options: Option<&str>, size: u32) -> Pool {
        bb8::Pool::builder()
            .max_size(size)
            .build(ConnectionManager::new(self.config(application_name, options)))
            .await
            .unwrap()
    }

    pub fn config(&self, application_name: &str, options: Option<&str>) -> tokio_postgres::Config {
        let mut config = self.db.config().clone();
        config.application_name(application_name);
        if let Some(options) = options {
            config.options(options);
        }
        config
    }

    pub async fn count(&self, sql: &str) -> i64 {
        pgbatch_testing::count(&self.client, sql).await
    }

    /// Backends of this database inside a transaction (idle in it, or waiting mid-pipeline
    /// for the rest of one), besides the inspection connection.
    pub async fn leaked_transactions_in_database(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
        .await
    }

    /// Backends named `application_name` left inside a transaction.
    pub async fn leaked_transactions(&self, application_name: &str) -> i64 {
        self.count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}' \
             AND state LIKE 'idle in transaction%'"
        ))
        .await
    }
}

/// C1 in miniature: guard the silo's counter, create a project, count it, log it. Three
/// writes that must land together.
pub fn create_project(tag: &str, silo: i32) -> Batch {
    let mut batch = Batch::new();
    push_create_project(&mut batch, tag, silo);
    batch
}

/// [`create_project`]'s statements, pushed onto `batch`.
pub fn push_create_project(batch: &mut Batch, tag: &str, silo: i32) {
    batch.guard_exists(counter::table.find(silo).select(counter::silo)).label("silo exists");
    batch
        .push(diesel::insert_into(project::table).values((project::tag.eq(tag.to_owned()), project::silo.eq(silo))))
        .label("insert project");
    batch
        .push(diesel::update(counter::table.find(silo)).set(counter::projects.eq(counter::projects + 1)))
        .label("count project")
        .expect_rows(1);
    batch.push(diesel::insert_into(ledger::table).values(ledger::tag.eq(tag.to_owned()))).label("log project");
}

/// What a run of [`create_project`] said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Committed,
    /// Not committed, with the error that said so.
    NotCommitted(String),
    Unknown(String),
}

impl Verdict {
    pub fn of<T>(result: &Result<T, Error>) -> Verdict {
        match result {
            // Every key is used once: "already committed" is this call's own run, settled
            // by pgbatch after its answer was lost.
            Ok(_) | Err(Error::AlreadyCommitted(_)) => Verdict::Committed,
            Err(error) if error.may_have_committed() => Verdict::Unknown(error.to_string()),
            Err(error) => Verdict::NotCommitted(error.to_string()),
        }
    }
}

/// Tallies of verdicts checked against the database.
#[derive(Debug, Default)]
pub struct Tally {
    pub batches: usize,
    pub committed: usize,
    pub not_committed: usize,
    pub unknown: usize,
    pub partial_states: usize,
    pub misreports: usize,
    /// The first misreported batches, with what they said.
    pub examples: Vec<String>,
}

impl Tally {
    /// Checks every `(tag, verdict)` against the rows: a project and its log entry exist
    /// together or not at all, and the verdict says which. Also checks that the counters
    /// equal the projects they count.
    pub async fn check(faults: &Faults, runs: &[(String, Verdict)]) -> Tally {
        let present = |sql: &str| {
            let sql = sql.to_owned();
            async move {
                faults
                    .client
                    .query(&sql, &[])
                    .await
                    .expect("the rows")
                    .iter()
                    .map(|row| row.get::<_, String>(0))
                    .collect::<std::collections::HashSet<_>>()
            }
        };
        let projects = present("SELECT tag FROM project").await;
        let logged = present("SELECT tag FROM ledger").await;
        let mut tally = Tally { batches: runs.len(), ..Tally::default() };
        for (tag, verdict) in runs {
            let (project, log) = (projects.contains(tag), logged.contains(tag));
            if project != log {
                tally.partial_states += 1;
            }
            let misreported = match verdict {
                Verdict::Committed => {
                    tally.committed += 1;
                    !project
                }
                Verdict::NotCommitted(_) => {
                    tally.not_committed += 1;
                    project || log
                }
                Verdict::Unknown(_) => {
                    tally.unknown += 1;
                    false
                }
            };
            if misreported {
                tally.misreports += 1;
                if tally.examples.len() < 5 {
                    tally.examples.push(format!("{tag}: {verdict:?} but project={project} log={log}"));
                }
            }
        }
        let uncounted = faults
            .count("SELECT count(*) FROM counter c WHERE projects <> (SELECT count(*) FROM project p WHERE p.silo = c.silo)")
            .await;
        tally.partial_states += uncounted as usize;
        tally
    }

    /// Prints the tally as one line, past the test harness's output capture.
    pub fn report(&self, name: &str, leaked_transactions: i64) {
        let line = format!(
            "{name}: batches={} committed={} not_committed={} unknown={} partial_states={} misreports={} leaked_transactions={leaked_transactions}",
            self.batches, self.committed, self.not_committed, self.unknown, self.partial_states, self.misreports,
        );
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// The sweeps' representative batch: an idempotency key, a guard, an insert with
/// `RETURNING`, a counted update (a row-count guard), a log entry and a read, optionally
/// sleeping in the middle so that a fault has time to land there.
pub fn keyed(tag: &str, sleep: Option<f64>) -> (Batch, IdempotencyKey) {
    let key = IdempotencyKey::new(tag);
    let mut batch = Batch::new();
    batch.idempotency_key(key.clone());
    batch.guard_exists(counter::table.find(1).select(counter::silo)).label("silo exists");
    batch
        .push(
            diesel::insert_into(project::table)
                .values((project::tag.eq(tag.to_owned()), project::silo.eq(1)))
                .returning(project::tag),
        )
        .label("insert project");
    if let Some(seconds) = sleep {
        batch
            .push(diesel::sql_query("SELECT pg_sleep($1)").bind::<diesel::sql_types::Double, _>(seconds))
            .label("sleep");
    }
    batch
        .push(diesel::update(counter::table.find(1)).set(counter::projects.eq(counter::projects + 1)))
        .label("count project")
        .expect_rows(1);
    batch.push(diesel::insert_into(ledger::table).values(ledger::tag.eq(tag.to_owned()))).label("log project");
    batch.push(project::table.count()).label("read back");
    (batch, key)
}

/// The sweeps' tallies, and the check every case ends with.
#[derive(Debug, Default)]
pub struct Sweep {
    pub cases: usize,
    pub partial_states: usize,
    pub misreports: usize,
    pub leaked_transactions: usize,
    pub unsettled: usize,
    pub examples: Vec<String>,
}

impl Sweep {
    /// Judges one case once the server is done with it: the batch is all there or not at
    /// all, the verdict says which (an unknown one is settled by resolving the key), and
    /// no backend named `application_name` is left inside a transaction.
    pub async fn judge(&mut self, faults: &Faults, application_name: &str, tag: &str, verdict: &Verdict) {
        self.cases += 1;
        let settled = faults.settle(application_name).await;
        let present = |table: &str| {
            let sql = format!("SELECT count(*) FROM {table} WHERE tag = '{tag}'");
            async move { faults.count(&sql).await > 0 }
        };
        let (project, log) = (present("project").await, present("ledger").await);
        let mut problem = None;
        if project != log {
            self.partial_states += 1;
            problem = Some("partial");
        }
        match verdict {
            Verdict::Committed if !project => {
                self.misreports += 1;
                problem = Some("committed but absent");
            }
            Verdict::NotCommitted(_) if project || log => {
                self.misreports += 1;
                problem = Some("not committed but present");
            }
            Verdict::Unknown(_) => match idempotency::resolve(&faults.inspect, &IdempotencyKey::new(tag)).await {
                Ok(Resolution::Committed { .. }) if project => {}
                Ok(Resolution::NotCommitted { .. }) if !project => {}
                Ok(_) => {
                    self.misreports += 1;
                    problem = Some("resolved against the rows");
                }
                Err(_) => {
                    self.unsettled += 1;
                    problem = Some("unsettled");
                }
            },
            _ => {}
        }
        if !settled {
            self.leaked_transactions += 1;
            problem = Some("left inside a transaction");
        }
        if let Some(problem) = problem
            && self.examples.len() < 8
        {
            self.examples.push(format!("{tag}: {problem}: {verdict:?} project={project} log={log}"));
        }
    }

    /// Adds another sweep's tallies.
    pub fn add(&mut self, other: Sweep) {
        self.cases += other.cases;
        self.partial_states += other.partial_states;
        self.misreports += other.misreports;
        self.leaked_transactions += other.leaked_transactions;
        self.unsettled += other.unsettled;
        self.examples.extend(other.examples);
    }

    /// Prints the one summary line and fails on any non-zero count.
    pub fn report_and_assert(&self, name: &str) {
        let line = format!(
            "{name}: cases={} partial_states={} misreports={} leaked_transactions={} unsettled={}",
            self.cases, self.partial_states, self.misreports, self.leaked_transactions, self.unsettled
        );
        let _ = writeln!(std::io::stderr(), "{line}");
        let clean = self.partial_states + self.misreports + self.leaked_transactions + self.unsettled == 0;
        assert!(clean, "{line}\n{}", self.examples.join("\n"));
    }
}
