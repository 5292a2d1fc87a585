//! `COPY` on the async front: [`CopyInWriter`] (`COPY … FROM STDIN`, an
//! [`AsyncWrite`]) and [`CopyOutReader`] (`COPY … TO STDOUT`, an
//! [`AsyncRead`]), as the blocking front's writer and reader are
//! `io::Write` and `io::Read`.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::aio::handoff::Handoff;
use crate::aio::session::Inner;
use crate::conn::session::SessionCore;
use crate::conn::streaming::Fetched;
use crate::error::{Error, Result};

/// How much data is buffered before it is sent (as the blocking writer).
const CHUNK: usize = 64 * 1024;

/// The handle's session, as a COPY's reader or writer uses it.
struct Session<'h> {
    inner: &'h Inner,
    core: &'h mut SessionCore,
}

/// The data of a `COPY … FROM STDIN`, written as the server reads it
/// (text, CSV or binary): an [`AsyncWrite`], from `copy_in` on an async
/// [`Guard`](super::Guard), [`Tx`](super::Tx) or
/// [`Savepoint`](super::Savepoint), which it borrows until it is dropped.
/// Data is sent in chunks of 64 KiB; [`finish`](Self::finish) sends the
/// rest and ends the COPY.
///
/// Dropped (or its future dropped mid-write) before `finish`, the COPY
/// fails: the server stores none of it, a transaction it ran in is
/// aborted, and the fallback reports it (`unfinished_transactions()`), as
/// for the blocking [`CopyInWriter`](crate::CopyInWriter). `shutdown`
/// flushes but does not end the COPY: only `finish` says how many rows
/// were stored.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(manager: &pgtx::aio::ManagedConnection) -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::AsyncWriteExt;
///
/// let mut tx = manager.lock().await?.begin().await?;
/// let mut writer = tx.copy_in("COPY items (id, note) FROM STDIN").await?;
/// writer.write_all(b"1\tone\n2\ttwo\n").await?;
/// assert_eq!(writer.finish().await?, 2);
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a COPY stores nothing until `finish`; dropped, it fails"]
pub struct CopyInWriter<'h> {
    session: Handoff<'h, Session<'h>, Result<()>>,
    buf: BytesMut,
    /// A send failed: the COPY is over, `finish` returns this.
    failure: Option<Error>,
    /// Data was written (or buffered).
    written: bool,
}

static_assertions::assert_impl_all!(CopyInWriter<'static>: Send, Unpin);

impl<'h> CopyInWriter<'h> {
    pub(crate) fn new(inner: &'h Inner, core: &'h mut SessionCore) -> CopyInWriter<'h> {
        CopyInWriter {
            session: Handoff::new(Session { inner, core }),
            buf: BytesMut::new(),
            failure: None,
            written: false,
        }
    }

    /// Whether nothing was written yet.
    pub(crate) fn is_fresh(&self) -> bool {
        !self.written && self.failure.is_none() && !self.session.is_busy()
    }

    /// Appends what `encode` writes to the buffer (sent in chunks, as
    /// `write` is); when `encode` fails, nothing of it stays.
    pub(crate) fn encode(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<()>,
    ) -> Result<()> {
        let before = self.buf.len();
        if let Err(e) = encode(&mut self.buf) {
            self.buf.truncate(before);
            return Err(e);
        }
        self.written |= self.buf.len() > before;
        Ok(())
    }

    /// Sends what is buffered once it fills a chunk.
    ///
    /// # Errors
    ///
    /// A failed send (the COPY is then over).
    pub(crate) async fn send_if_full(&mut self) -> Result<()> {
        if self.buf.len() < CHUNK && !self.session.is_busy() {
            return Ok(());
        }
        poll_fn(|cx| self.poll_send_all(cx)).await;
        match self.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
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
    pub async fn finish(mut self) -> Result<u64> {
        poll_fn(|cx| self.poll_send_all(cx)).await;
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let Some(Session { inner, core }) = self.session.idle() else {
            return Err(Error::StreamEnded);
        };
        core.finish_copy_in(&inner.shared).await
    }

    /// Drives a send under way to its end (a failure is kept).
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(Err(e)) = ready!(self.session.poll_busy(cx)) {
            self.failure = Some(e);
        }
        Poll::Ready(())
    }

    /// A failure kept, told to a writer as an `io::Error` that says the
    /// same (the failure itself is for `finish`).
    fn told_failure(&self) -> io::Result<()> {
        match &self.failure {
            Some(failure) => Err(io::Error::other(failure.to_string())),
            None => Ok(()),
        }
    }

    /// Starts sending what is buffered.
    fn start_send(&mut self) {
        let data = self.buf.split().freeze();
        self.session.start(|mut session| {
            Box::pin(async move {
                let Session { inner, core } = &mut session;
                let sent = core.send_copy_data(&inner.shared, data).await;
                (session, sent)
            })
        });
    }

    /// Sends everything buffered, or stops at a failure.
    fn poll_send_all(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.poll_sent(cx));
            if self.buf.is_empty() || self.failure.is_some() {
                return Poll::Ready(());
            }
            self.start_send();
        }
    }
}

