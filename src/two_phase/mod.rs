//! Two-phase commit across connections: work on several PostgreSQL
//! databases commits everywhere or nowhere (the psycopg2transaction port).
//!
//! See [`TwoPhase`] for the protocol and its guarantees, and [`Recovery`]
//! for finishing what a crashed coordinator left prepared.

mod gid;
pub(crate) mod protocol;
mod recovery;

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use postgres::types::ToSql;

use crate::Row;
use crate::blocking::driver::run_blocking_steps;
use crate::blocking::held::{Conn, Held, StatementScope};
use crate::blocking::lease::Ticket;
use crate::blocking::session::Vote;
use crate::blocking::shared::Shared;
use crate::error::{Error, Result};
use crate::manager::ManagedConnection;
use crate::pool::Pool;
use crate::state::Open;
use crate::tx::Tx;

use self::protocol::{Participants, Plan};

pub use self::recovery::{Decision, PreparedTransaction, Purged, Recovered, Recovery};
pub use crate::error::VoteStep;

/// The table, in the deciding participant's database, whose row records
/// the decision to commit (see [`TwoPhase`]).
pub const DECISIONS_TABLE: &str = "pgtx_two_phase_decisions";

/// A distributed transaction: work on several connections that commits on
/// all of them or on none, through PostgreSQL's `PREPARE TRANSACTION` and
/// `COMMIT PREPARED`.
///
/// ```no_run
/// use pgtx::{ManagedConnection, TwoPhase};
///
/// let bank_a = ManagedConnection::new("host=localhost dbname=bank_a")?;
/// let mut dtx = TwoPhase::new();
/// let a = dtx.join(&bank_a)?;                         // holds bank_a's connection
/// let b = dtx.join_dsn("host=localhost dbname=bank_b")?; // a connection of its own
/// dtx.tx(a)?.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[])?;
/// dtx.tx(b)?.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1", &[])?;
/// dtx.notify("transfers", "1 -> 1: 10")?;             // sent after the commit
/// dtx.commit()?;                                      // both, or neither
/// # Ok::<(), pgtx::Error>(())
/// ```
///
/// # Participants
///
/// [`join`](Self::join) a [`ManagedConnection`]: its connection is held (no
/// other thread gets it) until the distributed transaction ends; or
/// [`join_pool`](Self::join_pool) one of a [`Pool`]'s connections, given
/// back to the pool when it ends. Or
/// [`join_dsn`](Self::join_dsn): a connection opened for this transaction and
/// closed when it ends, committed or not; the same DSN twice is the same
/// participant, as is the same manager twice. Each participant's
/// transaction is lent out by [`tx`](Self::tx) as a [`TxRef`], which is a
/// `Tx<'_, Open>` with every statement method (and savepoints) but whose
/// `commit` and `rollback` the compiler refuses: only the coordinator ends
/// it.
///
/// # The protocol
///
/// Participants are put in a fixed order (by their settings as shown, then
/// by when they joined). The first of them decides, the others vote;
/// [`decide_on`](Self::decide_on) names the decider instead (it then comes
/// first, the others keep their order). The decider never prepares, so a
/// server without prepared transactions can take part as the decider:
///
/// ```no_run
/// # let (stock, other) = ("host=stock dbname=app", "host=other dbname=app");
/// let mut dtx = pgtx::TwoPhase::new();
/// let on_stock = dtx.join_dsn(stock)?; // max_prepared_transactions = 0
/// let elsewhere = dtx.join_dsn(other)?;
/// dtx.decide_on(on_stock)?;
/// # Ok::<(), pgtx::Error>(())
/// ```
///
///
/// 1. the decider writes a decision row (`'commit'` under the transaction's
///    key) into [`DECISIONS_TABLE`] in its own, still open transaction;
/// 2. every other participant votes with `PREPARE TRANSACTION 'gid'` (a
///    participant that ran nothing votes yes without preparing);
/// 3. the decider commits, in one phase: its own work and the decision row
///    become durable together, and that is the moment of decision;
/// 4. every other participant gets `COMMIT PREPARED 'gid'` (a connection that
///    broke is replaced and tried again), and the decision row is deleted.
///
/// Any failure before step 3 (an error in the work, a refused `PREPARE`, a
/// broken connection) rolls every participant back (`ROLLBACK` or `ROLLBACK
/// PREPARED`) and returns [`Error::VoteFailed`]; nothing is left in
/// `pg_prepared_xacts`. One participant commits in one phase and needs no
/// prepared transactions at all, so a stock server (`max_prepared_transactions
/// = 0`) works; with two or more, a server that has them disabled refuses the
/// vote with an error that names the setting. `NOTIFY`, `LISTEN` and
/// temporary tables make PostgreSQL refuse `PREPARE`: use
/// [`notify`](Self::notify), which sends after the commit.
///
/// # Guarantees
///
/// - After the decision, the outcome is never misreported: if a
///   participant cannot be committed, [`Error::InDoubt`] lists which
///   committed and which are still prepared, never `Ok` and never "rolled
///   back". If the connection to the decider breaks during its commit, the
///   decision itself is unknown: `InDoubt` with `decided: false`. A voter
///   whose prepared transaction is gone when its `COMMIT PREPARED` comes
///   (someone else finished it) counts as committed only if its server
///   says its transaction id committed (`txid_status`, the id being
///   learned with the vote): an answer lost with a broken connection is
///   proven so on the retry; anything else is `InDoubt` with
///   [`Error::PreparedTransactionGone`] as the source.
/// - A crash of the coordinator's process at any point is resolved by
///   [`Recovery`], given every participant's database: a prepared
///   transaction is committed if and only if its decision row exists.
///   Recovery writes an `'abort'` row for a transaction that has none before
///   it rolls anything back, so a coordinator that is still running can no
///   longer commit it (its decision row would collide): recovery may run at
///   any time.
/// - Gids are unique by construction (process, start time, host, counter)
///   and marked as pgtx's (`pgtx:v2:`), so recovery never touches anyone
///   else's prepared transactions. They name the decider by what its
///   server says it is (`system_identifier` and database oid), not by
///   name and port, so a database of the same name on another host is
///   never taken for it (see [`Recovery`]; `pgtx:v1:` gids of earlier
///   versions are still recognised).
///
/// What it cannot do: a participant's server that is down for good leaves
/// its prepared transaction (and its locks) there until it comes back and
/// recovery runs. The decider's database needs the right to create
/// [`DECISIONS_TABLE`] (once) and to write to it, and every participant's
/// role the right to call `pg_control_system()` (PostgreSQL grants it to
/// everyone unless revoked).
///
/// # When it is not finished
///
/// Dropped without [`commit`](Self::commit) or [`rollback`](Self::rollback)
/// (an early return, a panic), every participant is rolled back and
/// reported as [`Error::UnfinishedTransaction`], like an unfinished `Tx`.
///
/// `TwoPhase` is not `Send`: it holds its participants' connections for
/// this thread.
#[must_use = "a distributed transaction must end with `commit()` or `rollback()`; dropping it rolls back"]
pub struct TwoPhase<'m> {
    id: u64,
    participants: Vec<Participant<'m>>,
    plan: Plan,
    _not_send: PhantomData<*const ()>,
}

