//! Typed rows over `COPY … (FORMAT binary)`: [`BinaryCopyInWriter`] and
//! [`BinaryCopyOutIter`], as in the `postgres` crate, made from a fresh
//! [`CopyInWriter`] or [`CopyOutReader`].

use std::fmt;
use std::marker::PhantomData;

use crate::blocking::held::Conn;
use crate::blocking::session::Next;
use crate::error::{Error, Result};
use crate::types::{ToSql, Type};
use crate::{CopyInWriter, CopyOutReader};

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
    conn: Conn<'a>,
    columns: usize,
    over: bool,
    _holder: PhantomData<(&'a mut (), *const ())>,
}

static_assertions::assert_not_impl_any!(BinaryCopyInWriter<'static>: Send, Sync);

impl<'a> BinaryCopyInWriter<'a> {
    /// Writes rows of `types` to the COPY `writer` began (nothing may have
    /// been written to it yet: the binary format's header goes first).
    ///
    /// # Errors
    ///
    /// [`Error::CopyAlreadyUsed`] if data was written to `writer`
    /// already (the COPY then fails as a dropped writer does).
    pub fn new(writer: CopyInWriter<'a>, types: &[Type]) -> Result<BinaryCopyInWriter<'a>> {
        if !writer.is_fresh() {
            return Err(Error::CopyAlreadyUsed);
        }
        let conn = writer.into_conn();
        let writer = BinaryCopyInWriter {
            conn,
            columns: types.len(),
            over: false,
            _holder: PhantomData,
        };
        conn.with_stream(|s| s.type_copy(true, types))?;
        Ok(writer)
    }

    /// Writes one row: one value per column type, in order (buffered: the
    /// data leaves in chunks).
    ///
    /// # Errors
    ///
    /// [`Error::WrongRowLength`] if `values` has not one value per type
    /// (nothing of the row is sent; the COPY goes on); [`Error::Db`] if a
    /// value cannot be encoded as its column's type, or the server failed
    /// the COPY, and [`Error::ConnectionLost`]: the COPY is then over,
    /// nothing of it stored.
    pub fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<()> {
        if self.over {
            return Err(Error::StreamEnded);
        }
        if values.len() != self.columns {
            return Err(Error::WrongRowLength {
                expected: self.columns,
                got: values.len(),
            });
        }
        let written = self.conn.with_stream(|s| s.send_binary_row(values));
        if written.is_err() {
            self.over = true;
        }
        written
    }

    /// Ends the COPY and returns the number of rows the server stored.
    ///
    /// # Errors
    ///
    /// As [`CopyInWriter::finish`].
    pub fn finish(mut self) -> Result<u64> {
        if self.over {
            return Err(Error::StreamEnded);
        }
        self.over = true;
        self.conn.with_stream(|s| s.finish_copy_in())
    }
}

impl Drop for BinaryCopyInWriter<'_> {
    fn drop(&mut self) {
        if !self.over {
            self.conn.end_stream();
        }
    }
}

impl fmt::Debug for BinaryCopyInWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyInWriter")
            .field("columns", &self.columns)
            .field("over", &self.over)
            .finish_non_exhaustive()
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
    conn: Conn<'a>,
    done: bool,
    _holder: PhantomData<(&'a mut (), *const ())>,
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
        let iter = BinaryCopyOutIter {
            conn,
            done: false,
            _holder: PhantomData,
        };
        conn.with_stream(|s| s.type_copy(false, types))?;
        Ok(iter)
    }
}

impl Iterator for BinaryCopyOutIter<'_> {
    type Item = Result<BinaryCopyOutRow>;

    /// The next row; an error (data not in the binary format, a type that
    /// does not match the data, the server's error) ends the iterator.
    fn next(&mut self) -> Option<Result<BinaryCopyOutRow>> {
        if self.done {
            return None;
        }
        match self.conn.with_stream(|s| s.next_binary_row()) {
            Ok(Next::Item(row)) => Some(Ok(row)),
            Ok(Next::End(_)) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for BinaryCopyOutIter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.end_stream();
        }
    }
}

impl fmt::Debug for BinaryCopyOutIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyOutIter")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
