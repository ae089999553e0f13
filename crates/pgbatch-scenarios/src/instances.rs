//! Instances: the row itself; its resources are counted by [`provisioning`](crate::provisioning).

use diesel::prelude::*;
use pgbatch::{Cause, Fragment};
use uuid::Uuid;

use crate::schema::instance;

/// Why an instance row could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// An instance with this id exists already.
    #[error("instance {0} already exists")]
    AlreadyExists(Uuid),
    /// The project does not exist.
    #[error("project {0} not found")]
    ProjectNotFound(Uuid),
}

/// Inserts instance `id` named `name` into `project_id`.
pub fn insert(id: Uuid, project_id: Uuid, name: &str) -> Fragment<InstanceError> {
    let mut fragment = Fragment::new();
    fragment
        .push(diesel::insert_into(instance::table).values((
            instance::id.eq(id),
            instance::project_id.eq(project_id),
            instance::name.eq(name.to_owned()),
        )))
        .label("insert instance");
    fragment.map_failure(move |failure| match failure.cause() {
        Cause::UniqueViolation(_) => Some(InstanceError::AlreadyExists(id)),
        Cause::ForeignKeyViolation(_) => Some(InstanceError::ProjectNotFound(project_id)),
        _ => None,
    })
}
