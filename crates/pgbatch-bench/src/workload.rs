//! The benchmark workloads. Every statement is a Diesel query with a static query id, so
//! diesel-async's statement cache holds it once warm; the tokio-postgres contenders run the
//! same SQL text, rendered by Diesel, with the same parameters as native `ToSql` values.

use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::prelude::*;
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{QueryBuilder, QueryFragment};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use pgbatch_scenarios::schema::{project, silo, silo_quotas, virtual_provisioning_collection as collection};
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

/// What the workloads need beyond the scenarios' schema: S1's items and clock, and the
/// hot-row contention table.
pub const EXTRA_SCHEMA: &str = "
INSERT INTO sync_item (id, value) SELECT g, '' FROM generate_series(0, 19) g;
INSERT INTO sync_clock (id, clock) VALUES (1, 0);
CREATE TABLE hot_row_event (id uuid PRIMARY KEY, silo_id uuid NOT NULL);
";

/// Diesel's view of [`EXTRA_SCHEMA`].
#[allow(missing_docs)]
pub mod schema {
    diesel::table! { hot_row_event (id) { id -> Uuid, silo_id -> Uuid } }
}

use pgbatch_scenarios::schema::{
    certificate, role_assignment, silo_auth_settings, silo_group, sync_clock, sync_item, sync_message,
};
use schema::hot_row_event;

/// A statement parameter, for the tokio-postgres contenders.
#[derive(Debug, Clone)]
pub enum Param {
    /// A `uuid`.
    Uuid(Uuid),
    /// A `text`.
    Text(String),
    /// A `bigint`.
    BigInt(i64),
    /// An `integer`.
    Int(i32),
}

impl Param {
    /// Its PostgreSQL type.
    pub fn ty(&self) -> Type {
        match self {
            Param::Uuid(_) => Type::UUID,
            Param::Text(_) => Type::TEXT,
            Param::BigInt(_) => Type::INT8,
            Param::Int(_) => Type::INT4,
        }
    }

    /// As a tokio-postgres parameter.
    pub fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Uuid(v) => v,
            Param::Text(v) => v,
            Param::BigInt(v) => v,
            Param::Int(v) => v,
        }
    }
}

/// One statement of a workload.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Statement {
    InsertProject { id: Uuid, silo: Uuid, name: String },
    InsertCounter { id: Uuid, kind: &'static str },
    InsertSilo { id: Uuid, name: String },
    InsertGroup { id: Uuid, silo: Uuid },
    DeleteRoles { resource: Uuid },
    InsertRole { resource: Uuid, identity: Uuid },
    InsertCertificate { id: Uuid, silo: Uuid, cert: String },
    InsertQuotas { silo: Uuid, cpus: i64, ram: i64, storage: i64 },
    InsertAuthSettings { silo: Uuid, ttl: i64 },
    UpdateItem { id: i64, value: String },
    InsertMessage { id: Uuid, item: i64, value: String, clock: i64 },
    UpdateClock { clock: i64 },
    IncrementCounter { id: Uuid },
    InsertEvent { id: Uuid, silo: Uuid },
}

