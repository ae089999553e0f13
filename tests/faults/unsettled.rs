//! An unknown outcome that cannot be settled stays unknown. A keyed batch's connection is
//! lost after `COMMIT` went out (the server commits it, the client never hears), and no
//! fresh connection can be had to settle it on (the database refuses new connections, as
//! every server does for a moment in a failover). The answer must be
//! [`Error::OutcomeUnknown`] carrying the key, never the pool's "not sent": the batch did
//! commit.

use std::time::Duration;

use pgbatch::idempotency::{self, Resolution};
use pgbatch::{ConnectionManager, Error, IdempotencyKey};
use pgbatch_testing::Fault;

use crate::support::*;

#[tokio::test]
async fn an_outcome_with_no_connection_to_settle_it_on_stays_unknown_never_not_sent() {
    let faults = Faults::new().await;
    let proxy = faults.db.proxy().await.expect("a TCP server").start().await.expect("a proxy");
    let pool = bb8::Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_secs(1))
        .build(ConnectionManager::new(faults.db.config_via(&proxy)))
        .await
        .expect("a pool through the proxy");
    drop(pool.get().await.expect("a connection opened before the database closes its doors"));
    // A database's own sessions cannot close its doors: a session in another database does.
    let mut other = faults.db.config().clone();
    other.dbname("postgres");
    let (admin, connection) = other.connect(tokio_postgres::NoTls).await.expect("a session in `postgres`");
    tokio::spawn(connection);
    let doors = |allow: bool| format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {allow}", faults.db.name());
    admin.batch_execute(&doors(false)).await.unwrap();
    proxy.arm(Fault::CutAfterClientSends { pattern: b"COMMIT".to_vec() });

    let (batch, key) = keyed("unsettled", None);
    let error = batch.run(&pool).await.expect_err("the answer was lost");
    admin.batch_execute(&doors(true)).await.unwrap();

    assert!(matches!(error, Error::OutcomeUnknown(_)), "unknown, not {error:?}");
    assert!(error.may_have_committed(), "{error}");
    let Error::OutcomeUnknown(unknown) = &error else { unreachable!() };
    assert_eq!(unknown.idempotency_key(), Some("unsettled"), "the key to settle it with");
    let resolved = idempotency::resolve(&faults.inspect, &IdempotencyKey::new(key.key())).await.unwrap();
    assert!(matches!(resolved, Resolution::Committed { .. }), "it did commit: {resolved:?}");
    assert_eq!(faults.count("SELECT count(*) FROM project WHERE tag = 'unsettled'").await, 1);
}
