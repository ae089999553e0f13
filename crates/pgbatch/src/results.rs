//! What a committed batch returns.

use std::borrow::Cow;

use crate::error::{ResultError, StatementRef};
use crate::handle::{Handle, Scope, StatementId};
use crate::pipeline::StepOutput;

/// The results of a committed batch: every statement's rows and row count, read through
/// the handles the batch gave out.
#[derive(Debug)]
pub struct Committed {
    pub(crate) outputs: Vec<StepOutput>,
    pub(crate) labels: Vec<Option<Cow<'static, str>>>,
    /// Where each scope's statements start in this batch.
    pub(crate) scopes: Vec<(Scope, usize)>,
    pub(crate) attempts: u32,
}

impl Committed {
    /// Reads a statement's result through its handle: decoded rows for [`One`](crate::One),
    /// [`Optional`](crate::Optional) and [`All`](crate::All), a row count for
    /// [`Affected`](crate::Affected).
    ///
    /// # Errors
    ///
    /// The batch has committed whatever this returns. It fails when the handle belongs to
    /// another batch, the row count does not fit the handle (`One` on zero rows), or a row
    /// does not decode into the requested type; see [`ResultError`].
    pub fn get<H: Handle>(&self, handle: &H) -> Result<H::Output, ResultError> {
        handle.read(self)
    }

    /// How many statements the batch ran.
    pub fn statement_count(&self) -> usize {
        self.outputs.len()
    }

    /// How many times the batch was run before it committed: 1 unless it was retried.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn output(&self, id: StatementId) -> Result<(StatementRef, &StepOutput), ResultError> {
        let offset = self.scopes.iter().find(|(scope, _)| *scope == id.scope).ok_or(ResultError::ForeignHandle)?.1;
        let index = offset + id.index;
        let output = self.outputs.get(index).ok_or(ResultError::ForeignHandle)?;
        Ok((StatementRef { index, label: self.labels[index].clone() }, output))
    }
}
