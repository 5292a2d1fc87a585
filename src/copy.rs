//! COPY data through a holder: [`CopyInWriter`] for `COPY … FROM STDIN`,
//! [`CopyOutReader`] for `COPY … TO STDOUT` (and, in
//! [`binary_copy`](crate::binary_copy), typed binary rows over them).

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};

use crate::blocking::held::Conn;
use crate::blocking::session::Fetched;
use crate::error::{Error, Result};
use crate::statements::ToStatement;

/// How much data a writer gathers before it sends it (one CopyData
/// message, one turn of the runtime).
const CHUNK: usize = 64 * 1024;

/// Writes the data of a `COPY … FROM STDIN` begun by `copy_in` (on
/// [`Guard`](crate::Guard), [`Tx`](crate::Tx) or
/// [`Savepoint`](crate::Savepoint)), in the COPY's format (text, CSV or
/// binary), through [`std::io::Write`].
///
/// The COPY must be ended with [`finish`](Self::finish), which says how
/// many rows the server stored, or reports its error (a bad row). A writer
/// dropped (or forgotten, `mem::forget`) before `finish` fails the COPY:
/// the server stores none of its rows, a transaction it ran in is aborted
/// (its `commit` reports [`Error::TransactionAborted`]), and the fallback
/// reports it as it does an unfinished transaction (a log line at error
/// level and [`ManagedConnection::unfinished_transactions`](crate::ManagedConnection::unfinished_transactions)).
///
/// It borrows its holder: no other statement runs on the connection until
/// it is finished or dropped.
///
/// # Examples
///
/// ```no_run
/// use std::io::Write;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut tx = manager.lock()?.begin()?;
/// let mut writer = tx.copy_in("COPY items (id, note) FROM STDIN")?;
/// for id in 0..1000 {
///     writeln!(writer, "{id}\tnote {id}")?;
/// }
/// let rows = writer.finish()?;
/// tx.commit()?;
/// assert_eq!(rows, 1000);
/// # Ok(())
/// # }
/// ```
#[must_use = "a COPY must be ended with finish(); dropped, it fails and stores nothing"]
pub struct CopyInWriter<'a> {
    conn: Conn<'a>,
    buf: BytesMut,
    /// Data was written (buffered or sent).
    written: bool,
    /// Finished, or failed (the COPY is over either way).
    over: bool,
    /// Why the COPY failed, kept for `finish` (writes return it as an
    /// `io::Error`).
    failure: Option<Error>,
    /// Borrows the holder exclusively, and is no more `Send` than it.
    _holder: PhantomData<(&'a mut (), *const ())>,
}

static_assertions::assert_not_impl_any!(CopyInWriter<'static>: Send, Sync);

impl<'a> CopyInWriter<'a> {
    /// Starts the `COPY … FROM STDIN` `query` on `conn`.
    pub(crate) fn start<T: ?Sized + ToStatement>(
        conn: Conn<'a>,
        query: &T,
    ) -> Result<CopyInWriter<'a>> {
        conn.copy(query, true)?;
        Ok(CopyInWriter {
            conn,
            buf: BytesMut::new(),
            written: false,
            over: false,
            failure: None,
            _holder: PhantomData,
        })
    }

    /// Ends the COPY: sends what is buffered and CopyDone, and returns the
    /// number of rows the server stored.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] with the server's error (a row it could not read, a
    /// constraint): nothing of the COPY was stored, and a transaction it
    /// ran in is aborted; [`Error::ConnectionLost`] if the connection
    /// broke. When a write failed earlier, that failure (the COPY is over).
    pub fn finish(mut self) -> Result<u64> {
        self.send_buffered()?;
        self.over = true;
        self.conn.with_stream(|s| s.finish_copy_in())
    }

    /// Sends what is buffered.
    fn send_buffered(&mut self) -> Result<()> {
        if let Some(failure) = self.failure.take() {
            self.over = true;
            return Err(failure);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        self.send(data)
    }

    fn send(&mut self, data: Bytes) -> Result<()> {
        let sent = self.conn.with_stream(|s| s.send_copy_data(data));
        if sent.is_err() {
            self.over = true;
        }
        sent
    }

    /// Hands `data` on (buffered). A failure is kept for `finish`, and
    /// told to the writer as an `io::Error` that says the same.
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(failure) = &self.failure {
            return Err(io::Error::other(failure.to_string()));
        }
        if self.over {
            return Err(into_io(Error::StreamEnded));
        }
        self.written |= !data.is_empty();
        let sent = if data.len() >= CHUNK {
            self.send_buffered()
                .and_then(|()| self.send(Bytes::copy_from_slice(data)))
        } else {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= CHUNK {
                self.send_buffered()
            } else {
                Ok(())
            }
        };
        sent.map_err(|failure| {
            let told = io::Error::other(failure.to_string());
            self.failure = Some(failure);
            told
        })
    }

    /// Appends what `encode` writes to the buffer (sent in chunks, as
    /// `write` is); when `encode` fails, nothing of it stays.
    pub(crate) fn encode(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<()>,
    ) -> Result<()> {
        if let Some(failure) = self.failure.take() {
            self.over = true;
            return Err(failure);
        }
        if self.over {
            return Err(Error::StreamEnded);
        }
        let before = self.buf.len();
        if let Err(e) = encode(&mut self.buf) {
            self.buf.truncate(before);
            return Err(e);
        }
        self.written |= self.buf.len() > before;
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(())
    }

    /// Whether data was written (or buffered) yet.
    pub(crate) fn is_fresh(&self) -> bool {
        !self.written && !self.over && self.failure.is_none()
    }
}

