//! What pgtx knows about the transaction on the connection: a state machine
//! with no I/O in it.
//!
//! Every transition is a plain function of the current state and of what
//! the server said (its transaction status from ReadyForQuery, read by the
//! tap in `wire.rs`, and the request's error). The server's status is the
//! truth: user SQL that opens, recovers or ends a transaction block moves the
//! machine the same way pgtx's own statements do. `conn/session.rs` drives it and
//! does the talking.

use std::borrow::Cow;

use postgres::error::DbError;

use crate::machine::transaction_status::ServerStatus;
use crate::machine::transaction_status::TransactionStatus;

/// The transaction on the connection, as pgtx sees it.
#[derive(Debug)]
enum Track {
    /// No pgtx transaction, and the server is not in a transaction block.
    Idle,
    /// No pgtx transaction, but user SQL through a `Guard` opened a
    /// transaction block (`BEGIN`): it is rolled back and reported when the
    /// guard lets go, so nobody inherits it.
    UserBlock,
    /// A pgtx transaction has begun, but nothing has been sent: this `BEGIN`
    /// goes out with the first statement, in the same write and the same
    /// Sync group (see `wire.rs`).
    Pending(Cow<'static, str>),
    /// A pgtx transaction is open and healthy on the server.
    Open,
    /// The server aborted the transaction (or refused its `BEGIN`); carries
    /// the first error. Only a rollback (of the transaction, or to a
    /// savepoint opened before the error) can follow.
    Aborted(Option<Box<DbError>>),
    /// The server left the transaction block under a pgtx transaction,
    /// through a statement that pgtx did not recognise as transaction
    /// control. Nothing more is sent for this transaction.
    Escaped,
    /// The connection broke while a transaction was open: the server has
    /// rolled it back, and the holder must still be told.
    Lost,
    /// `PREPARE TRANSACTION` took the transaction off the session (the
    /// server keeps it under this gid until `COMMIT PREPARED` or `ROLLBACK
    /// PREPARED`, from any session); the session itself is idle.
    Prepared(String),
}

/// What a request came back with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reply<'e> {
    /// The server answered. `began`: a pending `BEGIN` went out with the
    /// request and the server began the transaction.
    Answered {
        began: bool,
        server: ServerStatus,
        error: Option<&'e DbError>,
    },
    /// The connection broke.
    Lost,
}

/// Why a statement of a transaction is not sent.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The transaction is aborted and the server is not in a transaction
    /// block (its `BEGIN` was refused): sent now, the statement would run on
    /// its own.
    Aborted(Option<Box<DbError>>),
    /// The transaction block ended under it (see [`Track::Escaped`]).
    Escaped,
    /// The connection broke under the transaction.
    Lost,
    /// The transaction was prepared for two-phase commit: it is no longer
    /// on this session.
    Prepared,
}

/// What `commit` has to do.
#[derive(Debug)]
pub(crate) enum CommitPlan {
    /// Nothing reached the server: nothing to commit.
    Nothing,
    /// Send `COMMIT`.
    Send,
    /// The server aborted the transaction: roll back, and report the first error.
    RollBack(Option<Box<DbError>>),
    /// Report that the connection was lost.
    Lost,
    /// Report that the transaction ended under a statement pgtx did not know.
    Escaped,
}

/// What the server's answer to `COMMIT` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitAnswer {
    /// Committed: the tag says `COMMIT` and no block is open any more.
    Committed,
    /// Not committed (a block the server had aborted answers `ROLLBACK`);
    /// `block_left_open`: the server still has a block open, which must be
    /// rolled back.
    NotCommitted { block_left_open: bool },
}

/// What a `COMMIT` that the server answered without an error did, from
/// the server's word (the command tag and the status it reported), not
/// from the request's success.
pub(crate) fn commit_answer(tag: &str, server: Option<ServerStatus>) -> CommitAnswer {
    if tag == "COMMIT" && server == Some(ServerStatus::Idle) {
        return CommitAnswer::Committed;
    }
    CommitAnswer::NotCommitted {
        block_left_open: server != Some(ServerStatus::Idle),
    }
}

/// What releasing a savepoint has to do.
#[derive(Debug)]
pub(crate) enum ReleasePlan {
    /// Send `RELEASE SAVEPOINT`.
    Send,
    /// The server aborted the transaction inside the savepoint: roll back
    /// to it instead (which leaves the transaction usable), and report the
    /// first error.
    RollBack(Option<Box<DbError>>),
}

