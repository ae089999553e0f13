//! How long the long tests run: storms, fault sweeps and crash rounds have a quick size,
//! the default, for the suite a person runs while working, and a full size that CI runs.

use std::fmt::Debug;
use std::str::FromStr;

/// The variable that chooses the size: `full`, or `quick` (the default when it is unset).
pub const SIZE_VARIABLE: &str = "PGBATCH_TEST_SIZE";

/// The size the long tests of a run take, from [`SIZE_VARIABLE`].
///
/// ```
/// use pgbatch_testing::TestSize;
///
/// // 5 s storms by default, 20 s with PGBATCH_TEST_SIZE=full, and what
/// // PGBATCH_STORM_SECONDS says when it is set.
/// let seconds: u64 = TestSize::from_env().pick("PGBATCH_STORM_SECONDS", 5, 20);
/// # let _ = seconds;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TestSize {
    /// Every long test runs, at a size that keeps `cargo test --workspace` to a few minutes:
    /// each guarantee is still exercised, over fewer cases.
    Quick,
    /// The sizes CI runs: storms of 20 s, every byte of the fault sweeps' cuts.
    Full,
}

impl TestSize {
    /// The size [`SIZE_VARIABLE`] names.
    ///
    /// # Panics
    ///
    /// When the variable holds anything but `quick` or `full`: a misspelt size must not
    /// quietly make a CI run prove less.
    pub fn from_env() -> TestSize {
        match std::env::var(SIZE_VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("quick") => TestSize::Quick,
            Ok("full") => TestSize::Full,
            Ok(other) => panic!("{SIZE_VARIABLE}={other:?}: set it to `quick` (the default) or `full`"),
        }
    }

    /// `quick` or `full`, as this size says, unless the environment variable `variable`
    /// sets the value itself.
    ///
    /// # Panics
    ///
    /// When `variable` is set to something that does not parse as a `T`.
    pub fn pick<T: FromStr>(self, variable: &str, quick: T, full: T) -> T
    where
        T::Err: Debug,
    {
        match std::env::var(variable) {
            Ok(value) => value.parse().unwrap_or_else(|error| panic!("{variable}={value:?}: {error:?}")),
            Err(_) if self == TestSize::Full => full,
            Err(_) => quick,
        }
    }
}
