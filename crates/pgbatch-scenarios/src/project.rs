//! Projects (scenario C1): a project is created together with its provisioning counter,
//! and only inside a silo that exists and is not deleted.

use diesel::prelude::*;
use pgbatch::{Cause, Fragment, One};
use uuid::Uuid;

use crate::schema::{project, silo, virtual_provisioning_collection};

/// A project row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = project, check_for_backend(diesel::pg::Pg))]
pub struct Project {
    /// The project's id, chosen by the caller.
    pub id: Uuid,
    /// The silo it belongs to.
    pub silo_id: Uuid,
    /// Its name, unique among the silo's live projects.
    pub name: String,
    /// Its generation, bumped by every change to its children.
    pub rcgen: i64,
}

/// Why a project could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    /// The silo already has a live project with this name.
    #[error("project {name:?} already exists")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The silo does not exist or has been deleted.
    #[error("silo {0} not found")]
    SiloNotFound(Uuid),
}

/// The statement labels this module uses, so callers and tests can match on them.
pub mod labels {
    /// The guard that the silo exists and is not deleted.
    pub const SILO_EXISTS: &str = "silo exists";
    /// The insert of the project row.
    pub const INSERT_PROJECT: &str = "insert project";
    /// The insert of the project's provisioning counter.
    pub const INSERT_COUNTER: &str = "insert provisioning counter";
}

/// Creates project `name` in `silo_id`, with a zeroed provisioning counter.
///
/// Returns the fragment and a handle to the created row. Failures map to
/// [`ProjectError`]: a duplicate name to `AlreadyExists`, a missing or deleted silo to
/// `SiloNotFound`; anything else stays a plain statement failure.
pub fn create(id: Uuid, silo_id: Uuid, name: &str) -> (Fragment<ProjectError>, One<Project>) {
    let mut fragment = Fragment::new();
    fragment
        .guard_exists(silo::table.filter(silo::id.eq(silo_id)).filter(silo::deleted_at.is_null()).select(silo::id))
        .label(labels::SILO_EXISTS);
    let project = fragment
        .push(
            diesel::insert_into(project::table)
                .values((project::id.eq(id), project::silo_id.eq(silo_id), project::name.eq(name)))
                .returning(Project::as_returning()),
        )
        .label(labels::INSERT_PROJECT)
        .one();
    fragment
        .push(diesel::insert_into(virtual_provisioning_collection::table).values((
            virtual_provisioning_collection::id.eq(id),
            virtual_provisioning_collection::collection_type.eq("project"),
        )))
        .label(labels::INSERT_COUNTER)
        .expect_rows(1);
    let name = name.to_owned();
    let fragment = fragment.map_failure(move |failure| match failure.cause() {
        Cause::UniqueViolation(v) if v.constraint() == Some("project_name_unique") => {
            Some(ProjectError::AlreadyExists { name: name.clone() })
        }
        Cause::GuardFailed(guard) if guard.label() == Some(labels::SILO_EXISTS) => {
            Some(ProjectError::SiloNotFound(silo_id))
        }
        _ => None,
    });
    (fragment, project)
}

/// Why a project could not be deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteError {
    /// The project changed since the caller read its generation (or is gone).
    #[error("project {0} was concurrently modified")]
    ConcurrentlyModified(Uuid),
    /// The project's provisioning counter is not zero: it still has instances or disks.
    #[error("project {0} still has resources")]
    StillHasResources(Uuid),
}

/// Labels of [`delete`].
pub mod delete_labels {
    /// The soft-delete, guarded by the generation the caller read.
    pub const GENERATION_MATCHES: &str = "generation matches";
    /// The counter's delete, guarded by its being all zero.
    pub const COUNTER_EMPTY: &str = "provisioning counter empty";
}

/// Soft-deletes project `id` if its `rcgen` is still `generation`, and deletes its
/// provisioning counter if it is all zero; either condition failing aborts both.
pub fn delete(id: Uuid, generation: i64) -> Fragment<DeleteError> {
    let mut fragment = Fragment::new();
    fragment
        .push(
            diesel::update(project::table.find(id))
                .filter(project::rcgen.eq(generation))
                .filter(project::deleted_at.is_null())
                .set(project::deleted_at.eq(diesel::dsl::now)),
        )
        .label(delete_labels::GENERATION_MATCHES)
        .expect_rows(1);
    fragment
        .push(
            diesel::delete(virtual_provisioning_collection::table.find(id))
                .filter(virtual_provisioning_collection::cpus_provisioned.eq(0))
                .filter(virtual_provisioning_collection::ram_provisioned.eq(0))
                .filter(virtual_provisioning_collection::storage_provisioned.eq(0)),
        )
        .label(delete_labels::COUNTER_EMPTY)
        .expect_rows(1);
    fragment.map_failure(move |failure| {
        let Cause::GuardFailed(guard) = failure.cause() else { return None };
        match guard.label()? {
            delete_labels::GENERATION_MATCHES => Some(DeleteError::ConcurrentlyModified(id)),
            delete_labels::COUNTER_EMPTY => Some(DeleteError::StillHasResources(id)),
            _ => None,
        }
    })
}