/// Evaluates `$body` with `$query` bound to the Diesel query of `$statement`.
macro_rules! with_query {
    ($statement:expr, |$query:ident| $body:expr) => {
        match $statement {
            Statement::InsertProject { id, silo, name } => {
                let $query = diesel::insert_into(project::table).values((
                    project::id.eq(*id),
                    project::silo_id.eq(*silo),
                    project::name.eq(name.as_str()),
                ));
                $body
            }
            Statement::InsertCounter { id, kind } => {
                let $query = diesel::insert_into(collection::table)
                    .values((collection::id.eq(*id), collection::collection_type.eq(*kind)));
                $body
            }
            Statement::InsertSilo { id, name } => {
                let $query = diesel::insert_into(silo::table).values((silo::id.eq(*id), silo::name.eq(name.as_str())));
                $body
            }
            Statement::InsertGroup { id, silo } => {
                let $query = diesel::insert_into(silo_group::table).values((
                    silo_group::id.eq(*id),
                    silo_group::silo_id.eq(*silo),
                    silo_group::name.eq("admin"),
                ));
                $body
            }
            Statement::DeleteRoles { resource } => {
                let $query = diesel::delete(role_assignment::table.filter(role_assignment::resource_id.eq(*resource)));
                $body
            }
            Statement::InsertRole { resource, identity } => {
                let $query = diesel::insert_into(role_assignment::table).values((
                    role_assignment::resource_id.eq(*resource),
                    role_assignment::identity_id.eq(*identity),
                    role_assignment::role.eq("admin"),
                ));
                $body
            }
            Statement::InsertCertificate { id, silo, cert } => {
                let $query = diesel::insert_into(certificate::table).values((
                    certificate::id.eq(*id),
                    certificate::silo_id.eq(*silo),
                    certificate::cert.eq(cert.as_str()),
                ));
                $body
            }
            Statement::InsertQuotas { silo, cpus, ram, storage } => {
                let $query = diesel::insert_into(silo_quotas::table).values((
                    silo_quotas::silo_id.eq(*silo),
                    silo_quotas::cpus.eq(*cpus),
                    silo_quotas::ram.eq(*ram),
                    silo_quotas::storage.eq(*storage),
                ));
                $body
            }
            Statement::InsertAuthSettings { silo, ttl } => {
                let $query = diesel::insert_into(silo_auth_settings::table).values((
                    silo_auth_settings::silo_id.eq(*silo),
                    silo_auth_settings::device_token_max_ttl_seconds.eq(*ttl),
                ));
                $body
            }
            Statement::UpdateItem { id, value } => {
                let $query = diesel::update(sync_item::table.filter(sync_item::id.eq(*id)))
                    .set(sync_item::value.eq(value.as_str()));
                $body
            }
            Statement::InsertMessage { id, item, value, clock } => {
                let $query = diesel::insert_into(sync_message::table).values((
                    sync_message::id.eq(*id),
                    sync_message::item_id.eq(*item),
                    sync_message::value.eq(value.as_str()),
                    sync_message::clock.eq(*clock),
                ));
                $body
            }
            Statement::UpdateClock { clock } => {
                let $query =
                    diesel::update(sync_clock::table.filter(sync_clock::id.eq(1))).set(sync_clock::clock.eq(*clock));
                $body
            }
            Statement::IncrementCounter { id } => {
                let $query = diesel::update(collection::table.filter(collection::id.eq(*id)))
                    .set(collection::cpus_provisioned.eq(collection::cpus_provisioned + 1));
                $body
            }
            Statement::InsertEvent { id, silo } => {
                let $query = diesel::insert_into(hot_row_event::table)
                    .values((hot_row_event::id.eq(*id), hot_row_event::silo_id.eq(*silo)));
                $body
            }
        }
    };
}

impl Statement {
    /// Adds the statement to a pgbatch batch.
    pub fn push_to(&self, batch: &mut pgbatch::Batch) {
        with_query!(self, |query| {
            batch.push(query);
        });
    }

    /// Executes the statement on a diesel-async connection.
    ///
    /// # Errors
    ///
    /// Diesel's error.
    pub async fn execute(&self, connection: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
        with_query!(self, |query| query.execute(connection).await)
    }

    /// The statement's SQL, as Diesel renders it.
    pub fn sql(&self) -> String {
        with_query!(self, |query| {
            let mut builder = PgQueryBuilder::default();
            query.to_sql(&mut builder, &Pg).expect("the workload's statements render");
            builder.finish()
        })
    }

    /// The OIDs of the statement's binds, as Diesel encodes them.
    pub fn bind_oids(&self) -> Vec<u32> {
        with_query!(self, |query| {
            let mut binds = RawBytesBindCollector::<Pg>::new();
            query.collect_binds(&mut binds, &mut NoCustomTypes, &Pg).expect("the workload's binds encode");
            binds.metadata.iter().map(|m| m.oid().unwrap_or(0)).collect()
        })
    }

    /// The statement's parameters in Diesel's bind order, for tokio-postgres.
    pub fn params(&self) -> Vec<Param> {
        use Param::*;
        match self.clone() {
            Statement::InsertProject { id, silo, name } => vec![Uuid(id), Uuid(silo), Text(name)],
            Statement::InsertCounter { id, kind } => vec![Uuid(id), Text(kind.to_owned())],
            Statement::InsertSilo { id, name } => vec![Uuid(id), Text(name)],
            Statement::InsertGroup { id, silo } => vec![Uuid(id), Uuid(silo), Text("admin".into())],
            Statement::DeleteRoles { resource } => vec![Uuid(resource)],
            Statement::InsertRole { resource, identity } => vec![Uuid(resource), Uuid(identity), Text("admin".into())],
            Statement::InsertCertificate { id, silo, cert } => vec![Uuid(id), Uuid(silo), Text(cert)],
            Statement::InsertQuotas { silo, cpus, ram, storage } => {
                vec![Uuid(silo), BigInt(cpus), BigInt(ram), BigInt(storage)]
            }
            Statement::InsertAuthSettings { silo, ttl } => vec![Uuid(silo), BigInt(ttl)],
            // UPDATE binds its SET values before its WHERE values.
            Statement::UpdateItem { id, value } => vec![Text(value), BigInt(id)],
            Statement::InsertMessage { id, item, value, clock } => {
                vec![Uuid(id), BigInt(item), Text(value), BigInt(clock)]
            }
            Statement::UpdateClock { clock } => vec![BigInt(clock), Int(1)],
            Statement::IncrementCounter { id } => vec![BigInt(1), Uuid(id)],
            Statement::InsertEvent { id, silo } => vec![Uuid(id), Uuid(silo)],
        }
    }
}

