//! A unit as messages, with no connection under it: the SQL pgbatch sends around a batch
//! (`sql`), the prelude that makes a session clean before a unit, reading a unit's answers
//! step by step (`Collector`), and what became of a unit (`Answers`, `Ending`, or why it was
//! not sent). Plain values, tested on recorded answer streams without a server.

mod collect;
mod prelude;
pub(crate) mod sql;
mod unit;

pub(crate) use collect::Collector;
pub(crate) use prelude::{Prelude, PreludeOutcome};
pub(crate) use unit::{Answers, BatchNotSent, Ending, NotSent, Position, Prepared};
