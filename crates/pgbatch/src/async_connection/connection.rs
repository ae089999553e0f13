//! The diesel-async traits on pgbatch's connection: each query one unit of its own, each
//! `batch_execute` one simple query, the transaction manager diesel-async's own, kept in step
//! with what the server reports.

use std::sync::Arc;
use std::time::Instant;

use diesel::connection::{
    CacheSize, DynInstrumentation, Instrumentation, InstrumentationEvent, StrQueryHelper, TransactionManagerStatus,
};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{ConnectionError, ConnectionResult, QueryResult};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
};
use futures_util::future::BoxFuture;
use tracing::Instrument;
use tracing::field::Empty;

use super::AsyncRow;
use super::error::{from_ending, from_not_sent};
use crate::codec::{Boundary, Statement, StepOutput, boundary};
use crate::connection::{Attachment, Connection, TxStatus};
use crate::error::{BuildError, ConnectError, statement_class};
use crate::protocol::{Answers, Ending, NotSent};
use crate::run::record::{client_span, record_failure, record_peer};
use crate::telemetry;

/// The rows of a loaded query: all of them arrived with its answers.
type Rows = futures_util::stream::Iter<std::vec::IntoIter<QueryResult<AsyncRow>>>;

/// What a diesel-async caller keeps on the connection: the transaction manager its
/// `transaction` calls go through, and its instrumentation.
struct CallerState {
    transaction_manager: AnsiTransactionManager,
    instrumentation: DynInstrumentation,
}

impl Default for CallerState {
    fn default() -> Self {
        CallerState {
            transaction_manager: AnsiTransactionManager::default(),
            instrumentation: DynInstrumentation::default_instrumentation(),
        }
    }
}

impl Attachment for CallerState {
    /// [`Connection::check`], except that a diesel-async test transaction
    /// (`begin_test_transaction`, which tests keep open on a pool of one) is kept, unless
    /// diesel-async's transaction manager gave up on the connection.
    fn fit_to_lend(connection: &mut Connection, checked: Result<(), ConnectError>) -> Result<(), ConnectError> {
        // The manager gave up (a transaction statement's future was dropped, a rollback
        // failed): the connection's state is unknown.
        if AnsiTransactionManager::is_broken_transaction_manager(connection) {
            return Err(ConnectError::Unclean);
        }
        let in_test_transaction = matches!(
            AnsiTransactionManager::transaction_manager_status_mut(connection).transaction_state(),
            Ok(state) if state.in_transaction.as_ref().is_some_and(|open| open.test_transaction)
        );
        if matches!(checked, Err(ConnectError::Unclean)) && in_test_transaction {
            return Ok(());
        }
        checked
    }
}

impl SimpleAsyncConnection for Connection {
    /// Runs `query` (one statement or several) as one simple query: one round trip.
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let shown = StrQueryHelper::new(query);
        self.caller().instrumentation.on_connection_event(InstrumentationEvent::start_query(&shown));
        let (span, started) = self.query_span();
        let answered = self.simple_request(query).instrument(span.clone()).await;
        record_query(&span, started, &answered);
        let result = match answered {
            Ok(Answers { ending: Ending::Done, .. }) => Ok(()),
            Ok(Answers { ending, .. }) => Err(from_ending(ending)),
            Err(reason) => Err(from_not_sent(reason)),
        };
        self.note_serialization_failure(query, &result);
        self.caller()
            .instrumentation
            .on_connection_event(InstrumentationEvent::finish_query(&shown, result.as_ref().err()));
        result
    }
}

impl AsyncConnectionCore for Connection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = Rows;
    type Row<'conn, 'query> = AsyncRow;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Pg> + QueryId + 'query,
    {
        // Rendered now: the future owns what it sends, not the query.
        let statement = Statement::render_for_caller(&source.as_query());
        Box::pin(async move {
            let output = self.run_caller_statement(statement).await?;
            let rows: Vec<QueryResult<AsyncRow>> = output.rows.into_iter().map(Ok).collect();
            Ok(futures_util::stream::iter(rows))
        })
    }

    fn execute_returning_count<'conn, 'query, T>(&'conn mut self, source: T) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Pg> + QueryId + 'query,
    {
        let statement = Statement::render_for_caller(&source);
        Box::pin(async move {
            let output = self.run_caller_statement(statement).await?;
            usize::try_from(output.affected).map_err(|error| DieselError::DeserializationError(Box::new(error)))
        })
    }
}

