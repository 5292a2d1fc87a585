//! [`TwoPhase`] for async code: the blocking front's distributed
//! transaction (the same protocol, written once in
//! `two_phase/protocol.rs`), with participants that own their leases.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use postgres::types::ToSql;

use crate::Row;
use crate::aio::held::{self, Scope};
use crate::aio::lease::Lease;
use crate::aio::manager::ManagedConnection;
use crate::aio::pool::Pool;
use crate::aio::runtime;
use crate::aio::session::{Held, Holding, Inner, Slot};
use crate::aio::tx::Tx;
use crate::conn::request::{Execute, QueryOne};
use crate::conn::session::{SessionCore, Vote};
use crate::error::{Error, Result};
use crate::state::Open;
use crate::two_phase::ParticipantId;
use crate::two_phase::protocol::{self, Participants, Plan};

/// A distributed transaction for async code: work on several connections
/// that commits on all of them or on none. The protocol, its guarantees
/// and its errors are the blocking [`crate::TwoPhase`]'s, step for step
/// (the code is the same); [`Recovery`](crate::two_phase::Recovery)
/// finishes what a crashed coordinator left.
///
/// ```no_run
/// # async fn demo() -> pgtx::Result<()> {
/// use pgtx::aio::{ManagedConnection, TwoPhase};
///
/// let bank_a = ManagedConnection::new("host=localhost dbname=bank_a")?;
/// let mut dtx = TwoPhase::new();
/// let a = dtx.join(&bank_a).await?;                         // holds bank_a's connection
/// let b = dtx.join_dsn("host=localhost dbname=bank_b").await?; // a connection of its own
/// dtx.tx(a)?.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
/// dtx.tx(b)?.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1", &[]).await?;
/// dtx.notify("transfers", "1 -> 1: 10")?;                   // sent after the commit
/// dtx.commit().await?;                                      // both, or neither
/// # Ok(())
/// # }
/// ```
///
/// Unlike the blocking one it borrows nothing: each participant owns its
/// hold on its connection, so a `TwoPhase` is `Send` and `'static` (it may
/// move into a spawned task) and the managers it joined may be dropped
/// first.
///
/// # Dropped at any `.await`
///
/// - A `join` future dropped holds nothing: the connection it was taking
///   is let go as after a dropped `lock`.
/// - A statement's future dropped is cancelled and drained as on
///   [`Tx`]; the participant's transaction can then only roll back, so
///   `commit` fails its vote ([`Error::VoteFailed`]) and rolls everyone
///   back.
/// - The `TwoPhase` dropped unfinished (an early return, a panic, a
///   `commit` or `rollback` future dropped before it ended): every
///   participant whose transaction is still open is rolled back at once
///   on a task and reported as an unfinished transaction, like a dropped
///   `Tx`. A `commit` dropped between the votes and the second phase is a
///   coordinator that crashed there: what was prepared stays prepared, and
///   [`Recovery`](crate::two_phase::Recovery) commits it if and only if
///   the decision was recorded; each such participant is logged with its
///   state.
/// - A lent transaction ([`TxRef`]) forgotten with `mem::forget` takes its
///   session with it: the participant's connection is shut down from
///   outside at the next use (the server rolls back), reported as an
///   unfinished transaction, and that use fails with
///   [`Error::LeaseRevoked`].
#[must_use = "a distributed transaction must end with `commit().await` or `rollback().await`; dropping it rolls back"]
pub struct TwoPhase {
    id: u64,
    participants: Vec<Participant>,
    plan: Plan,
}

static_assertions::assert_impl_all!(TwoPhase: Send);

/// One participant: its manager, and its session while it holds the lease.
struct Participant {
    inner: Arc<Inner>,
    /// The DSN it was opened with, for `join_dsn` (which closes it at the
    /// end: this holds the only handle on its manager).
    dsn: Option<String>,
    /// The session, taken out of the manager: `None` while lent out by
    /// [`TwoPhase::tx`] (or lost with a lent transaction forgotten).
    slot: Option<Box<Slot>>,
    /// The generation of the session it holds: a lease taken over by a
    /// waiter since is no longer its own.
    generation: u64,
}

