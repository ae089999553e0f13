//! The four ways to run a workload in one transaction.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::future::{MaybeDone, maybe_done};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls};

use crate::workload::{Param, Statement};

/// A boxed error that crosses tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    /// pgbatch: the statements pushed to a `Batch`, run in one round trip.
    Pgbatch,
    /// diesel-async `AsyncPgConnection::transaction`, interactive, statement cache warm.
    DieselAsync,
    /// tokio-postgres `Transaction`, interactive, prepared statements reused.
    TokioPostgres,
    /// A hand-written tokio-postgres pipeline: `BEGIN`, `execute_typed` per statement and
    /// `COMMIT`, queued together, each ending in its own `Sync`: the best tokio-postgres's
    /// request API allows.
    Pipeline,
}

impl Contender {
    /// All of them.
    pub const ALL: [Contender; 4] =
        [Contender::Pgbatch, Contender::DieselAsync, Contender::TokioPostgres, Contender::Pipeline];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Pgbatch => "pgbatch",
            Contender::DieselAsync => "diesel-async interactive",
            Contender::TokioPostgres => "tokio-postgres interactive",
            Contender::Pipeline => "hand-written pipeline",
        }
    }
}

/// One connection per contender, all to the same server address.
pub struct Clients {
    pgbatch: pgbatch::Connection,
    diesel: AsyncPgConnection,
    interactive: Client,
    prepared: HashMap<String, tokio_postgres::Statement>,
    pipeline: Client,
}

impl Clients {
    /// Connects every contender with `config` (whose `url` is the same server).
    ///
    /// # Errors
    ///
    /// When a connection fails.
    pub async fn connect(config: &Config, url: &str) -> Result<Self, BoxError> {
        Ok(Clients {
            pgbatch: pgbatch::Connection::connect_with(config).await?,
            diesel: AsyncPgConnection::establish(url).await?,
            interactive: plain(config).await?,
            prepared: HashMap::new(),
            pipeline: plain(config).await?,
        })
    }

    /// Runs `statements` in one transaction as `contender` does.
    ///
    /// # Errors
    ///
    /// The contender's error.
    pub async fn run(&mut self, contender: Contender, statements: &[Statement]) -> Result<(), BoxError> {
        match contender {
            Contender::Pgbatch => {
                let mut batch = pgbatch::Batch::new();
                for statement in statements {
                    statement.push_to(&mut batch);
                }
                batch.run(&mut self.pgbatch).await?;
            }
            Contender::DieselAsync => diesel_transaction(&mut self.diesel, statements).await?,
            Contender::TokioPostgres => {
                let requests: Vec<(String, Vec<Param>)> = statements.iter().map(|s| (s.sql(), s.params())).collect();
                for (sql, params) in &requests {
                    if !self.prepared.contains_key(sql) {
                        let types: Vec<Type> = params.iter().map(Param::ty).collect();
                        let prepared = self.interactive.prepare_typed(sql, &types).await?;
                        self.prepared.insert(sql.clone(), prepared);
                    }
                }
                let transaction = self.interactive.transaction().await?;
                for (sql, params) in &requests {
                    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
                    tokio_postgres::Transaction::execute(&transaction, &self.prepared[sql], &params).await?;
                }
                transaction.commit().await?;
            }
            Contender::Pipeline => pipeline(&self.pipeline, statements).await?,
        }
        Ok(())
    }
}

/// diesel-async's interactive transaction: one round trip per statement, plus `BEGIN` and
/// `COMMIT`.
///
/// # Errors
///
/// Diesel's error.
pub async fn diesel_transaction(connection: &mut AsyncPgConnection, statements: &[Statement]) -> Result<(), BoxError> {
    connection
        .transaction::<(), diesel::result::Error, _>(async |connection| {
            for statement in statements {
                statement.execute(connection).await?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// The hand-written pipeline: `BEGIN`, every statement and `COMMIT` queued on the first poll, in order,
/// then their answers read.
async fn pipeline(client: &Client, statements: &[Statement]) -> Result<(), BoxError> {
    let requests: Vec<(String, Vec<Param>)> = statements.iter().map(|s| (s.sql(), s.params())).collect();
    let params: Vec<Vec<(&(dyn ToSql + Sync), Type)>> =
        requests.iter().map(|(_, params)| params.iter().map(|p| (p.as_sql(), p.ty())).collect()).collect();
    type Request<'a> = MaybeDone<Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>>;
    let request = |future: Pin<Box<_>>| -> Request<'_> { maybe_done(future) };
    let mut futures: Vec<Request<'_>> = Vec::with_capacity(statements.len() + 2);
    futures.push(request(Box::pin(client.execute_typed("BEGIN", &[]))));
    for ((sql, _), params) in requests.iter().zip(&params) {
        futures.push(request(Box::pin(client.execute_typed(sql, params))));
    }
    futures.push(request(Box::pin(client.execute_typed("COMMIT", &[]))));
    // Poll each once, in order, so they are queued in order; then wait for each answer.
    poll_fn(|cx| {
        for future in &mut futures {
            let _ = Pin::new(future).poll(cx);
        }
        Poll::Ready(())
    })
    .await;
    for request in &mut futures {
        (&mut *request).await;
        Pin::new(request).take_output().expect("an answer")?;
    }
    Ok(())
}

/// A plain tokio-postgres connection.
///
/// # Errors
///
/// The connection error.
pub async fn plain(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
