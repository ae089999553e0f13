//! Between Diesel and PostgreSQL's binary format: statements rendered into SQL and encoded
//! binds (with the checks that must pass before anything is sent), and rows decoded back
//! into Diesel values.

mod binds;
#[cfg(test)]
pub(crate) mod constructs;
mod refusal;
mod row;
mod scan;
mod sql_shape;
mod statement;

pub(crate) use binds::TypeName;
#[cfg(not(feature = "diesel-async"))]
pub(crate) use row::Row;
pub(crate) use row::{Column, StepOutput};
#[cfg(feature = "diesel-async")]
pub use row::{DieselField, Row};
#[cfg(feature = "diesel-async")]
pub(crate) use sql_shape::{Boundary, boundary, is_one_statement};
pub(crate) use sql_shape::{SqlShape, shape, without_terminator};
pub use statement::MAX_BINDS;
pub(crate) use statement::Statement;
