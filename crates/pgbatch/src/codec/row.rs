//! Rows as the server sends them (binary values and their columns' type OIDs), and
//! Diesel's view of them, so that `Queryable`, `Selectable` and `QueryableByName` types
//! decode straight from the bytes received.

use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use diesel::pg::{Pg, PgValue};
use diesel::row::{Field, PartialRow, RowIndex, RowSealed};

/// A result column: its name and type OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
}

/// One row of a statement's result, in binary format.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    columns: Arc<[Column]>,
    /// The `DataRow` message's body; `values` index it.
    body: Bytes,
    values: Vec<Option<Range<usize>>>,
}

impl Row {
    /// A row of `columns`, whose values are `values` ranges of `body` (`None` is `NULL`).
    pub(crate) fn new(columns: Arc<[Column]>, body: Bytes, values: Vec<Option<Range<usize>>>) -> Self {
        Row { columns, body, values }
    }

    pub(crate) fn value(&self, index: usize) -> Option<&[u8]> {
        self.values.get(index)?.as_ref().map(|range| &self.body[range.clone()])
    }
}

/// What one statement returned.
#[derive(Debug, Default)]
pub(crate) struct StepOutput {
    pub(crate) rows: Vec<Row>,
    /// Rows affected (or returned, for queries), from the command tag.
    pub(crate) affected: u64,
}

/// A row seen as a Diesel row.
pub(crate) struct DieselRow<'r>(pub(crate) &'r Row);

impl RowSealed for DieselRow<'_> {}

impl<'a> diesel::row::Row<'a, Pg> for DieselRow<'_> {
    type Field<'f>
        = DieselField<'f>
    where
        'a: 'f,
        Self: 'f;
    type InnerPartialRow = Self;

    fn field_count(&self) -> usize {
        self.0.values.len()
    }

    fn get<'b, I>(&'b self, index: I) -> Option<Self::Field<'b>>
    where
        'a: 'b,
        Self: RowIndex<I>,
    {
        let index = self.idx(index)?;
        let column = self.0.columns.get(index)?;
        let oid = NonZeroU32::new(column.type_oid)?;
        Some(DieselField { row: self.0, index, oid })
    }

    fn partial_row(&self, range: Range<usize>) -> PartialRow<'_, Self::InnerPartialRow> {
        PartialRow::new(self, range)
    }
}

impl RowIndex<usize> for DieselRow<'_> {
    fn idx(&self, index: usize) -> Option<usize> {
        (index < self.0.values.len()).then_some(index)
    }
}

impl<'n> RowIndex<&'n str> for DieselRow<'_> {
    fn idx(&self, name: &'n str) -> Option<usize> {
        self.0.columns.iter().position(|c| c.name == name)
    }
}

pub(crate) struct DieselField<'f> {
    row: &'f Row,
    index: usize,
    oid: NonZeroU32,
}

impl<'f> Field<'f, Pg> for DieselField<'f> {
    fn field_name(&self) -> Option<&str> {
        Some(&self.row.columns[self.index].name)
    }

    fn value(&self) -> Option<PgValue<'_>> {
        Some(PgValue::new(self.row.value(self.index)?, &self.oid))
    }
}
