//! Scenario B1: upload a file to an object store and bill its size, consistently, even when
//! the process dies between any two steps.
//!
//! ```sh
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --example upload_and_bill -- --store /tmp/store upload --customer acme --bytes 4096
//! cargo run --example upload_and_bill -- --store /tmp/store recover --older-than 60
//! cargo run --example upload_and_bill -- --store /tmp/store audit
//! ```
//!
//! No transaction spans PostgreSQL and an object store. An upload therefore runs the intent
//! protocol (see `docs/external-effects.md`):
//!
//! 1. one batch creates the customer if needed and records an intent (`upload`, the object
//!    key, the customer and size);
//! 2. the object is written under a key fresh to this request, so a retry overwrites rather
//!    than duplicates;
//! 3. one batch completes the intent, inserts the file row and adds the size to the
//!    customer's bill: the file becomes visible and billed at the same instant.
//!
//! A crash leaves a pending intent. `recover` sweeps intents older than a threshold: if the
//! object is there, it rolls the upload forward (file row and bill, once); if not, it
//! cancels the intent. `audit` checks the books: bytes billed equal bytes stored, and every
//! object has a row and every row its object.
//!
//! The program uses the database `DATABASE_URL` names as it is, creating its tables if they
//! are missing, so that several runs (and the recovery after a crash) share it. Objects live
//! under `--store DIR` through `object_store`'s local file system; any other backend of that
//! crate (S3, GCS, Azure) works the same way. `--pause-at POINT` stops the upload at a step
//! boundary (printing `paused at POINT`) so that a test can kill it there.

use std::process::ExitCode;
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use pgbatch::intent::{Decision, Intent, IntentError, Intents, SweepOptions};
use pgbatch::{Batch, ConnectionManager, Fragment};

use pgbatch::Pool;
type Failure = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: upload_and_bill --store DIR <command>
commands:
  upload --customer NAME --bytes N [--pause-at POINT]
  recover --older-than SECONDS
  audit
POINT is one of: before-intent, after-intent, during-upload, after-upload, during-completion, after-completion";

/// The step boundaries an upload can be paused at.
const PAUSE_POINTS: [&str; 6] =
    ["before-intent", "after-intent", "during-upload", "after-upload", "during-completion", "after-completion"];

const SCHEMA: [&str; 3] = [
    // Several processes may start at once on an empty database: one creates, the others wait.
    "SELECT pg_advisory_xact_lock(4242)",
    "CREATE TABLE IF NOT EXISTS customer (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, \
     total_bytes bigint NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS file (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customer, \
     object_key text NOT NULL UNIQUE, size bigint NOT NULL)",
];

enum Command {
    Upload { customer: String, bytes: u64, pause_at: Option<String> },
    Recover { older_than: Duration },
    Audit,
}

