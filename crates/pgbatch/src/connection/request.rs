//! The caller's own requests, outside any batch: one statement (a diesel-async query) as a
//! unit of its own, or SQL text as one simple query (`batch_execute`).
//!
//! ```text
//! client                                                     server
//!   |-- [prelude: ROLLBACK, the session reset, when due]  -->|
//!   |-- Parse/Bind/Describe/Execute s, Sync               -->|  the caller's request
//!   |<-- answers, in the same order -------------------------|
//! ```
//!
//! The session is the holder's between its requests (a `SET`, a temporary table, `LISTEN`
//! stay for its next query, as on `AsyncPgConnection`); it is reset before the first request
//! of the next holder, in that request's own segment, so that the request never runs when
//! the reset fails. SQL text that holds one statement is sent as an extended-protocol step
//! when a prelude is due, to share its segment; text of several statements cannot share one,
//! and waits for the prelude's answer first (a round trip of its own, only then). A request
//! that leaves a transaction open marks it as the caller's, which batches then join and
//! never end.

use postgres_protocol::message::frontend;

use super::flight::{Flight, Unit};
use super::state::{Connection, TxStatus};
use super::statements::{CacheMiss, Target, prepared_in};
use super::step::{queue_unit, step, step_as};
use super::types::WireBinds;
use crate::codec::{Boundary, Statement, boundary, is_one_statement};
use crate::error::{ServerError, SqlState};
use crate::protocol::Collector;
use crate::protocol::Prelude;
use crate::protocol::{Answers, Ending, NotSent, Position};

impl Connection {
    /// Runs one statement of the caller's, with binary binds and results, and collects its
    /// rows and row count.
    ///
    /// Returns also whether the statement was prepared into the statement cache (a miss).
    /// A statement sent by a cached name that the server could no longer run as prepared
    /// ([`CacheMiss`]) makes the connection forget its cache; outside a transaction the
    /// statement did not commit, so it is sent once more, unnamed, so that it cannot miss
    /// again. Inside one the failure stands, as on `AsyncPgConnection`: the transaction is
    /// aborted.
    pub(crate) async fn request(&mut self, statement: &Statement) -> Result<(Answers, bool), NotSent> {
        self.ready().await?;
        let autocommit = self.status() == TxStatus::Idle;
        let (answers, target) = self.request_once(statement, false).await?;
        let prepared = matches!(target, Target::Prepare(_));
        if !CacheMiss::in_answers(&answers, &[target != Target::Unnamed]) {
            return Ok((answers, prepared));
        }
        // A statement that missed was not prepared into the cache, nor is one sent unnamed.
        self.after_cache_miss();
        if !autocommit {
            return Ok((answers, false));
        }
        Ok((self.request_once(statement, true).await?.0, false))
    }

    /// One sending of [`request`](Self::request)'s statement (`unnamed`: past the statement
    /// cache), and how it was sent.
    async fn request_once(&mut self, statement: &Statement, unnamed: bool) -> Result<(Answers, Target), NotSent> {
        super::types::resolve(self, &[statement]).await?;
        let binds = WireBinds::new(self, statement);
        let (oids, values) = binds.get();
        let text = &statement.sql.text;
        let prelude = self.prelude(true);
        let target = if unnamed { Target::Unnamed } else { self.statements.target_for(statement, oids) };
        let answers = self
            .send(prelude, &target, |buf| {
                step_as(buf, &target, text, oids, values, true)?;
                frontend::sync(buf);
                Ok(())
            })
            .await?;
        Ok((answers, target))
    }

    /// Runs SQL text (several statements allowed) as one simple query. Its rows are read
    /// and dropped; a `COMMIT` that the server turns into a rollback (the transaction had
    /// failed) fails with `25P02`, as no error from the server would say.
    pub(crate) async fn simple_request(&mut self, sql: &str) -> Result<Answers, NotSent> {
        self.ready().await?;
        let commits_a_failed_transaction =
            self.status() == TxStatus::Failed && boundary(sql) == (Boundary::Ends { commits: true });
        let prelude = self.prelude(true);
        let mut answers = if prelude == Prelude::NONE {
            self.send(prelude, &Target::Unnamed, |buf| frontend::query(sql, buf)).await?
        } else if is_one_statement(sql) {
            self.send(prelude, &Target::Unnamed, |buf| {
                step(buf, sql, &[], &[], true)?;
                frontend::sync(buf);
                Ok(())
            })
            .await?
        } else {
            self.make_ready(prelude).await?;
            self.send(Prelude::NONE, &Target::Unnamed, |buf| frontend::query(sql, buf)).await?
        };
        if commits_a_failed_transaction && matches!(answers.ending, Ending::Done) {
            let error = ServerError::synthetic(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "COMMIT rolled the transaction back: a statement in it had failed".to_owned(),
            );
            answers.ending = Ending::Failed { at: Position::End, error: Box::new(error) };
        }
        Ok(answers)
    }

    /// Runs `prelude` alone, in a round trip of its own; fails with nothing of the caller's
    /// sent when a step of it fails.
    async fn make_ready(&mut self, prelude: Prelude) -> Result<(), NotSent> {
        let answers = self
            .send(prelude, &Target::Unnamed, |buf| {
                frontend::sync(buf);
                Ok(())
            })
            .await?;
        match answers.ending {
            Ending::Lost { error, .. } => Err(NotSent::Wire(error)),
            // A failed prelude is already `NotSent`; nothing else ran.
            Ending::Done | Ending::Failed { .. } => Ok(()),
        }
    }

    /// Sends `prelude` and the request `queue_request` writes in one write, and collects the
    /// request's answers; gives the session up when the prelude could not clear it.
    /// `target`: how the request's statement is sent (unnamed for SQL text).
    async fn send(
        &mut self,
        prelude: Prelude,
        target: &Target,
        queue_request: impl FnOnce(&mut bytes::BytesMut) -> std::io::Result<()>,
    ) -> Result<Answers, NotSent> {
        let targets = std::slice::from_ref(target);
        // On an error nothing of it is sent: the connection stays as it was.
        let prepared = match queue_unit(self, prelude, |buf, parses| {
            queue_request(buf)?;
            Ok(prepared_in(targets, parses).0)
        }) {
            Ok((request, mut prepared)) => {
                prepared.extend(request);
                prepared
            }
            Err(error) => {
                self.statements.unwritten(targets);
                return Err(NotSent::Encode { index: 0, error });
            }
        };
        let mut flight = Flight::new();
        // One statement, or as many as a simple query holds: each completion is an output.
        let collector = Collector::new(0, usize::MAX, 0, None).after(prelude).preparing(prepared);
        flight.push(self, Unit::Collect(collector));
        self.note_use(false);
        let mut landed = flight.land(self).await;
        let answers = landed.answers.pop().expect("the request's unit is collected");
        let answers = self.after_prelude(prelude, answers).await;
        self.note_caller_request();
        answers
    }
}
