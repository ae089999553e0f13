//! The caller's own requests, outside any batch: one statement (a diesel-async query) as a
//! unit of its own, or SQL text as one simple query (`batch_execute`).
//!
//! ```text
//! client                                                     server
//!   |-- [ROLLBACK, if pgbatch left a transaction behind]  -->|
//!   |-- [DISCARD ALL, setup..., if a reset is still due]  -->|
//!   |-- Parse/Bind/Describe/Execute s, Sync  (or Query)   -->|  the caller's request
//!   |-- DISCARD ALL, setup...  (when it ends idle)        -->|  no session state survives
//!   |<-- answers, in the same order -------------------------|
//! ```
//!
//! The session reset follows in the same write only when the request is known to end
//! outside any transaction (see [`Boundary`]): `DISCARD ALL` inside a transaction block
//! would fail and abort the caller's transaction. A request that leaves a transaction open
//! marks it as the caller's, which batches then join and never end.

use postgres_protocol::message::frontend;

use super::collect::{Answers, Collector, Ending, NotSent, Step};
use super::connection::{Connection, TxStatus};
use super::flight::{Flight, Unit};
use super::sql::ROLLBACK;
use super::step::step;
use super::types::WireBinds;
use crate::codec::{Boundary, Statement, boundary};
use crate::error::{ServerError, SqlState};

impl Connection {
    /// Runs one statement of the caller's, with binary binds and results, and collects its
    /// rows and row count.
    pub(crate) async fn request(&mut self, statement: &Statement) -> Result<Answers, NotSent> {
        self.ready().await?;
        super::types::resolve(self, &[statement]).await?;
        let binds = WireBinds::new(self, statement);
        let (oids, values) = binds.get();
        let text = &statement.sql.text;
        self.send(boundary(text), |buf| {
            step(buf, text, oids, values, true)?;
            frontend::sync(buf);
            Ok(())
        })
        .await
    }

    /// Runs SQL text (several statements allowed) as one simple query. Its rows are read
    /// and dropped; a `COMMIT` that the server turns into a rollback (the transaction had
    /// failed) fails with `25P02`, as no error from the server would say.
    pub(crate) async fn simple_request(&mut self, sql: &str) -> Result<Answers, NotSent> {
        self.ready().await?;
        let boundary = boundary(sql);
        let commits_a_failed_transaction =
            self.status() == TxStatus::Failed && boundary == (Boundary::Ends { commits: true });
        let mut answers = self.send(boundary, |buf| frontend::query(sql, buf)).await?;
        if commits_a_failed_transaction && matches!(answers.ending, Ending::Done) {
            let error = ServerError::synthetic(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "COMMIT rolled the transaction back: a statement in it had failed".to_owned(),
            );
            answers.ending = Ending::Failed { step: Step::End, error: Box::new(error) };
        }
        Ok(answers)
    }

    /// Sends the request `queue_request` writes, with what must come before it and the
    /// session reset after it when its `boundary` says it ends outside any transaction, in
    /// one write; collects the request's answers.
    async fn send(
        &mut self,
        boundary: Boundary,
        queue_request: impl FnOnce(&mut bytes::BytesMut) -> std::io::Result<()>,
    ) -> Result<Answers, NotSent> {
        // A transaction pgbatch left behind (a cancel landed on its closing ROLLBACK) is
        // ended first; one the caller opened is the caller's.
        let recover = self.status() != TxStatus::Idle && !self.in_caller_transaction();
        let idle_before = recover || self.status() == TxStatus::Idle;
        let dirties = self.resets_after_every_batch();
        let ends_idle = match boundary {
            Boundary::Keeps => idle_before,
            Boundary::Ends { .. } => true,
            Boundary::Other => false,
        };
        let reset_first = idle_before && self.is_dirty();
        let reset_after = ends_idle && (dirties || (self.is_dirty() && !reset_first));
        let start = self.io().queue().len();
        let mut units = (0, 0);
        let queued = (|| {
            if recover {
                frontend::query(ROLLBACK, self.io().queue())?;
            }
            if reset_first {
                units.0 = self.queue_reset()?;
            }
            queue_request(self.io().queue())?;
            if reset_after {
                units.1 = self.queue_reset()?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(error) = queued {
            // Nothing of it is sent: the connection stays as it was.
            self.io().queue().truncate(start);
            return Err(NotSent::Encode { index: 0, error });
        }
        let mut flight = Flight::new();
        if recover {
            flight.push(self, Unit::Discard);
        }
        (0..units.0).for_each(|_| flight.push(self, Unit::Reset));
        // One statement, or as many as a simple query holds: each completion is an output.
        flight.push(self, Unit::Collect(Collector::new(0, usize::MAX, 0, None)));
        (0..units.1).for_each(|_| flight.push(self, Unit::Reset));
        if dirties {
            self.set_dirty(true);
        }
        let mut landed = flight.land(self).await;
        if landed.reset_done {
            self.set_dirty(false);
        }
        self.note_caller_request();
        Ok(landed.answers.pop().expect("the request's unit is collected"))
    }
}
