//! How a transaction begins: isolation level, read only, deferrable.

use std::borrow::Cow;

pub use postgres::IsolationLevel;

/// Options for the `BEGIN` that opens a transaction.
///
/// The default is PostgreSQL's default: the session's isolation level
/// (normally `READ COMMITTED`), read-write, not deferrable.
///
/// ```
/// use pgtx::{IsolationLevel, TxOptions};
///
/// let options = TxOptions::new()
///     .isolation(IsolationLevel::Serializable)
///     .read_only(true)
///     .deferrable(true);
/// assert_eq!(
///     options.begin_statement(),
///     "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
/// );
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TxOptions {
    isolation: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl TxOptions {
    /// PostgreSQL's defaults; the same as [`TxOptions::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the isolation level.
    #[must_use]
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Makes the transaction `READ ONLY` (`true`) or `READ WRITE` (`false`).
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// Makes the transaction `DEFERRABLE` (`true`) or `NOT DEFERRABLE` (`false`).
    ///
    /// PostgreSQL only honours it for serializable, read-only transactions.
    #[must_use]
    pub fn deferrable(mut self, deferrable: bool) -> Self {
        self.deferrable = Some(deferrable);
        self
    }

    /// The `BEGIN` statement these options send.
    pub fn begin_statement(&self) -> String {
        self.begin_sql().into_owned()
    }

    /// The `BEGIN` statement, without allocating for the default one.
    pub(crate) fn begin_sql(&self) -> Cow<'static, str> {
        let mut modes = Vec::with_capacity(3);
        if let Some(level) = self.isolation {
            modes.push(match level {
                IsolationLevel::ReadUncommitted => "ISOLATION LEVEL READ UNCOMMITTED",
                IsolationLevel::ReadCommitted => "ISOLATION LEVEL READ COMMITTED",
                IsolationLevel::RepeatableRead => "ISOLATION LEVEL REPEATABLE READ",
                IsolationLevel::Serializable => "ISOLATION LEVEL SERIALIZABLE",
                // `IsolationLevel` is non-exhaustive; the strictest level is the safe
                // reading of any level added later.
                _ => "ISOLATION LEVEL SERIALIZABLE",
            });
        }
        if let Some(read_only) = self.read_only {
            modes.push(if read_only { "READ ONLY" } else { "READ WRITE" });
        }
        if let Some(deferrable) = self.deferrable {
            modes.push(if deferrable {
                "DEFERRABLE"
            } else {
                "NOT DEFERRABLE"
            });
        }
        if modes.is_empty() {
            Cow::Borrowed("BEGIN")
        } else {
            Cow::Owned(format!("BEGIN {}", modes.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_send_a_plain_begin() {
        assert_eq!(TxOptions::new().begin_statement(), "BEGIN");
    }

    #[test]
    fn each_option_appears_once_in_order() {
        let options = TxOptions::new()
            .deferrable(false)
            .read_only(false)
            .isolation(IsolationLevel::RepeatableRead);
        assert_eq!(
            options.begin_statement(),
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ WRITE, NOT DEFERRABLE"
        );
    }
}
