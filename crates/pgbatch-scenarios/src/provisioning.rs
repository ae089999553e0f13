//! Resource accounting (scenario C3): an instance's cpus, memory and storage are added to
//! its project's, silo's and the fleet's counters, only within the silo's quotas, and only
//! once per instance.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use pgbatch::{Cause, Fragment};
use uuid::Uuid;

use crate::schema::{silo_quotas, virtual_provisioning_collection as collection};

/// The fleet's counter id: one fleet per deployment.
pub const FLEET_ID: Uuid = Uuid::from_u128(0xf1ee7);

/// A resource a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Virtual CPUs.
    Cpus,
    /// Memory, in bytes.
    Memory,
    /// Disk storage, in bytes.
    Storage,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Cpus => "cpus",
            Resource::Memory => "memory",
            Resource::Storage => "storage",
        })
    }
}

/// Why resources could not be provisioned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// The silo's quota for `resource` does not leave room for the request.
    #[error("not enough {resource} left in the silo's quota")]
    InsufficientCapacity {
        /// The exhausted resource.
        resource: Resource,
    },
}

/// What an instance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The instance; provisioning is counted once per instance id.
    pub instance_id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// The project's silo, whose quotas apply.
    pub silo_id: Uuid,
    /// Virtual CPUs.
    pub cpus: i64,
    /// Memory, in bytes.
    pub ram: i64,
    /// Storage, in bytes.
    pub storage: i64,
}

/// Guard labels, one per quota.
pub mod labels {
    /// The silo's cpus stay within its quota.
    pub const CPUS_WITHIN_QUOTA: &str = "cpus within quota";
    /// The silo's memory stays within its quota.
    pub const MEMORY_WITHIN_QUOTA: &str = "memory within quota";
    /// The silo's storage stays within its quota.
    pub const STORAGE_WITHIN_QUOTA: &str = "storage within quota";
}

/// Counts `request` against the project, silo and fleet counters.
///
/// One statement records the instance's resources (once: a replay inserts nothing) and,
/// only if it did, adds them to the three counters, locking them; three guards then check
/// the silo's counters against its quotas while the locks are held. A request over quota
/// fails with [`ProvisionError::InsufficientCapacity`] naming the first exhausted resource.
pub fn reserve(request: Request) -> Fragment<ProvisionError> {
    let mut fragment = Fragment::new();
    fragment
        .push(
            diesel::sql_query(
                "WITH new_resource AS ( \
                   INSERT INTO virtual_provisioning_resource (id, cpus, ram, storage) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (id) DO NOTHING RETURNING id) \
                 UPDATE virtual_provisioning_collection \
                 SET cpus_provisioned = cpus_provisioned + $2, ram_provisioned = ram_provisioned + $3, \
                     storage_provisioned = storage_provisioned + $4 \
                 WHERE id IN ($5, $6, $7) AND EXISTS (SELECT 1 FROM new_resource)",
            )
            .bind::<SqlUuid, _>(request.instance_id)
            .bind::<BigInt, _>(request.cpus)
            .bind::<BigInt, _>(request.ram)
            .bind::<BigInt, _>(request.storage)
            .bind::<SqlUuid, _>(request.project_id)
            .bind::<SqlUuid, _>(request.silo_id)
            .bind::<SqlUuid, _>(FLEET_ID),
        )
        .label("add to counters");
    let over_quota = collection::table.inner_join(silo_quotas::table.on(silo_quotas::silo_id.eq(collection::id)));
    let silo = collection::id.eq(request.silo_id);
    fragment
        .guard_not_exists(
            over_quota.filter(silo).filter(collection::cpus_provisioned.gt(silo_quotas::cpus)).select(collection::id),
        )
        .label(labels::CPUS_WITHIN_QUOTA);
    fragment
        .guard_not_exists(
            over_quota.filter(silo).filter(collection::ram_provisioned.gt(silo_quotas::ram)).select(collection::id),
        )
        .label(labels::MEMORY_WITHIN_QUOTA);
    fragment
        .guard_not_exists(
            over_quota
                .filter(silo)
                .filter(collection::storage_provisioned.gt(silo_quotas::storage))
                .select(collection::id),
        )
        .label(labels::STORAGE_WITHIN_QUOTA);
    fragment.map_failure(|failure| {
        let Cause::GuardFailed(guard) = failure.cause() else { return None };
        let resource = match guard.label()? {
            labels::CPUS_WITHIN_QUOTA => Resource::Cpus,
            labels::MEMORY_WITHIN_QUOTA => Resource::Memory,
            labels::STORAGE_WITHIN_QUOTA => Resource::Storage,
            _ => return None,
        };
        Some(ProvisionError::InsufficientCapacity { resource })
    })
}

/// Releases an instance's resources from the three counters, once: releasing an instance
/// that holds nothing (or twice) changes nothing.
pub fn release(instance_id: Uuid, project_id: Uuid, silo_id: Uuid) -> Fragment<ProvisionError> {
    let mut fragment = Fragment::new();
    fragment
        .push(
            diesel::sql_query(
                "WITH released AS (DELETE FROM virtual_provisioning_resource WHERE id = $1 RETURNING cpus, ram, storage) \
                 UPDATE virtual_provisioning_collection AS c \
                 SET cpus_provisioned = c.cpus_provisioned - r.cpus, ram_provisioned = c.ram_provisioned - r.ram, \
                     storage_provisioned = c.storage_provisioned - r.storage \
                 FROM released AS r WHERE c.id IN ($2, $3, $4)",
            )
            .bind::<SqlUuid, _>(instance_id)
            .bind::<SqlUuid, _>(project_id)
            .bind::<SqlUuid, _>(silo_id)
            .bind::<SqlUuid, _>(FLEET_ID),
        )
        .label("release from counters");
    fragment
}
