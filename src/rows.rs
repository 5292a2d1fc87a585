//! Rows read one at a time: [`RowIter`], from `query_raw`.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;

use crate::Row;
use crate::blocking::held::Conn;
use crate::blocking::session::Fetched;
use crate::blocking::session::LockedSession;
use crate::error::{Error, Result};
use crate::statements::ToStatement;
use crate::types::ToSql;

/// The rows of a statement begun by `query_raw` (on [`Guard`](crate::Guard),
/// [`Tx`](crate::Tx) or [`Savepoint`](crate::Savepoint)), read from the
/// server as they are asked for: memory stays bounded however many rows
/// there are (the rows that have arrived are read together, at most 1024
/// at a time).
///
/// It borrows its holder: no other statement runs on the connection until
/// it is done. Dropped before its end, the rest of the rows is read and
/// dropped (the statement itself ran to its end on the server: inside a
/// transaction, it goes on as usual). A `RowIter` that is forgotten
/// (`mem::forget`) is ended the same way by whatever uses the connection
/// next. To stop early without reading the rest, fetch rows in batches
/// from a cursor (`DECLARE … CURSOR`, `FETCH 1000 FROM …`) inside a
/// transaction.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> pgtx::Result<()> {
/// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut guard = manager.lock()?;
/// let mut total = 0_i64;
/// for row in guard.query_raw("SELECT n FROM generate_series(1, 10000000) n", &[])? {
///     total += row?.get::<_, i32>(0) as i64;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "rows are read by iterating; dropped, the rest is read and thrown away"]
pub struct RowIter<'a> {
    rows: Fetching<'a, Row>,
}

/// What a reader of a stream keeps: the items read from the server and not
/// yet handed out, read a batch at a time; the stream's error, handed out
/// after the items before it; whether the stream ended. Shared by the
/// readers of rows and of binary COPY rows.
pub(crate) struct Fetching<'a, T> {
    conn: Conn<'a>,
    items: VecDeque<T>,
    failure: Option<Error>,
    done: bool,
    rows_affected: Option<u64>,
    /// Borrows the holder exclusively, and is no more `Send` than it.
    _holder: PhantomData<(&'a mut (), *const ())>,
}

impl<'a, T> Fetching<'a, T> {
    pub(crate) fn new(conn: Conn<'a>) -> Fetching<'a, T> {
        Fetching {
            conn,
            items: VecDeque::new(),
            failure: None,
            done: false,
            rows_affected: None,
            _holder: PhantomData,
        }
    }

    /// The next item, fetching what has arrived with `fetch` (one turn:
    /// at least one item, or the end) when none is left.
    pub(crate) fn next(
        &mut self,
        fetch: impl Fn(&mut LockedSession<'_>, &mut VecDeque<T>) -> Result<Fetched>,
    ) -> Option<Result<T>> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(Ok(item));
            }
            if let Some(failure) = self.failure.take() {
                return Some(Err(failure));
            }
            if self.done {
                return None;
            }
            let items = &mut self.items;
            match self.conn.with_stream(|s| fetch(s, items)) {
                Ok(Fetched::More) => {}
                Ok(Fetched::End(affected)) => {
                    self.done = true;
                    self.rows_affected = affected;
                }
                Err(e) => {
                    self.done = true;
                    self.failure = Some(e);
                }
            }
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.done
    }
}

impl<T> Drop for Fetching<'_, T> {
    /// A reader dropped before the end: the rest is read and dropped.
    fn drop(&mut self) {
        if !self.done {
            self.conn.end_stream();
        }
    }
}

static_assertions::assert_not_impl_any!(RowIter<'static>: Send, Sync);

impl<'a> RowIter<'a> {
    /// Starts `query` on `conn` and reads its rows as they arrive.
    pub(crate) fn start<T>(
        conn: Conn<'a>,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<RowIter<'a>>
    where
        T: ?Sized + ToStatement,
    {
        conn.query_raw(query, params)?;
        Ok(RowIter {
            rows: Fetching::new(conn),
        })
    }

    /// The number of rows the statement affected (for `INSERT … RETURNING`
    /// and the like: the rows inserted), once every row has been read;
    /// `None` before that.
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows.rows_affected
    }
}

impl Iterator for RowIter<'_> {
    type Item = Result<Row>;

    /// The next row, or the statement's error (then the iterator ends:
    /// inside a transaction, the transaction is aborted, as by any failed
    /// statement).
    fn next(&mut self) -> Option<Result<Row>> {
        self.rows.next(|s, rows| s.next_rows(rows))
    }
}

impl fmt::Debug for RowIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowIter")
            .field("done", &self.rows.done)
            .field("rows_affected", &self.rows.rows_affected)
            .finish_non_exhaustive()
    }
}