static_assertions::assert_not_impl_any!(TwoPhase<'static>: Send, Sync);

/// A participant of one [`TwoPhase`] transaction, as [`TwoPhase::join`]
/// hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParticipantId {
    coordinator: u64,
    index: usize,
}

impl ParticipantId {
    pub(crate) fn new(coordinator: u64, index: usize) -> ParticipantId {
        ParticipantId { coordinator, index }
    }

    /// Its index among `count` participants of `coordinator`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParticipant`] if it is another coordinator's.
    pub(crate) fn index_in(self, coordinator: u64, count: usize) -> Result<usize> {
        if self.coordinator == coordinator && self.index < count {
            Ok(self.index)
        } else {
            Err(Error::InvalidParticipant)
        }
    }
}

/// A participant's transaction, lent by [`TwoPhase::tx`]: a
/// [`Tx<'_, Open>`](Tx) (through `Deref`) whose `commit` and `rollback` the
/// compiler refuses, because only the coordinator ends it.
///
/// ```compile_fail
/// # let bank = pgtx::ManagedConnection::new("host=localhost")?;
/// let mut dtx = pgtx::TwoPhase::new();
/// let a = dtx.join(&bank)?;
/// dtx.tx(a)?.commit()?; // cannot move the participant's Tx out
/// # Ok::<(), pgtx::Error>(())
/// ```
pub struct TxRef<'d> {
    tx: Tx<'d, Open>,
}