/// What `PREPARE TRANSACTION` has to do.
#[derive(Debug)]
pub(crate) enum PreparePlan {
    /// Nothing reached the server: the participant votes yes with nothing to do.
    Nothing,
    /// Send `PREPARE TRANSACTION`.
    Send,
    /// The server aborted the transaction: roll back, and report the first error.
    RollBack(Option<Box<DbError>>),
    /// Report that the connection was lost.
    Lost,
    /// Report that the transaction block is gone.
    Escaped,
}

/// Savepoints opened by pgtx inside the current transaction.
#[derive(Debug)]
pub(crate) struct Machine {
    track: Track,
    /// How many pgtx savepoints are open (the innermost is number `depth`).
    depth: u32,
}

impl Machine {
    pub(crate) fn new() -> Machine {
        Machine {
            track: Track::Idle,
            depth: 0,
        }
    }

    /// Whether a transaction block is (or was, before the connection broke)
    /// open: something must be rolled back (or reported) before anyone else
    /// gets the connection.
    pub(crate) fn in_transaction(&self) -> bool {
        !matches!(self.track, Track::Idle)
    }

    /// Whether the transaction was prepared (`PREPARE TRANSACTION`): it
    /// has left the session, to be finished by its gid.
    #[cfg(feature = "aio")]
    pub(crate) fn is_prepared(&self) -> bool {
        matches!(self.track, Track::Prepared(_))
    }

    /// Whether a transaction has sent nothing yet (its `BEGIN` waits for
    /// its first statement).
    pub(crate) fn is_pending(&self) -> bool {
        matches!(self.track, Track::Pending(_))
    }

