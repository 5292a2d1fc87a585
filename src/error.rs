//! The one error type of this crate.

use std::sync::Arc;
use std::time::Duration;

use postgres::error::{DbError, SqlState};

use crate::config::SettingsError;

/// The documented report of a transaction that was neither committed nor
/// rolled back, word for word the message psycopg2-managed-connection raises.
pub const UNFINISHED_TRANSACTION: &str =
    "Did not commit or rollback open transaction before releasing connection.";

/// What a hook ([`Builder::on_connect`](crate::Builder::on_connect),
/// [`Builder::on_reconnect`](crate::Builder::on_reconnect)) may fail with:
/// any error, boxed. A hook's failure is returned as [`Error::OnConnect`].
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, named after what the caller experienced.
///
/// Each variant says what holds afterwards; in every case the lock on the
/// connection has been released or is still held exactly as the method's
/// `# Errors` section says, and no transaction is left open for another
/// thread.
///
/// # Message and source
///
/// Each thing is said once, as Rust's convention asks: an error either
/// words its cause in its own message or returns it from
/// [`source`](std::error::Error::source), never both, so that printing the
/// whole chain (each `source()` after the message, joined by `": "`, as
/// `anyhow`'s `{:#}` does) repeats nothing.
///
/// - **The message is complete, and there is no source**, where the cause
///   is the server's or the network's own report, which pgtx words itself:
///   [`Error::Connect`] (libpq's lines), [`Error::Db`] (the server's
///   message and SQLSTATE, or the client-side failure with its causes),
///   [`Error::TransactionAborted`], [`Error::RetriesExhausted`],
///   [`Error::Settings`], [`Error::ConnectionDead`]. The inner error is in
///   the variant's field and behind [`Error::as_db_error`].
/// - **The message says what happened to the transaction or the
///   connection, and `source()` is the cause**, not repeated in the
///   message: [`Error::ConnectionLost`], [`Error::CommitOutcomeUnknown`],
///   [`Error::Cancelled`], [`Error::CancelFailed`], [`Error::Runtime`],
///   [`Error::OnConnect`], [`Error::VoteFailed`], [`Error::InDoubt`],
///   [`Error::NotifyFailed`], [`Error::ReconnectFailed`]. `to_string()`
///   alone shows only the first part: print the chain to see why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection settings could not be read. Nothing was connected.
    /// (The detail is in the message, so it is not repeated as a source.)
    #[error("invalid connection settings: {0}")]
    Settings(SettingsError),

    /// Connecting (or reconnecting) to the server failed: no server that was
    /// tried accepted the connection. The lock has been released; the next
    /// holder tries again.
    ///
    /// The message lists every attempt, one line each, in libpq's words
    /// (see [`ConnectError`]), each with its reason, so there is no source;
    /// [`Error::as_db_error`] finds the server's reason (such as 28P01 for
    /// a wrong password) and [`ConnectError::last_cause`] the last
    /// attempt's error.
    #[error(transparent)]
    Connect(ConnectError),

    /// The connection broke while a statement was in flight, or before it
    /// could be sent. A transaction that was open is not committed (the server
    /// rolls back a transaction whose session ends); the next holder reconnects.
    #[error("the connection to the server was lost")]
    ConnectionLost(#[source] Option<postgres::Error>),

    /// The connection broke while `COMMIT` was in flight: the server may or
    /// may not have committed, and nobody can tell from this side. Check the
    /// data (for example with an idempotency key) before retrying.
    #[error("the connection was lost during COMMIT: the transaction may or may not have committed")]
    CommitOutcomeUnknown(#[source] Option<postgres::Error>),

    /// `commit` was called after a statement in the transaction had failed
    /// (or a statement after its `BEGIN` was refused). The server had
    /// aborted the transaction, so it was rolled back and nothing it did was
    /// saved. Carries the first error the server reported, which the
    /// message shows (so it is not also the source).
    ///
    /// [`Savepoint::release`](crate::Savepoint::release) returns it too when
    /// a statement inside the savepoint had failed: then only the
    /// savepoint's work was rolled back, and the transaction goes on.
    #[error("the transaction was aborted by an earlier error and has been rolled back{}", first_error(.0))]
    TransactionAborted(Option<Box<DbError>>),

    /// Statement `index` of a [`Pipeline`](crate::Pipeline) (0 for the
    /// first) failed, or was refused before anything was sent (`source`
    /// says which: the server's error, a refusal such as
    /// [`Error::TransactionControl`], or parameters that did not encode);
    /// the `skipped` statements after it did not run. The transaction is
    /// aborted: run by `commit_pipeline`, nothing was committed and the
    /// connection is idle; run by `run_pipeline`, the transaction can only
    /// roll back. [`code`](Error::code) and
    /// [`as_db_error`](Error::as_db_error) read `source`.
    #[error("statement {index} of the pipeline failed ({skipped} after it skipped): {source}")]
    PipelineFailed {
        /// The failed statement's place in the pipeline.
        index: usize,
        /// How many statements after it did not run.
        skipped: usize,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// SQL given to a [`Tx`](crate::Tx) or [`Savepoint`](crate::Savepoint)
    /// would end or restart the transaction behind pgtx's back (`COMMIT`,
    /// `ROLLBACK`, `BEGIN`, `END`, `ABORT`, `START TRANSACTION`,
    /// `PREPARE TRANSACTION`, `COMMIT/ROLLBACK PREPARED`), or a statement
    /// [`prepare`](crate::Guard::prepare)d anywhere is one. Nothing of it
    /// was sent; the transaction is as it was. End a transaction with
    /// [`Tx::commit`](crate::Tx::commit) or [`Tx::rollback`](crate::Tx::rollback),
    /// and use [`Tx::savepoint`](crate::Tx::savepoint) for partial rollbacks
    /// (`SAVEPOINT`, `RELEASE` and `ROLLBACK TO` in SQL work too).
    #[error(
        "transaction control is not allowed here: {0}; end the transaction with commit() or rollback()"
    )]
    TransactionControl(String),

    /// A pipeline run by `commit_pipeline` committed (the server said so),
    /// but the result of statement `index` could not be read (`source`: a
    /// type of its columns could not be looked up, say): the transaction
    /// is committed, whatever its results.
    #[error(
        "the pipeline committed, but the result of statement {index} could not be read: {source}"
    )]
    PipelineResultsLost {
        /// The statement whose result was lost.
        index: usize,
        /// Why it could not be read.
        #[source]
        source: Box<Error>,
    },

    /// A statement queued in a [`Pipeline`](crate::Pipeline) cannot be
    /// part of one: the server refuses it inside a transaction block
    /// (`VACUUM`, `CREATE DATABASE`, `CREATE INDEX CONCURRENTLY`, …), where
    /// a pipeline always runs, or it moves `COPY` data, which a pipeline
    /// cannot carry. Found before anything was sent.
    #[error(
        "{0} cannot be part of a pipeline: a pipeline runs inside a transaction block, \
         where the server cannot run it (or carry COPY data); nothing was sent"
    )]
    NotInPipeline(&'static str),

    /// The connection was asked for (`lock`, `try_lock`, `lock_timeout`,
    /// `transaction`, `close`) by a thread that already holds it: a
    /// [`Guard`](crate::Guard) or [`Tx`](crate::Tx) it has not released
    /// (on a [`Pool`](crate::Pool): one of its connections, when none is
    /// free). Waiting would deadlock, and the earlier hold may well be
    /// alive (a helper called with a guard in scope), so the request is
    /// refused at once; the earlier holder and its transaction are
    /// untouched. Pass its `Tx` or `Guard` down instead, or release it
    /// first.
    ///
    /// A hold that was really forgotten (`mem::forget`) is taken over
    /// (its transaction rolled back and reported) once it has run nothing
    /// for [`Builder::abandon_after`](crate::Builder::abandon_after), by
    /// this thread or another, or at once by another thread after its own
    /// thread exits. Inside a
    /// [`transaction`](crate::ManagedConnection::transaction) closure the
    /// hold is provably alive and is never taken over this way.
    #[error(
        "this thread already holds the connection (a Guard or Tx not released yet); pass it down or \
         release it instead of asking again (a forgotten hold is taken over after abandon_after, \
         or once its thread exits)"
    )]
    Reentrant,

    /// A binary COPY reader or writer was made from a
    /// [`CopyOutReader`](crate::CopyOutReader) or
    /// [`CopyInWriter`](crate::CopyInWriter) that had already read or
    /// written data: the binary format starts with a header that must be
    /// the first thing read or written. Nothing was sent; the COPY goes on
    /// as it was.
    #[error(
        "a binary COPY reader or writer needs a fresh CopyOutReader or CopyInWriter (nothing read \
         or written yet)"
    )]
    CopyAlreadyUsed,

    /// `copy_in` was given SQL text that is not a `COPY … FROM STDIN`, or
    /// `copy_out` text that is not a `COPY … TO STDOUT` (another
    /// statement, the other direction, a file or a program). Nothing was
    /// sent.
    #[error(
        "{} runs {} only (statement: {statement}); nothing was sent",
        if *.from_stdin { "copy_in()" } else { "copy_out()" },
        if *.from_stdin { "COPY … FROM STDIN" } else { "COPY … TO STDOUT" }
    )]
    NotACopy {
        /// The statement, cut to its first 100 characters.
        statement: String,
        /// Whether `copy_in` (`FROM STDIN`) was asked for.
        from_stdin: bool,
    },

    /// A [`CopyInWriter`](crate::CopyInWriter) (or binary writer) was
    /// used after its COPY ended: it failed (the error was returned then)
    /// or its connection was lost. Nothing was sent.
    #[error("the COPY has ended (it failed or was finished); nothing was sent")]
    StreamEnded,

    /// A binary COPY writer was given a row with `got` values for a COPY
    /// of `expected` columns. Nothing of the row was sent; the COPY goes
    /// on.
    #[error("a binary COPY row needs {expected} values (one per type given), got {got}")]
    WrongRowLength {
        /// The number of column types the writer was made with.
        expected: usize,
        /// The number of values given.
        got: usize,
    },

    /// A value given to a binary COPY writer cannot be encoded as its
    /// column's type (the type the writer was made with for `column`,
    /// counted from 0). Nothing of the row was sent; the COPY goes on.
    #[error("value {column} of a binary COPY row cannot be written as its column's type")]
    CopyValue {
        /// The value's position in the row, from 0.
        column: usize,
        /// Why it cannot be encoded.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A [`Portal`](crate::Portal) was used outside the transaction it
    /// was bound in: a portal ends with its transaction. Nothing was sent.
    #[error(
        "the portal was bound in another transaction (a portal ends with the transaction it was \
         bound in); nothing was sent"
    )]
    PortalClosed,

    /// A transaction was released without `commit` or `rollback`; it has been
    /// rolled back. Its message is exactly [`UNFINISHED_TRANSACTION`].
    ///
    /// Returned by [`Guard::release`](crate::Guard::release) when SQL run
    /// through the guard left a transaction block open. Where there is no
    /// return path (a `Tx` dropped, unwound or forgotten, a guard dropped),
    /// the same report goes to the `log` crate and the
    /// [`unfinished_transactions`](crate::ManagedConnection::unfinished_transactions)
    /// counter instead.
    #[error("{}", UNFINISHED_TRANSACTION)]
    UnfinishedTransaction,

    /// This guard or transaction no longer holds the connection: another
    /// acquirer found it abandoned (left on an exited thread, or idle past
    /// [`Builder::abandon_after`](crate::Builder::abandon_after): forgotten)
    /// and took it over, rolling back whatever was open. Nothing it did
    /// after that point reached the server.
    #[error(
        "the connection was taken over because this holder looked abandoned; its transaction was rolled back"
    )]
    LeaseRevoked,

    /// [`prepare`](crate::Guard::prepare) was called on a manager built
    /// with [`statement_cache(false)`](crate::Builder::statement_cache):
    /// it makes no named prepared statements, which a transaction pooler
    /// (PgBouncer, Supavisor) does not carry from one server connection to
    /// the next. Nothing was sent; a transaction is as it was. Pass the SQL
    /// text to the statement methods instead.
    #[error(
        "prepare() is not available with statement_cache(false) (named statements do not survive a transaction pooler); pass the SQL text instead"
    )]
    PreparedStatementsOff,

    /// A statement whose rows take their shape only when it runs (`FETCH`
    /// from a cursor, `EXECUTE` of a statement prepared in SQL, `CALL`)
    /// was given to [`prepare`](crate::Guard::prepare). A prepared
    /// statement keeps the row description it was prepared with, and the
    /// server does not check it again for these, so a later run could
    /// decode another shape's bytes as the old columns' types: wrong data
    /// with no error. Nothing was sent; a transaction is as it was. Pass
    /// the SQL text to the statement methods instead: pgtx describes such
    /// text each time it runs (in the same round trip).
    #[error(
        "{0} cannot be prepared: its rows take their shape only when it runs; pass the SQL text instead"
    )]
    ShapeDecidedAtRunTime(&'static str),

    /// `COPY … FROM STDIN` or `COPY … TO STDOUT` was given to
    /// [`prepare`](crate::Guard::prepare): a prepared `COPY` could reach a
    /// statement method or a [`Pipeline`](crate::Pipeline), which cannot
    /// carry its data, where pgtx cannot see it is one. Pass its text to
    /// `copy_in` / `copy_out` (prepared once per connection all the same).
    /// Nothing was sent; a transaction is as it was.
    #[error("COPY cannot be prepared: pass its text to copy_in or copy_out")]
    CopyNotPreparable,

    /// A `COPY … FROM STDIN` or `COPY … TO STDOUT` reached the server
    /// through a statement method (`execute`, `query`, `batch_execute`, …),
    /// which carries rows and row counts, not copy data: COPY data goes
    /// through `copy_in` and `copy_out` (on [`Guard`](crate::Guard),
    /// [`Tx`](crate::Tx) and [`Savepoint`](crate::Savepoint)).
    ///
    /// `FROM STDIN`: pgtx answered the server's request for data with
    /// CopyFail, so nothing was copied, nothing after it in the same text
    /// ran, and a transaction it ran in is aborted, as after any failed
    /// statement (its `commit` reports [`Error::TransactionAborted`]).
    /// `TO STDOUT`: the `COPY` ran (with whatever it does, such as a
    /// `DELETE … RETURNING` inside it, and with any statements after it in
    /// the same text), and its output was read and dropped; a transaction
    /// goes on. Either way the connection is ready for the next statement.
    #[error(
        "{} cannot run through a statement method (statement: {statement}){}",
        if *.from_stdin { "COPY FROM STDIN" } else { "COPY TO STDOUT" },
        if *.from_stdin {
            ": nothing was copied, and a transaction it ran in is aborted; send COPY data with \
             copy_in()"
        } else {
            ": it ran (with any statements after it in the same text), and its output was dropped; \
             read COPY data with copy_out()"
        }
    )]
    CopyRefused {
        /// The statement, as given (its first 100 characters), or
        /// `"a prepared statement"`.
        statement: String,
        /// `COPY … FROM STDIN` (`true`) or `COPY … TO STDOUT` (`false`).
        from_stdin: bool,
    },

    /// The connection was not free within the time given. Nothing was done.
    #[error("timed out after {0:?} waiting for the connection")]
    LockTimeout(Duration),

    /// The connection was held by someone else and a non-blocking attempt was
    /// made. Nothing was done.
    #[error("the connection is held by another thread")]
    WouldBlock,

    /// A statement failed: on the server (see [`Error::as_db_error`]) or on
    /// this side (a parameter or column type mismatch, an unexpected row
    /// count). Inside a transaction a server error aborts it: only
    /// [`Tx::rollback`](crate::Tx::rollback) can follow, and
    /// [`Tx::commit`](crate::Tx::commit) reports [`Error::TransactionAborted`].
    ///
    /// The message is the server's (`ERROR: relation "t" does not exist
    /// (SQLSTATE 42P01)`), or the client-side failure followed by its
    /// causes; the `postgres::Error` is the field, not the source.
    #[error("{}", describe(.0))]
    Db(postgres::Error),

    /// A [`TwoPhase`](crate::TwoPhase) transaction failed before its
    /// decision, at the [`VoteStep`] `step`: a
    /// voter could not vote yes (its work had failed, its
    /// `PREPARE TRANSACTION` was refused: `max_prepared_transactions = 0`;
    /// `NOTIFY`, `LISTEN` or a temporary table used in it; or its
    /// connection broke), or the decider could not record or commit the
    /// decision (its work had failed, a deferred constraint, its
    /// connection taken over). Every participant was rolled back; nothing
    /// was committed anywhere.
    #[error("{}", describe_vote(.participant, *.step, .source))]
    VoteFailed {
        /// The participant, as its settings show it (no password).
        participant: String,
        /// What it failed at (the message says it too).
        step: VoteStep,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// A [`TwoPhase`](crate::TwoPhase) transaction is not finished on every
    /// participant. Never a rollback: the decision to commit was made
    /// (`decided`), or its outcome is unknown because the connection broke
    /// while the decision was committed. The participants listed as
    /// `in_doubt` are not known to have committed: as a rule they are
    /// still prepared on their servers, holding their locks, until
    /// [`Recovery`](crate::two_phase::Recovery) (or a retry) finishes them
    /// as the decision says; one whose prepared transaction someone else
    /// finished is in doubt too, with
    /// [`Error::PreparedTransactionGone`] as the `source`.
    #[error("{}", describe_in_doubt(*.decided, .committed, .in_doubt, .unsent_notifications))]
    InDoubt {
        /// Whether the decision to commit is known to have been made.
        decided: bool,
        /// The participants that committed.
        committed: Vec<String>,
        /// The participants not known to have committed (still prepared,
        /// or finished by someone else).
        in_doubt: Vec<String>,
        /// The notifications given with
        /// [`notify`](crate::TwoPhase::notify) (`(channel, payload)`), none
        /// of which was sent: pgtx sends them only once every participant
        /// has committed. Send them once recovery has finished the
        /// transaction, if it committed. Empty when there were none.
        unsent_notifications: Vec<(String, String)>,
        /// The last failure.
        #[source]
        source: Box<Error>,
    },

    /// After the decision to commit, a participant's prepared transaction
    /// was no longer there when its `COMMIT PREPARED` came: someone else
    /// finished it (an earlier attempt whose answer was lost, a
    /// [`Recovery`](crate::two_phase::Recovery), an operator's
    /// `ROLLBACK PREPARED`), and the server could not confirm that it
    /// committed. It is the `source` of an [`Error::InDoubt`] that lists the
    /// participant in doubt; pgtx never takes it as committed.
    #[error("{}", describe_gone(.participant, .gid, *.rolled_back))]
    PreparedTransactionGone {
        /// The participant, as its settings show it (no password).
        participant: String,
        /// The gid of its prepared transaction.
        gid: String,
        /// Whether the server says the transaction was rolled back (its
        /// work is lost, so the distributed transaction committed only
        /// partly); `false` when the server could not tell (its
        /// transaction id was never learned, or is too old).
        rolled_back: bool,
    },

    /// The transaction committed, but a `NOTIFY` meant to follow it could
    /// not be sent. The data is committed; only the notification is missing.
    #[error("the transaction committed, but NOTIFY on channel {channel:?} failed")]
    NotifyFailed {
        /// The channel of the notification that was not sent.
        channel: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// A [`ParticipantId`](crate::two_phase::ParticipantId) was given to a
    /// [`TwoPhase`](crate::TwoPhase) transaction it does not belong to.
    /// Nothing was done.
    #[error("that participant does not belong to this distributed transaction")]
    InvalidParticipant,

    /// A notification or channel name was refused before anything was sent:
    /// an empty channel name or one longer than 63 bytes (PostgreSQL would
    /// truncate it in `LISTEN` and `pg_notify` refuses it), a payload of
    /// 8000 bytes or more, a NUL byte. Returned when a notification is added
    /// to a [`TwoPhase`](crate::TwoPhase) (the transaction is as it was),
    /// and by [`Listener::listen`](crate::Listener::listen),
    /// [`unlisten`](crate::Listener::unlisten) and
    /// [`notify`](crate::Listener::notify) (the listener is as it was).
    #[error("invalid notification: {0}")]
    InvalidNotification(String),

    /// The private runtime that drives the connection could not be created.
    #[error("could not start the runtime that drives the connection")]
    Runtime(#[source] std::io::Error),

    /// A [`transaction_retrying`](crate::ManagedConnection::transaction_retrying)
    /// ran its transaction as many times as its
    /// [`RetryPolicy`](crate::RetryPolicy) allows, and the server refused
    /// each one with a serialization failure (40001) or a deadlock (40P01).
    /// Nothing of any run was committed. Carries the number of runs and the
    /// last run's error from the server ([`Error::as_db_error`]).
    #[error("gave up after {attempts} run{} of the transaction: {last}", plural(*.attempts))]
    RetriesExhausted {
        /// Runs made, the first included.
        attempts: u32,
        /// The server's error that ended the last run.
        last: Box<DbError>,
    },

    /// The statement was cancelled with a [`CancelHandle`](crate::CancelHandle)
    /// while it ran. A transaction it ran in is aborted (its `commit`
    /// reports [`Error::TransactionAborted`]; a `transaction` closure that
    /// returns this error is rolled back). Carries the server's error
    /// (SQLSTATE 57014, as for `statement_timeout`, which stays
    /// [`Error::Db`]: only a cancel pgtx sent is reported as this).
    #[error("the statement was cancelled")]
    Cancelled(#[source] postgres::Error),

    /// A cancel request could not be delivered (the server unreachable,
    /// the timeout passed): the statement it was for runs on.
    #[error("could not deliver the cancel request")]
    CancelFailed(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The connection is down and being reconnected in the background on
    /// the manager's [`ReconnectPolicy`](crate::ReconnectPolicy) (see
    /// [`Builder::reconnect`](crate::Builder::reconnect)): the call failed
    /// at once, without waiting for a connect timeout and without sending
    /// anything. Nothing ran. Retry later; the first call after the
    /// connection is back succeeds.
    #[error(
        "the connection is down (for {down_for:.1?}, {attempts} reconnection attempt{}; the last failed with: {last_failure}); reconnecting in the background",
        plural(*.attempts)
    )]
    ConnectionDead {
        /// How long the connection has been down.
        down_for: Duration,
        /// Reconnection attempts made so far.
        attempts: u32,
        /// What the last attempt failed with (its error's message followed by its sources).
        last_failure: String,
    },

    /// The [`on_connect`](crate::Builder::on_connect) hook failed on a new
    /// connection (or left a transaction block open): that connection was
    /// closed, and nobody got it. The lock has been released; the next
    /// holder opens another connection and runs the hook again.
    /// The source is the hook's error.
    #[error("the on_connect hook failed on a new connection")]
    OnConnect(#[source] HookError),

    /// Reconnecting gave up: every attempt the
    /// [`ReconnectPolicy`](crate::ReconnectPolicy) allows for one round
    /// ([`max_attempts`](crate::ReconnectPolicy::max_attempts)) failed.
    /// Nothing is connected. Carries how many attempts were made, the
    /// round's first failure (`None` when there was only one attempt: it is
    /// `last`), which the message shows, and its last, which is the
    /// [`source`](std::error::Error::source).
    ///
    /// A [`Listener`](crate::Listener) that returns it keeps its channels:
    /// its next call starts a new round of attempts, and
    /// [`ListenEvent::Reconnected`](crate::ListenEvent::Reconnected) still
    /// follows when the connection is back.
    #[error("gave up reconnecting after {attempts} attempt{}{}", plural(*.attempts), first_failure(.first))]
    ReconnectFailed {
        /// Attempts made in the round that gave up.
        attempts: u32,
        /// The round's first failure, if it had more than one attempt.
        first: Option<Box<Error>>,
        /// The round's last failure.
        #[source]
        last: Box<Error>,
    },
}

/// The step of a [`TwoPhase`](crate::TwoPhase) commit that failed before the decision
/// ([`Error::VoteFailed`]): everything was rolled back either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VoteStep {
    /// The decider could not record the decision row in its transaction:
    /// its own work had failed, or the decision table
    /// ([`DECISIONS_TABLE`](crate::two_phase::DECISIONS_TABLE)) could not
    /// be created or written.
    RecordDecision,
    /// A voter's `PREPARE TRANSACTION`: its work had failed, the server
    /// refused to prepare (`max_prepared_transactions = 0`; `NOTIFY`,
    /// `LISTEN` or a temporary table used), or its connection broke.
    Prepare,
    /// The decider's own one-phase `COMMIT`, after every vote: refused (a
    /// deferred constraint, a serialization failure), or its connection
    /// was taken over as abandoned ([`Error::LeaseRevoked`]).
    DeciderCommit,
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn first_failure(first: &Option<Box<Error>>) -> String {
    match first {
        Some(first) => format!(" (the first attempt failed with: {})", chain(&**first)),
        None => String::new(),
    }
}

fn describe_vote(participant: &str, step: VoteStep, source: &Error) -> String {
    let hint = if source.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
        && source
            .as_db_error()
            .is_some_and(|db| db.message().contains("prepared transactions are disabled"))
    {
        " (two-phase commit needs max_prepared_transactions set above 0 on that server)"
    } else {
        ""
    };
    let failed = match step {
        VoteStep::RecordDecision => {
            format!("the decider {participant} could not record the decision")
        }
        VoteStep::Prepare => format!("participant {participant} could not prepare"),
        VoteStep::DeciderCommit => format!("the decider {participant} could not commit"),
    };
    format!("{failed}, so every participant was rolled back{hint}")
}

fn describe_in_doubt(
    decided: bool,
    committed: &[String],
    in_doubt: &[String],
    unsent: &[(String, String)],
) -> String {
    let notifications = match unsent.len() {
        0 => String::new(),
        n => format!("; {n} notification(s) not sent"),
    };
    let decision = if decided {
        "the decision was to commit"
    } else {
        "the decision to commit may or may not have been made"
    };
    format!(
        "distributed transaction in doubt ({decision}): committed on [{}], not known to have \
         committed on [{}]{notifications}; run pgtx::two_phase::Recovery to finish it",
        committed.join(", "),
        in_doubt.join(", ")
    )
}

fn describe_gone(participant: &str, gid: &str, rolled_back: bool) -> String {
    let outcome = if rolled_back {
        "the server says it was rolled back (by a recovery or by hand), so its work is lost \
         although the decision was to commit"
    } else {
        "the server cannot say whether it committed"
    };
    format!(
        "prepared transaction {gid} of participant {participant} was gone when COMMIT PREPARED \
         came: {outcome}"
    )
}

fn first_error(first: &Option<Box<DbError>>) -> String {
    match first {
        Some(db) => format!(
            ": {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => String::new(),
    }
}

/// `postgres::Error` shows only "db error" for a server error; say what
/// the server said, with its SQLSTATE code. Any other `postgres::Error`
/// leaves its cause to `source()`: show it with its causes.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => chain(e),
    }
}

/// An error's message followed by each of its sources, joined by `": "`:
/// everything it says, for a log line or a message that keeps it as text.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A statement as an error shows it: its first 100 characters.
fn shown_statement(sql: Option<&str>) -> String {
    const SHOWN: usize = 100;
    match sql {
        Some(sql) => match sql.char_indices().nth(SHOWN) {
            Some((cut, _)) => format!("{}…", &sql[..cut]),
            None => sql.to_owned(),
        },
        None => "a prepared statement".to_owned(),
    }
}

impl From<SettingsError> for Error {
    fn from(e: SettingsError) -> Self {
        Error::Settings(e)
    }
}

impl Error {
    /// The error for a `COPY` run through a statement method: `sql` (its
    /// first 100 characters) or "a prepared statement".
    pub(crate) fn copy_refused(from_stdin: bool, sql: Option<&str>) -> Error {
        Error::CopyRefused {
            statement: shown_statement(sql),
            from_stdin,
        }
    }

    pub(crate) fn not_a_copy(from_stdin: bool, sql: &str) -> Error {
        Error::NotACopy {
            statement: shown_statement(Some(sql)),
            from_stdin,
        }
    }

    /// The server's error, if the server reported one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Db(e) | Error::Cancelled(e) => e.as_db_error(),
            Error::Connect(e) => e.as_db_error(),
            Error::ConnectionLost(e) | Error::CommitOutcomeUnknown(e) => {
                e.as_ref().and_then(postgres::Error::as_db_error)
            }
            Error::TransactionAborted(e) => e.as_deref(),
            Error::VoteFailed { source, .. }
            | Error::InDoubt { source, .. }
            | Error::NotifyFailed { source, .. }
            | Error::PipelineFailed { source, .. } => source.as_db_error(),
            Error::ReconnectFailed { last, .. } => last.as_db_error(),
            Error::RetriesExhausted { last, .. } => Some(last),
            _ => None,
        }
    }

    /// The SQLSTATE code of the server's error, if any.
    pub fn code(&self) -> Option<&SqlState> {
        self.as_db_error().map(DbError::code)
    }

    /// A copy of a failure to connect, for an outage to report later (an
    /// error is not `Clone`). An outage begins only on [`Error::Connect`]
    /// (copied whole) or [`Error::OnConnect`], whose hook error is kept as
    /// its text (with the hook error's own sources).
    pub(crate) fn copy_for_outage(&self) -> Error {
        match self {
            Error::Connect(e) => Error::Connect(e.clone()),
            Error::OnConnect(hook) => Error::OnConnect(chain(&**hook).into()),
            other => Error::OnConnect(chain(other).into()),
        }
    }

    /// Whether running the same work again may succeed: a lost connection, a
    /// timeout, a serialization failure or a deadlock.
    ///
    /// [`Error::CommitOutcomeUnknown`] is deliberately not transient: the
    /// first attempt may have committed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect(_) | Error::ConnectionLost(_) | Error::LockTimeout(_) => true,
            Error::ConnectionDead { .. } | Error::ReconnectFailed { .. } => true,
            Error::WouldBlock | Error::LeaseRevoked => true,
            Error::PipelineFailed { source, .. } => source.is_transient(),
            // Something was committed: running the work again would repeat it.
            Error::InDoubt { .. }
            | Error::NotifyFailed { .. }
            | Error::PreparedTransactionGone { .. } => false,
            _ => matches!(
                self.code(),
                Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
            ),
        }
    }
}

