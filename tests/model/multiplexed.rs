//! The model test run by many concurrent callers over a [`Multiplexed`] client of two
//! connections: each caller owns a range of ids and runs random batches one after another,
//! checking each verdict and result against its own model, while the other callers'
//! batches are pipelined on the same connections. The table must end as the union of the
//! callers' models predicts.
//!
//! `PGBATCH_MODEL_CASES` sets the batches per caller (a sixteenth of it, 125 by default).

use pgbatch::{ConnectionManager, Error, Multiplexed};
use pgbatch_testing::TestDatabase;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::*;

const CALLERS: i32 = 16;

/// `op` with its id moved into caller `caller`'s range.
fn owned_by(op: &Op, caller: i32) -> Op {
    let base = caller * 10;
    match *op {
        Op::Insert { id, qty } => Op::Insert { id: base + id, qty },
        Op::Update { id, delta } => Op::Update { id: base + id, delta },
        Op::Delete { id } => Op::Delete { id: base + id },
        Op::Upsert { id, qty } => Op::Upsert { id: base + id, qty },
        Op::Read { id } => Op::Read { id: base + id },
        Op::GuardExists { id } => Op::GuardExists { id: base + id },
        Op::Touch { id } => Op::Touch { id: base + id },
        Op::SetLocal => Op::SetLocal,
    }
}

/// Runs `batches` random batches as caller `caller`; returns its model's final table and
/// how many batches committed and failed.
async fn caller(client: Multiplexed, caller: i32, seed: u64, batches: u32) -> Result<(Table, usize, usize), String> {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&(seed ^ caller as u64).to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    // Shorter than the single-caller test's batches: the table is never reset here, and
    // shorter batches keep a good share committing as it drifts.
    let strategy = proptest::collection::vec(op(), 1..=12);
    let (mut table, mut committed, mut failed) = (Table::new(), 0, 0);
    for case in 0..batches {
        let ops: Vec<Op> = strategy.new_tree(&mut runner).map_err(|e| e.to_string())?.current();
        let ops: Vec<Op> = ops.iter().map(|op| owned_by(op, caller)).collect();
        let (batch, handles) = batch(&ops);
        let result = batch.run_multiplexed(&client).await;
        let context = || format!("seed {seed}, caller {caller}, batch {case}: {ops:?}");
        match (model(&table, &ops), result) {
            (Ok((expected, outs)), Ok(done)) => {
                for (index, (handle, out)) in handles.iter().zip(outs).enumerate() {
                    let seen = match handle {
                        Handle::Affected(h) => Out::Affected(done.get(h).map_err(|e| e.to_string())?),
                        Handle::Read(h) => Out::Read(done.get(h).map_err(|e| e.to_string())?),
                        Handle::Nothing => Out::Nothing,
                    };
                    if seen != out {
                        return Err(format!(
                            "{}: statement {index} returned {seen:?}, the model says {out:?}",
                            context()
                        ));
                    }
                }
                table = expected;
                committed += 1;
            }
            (Err((index, kind)), Err(Error::Statement(failure)))
                if failure.index() == index && failure_of(failure.cause()) == Some(kind) =>
            {
                failed += 1;
            }
            (expected, actual) => {
                return Err(format!("{}: the model says {expected:?}, the batch {actual:?}", context()));
            }
        }
    }
    Ok((table, committed, failed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_batches_of_concurrent_callers_on_two_connections_match_their_models() {
    let db = TestDatabase::create().await.expect("a test database");
    db.execute(SCHEMA).await.expect("the schema");
    let manager = ConnectionManager::new(db.connection_config());
    let client = Multiplexed::builder(manager).connections(2).build().await.expect("a client");
    let batches = (cases() / 16).max(1);
    let seed: u64 = rand::random();
    let mut tasks = Vec::new();
    for id in 0..CALLERS {
        tasks.push(tokio::spawn(caller(client.clone(), id, seed, batches)));
    }
    let (mut expected, mut committed, mut failed) = (Table::new(), 0, 0);
    for task in tasks {
        let (table, c, f) = task.await.unwrap().unwrap_or_else(|failure| panic!("{failure}"));
        expected.extend(table);
        (committed, failed) = (committed + c, failed + f);
    }
    let client = db.connect().await.unwrap();
    let rows = client.query("SELECT id, qty FROM item", &[]).await.expect("the table");
    let after: Table = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(after, expected, "seed {seed}: the table is the union of the callers' models");
    let line = format!(
        "model (multiplexed): callers={CALLERS} batches={} committed={committed} failed={failed} seed={seed}\n",
        batches * CALLERS as u32
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    assert!(committed > 0 && failed > 0, "both paths were exercised");
}
