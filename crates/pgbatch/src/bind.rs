//! Sending binds that Diesel has already encoded.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A bind value already in PostgreSQL's binary format (`None` is SQL `NULL`).
///
/// Diesel encodes every bind when the statement is pushed; this hands the bytes to
/// tokio-postgres unchanged. It accepts every type because the type sent with it is the one
/// Diesel encoded for.
#[derive(Debug)]
pub(crate) struct RawBind<'a>(pub(crate) Option<&'a [u8]>);

impl ToSql for RawBind<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
