//! Scenario C5: replace a VPC's firewall rules as one change, and what happens when the
//! VPC is gone or the new rules clash.
//!
//! ```sh
//! cargo run --example replace_firewall_rules
//! ```

use diesel::prelude::*;
use pgbatch::{Batch, Error};
use pgbatch_scenarios::firewall::{self, FirewallError, Rule};
use pgbatch_scenarios::schema::{vpc, vpc_firewall_rule};
use pgbatch_scenarios::seed::{Quotas, playground, seed};
use uuid::Uuid;

fn rules(names: &[&str]) -> Vec<Rule> {
    names.iter().map(|name| Rule { name: name.to_string(), action: "allow".into() }).collect()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, pool) = playground().await?;
    let world = seed(&pool, "engineering", Quotas { cpus: 64, ram: 1 << 40, storage: 1 << 50 }).await?;
    let (live, deleted) = (Uuid::new_v4(), Uuid::new_v4());
    let mut setup = Batch::new();
    setup.push(diesel::insert_into(vpc::table).values(vec![
        (vpc::id.eq(live), vpc::project_id.eq(world.project)),
        (vpc::id.eq(deleted), vpc::project_id.eq(world.project)),
    ]));
    setup.push(diesel::update(vpc::table.find(deleted)).set(vpc::deleted_at.eq(diesel::dsl::now)));
    setup.run(&pool).await?;

    for (case, vpc_id, new_rules) in [
        ("replace with ssh, https", live, rules(&["ssh", "https"])),
        ("duplicate names", live, rules(&["dns", "dns"])),
        ("deleted vpc", deleted, rules(&["ssh"])),
        ("empty rule set", live, Vec::new()),
    ] {
        let mut batch = Batch::<FirewallError>::default();
        batch.append(firewall::replace_rules(vpc_id, &new_rules));
        match batch.run(&pool).await {
            Ok(_) => println!("{case}: ok"),
            Err(Error::Domain { error, failure }) => println!("{case}: {error}; {failure}"),
            Err(other) => return Err(other.into()),
        }
        let mut count = Batch::new();
        let live_rules = count
            .push(
                vpc_firewall_rule::table
                    .filter(vpc_firewall_rule::vpc_id.eq(live))
                    .filter(vpc_firewall_rule::deleted_at.is_null())
                    .count(),
            )
            .one::<i64>();
        println!("  live rules of the vpc: {}", count.run(&pool).await?.get(&live_rules)?);
    }
    Ok(())
}
