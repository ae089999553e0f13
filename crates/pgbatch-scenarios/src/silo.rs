//! Silos (scenario C2): a silo with everything it owns, created as one change.

use diesel::prelude::*;
use pgbatch::{Cause, Fragment};
use uuid::Uuid;

use crate::schema::{
    certificate, role_assignment, silo, silo_auth_settings, silo_group, silo_quotas,
    virtual_provisioning_collection as collection,
};
use crate::seed::Quotas;

/// The tables [`create`] writes to, each of which a failed creation leaves untouched.
pub const TABLES: [&str; 7] = [
    "silo",
    "virtual_provisioning_collection",
    "silo_group",
    "role_assignment",
    "certificate",
    "silo_quotas",
    "silo_auth_settings",
];

/// A silo to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSilo {
    /// The silo's id.
    pub id: Uuid,
    /// Its name, unique among silos.
    pub name: String,
    /// The id of its admin group.
    pub admin_group: Uuid,
    /// Its TLS certificates, PEM.
    pub certificates: Vec<String>,
    /// Its quotas.
    pub quotas: Quotas,
    /// How long device tokens live, in seconds.
    pub device_token_max_ttl_seconds: i64,
}

/// Why a silo could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiloError {
    /// Another silo has the name.
    #[error("a silo named {0:?} already exists")]
    NameTaken(String),
    /// A certificate is not PEM.
    #[error("certificate {index} is not a PEM certificate")]
    BadCertificate {
        /// Which certificate, counting from 0.
        index: usize,
    },
}

/// The labels of the statements [`create`] builds.
pub mod labels {
    /// The silo's row.
    pub const INSERT_SILO: &str = "insert silo";
    /// Its provisioning counter.
    pub const INSERT_COUNTER: &str = "insert silo counter";
    /// Its admin group.
    pub const INSERT_ADMIN_GROUP: &str = "insert admin group";
    /// The visible role assignments, removed before the new ones go in.
    pub const DELETE_ROLES: &str = "delete role assignments";
    /// The admin group's role.
    pub const INSERT_ROLES: &str = "insert role assignments";
    /// Its quotas.
    pub const INSERT_QUOTAS: &str = "insert quotas";
    /// Its authentication settings.
    pub const INSERT_AUTH_SETTINGS: &str = "insert auth settings";

    /// The label of the insert of certificate `index`.
    pub fn insert_certificate(index: usize) -> String {
        format!("insert certificate {index}")
    }
}

/// Creates `new` and everything it owns: the silo, its provisioning counter, an admin
/// group, its role assignments (the visible ones replaced), its certificates, quotas and
/// authentication settings. A duplicate name fails with [`SiloError::NameTaken`], a
/// certificate that is not PEM with [`SiloError::BadCertificate`]; either way nothing of
/// the silo is written, and the error's statement failure names the statement by its label.
pub fn create(new: &NewSilo) -> Fragment<SiloError> {
    let id = new.id;
    let mut fragment = Fragment::new();
    fragment
        .push(diesel::insert_into(silo::table).values((silo::id.eq(id), silo::name.eq(new.name.clone()))))
        .label(labels::INSERT_SILO);
    fragment
        .push(
            diesel::insert_into(collection::table)
                .values((collection::id.eq(id), collection::collection_type.eq("silo"))),
        )
        .label(labels::INSERT_COUNTER);
    fragment
        .push(diesel::insert_into(silo_group::table).values((
            silo_group::id.eq(new.admin_group),
            silo_group::silo_id.eq(id),
            silo_group::name.eq("admin"),
        )))
        .label(labels::INSERT_ADMIN_GROUP);
    fragment
        .push(diesel::delete(role_assignment::table.filter(role_assignment::resource_id.eq(id))))
        .label(labels::DELETE_ROLES);
    fragment
        .push(diesel::insert_into(role_assignment::table).values((
            role_assignment::resource_id.eq(id),
            role_assignment::identity_id.eq(new.admin_group),
            role_assignment::role.eq("admin"),
        )))
        .label(labels::INSERT_ROLES);
    for (index, cert) in new.certificates.iter().enumerate() {
        fragment
            .push(diesel::insert_into(certificate::table).values((
                certificate::id.eq(Uuid::new_v4()),
                certificate::silo_id.eq(id),
                certificate::cert.eq(cert.clone()),
            )))
            .label(labels::insert_certificate(index));
    }
    let quotas = new.quotas;
    fragment
        .push(diesel::insert_into(silo_quotas::table).values((
            silo_quotas::silo_id.eq(id),
            silo_quotas::cpus.eq(quotas.cpus),
            silo_quotas::ram.eq(quotas.ram),
            silo_quotas::storage.eq(quotas.storage),
        )))
        .label(labels::INSERT_QUOTAS);
    fragment
        .push(diesel::insert_into(silo_auth_settings::table).values((
            silo_auth_settings::silo_id.eq(id),
            silo_auth_settings::device_token_max_ttl_seconds.eq(new.device_token_max_ttl_seconds),
        )))
        .label(labels::INSERT_AUTH_SETTINGS);
    let name = new.name.clone();
    let certificate_labels: Vec<String> = (0..new.certificates.len()).map(labels::insert_certificate).collect();
    fragment.map_failure(move |failure| match failure.cause() {
        Cause::UniqueViolation(v) if v.constraint() == Some("silo_name_unique") => {
            Some(SiloError::NameTaken(name.clone()))
        }
        Cause::CheckViolation(v) if v.constraint() == Some("certificate_is_pem") => {
            let index = certificate_labels.iter().position(|label| failure.label() == Some(label.as_str()))?;
            Some(SiloError::BadCertificate { index })
        }
        _ => None,
    })
}
