//! Disk attachment (scenario C4): at most [`MAX_DISKS`] disks per instance.

use diesel::dsl::count_star;
use diesel::prelude::*;
use pgbatch::{Cause, Fragment};
use uuid::Uuid;

use crate::schema::{disk, instance};

/// The most disks one instance can have attached.
pub const MAX_DISKS: i64 = 12;

/// Why a disk could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The instance does not exist.
    #[error("instance {0} not found")]
    InstanceNotFound(Uuid),
    /// The disk does not exist.
    #[error("disk {0} not found")]
    DiskNotFound(Uuid),
    /// The disk is attached to another instance.
    #[error("disk {disk} is attached to another instance")]
    Conflict {
        /// The disk.
        disk: Uuid,
    },
    /// The instance already has [`MAX_DISKS`] disks.
    #[error("instance {0} already has {MAX_DISKS} disks attached")]
    AtCapacity(Uuid),
}

/// Guard labels.
pub mod labels {
    /// The instance exists (and is locked for the rest of the transaction).
    pub const INSTANCE_EXISTS: &str = "instance exists";
    /// The disk is not attached to another instance.
    pub const NOT_ATTACHED_ELSEWHERE: &str = "disk not attached elsewhere";
    /// The instance has room for one more disk.
    pub const HAS_ROOM: &str = "instance has room";
    /// The disk exists.
    pub const DISK_EXISTS: &str = "disk exists";
}

/// Attaches `disk_id` to `instance_id`. Attaching a disk that is already attached to this
/// instance succeeds and changes nothing.
///
/// The instance row is locked first (`FOR UPDATE`), so concurrent attaches to one
/// instance take turns and each sees the disks the previous one attached: at 11 disks, of
/// two concurrent attaches exactly one wins.
pub fn attach(instance_id: Uuid, disk_id: Uuid) -> Fragment<AttachError> {
    let mut fragment = Fragment::new();
    fragment
        .guard_exists(instance::table.find(instance_id).select(instance::id).for_update())
        .label(labels::INSTANCE_EXISTS);
    fragment
        .guard_not_exists(
            disk::table
                .find(disk_id)
                .filter(disk::attach_instance_id.is_not_null())
                .filter(disk::attach_instance_id.ne(instance_id))
                .select(disk::id),
        )
        .label(labels::NOT_ATTACHED_ELSEWHERE);
    fragment
        .guard(
            disk::table
                .filter(disk::attach_instance_id.eq(instance_id))
                .filter(disk::id.ne(disk_id))
                .select(count_star())
                .single_value()
                .lt(MAX_DISKS),
        )
        .label(labels::HAS_ROOM);
    fragment
        .push(diesel::update(disk::table.find(disk_id)).set(disk::attach_instance_id.eq(instance_id)))
        .label(labels::DISK_EXISTS)
        .expect_rows(1);
    fragment.map_failure(move |failure| {
        let Cause::GuardFailed(guard) = failure.cause() else { return None };
        match guard.label()? {
            labels::INSTANCE_EXISTS => Some(AttachError::InstanceNotFound(instance_id)),
            labels::NOT_ATTACHED_ELSEWHERE => Some(AttachError::Conflict { disk: disk_id }),
            labels::HAS_ROOM => Some(AttachError::AtCapacity(instance_id)),
            labels::DISK_EXISTS => Some(AttachError::DiskNotFound(disk_id)),
            _ => None,
        }
    })
}
