//! A minimal control plane to run the scenarios in: the fleet, a silo with quotas, and one
//! project, each with its provisioning counter.

use diesel::prelude::*;
use pgbatch::{Acquire, Batch, Error};
use uuid::Uuid;

use crate::provisioning::FLEET_ID;
use crate::schema::{project, silo, silo_quotas, virtual_provisioning_collection as collection};

/// A silo's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Virtual CPUs.
    pub cpus: i64,
    /// Memory, in bytes.
    pub ram: i64,
    /// Storage, in bytes.
    pub storage: i64,
}

/// What [`seed`] created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    /// The silo.
    pub silo: Uuid,
    /// The project inside it.
    pub project: Uuid,
}

/// Creates the fleet counter, a silo named `silo_name` with `quotas`, and a project named
/// `project`, in one batch.
///
/// # Errors
///
/// As for [`Batch::run`].
pub async fn seed<A: Acquire>(target: A, silo_name: &str, quotas: Quotas) -> Result<Seeded, Error> {
    let seeded = Seeded { silo: Uuid::new_v4(), project: Uuid::new_v4() };
    let mut batch = Batch::new();
    batch
        .push(diesel::insert_into(silo::table).values((silo::id.eq(seeded.silo), silo::name.eq(silo_name.to_owned()))));
    batch.push(diesel::insert_into(silo_quotas::table).values((
        silo_quotas::silo_id.eq(seeded.silo),
        silo_quotas::cpus.eq(quotas.cpus),
        silo_quotas::ram.eq(quotas.ram),
        silo_quotas::storage.eq(quotas.storage),
    )));
    batch.push(diesel::insert_into(project::table).values((
        project::id.eq(seeded.project),
        project::silo_id.eq(seeded.silo),
        project::name.eq("default"),
    )));
    batch.push(
        diesel::insert_into(collection::table)
            .values(vec![
                (collection::id.eq(FLEET_ID), collection::collection_type.eq("fleet")),
                (collection::id.eq(seeded.silo), collection::collection_type.eq("silo")),
                (collection::id.eq(seeded.project), collection::collection_type.eq("project")),
            ])
            .on_conflict_do_nothing(),
    );
    batch.run(target).await?;
    Ok(seeded)
}

/// A throwaway database with the scenarios' schema and a pool on it, for examples: found
/// as `pgbatch-testing` describes (`DATABASE_URL`, the libpq variables, the standard port,
/// a private cluster, or Docker), and
/// dropped with the returned [`TestDatabase`](pgbatch_testing::TestDatabase).
///
/// # Errors
///
/// When no PostgreSQL can be reached or the schema fails.
pub async fn playground() -> Result<(pgbatch_testing::TestDatabase, pgbatch::Pool), Box<dyn std::error::Error>> {
    let db = pgbatch_testing::TestDatabase::create().await?;
    db.execute(crate::SCHEMA_SQL).await?;
    let pool = db.pool(8).await?;
    Ok((db, pool))
}