impl AsyncWrite for CopyInWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_sent(cx));
            this.told_failure()?;
            if this.buf.len() < CHUNK {
                this.buf.extend_from_slice(data);
                this.written |= !data.is_empty();
                return Poll::Ready(Ok(data.len()));
            }
            this.start_send();
        }
    }

    /// Sends what is buffered now (the writer otherwise sends in chunks
    /// of 64 KiB).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_all(cx));
        Poll::Ready(this.told_failure())
    }

    /// As `poll_flush`: only [`finish`](CopyInWriter::finish) ends the COPY.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl fmt::Debug for CopyInWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::CopyInWriter")
            .field("buffered", &self.buf.len())
            .field("sending", &self.session.is_busy())
            .field("failed", &self.failure.is_some())
            .finish_non_exhaustive()
    }
}

/// The data of a `COPY … TO STDOUT`, as the server sends it: an
/// [`AsyncRead`], from `copy_out` on an async [`Guard`](super::Guard),
/// [`Tx`](super::Tx) or [`Savepoint`](super::Savepoint), which it borrows
/// until it is dropped. Data is fetched as it arrives (up to 64 KiB at a
/// time), so memory stays bounded.
///
/// Dropped before the end, the rest is read and thrown away before the
/// handle's next statement (mid-fetch: cancelled and drained, and a
/// transaction it ran in can then only roll back). A read whose future is
/// dropped loses nothing.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(manager: &pgtx::aio::ManagedConnection) -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::AsyncReadExt;
///
/// let mut guard = manager.lock().await?;
/// let mut reader = guard.copy_out("COPY items TO STDOUT (FORMAT csv)").await?;
/// let mut csv = String::new();
/// reader.read_to_string(&mut csv).await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "data is read from the reader; dropped, the rest is read and thrown away"]
pub struct CopyOutReader<'h> {
    session: Handoff<'h, (Session<'h>, BytesMut), Result<Fetched>>,
    /// Data fetched and not yet read.
    chunk: Bytes,
    done: bool,
    /// Nothing was read yet.
    fresh: bool,
}

static_assertions::assert_impl_all!(CopyOutReader<'static>: Send, Unpin);

impl<'h> CopyOutReader<'h> {
    pub(crate) fn new(inner: &'h Inner, core: &'h mut SessionCore) -> CopyOutReader<'h> {
        CopyOutReader {
            session: Handoff::new((Session { inner, core }, BytesMut::new())),
            chunk: Bytes::new(),
            done: false,
            fresh: true,
        }
    }

    /// The handle's session, for a binary reader, if nothing was read yet.
    pub(crate) fn into_fresh_session(self) -> Option<(&'h Inner, &'h mut SessionCore)> {
        if !self.fresh {
            return None;
        }
        self.session
            .into_idle()
            .map(|(Session { inner, core }, _)| (inner, core))
    }
}

impl AsyncRead for CopyOutReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(fetched) = ready!(this.session.poll_busy(cx)) {
                match fetched {
                    Ok(Fetched::More) => {}
                    Ok(Fetched::End(_)) => this.done = true,
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                }
                if let Some((_, fetched)) = this.session.idle() {
                    this.chunk = fetched.split().freeze();
                }
            }
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk[..n]);
                this.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.fresh = false;
            this.session.start(|(mut session, mut out)| {
                Box::pin(async move {
                    let Session { inner, core } = &mut session;
                    let fetched = core.next_copy_data(&inner.shared, &mut out).await;
                    ((session, out), fetched)
                })
            });
        }
    }
}

impl fmt::Debug for CopyOutReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::CopyOutReader")
            .field("buffered", &self.chunk.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
