//! The task that owns one of a [`Multiplexed`](super::multiplex::Multiplexed) client's
//! connections: it writes every batch given to it behind the ones still in flight, hands the
//! answers back in order (see [`Pipeline`]), opens the connection again when it was lost,
//! and retires one that is no longer fit.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use bb8::ManageConnection;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::manager::ConnectionManager;
use crate::codec::Statement;
use crate::connect::CancelToken;
use crate::connection::Pipeline;
use crate::connection::{CacheMiss, End, Exchange, Queued};
use crate::connection::{Connection, EndBackend};
use crate::error::PoolError;
use crate::protocol::PreludeOutcome;
use crate::protocol::{Answers, BatchNotSent, Ending, NotSent, Position};
use crate::telemetry;
use metrics::SharedString;

/// What a batch given to a [`Multiplexed`](super::multiplex::Multiplexed) client brought back.
pub(crate) struct Delivery {
    pub(crate) answers: Answers,
    pub(crate) replication_unconfirmed: bool,
    /// The backend the batch was sent to, when its connection was lost: settling its
    /// outcome ends (or cancels) it first.
    pub(crate) orphan: Option<(CancelToken, Option<EndBackend>)>,
}

/// A batch given to a driver.
pub(super) struct Job {
    pub(super) statements: Vec<Arc<Statement>>,
    pub(super) begin: Cow<'static, str>,
    pub(super) reply: oneshot::Sender<Result<Delivery, BatchNotSent>>,
    /// Held until the batch is answered: the bound on batches given at once.
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _load: Load,
}

/// A job in flight: the job itself (sent again once when a cached statement could not run
/// as prepared), the backend it was sent to, and which of its statements went by a cached
/// name.
struct Sent {
    job: Job,
    orphan: (CancelToken, Option<EndBackend>),
    cached: Vec<bool>,
    /// Whether this is the job's second sending, after a [`CacheMiss`].
    again: bool,
}

/// Counts a batch in its lane's load, and in that connection's in-flight gauge, for as
/// long as it lives.
pub(super) struct Load {
    load: Arc<AtomicUsize>,
    /// The connection's index, the gauge's label.
    connection: SharedString,
}

impl Load {
    pub(super) fn new(load: &Arc<AtomicUsize>, connection: &SharedString) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        telemetry::multiplexed_in_flight(connection.clone(), 1.0);
        Load { load: Arc::clone(load), connection: connection.clone() }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        telemetry::multiplexed_in_flight(self.connection.clone(), -1.0);
    }
}

/// The task that owns one connection.
pub(super) struct Driver {
    pub(super) manager: ConnectionManager,
    pub(super) queue: mpsc::Receiver<Job>,
    /// `None` between a lost (or retired) connection and the next batch, which opens one.
    pub(super) connection: Option<Connection>,
    pub(super) depth: usize,
}

/// Why the driver stopped polling.
enum Wake {
    /// A job needs the connection to itself first (a new connection, a custom-type lookup).
    Exclusive(Job),
    /// The connection is to be replaced once nothing is in flight.
    Retire,
    /// The client was dropped and every batch has been answered.
    Done,
}

impl Driver {
    pub(super) async fn run(mut self) {
        let mut pipeline: Pipeline<Sent> = Pipeline::new();
        loop {
            match self.step(&mut pipeline).await {
                Wake::Done => return,
                Wake::Retire => {
                    if let Some(mut connection) = self.connection.take() {
                        // Behind a pooler, its server session must not go back to the
                        // pooler's pool as it is.
                        connection.end_session().await;
                    }
                }
                Wake::Exclusive(job) => {
                    if let Err(not_sent) = self.prepare(&job).await {
                        let _ = job.reply.send(Err(not_sent));
                        continue;
                    }
                    // The caller may have gone meanwhile: then nothing is sent.
                    if !job.reply.is_closed() {
                        let connection = self.connection.as_mut().expect("prepared");
                        queue(connection, job, &mut pipeline);
                    }
                }
            }
        }
    }

