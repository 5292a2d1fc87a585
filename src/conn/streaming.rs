//! A statement whose answer is read, or whose data is written, over many
//! calls: rows streamed by `query_raw`, `COPY … TO STDOUT` data read, and
//! `COPY … FROM STDIN` data written.
//!
//! The connection keeps the open stream itself (not the handle the user
//! holds), so that a handle that is forgotten or dropped cannot leave the
//! connection in the middle of it: whatever uses the connection next ends
//! the stream first ([`Connection::end_stream`]). Ending a reader reads
//! the rest of the server's answer and drops it; ending a writer sends
//! CopyFail, so that nothing of an unfinished COPY is stored.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, Stream};
use postgres::types::Type;
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::{CopyInSink, CopyOutStream, Row, RowStream};

use super::{Connection, Settle};

/// A stream the connection is in the middle of.
pub(crate) enum Streaming {
    /// Rows of a `query_raw`.
    Rows(Pinnable<RowStream>),
    /// `COPY … TO STDOUT` data, as the server sends it.
    CopyOut(Pinnable<CopyOutStream>),
    /// `COPY … TO STDOUT (FORMAT binary)`, read as typed rows.
    BinaryOut(Pin<Box<BinaryCopyOutStream>>),
    /// `COPY … FROM STDIN` data, as the caller writes it (the binary
    /// format's rows are encoded by the caller's writer).
    CopyIn(Pinnable<CopyInSink<Bytes>>),
}

/// A tokio-postgres stream that is moved into a typed (binary) reader or
/// writer before its first use, and pinned at its first use. Exactly one
/// of the two is there.
pub(crate) struct Pinnable<T> {
    fresh: Option<Box<T>>,
    pinned: Option<Pin<Box<T>>>,
}

impl<T> Pinnable<T> {
    pub(crate) fn new(value: T) -> Pinnable<T> {
        Pinnable {
            fresh: Some(Box::new(value)),
            pinned: None,
        }
    }

    fn pinned(&mut self) -> Option<Pin<&mut T>> {
        if let Some(fresh) = self.fresh.take() {
            self.pinned = Some(Box::into_pin(fresh));
        }
        self.pinned.as_mut().map(Pin::as_mut)
    }

    fn get(&self) -> Option<&T> {
        self.fresh.as_deref().or(self.pinned.as_deref())
    }

    /// The stream, if nothing was read from or written to it yet.
    fn take_fresh(self) -> Result<T, Pinnable<T>> {
        match self.fresh {
            Some(fresh) => Ok(*fresh),
            None => Err(self),
        }
    }
}

/// What a read of a stream came to (the items read are in the caller's
/// buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// More may come.
    More,
    /// The statement ended (and the server is ready for the next one);
    /// the rows it affected, when it says.
    End(Option<u64>),
}

/// At most this many rows are read in one turn of the runtime.
const MAX_ROWS: usize = 1024;

/// At most about this much COPY data is read in one turn of the runtime.
const MAX_COPY_BYTES: usize = 64 * 1024;

/// What the stream in use is not: the caller asked a reader for what only
/// a writer does, or for a typed stream of one begun untyped.
#[derive(Debug)]
pub(crate) struct WrongStream;

impl Connection {
    /// Keeps `stream` until it ends or is ended.
    pub(crate) fn open_stream(&mut self, stream: Streaming) {
        debug_assert!(self.stream.is_none(), "one stream at a time");
        self.stream = Some(stream);
    }

    /// Ends the open stream, if any, and waits until the server is ready
    /// for the next statement: a reader's rest is read and dropped, a
    /// writer's COPY fails (tokio-postgres sends CopyFail when its sink is
    /// dropped unfinished), so the server stores none of it.
    pub(crate) async fn end_stream(&mut self) -> Result<(), postgres::Error> {
        self.stream = None;
        self.run(|_| std::future::ready(Ok(()))).await
    }

    /// The rows of a `query_raw` that have arrived (at least one, unless
    /// the statement ended), up to [`MAX_ROWS`], appended to `out`. Reading
    /// what is there in one turn costs one wait for the whole batch, not
    /// one per row.
    pub(crate) async fn next_rows(
        &mut self,
        out: &mut VecDeque<Row>,
    ) -> Result<Fetched, postgres::Error> {
        let mut stream = self.stream.take();
        let read = match stream.as_mut() {
            Some(Streaming::Rows(rows)) => match rows.pinned() {
                Some(rows) => {
                    self.run_until(
                        |_| fill(rows, |row| out.push_back(row), MAX_ROWS, |_| 1),
                        Settle::No,
                    )
                    .await
                }
                None => Ok(true),
            },
            _ => Ok(true),
        };
        self.after_batch(stream, read, |s| match s {
            Some(Streaming::Rows(rows)) => rows.get().and_then(RowStream::rows_affected),
            _ => None,
        })
        .await
    }

