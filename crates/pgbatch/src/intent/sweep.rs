//! The recovery sweep: finds intents left pending by a crash, claims them, and applies what
//! user code decides for each.

use std::time::{Duration, SystemTime};

use diesel::sql_types::{Double, Integer, Text};
use uuid::Uuid;

use super::sql::Finish;
use super::{Intent, Intents};
use crate::error::{Cause, Error};
use crate::plan::Fragment;
use crate::pool::Pool;
use crate::run::Batch;

/// What a sweep does with one intent, as user code decides it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Decision {
    /// The effect happened (the object is in the store): complete the intent together with
    /// the rows it implies, in one batch. The fragment may be empty.
    RollForward(Fragment),
    /// The effect was undone, or never happened (the orphan object was deleted, or never
    /// written): cancel the intent, together with the fragment's statements.
    Compensate(Fragment),
    /// Decide later (the store cannot be reached): the claim is let go, and a later sweep
    /// tries again.
    Later,
}

/// How a sweep picks intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepOptions {
    /// Only intents pending for longer than this are swept: younger ones belong to
    /// requests still running.
    pub older_than: Duration,
    /// How long a claim keeps other sweeps off an intent. The sweep renews the claim just
    /// before it hands the intent to `decide`, and every third of the lease while `decide`
    /// runs, so the lease only has to outlast a sweep that died: then the intent waits this
    /// long for the next sweep.
    pub lease: Duration,
    /// The most intents one sweep claims.
    pub limit: u32,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions { older_than: Duration::from_secs(300), lease: Duration::from_secs(60), limit: 100 }
    }
}

impl SweepOptions {
    /// Sweeps intents pending for longer than `older_than`.
    #[must_use]
    pub fn older_than(mut self, older_than: Duration) -> Self {
        self.older_than = older_than;
        self
    }

    /// Holds each claim this long.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Claims at most this many intents.
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Intents claimed.
    pub claimed: usize,
    /// Completed, with the rows user code gave.
    pub rolled_forward: usize,
    /// Cancelled after user code compensated.
    pub compensated: usize,
    /// Let go, for a later sweep.
    pub later: usize,
    /// Taken over by another sweep after this one's claim lapsed: nothing applied.
    pub lost: usize,
    /// Whose batch failed (the decision's statements failed): let go, nothing applied.
    pub failed: usize,
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "claimed={} rolled_forward={} compensated={} later={} lost={} failed={}",
            self.claimed, self.rolled_forward, self.compensated, self.later, self.lost, self.failed
        )
    }
}

/// A claimed intent as the claim returns it.
#[derive(diesel::QueryableByName)]
struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Double)]
    created_at: f64,
}

impl Intents {
    /// Sweeps intents pending for longer than `options.older_than`: claims up to
    /// `options.limit` of them (skipping any another sweep holds, so that concurrent
    /// sweeps in several processes never handle the same intent), hands each to `decide`,
    /// and applies its [`Decision`] in a batch guarded on the claim still being this
    /// sweep's. Each claim counts as an attempt on the intent.
    ///
    /// An intent is handed to `decide` only under a live claim: the claim is renewed just
    /// before (an intent whose claim lapsed while earlier ones were decided, and that another
    /// sweep took over, is counted as lost and not handed over), and renewed every third of
    /// the lease while `decide` runs, so that no other sweep can take the intent while its
    /// effects are being decided. If a renewal finds the claim taken (the database was out
    /// of reach for longer than the lease), the decision is not applied and the intent is
    /// counted as lost.
    ///
    /// Logs an event per intent (`pgbatch.intent` target, with its kind, id and attempts)
    /// and returns what it did.
    ///
    /// # Errors
    ///
    /// When the claim itself fails (the pool, the table); failures of single intents are
    /// counted in the report instead.
    pub async fn sweep<F, Fut>(&self, pool: &Pool, options: SweepOptions, mut decide: F) -> Result<SweepReport, Error>
    where
        F: FnMut(Intent) -> Fut,
        Fut: Future<Output = Decision>,
    {
        let claim = Uuid::new_v4();
        let mut batch = Batch::new();
        let claimed = batch
            .push(
                diesel::sql_query(self.sql.claim())
                    .bind::<diesel::sql_types::Uuid, _>(claim)
                    .bind::<Double, _>(options.lease.as_secs_f64())
                    .bind::<Double, _>(options.older_than.as_secs_f64())
                    .bind::<diesel::sql_types::BigInt, _>(i64::from(options.limit)),
            )
            .label("claim intents")
            .all::<Claimed>();
        // Every column of the claim is cast to the type read here: decoding cannot fail.
        let claimed = batch.run(pool).await?.get(&claimed).expect("the claim's columns are cast to the types read");
        let mut report = SweepReport { claimed: claimed.len(), ..SweepReport::default() };
        for row in claimed {
            let intent = Intent {
                id: row.id,
                kind: row.kind,
                key: row.key,
                payload: row.payload,
                attempts: row.attempts,
                created_at: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(row.created_at.max(0.0)),
            };
            let (id, kind, attempts) = (intent.id, intent.kind.clone(), intent.attempts);
            let outcome = if !self.renew(pool, id, claim, options.lease).await {
                Finished::Lost
            } else {
                match self.decide_under_claim(pool, id, claim, options.lease, decide(intent)).await {
                    None => Finished::Lost,
                    Some(Decision::RollForward(fragment)) => {
                        self.finish_claimed(pool, id, claim, Finish::Done, fragment).await
                    }
                    Some(Decision::Compensate(fragment)) => {
                        self.finish_claimed(pool, id, claim, Finish::Cancelled, fragment).await
                    }
                    Some(Decision::Later) => Finished::Later,
                }
            };
            if matches!(outcome, Finished::Later | Finished::Failed) {
                self.release(pool, id, claim).await;
            }
            match outcome {
                Finished::Done => report.rolled_forward += 1,
                Finished::Cancelled => report.compensated += 1,
                Finished::Later => report.later += 1,
                Finished::Lost => report.lost += 1,
                Finished::Failed => report.failed += 1,
            }
            tracing::info!(target: "pgbatch.intent", %kind, %id, attempts, outcome = outcome.name(), "swept intent");
        }
        tracing::info!(target: "pgbatch.intent", %report, "sweep done");
        Ok(report)
    }

