//! Scenario C4: attach disks to an instance, at most 12, with every typed refusal.
//!
//! ```sh
//! cargo run --example attach_disk
//! ```

use diesel::prelude::*;
use pgbatch::{Batch, Error};
use pgbatch_scenarios::disks::{self, AttachError};
use pgbatch_scenarios::schema::{disk, instance};
use pgbatch_scenarios::seed::{Quotas, playground, seed};
use uuid::Uuid;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, pool) = playground().await?;
    let world = seed(&pool, "engineering", Quotas { cpus: 64, ram: 1 << 40, storage: 1 << 50 }).await?;
    let (vm, other_vm) = (Uuid::new_v4(), Uuid::new_v4());
    let disk_ids: Vec<Uuid> = (0..13).map(|_| Uuid::new_v4()).collect();
    let mut setup = Batch::new();
    for id in [vm, other_vm] {
        setup.push(diesel::insert_into(instance::table).values((
            instance::id.eq(id),
            instance::project_id.eq(world.project),
            instance::name.eq("vm"),
        )));
    }
    let rows: Vec<_> = disk_ids.iter().map(|id| (disk::id.eq(*id), disk::project_id.eq(world.project))).collect();
    setup.push(diesel::insert_into(disk::table).values(rows));
    setup.run(&pool).await?;

    let attach = |instance_id, disk_id| {
        let mut batch = Batch::<AttachError>::default();
        batch.append(disks::attach(instance_id, disk_id));
        batch
    };
    for disk_id in &disk_ids[..12] {
        attach(vm, *disk_id).run(&pool).await?;
    }
    println!("attached 12 disks");
    for (case, instance_id, disk_id) in [
        ("13th disk", vm, disk_ids[12]),
        ("same disk again", vm, disk_ids[0]),
        ("disk of another instance", other_vm, disk_ids[0]),
        ("missing disk", other_vm, Uuid::new_v4()),
        ("missing instance", Uuid::new_v4(), disk_ids[12]),
    ] {
        match attach(instance_id, disk_id).run(&pool).await {
            Ok(_) => println!("{case}: ok"),
            Err(Error::Domain { error, .. }) => println!("{case}: {error}"),
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}
