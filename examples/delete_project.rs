//! Scenario C6: delete a project only at the generation the caller read, and only when it
//! holds no resources; either failure aborts both statements with its own typed error.
//!
//! ```sh
//! cargo run --example delete_project
//! ```

use pgbatch::{Batch, Error};
use pgbatch_scenarios::project::{self, DeleteError};
use pgbatch_scenarios::provisioning::{self, ProvisionError, Request};
use pgbatch_scenarios::seed::{Quotas, playground, seed};
use uuid::Uuid;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, pool) = playground().await?;
    let world = seed(&pool, "engineering", Quotas { cpus: 64, ram: 1 << 40, storage: 1 << 50 }).await?;
    let instance = Request {
        instance_id: Uuid::new_v4(),
        project_id: world.project,
        silo_id: world.silo,
        cpus: 2,
        ram: 1,
        storage: 1,
    };
    let mut reserve = Batch::<ProvisionError>::default();
    reserve.append(provisioning::reserve(instance));
    reserve.run(&pool).await?;

    let delete = |generation| {
        let mut batch = Batch::<DeleteError>::default();
        batch.append(project::delete(world.project, generation));
        batch
    };
    for (case, generation) in [("stale generation 7", 7), ("project with an instance", 1)] {
        match delete(generation).run(&pool).await {
            Ok(_) => println!("{case}: deleted"),
            Err(Error::Domain { error, failure }) => {
                println!("{case}: {error} (guard {:?})", failure.label().unwrap_or(""));
            }
            Err(other) => return Err(other.into()),
        }
    }
    let mut release = Batch::<ProvisionError>::default();
    release.append(provisioning::release(instance.instance_id, world.project, world.silo));
    release.run(&pool).await?;
    delete(1).run(&pool).await?;
    println!("after releasing the instance: deleted");
    Ok(())
}
