//! Scenario I1: "create project X" with an idempotency key; the connection drops while
//! `COMMIT` is in flight. The caller gets `OutcomeUnknown`, resolves the key to learn the
//! truth, and can replay the request without ever creating the project twice.
//!
//! A proxy between the client and PostgreSQL loses the answer to `COMMIT`, as a network
//! failure would.
//!
//! ```sh
//! cargo run --example unknown_outcome
//! ```

use pgbatch::idempotency::{self, Resolution};
use pgbatch::{Batch, ConnectionManager, Error, IdempotencyKey};
use pgbatch_scenarios::project::{self, ProjectError};
use pgbatch_scenarios::seed::{Quotas, playground, seed};
use pgbatch_testing::Fault;
use uuid::Uuid;

/// The API handler's batch: create the project, keyed by the request's idempotency key.
fn create_project(key: &IdempotencyKey, project_id: Uuid, silo: Uuid) -> Batch<ProjectError> {
    let (fragment, _) = project::create(project_id, silo, "x");
    let mut batch = Batch::<ProjectError>::default();
    batch.idempotency_key(key.clone());
    batch.append(fragment);
    batch
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (db, pool) = playground().await?;
    idempotency::install(&pool, idempotency::DEFAULT_TABLE).await?;
    let world = seed(&pool, "engineering", Quotas { cpus: 64, ram: 1 << 40, storage: 1 << 50 }).await?;

    // A flaky network: a pool whose connections go through a proxy that will lose the
    // answer to the next COMMIT.
    let proxy = db.proxy().await?.start().await?;
    let flaky = db.config_via(&proxy);
    let flaky_pool = bb8::Pool::builder().max_size(1).build(ConnectionManager::new(flaky)).await?;
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() });

    let key = IdempotencyKey::new(format!("create-project-{}", Uuid::new_v4()));
    let batch = create_project(&key, Uuid::new_v4(), world.silo);
    match batch.run(&flaky_pool).await {
        Err(Error::OutcomeUnknown(unknown)) => println!("first attempt: {unknown}"),
        other => println!("first attempt: unexpectedly {:?}", other.map(drop).map_err(|e| e.to_string())),
    }

    // "Not committed" is final: resolving fences the key, so the lost attempt cannot commit
    // if its bytes still arrive. A replay uses the key the resolution hands back.
    let replay_key = match idempotency::resolve(&pool, &key).await? {
        Resolution::Committed { at } => {
            println!("resolved: committed at {at:?}");
            key.clone()
        }
        Resolution::NotCommitted { replay } => {
            println!("resolved: not committed, and now never will be");
            replay
        }
        _ => return Err("an unknown resolution".into()),
    };

    // Replaying the request never creates the project twice.
    match create_project(&replay_key, Uuid::new_v4(), world.silo).run(&pool).await {
        Ok(_) => println!("replay: created the project (the first attempt had not committed)"),
        Err(Error::AlreadyCommitted(already)) => println!("replay: {already}; nothing applied"),
        Err(other) => return Err(other.into()),
    }
    Ok(())
}
