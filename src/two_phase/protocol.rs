//! The two-phase commit protocol, written once for both fronts: the
//! sequence of decisions over the participants' sessions (see
//! [`TwoPhase`](crate::TwoPhase) for what it guarantees). Each front
//! answers the protocol's requests with its own sessions through
//! [`Participants`]; the blocking front's answers block inside their poll,
//! the async front's await.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::types::ToSql;

use crate::Row;
use crate::conn::session::Vote;
use crate::error::{Error, Result, VoteStep};
use crate::machine::ident::check_notification;
use crate::two_phase::gid;

pub(crate) const CREATE_DECISIONS: &str = "CREATE TABLE IF NOT EXISTS pgtx_two_phase_decisions (
    key text PRIMARY KEY,
    decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
    decided_at timestamptz NOT NULL DEFAULT now())";

/// How often the second phase tries a participant whose connection broke
/// (reconnecting each time) before it reports it in doubt.
const SECOND_PHASE_TRIES: usize = 3;

/// A number for a new coordinator, unique in the process (across both
/// fronts): the participant ids it hands out carry it.
pub(crate) fn next_coordinator() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the protocol asks of the participants of one distributed
/// transaction, named by their index. Each participant holds its
/// connection, with a transaction open on it, until the coordinator ends.
pub(crate) trait Participants {
    /// How many there are.
    fn count(&self) -> usize;

    /// How errors and the commit order name participant `index`: its
    /// settings, as shown (no password).
    fn name(&self, index: usize) -> String;

