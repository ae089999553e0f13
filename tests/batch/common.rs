//! What every test needs: a database of its own with the test schema, a pool, and ways to
//! look at what the server holds.

use std::io::Write;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, IsNull, Output, ToSql};
use pgbatch::ConnectionManager;
use pgbatch_testing::{Proxy, TestDatabase};

pub use pgbatch::Pool;

pub mod schema {
    diesel::table! {
        account (id) {
            id -> Int8,
            email -> Text,
            balance -> Int8,
        }
    }

    diesel::table! {
        note (id) {
            id -> Int8,
            account_id -> Int8,
            body -> Text,
        }
    }

    diesel::table! {
        audit (id) {
            id -> Int8,
            account_id -> Int8,
            action -> Text,
        }
    }

    diesel::table! {
        use diesel::sql_types::*;
        use super::super::MoodType;

        feeling (id) {
            id -> Int8,
            account_id -> Int8,
            mood -> MoodType,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(account, note, audit, feeling);
}

pub use schema::{account, audit, feeling, note};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = account, check_for_backend(Pg))]
pub struct Account {
    pub id: i64,
    pub email: String,
    pub balance: i64,
}

/// The PostgreSQL enum `mood`, a custom type whose OID differs per database.
#[derive(Debug, Clone, Copy, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "mood"))]
pub struct MoodType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = MoodType)]
pub enum Mood {
    Happy,
    Sad,
    Curious,
}

impl ToSql<MoodType, Pg> for Mood {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(match self {
            Mood::Happy => b"happy",
            Mood::Sad => b"sad",
            Mood::Curious => b"curious",
        })?;
        Ok(IsNull::No)
    }
}

impl FromSql<MoodType, Pg> for Mood {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        match bytes.as_bytes() {
            b"happy" => Ok(Mood::Happy),
            b"sad" => Ok(Mood::Sad),
            b"curious" => Ok(Mood::Curious),
            other => Err(format!("unknown mood {:?}", String::from_utf8_lossy(other)).into()),
        }
    }
}

/// A bind whose encoder always fails.
#[derive(Debug, AsExpression)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub struct Unencodable;

impl ToSql<diesel::sql_types::Text, Pg> for Unencodable {
    fn to_sql<'b>(&'b self, _out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        Err("this value refuses to be encoded".into())
    }
}

/// A test database with the schema, a pool on it, and a plain client for inspection.
pub struct Harness {
    pub db: TestDatabase,
    pub pool: Pool,
    pub client: tokio_postgres::Client,
}

impl Harness {
    pub async fn new() -> Harness {
        let db = TestDatabase::create().await.expect("a test database");
        db.execute(include_str!("schema.sql")).await.expect("the test schema");
        let pool = pool(db.config().clone(), 4).await;
        let client = db.connect().await.expect("an inspection connection");
        Harness { db, pool, client }
    }

    /// A pool whose connections carry `application_name`, so that a test can find (and
    /// terminate) their backends.
    pub async fn pool_named(&self, application_name: &str, size: u32) -> Pool {
        let mut config = self.db.config().clone();
        config.application_name(application_name);
        pool(config, size).await
    }

    /// A proxy in front of this database's server, and a pool of one connection through it,
    /// already connected, so that the proxy's byte count starts after the login.
    pub async fn behind_proxy(&self) -> (Proxy, Pool) {
        let proxy = self.db.proxy().await.expect("a TCP server").start().await.expect("a proxy");
        let pool = pool(self.db.config_via(&proxy), 1).await;
        drop(pool.get().await.expect("a connection through the proxy"));
        (proxy, pool)
    }

    /// Every row of every table, as text: equal snapshots mean nothing changed.
    pub async fn snapshot(&self) -> String {
        let tables = ["account", "note", "audit", "feeling"];
        let mut out = String::new();
        for table in tables {
            let rows = self
                .value(&format!("SELECT coalesce(string_agg(t::text, ';' ORDER BY t::text), '') FROM {table} t"))
                .await;
            out.push_str(&format!("{table}: {rows}\n"));
        }
        out
    }

    pub async fn count(&self, sql: &str) -> i64 {
        pgbatch_testing::count(&self.client, sql).await
    }

    /// The one value `sql` returns, as text. A simple query: no named statement, so it
    /// also works through a transaction-pooling PgBouncer.
    pub async fn value(&self, sql: &str) -> String {
        pgbatch_testing::query_value(&self.client, sql).await.expect(sql).unwrap_or_default()
    }

    /// Backends of this database left inside a transaction.
    pub async fn idle_in_transaction(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .await
    }
}

/// Runs a batch on every connection of `pool` (each runs after whatever is queued on its
/// connection, and must commit), then checks that no backend is left inside a transaction.
pub async fn pool_still_works(h: &Harness, pool: &Pool) {
    let mut tasks = Vec::new();
    for i in 0..pool.state().connections.max(1) {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = pgbatch::Batch::new();
            batch.push(insert_note(1, &format!("after {i}")));
            batch.run(&pool).await.map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("the pool runs batches after the interruption");
    }
    assert_eq!(h.idle_in_transaction().await, 0, "no backend may be left inside a transaction");
}

pub async fn pool(config: tokio_postgres::Config, size: u32) -> Pool {
    bb8::Pool::builder().max_size(size).build(ConnectionManager::new(config)).await.expect("a pool")
}

/// `INSERT INTO account (id, email)`.
pub fn insert_account(
    id: i64,
    email: &str,
) -> impl diesel::query_builder::QueryFragment<Pg> + diesel::query_builder::QueryId + use<> {
    diesel::insert_into(account::table).values((account::id.eq(id), account::email.eq(email.to_owned())))
}

/// `INSERT INTO note (account_id, body)`.
pub fn insert_note(
    account_id: i64,
    body: &str,
) -> impl diesel::query_builder::QueryFragment<Pg> + diesel::query_builder::QueryId + use<> {
    diesel::insert_into(note::table).values((note::account_id.eq(account_id), note::body.eq(body.to_owned())))
}