/// Why no connection could be opened: every server tried, in the order
/// tried, and what went wrong with each.
///
/// # Message
///
/// One line per attempt, in the order the attempts were made, joined with
/// `\n` (no newline after the last line), worded as libpq (and so `psql`)
/// words them:
///
/// ```text
/// connection to server at "127.0.0.1", port 5433 failed: Connection refused
/// connection to server at "db.example" (192.0.2.7), port 5432 failed: timeout expired
/// connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: No such file or directory
/// connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "alice"
/// connection to server at "127.0.0.1", port 5432 failed: server does not support SSL, but SSL was required
/// could not translate host name "db.invalid" to address: Name or service not known
/// ```
///
/// The server is named by its numeric `hostaddr` if one was given, else by
/// its host name, followed by the address it resolved to when that differs;
/// a name that resolves to several addresses gives one line per address
/// tried. libpq's hint lines (`Is the server running on that host and
/// accepting TCP/IP connections?`) are left out. No password appears: the
/// lines are made from the host, port and the reason only.
///
/// # Source
///
/// None: every attempt's reason is in the message already (see
/// [`Error`'s rule](Error#message-and-source)). The last attempt's error
/// itself is [`last_cause`](ConnectError::last_cause).
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// Never empty.
    attempts: Vec<Attempt>,
}

