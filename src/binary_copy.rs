//! Typed rows over `COPY … (FORMAT binary)`: [`BinaryCopyInWriter`] and
//! [`BinaryCopyOutIter`], as in the `postgres` crate, made from a fresh
//! [`CopyInWriter`] or [`CopyOutReader`].

use std::fmt;

use crate::error::{Error, Result};
use crate::rows::Fetching;
use crate::types::{IsNull, ToSql, Type};
use crate::{CopyInWriter, CopyOutReader};
use bytes::BufMut;

pub use tokio_postgres::binary_copy::BinaryCopyOutRow;

/// Writes typed rows to a `COPY … FROM STDIN (FORMAT binary)`: each value
/// is encoded as its column's type (the types given, in column order).
///
/// As for [`CopyInWriter`], the COPY must be ended with
/// [`finish`](Self::finish); dropped or forgotten before, it fails, stores
/// nothing, aborts a transaction it ran in, and is reported.
///
/// # Examples
///
/// ```no_run
/// use pgtx::binary_copy::BinaryCopyInWriter;
/// use pgtx::types::Type;
/// # fn main() -> pgtx::Result<()> {
/// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut tx = manager.lock()?.begin()?;
/// let writer = tx.copy_in("COPY items (id, note) FROM STDIN (FORMAT binary)")?;
/// let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT])?;
/// writer.write(&[&1_i32, &"one"])?;
/// writer.write(&[&2_i32, &"two"])?;
/// assert_eq!(writer.finish()?, 2);
/// tx.commit()?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a COPY must be ended with finish(); dropped, it fails and stores nothing"]
pub struct BinaryCopyInWriter<'a> {
    writer: CopyInWriter<'a>,
    types: Vec<Type>,
}

/// The binary COPY format's signature, flags and header extension length.
pub(crate) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Appends one row of `values`, of `types`, in COPY's binary format; on
/// an error what was appended is for the caller to cut off.
///
/// # Errors
///
/// [`Error::WrongRowLength`] if there are not as many values as types;
/// [`Error::CopyValue`] if a value does not encode as its column's type.
pub(crate) fn encode_row(
    buf: &mut bytes::BytesMut,
    values: &[&(dyn ToSql + Sync)],
    types: &[Type],
) -> Result<()> {
    if values.len() != types.len() {
        return Err(Error::WrongRowLength {
            expected: types.len(),
            got: values.len(),
        });
    }
    // The count fits: the server takes at most 1664 columns.
    buf.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
    for (column, (value, ty)) in values.iter().zip(types).enumerate() {
        let at = buf.len();
        buf.put_i32(0);
        let encoded = value
            .to_sql_checked(ty, buf)
            .map_err(|source| Error::CopyValue { column, source })?;
        let len = match encoded {
            IsNull::Yes => -1,
            IsNull::No => i32::try_from(buf.len() - at - 4).map_err(|_| Error::CopyValue {
                column,
                source: "a value of 2 GiB or more".into(),
            })?,
        };
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

impl<'a> BinaryCopyInWriter<'a> {
    /// Writes rows of `types` to the COPY `writer` began (nothing may have
    /// been written to it yet: the binary format's header goes first).
    ///
    /// # Errors
    ///
    /// [`Error::CopyAlreadyUsed`] if data was written to `writer`
    /// already (the COPY then fails as a dropped writer does).
    pub fn new(mut writer: CopyInWriter<'a>, types: &[Type]) -> Result<BinaryCopyInWriter<'a>> {
        if !writer.is_fresh() {
            return Err(Error::CopyAlreadyUsed);
        }
        writer.encode(|buf| {
            buf.put_slice(HEADER);
            Ok(())
        })?;
        Ok(BinaryCopyInWriter {
            writer,
            types: types.to_vec(),
        })
    }

    /// Writes one row: one value per column type, in order, each encoded
    /// as its type (buffered: the data leaves in chunks of 64 KiB).
    ///
    /// # Errors
    ///
    /// [`Error::WrongRowLength`] if `values` has not one value per type,
    /// and [`Error::CopyValue`] if a value cannot be encoded as its
    /// column's type: nothing of the row is sent, and the COPY goes on.
    /// [`Error::Db`] if the server failed the COPY, and
    /// [`Error::ConnectionLost`]: the COPY is then over, nothing of it
    /// stored.
    pub fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<()> {
        let types = &self.types;
        self.writer.encode(|buf| encode_row(buf, values, types))
    }

    /// Ends the COPY and returns the number of rows the server stored.
    ///
    /// # Errors
    ///
    /// As [`CopyInWriter::finish`].
    pub fn finish(mut self) -> Result<u64> {
        self.writer.encode(|buf| {
            buf.put_i16(-1);
            Ok(())
        })?;
        self.writer.finish()
    }
}

impl fmt::Debug for BinaryCopyInWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyInWriter")
            .field("types", &self.types)
            .field("writer", &self.writer)
            .finish()
    }
}

/// Reads typed rows from a `COPY … TO STDOUT (FORMAT binary)`: an
/// iterator of [`BinaryCopyOutRow`]s, each value read as its column's type
/// (the types given, in column order).
///
/// As for [`CopyOutReader`], dropped before the end, the rest is read and
/// dropped.
///
/// # Examples
///
/// ```no_run
/// use pgtx::binary_copy::BinaryCopyOutIter;
/// use pgtx::types::Type;
/// # fn main() -> pgtx::Result<()> {
/// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut guard = manager.lock()?;
/// let reader = guard.copy_out("COPY items (id, note) TO STDOUT (FORMAT binary)")?;
/// for row in BinaryCopyOutIter::new(reader, &[Type::INT4, Type::TEXT])? {
///     let row = row?;
///     let (id, note): (i32, &str) = (row.get(0), row.get(1));
///     println!("{id}: {note}");
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "rows are read by iterating; dropped, the rest is read and thrown away"]
pub struct BinaryCopyOutIter<'a> {
    rows: Fetching<'a, BinaryCopyOutRow>,
}

static_assertions::assert_not_impl_any!(BinaryCopyOutIter<'static>: Send, Sync);

impl<'a> BinaryCopyOutIter<'a> {
    /// Reads rows of `types` from the COPY `reader` began (nothing may
    /// have been read from it yet: the binary format's header comes first).
    ///
    /// # Errors
    ///
    /// [`Error::CopyAlreadyUsed`] if data was read from `reader` already
    /// (the rest is then read and dropped, as for a dropped reader).
    pub fn new(reader: CopyOutReader<'a>, types: &[Type]) -> Result<BinaryCopyOutIter<'a>> {
        if !reader.is_fresh() {
            return Err(Error::CopyAlreadyUsed);
        }
        let conn = reader.into_conn();
        // Dropped on an error, it ends the COPY as a dropped reader does.
        let iter = BinaryCopyOutIter {
            rows: Fetching::new(conn),
        };
        conn.with_stream(|s| s.type_copy_out(types))?;
        Ok(iter)
    }
}

impl Iterator for BinaryCopyOutIter<'_> {
    type Item = Result<BinaryCopyOutRow>;

    /// The next row; an error (data not in the binary format, a type that
    /// does not match the data, the server's error) ends the iterator.
    fn next(&mut self) -> Option<Result<BinaryCopyOutRow>> {
        self.rows.next(|s, rows| s.next_binary_rows(rows))
    }
}

impl fmt::Debug for BinaryCopyOutIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyOutIter")
            .field("done", &self.rows.done())
            .finish_non_exhaustive()
    }
}