    /// The `COPY … TO STDOUT` data that has arrived (at least one message,
    /// unless the COPY ended; up to about [`MAX_COPY_BYTES`]), appended to
    /// `out`. The server sends a message per row.
    pub(crate) async fn next_copy_data(
        &mut self,
        out: &mut BytesMut,
    ) -> Result<Fetched, postgres::Error> {
        let mut stream = self.stream.take();
        let read = match stream.as_mut() {
            Some(Streaming::CopyOut(data)) => match data.pinned() {
                Some(data) => {
                    self.run_until(
                        |_| {
                            fill(
                                data,
                                |chunk: Bytes| out.extend_from_slice(&chunk),
                                MAX_COPY_BYTES,
                                Bytes::len,
                            )
                        },
                        Settle::No,
                    )
                    .await
                }
                None => Ok(true),
            },
            _ => Ok(true),
        };
        self.after_batch(stream, read, |_| None).await
    }

    /// The rows of a binary `COPY … TO STDOUT` that have arrived (at least
    /// one, unless the COPY ended), up to [`MAX_ROWS`], appended to `out`.
    pub(crate) async fn next_binary_rows(
        &mut self,
        out: &mut VecDeque<BinaryCopyOutRow>,
    ) -> Result<Fetched, postgres::Error> {
        let mut stream = self.stream.take();
        let read = match stream.as_mut() {
            Some(Streaming::BinaryOut(rows)) => {
                let rows = rows.as_mut();
                self.run_until(
                    |_| fill(rows, |row| out.push_back(row), MAX_ROWS, |_| 1),
                    Settle::No,
                )
                .await
            }
            _ => Ok(true),
        };
        self.after_batch(stream, read, |_| None).await
    }

    /// Puts the stream back after a batch was read; at its end (or on an
    /// error) waits for the server to be ready for the next statement.
    async fn after_batch(
        &mut self,
        stream: Option<Streaming>,
        read: Result<bool, postgres::Error>,
        rows_affected: impl FnOnce(&Option<Streaming>) -> Option<u64>,
    ) -> Result<Fetched, postgres::Error> {
        match read {
            Ok(false) => {
                self.stream = stream;
                Ok(Fetched::More)
            }
            Ok(true) => {
                let affected = rows_affected(&stream);
                drop(stream);
                self.end_stream().await?;
                Ok(Fetched::End(affected))
            }
            Err(e) => {
                drop(stream);
                // The statement's error is the one to report; ending only
                // reads the ReadyForQuery that follows it.
                let _ = self.end_stream().await;
                Err(e)
            }
        }
    }

    /// Turns a `COPY … TO STDOUT` nothing was read from into a reader of
    /// typed binary rows.
    pub(crate) fn type_copy_out(&mut self, types: &[Type]) -> Result<(), WrongStream> {
        match self.stream.take() {
            Some(Streaming::CopyOut(data)) => match data.take_fresh() {
                Ok(data) => {
                    let rows = BinaryCopyOutStream::new(data, types);
                    self.stream = Some(Streaming::BinaryOut(Box::pin(rows)));
                    Ok(())
                }
                Err(used) => {
                    self.stream = Some(Streaming::CopyOut(used));
                    Err(WrongStream)
                }
            },
            other => {
                self.stream = other;
                Err(WrongStream)
            }
        }
    }

    /// Sends a chunk of `COPY … FROM STDIN` data.
    pub(crate) async fn send_copy_data(&mut self, data: Bytes) -> Result<(), postgres::Error> {
        let mut stream = self.stream.take();
        let sent = match stream.as_mut() {
            Some(Streaming::CopyIn(sink)) => match sink.pinned() {
                Some(mut sink) => self.run_until(|_| sink.send(data), Settle::No).await,
                None => Ok(()),
            },
            _ => Ok(()),
        };
        self.after_write(stream, sent).await
    }

    async fn after_write(
        &mut self,
        stream: Option<Streaming>,
        sent: Result<(), postgres::Error>,
    ) -> Result<(), postgres::Error> {
        match sent {
            Ok(()) => {
                self.stream = stream;
                Ok(())
            }
            Err(e) => {
                drop(stream);
                let _ = self.end_stream().await;
                Err(e)
            }
        }
    }

    /// Ends a `COPY … FROM STDIN` (CopyDone): the number of rows copied,
    /// or the server's error (a bad row), once the server is ready for the
    /// next statement.
    pub(crate) async fn finish_copy_in(&mut self) -> Result<u64, postgres::Error> {
        let stream = self.stream.take();
        let finished = match stream {
            Some(Streaming::CopyIn(mut sink)) => match sink.pinned() {
                Some(sink) => self.run(|_| sink.finish()).await,
                None => Ok(0),
            },
            other => {
                self.stream = other;
                return Ok(0);
            }
        };
        if finished.is_err() {
            let _ = self.end_stream().await;
        }
        finished
    }
}

/// Reads what `stream` has now into `push` (waiting only for the first
/// item), until `max` (as `size` counts it) is reached; whether the
/// stream ended.
async fn fill<S, T>(
    mut stream: Pin<&mut S>,
    mut push: impl FnMut(T),
    max: usize,
    size: impl Fn(&T) -> usize,
) -> Result<bool, postgres::Error>
where
    S: Stream<Item = Result<T, postgres::Error>> + ?Sized,
{
    let mut filled = 0;
    poll_fn(|cx| {
        while filled < max {
            match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    filled += size(&item).max(1);
                    push(item);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(true)),
                Poll::Pending if filled == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(false)),
            }
        }
        Poll::Ready(Ok(false))
    })
    .await
}
