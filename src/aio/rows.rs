//! Rows read as they arrive on the async front: [`RowStream`], from
//! `query_raw`.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::Stream;

use crate::Row;
use crate::aio::handoff::Handoff;
use crate::aio::session::Inner;
use crate::binary_copy::BinaryCopyOutRow;
use crate::conn::session::{SessionCore, SessionShared};
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
    rows: Fetching<'h, Row>,
}

static_assertions::assert_impl_all!(RowStream<'static>: Send, Unpin);

impl<'h> RowStream<'h> {
    /// The stream of the query the core has just started.
    pub(crate) fn new(inner: &'h Inner, core: &'h mut SessionCore) -> RowStream<'h> {
        RowStream {
            rows: Fetching::new(inner, core),
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
        poll_fn(|cx| self.rows.poll_item(cx)).await.transpose()
    }

    /// How many rows the statement affected or returned, once its last
    /// row has been read (`None` before then, or if the server did not
    /// say).
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows.rows_affected
    }
}

impl Stream for RowStream<'_> {
    type Item = Result<Row>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Row>>> {
        self.get_mut().rows.poll_item(cx)
    }
}

/// What a stream of items fetches a batch of at a time from the core.
pub(crate) trait Fetch: Sized + Send + 'static {
    /// Appends the items that have arrived (at least one, unless the
    /// stream ended) to `out`.
    fn fetch<'a>(
        core: &'a mut SessionCore,
        shared: &'a SessionShared,
        out: &'a mut VecDeque<Self>,
    ) -> impl Future<Output = Result<Fetched>> + Send + 'a;
}

impl Fetch for Row {
    fn fetch<'a>(
        core: &'a mut SessionCore,
        shared: &'a SessionShared,
        out: &'a mut VecDeque<Row>,
    ) -> impl Future<Output = Result<Fetched>> + Send + 'a {
        core.next_rows(shared, out)
    }
}

impl Fetch for BinaryCopyOutRow {
    fn fetch<'a>(
        core: &'a mut SessionCore,
        shared: &'a SessionShared,
        out: &'a mut VecDeque<BinaryCopyOutRow>,
    ) -> impl Future<Output = Result<Fetched>> + Send + 'a {
        core.next_binary_rows(shared, out)
    }
}

/// Items read from an open stream a batch at a time, handed out one by
/// one: the one implementation behind [`RowStream`] and the async binary
/// COPY reader.
pub(crate) struct Fetching<'h, T> {
    reading: Handoff<'h, Reading<'h, T>, Result<Fetched>>,
    rows_affected: Option<u64>,
}

/// The handle's session, and the items fetched and not yet handed out.
struct Reading<'h, T> {
    inner: &'h Inner,
    core: &'h mut SessionCore,
    items: VecDeque<T>,
    failure: Option<Error>,
    done: bool,
}

impl<'h, T: Fetch> Fetching<'h, T> {
    pub(crate) fn new(inner: &'h Inner, core: &'h mut SessionCore) -> Fetching<'h, T> {
        Fetching {
            reading: Handoff::new(Reading {
                inner,
                core,
                items: VecDeque::new(),
                failure: None,
                done: false,
            }),
            rows_affected: None,
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.reading.is_busy()
    }

    /// The next item, fetching a batch when none is left.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        loop {
            let fetched = ready!(self.reading.poll_busy(cx));
            let Some(reading) = self.reading.idle() else {
                return Poll::Ready(None);
            };
            match fetched {
                None | Some(Ok(Fetched::More)) => {}
                Some(Ok(Fetched::End(affected))) => {
                    reading.done = true;
                    self.rows_affected = affected;
                }
                Some(Err(e)) => {
                    reading.done = true;
                    reading.failure = Some(e);
                }
            }
            if let Some(item) = reading.items.pop_front() {
                return Poll::Ready(Some(Ok(item)));
            }
            if let Some(failure) = reading.failure.take() {
                return Poll::Ready(Some(Err(failure)));
            }
            if reading.done {
                return Poll::Ready(None);
            }
            self.reading.start(|mut reading| {
                Box::pin(async move {
                    let Reading {
                        inner, core, items, ..
                    } = &mut reading;
                    let fetched = T::fetch(core, &inner.shared, items).await;
                    (reading, fetched)
                })
            });
        }
    }
}

impl fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::RowStream")
            .field("fetching", &self.rows.is_busy())
            .field("rows_affected", &self.rows.rows_affected)
            .finish_non_exhaustive()
    }
}