impl AsyncConnection for Connection {
    type TransactionManager = AnsiTransactionManager;

    /// Connects as [`Connection::connect`] does: a URL or `key=value` string, every
    /// setting pgbatch's [`Config`](crate::Config) reads (TLS, several hosts,
    /// `target_session_attrs`).
    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        let mut instrumentation = DynInstrumentation::default_instrumentation();
        instrumentation.on_connection_event(InstrumentationEvent::start_establish_connection(database_url));
        let connected = Connection::connect(database_url).await.map_err(|error| match error {
            ConnectError::Config(message) => ConnectionError::InvalidConnectionUrl(message),
            other => ConnectionError::BadConnection(other.to_string()),
        });
        instrumentation.on_connection_event(InstrumentationEvent::finish_establish_connection(
            database_url,
            connected.as_ref().err(),
        ));
        let mut connection = connected?;
        connection.caller().instrumentation = instrumentation;
        Ok(connection)
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        &mut self.caller().transaction_manager
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut *self.caller().instrumentation
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.caller().instrumentation = instrumentation.into();
    }

    /// Does nothing: pgbatch sends every statement unnamed, with no server-side cache.
    fn set_prepared_statement_cache_size(&mut self, _size: CacheSize) {}
}

/// `save_changes` ([`diesel_async::SaveChangesDsl`]) on pgbatch's connection, as on
/// `AsyncPgConnection`: one `UPDATE ... RETURNING`, one round trip. Through a pooled
/// connection too (diesel-async implements it for anything that dereferences to this).
impl<'b, Changes, Output, Tab, V> diesel_async::UpdateAndFetchResults<Changes, Output> for Connection
where
    Output: Send + 'static,
    Changes: Copy + diesel::AsChangeset<Target = Tab> + Send + diesel::associations::Identifiable<Table = Tab>,
    Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
    diesel::dsl::Find<Tab, Changes::Id>: diesel::query_builder::IntoUpdateTarget<Table = Tab, WhereClause = V>,
    diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>: diesel::query_builder::AsQuery,
    diesel::dsl::Update<Changes, Changes>: diesel_async::methods::LoadQuery<'b, Self, Output>,
    V: Send + 'b,
    Changes::Changeset: Send + 'b,
    Tab::FromClause: Send,
{
    fn update_and_fetch<'conn, 'changes>(
        &'conn mut self,
        changeset: Changes,
    ) -> BoxFuture<'changes, QueryResult<Output>>
    where
        Changes: 'changes,
        Changes::Changeset: 'changes,
        'conn: 'changes,
        Self: 'changes,
    {
        use diesel_async::RunQueryDsl;
        Box::pin(async move { diesel::update(changeset).set(changeset).get_result(self).await })
    }
}

impl diesel_async::pooled_connection::PoolableConnection for Connection {
    /// diesel-async's pool managers ask this as they take a connection back (bb8, mobc) or
    /// before they lend it again (deadpool): the holder's time with the session ends there,
    /// so the next holder's first request resets it.
    fn is_broken(&mut self) -> bool {
        self.hand_over();
        AnsiTransactionManager::is_broken_transaction_manager(self) || self.is_closed()
    }
}

