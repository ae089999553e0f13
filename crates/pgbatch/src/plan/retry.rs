//! Replaying batches that PostgreSQL rolled back for a serialization failure or deadlock.

use std::time::Duration;

/// When and how often a batch is replayed after a serialization failure (`40001`) or a
/// deadlock (`40P01`), at a statement or at commit.
///
/// Replaying is always safe for these two: PostgreSQL rolled the whole transaction back,
/// and a batch is a value, so the same statements run again. Nothing that may have
/// committed ([`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown)) is ever replayed.
///
/// Between attempts the batch waits a random time between zero and
/// `min(max_delay, base_delay * 2^(attempt - 1))` ("full jitter"), so that contending
/// batches spread out instead of colliding again.
///
/// The default makes up to 5 attempts, from 5 ms up to 500 ms apart. Set it per pool on
/// the [`ConnectionManager`](crate::ConnectionManager) and per batch with
/// [`Batch::retry`](crate::Batch::retry); [`RetryPolicy::never`] turns retries off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    savepoint: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(500),
            savepoint: false,
        }
    }
}

impl RetryPolicy {
    /// One attempt: transient failures are returned to the caller at once.
    pub fn never() -> Self {
        RetryPolicy { max_attempts: 1, ..Self::default() }
    }

    /// At most `attempts` runs in all (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The ceiling of the first wait; it doubles with each attempt.
    #[must_use]
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The largest ceiling a wait can have.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Retries inside the same transaction, the way CockroachDB recommends: the statements
    /// run under `SAVEPOINT cockroach_restart` and are released before `COMMIT`; a retry
    /// sends `ROLLBACK TO SAVEPOINT cockroach_restart` and the statements again, so that
    /// the transaction keeps its place in line (its priority and timestamp) across
    /// attempts. Each attempt is still one round trip; between attempts the transaction
    /// stays open on its connection. On PostgreSQL the savepoint is an ordinary one.
    ///
    /// A batch that fails for good is rolled back in one more round trip.
    #[must_use]
    pub fn cockroach_restart(mut self) -> Self {
        self.savepoint = true;
        self
    }

    /// Whether retries keep the transaction (see [`cockroach_restart`](Self::cockroach_restart)).
    pub fn keeps_transaction(&self) -> bool {
        self.savepoint
    }

    /// The most attempts this policy allows.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How long to wait after failed attempt number `attempt` (1-based).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base_delay.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(self.max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_their_ceiling() {
        let policy = RetryPolicy::default().base_delay(Duration::from_millis(10)).max_delay(Duration::from_millis(35));
        for _ in 0..100 {
            assert!(policy.delay(1) <= Duration::from_millis(10));
            assert!(policy.delay(2) <= Duration::from_millis(20));
            assert!(policy.delay(3) <= Duration::from_millis(35));
            assert!(policy.delay(40) <= Duration::from_millis(35));
        }
        assert_eq!(RetryPolicy::never().attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
    }
}
