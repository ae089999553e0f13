//! Each scenario's success case and every typed failure.

use diesel::prelude::*;
use pgbatch::{Batch, Error};
use pgbatch_scenarios::disks::{self, AttachError, MAX_DISKS};
use pgbatch_scenarios::firewall::{self, FirewallError, Rule};
use pgbatch_scenarios::instances::InstanceError;
use pgbatch_scenarios::project::{self, DeleteError, ProjectError};
use pgbatch_scenarios::provisioning::{self, FLEET_ID, ProvisionError, Request, Resource};
use pgbatch_scenarios::schema::{disk, instance, vpc, vpc_firewall_rule};
use pgbatch_scenarios::service::{self, CreateInstanceError};
use uuid::Uuid;

use crate::world::World;

async fn run<E: 'static>(world: &World, fragment: pgbatch::Fragment<E>) -> Result<pgbatch::Committed, Error<E>> {
    let mut batch = Batch::<E>::default();
    batch.append(fragment);
    batch.run(&world.pool).await
}

fn domain<E: std::fmt::Debug>(result: Result<pgbatch::Committed, Error<E>>) -> E {
    match result {
        Err(Error::Domain { error, .. }) => error,
        other => panic!(
            "expected a domain error, got {:?}",
            other.map(|_| ()).map_err(|e| e.domain().map(|d| format!("{d:?}")))
        ),
    }
}

#[tokio::test]
async fn c1_create_project_its_duplicates_and_deleted_silos() {
    let w = World::new(64, 1 << 30, 1 << 40).await;
    let id = Uuid::new_v4();
    let (fragment, created) = project::create(id, w.silo, "apollo");
    let committed = run(&w, fragment).await.unwrap();
    assert_eq!(committed.get(&created).unwrap().name, "apollo");
    assert_eq!(w.counters(id).await, (0, 0, 0), "the counter was created with the project");

    let (fragment, _) = project::create(Uuid::new_v4(), w.silo, "apollo");
    let err = run(&w, fragment).await.unwrap_err();
    let Error::Domain { error, failure } = &err else { panic!("{err:?}") };
    assert_eq!(*error, ProjectError::AlreadyExists { name: "apollo".into() });
    assert_eq!(failure.label(), Some(project::labels::INSERT_PROJECT), "the statement detail stays available");

    w.client.execute("UPDATE silo SET deleted_at = now()", &[]).await.unwrap();
    let (fragment, _) = project::create(Uuid::new_v4(), w.silo, "gemini");
    assert_eq!(domain(run(&w, fragment).await), ProjectError::SiloNotFound(w.silo));
    assert_eq!(w.count("SELECT count(*) FROM project WHERE name = 'gemini'").await, 0);
}

#[tokio::test]
async fn c1_a_failure_in_the_second_statement_leaves_no_project() {
    let w = World::new(64, 1 << 30, 1 << 40).await;
    let id = Uuid::new_v4();
    w.client
        .execute("INSERT INTO virtual_provisioning_collection (id, collection_type) VALUES ($1, 'project')", &[&id])
        .await
        .unwrap();
    let (fragment, _) = project::create(id, w.silo, "mercury");
    let err = run(&w, fragment).await.unwrap_err();
    let Error::Statement(failure) = &err else { panic!("an unmapped failure stays a statement failure: {err:?}") };
    assert_eq!(failure.label(), Some(project::labels::INSERT_COUNTER));
    assert_eq!(w.count("SELECT count(*) FROM project WHERE name = 'mercury'").await, 0);
}

fn request(w: &World, cpus: i64, ram: i64, storage: i64) -> Request {
    Request { instance_id: Uuid::new_v4(), project_id: w.project, silo_id: w.silo, cpus, ram, storage }
}

