//! Two-phase commit across connections: work on several PostgreSQL
//! databases commits everywhere or nowhere (the psycopg2transaction port).
//!
//! See [`TwoPhase`] for the protocol and its guarantees, and [`Recovery`]
//! for finishing what a crashed coordinator left prepared.

mod gid;
mod recovery;

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use postgres::error::SqlState;

use crate::blocking::held::{Conn, Held, StatementScope};
use crate::blocking::lease::Ticket;
use crate::blocking::session::Vote;
use crate::blocking::shared::Shared;
use crate::error::{Error, Result};
use crate::machine::ident::check_notification;
use crate::manager::ManagedConnection;
use crate::pool::Pool;
use crate::state::Open;
use crate::tx::Tx;

pub use self::recovery::{Decision, PreparedTransaction, Purged, Recovered, Recovery};
pub use crate::error::VoteStep;

/// The table, in the deciding participant's database, whose row records
/// the decision to commit (see [`TwoPhase`]).
pub const DECISIONS_TABLE: &str = "pgtx_two_phase_decisions";

const CREATE_DECISIONS: &str = "CREATE TABLE IF NOT EXISTS pgtx_two_phase_decisions (
    key text PRIMARY KEY,
    decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
    decided_at timestamptz NOT NULL DEFAULT now())";

/// How often the second phase tries a participant whose connection broke
/// (reconnecting each time) before it reports it in doubt.
const SECOND_PHASE_TRIES: usize = 3;

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
    /// Chosen by [`decide_on`](Self::decide_on).
    decider: Option<usize>,
    notifications: Vec<Notification>,
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

/// A notification to send once the transaction has committed.
struct Notification {
    /// The participant to send it on; the decider when `None`.
    via: Option<usize>,
    channel: String,
    payload: String,
}

impl Default for TwoPhase<'_> {
    fn default() -> Self {
        TwoPhase::new()
    }
}

