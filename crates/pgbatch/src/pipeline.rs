//! Sending `BEGIN`, the statements and `COMMIT` as one pipeline, and reading the answers.
//!
//! tokio-postgres writes a request to its connection the first time the request's future
//! is polled, and the connection sends requests in that order. So the pipeline is queued by
//! polling every step's future once, in order, inside one synchronous poll: from that
//! moment the whole transaction is on its way, and dropping the batch future can no longer
//! leave half of it behind. Answers are then read concurrently, because tokio-postgres
//! hands each request's answers through a channel of its own and a step waiting on a type
//! lookup must not block the steps after it.

use std::borrow::Cow;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use tokio_postgres::error::{DbError, Severity};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use crate::bind::RawBind;
use crate::connection::{Connection, ResolveError};
use crate::error::BuildError;
use crate::statement::{Statement, TypeName};

/// What one statement returned.
#[derive(Debug)]
pub(crate) struct StepOutput {
    pub(crate) rows: Vec<Row>,
    /// Rows affected (or returned, for queries), from the command tag.
    pub(crate) affected: u64,
}

/// How a pipeline failed, before labels and domain mappings are applied.
#[derive(Debug)]
pub(crate) enum PipelineError {
    /// A custom type does not exist; nothing was sent.
    Build(BuildError),
    /// The connection failed before any statement ran; nothing was written.
    Connection(tokio_postgres::Error),
    /// The connection was closed before `COMMIT` could be sent (or, for an open-ended
    /// pipeline, at any point): nothing was committed.
    Closed,
    /// Statement `index` failed on the server; the transaction was rolled back.
    Statement { index: usize, error: Box<DbError> },
    /// `COMMIT` failed; the transaction was rolled back.
    Commit(Box<DbError>),
    /// The answers were lost after `COMMIT` may have been processed.
    Unknown(Option<tokio_postgres::Error>),
    /// tokio-postgres refused to send statement `index`; `ROLLBACK` was sent instead of
    /// `COMMIT`.
    Send { index: usize, source: tokio_postgres::Error },
}

type StepResult = Result<StepOutput, tokio_postgres::Error>;
type StepFuture<'a> = Pin<Box<dyn Future<Output = StepResult> + Send + 'a>>;

/// How the pipeline ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// With `COMMIT`, in the same round trip.
    Commit,
    /// Without: the transaction stays open for a second round trip (two-phase batches). The
    /// caller must end it, also when the pipeline fails.
    Open,
}

/// Runs `statements` after `begin`, then `COMMIT` unless `end` is [`End::Open`], in one
/// round trip.
pub(crate) async fn run(
    connection: &mut Connection,
    begin: &str,
    statements: &[&Statement],
    end: End,
) -> Result<Vec<StepOutput>, PipelineError> {
    // The one exception to the single round trip: custom types the connection has not
    // met yet are looked up before anything of the batch is sent.
    let custom_types: Vec<&TypeName> = statements.iter().flat_map(|s| s.custom_types.iter()).collect();
    connection.resolve_types(custom_types).await.map_err(|error| match error {
        ResolveError::Unknown(error) => PipelineError::Build(error),
        ResolveError::Connection(error) => PipelineError::Connection(error),
    })?;
    if connection.is_closed() {
        return Err(PipelineError::Closed);
    }
    let params: Vec<Params<'_>> = statements.iter().map(|s| Params::new(s, connection)).collect();
    let client = connection.client();

    let step_count = statements.len() + 1 + usize::from(end == End::Commit);
    let mut steps: Vec<StepFuture<'_>> = Vec::with_capacity(step_count);
    let mut answers: Vec<Option<StepResult>> = (0..step_count).map(|_| None).collect();
    steps.push(Box::pin(step(client, begin, &NO_PARAMS)));
    for (statement, params) in statements.iter().zip(&params) {
        steps.push(Box::pin(step(client, &statement.sql, params)));
    }

    // Queue every step in one synchronous poll. A step can be answered within its first
    // poll (the connection runs on another thread), so being ready proves nothing; but an
    // error that is neither the server's nor a closed connection's is the client refusing
    // to send (an encoding failure). Then ROLLBACK takes COMMIT's place, so that a batch
    // with a missing statement cannot commit.
    let mut queued = Queued { refused: None, commit_unsent: false };
    poll_fn(|cx| {
        for (answer, step) in answers.iter_mut().zip(&mut steps) {
            if let Poll::Ready(result) = step.as_mut().poll(cx) {
                *answer = Some(result);
            }
        }
        queued.refused = answers[1..].iter().position(|answer| matches!(answer, Some(Err(e)) if is_refusal(e)));
        if end == End::Commit {
            // A client closed before COMMIT is queued cannot send it: then nothing commits,
            // whatever else happened. Closing is final, so this check cannot be outrun.
            queued.commit_unsent = client.is_closed();
            let end_sql = if queued.refused.is_some() { "ROLLBACK" } else { "COMMIT" };
            let mut end: StepFuture<'_> = Box::pin(step(client, end_sql, &NO_PARAMS));
            if let Poll::Ready(result) = end.as_mut().poll(cx) {
                answers[step_count - 1] = Some(result);
            }
            steps.push(end);
        }
        Poll::Ready(())
    })
    .await;

    // Read every answer. Each step keeps its index so the answers land in order.
    let mut pending: FuturesUnordered<_> = steps
        .into_iter()
        .enumerate()
        .filter(|(index, _)| answers[*index].is_none())
        .map(|(index, step)| async move { (index, step.await) })
        .collect();
    while let Some((index, result)) = pending.next().await {
        answers[index] = Some(result);
    }
    let answers = answers.into_iter().map(|a| a.expect("every step answered"));
    classify(answers, &queued, end)
}