/// Records what became of one of the caller's requests on its span and in the metrics: its
/// class and SQLSTATE when it failed (never its text or binds).
fn record_query(span: &tracing::Span, started: Instant, answered: &Result<Answers, NotSent>) {
    let (class, code) = match answered {
        Ok(Answers { ending: Ending::Done, .. }) => (None, None),
        Ok(Answers { ending: Ending::Failed { error, .. }, .. }) => {
            let code = error.code();
            (Some(statement_class(code, "statement")), Some(code.code()))
        }
        Ok(Answers { ending: Ending::Lost { .. }, .. }) => (Some("connection"), None),
        Err(NotSent::Prelude { .. }) => (Some("session_reset"), None),
        Err(NotSent::Encode { .. } | NotSent::UnknownType(_)) => (Some("invalid"), None),
        Err(_) => (Some("connection_closed"), None),
    };
    let class = record_failure(span, class, code);
    telemetry::operation_finished(None, None, class, None, started.elapsed());
}

impl Connection {
    /// The span of one of the caller's requests (`pgbatch.query`), and when it began.
    fn query_span(&self) -> (tracing::Span, Instant) {
        let span = client_span!("pgbatch.query", Empty, Empty,);
        record_peer(&span, self.peer().map(Arc::as_ref));
        (span, Instant::now())
    }

    /// The diesel-async caller's state on this connection.
    fn caller(&mut self) -> &mut CallerState {
        self.attachment()
    }

    /// Runs one rendered statement of the caller's, with instrumentation, and keeps the
    /// transaction manager in step with the server.
    async fn run_caller_statement(&mut self, statement: Result<Statement, BuildError>) -> QueryResult<StepOutput> {
        // Nothing is sent for a statement that cannot be rendered or encoded.
        let statement = statement.map_err(|error| DieselError::SerializationError(Box::new(error)))?;
        let shown = StrQueryHelper::new(&statement.sql.text);
        self.caller().instrumentation.on_connection_event(InstrumentationEvent::start_query(&shown));
        let (span, started) = self.query_span();
        let answered = self.request(&statement).instrument(span.clone()).await;
        let answered = answered.map(|(answers, prepared)| {
            if prepared {
                // As `AsyncPgConnection` says when it prepares a statement into its cache.
                let sql = &statement.sql.text;
                self.caller().instrumentation.on_connection_event(InstrumentationEvent::cache_query(sql));
            }
            answers
        });
        record_query(&span, started, &answered);
        let result = match answered {
            Ok(Answers { mut outputs, ending: Ending::Done, .. }) => Ok(outputs.pop().unwrap_or_default()),
            Ok(Answers { ending, .. }) => Err(from_ending(ending)),
            Err(reason) => Err(from_not_sent(reason)),
        };
        self.note_serialization_failure(&statement.sql.text, &result);
        self.keep_transaction_manager_in_step();
        self.caller()
            .instrumentation
            .on_connection_event(InstrumentationEvent::finish_query(&shown, result.as_ref().err()));
        result
    }

    /// As on `AsyncPgConnection`: a serialization failure of a query inside a transaction
    /// (other than its `COMMIT`) dooms the whole transaction on PostgreSQL, so the
    /// transaction manager is told that it must be rolled back up to the top level, and
    /// tolerates savepoint rollbacks that fail on the way.
    fn note_serialization_failure<T>(&mut self, sql: &str, result: &QueryResult<T>) {
        if let Err(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) = result
            && boundary(sql) != (Boundary::Ends { commits: true })
        {
            AnsiTransactionManager::transaction_manager_status_mut(self)
                .set_requires_rollback_maybe_up_to_top_level(true);
        }
    }

    /// After a query: when the server reports no transaction but the transaction manager
    /// has one open (a statement ended it behind the manager's back, `COMMIT` written as a
    /// query), the manager is marked in error, so that its next transaction call fails and
    /// a pool discards the connection, instead of the two disagreeing.
    fn keep_transaction_manager_in_step(&mut self) {
        let server_idle = self.status() == TxStatus::Idle;
        let status: &mut TransactionManagerStatus = AnsiTransactionManager::transaction_manager_status_mut(self);
        if server_idle && matches!(status.transaction_depth(), Ok(Some(_))) {
            tracing::warn!("a query ended the transaction the transaction manager had open: marking it broken");
            status.set_in_error();
        }
    }
}