impl Participant {
    /// Joins `tx`'s connection: its session is held on by the participant.
    fn new(tx: Tx<'_, Open>, dsn: Option<String>) -> Participant {
        let lease = tx.into_lease();
        let inner = Arc::clone(lease.inner());
        let generation = inner.generation();
        Participant {
            inner,
            dsn,
            slot: lease.take_slot(),
            generation,
        }
    }

    fn name(&self) -> String {
        self.inner.settings().to_string()
    }

    /// The manager and the session, apart. A session lost with a
    /// forgotten [`TxRef`] is taken over now (see [`TwoPhase`]).
    fn parts(&mut self) -> Result<(&Inner, &mut SessionCore)> {
        if self.slot.is_none() {
            self.take_over_lost();
            return Err(Error::LeaseRevoked);
        }
        match &mut self.slot {
            Some(slot) => Ok((&self.inner, &mut slot.core)),
            None => Err(Error::LeaseRevoked),
        }
    }

    /// Its session was lost with a forgotten [`TxRef`]: taken over (the
    /// old connection shut down from outside, reported), and a new one,
    /// with nothing open, held in its place. If a waiter took the lease
    /// over first (or it was let go), nothing is held any more.
    fn take_over_lost(&mut self) {
        let Some(mut held) = self.inner.take_over_forgotten(self.generation) else {
            return;
        };
        self.generation = self.inner.generation();
        self.slot = held.take_slot();
        if let Some(slot) = &mut self.slot {
            slot.holding = Holding::Guard;
        }
    }

    /// Its transaction is over: let go without a report.
    fn done(&mut self) {
        if let Some(slot) = &mut self.slot {
            slot.holding = Holding::DoneTx;
        }
    }
}

impl Drop for Participant {
    /// Lets go of the session as a holder does (see `Lease`'s `Drop`): a
    /// transaction still open is rolled back on a task and reported.
    fn drop(&mut self) {
        if self.slot.is_none() {
            self.take_over_lost();
        }
        if let Some(mut slot) = self.slot.take() {
            // A voter left prepared (its coordinator stopped, or in doubt)
            // has nothing open on the session: the gid is Recovery's.
            slot.core.forget_prepared(&self.inner.shared);
            drop(Lease::new(Held::from_slot(slot, &self.inner)));
        }
    }
}

/// A participant's transaction, lent by [`TwoPhase::tx`]: a
/// [`Tx<'_, Open>`](Tx) (through `Deref`) with every statement method and
/// savepoints, whose `commit` and `rollback` the compiler refuses: only
/// the coordinator ends it.
///
/// ```compile_fail
/// # async fn demo(bank: pgtx::aio::ManagedConnection) -> pgtx::Result<()> {
/// let mut dtx = pgtx::aio::TwoPhase::new();
/// let a = dtx.join(&bank).await?;
/// dtx.tx(a)?.commit().await?; // cannot move the participant's Tx out
/// # Ok(())
/// # }
/// ```
pub struct TxRef<'d> {
    /// `None` only while it is dropped.
    tx: Option<Tx<'d, Open>>,
    /// Where the session goes back when this is dropped.
    home: &'d mut Option<Box<Slot>>,
    /// The participant's manager.
    owner: &'d Arc<Inner>,
}

static_assertions::assert_impl_all!(TxRef<'static>: Send);

impl<'d> Deref for TxRef<'d> {
    type Target = Tx<'d, Open>;

    fn deref(&self) -> &Tx<'d, Open> {
        match &self.tx {
            Some(tx) => tx,
            None => unreachable!("a lent transaction is there until it is dropped"),
        }
    }
}

impl DerefMut for TxRef<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.tx {
            Some(tx) => tx,
            None => unreachable!("a lent transaction is there until it is dropped"),
        }
    }
}

impl Drop for TxRef<'_> {
    /// Gives the session back to its participant (nothing is let go).
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let lease = tx.into_lease();
        if !Arc::ptr_eq(lease.inner(), self.owner) || !lease.is_lent() {
            // Another transaction was swapped in (`mem::swap` through
            // `DerefMut`): it ends as any dropped `Tx` does, and the
            // participant's, out in the open, can no longer commit.
            log::error!(
                "pgtx: a two-phase participant's transaction was swapped out of its TxRef; \
                 the participant can no longer commit"
            );
            return;
        }
        let mut slot = lease.take_slot();
        if let Some(slot) = &mut slot {
            slot.lent = false;
        }
        *self.home = slot;
    }
}