// Errors cross threads (a `transaction` closure's error, a log thread).
static_assertions::assert_impl_all!(Error: Send, Sync, std::error::Error);
static_assertions::assert_impl_all!(ConnectError: Send, Sync, std::error::Error);

/// One failed attempt: its line of [`ConnectError`]'s message and its error.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    line: String,
    // Shared, so that an outage can keep the failure it reports later.
    cause: Arc<dyn std::error::Error + Send + Sync>,
}

impl Attempt {
    /// An attempt that failed for `cause`; `line` is its whole line of the
    /// message, in libpq's words.
    pub(crate) fn new(line: String, cause: Box<dyn std::error::Error + Send + Sync>) -> Attempt {
        Attempt {
            line,
            cause: Arc::from(cause),
        }
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

impl ConnectError {
    /// The failed attempts, in order; `None` if there were none.
    pub(crate) fn new(attempts: Vec<Attempt>) -> Option<ConnectError> {
        (!attempts.is_empty()).then_some(ConnectError { attempts })
    }

    /// The error the server sent, from the last attempt a server turned
    /// down with one (an earlier host may have refused the password while a
    /// later one was not reachable at all); `None` if no server did.
    pub fn as_db_error(&self) -> Option<&DbError> {
        self.attempts.iter().rev().find_map(|attempt| {
            attempt
                .cause
                .downcast_ref::<postgres::Error>()
                .and_then(postgres::Error::as_db_error)
        })
    }
}

impl ConnectError {
    /// The last attempt's error, whose words end the message: a
    /// [`std::io::Error`] from the socket (refused, timed out, the name not
    /// resolved), a [`postgres::Error`] when the server or TLS turned the
    /// connection down, or an error of pgtx's own wording whose source is
    /// one of those (TLS required but refused by the server). Downcast it to
    /// tell.
    pub fn last_cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        // `attempts` is never empty.
        &*self.attempts[self.attempts.len() - 1].cause
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, attempt) in self.attempts.iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&attempt.line)?;
        }
        Ok(())
    }
}

