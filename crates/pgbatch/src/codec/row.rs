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

/// One row of a statement's result, in binary format, as Diesel decodes it.
// Public as the row type of diesel-async queries (feature `diesel-async`).
#[cfg_attr(not(feature = "diesel-async"), allow(unreachable_pub))]
#[derive(Debug, Clone)]
pub struct Row {
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

// A row is a Diesel row: batches decode their results from it, and it is the row type of
// diesel-async queries (feature `diesel-async`).
impl RowSealed for Row {}

impl<'a> diesel::row::Row<'a, Pg> for Row {
    type Field<'f>
        = DieselField<'f>
    where
        'a: 'f,
        Self: 'f;
    type InnerPartialRow = Self;

    fn field_count(&self) -> usize {
        self.values.len()
    }

    fn get<'b, I>(&'b self, index: I) -> Option<Self::Field<'b>>
    where
        'a: 'b,
        Self: RowIndex<I>,
    {
        let index = self.idx(index)?;
        let column = self.columns.get(index)?;
        let oid = NonZeroU32::new(column.type_oid)?;
        Some(DieselField { row: self, index, oid })
    }

    fn partial_row(&self, range: Range<usize>) -> PartialRow<'_, Self::InnerPartialRow> {
        PartialRow::new(self, range)
    }
}

impl RowIndex<usize> for Row {
    fn idx(&self, index: usize) -> Option<usize> {
        (index < self.values.len()).then_some(index)
    }
}

impl<'n> RowIndex<&'n str> for Row {
    fn idx(&self, name: &'n str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One value of a row, as Diesel reads it.
// Public as the field type of the rows diesel-async queries load (feature `diesel-async`).
#[cfg_attr(not(feature = "diesel-async"), allow(unreachable_pub))]
pub struct DieselField<'f> {
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
