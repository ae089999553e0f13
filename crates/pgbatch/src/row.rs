//! Letting Diesel decode tokio-postgres rows.

use std::num::NonZeroU32;

use diesel::pg::{Pg, PgValue};
use diesel::row::{Field, PartialRow, Row, RowIndex, RowSealed};
use tokio_postgres::types::{FromSql, Type};

/// A tokio-postgres row seen as a Diesel row, so that `Queryable`, `Selectable` and
/// `QueryableByName` types decode it from its binary values.
pub(crate) struct DieselRow<'r>(pub(crate) &'r tokio_postgres::Row);

impl RowSealed for DieselRow<'_> {}

impl<'a> Row<'a, Pg> for DieselRow<'_> {
    type Field<'f>
        = DieselField<'f>
    where
        'a: 'f,
        Self: 'f;
    type InnerPartialRow = Self;

    fn field_count(&self) -> usize {
        self.0.len()
    }

    fn get<'b, I>(&'b self, index: I) -> Option<Self::Field<'b>>
    where
        'a: 'b,
        Self: RowIndex<I>,
    {
        let index = self.idx(index)?;
        let oid = NonZeroU32::new(self.0.columns()[index].type_().oid())?;
        Some(DieselField { row: self.0, index, oid })
    }

    fn partial_row(&self, range: std::ops::Range<usize>) -> PartialRow<'_, Self::InnerPartialRow> {
        PartialRow::new(self, range)
    }
}

impl RowIndex<usize> for DieselRow<'_> {
    fn idx(&self, index: usize) -> Option<usize> {
        (index < self.0.len()).then_some(index)
    }
}

impl<'n> RowIndex<&'n str> for DieselRow<'_> {
    fn idx(&self, name: &'n str) -> Option<usize> {
        self.0.columns().iter().position(|c| c.name() == name)
    }
}

pub(crate) struct DieselField<'f> {
    row: &'f tokio_postgres::Row,
    index: usize,
    oid: NonZeroU32,
}

impl<'f> Field<'f, Pg> for DieselField<'f> {
    fn field_name(&self) -> Option<&str> {
        Some(self.row.columns()[self.index].name())
    }

    fn value(&self) -> Option<PgValue<'_>> {
        let RawValue(bytes) = self.row.try_get(self.index).ok()?;
        Some(PgValue::new(bytes?, &self.oid))
    }
}

/// A column's binary value, as sent by the server.
struct RawValue<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}