/// What queueing the pipeline revealed.
struct Queued {
    /// The first statement the client refused to send.
    refused: Option<usize>,
    /// Whether the connection was already closed when `COMMIT` was queued.
    commit_unsent: bool,
}

/// Whether the client refused to send a request (as opposed to the server failing it or
/// the connection closing).
fn is_refusal(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_none() && !error.is_closed()
}

/// Sends `COMMIT` for a transaction left open by [`End::Open`]: the second round trip of a
/// two-phase batch.
pub(crate) async fn commit(connection: &Connection) -> Result<(), PipelineError> {
    if connection.is_closed() {
        return Err(PipelineError::Closed);
    }
    classify_commit(step(connection.client(), "COMMIT", &NO_PARAMS).await.map(drop))
}

/// Derives the batch's outcome from every step's answer. `COMMIT`'s `Ok` alone proves
/// nothing: after a failed statement PostgreSQL answers `COMMIT` with `ROLLBACK`, which
/// tokio-postgres reports as success.
fn classify(
    answers: impl Iterator<Item = StepResult>,
    queued: &Queued,
    end: End,
) -> Result<Vec<StepOutput>, PipelineError> {
    let mut answers: Vec<StepResult> = answers.collect();
    let end_answer = if end == End::Commit { answers.pop() } else { None };
    if queued.commit_unsent {
        // COMMIT never left the client: nothing can have committed.
        return Err(PipelineError::Closed);
    }
    if let Some(index) = queued.refused {
        let source = answers.swap_remove(index + 1).expect_err("a refused step fails");
        return Err(PipelineError::Send { index, source });
    }
    // Without COMMIT in the pipeline, a lost connection cannot have committed anything.
    let lost = |error| if end == End::Open { PipelineError::Closed } else { PipelineError::Unknown(Some(error)) };
    let mut answers = answers.into_iter();
    match answers.next().expect("the BEGIN step") {
        Ok(_) => {}
        // The BEGIN statements pgbatch writes fail with an ERROR only on a hot standby
        // (serializable isolation), where the statements after it, then outside any
        // transaction, cannot write either; a FATAL ends the session before they run. So
        // nothing was written.
        Err(error) if error.as_db_error().is_some() => return Err(PipelineError::Connection(error)),
        Err(error) => return Err(lost(error)),
    }
    let mut outputs = Vec::with_capacity(answers.len());
    for (index, answer) in answers.enumerate() {
        match answer {
            Ok(output) => outputs.push(output),
            // Any server error inside the transaction aborts it: COMMIT became ROLLBACK.
            Err(error) => {
                return Err(match error.as_db_error() {
                    Some(db_error) => PipelineError::Statement { index, error: Box::new(db_error.clone()) },
                    None => lost(error),
                });
            }
        }
    }
    match end_answer {
        None => Ok(outputs),
        Some(answer) => classify_commit(answer.map(drop)).map(|()| outputs),
    }
}

fn classify_commit(answer: Result<(), tokio_postgres::Error>) -> Result<(), PipelineError> {
    let Err(error) = answer else { return Ok(()) };
    match error.as_db_error() {
        // An ERROR answer to COMMIT means the transaction rolled back. A FATAL or PANIC
        // may come after the commit record was written: that is not knowable here.
        Some(db_error) if matches!(db_error.parsed_severity(), Some(Severity::Error)) => {
            Err(PipelineError::Commit(Box::new(db_error.clone())))
        }
        _ => Err(PipelineError::Unknown(Some(error))),
    }
}

/// Sends `ROLLBACK` and waits for its answer: the second round trip of a two-phase batch
/// the caller decided against.
pub(crate) async fn rollback(connection: &Connection) -> Result<(), tokio_postgres::Error> {
    step(connection.client(), "ROLLBACK", &NO_PARAMS).await.map(drop)
}

