//! A randomized model test: random batches of 1 to 30 statements (inserts, updates,
//! deletes, upserts, reads, guards that hold or fail, statements that fail on a constraint,
//! `SET LOCAL`) run against PostgreSQL and against an in-memory model of what must result.
//! A batch that the model says commits must commit with the model's results and leave the
//! model's table; one that the model says fails must fail at the model's statement with the
//! model's kind of cause and change nothing. proptest shrinks a failure to a minimal batch.
//!
//! `PGBATCH_MODEL_CASES` sets the number of cases (2000 by default).

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod concurrent;
mod multiplexed;

use std::collections::BTreeMap;

use diesel::prelude::*;
use pgbatch::{Affected, Batch, Cause, Error, Optional};
use pgbatch_testing::TestDatabase;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

diesel::table! {
    item (id) {
        id -> Int4,
        qty -> Int4,
    }
}

const SCHEMA: &str =
    "CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL CONSTRAINT qty_nonnegative CHECK (qty >= 0))";

/// One statement of a random batch.
#[derive(Debug, Clone)]
enum Op {
    Insert {
        id: i32,
        qty: i32,
    },
    /// `qty = qty + delta` where `id`.
    Update {
        id: i32,
        delta: i32,
    },
    Delete {
        id: i32,
    },
    /// Insert, or set `qty` on conflict.
    Upsert {
        id: i32,
        qty: i32,
    },
    Read {
        id: i32,
    },
    /// A guard that the row exists.
    GuardExists {
        id: i32,
    },
    /// `qty = qty` where `id`, guarded to touch exactly one row.
    Touch {
        id: i32,
    },
    /// A setting that ends with the transaction.
    SetLocal,
}

/// Statements weighted so that a good share of batches commit: most values are valid, and
/// failures (a negative quantity, a duplicate, a guard on a missing row) come now and then.
fn op() -> impl Strategy<Value = Op> {
    let id = 0..6i32;
    let qty = prop_oneof![12 => 0..5i32, 1 => Just(-1)];
    prop_oneof![
        3 => (id.clone(), qty.clone()).prop_map(|(id, qty)| Op::Insert { id, qty }),
        4 => (id.clone(), -1..4i32).prop_map(|(id, delta)| Op::Update { id, delta }),
        2 => id.clone().prop_map(|id| Op::Delete { id }),
        4 => (id.clone(), qty).prop_map(|(id, qty)| Op::Upsert { id, qty }),
        3 => id.clone().prop_map(|id| Op::Read { id }),
        1 => id.clone().prop_map(|id| Op::GuardExists { id }),
        1 => id.prop_map(|id| Op::Touch { id }),
        1 => Just(Op::SetLocal),
    ]
}

/// What a statement returns, as the model predicts it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Affected(u64),
    Read(Option<i32>),
    Nothing,
}

/// Why a statement fails, as the model predicts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Unique,
    Check,
    Guard,
}

type Table = BTreeMap<i32, i32>;

/// Runs `ops` on a copy of `table`: every statement's output, or the first failure.
fn model(table: &Table, ops: &[Op]) -> Result<(Table, Vec<Out>), (usize, Failure)> {
    let mut t = table.clone();
    let mut outs = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let fail = |f| Err((index, f));
        let out = match *op {
            Op::Insert { id, qty } => {
                // PostgreSQL checks the new row before it looks for a duplicate key.
                if qty < 0 {
                    return fail(Failure::Check);
                }
                if t.contains_key(&id) {
                    return fail(Failure::Unique);
                }
                t.insert(id, qty);
                Out::Affected(1)
            }
            Op::Update { id, delta } => match t.get_mut(&id) {
                Some(qty) if *qty + delta < 0 => return fail(Failure::Check),
                Some(qty) => {
                    *qty += delta;
                    Out::Affected(1)
                }
                None => Out::Affected(0),
            },
            Op::Delete { id } => Out::Affected(u64::from(t.remove(&id).is_some())),
            Op::Upsert { id, qty } => {
                if qty < 0 {
                    return fail(Failure::Check);
                }
                t.insert(id, qty);
                Out::Affected(1)
            }
            Op::Read { id } => Out::Read(t.get(&id).copied()),
            Op::GuardExists { id } | Op::Touch { id } => {
                if !t.contains_key(&id) {
                    return fail(Failure::Guard);
                }
                if matches!(op, Op::Touch { .. }) { Out::Affected(1) } else { Out::Nothing }
            }
            Op::SetLocal => Out::Nothing,
        };
        outs.push(out);
    }
    Ok((t, outs))
}

/// A handle to what a pushed statement returns.
enum Handle {
    Affected(Affected),
    Read(Optional<i32>),
    Nothing,
}

