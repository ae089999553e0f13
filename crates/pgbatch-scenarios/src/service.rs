//! A service function that composes fragments from several domain modules into one batch.

use pgbatch::{Batch, Error};

use crate::instances::{self, InstanceError};
use crate::provisioning::{self, ProvisionError, Request};

/// Why an instance could not be created: the domain error of whichever module failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateInstanceError {
    /// The instance row.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The resource accounting.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// Creates an instance and counts its resources, atomically, in one round trip.
///
/// # Errors
///
/// [`Error::Domain`] with [`CreateInstanceError`] for the failures the modules know;
/// any other [`Error`] as [`Batch::run`] describes.
pub async fn create_instance(
    pool: &pgbatch::Pool,
    request: Request,
    name: &str,
) -> Result<(), Error<CreateInstanceError>> {
    let mut batch = Batch::<CreateInstanceError>::default();
    batch.append(instances::insert(request.instance_id, request.project_id, name));
    batch.append(provisioning::reserve(request));
    batch.run(pool).await.map(drop)
}
