//! Rows read as they arrive on the async front: [`RowStream`], from
//! `query_raw`.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::Stream;

use crate::Row;
use crate::aio::handoff::Handoff;
use crate::aio::session::Inner;
use crate::conn::session::SessionCore;
use crate::conn::streaming::Fetched;
use crate::error::{Error, Result};

/// The rows of a query as the server sends them, with bounded memory
/// however many there are: a [`Stream`] of `Result<Row>`, from
/// `query_raw` on an async [`Guard`](super::Guard), [`Tx`](super::Tx) or
/// [`Savepoint`](super::Savepoint), whose handle it borrows until it is
/// dropped (no other statement can run in the middle of its rows).
///
/// Read it with [`try_next`](Self::try_next), or with any `Stream`
/// combinator (`futures::TryStreamExt`). Rows are fetched a batch at a
/// time (all that have arrived, up to 1024), so a slow reader holds the
/// server back instead of filling memory.
///
/// # Cancel safety
///
/// A [`try_next`](Self::try_next) (or `poll_next`) whose future is dropped
/// loses nothing: the fetch it began is kept in the stream and the next
/// call goes on with it. Dropped before its last row, the stream leaves
/// the rest to be read and thrown away (or, mid-fetch, cancelled and
/// drained) before the handle's next statement, as the blocking
/// [`RowIter`](crate::RowIter) does; inside a transaction nothing of it
/// is lost but the unread rows.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(manager: &pgtx::aio::ManagedConnection) -> pgtx::Result<()> {
/// let mut tx = manager.lock().await?.begin().await?;
/// let mut total = 0_i64;
/// {
///     let mut rows = tx
///         .query_raw("SELECT n FROM generate_series(1, 1000000) AS n", &[])
///         .await?;
///     while let Some(row) = rows.try_next().await? {
///         total += i64::from(row.get::<_, i32>(0));
///     }
/// }
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "rows are read from the stream; dropped, the rest is read and thrown away"]
pub struct RowStream<'h> {
    reading: Handoff<'h, Reading<'h>, Result<Fetched>>,
    rows_affected: Option<u64>,
}

static_assertions::assert_impl_all!(RowStream<'static>: Send, Unpin);

/// The handle's session, and the rows fetched and not yet handed out.
struct Reading<'h> {
    inner: &'h Inner,
    core: &'h mut SessionCore,
    rows: VecDeque<Row>,
    failure: Option<Error>,
    done: bool,
}

impl<'h> RowStream<'h> {
    /// The stream of the query the core has just started.
    pub(crate) fn new(inner: &'h Inner, core: &'h mut SessionCore) -> RowStream<'h> {
        RowStream {
            reading: Handoff::new(Reading {
                inner,
                core,
                rows: VecDeque::new(),
                failure: None,
                done: false,
            }),
            rows_affected: None,
        }
    }

    /// The next row; `None` after the last.
    ///
    /// # Errors
    ///
    /// The server's error for the query (its later rows are not sent; in
    /// a transaction, the transaction is aborted), or
    /// [`Error::ConnectionLost`]. After an error the stream ends.
    pub async fn try_next(&mut self) -> Result<Option<Row>> {
        poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// How many rows the statement affected or returned, once its last
    /// row has been read (`None` before then, or if the server did not
    /// say).
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows_affected
    }
}

impl Stream for RowStream<'_> {
    type Item = Result<Row>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Row>>> {
        let this = self.get_mut();
        loop {
            let fetched = ready!(this.reading.poll_busy(cx));
            let Some(reading) = this.reading.idle() else {
                return Poll::Ready(None);
            };
            match fetched {
                None | Some(Ok(Fetched::More)) => {}
                Some(Ok(Fetched::End(affected))) => {
                    reading.done = true;
                    this.rows_affected = affected;
                }
                Some(Err(e)) => {
                    reading.done = true;
                    reading.failure = Some(e);
                }
            }
            if let Some(row) = reading.rows.pop_front() {
                return Poll::Ready(Some(Ok(row)));
            }
            if let Some(failure) = reading.failure.take() {
                return Poll::Ready(Some(Err(failure)));
            }
            if reading.done {
                return Poll::Ready(None);
            }
            this.reading.start(|mut reading| {
                Box::pin(async move {
                    let Reading {
                        inner, core, rows, ..
                    } = &mut reading;
                    let fetched = core.next_rows(&inner.shared, rows).await;
                    (reading, fetched)
                })
            });
        }
    }
}

impl fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::RowStream")
            .field("fetching", &self.reading.is_busy())
            .field("rows_affected", &self.rows_affected)
            .finish_non_exhaustive()
    }
}