impl<'d> Deref for TxRef<'d> {
    type Target = Tx<'d, Open>;

    fn deref(&self) -> &Tx<'d, Open> {
        &self.tx
    }
}

impl DerefMut for TxRef<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl fmt::Debug for TxRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TxRef").field(&self.tx).finish()
    }
}

enum Link<'m> {
    Joined(&'m ManagedConnection),
    /// Opened by `join_dsn` for this transaction; closed when it ends.
    Opened {
        manager: Box<ManagedConnection>,
        dsn: String,
    },
}

struct Participant<'m> {
    link: Link<'m>,
    /// The lease held for the whole transaction (flagged open: dropped
    /// unfinished, it is the fallback's to roll back and report).
    ticket: Ticket,
}

impl Participant<'_> {
    fn manager(&self) -> &ManagedConnection {
        match &self.link {
            Link::Joined(manager) => manager,
            Link::Opened { manager, .. } => manager,
        }
    }

    fn shared(&self) -> &Shared {
        self.manager().shared()
    }

    fn conn(&self, scope: StatementScope) -> Conn<'_> {
        Conn {
            shared: self.shared(),
            epoch: self.ticket.epoch(),
            scope,
        }
    }

    fn in_tx(&self) -> Conn<'_> {
        self.conn(StatementScope::Transaction { depth: 0 })
    }

    /// How errors and the commit order name it: its settings, as shown
    /// (no password).
    fn name(&self) -> String {
        self.manager().settings().to_string()
    }
}

impl Default for TwoPhase<'_> {
    fn default() -> Self {
        TwoPhase::new()
    }
}

