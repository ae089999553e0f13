//! The scenarios under concurrent requests.

use pgbatch::{Batch, Error};
use pgbatch_scenarios::disks::{self, AttachError};
use pgbatch_scenarios::provisioning::{self, FLEET_ID, ProvisionError, Request};
use uuid::Uuid;

use crate::world::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_concurrent_provisioning_never_passes_the_quota() {
    const TASKS: usize = 32;
    // Room for 10 instances of 3 cpus; 32 tasks, a third of them replaying another's request.
    let w = World::new(30, 1 << 30, 1 << 40).await;
    let requests: Vec<Request> = (0..TASKS)
        .map(|_| Request {
            instance_id: Uuid::new_v4(),
            project_id: w.project,
            silo_id: w.silo,
            cpus: 3,
            ram: 1 << 20,
            storage: 1 << 30,
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let request = if i % 3 == 2 { requests[i - 1] } else { requests[i] };
        let pool = w.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Batch::<ProvisionError>::default();
            batch.append(provisioning::reserve(request));
            batch.run(&pool).await.map(drop)
        }));
    }
    let (mut ok, mut over_quota) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::Domain { error: ProvisionError::InsufficientCapacity { .. }, .. }) => over_quota += 1,
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    assert!(ok >= 10, "{ok} succeeded: the quota has room for 10 instances");
    assert!(over_quota > 0, "the quota refused some requests");
    let sum = w.provisioned_sum().await;
    assert!(sum.0 <= 30, "{} cpus provisioned past a quota of 30", sum.0);
    assert_eq!(sum.0, 30, "the quota fills up exactly: 10 instances of 3 cpus");
    for id in [w.project, w.silo, FLEET_ID] {
        assert_eq!(w.counters(id).await, sum, "the counters equal the sum of provisioned instances");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_two_concurrent_attaches_at_eleven_disks_exactly_one_wins() {
    const ROUNDS: usize = 25;
    let w = World::new(64, 1 << 30, 1 << 40).await;
    for round in 0..ROUNDS {
        let instance_id = Uuid::new_v4();
        w.client
            .execute("INSERT INTO instance (id, project_id, name) VALUES ($1, $2, 'vm')", &[&instance_id, &w.project])
            .await
            .unwrap();
        let disk_ids = crate::control_plane::new_disks(&w, 13).await;
        for disk_id in &disk_ids[..11] {
            let mut batch = Batch::<AttachError>::default();
            batch.append(disks::attach(instance_id, *disk_id));
            batch.run(&w.pool).await.unwrap();
        }
        let attach = |disk_id: Uuid| {
            let pool = w.pool.clone();
            tokio::spawn(async move {
                let mut batch = Batch::<AttachError>::default();
                batch.append(disks::attach(instance_id, disk_id));
                batch.run(&pool).await.map(drop)
            })
        };
        let (a, b) = (attach(disk_ids[11]), attach(disk_ids[12]));
        let results = [a.await.unwrap(), b.await.unwrap()];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let at_capacity = results
            .iter()
            .filter(|r| matches!(r, Err(Error::Domain { error: AttachError::AtCapacity(_), .. })))
            .count();
        assert_eq!((wins, at_capacity), (1, 1), "round {round}: exactly one of two attaches at 11 disks wins");
        assert_eq!(w.count(&format!("SELECT count(*) FROM disk WHERE attach_instance_id = '{instance_id}'")).await, 12);
    }
}
