//! A seeded control plane: the fleet, one silo with quotas, one project.

use diesel::prelude::*;
use pgbatch::{Batch, ConnectionManager};
use pgbatch_scenarios::provisioning::FLEET_ID;
use pgbatch_scenarios::schema::{project, silo, silo_quotas, virtual_provisioning_collection as collection};
use pgbatch_testing::TestDatabase;
use uuid::Uuid;

pub type Pool = bb8::Pool<ConnectionManager>;

pub struct World {
    pub db: TestDatabase,
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
        let pool = bb8::Pool::builder().max_size(8).build(ConnectionManager::new(db.config().clone())).await.unwrap();
        let client = db.connect().await.unwrap();
        let (silo_id, project_id) = (Uuid::new_v4(), Uuid::new_v4());
        let mut seed = Batch::new();
        seed.push(diesel::insert_into(silo::table).values((silo::id.eq(silo_id), silo::name.eq("silo"))));
        seed.push(diesel::insert_into(silo_quotas::table).values((
            silo_quotas::silo_id.eq(silo_id),
            silo_quotas::cpus.eq(cpus),
            silo_quotas::ram.eq(ram),
            silo_quotas::storage.eq(storage),
        )));
        seed.push(diesel::insert_into(project::table).values((
            project::id.eq(project_id),
            project::silo_id.eq(silo_id),
            project::name.eq("project"),
        )));
        seed.push(diesel::insert_into(collection::table).values(vec![
            (collection::id.eq(FLEET_ID), collection::collection_type.eq("fleet")),
            (collection::id.eq(silo_id), collection::collection_type.eq("silo")),
            (collection::id.eq(project_id), collection::collection_type.eq("project")),
        ]));
        seed.run(&pool).await.expect("the seed");
        World { db, pool, client, silo: silo_id, project: project_id }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.expect(sql).get(0)
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
