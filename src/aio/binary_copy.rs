//! Typed rows over `COPY … (FORMAT binary)` on the async front:
//! [`BinaryCopyInWriter`] and [`BinaryCopyOutStream`], made from a fresh
//! async [`CopyInWriter`] or [`CopyOutReader`], as the blocking
//! [`binary_copy`](crate::binary_copy) types are.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BufMut;
use futures_util::Stream;

use crate::aio::copy::{CopyInWriter, CopyOutReader};
use crate::aio::rows::Fetching;
use crate::binary_copy::{BinaryCopyOutRow, HEADER, encode_row};
use crate::error::{Error, Result};
use crate::types::{ToSql, Type};

/// Writes typed rows to a binary `COPY … FROM STDIN`: each value is
/// encoded as its column's type, and the data leaves in chunks of 64 KiB.
/// End it with [`finish`](Self::finish); dropped before, the COPY fails
/// as a dropped [`CopyInWriter`] does.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(manager: &pgtx::aio::ManagedConnection) -> pgtx::Result<()> {
/// use pgtx::aio::BinaryCopyInWriter;
/// use pgtx::types::Type;
///
/// let mut guard = manager.lock().await?;
/// let writer = guard.copy_in("COPY items (id, note) FROM STDIN (FORMAT binary)").await?;
/// let mut rows = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT])?;
/// rows.write(&[&1_i32, &"one"]).await?;
/// assert_eq!(rows.finish().await?, 1);
/// # Ok(())
/// # }
/// ```
#[must_use = "a COPY must be ended with finish(); dropped, it fails and stores nothing"]
pub struct BinaryCopyInWriter<'h> {
    writer: CopyInWriter<'h>,
    types: Vec<Type>,
}

impl<'h> BinaryCopyInWriter<'h> {
    /// Writes rows of `types` to the COPY `writer` began (nothing may have
    /// been written to it yet: the binary format's header goes first).
    ///
    /// # Errors
    ///
    /// [`Error::CopyAlreadyUsed`] if data was written to `writer` already.
    pub fn new(mut writer: CopyInWriter<'h>, types: &[Type]) -> Result<BinaryCopyInWriter<'h>> {
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

    /// Writes one row: one value per column type, in order.
    ///
    /// # Errors
    ///
    /// [`Error::WrongRowLength`] or [`Error::CopyValue`]: nothing of the
    /// row is sent, and the COPY goes on. [`Error::Db`] if the server
    /// failed the COPY, and [`Error::ConnectionLost`]: the COPY is over,
    /// nothing of it stored.
    pub async fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<()> {
        let types = &self.types;
        self.writer.encode(|buf| encode_row(buf, values, types))?;
        self.writer.send_if_full().await
    }

    /// Ends the COPY and returns the number of rows the server stored.
    ///
    /// # Errors
    ///
    /// As [`CopyInWriter::finish`].
    pub async fn finish(mut self) -> Result<u64> {
        self.writer.encode(|buf| {
            buf.put_i16(-1);
            Ok(())
        })?;
        self.writer.finish().await
    }
}

impl fmt::Debug for BinaryCopyInWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::BinaryCopyInWriter")
            .field("types", &self.types)
            .field("writer", &self.writer)
            .finish()
    }
}

/// The typed rows of a binary `COPY … TO STDOUT`, as a [`Stream`] of
/// [`BinaryCopyOutRow`]s (or with [`try_next`](Self::try_next)), read as
/// they arrive. Dropped early, the rest is read and thrown away before the
/// handle's next statement.
#[must_use = "rows are read from the stream; dropped, the rest is read and thrown away"]
pub struct BinaryCopyOutStream<'h> {
    rows: Fetching<'h, BinaryCopyOutRow>,
}

static_assertions::assert_impl_all!(BinaryCopyOutStream<'static>: Send, Unpin);

impl<'h> BinaryCopyOutStream<'h> {
    /// Reads the rows of `types` from the COPY `reader` began (nothing may
    /// have been read from it yet).
    ///
    /// # Errors
    ///
    /// [`Error::CopyAlreadyUsed`] if data was read from `reader` already.
    pub fn new(reader: CopyOutReader<'h>, types: &[Type]) -> Result<BinaryCopyOutStream<'h>> {
        let (inner, core) = reader.into_fresh_session().ok_or(Error::CopyAlreadyUsed)?;
        core.type_copy_out(types)?;
        Ok(BinaryCopyOutStream {
            rows: Fetching::new(inner, core),
        })
    }

    /// The next row; `None` after the last.
    ///
    /// # Errors
    ///
    /// The server's error, a row that does not read as `types`, or
    /// [`Error::ConnectionLost`]; the stream then ends.
    pub async fn try_next(&mut self) -> Result<Option<BinaryCopyOutRow>> {
        poll_fn(|cx| self.rows.poll_item(cx)).await.transpose()
    }
}

impl Stream for BinaryCopyOutStream<'_> {
    type Item = Result<BinaryCopyOutRow>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BinaryCopyOutRow>>> {
        self.get_mut().rows.poll_item(cx)
    }
}

impl fmt::Debug for BinaryCopyOutStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::BinaryCopyOutStream")
            .field("fetching", &self.rows.is_busy())
            .finish_non_exhaustive()
    }
}