impl fmt::Debug for TxRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("aio::TxRef").field(&**self).finish()
    }
}

impl Default for TwoPhase {
    fn default() -> Self {
        TwoPhase::new()
    }
}

impl TwoPhase {
    /// A distributed transaction with no participant yet.
    pub fn new() -> TwoPhase {
        TwoPhase {
            id: protocol::next_coordinator(),
            participants: Vec::new(),
            plan: Plan::default(),
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
    pub async fn join(&mut self, manager: &ManagedConnection) -> Result<ParticipantId> {
        let same = self
            .participants
            .iter()
            .position(|p| Arc::ptr_eq(&p.inner, manager.inner()));
        if let Some(index) = same {
            return Ok(self.id_of(index));
        }
        let tx = manager.lock().await?.begin().await?;
        Ok(self.push(Participant::new(tx, None)))
    }

    /// Joins one of `pool`'s connections: takes a free one (waiting as
    /// [`Pool::lock`] does), holds it until this transaction ends, and
    /// begins a transaction on it. Each call joins another connection, a
    /// participant of its own; at the end it goes back to the pool, clean.
    ///
    /// # Errors
    ///
    /// As [`Pool::lock`]; nothing was joined. [`Error::Reentrant`] at once
    /// if this transaction holds every connection of `pool` already
    /// (waiting would never end).
    pub async fn join_pool(&mut self, pool: &Pool) -> Result<ParticipantId> {
        let joined = self
            .participants
            .iter()
            .filter(|p| pool.has_member(&p.inner))
            .count();
        if joined >= pool.size() {
            return Err(Error::Reentrant);
        }
        let tx = pool.lock().await?.begin().await?;
        Ok(self.push(Participant::new(tx, None)))
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
    pub async fn join_dsn(&mut self, dsn: &str) -> Result<ParticipantId> {
        let same = self
            .participants
            .iter()
            .position(|p| p.dsn.as_deref() == Some(dsn));
        if let Some(index) = same {
            return Ok(self.id_of(index));
        }
        let manager = ManagedConnection::new(dsn)?;
        let tx = manager.lock().await?.begin().await?;
        Ok(self.push(Participant::new(tx, Some(dsn.to_owned()))))
    }

    /// Makes participant `id` the decider (see the blocking
    /// [`crate::TwoPhase::decide_on`]).
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
    /// transaction; [`Error::LeaseRevoked`] if an earlier one was forgotten
    /// (see *Dropped at any `.await`*).
    pub fn tx(&mut self, id: ParticipantId) -> Result<TxRef<'_>> {
        let index = self.index_of(id)?;
        let participant = &mut self.participants[index];
        participant.parts()?;
        let Participant { inner, slot, .. } = participant;
        let Some(mut taken) = slot.take() else {
            return Err(Error::LeaseRevoked);
        };
        taken.lent = true;
        let tx = Tx::open(Lease::new(Held::from_slot(taken, inner)));
        Ok(TxRef {
            tx: Some(tx),
            home: slot,
            owner: inner,
        })
    }

    /// Sends `NOTIFY channel, payload` once every participant has
    /// committed, and not at all if the transaction rolls back (see the
    /// blocking [`crate::TwoPhase::notify`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] if PostgreSQL would refuse the
    /// channel or payload; nothing was added.
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

    /// Commits on every participant, or on none, then sends the
    /// notifications. The participants' connections are released (and the
    /// ones joined by DSN closed) whatever happens.
    ///
    /// # Errors
    ///
    /// As the blocking [`crate::TwoPhase::commit`]:
    /// [`Error::VoteFailed`] (everything rolled back),
    /// [`Error::InDoubt`] (run [`Recovery`](crate::two_phase::Recovery)),
    /// [`Error::NotifyFailed`] (committed, a notification not sent); with
    /// one participant, as [`Tx::commit`].
    pub async fn commit(mut self) -> Result<()> {
        let committed =
            protocol::commit(&mut Sessions(&mut self.participants), &mut self.plan).await;
        if committed.is_ok() {
            self.participants.iter_mut().for_each(Participant::done);
        }
        committed
    }

    /// Rolls every participant back. The connections are released (and the
    /// ones joined by DSN closed).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`] if a participant's connection had been taken
    /// over as abandoned (its transaction was rolled back then); the others
    /// are rolled back all the same.
    pub async fn rollback(mut self) -> Result<()> {
        protocol::rollback(&mut Sessions(&mut self.participants)).await
    }

    fn push(&mut self, participant: Participant) -> ParticipantId {
        self.participants.push(participant);
        self.id_of(self.participants.len() - 1)
    }

    fn id_of(&self, index: usize) -> ParticipantId {
        ParticipantId::new(self.id, index)
    }

    fn index_of(&self, id: ParticipantId) -> Result<usize> {
        id.index_in(self.id, self.participants.len())
    }
}

impl Drop for TwoPhase {
    /// Lets go of every participant (see *Dropped at any `.await`*); after
    /// a `commit` stopped in the middle, what it prepared is finished first,
    /// on a task.
    fn drop(&mut self) {
        if !self.plan.has_left() {
            return; // each participant lets go as it is dropped
        }
        let mut participants = std::mem::take(&mut self.participants);
        let mut plan = std::mem::take(&mut self.plan);
        let finish = async move {
            protocol::finish_left(&mut Sessions(&mut participants), &mut plan).await;
        };
        if runtime::spawn(finish).is_err() {
            log::error!(
                "pgtx: a two-phase commit stopped in the middle outside a runtime: what it \
                 prepared is left for Recovery"
            );
        }
    }
}

impl fmt::Debug for TwoPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::TwoPhase")
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

/// The async front's answers to the protocol, on the participants'
/// sessions.
struct Sessions<'a>(&'a mut [Participant]);

impl Sessions<'_> {
    async fn statement<K: crate::conn::request::StatementKind>(
        &mut self,
        index: usize,
        scope: Scope,
        sql: &str,
        kind: K,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<K::Output> {
        let (inner, core) = self.0[index].parts()?;
        held::statement(inner, core, scope, sql, kind, params).await
    }
}

impl Participants for Sessions<'_> {
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
        let in_tx = Scope::Transaction { depth: 0 };
        self.statement(index, in_tx, sql, Execute, params).await
    }

    async fn query_one_in_tx(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        let in_tx = Scope::Transaction { depth: 0 };
        self.statement(index, in_tx, sql, QueryOne, params).await
    }

    async fn execute_alone(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        self.statement(index, Scope::Autocommit, sql, Execute, params)
            .await
    }

    async fn query_one_alone(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        self.statement(index, Scope::Autocommit, sql, QueryOne, params)
            .await
    }

    async fn prepare(&mut self, index: usize, gid: &str) -> Result<Vote> {
        let participant = &mut self.0[index];
        let (inner, core) = participant.parts()?;
        held::prepare(inner, core, Scope::Transaction { depth: 0 }, None).await?;
        let vote = core.prepare_transaction(&inner.shared, gid).await;
        // Prepared or not, the transaction left the session.
        participant.done();
        vote
    }

    async fn commit(&mut self, index: usize) -> Result<()> {
        let participant = &mut self.0[index];
        let (inner, core) = participant.parts()?;
        held::prepare(inner, core, Scope::Transaction { depth: 0 }, None).await?;
        let committed = core.commit(&inner.shared).await;
        participant.done();
        committed
    }

    async fn roll_back(&mut self, index: usize) -> Result<()> {
        let participant = &mut self.0[index];
        let (inner, core) = participant.parts()?;
        match held::prepare(inner, core, Scope::Transaction { depth: 0 }, None).await {
            Err(Error::LeaseRevoked) => return Err(Error::LeaseRevoked),
            Err(e) => log::debug!("pgtx: before ROLLBACK: {e}"),
            Ok(()) => {}
        }
        core.rollback(&inner.shared).await;
        participant.done();
        Ok(())
    }

    async fn finish_prepared(&mut self, index: usize, gid: &str, commit: bool) -> Result<()> {
        let (inner, core) = self.0[index].parts()?;
        inner.check_current(core)?;
        inner.tidy(core).await;
        core.start_finish_prepared()?;
        // Any session on the same database may send it: a connection that
        // broke is replaced first.
        inner.ensure_open(core).await?;
        core.finish_prepared(&inner.shared, gid, commit).await
    }
}
