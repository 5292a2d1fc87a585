//! Rows fetched a batch at a time: [`Portal`], bound by `bind` inside a
//! transaction and read by `query_portal`.

use std::fmt;

/// A query bound to its parameters inside a transaction, whose rows are
/// fetched a batch at a time with `query_portal` (on [`Tx`](crate::Tx)
/// and [`Savepoint`](crate::Savepoint)): the way to stop early after a
/// few rows of a large result, which [`RowIter`](crate::RowIter) would
/// read to the end.
///
/// A portal is a server-side cursor (`DECLARE … NO SCROLL CURSOR`), so it
/// exists only inside the transaction that bound it: it ends with that
/// transaction (`query_portal` afterwards returns
/// [`Error::PortalClosed`](crate::Error::PortalClosed) without sending
/// anything), and a savepoint rolled back closes the portals bound inside
/// it (the server then refuses to fetch from them, which aborts the
/// transaction as any failed statement does).
///
/// # Examples
///
/// ```no_run
/// # fn main() -> pgtx::Result<()> {
/// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut tx = manager.lock()?.begin()?;
/// let portal = tx.bind("SELECT n FROM generate_series(1, $1) n", &[&1_000_000_i32])?;
/// let first = tx.query_portal(&portal, 100)?;
/// let next = tx.query_portal(&portal, 100)?;
/// assert_eq!((first.len(), next.len()), (100, 100));
/// tx.commit()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Portal {
    /// The transaction it was bound in, as the session numbers them.
    transaction: u64,
    /// The cursor's name: its number in that transaction, so that the
    /// same statements come back in every transaction (and their prepared
    /// forms are reused).
    name: String,
}

impl Portal {
    pub(crate) fn new(transaction: u64, number: u32) -> Portal {
        Portal {
            transaction,
            name: format!("pgtx_portal_{number}"),
        }
    }

    pub(crate) fn transaction(&self) -> u64 {
        self.transaction
    }

    /// The statement that declares it for `query`.
    pub(crate) fn declare_sql(&self, query: &str) -> String {
        format!("DECLARE {} NO SCROLL CURSOR FOR {query}", self.name)
    }

    /// The statement that fetches its next `max_rows` rows (all that are
    /// left when `max_rows` is 0 or less).
    pub(crate) fn fetch_sql(&self, max_rows: i32) -> String {
        if max_rows > 0 {
            format!("FETCH FORWARD {max_rows} FROM {}", self.name)
        } else {
            format!("FETCH FORWARD ALL FROM {}", self.name)
        }
    }

    /// The name of the cursor on the server (`pgtx_portal_1`, …): SQL can
    /// use it too (`MOVE`, `FETCH BACKWARD` is refused: the cursor is
    /// `NO SCROLL`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Portal").field("name", &self.name).finish()
    }
}