impl Write for CopyInWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf)?;
        Ok(buf.len())
    }

    /// Sends what is buffered now (the writer otherwise sends in chunks
    /// of 64 KiB).
    fn flush(&mut self) -> io::Result<()> {
        if self.failure.is_some() || self.buf.is_empty() {
            return self.put(&[]);
        }
        let data = self.buf.split().freeze();
        self.send(data).map_err(|failure| {
            let told = io::Error::other(failure.to_string());
            self.failure = Some(failure);
            told
        })
    }
}

impl Drop for CopyInWriter<'_> {
    fn drop(&mut self) {
        if !self.over {
            self.conn.end_stream();
        }
    }
}

impl fmt::Debug for CopyInWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyInWriter")
            .field("buffered", &self.buf.len())
            .field("over", &self.over)
            .finish_non_exhaustive()
    }
}

/// Reads the data of a `COPY … TO STDOUT` begun by `copy_out` (on
/// [`Guard`](crate::Guard), [`Tx`](crate::Tx) or
/// [`Savepoint`](crate::Savepoint)), in the COPY's format, through
/// [`std::io::Read`] and [`std::io::BufRead`]. Memory stays bounded
/// however much data there is.
///
/// It borrows its holder: no other statement runs on the connection until
/// it is done. Dropped (or forgotten) before the end, the rest of the
/// data is read and dropped; the COPY itself ran to its end on the server.
///
/// # Examples
///
/// ```no_run
/// use std::io::Read;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut guard = manager.lock()?;
/// let mut csv = String::new();
/// guard
///     .copy_out("COPY (SELECT id, note FROM items) TO STDOUT (FORMAT csv)")?
///     .read_to_string(&mut csv)?;
/// # Ok(())
/// # }
/// ```
pub struct CopyOutReader<'a> {
    conn: Conn<'a>,
    /// Data read from the server and not yet handed out.
    chunk: BytesMut,
    done: bool,
    /// Borrows the holder exclusively, and is no more `Send` than it.
    _holder: PhantomData<(&'a mut (), *const ())>,
}

static_assertions::assert_not_impl_any!(CopyOutReader<'static>: Send, Sync);

impl<'a> CopyOutReader<'a> {
    /// Starts the `COPY … TO STDOUT` `query` on `conn`.
    pub(crate) fn start<T: ?Sized + ToStatement>(
        conn: Conn<'a>,
        query: &T,
    ) -> Result<CopyOutReader<'a>> {
        conn.copy(query, false)?;
        Ok(CopyOutReader {
            conn,
            chunk: BytesMut::new(),
            done: false,
            _holder: PhantomData,
        })
    }

    /// Whether nothing was read yet.
    pub(crate) fn is_fresh(&self) -> bool {
        self.chunk.is_empty() && !self.done
    }

    /// The connection the COPY runs on, handed to a binary reader: the
    /// reader is spent (its `Drop` does nothing more).
    pub(crate) fn into_conn(mut self) -> Conn<'a> {
        self.done = true;
        self.conn
    }
}

impl Read for CopyOutReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for CopyOutReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() && !self.done {
            // What has arrived, in one turn (the server sends a message per row).
            match self.conn.with_stream(|s| s.next_copy_data(&mut self.chunk)) {
                Ok(Fetched::More) => {}
                Ok(Fetched::End(_)) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Err(into_io(e));
                }
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, amt: usize) {
        self.chunk.advance(amt.min(self.chunk.len()));
    }
}

impl Drop for CopyOutReader<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.end_stream();
        }
    }
}

impl fmt::Debug for CopyOutReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyOutReader")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A pgtx error as an `io::Error` (its source), for `Read` and `Write`.
fn into_io(e: Error) -> io::Error {
    io::Error::other(e)
}
