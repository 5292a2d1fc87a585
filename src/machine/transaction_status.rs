//! What the shared connection is doing, readable without taking the lock.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// The transaction status of a managed connection, as libpq's
/// `PQtransactionStatus` and psycopg2's `TRANSACTION_STATUS_*` report it.
///
/// Read it with [`ManagedConnection::status`](crate::ManagedConnection::status)
/// from any thread, without waiting for the connection's holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransactionStatus {
    /// There is no connection: never opened yet, closed, or dropped after a failure.
    /// It is opened again by the next holder.
    Closed,
    /// Connected, and no transaction is open (`PQTRANS_IDLE`).
    Idle,
    /// A statement is in flight (`PQTRANS_ACTIVE`).
    Active,
    /// Inside a transaction block, waiting for the next statement (`PQTRANS_INTRANS`).
    InTransaction,
    /// Inside a transaction block that the server has aborted after an error:
    /// only a rollback can follow (`PQTRANS_INERROR`).
    InError,
    /// The connection broke; nothing is known until the next holder reconnects
    /// (`PQTRANS_UNKNOWN`).
    Unknown,
}

impl TransactionStatus {
    const ALL: [TransactionStatus; 6] = [
        TransactionStatus::Closed,
        TransactionStatus::Idle,
        TransactionStatus::Active,
        TransactionStatus::InTransaction,
        TransactionStatus::InError,
        TransactionStatus::Unknown,
    ];
}

impl fmt::Display for TransactionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransactionStatus::Closed => "closed",
            TransactionStatus::Idle => "idle",
            TransactionStatus::Active => "active",
            TransactionStatus::InTransaction => "in transaction",
            TransactionStatus::InError => "in failed transaction",
            TransactionStatus::Unknown => "unknown",
        })
    }
}

/// The server's transaction status, from its last ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block (only `ROLLBACK` is accepted).
    Failed,
}

/// A [`TransactionStatus`] that one thread writes while it holds the
/// connection and any thread reads.
#[derive(Debug)]
pub(crate) struct StatusCell(AtomicU8);

impl StatusCell {
    pub(crate) fn new() -> Self {
        StatusCell(AtomicU8::new(TransactionStatus::Closed as u8))
    }

    pub(crate) fn get(&self) -> TransactionStatus {
        let raw = usize::from(self.0.load(Ordering::Acquire));
        TransactionStatus::ALL
            .get(raw)
            .copied()
            .unwrap_or(TransactionStatus::Unknown)
    }

    pub(crate) fn set(&self, status: TransactionStatus) {
        self.0.store(status as u8, Ordering::Release);
    }
}

impl Default for StatusCell {
    /// [`TransactionStatus::Closed`]: nothing is opened yet.
    fn default() -> Self {
        StatusCell::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_the_cell() {
        let cell = StatusCell::new();
        assert_eq!(cell.get(), TransactionStatus::Closed);
        for status in TransactionStatus::ALL {
            cell.set(status);
            assert_eq!(cell.get(), status);
        }
    }
}
