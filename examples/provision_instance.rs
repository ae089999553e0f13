//! Scenario C3: create instances and count their cpus, memory and storage against the
//! silo's quotas, composing two domain modules' fragments in one batch.
//!
//! ```sh
//! cargo run --example provision_instance
//! ```

use pgbatch::Batch;
use pgbatch_scenarios::provisioning::{self, ProvisionError, Request};
use pgbatch_scenarios::seed::{Quotas, playground, seed};
use pgbatch_scenarios::service;
use uuid::Uuid;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, pool) = playground().await?;
    let world = seed(&pool, "engineering", Quotas { cpus: 8, ram: 16 << 30, storage: 1 << 40 }).await?;
    let request = |cpus, ram, storage| Request {
        instance_id: Uuid::new_v4(),
        project_id: world.project,
        silo_id: world.silo,
        cpus,
        ram,
        storage,
    };

    let first = request(4, 8 << 30, 100 << 30);
    service::create_instance(&pool, first, "web-1").await?;
    println!("created web-1 with 4 cpus");

    // Replaying the same provisioning request counts once.
    let mut replay = Batch::<ProvisionError>::default();
    replay.append(provisioning::reserve(first));
    replay.run(&pool).await?;
    println!("replayed web-1's provisioning: counted once");

    for (name, cpus, ram, storage) in [
        ("web-2 (5 cpus)", 5, 1 << 30, 1 << 30),
        ("web-3 (9 GiB)", 1, 9 << 30, 1 << 30),
        ("web-4 (1 TiB)", 1, 1 << 30, 1 << 40),
    ] {
        match service::create_instance(&pool, request(cpus, ram, storage), name).await {
            Ok(()) => println!("{name}: created"),
            Err(pgbatch::Error::Domain { error, failure }) => {
                println!("{name}: {error} (guard {:?})", failure.label().unwrap_or(""));
            }
            Err(other) => return Err(other.into()),
        }
    }

    let mut release = Batch::<ProvisionError>::default();
    release.append(provisioning::release(first.instance_id, world.project, world.silo));
    release.run(&pool).await?;
    println!("released web-1's resources");
    Ok(())
}
