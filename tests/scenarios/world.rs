//! A seeded control plane: the fleet, one silo with quotas, one project.

use pgbatch_scenarios::seed::{Quotas, seed};
use pgbatch_testing::TestDatabase;
use uuid::Uuid;

pub use pgbatch::Pool;

pub struct World {
    /// Kept so the database lives as long as the world.
    pub _db: TestDatabase,
    pub pool: Pool,
    pub client: tokio_postgres::Client,
    pub silo: Uuid,
    pub project: Uuid,
}

impl World {
    /// A fresh database with the scenarios' schema, and a silo whose quotas are
    /// `cpus`, `ram` and `storage`, holding one project.
    pub async fn new(cpus: i64, ram: i64, storage: i64) -> World {
        let db = TestDatabase::create().await.expect("a test database");
        db.execute(pgbatch_scenarios::SCHEMA_SQL).await.expect("the schema");
        let pool = db.pool(8).await.expect("a pool");
        let client = db.connect().await.unwrap();
        let seeded = seed(&pool, "silo", Quotas { cpus, ram, storage }).await.expect("the seed");
        World { _db: db, pool, client, silo: seeded.silo, project: seeded.project }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        pgbatch_testing::count(&self.client, sql).await
    }

    /// The `(cpus, ram, storage)` counters of `id`.
    pub async fn counters(&self, id: Uuid) -> (i64, i64, i64) {
        let row = self
            .client
            .query_one(
                "SELECT cpus_provisioned, ram_provisioned, storage_provisioned FROM virtual_provisioning_collection WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// What the resource rows add up to.
    pub async fn provisioned_sum(&self) -> (i64, i64, i64) {
        let row = self
            .client
            .query_one(
                "SELECT coalesce(sum(cpus), 0)::bigint, coalesce(sum(ram), 0)::bigint, coalesce(sum(storage), 0)::bigint \
                 FROM virtual_provisioning_resource",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }
}
