//! Scenario C2: create a silo with everything it owns (counter, admin group, role
//! assignments, certificates, quotas, auth settings) as one batch of about eight
//! statements, one round trip — and see that a bad certificate or a taken name leaves no
//! row anywhere, with the error naming the statement by its label.
//!
//! ```sh
//! cargo run --example create_silo
//! ```
//!
//! The example works in a throwaway database of its own (see `pgbatch-testing`).

use pgbatch::Batch;
use pgbatch_scenarios::example::report_failure;
use pgbatch_scenarios::seed::Quotas;
use pgbatch_scenarios::silo::{self, NewSilo, SiloError};
use uuid::Uuid;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (db, pool) = pgbatch_scenarios::seed::playground().await?;
    let client = db.connect().await?;
    let new = |name: &str, certificates: &[&str]| NewSilo {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        admin_group: Uuid::new_v4(),
        certificates: certificates.iter().map(|c| (*c).to_owned()).collect(),
        quotas: Quotas { cpus: 64, ram: 1 << 36, storage: 1 << 40 },
        device_token_max_ttl_seconds: 3600,
    };
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----";

    // 1. Success: every statement commits together.
    let mut batch = Batch::<SiloError>::default();
    batch.append(silo::create(&new("engineering", &[PEM, PEM])));
    batch.run(&pool).await?;
    println!("created silo \"engineering\" with {} statements in one round trip", batch.len());
    println!("  rows: {}", rows(&client).await?);

    // 2. A bad certificate, and 3. a taken name: nothing of either silo is written.
    for (case, silo) in
        [("bad certificate", new("research", &[PEM, "not a certificate"])), ("duplicate name", new("engineering", &[]))]
    {
        let mut batch = Batch::<SiloError>::default();
        batch.append(silo::create(&silo));
        report_failure(case, batch.run(&pool).await);
        println!("  rows: {}", rows(&client).await?);
    }
    Ok(())
}

/// How many rows each of the silo's tables holds.
async fn rows(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let mut counts = Vec::new();
    for table in silo::TABLES {
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0);
        counts.push(format!("{table}={n}"));
    }
    Ok(counts.join(" "))
}