impl<'m> TwoPhase<'m> {
    /// A distributed transaction with no participant yet.
    pub fn new() -> TwoPhase<'m> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TwoPhase {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            participants: Vec::new(),
            decider: None,
            notifications: Vec::new(),
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
        self.decider = Some(self.index_of(id)?);
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
        let held = Held::new(participant.shared(), participant.ticket.scoped());
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
        self.add_notification(None, channel, payload)
    }

    /// [`notify`](Self::notify), sent on participant `via`'s connection.
    ///
    /// # Errors
    ///
    /// As [`notify`](Self::notify), and [`Error::InvalidParticipant`].
    pub fn notify_via(&mut self, via: ParticipantId, channel: &str, payload: &str) -> Result<()> {
        let index = self.index_of(via)?;
        self.add_notification(Some(index), channel, payload)
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
        let order = self.commit_order();
        match order.as_slice() {
            [] => {}
            [only] => self.participants[*only]
                .in_tx()
                .with_session(|s| s.commit())?,
            [decider, voters @ ..] => {
                if let Err(mut e) = self.commit_two_phase(*decider, voters) {
                    if let Error::InDoubt {
                        unsent_notifications,
                        ..
                    } = &mut e
                    {
                        *unsent_notifications = std::mem::take(&mut self.notifications)
                            .into_iter()
                            .map(|n| (n.channel, n.payload))
                            .collect();
                    }
                    return Err(e);
                }
            }
        }
        self.send_notifications(order.first().copied())
    }

    /// Rolls back every participant. The connections are released (and the
    /// ones joined by DSN closed).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`] if a participant's connection had been taken
    /// over as abandoned (its transaction was rolled back then); the others
    /// are rolled back all the same.
    pub fn rollback(self) -> Result<()> {
        let mut first_error = None;
        for participant in &self.participants {
            let rolled_back = participant.in_tx().with_session(|s| {
                s.rollback();
                Ok(())
            });
            if let Err(e) = rolled_back {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn push(&mut self, link: Link<'m>, epoch: u64) -> ParticipantId {
        self.participants.push(Participant {
            link,
            ticket: Ticket::new(epoch).opened(),
        });
        self.id_of(self.participants.len() - 1)
    }

    fn id_of(&self, index: usize) -> ParticipantId {
        ParticipantId {
            coordinator: self.id,
            index,
        }
    }

    fn index_of(&self, id: ParticipantId) -> Result<usize> {
        if id.coordinator == self.id && id.index < self.participants.len() {
            Ok(id.index)
        } else {
            Err(Error::InvalidParticipant)
        }
    }

    fn add_notification(&mut self, via: Option<usize>, channel: &str, payload: &str) -> Result<()> {
        check_notification(channel, Some(payload))?;
        self.notifications.push(Notification {
            via,
            channel: channel.to_owned(),
            payload: payload.to_owned(),
        });
        Ok(())
    }

    /// Participants by their settings as shown, then by when they joined:
    /// the same databases are always committed in the same order. The
    /// decider chosen with [`decide_on`](Self::decide_on) comes first.
    fn commit_order(&self) -> Vec<usize> {
        let mut order: Vec<(bool, String, usize)> = self
            .participants
            .iter()
            .enumerate()
            .map(|(i, p)| (self.decider != Some(i), p.name(), i))
            .collect();
        order.sort();
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    fn commit_two_phase(&mut self, decider: usize, voters: &[usize]) -> Result<()> {
        let key = gid::Key::next();
        // 1. The decision row, in the decider's own transaction.
        let tag = match self.write_decision(decider, &key) {
            Ok(tag) => tag,
            Err(e) => return Err(self.abort(&[], decider, VoteStep::RecordDecision, e)),
        };
        // 2. The votes.
        let mut prepared: Vec<Voted> = Vec::new();
        for (place, &voter) in voters.iter().enumerate() {
            let gid = key.gid(tag, place + 1);
            let vote = self.participants[voter]
                .in_tx()
                .with_session(|s| s.prepare_transaction(&gid));
            match vote {
                Ok(Vote::Prepared { xid }) => prepared.push(Voted { voter, gid, xid }),
                Ok(Vote::Nothing) => {}
                Err(e) => {
                    if matches!(e, Error::ConnectionLost(_)) {
                        // The server may have prepared it before the
                        // connection broke.
                        prepared.push(Voted {
                            voter,
                            gid,
                            xid: None,
                        });
                    }
                    return Err(self.abort(&prepared, voter, VoteStep::Prepare, e));
                }
            }
        }
        // 3. The decision.
        let decided = self.participants[decider]
            .in_tx()
            .with_session(|s| s.commit());
        match decided {
            Ok(()) => {}
            Err(e @ Error::CommitOutcomeUnknown(_)) => {
                return Err(Error::InDoubt {
                    unsent_notifications: Vec::new(),
                    decided: false,
                    committed: Vec::new(),
                    in_doubt: prepared.iter().map(|v| self.name(v.voter)).collect(),
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(self.abort(&prepared, decider, VoteStep::DeciderCommit, e)),
        }
        // 4. The second phase.
        let mut committed = vec![self.name(decider)];
        let mut in_doubt = Vec::new();
        let mut last = None;
        for voted in &prepared {
            match self.finish_prepared(voted, true) {
                Ok(()) => committed.push(self.name(voted.voter)),
                Err(e) => {
                    in_doubt.push(self.name(voted.voter));
                    last = Some(e);
                }
            }
        }
        if let Some(e) = last {
            return Err(Error::InDoubt {
                unsent_notifications: Vec::new(),
                decided: true,
                committed,
                in_doubt,
                source: Box::new(e),
            });
        }
        let forget = self.participants[decider]
            .conn(StatementScope::Autocommit)
            .execute(
                "DELETE FROM pgtx_two_phase_decisions WHERE key = $1",
                &[&key.as_str()],
            );
        if let Err(e) = forget {
            log::warn!(
                "pgtx: committed everywhere, but the decision row {} stays: {e}",
                key.as_str()
            );
        }
        Ok(())
    }

    /// Writes the decision row into the decider's open transaction; returns
    /// the decider's identity for the gids.
    fn write_decision(&self, decider: usize, key: &gid::Key) -> Result<gid::DatabaseId> {
        let participant = &self.participants[decider];
        let tx = participant.in_tx();
        let name = participant.name();
        if !decisions_table_known(&name) {
            tx.execute(CREATE_DECISIONS, &[])?;
        }
        let row = tx.query_one(
            &format!(
                "INSERT INTO pgtx_two_phase_decisions (key, decision) VALUES ($1, 'commit')
                 RETURNING {}",
                gid::IDENTIFY_SQL
            ),
            &[&key.as_str()],
        );
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                // Dropped since, perhaps: look again next time.
                forget_decisions_table(&name);
                return Err(e);
            }
        };
        remember_decisions_table(name);
        gid::DatabaseId::from_row(&row, 0).map_err(Error::Db)
    }

    /// Rolls every participant back after `failed` could not vote (or
    /// decide); the error to return.
    fn abort(&self, prepared: &[Voted], failed: usize, step: VoteStep, e: Error) -> Error {
        for (index, participant) in self.participants.iter().enumerate() {
            if prepared.iter().any(|v| v.voter == index) {
                continue;
            }
            let _ = participant.in_tx().with_session(|s| {
                s.rollback();
                Ok(())
            });
        }
        for voted in prepared {
            if let Err(e) = self.finish_prepared(voted, false) {
                log::warn!(
                    "pgtx: could not roll back prepared transaction {} on {}; recovery will: {e}",
                    voted.gid,
                    self.name(voted.voter)
                );
            }
        }
        Error::VoteFailed {
            participant: self.name(failed),
            step,
            source: Box::new(e),
        }
    }

    /// `COMMIT PREPARED` / `ROLLBACK PREPARED`, retried on a new connection
    /// when the old one broke.
    ///
    /// A gid the server no longer has was finished by someone: by an
    /// earlier attempt whose answer was lost, by recovery, or by hand. A
    /// rollback is then done either way (nobody commits without the
    /// decision, which was not made). A commit is only taken as done when
    /// the server says the voter's transaction id committed
    /// (`txid_status`); otherwise it is [`Error::PreparedTransactionGone`],
    /// which the caller reports in doubt, never `Ok`.
    fn finish_prepared(&self, voted: &Voted, commit: bool) -> Result<()> {
        let mut last = None;
        for _ in 0..SECOND_PHASE_TRIES {
            let result = self.participants[voted.voter]
                .in_tx()
                .with_session(|s| s.finish_prepared(&voted.gid, commit));
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                    return if commit {
                        self.prove_committed(voted)
                    } else {
                        Ok(())
                    };
                }
                Err(e @ (Error::ConnectionLost(_) | Error::Connect(_))) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::ConnectionLost(None)))
    }

    /// `Ok` if the server says `voted`'s transaction committed; otherwise
    /// why that cannot be said.
    fn prove_committed(&self, voted: &Voted) -> Result<()> {
        let status = match voted.xid {
            None => None,
            Some(xid) => self.participants[voted.voter]
                .conn(StatementScope::Autocommit)
                .query_one("SELECT txid_status($1)", &[&xid])?
                .try_get::<_, Option<String>>(0)
                .map_err(Error::Db)?,
        };
        if status.as_deref() == Some("committed") {
            return Ok(());
        }
        Err(Error::PreparedTransactionGone {
            participant: self.name(voted.voter),
            gid: voted.gid.clone(),
            rolled_back: status.as_deref() == Some("aborted"),
        })
    }

    fn send_notifications(&mut self, decider: Option<usize>) -> Result<()> {
        let mut first_error = None;
        for n in std::mem::take(&mut self.notifications) {
            let Some(via) = n.via.or(decider) else {
                continue;
            };
            let sent = self.participants[via]
                .conn(StatementScope::Autocommit)
                .execute("SELECT pg_notify($1, $2)", &[&n.channel, &n.payload]);
            if let Err(e) = sent {
                first_error.get_or_insert(Error::NotifyFailed {
                    channel: n.channel,
                    source: Box::new(e),
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn name(&self, index: usize) -> String {
        self.participants[index].name()
    }
}

/// A voter's prepared transaction.
struct Voted {
    voter: usize,
    gid: String,
    /// Its transaction id, when known: what `txid_status` asks about.
    xid: Option<i64>,
}

/// Databases (by their settings as shown) where this process has written
/// a decision row: the table is there, and `CREATE TABLE IF NOT EXISTS`
/// (a lock and a notice each time) is skipped.
static DECISION_TABLES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn decisions_table_known(name: &str) -> bool {
    DECISION_TABLES.lock().iter().any(|known| known == name)
}

fn remember_decisions_table(name: String) {
    let mut known = DECISION_TABLES.lock();
    if !known.contains(&name) {
        known.push(name);
    }
}

fn forget_decisions_table(name: &str) {
    DECISION_TABLES.lock().retain(|known| known != name);
}

impl Drop for TwoPhase<'_> {
    /// Releases every participant's connection (closing those joined by
    /// DSN). A participant whose transaction is still open was not
    /// finished: it is rolled back and reported, like a dropped `Tx`.
    fn drop(&mut self) {
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
            .field("notifications", &self.notifications.len())
            .finish_non_exhaustive()
    }
}