    /// Takes jobs and lands flights until a job needs the connection alone (with nothing
    /// in flight), the connection is to be retired, or the client is gone.
    async fn step(&mut self, pipeline: &mut Pipeline<Sent>) -> Wake {
        let mut retiring = false;
        let mut waiting: Option<Job> = None;
        std::future::poll_fn(|cx| {
            loop {
                while waiting.is_none() && !retiring && pipeline.len() < self.depth {
                    match self.queue.poll_recv(cx) {
                        Poll::Ready(Some(job)) if job.reply.is_closed() => {} // its caller is gone
                        Poll::Ready(Some(job)) => {
                            // With nothing in flight, what has arrived meanwhile is read
                            // first (no round trip): a server that ended the session is
                            // noticed before a batch is written to it, and the batch goes
                            // to a new connection instead.
                            if pipeline.is_empty() && self.connection.as_mut().is_some_and(|c| c.check().is_err()) {
                                self.connection = None;
                            }
                            match self.connection.as_mut() {
                                Some(connection) if types_known(connection, &job) => queue(connection, job, pipeline),
                                _ => waiting = Some(job),
                            }
                        }
                        Poll::Ready(None) if pipeline.is_empty() => return Poll::Ready(Wake::Done),
                        Poll::Ready(None) | Poll::Pending => break,
                    }
                }
                if pipeline.is_empty() {
                    if let Some(job) = waiting.take() {
                        return Poll::Ready(Wake::Exclusive(job));
                    }
                    if retiring {
                        return Poll::Ready(Wake::Retire);
                    }
                    return Poll::Pending;
                }
                let connection = self.connection.as_mut().expect("flights are in flight on a connection");
                let mut again = Vec::new();
                let landed = pipeline.poll(connection, cx, |sent, arrival| {
                    retiring |= !arrival.connection_fit;
                    again.extend(deliver(sent, arrival));
                });
                let requeued = !again.is_empty();
                if requeued {
                    connection.after_cache_miss();
                }
                for job in again {
                    queue_sending(connection, job, pipeline, true);
                }
                // Jobs sent again are written by the next poll.
                if landed.is_pending() && !requeued {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Gives the connection (opened anew when lost) what `job` needs before it can be
    /// queued: its custom types, looked up in a round trip of their own.
    async fn prepare(&mut self, job: &Job) -> Result<(), BatchNotSent> {
        if self.connection.as_ref().is_none_or(Connection::is_closed) {
            self.connection = None;
            let connection =
                self.manager.connect().await.map_err(|error| BatchNotSent::Pool(PoolError::Connect(error)))?;
            self.connection = Some(connection);
        }
        let connection = self.connection.as_mut().expect("opened above");
        let statements: Vec<&Statement> = job.statements.iter().map(|statement| &**statement).collect();
        Ok(crate::connection::types::resolve(connection, &statements).await?)
    }
}

/// Whether `connection` has looked up every custom type `job` binds.
fn types_known(connection: &Connection, job: &Job) -> bool {
    job.statements
        .iter()
        .flat_map(|statement| statement.binds.custom_types())
        .all(|name| connection.custom_type(name).is_some())
}

/// Queues `job` on `connection` behind the flights due, or answers it at once when it
/// cannot be encoded (nothing of it is then written).
fn queue(connection: &mut Connection, job: Job, pipeline: &mut Pipeline<Sent>) {
    queue_sending(connection, job, pipeline, false);
}

/// [`queue`], `again` saying whether the job was sent before.
fn queue_sending(connection: &mut Connection, job: Job, pipeline: &mut Pipeline<Sent>, again: bool) {
    let statements: Vec<&Statement> = job.statements.iter().map(|statement| &**statement).collect();
    let exchange = Exchange::new(Some(&job.begin), &statements, End::Commit);
    // Sent again after a cache miss: past the cache, so that it cannot miss again.
    let exchange = if again { exchange.unnamed() } else { exchange };
    // Each batch is a holder of its own: the one ahead hands the session over.
    connection.hand_over();
    match connection.queue_pipelined(&exchange) {
        Ok(Queued { flight, prelude, cached }) => {
            let orphan = (connection.cancel_token(), connection.end_backend());
            pipeline.push(flight, prelude, Sent { job, orphan, cached, again });
        }
        Err(not_sent) => {
            let _ = job.reply.send(Err(not_sent.into()));
        }
    }
}

/// Hands a landed flight's answers to its caller (if it is still waiting), or gives the
/// job back to be sent once more when a cached statement could not run as prepared.
fn deliver(sent: Sent, arrival: crate::connection::pipeline::Arrival) -> Option<Job> {
    let mut answers = arrival.landed.answers;
    let answers = answers.pop().expect("a batch's flight collects its unit");
    if let Ending::Failed { at: Position::Prelude, error } = answers.ending {
        // The server skipped the batch: nothing of it ran.
        let cleared = matches!(answers.prelude, PreludeOutcome::Failed { cleared: true });
        let _ = sent.job.reply.send(Err(NotSent::Prelude { error, cleared }.into()));
        return None;
    }
    if !sent.again && arrival.connection_fit && CacheMiss::in_answers(&answers, &sent.cached) {
        // The failure rolled the batch back: nothing of it stayed.
        return (!sent.job.reply.is_closed()).then_some(sent.job);
    }
    let lost = matches!(answers.ending, Ending::Lost { .. });
    let delivery = Delivery {
        answers,
        replication_unconfirmed: arrival.replication_unconfirmed,
        orphan: lost.then_some(sent.orphan),
    };
    let _ = sent.job.reply.send(Ok(delivery));
    None
}