    /// Waits for `decision` while renewing the claim every third of the lease; `None` when
    /// a renewal found the claim taken, so that the decision must not be applied.
    async fn decide_under_claim(
        &self,
        pool: &Pool,
        id: Uuid,
        claim: Uuid,
        lease: Duration,
        decision: impl Future<Output = Decision>,
    ) -> Option<Decision> {
        let mut decision = std::pin::pin!(decision);
        let mut held = true;
        loop {
            tokio::select! {
                decided = &mut decision => return held.then_some(decided),
                () = tokio::time::sleep(lease / 3), if held => {
                    held = self.renew(pool, id, claim, lease).await;
                    if !held {
                        tracing::warn!(target: "pgbatch.intent", %id, "the claim was taken while deciding: the decision will not be applied");
                    }
                }
            }
        }
    }

    /// Renews this sweep's claim on an intent for another lease; false when the claim is no
    /// longer this sweep's (or could not be renewed).
    async fn renew(&self, pool: &Pool, id: Uuid, claim: Uuid, lease: Duration) -> bool {
        let mut batch = Batch::new();
        let renewed = batch
            .push(
                diesel::sql_query(self.sql.renew())
                    .bind::<diesel::sql_types::Uuid, _>(id)
                    .bind::<diesel::sql_types::Uuid, _>(claim)
                    .bind::<Double, _>(lease.as_secs_f64()),
            )
            .label("renew claim")
            .affected();
        match batch.run(pool).await {
            Ok(done) => done.get(&renewed).is_ok_and(|rows| rows == 1),
            Err(error) => {
                tracing::warn!(target: "pgbatch.intent", %id, error = %error.log_summary(), "could not renew a claim");
                false
            }
        }
    }

    /// Finishes a claimed intent together with `fragment`, in one batch.
    async fn finish_claimed(&self, pool: &Pool, id: Uuid, claim: Uuid, finish: Finish, fragment: Fragment) -> Finished {
        let mut batch = Batch::new();
        batch
            .push(
                diesel::sql_query(self.sql.finish_claimed(finish))
                    .bind::<diesel::sql_types::Uuid, _>(id)
                    .bind::<diesel::sql_types::Uuid, _>(claim),
            )
            .label(CLAIM_HELD)
            .expect_rows(1);
        batch.append(fragment);
        match batch.run(pool).await {
            Ok(_) if finish == Finish::Done => Finished::Done,
            Ok(_) => Finished::Cancelled,
            Err(Error::Statement(failure)) if matches!(failure.cause(), Cause::GuardFailed(g) if g.label() == Some(CLAIM_HELD)) => {
                Finished::Lost
            }
            Err(error) => {
                tracing::warn!(target: "pgbatch.intent", %id, error = %error.log_summary(), "applying a sweep's decision failed");
                Finished::Failed
            }
        }
    }

    /// Lets go of a claim, so that a later sweep can take the intent at once.
    async fn release(&self, pool: &Pool, id: Uuid, claim: Uuid) {
        let mut batch = Batch::new();
        batch.push(
            diesel::sql_query(self.sql.release())
                .bind::<diesel::sql_types::Uuid, _>(id)
                .bind::<diesel::sql_types::Uuid, _>(claim),
        );
        if let Err(error) = batch.run(pool).await {
            tracing::warn!(target: "pgbatch.intent", %id, error = %error.log_summary(), "could not let go of a claim: it lapses by itself");
        }
    }
}

/// The label of the guard that the sweep's claim still holds.
const CLAIM_HELD: &str = "claim held";

/// What became of one claimed intent.
#[derive(Debug, Clone, Copy)]
enum Finished {
    Done,
    Cancelled,
    Later,
    Lost,
    Failed,
}

impl Finished {
    fn name(self) -> &'static str {
        match self {
            Finished::Done => "rolled forward",
            Finished::Cancelled => "compensated",
            Finished::Later => "left for later",
            Finished::Lost => "claim lost",
            Finished::Failed => "failed",
        }
    }
}