#[tokio::test]
async fn c3_provisioning_counts_once_and_stops_at_every_quota() {
    let w = World::new(8, 1000, 5000).await;
    let first = request(&w, 4, 100, 1000);
    run(&w, provisioning::reserve(first)).await.unwrap();
    run(&w, provisioning::reserve(first)).await.expect("a replay succeeds");
    for id in [w.project, w.silo, FLEET_ID] {
        assert_eq!(w.counters(id).await, (4, 100, 1000), "the replay counted once");
    }

    for (req, resource) in [
        (request(&w, 5, 1, 1), Resource::Cpus),
        (request(&w, 1, 901, 1), Resource::Memory),
        (request(&w, 1, 1, 4001), Resource::Storage),
    ] {
        let error = domain(run(&w, provisioning::reserve(req)).await);
        assert_eq!(error, ProvisionError::InsufficientCapacity { resource });
    }
    assert_eq!(w.counters(w.silo).await, (4, 100, 1000), "failed requests changed nothing");

    let release = || provisioning::release(first.instance_id, w.project, w.silo);
    run(&w, release()).await.unwrap();
    run(&w, release()).await.unwrap();
    for id in [w.project, w.silo, FLEET_ID] {
        assert_eq!(w.counters(id).await, (0, 0, 0), "releasing twice released once");
    }
}

#[tokio::test]
async fn composed_fragments_report_the_domain_error_of_the_one_that_failed() {
    let w = World::new(2, 1000, 1000).await;
    service::create_instance(&w.pool, request(&w, 2, 10, 10), "web-1").await.unwrap();

    // The second fragment (provisioning) fails: its domain error, converted, reaches the caller.
    let err = service::create_instance(&w.pool, request(&w, 1, 10, 10), "web-2").await.unwrap_err();
    let Error::Domain { error, failure } = &err else { panic!("{err:?}") };
    assert_eq!(
        *error,
        CreateInstanceError::Provision(ProvisionError::InsufficientCapacity { resource: Resource::Cpus })
    );
    assert_eq!(failure.label(), Some(provisioning::labels::CPUS_WITHIN_QUOTA));
    assert_eq!(failure.index(), 2, "instance insert, counters update, then the cpus guard");
    assert_eq!(
        w.count("SELECT count(*) FROM instance WHERE name = 'web-2'").await,
        0,
        "the first fragment rolled back"
    );

    // The first fragment (instances) fails: its own domain error.
    let mut orphan = request(&w, 1, 1, 1);
    orphan.project_id = Uuid::new_v4();
    let err = service::create_instance(&w.pool, orphan, "orphan").await.unwrap_err();
    assert_eq!(err.domain(), Some(&CreateInstanceError::Instance(InstanceError::ProjectNotFound(orphan.project_id))));
}

async fn new_instance(w: &World) -> Uuid {
    let id = Uuid::new_v4();
    let mut batch = Batch::new();
    batch.push(diesel::insert_into(instance::table).values((
        instance::id.eq(id),
        instance::project_id.eq(w.project),
        instance::name.eq("vm"),
    )));
    batch.run(&w.pool).await.unwrap();
    id
}

pub async fn new_disks(w: &World, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let mut batch = Batch::new();
    let rows: Vec<_> = ids.iter().map(|id| (disk::id.eq(*id), disk::project_id.eq(w.project))).collect();
    batch.push(diesel::insert_into(disk::table).values(rows));
    batch.run(&w.pool).await.unwrap();
    ids
}

#[tokio::test]
async fn c4_attach_up_to_twelve_disks() {
    let w = World::new(64, 1 << 30, 1 << 40).await;
    let instance_id = new_instance(&w).await;
    let disk_ids = new_disks(&w, 14).await;
    for disk_id in &disk_ids[..12] {
        run(&w, disks::attach(instance_id, *disk_id)).await.unwrap();
    }
    assert_eq!(domain(run(&w, disks::attach(instance_id, disk_ids[12])).await), AttachError::AtCapacity(instance_id));
    run(&w, disks::attach(instance_id, disk_ids[0])).await.expect("attaching an attached disk again is a no-op");

    let other = new_instance(&w).await;
    assert_eq!(domain(run(&w, disks::attach(other, disk_ids[0])).await), AttachError::Conflict { disk: disk_ids[0] });
    let missing = Uuid::new_v4();
    assert_eq!(domain(run(&w, disks::attach(other, missing)).await), AttachError::DiskNotFound(missing));
    assert_eq!(domain(run(&w, disks::attach(missing, disk_ids[13])).await), AttachError::InstanceNotFound(missing));
    assert_eq!(
        w.count(&format!("SELECT count(*) FROM disk WHERE attach_instance_id = '{instance_id}'")).await,
        MAX_DISKS
    );
}