    /// The `BEGIN` of a transaction that has sent nothing yet: its first
    /// statement is about to.
    pub(crate) fn pending_begin(&self) -> Option<Cow<'static, str>> {
        match &self.track {
            Track::Pending(begin) => Some(begin.clone()),
            _ => None,
        }
    }

    /// A pgtx transaction begins; nothing is sent until its first statement.
    /// Only from `Idle`: a user block is rolled back first.
    pub(crate) fn begin(&mut self, begin: Cow<'static, str>) {
        debug_assert!(matches!(self.track, Track::Idle), "{:?}", self.track);
        self.track = Track::Pending(begin);
        self.depth = 0;
    }

    /// Before a statement: whether to send it, and the `BEGIN` to send with
    /// it. `touches_data`: the request executes something (a Parse alone
    /// does not need the transaction to have begun).
    pub(crate) fn before_statement(
        &self,
        touches_data: bool,
        server: Option<ServerStatus>,
    ) -> Result<Option<Cow<'static, str>>, Refusal> {
        match &self.track {
            Track::Pending(begin) if touches_data => Ok(Some(begin.clone())),
            Track::Aborted(first) if touches_data && server == Some(ServerStatus::Idle) => {
                Err(Refusal::Aborted(first.clone()))
            }
            Track::Escaped => Err(Refusal::Escaped),
            Track::Lost => Err(Refusal::Lost),
            Track::Prepared(_) => Err(Refusal::Prepared),
            _ => Ok(None),
        }
    }

    /// After a statement (the user's, or a savepoint command): follow what
    /// the server said.
    pub(crate) fn after_statement(&mut self, reply: Reply<'_>) {
        let (began, server, error) = match reply {
            Reply::Lost => return self.lose(),
            Reply::Answered {
                began,
                server,
                error,
            } => (began, server, error),
        };
        self.track = match std::mem::replace(&mut self.track, Track::Idle) {
            // Outside a pgtx transaction the server's word is all there is.
            Track::Idle | Track::UserBlock => match server {
                ServerStatus::Idle => Track::Idle,
                ServerStatus::InTransaction | ServerStatus::Failed => Track::UserBlock,
            },
            // BEGIN did not go out with this request (a Parse alone), or
            // the server refused it. An error reads the same to the holder
            // either way: the transaction is aborted.
            Track::Pending(begin) if !began => match error {
                Some(e) => Track::Aborted(Some(Box::new(e.clone()))),
                None => Track::Pending(begin),
            },
            Track::Pending(_) | Track::Open => in_transaction(server, None, error),
            Track::Aborted(first) => in_transaction(server, first, error),
            // Nothing is sent in these states.
            Track::Escaped => Track::Escaped,
            Track::Lost => Track::Lost,
            Track::Prepared(gid) => Track::Prepared(gid),
        };
        if !matches!(self.track, Track::Open | Track::Aborted(_)) {
            self.depth = 0;
        }
    }

    /// The connection broke: a transaction that was open is lost (a block
    /// the user opened through a guard is simply gone with the session).
    pub(crate) fn lose(&mut self) {
        self.track = match self.track {
            Track::Idle | Track::UserBlock => Track::Idle,
            _ => Track::Lost,
        };
        self.depth = 0;
    }

    /// What `commit` must do; the machine is idle afterwards unless it has
    /// to roll back first.
    pub(crate) fn commit(&mut self) -> CommitPlan {
        self.depth = 0;
        match std::mem::replace(&mut self.track, Track::Idle) {
            Track::Idle | Track::Pending(_) => CommitPlan::Nothing,
            Track::UserBlock | Track::Open => CommitPlan::Send,
            Track::Aborted(first) => {
                // Anything but idle makes `rollback` send ROLLBACK.
                self.track = Track::Open;
                CommitPlan::RollBack(first)
            }
            Track::Lost => CommitPlan::Lost,
            Track::Escaped | Track::Prepared(_) => CommitPlan::Escaped,
        }
    }

    /// What `PREPARE TRANSACTION` must do (the vote of a two-phase commit).
    pub(crate) fn prepare(&mut self) -> PreparePlan {
        self.depth = 0;
        match std::mem::replace(&mut self.track, Track::Idle) {
            // Nothing reached the server: nothing to prepare, and nothing
            // to commit later.
            Track::Idle | Track::Pending(_) => PreparePlan::Nothing,
            Track::Open | Track::UserBlock => {
                self.track = Track::Open;
                PreparePlan::Send
            }
            Track::Aborted(first) => {
                self.track = Track::Open;
                PreparePlan::RollBack(first)
            }
            Track::Lost => PreparePlan::Lost,
            Track::Escaped | Track::Prepared(_) => PreparePlan::Escaped,
        }
    }

    /// After `PREPARE TRANSACTION`: prepared if the server says it left the
    /// block without an error. Returns whether `ROLLBACK` must end the block
    /// that a refused `PREPARE` left failed.
    pub(crate) fn after_prepare(&mut self, gid: &str, reply: Reply<'_>) -> bool {
        self.track = match reply {
            Reply::Answered {
                server: ServerStatus::Idle,
                error: None,
                ..
            } => Track::Prepared(gid.to_owned()),
            // The server refused to prepare; it ended the block, or left it
            // failed for `rollback` to end.
            Reply::Answered {
                server: ServerStatus::Idle,
                ..
            } => Track::Idle,
            Reply::Answered { .. } => Track::Open,
            // Whether the server prepared it is unknown: recovery decides.
            Reply::Lost => Track::Idle,
        };
        matches!(self.track, Track::Open)
    }

    /// Before `COMMIT PREPARED` or `ROLLBACK PREPARED`: a transaction
    /// prepared (or lost) on this session has left it, and is forgotten;
    /// the second phase names it by its gid, from any session. Returns
    /// whether the session is free to send it: not while a transaction is
    /// open on it, inside which the server refuses both.
    pub(crate) fn finish_prepared(&mut self) -> bool {
        if matches!(self.track, Track::Prepared(_) | Track::Lost) {
            self.reset();
        }
        !self.in_transaction()
    }

    /// What releasing the innermost savepoint must do: inside an aborted
    /// transaction `RELEASE` would fail, so the savepoint is rolled back
    /// to instead.
    pub(crate) fn release_savepoint(&self) -> ReleasePlan {
        match &self.track {
            Track::Aborted(first) => ReleasePlan::RollBack(first.clone()),
            _ => ReleasePlan::Send,
        }
    }

    /// Whether `ROLLBACK` must be sent to end what is open; the machine is
    /// idle afterwards.
    pub(crate) fn rollback(&mut self, server: Option<ServerStatus>) -> bool {
        self.depth = 0;
        match std::mem::replace(&mut self.track, Track::Idle) {
            // A prepared transaction is not on this session: it waits for
            // `COMMIT PREPARED` or `ROLLBACK PREPARED` (or for recovery).
            Track::Idle | Track::Pending(_) | Track::Lost | Track::Prepared(_) => false,
            // The server is the judge of whether a block is open (a refused
            // BEGIN leaves none).
            Track::UserBlock | Track::Open | Track::Aborted(_) | Track::Escaped => {
                server != Some(ServerStatus::Idle)
            }
        }
    }

    /// The number the next savepoint gets: savepoints nest, so it is one
    /// deeper than the innermost open one.
    pub(crate) fn next_savepoint(&self) -> u32 {
        self.depth + 1
    }

    /// The server opened savepoint `depth` (the number
    /// [`next_savepoint`](Self::next_savepoint) gave): it is the innermost.
    pub(crate) fn savepoint_opened(&mut self, depth: u32) {
        debug_assert_eq!(depth, self.depth + 1);
        self.depth = depth;
    }

    /// Savepoint `depth` was released or rolled back to, and so are the
    /// ones inside it; whatever the server answered, its holder is done
    /// with it. The depth never grows here: leaving the transaction may
    /// have forgotten the savepoints already.
    pub(crate) fn savepoint_ended(&mut self, depth: u32) {
        self.depth = depth.saturating_sub(1).min(self.depth);
    }

    /// Whether savepoint `depth` is still open on the server: a savepoint
    /// whose holder was left behind (dropped, forgotten, its lease taken)
    /// is rolled back to only while it is.
    pub(crate) fn savepoint_is_open(&self, depth: u32) -> bool {
        self.depth >= depth && self.in_transaction()
    }

    /// The holder of savepoint level `depth` (0: the transaction itself) is
    /// in use again: savepoints deeper than it that are still open were
    /// forgotten (`mem::forget`). Returns the outermost of them, to roll
    /// back to; none when there are none.
    pub(crate) fn forgotten_savepoints(&self, depth: u32) -> Option<u32> {
        let outermost = depth + 1;
        self.savepoint_is_open(outermost).then_some(outermost)
    }

    /// Whether `ROLLBACK` must be sent to end what the server has open,
    /// whatever the machine thought (the server answered `COMMIT` in a way
    /// that did not end its block); the machine is idle afterwards.
    pub(crate) fn force_rollback(&mut self, server: Option<ServerStatus>) -> bool {
        self.reset();
        server != Some(ServerStatus::Idle)
    }

    #[cfg(feature = "aio")]
    /// A request's future was dropped before its answer was read, and the
    /// answer has since been read and dropped (see
    /// `SessionCore::recover_interrupted`); `server` is the status the
    /// server reported last. Whether the interrupted statement ran is
    /// unknown to whoever wrote it, so a transaction goes on only aborted:
    /// it can still be rolled back, never committed. A transaction whose
    /// `BEGIN` is still pending with the server outside any block ran
    /// nothing (`BEGIN` travels with its first statement), and stays
    /// pending. Outside a transaction, the server's word is all there is.
    pub(crate) fn interrupted(&mut self, server: Option<ServerStatus>) {
        let idle = server == Some(ServerStatus::Idle);
        self.track = match std::mem::replace(&mut self.track, Track::Idle) {
            Track::Idle | Track::UserBlock if idle => Track::Idle,
            Track::Idle | Track::UserBlock => Track::UserBlock,
            Track::Pending(begin) if idle => Track::Pending(begin),
            // The block ended under the transaction (nothing pgtx sent ends one).
            Track::Pending(_) | Track::Open | Track::Aborted(_) if idle => Track::Escaped,
            Track::Pending(_) | Track::Open => Track::Aborted(None),
            Track::Aborted(first) => Track::Aborted(first),
            other => other,
        };
        if !matches!(self.track, Track::Open | Track::Aborted(_)) {
            self.depth = 0;
        }
    }

    /// Whether the transaction is aborted (only a rollback ends it).
    #[cfg(feature = "aio")]
    pub(crate) fn is_aborted(&self) -> bool {
        matches!(self.track, Track::Aborted(_))
    }

    /// The connection is gone or was closed on purpose: nothing is open.
    pub(crate) fn reset(&mut self) {
        self.track = Track::Idle;
        self.depth = 0;
    }

    /// The status everyone can read: the server's own, except that a
    /// transaction whose `BEGIN` is pending is in a transaction already.
    pub(crate) fn status(
        &self,
        connected: bool,
        server: Option<ServerStatus>,
    ) -> TransactionStatus {
        match (&self.track, connected, server) {
            (Track::Lost, _, _) => TransactionStatus::Unknown,
            (_, false, _) => TransactionStatus::Closed,
            (Track::Pending(_), true, _) => TransactionStatus::InTransaction,
            (_, true, Some(ServerStatus::InTransaction)) => TransactionStatus::InTransaction,
            (_, true, Some(ServerStatus::Failed)) => TransactionStatus::InError,
            (_, true, Some(ServerStatus::Idle) | None) => TransactionStatus::Idle,
        }
    }
}