#[tokio::main]
async fn main() -> ExitCode {
    pgbatch_scenarios::example::init_logging();
    let (store_dir, command) = match parse(std::env::args().skip(1).collect()) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&store_dir, command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("upload_and_bill: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(store_dir: &str, command: Command) -> Result<ExitCode, Failure> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set: point it at the database the runs share")?;
    let config: pgbatch::Config = url.parse()?;
    let pool = bb8::Pool::builder().max_size(2).build(ConnectionManager::new(config)).await?;
    std::fs::create_dir_all(store_dir)?;
    let store = LocalFileSystem::new_with_prefix(store_dir)?;
    let intents = Intents::new();
    install(&pool, &intents).await?;
    match command {
        Command::Upload { customer, bytes, pause_at } => {
            let key = upload(&pool, &store, &intents, &customer, bytes, pause_at.as_deref()).await?;
            println!("uploaded {key}: {bytes} bytes billed to {customer}");
        }
        Command::Recover { older_than } => {
            let options = SweepOptions::default().older_than(older_than);
            let report = intents.sweep(&pool, options, |intent| decide(&store, intent)).await?;
            println!("recovered: {report}");
        }
        Command::Audit => return audit(&pool, &store).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn install(pool: &Pool, intents: &Intents) -> Result<(), Failure> {
    let mut batch = Batch::new();
    for statement in SCHEMA {
        batch.push(diesel::sql_query(statement));
    }
    batch.run(pool).await?;
    intents.install(pool).await?;
    Ok(())
}

/// What an upload intent carries: enough for a sweep to finish it without the request.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Upload {
    customer: String,
    size: u64,
}

async fn upload(
    pool: &Pool,
    store: &LocalFileSystem,
    intents: &Intents,
    customer: &str,
    bytes: u64,
    pause_at: Option<&str>,
) -> Result<String, Failure> {
    let pause = |point: &'static str| pause_if(pause_at, point);
    let key = format!("uploads/{customer}/{}", uuid::Uuid::new_v4());
    let payload = serde_json::to_string(&Upload { customer: customer.to_owned(), size: bytes })?;
    pause("before-intent").await;

    // 1. The customer (if new) and the intent, together.
    let mut batch = Batch::<IntentError>::default();
    batch
        .push(
            diesel::sql_query("INSERT INTO customer (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind::<Text, _>(customer),
        )
        .label("create customer");
    batch.append(intents.record("upload", &key, &payload).0);
    batch.run(pool).await?;
    pause("after-intent").await;

    // 2. The effect: two parts, so that a crash can fall between them.
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    let (first, second) = data.split_at(data.len() / 2);
    let mut writer = store.put_multipart(&Path::from(key.as_str())).await?;
    writer.put_part(PutPayload::from(first.to_vec())).await?;
    pause("during-upload").await;
    writer.put_part(PutPayload::from(second.to_vec())).await?;
    writer.complete().await?;
    pause("after-upload").await;

    // 3. Complete the intent with the file row and the bill, in one batch.
    let mut batch = Batch::<IntentError>::default();
    batch.append(intents.complete("upload", &key));
    batch.append(file_and_bill(customer, &key, bytes));
    if pause_at == Some("during-completion") {
        // Send the batch (one poll writes the whole pipeline), then stop before reading
        // the answer: the server commits, this process never learns it.
        let mut run = std::pin::pin!(batch.run(pool));
        let _ = futures_util::poll!(run.as_mut());
        tokio::time::sleep(Duration::from_millis(100)).await;
        pause("during-completion").await;
    }
    match batch.run(pool).await {
        Ok(_) => {}
        Err(pgbatch::Error::Domain { error: IntentError::Cancelled { .. }, .. }) => {
            // A sweep judged this upload dead and cancelled it: the object is ours to remove.
            store.delete(&Path::from(key.as_str())).await?;
            return Err(format!("upload {key} took too long and was cancelled by a recovery sweep").into());
        }
        Err(error) => return Err(error.into()),
    }
    pause("after-completion").await;
    Ok(key)
}

/// The file row and the bill of an upload: exactly one customer named `customer` each.
fn file_and_bill(customer: &str, key: &str, size: u64) -> Fragment {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut fragment = Fragment::new();
    fragment
        .push(
            diesel::sql_query(
                "INSERT INTO file (customer_id, object_key, size) SELECT id, $2, $3 FROM customer WHERE name = $1",
            )
            .bind::<Text, _>(customer.to_owned())
            .bind::<Text, _>(key.to_owned())
            .bind::<BigInt, _>(size),
        )
        .label("insert file row")
        .expect_rows(1);
    fragment
        .push(
            diesel::sql_query("UPDATE customer SET total_bytes = total_bytes + $2 WHERE name = $1")
                .bind::<Text, _>(customer.to_owned())
                .bind::<BigInt, _>(size),
        )
        .label("bill customer")
        .expect_rows(1);
    fragment
}

/// A sweep's decision for one stale upload: roll forward when the whole object is in the
/// store, compensate (removing whatever is there) when it is not, decide later when the
/// store cannot be asked.
async fn decide(store: &LocalFileSystem, intent: Intent) -> Decision {
    let Ok(upload) = serde_json::from_str::<Upload>(&intent.payload) else {
        eprintln!("intent {} has a payload this program did not write: left alone", intent.id);
        return Decision::Later;
    };
    let path = Path::from(intent.key.as_str());
    match store.head(&path).await {
        Ok(meta) if meta.size == upload.size => {
            Decision::RollForward(file_and_bill(&upload.customer, &intent.key, upload.size))
        }
        Ok(_) => match store.delete(&path).await {
            Ok(()) => Decision::Compensate(Fragment::new()),
            Err(_) => Decision::Later,
        },
        Err(object_store::Error::NotFound { .. }) => Decision::Compensate(Fragment::new()),
        Err(error) => {
            eprintln!("cannot ask the store about {}: {error}; left for a later sweep", intent.key);
            Decision::Later
        }
    }
}

/// Prints `billed=B stored=S orphans=O missing=M`; succeeds only when the books balance.
async fn audit(pool: &Pool, store: &LocalFileSystem) -> Result<ExitCode, Failure> {
    #[derive(diesel::QueryableByName)]
    struct FileRow {
        #[diesel(sql_type = Text)]
        object_key: String,
        #[diesel(sql_type = BigInt)]
        size: i64,
    }
    #[derive(diesel::QueryableByName)]
    struct Totals {
        #[diesel(sql_type = BigInt)]
        billed: i64,
        #[diesel(sql_type = BigInt)]
        customers_off: i64,
    }
    let mut batch = Batch::new();
    batch.read_only();
    let files = batch.push(diesel::sql_query("SELECT object_key, size FROM file")).all::<FileRow>();
    let totals = batch
        .push(diesel::sql_query(
            "SELECT coalesce(sum(total_bytes), 0)::bigint AS billed, \
             count(*) FILTER (WHERE total_bytes <> (SELECT coalesce(sum(size), 0) FROM file WHERE customer_id = c.id)) \
             AS customers_off FROM customer c",
        ))
        .one::<Totals>();
    let committed = batch.run(pool).await?;
    let (files, totals) = (committed.get(&files)?, committed.get(&totals)?);

    let mut objects = std::collections::HashMap::new();
    let mut listing = store.list(None);
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        objects.insert(meta.location.to_string(), meta.size);
    }
    let stored: i64 = files.iter().map(|f| f.size).sum();
    let missing = files.iter().filter(|f| objects.get(&f.object_key) != Some(&(f.size as u64))).count();
    let rows: std::collections::HashSet<&str> = files.iter().map(|f| f.object_key.as_str()).collect();
    let orphans = objects.keys().filter(|key| !rows.contains(key.as_str())).count();
    println!("billed={} stored={stored} orphans={orphans} missing={missing}", totals.billed);
    if totals.customers_off > 0 {
        eprintln!("{} customers are billed for other than the bytes of their files", totals.customers_off);
    }
    let balanced = totals.billed == stored && orphans == 0 && missing == 0 && totals.customers_off == 0;
    Ok(if balanced { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Stops here for good when `point` is where the caller asked to pause.
async fn pause_if(pause_at: Option<&str>, point: &'static str) {
    if pause_at == Some(point) {
        println!("paused at {point}");
        std::future::pending::<()>().await;
    }
}

fn parse(args: Vec<String>) -> Result<(String, Command), String> {
    let mut args = args.into_iter();
    let mut store = None;
    let mut words = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--store" {
            store = Some(args.next().ok_or("--store needs a directory")?);
        } else {
            words.push(arg);
        }
    }
    let store = store.ok_or("--store DIR is required")?;
    let (command, options) = words.split_first().ok_or("a command is required")?;
    let option =
        |name: &str| -> Option<&String> { options.iter().position(|o| o == name).and_then(|i| options.get(i + 1)) };
    let command = match command.as_str() {
        "upload" => {
            let customer = option("--customer").ok_or("upload needs --customer NAME")?.clone();
            let bytes = option("--bytes").ok_or("upload needs --bytes N")?;
            let bytes = bytes.parse().map_err(|_| format!("--bytes takes a whole number, not {bytes:?}"))?;
            let pause_at = option("--pause-at").cloned();
            if let Some(point) = &pause_at
                && !PAUSE_POINTS.contains(&point.as_str())
            {
                return Err(format!("unknown pause point {point:?}"));
            }
            Command::Upload { customer, bytes, pause_at }
        }
        "recover" => {
            let seconds = option("--older-than").ok_or("recover needs --older-than SECONDS")?;
            let seconds: f64 = seconds.parse().map_err(|_| format!("--older-than takes seconds, not {seconds:?}"))?;
            let older_than = Duration::try_from_secs_f64(seconds).map_err(|_| "--older-than must be zero or more")?;
            Command::Recover { older_than }
        }
        "audit" => Command::Audit,
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok((store, command))
}