fn batch(ops: &[Op]) -> (Batch, Vec<Handle>) {
    let mut batch = Batch::new();
    let handles = ops
        .iter()
        .map(|op| match *op {
            Op::Insert { id, qty } => Handle::Affected(
                batch.push(diesel::insert_into(item::table).values((item::id.eq(id), item::qty.eq(qty)))).affected(),
            ),
            Op::Update { id, delta } => Handle::Affected(
                batch.push(diesel::update(item::table.find(id)).set(item::qty.eq(item::qty + delta))).affected(),
            ),
            Op::Delete { id } => Handle::Affected(batch.push(diesel::delete(item::table.find(id))).affected()),
            Op::Upsert { id, qty } => Handle::Affected(
                batch
                    .push(
                        diesel::insert_into(item::table)
                            .values((item::id.eq(id), item::qty.eq(qty)))
                            .on_conflict(item::id)
                            .do_update()
                            .set(item::qty.eq(qty)),
                    )
                    .affected(),
            ),
            Op::Read { id } => Handle::Read(batch.push(item::table.find(id).select(item::qty)).optional()),
            Op::GuardExists { id } => {
                batch.guard_exists(item::table.find(id).select(item::id)).label("exists");
                Handle::Nothing
            }
            Op::Touch { id } => Handle::Affected(
                batch
                    .push(diesel::update(item::table.find(id)).set(item::qty.eq(item::qty)))
                    .label("touch")
                    .expect_rows(1)
                    .affected(),
            ),
            Op::SetLocal => {
                batch.push(diesel::sql_query("SET LOCAL statement_timeout = '10s'"));
                Handle::Nothing
            }
        })
        .collect();
    (batch, handles)
}

fn failure_of(cause: &Cause) -> Option<Failure> {
    match cause {
        Cause::UniqueViolation(_) => Some(Failure::Unique),
        Cause::CheckViolation(_) => Some(Failure::Check),
        Cause::GuardFailed(_) => Some(Failure::Guard),
        _ => None,
    }
}

struct Lab {
    pool: pgbatch::Pool,
    client: tokio_postgres::Client,
    /// Cases that committed, and that failed as the model said.
    committed: std::cell::Cell<usize>,
    failed: std::cell::Cell<usize>,
}

impl Lab {
    async fn table(&self) -> Table {
        let rows = self.client.query("SELECT id, qty FROM item", &[]).await.expect("the table");
        rows.iter().map(|row| (row.get(0), row.get(1))).collect()
    }

    /// Sets the table to `initial`, runs `ops`, and compares with the model.
    async fn check(&self, initial: &Table, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut setup = Batch::new();
        setup.push(diesel::delete(item::table));
        for (&id, &qty) in initial {
            setup.push(diesel::insert_into(item::table).values((item::id.eq(id), item::qty.eq(qty))));
        }
        setup.run(&self.pool).await.map_err(|e| TestCaseError::fail(format!("setup: {e}")))?;
        let (batch, handles) = batch(ops);
        let result = batch.run(&self.pool).await;
        let after = self.table().await;
        match (model(initial, ops), result) {
            (Ok((expected, outs)), Ok(committed)) => {
                prop_assert_eq!(&after, &expected, "the table after a committed batch");
                for (index, (handle, out)) in handles.iter().zip(outs).enumerate() {
                    let seen = match handle {
                        Handle::Affected(h) => Out::Affected(committed.get(h).expect("a row count")),
                        Handle::Read(h) => Out::Read(committed.get(h).expect("a read")),
                        Handle::Nothing => Out::Nothing,
                    };
                    prop_assert_eq!(seen, out, "statement {}'s result", index);
                }
                self.committed.set(self.committed.get() + 1);
            }
            (Err((index, kind)), Err(Error::Statement(failure))) => {
                prop_assert_eq!(failure.index(), index, "the failing statement: {}", failure);
                prop_assert_eq!(failure_of(failure.cause()), Some(kind), "its cause: {}", failure);
                prop_assert_eq!(&after, initial, "a failed batch changes nothing");
                self.failed.set(self.failed.get() + 1);
            }
            (expected, actual) => {
                return Err(TestCaseError::fail(format!("the model says {expected:?}, the batch {actual:?}")));
            }
        }
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("PGBATCH_MODEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
}

#[test]
fn random_batches_match_the_model() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime.block_on(TestDatabase::create()).expect("a test database");
    let lab = runtime.block_on(async {
        db.execute(SCHEMA).await.expect("the schema");
        let pool = db.pool(1).await.expect("a pool");
        Lab { pool, client: db.connect().await.unwrap(), committed: Default::default(), failed: Default::default() }
    });
    let initial = proptest::collection::btree_map(0..6i32, 0..4i32, 0..5);
    let ops = proptest::collection::vec(op(), 1..=30);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let result = runner.run(&(initial, ops), |(initial, ops)| runtime.block_on(lab.check(&initial, &ops)));
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // Past the harness's capture: both paths were exercised.
    let line = format!("model: cases={} committed={} failed={}", cases(), lab.committed.get(), lab.failed.get());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
    drop(lab);
    drop(runtime);
    drop(db);
}
