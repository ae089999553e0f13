//! Where a batch gets its connection: the bb8 manager and [`Acquire`] (a pool, a checkout
//! or a bare connection), and the [`Multiplexed`] client that pipelines many callers'
//! batches on a few connections, each driven by a task of its own.

mod driver;
mod manager;
mod multiplex;

pub use manager::{Acquire, ConnectionManager, Pool};
pub use multiplex::{Multiplexed, MultiplexedBuilder};