async fn new_vpc(w: &World, rules: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    let mut batch = Batch::new();
    batch.push(diesel::insert_into(vpc::table).values((vpc::id.eq(id), vpc::project_id.eq(w.project))));
    let rows: Vec<_> = rules
        .iter()
        .map(|name| {
            (
                vpc_firewall_rule::id.eq(Uuid::new_v4()),
                vpc_firewall_rule::vpc_id.eq(id),
                vpc_firewall_rule::name.eq(name.to_string()),
                vpc_firewall_rule::action.eq("allow"),
            )
        })
        .collect();
    batch.push(diesel::insert_into(vpc_firewall_rule::table).values(rows));
    batch.run(&w.pool).await.unwrap();
    id
}

fn rules(names: &[&str]) -> Vec<Rule> {
    names.iter().map(|name| Rule { name: name.to_string(), action: "deny".into() }).collect()
}

#[tokio::test]
async fn c5_replace_firewall_rules() {
    let w = World::new(64, 1 << 30, 1 << 40).await;
    let live =
        |vpc: Uuid| format!("SELECT count(*) FROM vpc_firewall_rule WHERE vpc_id = '{vpc}' AND deleted_at IS NULL");

    let id = new_vpc(&w, &["ssh", "http"]).await;
    run(&w, firewall::replace_rules(id, &rules(&["ssh", "https", "dns"]))).await.unwrap();
    assert_eq!(w.count(&live(id)).await, 3);
    assert_eq!(w.count(&format!("SELECT firewall_gen FROM vpc WHERE id = '{id}'")).await, 2);

    assert_eq!(
        domain(run(&w, firewall::replace_rules(id, &rules(&["a", "a"]))).await),
        FirewallError::DuplicateRuleName
    );
    assert_eq!(w.count(&live(id)).await, 3, "the duplicate rolled back the soft-delete");

    run(&w, firewall::replace_rules(id, &[])).await.expect("an empty rule set");
    assert_eq!(w.count(&live(id)).await, 0, "an empty rule set still soft-deletes");

    let deleted = new_vpc(&w, &["ssh"]).await;
    w.client.execute("UPDATE vpc SET deleted_at = now() WHERE id = $1", &[&deleted]).await.unwrap();
    assert_eq!(
        domain(run(&w, firewall::replace_rules(deleted, &rules(&["x"]))).await),
        FirewallError::VpcNotFound(deleted)
    );
    assert_eq!(w.count(&live(deleted)).await, 1, "the soft-delete before the failed guard was rolled back");
}

#[tokio::test]
async fn c6_delete_a_project_only_at_its_generation_and_when_empty() {
    let w = World::new(64, 1 << 30, 1 << 40).await;
    assert_eq!(domain(run(&w, project::delete(w.project, 7)).await), DeleteError::ConcurrentlyModified(w.project));

    run(&w, provisioning::reserve(request(&w, 1, 1, 1))).await.unwrap();
    assert_eq!(domain(run(&w, project::delete(w.project, 1)).await), DeleteError::StillHasResources(w.project));
    assert_eq!(
        w.count(&format!("SELECT count(*) FROM project WHERE id = '{}' AND deleted_at IS NULL", w.project)).await,
        1,
        "the soft-delete was rolled back with the failed counter delete"
    );

    w.client.batch_execute("UPDATE virtual_provisioning_collection SET cpus_provisioned = 0, ram_provisioned = 0, storage_provisioned = 0").await.unwrap();
    run(&w, project::delete(w.project, 1)).await.unwrap();
    assert_eq!(
        w.count(&format!("SELECT count(*) FROM project WHERE id = '{}' AND deleted_at IS NOT NULL", w.project)).await,
        1
    );
}