/// Inside a pgtx transaction that the server has begun: its status decides.
fn in_transaction(
    server: ServerStatus,
    first: Option<Box<DbError>>,
    error: Option<&DbError>,
) -> Track {
    match server {
        // Healthy, or recovered by `ROLLBACK TO SAVEPOINT`.
        ServerStatus::InTransaction => Track::Open,
        ServerStatus::Failed => {
            Track::Aborted(first.or_else(|| error.map(|e| Box::new(e.clone()))))
        }
        // A block that is still aborted after a refused BEGIN stays so; any
        // other way to idle is user SQL that ended the transaction.
        ServerStatus::Idle if first.is_some() => Track::Aborted(first),
        ServerStatus::Idle => Track::Escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(began: bool, server: ServerStatus) -> Reply<'static> {
        Reply::Answered {
            began,
            server,
            error: None,
        }
    }

    fn open() -> Machine {
        let mut m = Machine::new();
        m.begin(Cow::Borrowed("BEGIN"));
        m.after_statement(answered(true, ServerStatus::InTransaction));
        assert!(matches!(m.track, Track::Open));
        m
    }

    #[test]
    fn an_interrupted_statement_leaves_a_transaction_only_to_roll_back() {
        for server in [ServerStatus::InTransaction, ServerStatus::Failed] {
            let mut m = open();
            m.interrupted(Some(server));
            assert!(matches!(m.track, Track::Aborted(None)), "{server:?}");
            assert!(matches!(m.commit(), CommitPlan::RollBack(None)));
        }
        // BEGIN travels with its statement: the server outside a block ran neither.
        let mut m = Machine::new();
        m.begin(Cow::Borrowed("BEGIN"));
        m.interrupted(Some(ServerStatus::Idle));
        assert!(m.is_pending());
        // It did run once the server is in a block.
        m.interrupted(Some(ServerStatus::InTransaction));
        assert!(matches!(m.track, Track::Aborted(None)));
        // A block that ended under it.
        let mut m = open();
        m.interrupted(Some(ServerStatus::Idle));
        assert!(matches!(m.track, Track::Escaped));
        // Outside a transaction, the server's word.
        let mut m = Machine::new();
        m.interrupted(Some(ServerStatus::InTransaction));
        assert!(matches!(m.track, Track::UserBlock));
        m.interrupted(Some(ServerStatus::Idle));
        assert!(matches!(m.track, Track::Idle));
    }

    #[test]
    fn begin_is_pending_until_a_statement_takes_it_out() {
        let mut m = Machine::new();
        m.begin(Cow::Borrowed("BEGIN"));
        assert!(matches!(
            m.before_statement(false, Some(ServerStatus::Idle)),
            Ok(None)
        ));
        let begin = m.before_statement(true, Some(ServerStatus::Idle));
        assert_eq!(begin.ok().flatten().as_deref(), Some("BEGIN"));
        // A Parse alone leaves it pending.
        m.after_statement(answered(false, ServerStatus::Idle));
        assert!(matches!(m.track, Track::Pending(_)));
        assert_eq!(
            m.status(true, Some(ServerStatus::Idle)),
            TransactionStatus::InTransaction
        );
        m.after_statement(answered(true, ServerStatus::InTransaction));
        assert!(matches!(m.track, Track::Open));
    }

    #[test]
    fn an_empty_transaction_commits_and_rolls_back_without_sending() {
        let mut m = Machine::new();
        m.begin(Cow::Borrowed("BEGIN"));
        assert!(matches!(m.commit(), CommitPlan::Nothing));
        m.begin(Cow::Borrowed("BEGIN"));
        assert!(!m.rollback(Some(ServerStatus::Idle)));
        assert!(!m.in_transaction());
    }

    #[test]
    fn a_user_begin_through_a_guard_is_a_block_to_roll_back() {
        let mut m = Machine::new();
        m.after_statement(answered(false, ServerStatus::InTransaction));
        assert!(matches!(m.track, Track::UserBlock));
        assert!(m.in_transaction());
        assert_eq!(
            m.status(true, Some(ServerStatus::InTransaction)),
            TransactionStatus::InTransaction
        );
        assert!(m.rollback(Some(ServerStatus::InTransaction)));
        assert!(!m.in_transaction());
    }

    #[test]
    fn a_user_commit_through_a_guard_leaves_it_clean() {
        let mut m = Machine::new();
        m.after_statement(answered(false, ServerStatus::Failed));
        assert!(matches!(m.track, Track::UserBlock));
        m.after_statement(answered(false, ServerStatus::Idle));
        assert!(matches!(m.track, Track::Idle));
        assert!(!m.in_transaction());
    }

    #[test]
    fn a_failed_block_is_aborted_until_rolled_back_to_a_savepoint() {
        let mut m = open();
        m.depth = 1;
        m.after_statement(answered(false, ServerStatus::Failed));
        assert!(matches!(m.track, Track::Aborted(None)));
        assert_eq!(m.depth, 1, "the savepoint is still there to roll back to");
        assert_eq!(
            m.status(true, Some(ServerStatus::Failed)),
            TransactionStatus::InError
        );
        // ROLLBACK TO SAVEPOINT: the server is in a healthy block again.
        m.after_statement(answered(false, ServerStatus::InTransaction));
        assert!(matches!(m.track, Track::Open));
        assert!(matches!(m.commit(), CommitPlan::Send));
    }

    #[test]
    fn commit_of_an_aborted_transaction_rolls_back() {
        let mut m = open();
        m.after_statement(answered(false, ServerStatus::Failed));
        assert!(matches!(m.commit(), CommitPlan::RollBack(None)));
        assert!(m.rollback(Some(ServerStatus::Failed)));
        assert!(!m.in_transaction());
    }

    #[test]
    fn a_refused_begin_aborts_and_nothing_more_is_sent() {
        let mut m = Machine::new();
        m.begin(Cow::Borrowed("BEGIN READ WRITE"));
        // No DbError can be built here; the refusal without one still aborts
        // through the idle server status.
        m.track = Track::Aborted(None);
        assert!(matches!(
            m.before_statement(true, Some(ServerStatus::Idle)),
            Err(Refusal::Aborted(None))
        ));
        assert!(
            !m.rollback(Some(ServerStatus::Idle)),
            "no block to roll back"
        );
    }

    #[test]
    fn a_block_that_ends_under_a_transaction_escapes_and_sends_nothing_more() {
        let mut m = open();
        m.after_statement(answered(false, ServerStatus::Idle));
        assert!(matches!(m.track, Track::Escaped));
        assert!(matches!(
            m.before_statement(true, Some(ServerStatus::Idle)),
            Err(Refusal::Escaped)
        ));
        assert!(matches!(m.commit(), CommitPlan::Escaped));
    }

    #[test]
    fn a_lost_connection_loses_the_transaction_but_not_a_guard() {
        let mut m = open();
        m.after_statement(Reply::Lost);
        assert!(matches!(m.track, Track::Lost));
        assert_eq!(m.status(false, None), TransactionStatus::Unknown);
        assert!(matches!(m.before_statement(true, None), Err(Refusal::Lost)));
        assert!(matches!(m.commit(), CommitPlan::Lost));

        let mut guard = Machine::new();
        guard.after_statement(answered(false, ServerStatus::InTransaction));
        guard.lose();
        assert!(!guard.in_transaction());
        assert_eq!(guard.status(false, None), TransactionStatus::Closed);
    }

    #[test]
    fn a_prepared_transaction_leaves_the_session_idle_and_sends_nothing_more() {
        let mut m = open();
        m.depth = 1;
        assert!(matches!(m.prepare(), PreparePlan::Send));
        assert!(
            !m.after_prepare("pgtx:g", answered(false, ServerStatus::Idle)),
            "nothing to roll back"
        );
        assert!(matches!(&m.track, Track::Prepared(g) if g == "pgtx:g"));
        assert_eq!(m.depth, 0);
        assert!(
            m.in_transaction(),
            "a forgotten prepared participant is reported"
        );
        assert_eq!(
            m.status(true, Some(ServerStatus::Idle)),
            TransactionStatus::Idle
        );
        assert!(matches!(
            m.before_statement(true, Some(ServerStatus::Idle)),
            Err(Refusal::Prepared)
        ));
        assert!(
            !m.rollback(Some(ServerStatus::Idle)),
            "ROLLBACK would not reach it"
        );
    }

    #[test]
    fn preparing_an_empty_or_aborted_transaction_does_not_send_prepare() {
        let mut m = Machine::new();
        m.begin(Cow::Borrowed("BEGIN"));
        assert!(matches!(m.prepare(), PreparePlan::Nothing));
        assert!(!m.in_transaction());
        let mut m = open();
        m.after_statement(answered(false, ServerStatus::Failed));
        assert!(matches!(m.prepare(), PreparePlan::RollBack(None)));
        assert!(m.rollback(Some(ServerStatus::Failed)));
    }

    #[test]
    fn a_refused_prepare_ends_the_transaction_the_way_the_server_says() {
        let mut m = open();
        let _ = m.prepare();
        m.after_prepare(
            "g",
            Reply::Answered {
                began: false,
                server: ServerStatus::Idle,
                error: None,
            },
        );
        assert!(matches!(m.track, Track::Prepared(_)));
        let mut m = open();
        let _ = m.prepare();
        assert!(!m.after_prepare("g", Reply::Lost));
        assert!(!m.in_transaction(), "the session is gone; recovery decides");
    }

    #[test]
    fn leaving_the_transaction_forgets_its_savepoints() {
        let mut m = open();
        m.depth = 2;
        assert!(m.rollback(Some(ServerStatus::InTransaction)));
        assert_eq!(m.depth, 0);
        let mut m = open();
        m.depth = 3;
        let _ = m.commit();
        assert_eq!(m.depth, 0);
    }

    /// Opens pgtx savepoints until `depth` of them are open.
    fn with_savepoints(mut m: Machine, depth: u32) -> Machine {
        while m.depth < depth {
            let next = m.next_savepoint();
            m.after_statement(answered(false, ServerStatus::InTransaction));
            m.savepoint_opened(next);
        }
        m
    }

    #[test]
    fn savepoints_nest_and_ending_one_ends_the_ones_inside_it() {
        let mut m = open();
        assert_eq!(m.depth, 0);
        assert_eq!(m.next_savepoint(), 1);
        m.savepoint_opened(1);
        assert_eq!(m.next_savepoint(), 2);
        let mut m = with_savepoints(m, 3);
        assert_eq!(m.depth, 3);
        assert!(m.savepoint_is_open(3));
        // Ending number 2 (released, or rolled back to) ends number 3 too.
        m.savepoint_ended(2);
        assert_eq!(m.depth, 1);
        assert!(m.savepoint_is_open(1));
        assert!(!m.savepoint_is_open(2));
        assert_eq!(m.next_savepoint(), 2);
        m.savepoint_ended(1);
        assert_eq!(m.depth, 0);
        assert!(!m.savepoint_is_open(1));
    }

    #[test]
    fn ending_a_savepoint_the_transaction_already_forgot_opens_nothing() {
        let mut m = with_savepoints(open(), 2);
        m.after_statement(Reply::Lost);
        m.savepoint_ended(2);
        assert_eq!(m.depth, 0, "the depth never grows when a savepoint ends");
        assert!(!m.savepoint_is_open(1));
    }

    #[test]
    fn an_aborted_transaction_keeps_its_savepoints_open_to_roll_back_to() {
        let mut m = with_savepoints(open(), 2);
        m.after_statement(answered(false, ServerStatus::Failed));
        assert!(m.savepoint_is_open(2));
        assert_eq!(m.forgotten_savepoints(1), Some(2));
    }

    #[test]
    fn savepoints_deeper_than_the_level_in_use_were_forgotten() {
        let m = with_savepoints(open(), 3);
        assert_eq!(m.forgotten_savepoints(3), None, "the innermost is in use");
        assert_eq!(m.forgotten_savepoints(4), None);
        assert_eq!(
            m.forgotten_savepoints(1),
            Some(2),
            "rolling back to the outermost forgotten one undoes the rest"
        );
        assert_eq!(m.forgotten_savepoints(0), Some(1));
        assert_eq!(open().forgotten_savepoints(0), None);
    }

    #[test]
    fn outside_a_transaction_no_savepoint_is_open_or_forgotten() {
        let mut m = with_savepoints(open(), 2);
        let _ = m.commit();
        assert!(!m.savepoint_is_open(1));
        assert_eq!(m.forgotten_savepoints(0), None);
        let mut m = with_savepoints(open(), 2);
        m.reset();
        assert_eq!(m.forgotten_savepoints(0), None);
        assert_eq!(Machine::new().forgotten_savepoints(0), None);
    }

    #[test]
    fn a_forced_rollback_follows_the_server_whatever_the_machine_thought() {
        // COMMIT was answered, so the machine is idle; the server is not.
        let mut m = with_savepoints(open(), 1);
        assert!(matches!(m.commit(), CommitPlan::Send));
        assert!(m.force_rollback(Some(ServerStatus::InTransaction)));
        assert!(!m.in_transaction());
        assert!(!m.savepoint_is_open(1));
        let mut m = Machine::new();
        assert!(m.force_rollback(Some(ServerStatus::Failed)));
        assert!(
            m.force_rollback(None),
            "a status never read is not idle: ROLLBACK goes out"
        );
        assert!(!m.force_rollback(Some(ServerStatus::Idle)));
        assert!(!m.in_transaction());
    }

    #[test]
    fn a_savepoint_is_released_unless_the_transaction_aborted_inside_it() {
        let mut m = with_savepoints(open(), 1);
        assert!(matches!(m.release_savepoint(), ReleasePlan::Send));
        m.after_statement(answered(false, ServerStatus::Failed));
        assert!(matches!(m.release_savepoint(), ReleasePlan::RollBack(None)));
        // ROLLBACK TO SAVEPOINT: healthy again.
        m.after_statement(answered(false, ServerStatus::InTransaction));
        m.savepoint_ended(1);
        assert!(matches!(m.release_savepoint(), ReleasePlan::Send));
    }

    #[test]
    fn a_refused_prepare_that_leaves_the_block_failed_must_be_rolled_back() {
        let mut m = open();
        let _ = m.prepare();
        assert!(m.after_prepare("g", answered(false, ServerStatus::Failed)));
        assert!(m.in_transaction());
        assert!(m.rollback(Some(ServerStatus::Failed)));
    }

    #[test]
    fn the_second_phase_forgets_a_prepared_or_lost_transaction_but_not_an_open_one() {
        let mut m = open();
        let _ = m.prepare();
        let _ = m.after_prepare("g", answered(false, ServerStatus::Idle));
        assert!(m.finish_prepared(), "prepared: it left the session");
        assert!(!m.in_transaction());

        let mut m = open();
        m.after_statement(Reply::Lost);
        assert!(m.finish_prepared(), "lost: the server rolled it back");
        assert!(!m.in_transaction());

        assert!(Machine::new().finish_prepared());

        let mut m = open();
        assert!(
            !m.finish_prepared(),
            "COMMIT PREPARED cannot run inside a block"
        );
        assert!(m.in_transaction(), "the open transaction is left alone");
        let mut m = Machine::new();
        m.after_statement(answered(false, ServerStatus::InTransaction));
        assert!(!m.finish_prepared(), "nor inside a user's block");
    }

    #[test]
    fn only_a_commit_tag_with_no_block_left_is_a_commit() {
        use super::{CommitAnswer, commit_answer};
        assert_eq!(
            commit_answer("COMMIT", Some(ServerStatus::Idle)),
            CommitAnswer::Committed
        );
        // COMMIT of a block the server had aborted answers ROLLBACK.
        assert_eq!(
            commit_answer("ROLLBACK", Some(ServerStatus::Idle)),
            CommitAnswer::NotCommitted {
                block_left_open: false
            }
        );
        // A redefined or injected statement that left a block open.
        for server in [
            Some(ServerStatus::InTransaction),
            Some(ServerStatus::Failed),
            None,
        ] {
            assert_eq!(
                commit_answer("COMMIT", server),
                CommitAnswer::NotCommitted {
                    block_left_open: true
                },
                "{server:?}"
            );
        }
        assert_eq!(
            commit_answer("SELECT 1", Some(ServerStatus::InTransaction)),
            CommitAnswer::NotCommitted {
                block_left_open: true
            }
        );
    }
}