impl<'m> TwoPhase<'m> {
    /// A distributed transaction with no participant yet.
    pub fn new() -> TwoPhase<'m> {
        TwoPhase {
            id: protocol::next_coordinator(),
            participants: Vec::new(),
            plan: Plan::default(),
            _not_send: PhantomData,
        }
    }

    /// Runs `work` in a distributed transaction that commits when `work`
    /// returns `Ok` and rolls back when it returns `Err` (the implicit
    /// form: no `commit` to forget).
    ///
    /// # Errors
    ///
    /// `work`'s own error, after everything was rolled back; or, converted
    /// into `E`, what [`commit`](Self::commit) returns.
    ///
    /// # Panics
    ///
    /// If `work` panics, every participant is rolled back and reported, and
    /// the panic continues.
    pub fn run<T, E, F>(work: F) -> Result<T, E>
    where
        F: FnOnce(&mut TwoPhase<'m>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut dtx = TwoPhase::new();
        match work(&mut dtx) {
            Ok(value) => {
                dtx.commit()?;
                Ok(value)
            }
            Err(e) => {
                dtx.rollback()?;
                Err(e)
            }
        }
    }

    /// Joins `manager`'s connection: waits for it (as
    /// [`ManagedConnection::lock`] does), holds it until this transaction
    /// ends, and begins a transaction on it. Joining the same manager again
    /// returns the same participant.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::lock`]; nothing was joined.
    pub fn join(&mut self, manager: &'m ManagedConnection) -> Result<ParticipantId> {
        let same = self
            .participants
            .iter()
            .position(|p| std::ptr::eq(p.shared(), manager.shared()));
        if let Some(index) = same {
            return Ok(self.id_of(index));
        }
        let epoch = manager.shared().join()?;
        Ok(self.push(Link::Joined(manager), epoch))
    }

    /// Joins one of `pool`'s connections: takes a free one (waiting as
    /// [`Pool::lock`] does), holds it until this transaction ends, and
    /// begins a transaction on it. Each call joins another connection, a
    /// participant of its own (two connections of one pool are two
    /// sessions on the same database, both committed or neither). At the
    /// end the connection goes back to the pool, clean.
    ///
    /// # Errors
    ///
    /// As [`Pool::lock`]; nothing was joined, and the connection is free
    /// again. [`Error::Reentrant`] at once if this transaction holds
    /// every connection of `pool` already (waiting would never end).
    pub fn join_pool(&mut self, pool: &'m Pool) -> Result<ParticipantId> {
        let joined = self
            .participants
            .iter()
            .filter(|p| pool.has_member(p.manager()))
            .count();
        if joined >= pool.size() {
            // Waiting for one of them would wait for this transaction.
            return Err(Error::Reentrant);
        }
        let (member, held) = pool.lease_member()?;
        let epoch = held.into_epoch();
        let epoch = member.shared().join_leased(epoch)?;
        Ok(self.push(Link::Joined(member), epoch))
    }

    /// Joins a connection opened for this transaction with `dsn` (a libpq
    /// connection string, as for [`ManagedConnection::new`]); it is closed
    /// when the transaction ends, committed or not. Joining the same `dsn`
    /// again returns the same participant.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if `dsn` cannot be read, [`Error::Connect`] if
    /// the connection cannot be opened; nothing was joined.
    pub fn join_dsn(&mut self, dsn: &str) -> Result<ParticipantId> {
        let same = self.participants.iter().position(|p| match &p.link {
            Link::Opened { dsn: joined, .. } => joined == dsn,
            Link::Joined(_) => false,
        });
        if let Some(index) = same {
            return Ok(self.id_of(index));
        }
        let manager = Box::new(ManagedConnection::new(dsn)?);
        let epoch = manager.shared().join()?;
        let link = Link::Opened {
            manager,
            dsn: dsn.to_owned(),
        };
        Ok(self.push(link, epoch))
    }

    /// Makes participant `id` the decider: the one that records the
    /// decision and commits in one phase, never preparing (see *The
    /// protocol*). Without it, the decider is the first participant by its
    /// settings as shown. Called again, the last choice holds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParticipant`] if `id` is not a participant of this
    /// transaction; the decider is as it was.
    pub fn decide_on(&mut self, id: ParticipantId) -> Result<()> {
        self.plan.decider = Some(self.index_of(id)?);
        Ok(())
    }

    /// The transaction of participant `id`, to run statements in.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParticipant`] if `id` is not a participant of this
    /// transaction.
    pub fn tx(&mut self, id: ParticipantId) -> Result<TxRef<'_>> {
        let index = self.index_of(id)?;
        let participant = &self.participants[index];
        // The lent `Tx` is scoped: dropping it releases nothing, and it
        // cannot be committed through `TxRef`.
        let held = Held::new(participant.shared(), participant.ticket.scoped().lent());
        Ok(TxRef { tx: Tx::open(held) })
    }

    /// Sends `NOTIFY channel, payload` once every participant has
    /// committed (on the deciding participant's connection), and not at
    /// all if the transaction rolls back. Sent with `pg_notify($1, $2)`:
    /// the channel and payload are parameters, never SQL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] if the channel is empty, longer than
    /// 63 bytes or contains a NUL, or if the payload is 8000 bytes or more
    /// or contains a NUL (PostgreSQL's limits); nothing was added.
    pub fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        self.plan.notify(None, channel, payload)
    }

    /// [`notify`](Self::notify), sent on participant `via`'s connection.
    ///
    /// # Errors
    ///
    /// As [`notify`](Self::notify), and [`Error::InvalidParticipant`].
    pub fn notify_via(&mut self, via: ParticipantId, channel: &str, payload: &str) -> Result<()> {
        let index = self.index_of(via)?;
        self.plan.notify(Some(index), channel, payload)
    }

    /// Commits on every participant, or on none (see the protocol above),
    /// then sends the notifications. The participants' connections are
    /// released (and the ones joined by DSN closed) whatever happens.
    ///
    /// # Errors
    ///
    /// - [`Error::VoteFailed`]: a participant could not prepare, or the
    ///   decider could not record or commit the decision (its
    ///   [`VoteStep`] says which); everything was rolled back.
    /// - [`Error::InDoubt`]: some participants are still prepared after the
    ///   decision (or with the decision unknown); run [`Recovery`]. No
    ///   notification was sent: they are in its `unsent_notifications`.
    /// - [`Error::NotifyFailed`]: everything committed, but a notification
    ///   could not be sent.
    /// - With one participant, as [`Tx::commit`].
    pub fn commit(mut self) -> Result<()> {
        let mut sessions = Sessions(&self.participants);
        run_blocking_steps(protocol::commit(&mut sessions, &mut self.plan))
    }

    /// Rolls every participant back. The connections are released (and the
    /// ones joined by DSN closed).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`] if a participant's connection had been taken
    /// over as abandoned (its transaction was rolled back then); the others
    /// are rolled back all the same.
    pub fn rollback(self) -> Result<()> {
        run_blocking_steps(protocol::rollback(&mut Sessions(&self.participants)))
    }

    fn push(&mut self, link: Link<'m>, epoch: u64) -> ParticipantId {
        self.participants.push(Participant {
            link,
            ticket: Ticket::new(epoch).opened(),
        });
        self.id_of(self.participants.len() - 1)
    }

    fn id_of(&self, index: usize) -> ParticipantId {
        ParticipantId::new(self.id, index)
    }

    fn index_of(&self, id: ParticipantId) -> Result<usize> {
        id.index_in(self.id, self.participants.len())
    }
}