/// A metadata lookup for statements without custom types.
pub struct NoCustomTypes;

impl PgMetadataLookup for NoCustomTypes {
    fn lookup_type(&mut self, _type_name: &str, _schema: Option<&str>) -> PgTypeMetadata {
        PgTypeMetadata::new(0, 0)
    }
}

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// W1, scenario C1: a project and its provisioning counter (2 statements).
    CreateProject,
    /// W2, scenario C2: a silo with everything it owns (8 statements).
    CreateSilo,
    /// W3, scenario S1: 20 sync messages and the clock (41 statements).
    Sync,
}

impl Workload {
    /// All of them, in order.
    pub const ALL: [Workload; 3] = [Workload::CreateProject, Workload::CreateSilo, Workload::Sync];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Workload::CreateProject => "W1 C1 create project",
            Workload::CreateSilo => "W2 C2 create silo",
            Workload::Sync => "W3 S1 sync 20 messages",
        }
    }

    /// One transaction's statements, with fresh ids. `silo` is an existing silo.
    pub fn statements(self, silo: Uuid, round: i64) -> Vec<Statement> {
        match self {
            Workload::CreateProject => {
                let id = Uuid::new_v4();
                vec![
                    Statement::InsertProject { id, silo, name: format!("p-{id}") },
                    Statement::InsertCounter { id, kind: "project" },
                ]
            }
            Workload::CreateSilo => {
                let (id, admin) = (Uuid::new_v4(), Uuid::new_v4());
                vec![
                    Statement::InsertSilo { id, name: format!("s-{id}") },
                    Statement::InsertCounter { id, kind: "silo" },
                    Statement::InsertGroup { id: admin, silo: id },
                    Statement::DeleteRoles { resource: id },
                    Statement::InsertRole { resource: id, identity: admin },
                    Statement::InsertCertificate {
                        id: Uuid::new_v4(),
                        silo: id,
                        cert: "-----BEGIN CERTIFICATE-----".into(),
                    },
                    Statement::InsertQuotas { silo: id, cpus: 64, ram: 1 << 36, storage: 1 << 40 },
                    Statement::InsertAuthSettings { silo: id, ttl: 3600 },
                ]
            }
            Workload::Sync => {
                let mut statements = Vec::with_capacity(41);
                for item in 0..20 {
                    let value = format!("v{round}-{item}");
                    statements.push(Statement::UpdateItem { id: item, value: value.clone() });
                    statements.push(Statement::InsertMessage { id: Uuid::new_v4(), item, value, clock: round });
                }
                statements.push(Statement::UpdateClock { clock: round });
                statements
            }
        }
    }
}

/// The hot-row transaction (scenario C3's shape): increment the shared silo counter and
/// insert a row.
pub fn hot_row(silo: Uuid) -> Vec<Statement> {
    vec![Statement::IncrementCounter { id: silo }, Statement::InsertEvent { id: Uuid::new_v4(), silo }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_sizes() {
        let silo = Uuid::nil();
        assert_eq!(Workload::CreateProject.statements(silo, 0).len(), 2);
        assert_eq!(Workload::CreateSilo.statements(silo, 0).len(), 8);
        assert_eq!(Workload::Sync.statements(silo, 0).len(), 41);
    }

    #[test]
    fn tokio_postgres_parameters_match_diesel_binds() {
        let silo = Uuid::nil();
        let all = Workload::ALL.iter().flat_map(|w| w.statements(silo, 1)).chain(hot_row(silo));
        for statement in all {
            let ours: Vec<u32> = statement.params().iter().map(|p| p.ty().oid()).collect();
            assert_eq!(ours, statement.bind_oids(), "{}", statement.sql());
        }
    }
}
