//! Scenario C1: create a project and its provisioning counter, atomically, in one round
//! trip — and what the caller sees when it cannot be done.
//!
//! ```sh
//! cargo run --example create_project
//! ```
//!
//! The example works in a throwaway database of its own (see `pgbatch-testing`), so it can
//! run against any server it is pointed at.

use diesel::prelude::*;
use pgbatch::error::StatementFailure;
use pgbatch::{Batch, Error};
use pgbatch_scenarios::project::{self, ProjectError};
use pgbatch_scenarios::schema::{project as project_table, silo};
use uuid::Uuid;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgbatch_scenarios::example::run(example()).await
}

async fn example() -> Result<(), Box<dyn std::error::Error>> {
    let (db, pool) = pgbatch_scenarios::seed::playground().await?;

    let silo_id = Uuid::new_v4();
    let mut setup = Batch::new();
    setup.push(diesel::insert_into(silo::table).values((silo::id.eq(silo_id), silo::name.eq("engineering"))));
    setup.run(&pool).await?;

    // 1. Success: the guard, the project and its counter commit together.
    let (fragment, handle) = project::create(Uuid::new_v4(), silo_id, "apollo");
    let mut batch = Batch::<ProjectError>::default();
    batch.append(fragment);
    let committed = batch.run(&pool).await?;
    println!("created: {:?}", committed.get(&handle)?);

    // 2. A duplicate name: the fragment maps the unique violation to its domain error.
    let (fragment, _) = project::create(Uuid::new_v4(), silo_id, "apollo");
    let mut batch = Batch::<ProjectError>::default();
    batch.append(fragment);
    report("duplicate name", batch.run(&pool).await);

    // 3. A failure forced in the second statement (a stale counter row already holds the
    //    new project's id): nothing of the batch remains, the project row included.
    let id = Uuid::new_v4();
    db.execute(&format!(
        "INSERT INTO virtual_provisioning_collection (id, collection_type) VALUES ('{id}', 'project')"
    ))
    .await?;
    let (fragment, _) = project::create(id, silo_id, "gemini");
    let mut batch = Batch::<ProjectError>::default();
    batch.append(fragment);
    report("forced failure in the second statement", batch.run(&pool).await);
    let mut check = Batch::new();
    let left = check.push(project_table::table.filter(project_table::name.eq("gemini")).count()).one::<i64>();
    println!("  projects named \"gemini\" afterwards: {}", check.run(&pool).await?.get(&left)?);
    Ok(())
}

fn report<T>(case: &str, result: Result<T, Error<ProjectError>>) {
    match result {
        Ok(_) => println!("{case}: unexpectedly committed"),
        Err(Error::Domain { error, failure }) => {
            println!("{case}: {error}");
            outcomes(&failure);
        }
        Err(Error::Statement(failure)) => {
            println!("{case}: {failure}");
            outcomes(&failure);
        }
        Err(other) => println!("{case}: {other}"),
    }
}

fn outcomes(failure: &StatementFailure) {
    for (index, outcome) in failure.outcomes().enumerate() {
        println!("  statement {index}: {outcome:?}");
    }
}