/// No source: the message words every attempt's cause (see
/// [`last_cause`](ConnectError::last_cause)).
impl std::error::Error for ConnectError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_transaction_reads_like_the_seed() {
        assert_eq!(
            Error::UnfinishedTransaction.to_string(),
            "Did not commit or rollback open transaction before releasing connection."
        );
    }

    #[test]
    fn connect_error_lists_attempts_one_per_line_and_keeps_the_last_cause_out_of_the_chain() {
        let io = |text: &str| Box::new(std::io::Error::other(text.to_owned()));
        let e = Error::Connect(
            ConnectError::new(vec![
                Attempt::new("first line".into(), io("first")),
                Attempt::new("second line".into(), io("second")),
            ])
            .expect("two attempts"),
        );
        assert_eq!(e.to_string(), "first line\nsecond line");
        assert!(std::error::Error::source(&e).is_none());
        let Error::Connect(connect) = &e else {
            unreachable!()
        };
        assert_eq!(connect.last_cause().to_string(), "second");
        assert!(e.as_db_error().is_none());
        assert!(e.is_transient());
        assert!(ConnectError::new(Vec::new()).is_none());
    }

    /// The chain (message, then each source), asserting that no part
    /// repeats what came before it.
    fn said_once(e: &Error) -> String {
        let mut parts = vec![e.to_string()];
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            parts.push(s.to_string());
            source = s.source();
        }
        for (n, part) in parts.iter().enumerate().skip(1) {
            let before = parts[..n].join(": ");
            assert!(!before.contains(part.as_str()), "{before:?} / {part:?}");
        }
        assert_eq!(parts.join(": "), chain(e));
        parts.join(": ")
    }

    fn refused(line: &str) -> Error {
        let cause = Box::new(std::io::Error::other("Connection refused"));
        Error::Connect(ConnectError::new(vec![Attempt::new(line.into(), cause)]).expect("one"))
    }

    #[test]
    fn errors_with_a_cause_say_it_once() {
        let hook = || -> HookError { "no table t".into() };
        let cases = [
            (
                Error::OnConnect(hook()),
                "the on_connect hook failed on a new connection: no table t",
            ),
            (
                Error::OnConnect(hook()).copy_for_outage(),
                "the on_connect hook failed on a new connection: no table t",
            ),
            (
                Error::NotifyFailed {
                    channel: "jobs".into(),
                    source: Box::new(Error::WouldBlock),
                },
                "the transaction committed, but NOTIFY on channel \"jobs\" failed: \
                 the connection is held by another thread",
            ),
            (
                Error::ReconnectFailed {
                    attempts: 3,
                    first: Some(Box::new(refused("first line"))),
                    last: Box::new(refused("last line")),
                },
                "gave up reconnecting after 3 attempts \
                 (the first attempt failed with: first line): last line",
            ),
            (
                Error::ReconnectFailed {
                    attempts: 2,
                    first: Some(Box::new(Error::OnConnect(hook()))),
                    last: Box::new(refused("last line")),
                },
                "gave up reconnecting after 2 attempts (the first attempt failed with: \
                 the on_connect hook failed on a new connection: no table t): last line",
            ),
            (
                Error::VoteFailed {
                    participant: "host=a dbname=b".into(),
                    step: VoteStep::Prepare,
                    source: Box::new(Error::WouldBlock),
                },
                "participant host=a dbname=b could not prepare, so every participant was \
                 rolled back: the connection is held by another thread",
            ),
            (
                Error::InDoubt {
                    decided: true,
                    committed: vec!["a".into()],
                    in_doubt: vec!["b".into()],
                    unsent_notifications: vec![("jobs".into(), "1".into())],
                    source: Box::new(Error::ConnectionLost(None)),
                },
                "distributed transaction in doubt (the decision was to commit): committed on \
                 [a], not known to have committed on [b]; 1 notification(s) not sent; run \
                 pgtx::two_phase::Recovery to finish it: the connection to the server was lost",
            ),
            (
                Error::CancelFailed(Box::new(std::io::Error::other("unreachable"))),
                "could not deliver the cancel request: unreachable",
            ),
        ];
        for (e, expected) in cases {
            assert_eq!(said_once(&e), expected, "{e:?}");
        }
    }

    #[test]
    fn commit_outcome_unknown_is_not_transient() {
        assert!(!Error::CommitOutcomeUnknown(None).is_transient());
        assert!(Error::ConnectionLost(None).is_transient());
    }
}