/// The blocking front's answers to the protocol: each one a blocking call
/// on the participant's session, done inside the poll.
struct Sessions<'a, 'm>(&'a [Participant<'m>]);

impl Participants for Sessions<'_, '_> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn name(&self, index: usize) -> String {
        self.0[index].name()
    }

    async fn execute_in_tx(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        self.0[index].in_tx().execute(sql, params)
    }

    async fn query_one_in_tx(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        self.0[index].in_tx().query_one(sql, params)
    }

    async fn execute_alone(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        self.0[index]
            .conn(StatementScope::Autocommit)
            .execute(sql, params)
    }

    async fn query_one_alone(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        self.0[index]
            .conn(StatementScope::Autocommit)
            .query_one(sql, params)
    }

    async fn prepare(&mut self, index: usize, gid: &str) -> Result<Vote> {
        self.0[index]
            .in_tx()
            .with_session(|s| s.prepare_transaction(gid))
    }

    async fn commit(&mut self, index: usize) -> Result<()> {
        self.0[index].in_tx().with_session(|s| s.commit())
    }

    async fn roll_back(&mut self, index: usize) -> Result<()> {
        self.0[index].in_tx().with_session(|s| {
            s.rollback();
            Ok(())
        })
    }

    async fn finish_prepared(&mut self, index: usize, gid: &str, commit: bool) -> Result<()> {
        self.0[index]
            .in_tx()
            .with_session(|s| s.finish_prepared(gid, commit))
    }
}

impl Drop for TwoPhase<'_> {
    /// Releases every participant's connection (closing those joined by
    /// DSN). A participant whose transaction is still open was not
    /// finished: it is rolled back and reported, like a dropped `Tx`.
    fn drop(&mut self) {
        if self.plan.has_left() {
            // A commit stopped in the middle (a panic): what it prepared is
            // finished as its stage allows.
            let mut sessions = Sessions(&self.participants);
            run_blocking_steps(protocol::finish_left(&mut sessions, &mut self.plan));
        }
        for participant in &self.participants {
            participant.shared().finish(participant.ticket);
        }
    }
}

impl fmt::Debug for TwoPhase<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoPhase")
            .field(
                "participants",
                &self
                    .participants
                    .iter()
                    .map(Participant::name)
                    .collect::<Vec<_>>(),
            )
            .field("notifications", &self.plan.notifications())
            .finish_non_exhaustive()
    }
}
