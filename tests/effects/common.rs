//! A database of the test's own with the intent table and a ledger standing for the rows
//! an effect implies.

use pgbatch::intent::Intents;
use pgbatch_testing::TestDatabase;

pub use pgbatch::Pool;

pub struct Harness {
    /// The test's database (dropped with the harness).
    pub db: TestDatabase,
    pub pool: Pool,
    pub client: tokio_postgres::Client,
    pub intents: Intents,
}

impl Harness {
    pub async fn new() -> Harness {
        let db = TestDatabase::create().await.expect("a test database");
        db.execute("CREATE TABLE ledger (key text PRIMARY KEY, amount bigint NOT NULL)").await.expect("the ledger");
        let pool = db.pool(4).await.expect("a pool");
        let client = db.connect().await.expect("an inspection connection");
        let intents = Intents::new();
        intents.install(&pool).await.expect("the intent table");
        Harness { db, pool, client, intents }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        pgbatch_testing::count(&self.client, sql).await
    }

    pub async fn execute(&self, sql: &str) {
        self.client.batch_execute(sql).await.expect(sql);
    }

    /// The state of the `upload` intent with `key`.
    pub async fn state(&self, key: &str) -> String {
        let row = self
            .client
            .query_one("SELECT state FROM pgbatch_intent WHERE kind = 'upload' AND key = $1", &[&key])
            .await
            .expect("the intent");
        row.get(0)
    }
}
