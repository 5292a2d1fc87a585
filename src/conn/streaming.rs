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

use std::future::poll_fn;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{SinkExt, Stream};
use postgres::types::{ToSql, Type};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutRow, BinaryCopyOutStream};
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
    /// `COPY … FROM STDIN` data, as the caller writes it.
    CopyIn(Pinnable<CopyInSink<Bytes>>),
    /// `COPY … FROM STDIN (FORMAT binary)`, written as typed rows.
    BinaryIn(Pin<Box<BinaryCopyInWriter>>),
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

/// What reading the next row came to.
pub(crate) enum Next<T> {
    Item(T),
    /// The statement ended (and the server is ready for the next one);
    /// the rows it affected, when it says.
    End(Option<u64>),
}

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

    /// The next row of a `query_raw`.
    pub(crate) async fn next_row(&mut self) -> Result<Next<Row>, postgres::Error> {
        let mut stream = self.stream.take();
        let next = match stream.as_mut() {
            Some(Streaming::Rows(rows)) => match rows.pinned() {
                Some(rows) => self.run_until(|_| next_item(rows), Settle::No).await,
                None => Ok(None),
            },
            _ => Ok(None),
        };
        self.after_item(stream, next, |s| match s {
            Some(Streaming::Rows(rows)) => rows.get().and_then(RowStream::rows_affected),
            _ => None,
        })
        .await
    }

    /// The next chunk of `COPY … TO STDOUT` data.
    pub(crate) async fn next_copy_data(&mut self) -> Result<Next<Bytes>, postgres::Error> {
        let mut stream = self.stream.take();
        let next = match stream.as_mut() {
            Some(Streaming::CopyOut(data)) => match data.pinned() {
                Some(data) => self.run_until(|_| next_item(data), Settle::No).await,
                None => Ok(None),
            },
            _ => Ok(None),
        };
        self.after_item(stream, next, |_| None).await
    }

    /// The next row of a binary `COPY … TO STDOUT`.
    pub(crate) async fn next_binary_row(
        &mut self,
    ) -> Result<Next<BinaryCopyOutRow>, postgres::Error> {
        let mut stream = self.stream.take();
        let next = match stream.as_mut() {
            Some(Streaming::BinaryOut(rows)) => {
                let rows = rows.as_mut();
                self.run_until(|_| next_item(rows), Settle::No).await
            }
            _ => Ok(None),
        };
        self.after_item(stream, next, |_| None).await
    }

    /// Puts the stream back after an item was read; at its end (or on an
    /// error) waits for the server to be ready for the next statement.
    async fn after_item<T>(
        &mut self,
        stream: Option<Streaming>,
        next: Result<Option<T>, postgres::Error>,
        rows_affected: impl FnOnce(&Option<Streaming>) -> Option<u64>,
    ) -> Result<Next<T>, postgres::Error> {
        match next {
            Ok(Some(item)) => {
                self.stream = stream;
                Ok(Next::Item(item))
            }
            Ok(None) => {
                let affected = rows_affected(&stream);
                drop(stream);
                self.end_stream().await?;
                Ok(Next::End(affected))
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

    /// Turns a `COPY … FROM STDIN` nothing was written to into a writer
    /// of typed binary rows.
    pub(crate) fn type_copy_in(&mut self, types: &[Type]) -> Result<(), WrongStream> {
        match self.stream.take() {
            Some(Streaming::CopyIn(sink)) => match sink.take_fresh() {
                Ok(sink) => {
                    let writer = BinaryCopyInWriter::new(sink, types);
                    self.stream = Some(Streaming::BinaryIn(Box::pin(writer)));
                    Ok(())
                }
                Err(used) => {
                    self.stream = Some(Streaming::CopyIn(used));
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

    /// Sends one row of a binary `COPY … FROM STDIN` (buffered: the data
    /// leaves in chunks).
    pub(crate) async fn send_binary_row(
        &mut self,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<(), postgres::Error> {
        let mut stream = self.stream.take();
        let sent = match stream.as_mut() {
            Some(Streaming::BinaryIn(writer)) => {
                let writer = writer.as_mut();
                self.run_until(|_| writer.write(values), Settle::No).await
            }
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
            Some(Streaming::BinaryIn(mut writer)) => {
                let writer = writer.as_mut();
                self.run(|_| writer.finish()).await
            }
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

/// The next item of `stream`.
async fn next_item<S, T>(mut stream: Pin<&mut S>) -> Result<Option<T>, postgres::Error>
where
    S: Stream<Item = Result<T, postgres::Error>> + ?Sized,
{
    poll_fn(|cx| stream.as_mut().poll_next(cx))
        .await
        .transpose()
}