/// Queues `ROLLBACK` without waiting for it: the request is handed to the connection in
/// this call, and runs after everything queued before it. Usable from `Drop`. Returns
/// false when the connection refused it (it is closed, so the server rolls back anyway).
pub(crate) fn queue_rollback(connection: &Connection) -> bool {
    let mut rollback = std::pin::pin!(step(connection.client(), "ROLLBACK", &NO_PARAMS));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(rollback.as_mut().poll(&mut context), Poll::Pending)
}

/// One request: an unnamed statement with caller-given types (Parse, Bind, Describe,
/// Execute, Sync), its rows and its row count.
async fn step(client: &Client, sql: &str, params: &Params<'_>) -> StepResult {
    let stream = client.query_typed_raw(sql, params.iter()).await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        rows.push(row);
    }
    Ok(StepOutput { rows, affected: stream.rows_affected().unwrap_or(0) })
}

/// A statement's binds with their types, as sent on one connection.
struct Params<'s> {
    binds: Cow<'s, [Option<Vec<u8>>]>,
    types: Cow<'s, [Type]>,
}

const NO_PARAMS: Params<'static> = Params { binds: Cow::Borrowed(&[]), types: Cow::Borrowed(&[]) };

impl<'s> Params<'s> {
    /// Fills in custom types and patches custom OIDs embedded in bind bytes; borrows the
    /// statement as it is when it has none. Custom types were resolved on `connection`
    /// before this is called.
    fn new(statement: &'s Statement, connection: &Connection) -> Self {
        if statement.custom_binds.is_empty() && statement.oid_patches.is_empty() {
            return Params { binds: Cow::Borrowed(&statement.binds), types: Cow::Borrowed(&statement.types) };
        }
        let custom = |type_index: usize, array: bool| {
            connection
                .custom_type(&statement.custom_types[type_index], array)
                .expect("custom types are resolved before sending")
        };
        let mut types = statement.types.clone();
        for bind in &statement.custom_binds {
            types[bind.bind] = custom(bind.type_index, bind.array).clone();
        }
        let mut binds = statement.binds.clone();
        for patch in &statement.oid_patches {
            let oid = custom(patch.type_index, patch.array).oid();
            if let Some(bytes) = binds[patch.bind].as_mut() {
                bytes[patch.offset..patch.offset + 4].copy_from_slice(&oid.to_be_bytes());
            }
        }
        Params { binds: Cow::Owned(binds), types: Cow::Owned(types) }
    }

    fn iter(&self) -> impl ExactSizeIterator<Item = (RawBind<'_>, Type)> {
        self.binds.iter().zip(self.types.iter()).map(|(bind, ty)| (RawBind(bind.as_deref()), ty.clone()))
    }
}

#[cfg(test)]
mod tests {
    use pgbatch_testing::TestDatabase;
    use tokio_postgres::NoTls;

    use super::*;
    use crate::statement::MAX_BINDS;

    /// A statement tokio-postgres refuses to encode (more binds than the protocol carries).
    /// `Statement::render` refuses it first; it is built here directly to test the net
    /// behind that check.
    fn unsendable() -> Statement {
        let count = MAX_BINDS + 1;
        Statement {
            sql: "SELECT 1".to_owned(),
            binds: vec![None; count],
            types: vec![Type::INT4; count],
            custom_types: Vec::new(),
            custom_binds: Vec::new(),
            oid_patches: Vec::new(),
        }
    }

    fn insert(value: i32) -> Statement {
        Statement::render(&diesel::sql_query(format!("INSERT INTO t VALUES ({value})"))).expect("renders")
    }

    #[tokio::test]
    async fn a_statement_the_client_refuses_to_send_turns_commit_into_rollback() {
        let db = TestDatabase::create().await.expect("a test database");
        db.execute("CREATE TABLE t (a int)").await.unwrap();
        let inspect = db.connect().await.unwrap();
        let count = async || inspect.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get::<_, i64>(0);
        let mut connection = Connection::connect_with(db.config(), NoTls).await.unwrap();
        let (before, refused, after) = (insert(1), unsendable(), insert(2));

        let result = run(&mut connection, "BEGIN", &[&before, &refused, &after], End::Commit).await;
        assert!(matches!(result, Err(PipelineError::Send { index: 1, .. })), "{result:?}");
        assert_eq!(count().await, 0, "the statements around the refused one were sent, then rolled back");

        let result = run(&mut connection, "BEGIN", &[&before], End::Commit).await;
        assert!(result.is_ok(), "the connection is outside any transaction afterwards: {result:?}");
        assert_eq!(count().await, 1);
    }
}