    /// A statement in participant `index`'s open transaction.
    async fn execute_in_tx(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64>;

    /// A query of one row in participant `index`'s open transaction.
    async fn query_one_in_tx(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row>;

    /// A statement on its own, on participant `index`'s connection once
    /// its transaction is over.
    async fn execute_alone(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64>;

    /// A query of one row on its own, on participant `index`'s connection
    /// once its transaction is over.
    async fn query_one_alone(
        &mut self,
        index: usize,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row>;

    /// The vote: `PREPARE TRANSACTION gid` (see
    /// `SessionCore::prepare_transaction`).
    async fn prepare(&mut self, index: usize, gid: &str) -> Result<Vote>;

    /// Commits participant `index`'s transaction in one phase.
    async fn commit(&mut self, index: usize) -> Result<()>;

    /// Rolls participant `index`'s transaction back.
    async fn roll_back(&mut self, index: usize) -> Result<()>;

    /// `COMMIT PREPARED gid` (or `ROLLBACK PREPARED`), on a new connection
    /// if the old one broke.
    async fn finish_prepared(&mut self, index: usize, gid: &str, commit: bool) -> Result<()>;
}

/// What a coordinator decides besides its participants: who decides, and
/// what to notify once committed.
#[derive(Default)]
pub(crate) struct Plan {
    /// Chosen with `decide_on`.
    pub(crate) decider: Option<usize>,
    notifications: Vec<Notification>,
    /// How far a commit under way has got, and what it has prepared: what
    /// a coordinator dropped in the middle (an async `commit` future
    /// dropped) must finish (see [`finish_left`]).
    stage: Stage,
    prepared: Vec<Voted>,
}

/// How far a commit has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    /// Voting: no decision can have been made.
    #[default]
    Voting,
    /// The decider's `COMMIT` is under way: the decision is unknown until
    /// its answer.
    Deciding,
    /// Decided: every prepared voter is to be committed.
    Decided,
}

/// A notification to send once the transaction has committed.
struct Notification {
    /// The participant to send it on; the decider when `None`.
    via: Option<usize>,
    channel: String,
    payload: String,
}

impl Plan {
    /// Adds `NOTIFY channel, payload` to send after the commit, on
    /// participant `via` (the decider when `None`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] if PostgreSQL would refuse it;
    /// nothing was added.
    pub(crate) fn notify(
        &mut self,
        via: Option<usize>,
        channel: &str,
        payload: &str,
    ) -> Result<()> {
        check_notification(channel, Some(payload))?;
        self.notifications.push(Notification {
            via,
            channel: channel.to_owned(),
            payload: payload.to_owned(),
        });
        Ok(())
    }

    /// How many notifications wait for the commit.
    pub(crate) fn notifications(&self) -> usize {
        self.notifications.len()
    }

    /// Whether a commit stopped in the middle left voters prepared (see
    /// [`finish_left`]).
    pub(crate) fn has_left(&self) -> bool {
        !self.prepared.is_empty()
    }
}

/// Commits on every participant, or on none, then sends the
/// notifications (see `TwoPhase::commit` for the errors).
pub(crate) async fn commit<P: Participants>(p: &mut P, plan: &mut Plan) -> Result<()> {
    let order = commit_order(p, plan.decider);
    match order.as_slice() {
        [] => {}
        [only] => p.commit(*only).await?,
        [decider, voters @ ..] => {
            let done = commit_two_phase(p, plan, *decider, voters).await;
            // Finished or reported either way: nothing is left.
            plan.prepared.clear();
            if let Err(mut e) = done {
                if let Error::InDoubt {
                    unsent_notifications,
                    ..
                } = &mut e
                {
                    *unsent_notifications = std::mem::take(&mut plan.notifications)
                        .into_iter()
                        .map(|n| (n.channel, n.payload))
                        .collect();
                }
                return Err(e);
            }
        }
    }
    send_notifications(p, plan, order.first().copied()).await
}

/// Rolls every participant back; the first error, the others rolled back
/// all the same.
pub(crate) async fn rollback<P: Participants>(p: &mut P) -> Result<()> {
    let mut first_error = None;
    for index in 0..p.count() {
        if let Err(e) = p.roll_back(index).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Participants by their settings as shown, then by when they joined: the
/// same databases are always committed in the same order. The decider
/// chosen with `decide_on` comes first.
fn commit_order<P: Participants>(p: &P, decider: Option<usize>) -> Vec<usize> {
    let mut order: Vec<(bool, String, usize)> = (0..p.count())
        .map(|i| (decider != Some(i), p.name(i), i))
        .collect();
    order.sort();
    order.into_iter().map(|(_, _, i)| i).collect()
}

/// A voter's prepared transaction.
struct Voted {
    voter: usize,
    gid: String,
    /// Its transaction id, when known: what `txid_status` asks about.
    xid: Option<i64>,
}

async fn commit_two_phase<P: Participants>(
    p: &mut P,
    plan: &mut Plan,
    decider: usize,
    voters: &[usize],
) -> Result<()> {
    let key = gid::Key::next();
    plan.stage = Stage::Voting;
    // 1. The decision row, in the decider's own transaction.
    let tag = match write_decision(p, decider, &key).await {
        Ok(tag) => tag,
        Err(e) => return Err(abort(p, &[], decider, VoteStep::RecordDecision, e).await),
    };
    // 2. The votes. Each is counted as prepared before it is sent: a vote
    // cut off on the way (a broken connection, a dropped future) may have
    // prepared.
    for (place, &voter) in voters.iter().enumerate() {
        let gid = key.gid(tag, place + 1);
        plan.prepared.push(Voted {
            voter,
            gid: gid.clone(),
            xid: None,
        });
        match p.prepare(voter, &gid).await {
            Ok(Vote::Prepared { xid }) => {
                if let Some(voted) = plan.prepared.last_mut() {
                    voted.xid = xid;
                }
            }
            Ok(Vote::Nothing) => {
                plan.prepared.pop();
            }
            Err(e) => {
                if !matches!(e, Error::ConnectionLost(_)) {
                    // Refused: nothing was prepared.
                    plan.prepared.pop();
                }
                return Err(abort(p, &plan.prepared, voter, VoteStep::Prepare, e).await);
            }
        }
    }
    let prepared = &plan.prepared;
    // 3. The decision.
    plan.stage = Stage::Deciding;
    match p.commit(decider).await {
        Ok(()) => plan.stage = Stage::Decided,
        Err(e @ Error::CommitOutcomeUnknown(_)) => {
            return Err(Error::InDoubt {
                unsent_notifications: Vec::new(),
                decided: false,
                committed: Vec::new(),
                in_doubt: prepared.iter().map(|v| p.name(v.voter)).collect(),
                source: Box::new(e),
            });
        }
        Err(e) => {
            // Refused: nothing was decided, so what was prepared is rolled
            // back, also by a coordinator stopped in the middle of it.
            plan.stage = Stage::Voting;
            let prepared = &plan.prepared;
            return Err(abort(p, prepared, decider, VoteStep::DeciderCommit, e).await);
        }
    }
    // 4. The second phase.
    let mut committed = vec![p.name(decider)];
    let mut in_doubt = Vec::new();
    let mut last = None;
    for voted in prepared {
        match finish_prepared(p, voted, true).await {
            Ok(()) => committed.push(p.name(voted.voter)),
            Err(e) => {
                in_doubt.push(p.name(voted.voter));
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
    // Every voter committed: nothing is left for a stopped coordinator.
    plan.prepared.clear();
    let forget = p
        .execute_alone(
            decider,
            "DELETE FROM pgtx_two_phase_decisions WHERE key = $1",
            &[&key.as_str()],
        )
        .await;
    if let Err(e) = forget {
        log::warn!(
            "pgtx: committed everywhere, but the decision row {} stays: {e}",
            key.as_str()
        );
    }
    Ok(())
}

/// Finishes what a commit stopped in the middle left prepared (its
/// coordinator dropped: an async `commit` future dropped): rolled back if
/// the decider had not sent its `COMMIT` (it never will: its transaction
/// is rolled back with its session), committed if the decision was made.
/// If the decider's `COMMIT` was cut off on its way the decision is
/// unknown here: they are left to [`Recovery`](super::Recovery), which
/// reads the decision row, and logged.
pub(crate) async fn finish_left<P: Participants>(p: &mut P, plan: &mut Plan) {
    let left = std::mem::take(&mut plan.prepared);
    let commit = match plan.stage {
        Stage::Voting => false,
        Stage::Decided => true,
        Stage::Deciding => {
            for voted in &left {
                log::error!(
                    "pgtx: a two-phase commit stopped while its decision was under way: \
                     prepared transaction {} on {} is left for Recovery",
                    voted.gid,
                    p.name(voted.voter)
                );
            }
            return;
        }
    };
    for voted in &left {
        match finish_prepared(p, voted, commit).await {
            Ok(()) => log::warn!(
                "pgtx: a two-phase commit stopped in the middle; prepared transaction {} on {} \
                 was {}",
                voted.gid,
                p.name(voted.voter),
                if commit { "committed" } else { "rolled back" }
            ),
            Err(e) => log::error!(
                "pgtx: a two-phase commit stopped in the middle; prepared transaction {} on {} \
                 is left for Recovery: {e}",
                voted.gid,
                p.name(voted.voter)
            ),
        }
    }
}

/// Writes the decision row into the decider's open transaction; returns
/// the decider's identity for the gids.
async fn write_decision<P: Participants>(
    p: &mut P,
    decider: usize,
    key: &gid::Key,
) -> Result<gid::DatabaseId> {
    let name = p.name(decider);
    if !decisions_table_known(&name) {
        p.execute_in_tx(decider, CREATE_DECISIONS, &[]).await?;
    }
    let insert = format!(
        "INSERT INTO pgtx_two_phase_decisions (key, decision) VALUES ($1, 'commit')
         RETURNING {}",
        gid::IDENTIFY_SQL
    );
    let row = match p.query_one_in_tx(decider, &insert, &[&key.as_str()]).await {
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
async fn abort<P: Participants>(
    p: &mut P,
    prepared: &[Voted],
    failed: usize,
    step: VoteStep,
    e: Error,
) -> Error {
    for index in 0..p.count() {
        if prepared.iter().any(|v| v.voter == index) {
            continue;
        }
        if let Err(e) = p.roll_back(index).await {
            log::debug!(
                "pgtx: rolling back {} after a failed vote: {e}",
                p.name(index)
            );
        }
    }
    for voted in prepared {
        if let Err(e) = finish_prepared(p, voted, false).await {
            log::warn!(
                "pgtx: could not roll back prepared transaction {} on {}; recovery will: {e}",
                voted.gid,
                p.name(voted.voter)
            );
        }
    }
    Error::VoteFailed {
        participant: p.name(failed),
        step,
        source: Box::new(e),
    }
}

/// `COMMIT PREPARED` / `ROLLBACK PREPARED`, retried on a new connection
/// when the old one broke.
///
/// A gid the server no longer has was finished by someone: by an earlier
/// attempt whose answer was lost, by recovery, or by hand. A rollback is
/// then done either way (nobody commits without the decision, which was
/// not made). A commit is only taken as done when the server says the
/// voter's transaction id committed (`txid_status`); otherwise it is
/// [`Error::PreparedTransactionGone`], which the caller reports in doubt,
/// never `Ok`.
async fn finish_prepared<P: Participants>(p: &mut P, voted: &Voted, commit: bool) -> Result<()> {
    let mut last = None;
    for _ in 0..SECOND_PHASE_TRIES {
        match p.finish_prepared(voted.voter, &voted.gid, commit).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                return if commit {
                    prove_committed(p, voted).await
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

/// `Ok` if the server says `voted`'s transaction committed; otherwise why
/// that cannot be said.
async fn prove_committed<P: Participants>(p: &mut P, voted: &Voted) -> Result<()> {
    let status = match voted.xid {
        None => None,
        Some(xid) => p
            .query_one_alone(voted.voter, "SELECT txid_status($1)", &[&xid])
            .await?
            .try_get::<_, Option<String>>(0)
            .map_err(Error::Db)?,
    };
    if status.as_deref() == Some("committed") {
        return Ok(());
    }
    Err(Error::PreparedTransactionGone {
        participant: p.name(voted.voter),
        gid: voted.gid.clone(),
        rolled_back: status.as_deref() == Some("aborted"),
    })
}

async fn send_notifications<P: Participants>(
    p: &mut P,
    plan: &mut Plan,
    decider: Option<usize>,
) -> Result<()> {
    let mut first_error = None;
    for n in std::mem::take(&mut plan.notifications) {
        let Some(via) = n.via.or(decider) else {
            continue;
        };
        let sent = p
            .execute_alone(via, "SELECT pg_notify($1, $2)", &[&n.channel, &n.payload])
            .await;
        if let Err(e) = sent {
            first_error.get_or_insert(Error::NotifyFailed {
                channel: n.channel,
                source: Box::new(e),
            });
        }
    }
    first_error.map_or(Ok(()), Err)
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
