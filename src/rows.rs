//! Rows read one at a time: [`RowIter`], from `query_raw`.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;

use crate::Row;
use crate::blocking::held::Conn;
use crate::blocking::session::Fetched;
use crate::error::{Error, Result};

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
    conn: Conn<'a>,
    /// Rows read from the server and not yet handed out.
    rows: VecDeque<Row>,
    /// The statement's error, handed out after the rows before it.
    failure: Option<Error>,
    /// The statement ended (or failed): nothing more to read.
    done: bool,
    rows_affected: Option<u64>,
    /// Borrows the holder exclusively, and is no more `Send` than it.
    _holder: PhantomData<(&'a mut (), *const ())>,
}

static_assertions::assert_not_impl_any!(RowIter<'static>: Send, Sync);

impl<'a> RowIter<'a> {
    pub(crate) fn new(conn: Conn<'a>) -> RowIter<'a> {
        RowIter {
            conn,
            rows: VecDeque::new(),
            failure: None,
            done: false,
            rows_affected: None,
            _holder: PhantomData,
        }
    }

    /// The number of rows the statement affected (for `INSERT … RETURNING`
    /// and the like: the rows inserted), once every row has been read;
    /// `None` before that.
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows_affected
    }
}

impl Iterator for RowIter<'_> {
    type Item = Result<Row>;

    /// The next row, or the statement's error (then the iterator ends:
    /// inside a transaction, the transaction is aborted, as by any failed
    /// statement).
    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(row) = self.rows.pop_front() {
                return Some(Ok(row));
            }
            if let Some(failure) = self.failure.take() {
                return Some(Err(failure));
            }
            if self.done {
                return None;
            }
            // What has arrived, in one turn (at least one row, or the end).
            match self.conn.with_stream(|s| s.next_rows(&mut self.rows)) {
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
}

impl Drop for RowIter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.end_stream();
        }
    }
}

impl fmt::Debug for RowIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowIter")
            .field("done", &self.done)
            .field("rows_affected", &self.rows_affected)
            .finish_non_exhaustive()
    }
}
