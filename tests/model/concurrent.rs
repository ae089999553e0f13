//! Scenario C3 under random concurrent load: tasks reserve and release instances drawn
//! from a shared set (so that requests replay and race each other), with random sizes,
//! against one silo's quotas. Whatever the interleaving, the counters never pass the quota
//! and always equal the sum of what is provisioned.

use pgbatch::{Batch, Error};
use pgbatch_scenarios::provisioning::{self, FLEET_ID, ProvisionError, Request};
use pgbatch_scenarios::seed::{Quotas, seed};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const TASKS: usize = 16;
const STEPS: usize = 40;
const INSTANCES: usize = 24;
const QUOTA_CPUS: i64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_concurrent_provisioning_keeps_the_counters_true() {
    let (db, pool) = pgbatch_scenarios::seed::playground().await.expect("a database");
    let seeded =
        seed(&pool, "silo", Quotas { cpus: QUOTA_CPUS, ram: 1 << 40, storage: 1 << 50 }).await.expect("the seed");
    let instances: Vec<Uuid> = (0..INSTANCES).map(|_| Uuid::new_v4()).collect();
    let seed_value: u64 = rand::random();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (pool, instances) = (pool.clone(), instances.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value ^ task as u64);
            for _ in 0..STEPS {
                let instance_id = instances[rng.random_range(0..instances.len())];
                let mut batch = Batch::<ProvisionError>::default();
                if rng.random_bool(0.6) {
                    batch.append(provisioning::reserve(Request {
                        instance_id,
                        project_id: seeded.project,
                        silo_id: seeded.silo,
                        cpus: rng.random_range(1..=6),
                        ram: 1 << 20,
                        storage: 1 << 30,
                    }));
                } else {
                    batch.append(provisioning::release(instance_id, seeded.project, seeded.silo));
                }
                match batch.run(&pool).await {
                    Ok(_) | Err(Error::Domain { error: ProvisionError::InsufficientCapacity { .. }, .. }) => {}
                    Err(other) => panic!("seed {seed_value}: unexpected failure: {other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = db.connect().await.unwrap();
    let sum: i64 = client
        .query_one("SELECT coalesce(sum(cpus), 0)::bigint FROM virtual_provisioning_resource", &[])
        .await
        .unwrap()
        .get(0);
    assert!(sum <= QUOTA_CPUS, "seed {seed_value}: {sum} cpus provisioned past a quota of {QUOTA_CPUS}");
    for id in [seeded.project, seeded.silo, FLEET_ID] {
        let counted: i64 = client
            .query_one("SELECT cpus_provisioned FROM virtual_provisioning_collection WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(counted, sum, "seed {seed_value}: the counter of {id} equals the sum of provisioned instances");
    }
}
