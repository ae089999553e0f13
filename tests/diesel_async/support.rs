//! A database with a `note` table, a pgbatch connection or pool on it, and a client that
//! looks from outside.

use diesel::ExpressionMethods;
use diesel_async::AsyncConnection;
use pgbatch::{Batch, Connection, Pool};
use pgbatch_testing::TestDatabase;

diesel::table! {
    note (id) {
        id -> Int8,
        body -> Text,
    }
}

pub const SCHEMA: &str = "CREATE TABLE note (id bigserial PRIMARY KEY, body text NOT NULL UNIQUE)";

pub struct Setup {
    pub db: TestDatabase,
    /// Another session: sees only what is committed.
    pub outside: tokio_postgres::Client,
}

impl Setup {
    pub async fn new() -> Setup {
        let db = TestDatabase::create().await.expect("a test database");
        db.execute(SCHEMA).await.expect("the schema");
        let outside = db.connect().await.expect("an outside session");
        Setup { db, outside }
    }

    /// A connection made the way diesel-async makes one: `establish` with a URL.
    pub async fn connection(&self) -> Connection {
        Connection::establish(&self.db.url()).await.expect("a connection")
    }

    pub async fn pool(&self, size: u32) -> Pool {
        bb8::Pool::builder()
            .max_size(size)
            .build(pgbatch::ConnectionManager::new(self.db.config().clone()))
            .await
            .expect("a pool")
    }

    /// Notes with `body`, as another session sees them.
    pub async fn seen(&self, body: &str) -> i64 {
        pgbatch_testing::count(&self.outside, &format!("SELECT count(*) FROM note WHERE body = '{body}'")).await
    }

    /// Backends of this database inside a transaction, this one's own aside.
    pub async fn open_transactions(&self) -> i64 {
        pgbatch_testing::count(
            &self.outside,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
        .await
    }
}

/// Inserts a note with a diesel-async query.
pub async fn insert(conn: &mut Connection, body: &str) -> diesel::QueryResult<usize> {
    use diesel_async::RunQueryDsl;
    diesel::insert_into(note::table).values(note::body.eq(body)).execute(conn).await
}

/// A batch that inserts a note per body.
pub fn notes(bodies: &[&str]) -> Batch {
    let mut batch = Batch::new();
    for body in bodies {
        batch.push(diesel::insert_into(note::table).values(note::body.eq(body.to_string()))).label(body.to_string());
    }
    batch
}
