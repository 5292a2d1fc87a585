//! Finishing what a crashed coordinator left prepared.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::manager::ManagedConnection;

use super::gid::{self, DatabaseId, Decider, Key};
use super::protocol::CREATE_DECISIONS;

/// Finds pgtx's prepared transactions on a set of databases and finishes
/// each one as its distributed transaction decided.
///
/// Give it every database the coordinators' transactions ran on (the
/// deciding participant of a transaction must be among them, or that
/// transaction is left alone and reported as
/// [`Decision::DeciderNotGiven`]).
///
/// A database is known by what its server says of itself: the cluster's
/// `system_identifier` (`pg_control_system()`, made at random by
/// `initdb`) and the database's oid, which the gid of every prepared
/// transaction carries for its decider. Two servers on different hosts
/// with the same port and a database of the same name are told apart, so
/// recovery given only a voter's database never mistakes it for the
/// decider. (A cluster copied at the file level, such as a
/// `pg_basebackup` started on its own, keeps the identifier of the one it
/// was copied from: do not give recovery both.)
///
/// ```no_run
/// let report = pgtx::two_phase::Recovery::new(["dbname=bank_a", "dbname=bank_b"]).run()?;
/// println!("committed {}, rolled back {}", report.committed.len(), report.rolled_back.len());
/// # Ok::<(), pgtx::Error>(())
/// ```
///
/// # How it decides
///
/// A prepared transaction is committed if and only if the row recording
/// its decision (in [`DECISIONS_TABLE`](super::DECISIONS_TABLE) of the
/// deciding participant's database) says `'commit'`. A transaction with no
/// decision row is presumed aborted: [`run`](Self::run) first writes an
/// `'abort'` row for it (`ON CONFLICT DO NOTHING`), which waits for, or
/// collides with, a coordinator that is still deciding, so that coordinator
/// can no longer commit once recovery has rolled back. That makes recovery
/// safe to run at any time, even beside live coordinators. The `'abort'`
/// rows stay (they are what keeps a late coordinator from committing), and
/// so does the `'commit'` row of a transaction that recovery finished (a
/// participant on a database not given may still need it), or whose
/// coordinator crashed after its last `COMMIT PREPARED`: remove what can
/// no longer fence anything with [`purge`](Self::purge), say once a day
/// with `older_than` a few days:
///
/// ```no_run
/// use std::time::Duration;
///
/// let recovery = pgtx::two_phase::Recovery::new(["dbname=bank_a", "dbname=bank_b"]);
/// recovery.run()?;
/// let purged = recovery.purge(Duration::from_secs(3 * 24 * 3600))?;
/// println!("{} commit and {} abort rows purged", purged.commit_rows, purged.abort_rows);
/// # Ok::<(), pgtx::Error>(())
/// ```
///
/// Only gids that pgtx made are ever touched.
///
/// # Gids of earlier versions
///
/// A `pgtx:v1:` gid (pgtx before the decider was named by its server)
/// names its decider by database name and port only, which another server
/// may share. Such a transaction is committed when a database given with
/// that name and port holds a `'commit'` row under its key (the key is
/// unique, so the row is proof); otherwise it is left alone and reported
/// as [`Decision::LegacyUnproven`], and never rolled back: finish it by
/// hand (`ROLLBACK PREPARED`) once you know its decider did not commit.
#[derive(Clone)]
pub struct Recovery {
    dsns: Vec<String>,
}

/// What recovery found, or did, for one prepared transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreparedTransaction {
    /// The database it is prepared on, as its settings show (no password).
    pub server: String,
    /// Its gid in `pg_prepared_xacts`.
    pub gid: String,
    /// When it was prepared.
    pub prepared_at: SystemTime,
    /// What its distributed transaction decided.
    pub decision: Decision,
}

/// The decision of a distributed transaction, as its decision row says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The decider committed: the transaction commits everywhere.
    Commit,
    /// Aborted (an `'abort'` row): it rolls back everywhere.
    Abort,
    /// No decision row yet: the coordinator may still be deciding (or
    /// crashed before it did). [`Recovery::run`] presumes abort.
    Undecided,
    /// None of the databases given is the one that holds the decision, so
    /// nothing can be known: left alone.
    DeciderNotGiven,
    /// A `pgtx:v1:` gid with no `'commit'` row found: the database given
    /// with its decider's name and port may be another server's, so no row
    /// (or an `'abort'` row) there proves nothing. Left alone (see
    /// [`Recovery`], *Gids of earlier versions*).
    LegacyUnproven,
}

/// What [`Recovery::run`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovered {
    /// Committed with `COMMIT PREPARED`.
    pub committed: Vec<PreparedTransaction>,
    /// Rolled back with `ROLLBACK PREPARED`.
    pub rolled_back: Vec<PreparedTransaction>,
    /// Left alone: their deciding database was not given, or (a
    /// `pgtx:v1:` gid) nothing proves what was decided.
    pub unresolved: Vec<PreparedTransaction>,
}

/// What [`Recovery::purge`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Purged {
    /// `'commit'` rows deleted.
    pub commit_rows: u64,
    /// `'abort'` rows deleted.
    pub abort_rows: u64,
}

struct Server {
    manager: ManagedConnection,
    /// What the server says this database is.
    id: DatabaseId,
    /// The `pgtx:v1:` tag of its name and port.
    tag: u32,
}

impl Server {
    fn may_decide(&self, decider: Decider) -> bool {
        match decider {
            Decider::Database(id) => self.id == id,
            Decider::Tag(tag) => self.tag == tag,
        }
    }
}

impl Recovery {
    /// Recovery over these databases (libpq connection strings).
    pub fn new<I, S>(dsns: I) -> Recovery
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Recovery {
            dsns: dsns.into_iter().map(Into::into).collect(),
        }
    }

    /// Lists pgtx's prepared transactions and their decisions, changing
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`], [`Error::Connect`] or [`Error::Db`] if a
    /// database cannot be read.
    pub fn list(&self) -> Result<Vec<PreparedTransaction>> {
        let servers = self.connect()?;
        let mut found = Vec::new();
        let mut decisions: HashMap<(Key, Decider), Decision> = HashMap::new();
        for server in &servers {
            for (gid, prepared_at, parsed) in prepared(server)? {
                let known = (parsed.key, parsed.decider);
                let decision = match decisions.get(&known) {
                    Some(decision) => *decision,
                    None => {
                        let decision = read_decision(&servers, &known.0, known.1)?;
                        decisions.insert(known, decision);
                        decision
                    }
                };
                found.push(PreparedTransaction {
                    server: server.manager.settings().to_string(),
                    gid,
                    prepared_at,
                    decision,
                });
            }
        }
        Ok(found)
    }

    /// Finishes every prepared transaction of pgtx's on these databases:
    /// commits where the decision was to commit, rolls back otherwise
    /// (writing the `'abort'` decision first), and leaves alone those whose
    /// deciding database was not given (and `pgtx:v1:` ones without a
    /// `'commit'` row). Decision rows stay (see [`purge`](Self::purge)).
    ///
    /// # Errors
    ///
    /// [`Error::Settings`], [`Error::Connect`] or [`Error::Db`] if a
    /// database cannot be read or a prepared transaction cannot be
    /// finished; what was finished before stays finished, and running
    /// recovery again goes on from there.
    pub fn run(&self) -> Result<Recovered> {
        let servers = self.connect()?;
        let mut report = Recovered::default();
        let mut decisions: HashMap<(Key, Decider), Decision> = HashMap::new();
        for server in &servers {
            for (gid, prepared_at, parsed) in prepared(server)? {
                let known = (parsed.key, parsed.decider);
                let decision = match decisions.get(&known) {
                    Some(decision) => *decision,
                    None => {
                        let decision = decide(&servers, &known.0, known.1)?;
                        decisions.insert(known, decision);
                        decision
                    }
                };
                let found = PreparedTransaction {
                    server: server.manager.settings().to_string(),
                    gid,
                    prepared_at,
                    decision,
                };
                let verb = match decision {
                    Decision::Commit => "COMMIT",
                    Decision::Abort | Decision::Undecided => "ROLLBACK",
                    Decision::DeciderNotGiven | Decision::LegacyUnproven => {
                        report.unresolved.push(found);
                        continue;
                    }
                };
                let sql = format!("{verb} PREPARED '{}'", found.gid.replace('\'', "''"));
                match server.manager.lock()?.batch_execute(&sql) {
                    Ok(()) => {}
                    // Finished meanwhile (by its coordinator, or another recovery).
                    Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_OBJECT) => {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if decision == Decision::Commit {
                    report.committed.push(found);
                } else {
                    report.rolled_back.push(found);
                }
            }
        }
        Ok(report)
    }

    /// Deletes the decision rows that can no longer fence anything: on
    /// every database given, the rows in
    /// [`DECISIONS_TABLE`](super::DECISIONS_TABLE) decided at least
    /// `older_than` ago whose transaction has no prepared transaction left
    /// on any database given. That is the `'commit'` row of a transaction
    /// whose coordinator crashed after its last `COMMIT PREPARED` (or that
    /// [`run`](Self::run) finished), and the `'abort'` rows recovery
    /// writes. Prepared transactions are never touched.
    ///
    /// Why it is safe: a decision row becomes visible only when the
    /// decider commits, after every vote, so no participant of it can be
    /// prepared later. The rows are read first and the prepared
    /// transactions looked up after, so one that was prepared when its row
    /// was read is seen. An `'abort'` row can go whatever is left: its
    /// decider's transaction is over, so recovery would write it again and
    /// decide the same. A `'commit'` row is the only record of its
    /// decision, so give `purge`, as [`run`](Self::run), every database
    /// the coordinators' transactions ran on: a participant still prepared
    /// on a database not given would be rolled back by a later recovery
    /// once its row is gone. `older_than` is the margin for that (a
    /// participant unreachable for longer is the operator's to resolve);
    /// days rather than seconds.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`], [`Error::Connect`] or [`Error::Db`] if a
    /// database cannot be read or its rows deleted; nothing is deleted
    /// from a database after the failure (what was deleted before stays
    /// deleted, and purging again goes on from there).
    pub fn purge(&self, older_than: Duration) -> Result<Purged> {
        const AGED: &str = "decided_at <= now() - make_interval(secs => $1)";
        let servers = self.connect()?;
        let age = older_than.as_secs_f64();
        // 1. The rows old enough, on each database once.
        let mut seen = HashSet::new();
        let mut candidates: Vec<(&Server, Vec<String>)> = Vec::new();
        for server in &servers {
            if !seen.insert(server.id) {
                continue;
            }
            let mut guard = server.manager.lock()?;
            if !has_decisions(&mut guard)? {
                continue;
            }
            let keys = guard
                .query(
                    &format!("SELECT key FROM pgtx_two_phase_decisions WHERE {AGED}"),
                    &[&age],
                )?
                .iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::Db)?;
            candidates.push((server, keys));
        }
        // 2. The transactions still prepared anywhere, looked up after.
        let mut still_prepared = HashSet::new();
        for server in &servers {
            for (_, _, parsed) in prepared(server)? {
                still_prepared.insert(parsed.key.as_str().to_owned());
            }
        }
        // 3. The rows read in 1 that nothing prepared needs.
        let mut purged = Purged::default();
        for (server, keys) in candidates {
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|key| !still_prepared.contains(key))
                .collect();
            if keys.is_empty() {
                continue;
            }
            let rows = server.manager.lock()?.query(
                &format!(
                    "DELETE FROM pgtx_two_phase_decisions WHERE key = ANY($2) AND {AGED}
                     RETURNING decision"
                ),
                &[&age, &keys],
            )?;
            for row in rows {
                match row.try_get::<_, String>(0).map_err(Error::Db)?.as_str() {
                    "commit" => purged.commit_rows += 1,
                    _ => purged.abort_rows += 1,
                }
            }
        }
        Ok(purged)
    }

    fn connect(&self) -> Result<Vec<Server>> {
        self.dsns
            .iter()
            .map(|dsn| {
                let manager = ManagedConnection::new(dsn)?;
                let row = manager.lock()?.query_one(
                    &format!(
                        "SELECT current_database()::text, current_setting('port'), {}",
                        gid::IDENTIFY_SQL
                    ),
                    &[],
                )?;
                let dbname: String = row.try_get(0).map_err(Error::Db)?;
                let port: String = row.try_get(1).map_err(Error::Db)?;
                Ok(Server {
                    id: DatabaseId::from_row(&row, 2).map_err(Error::Db)?,
                    manager,
                    tag: gid::database_tag(&dbname, &port),
                })
            })
            .collect()
    }
}

/// pgtx's prepared transactions on `server`'s database, oldest first.
fn prepared(server: &Server) -> Result<Vec<(String, SystemTime, gid::Parsed)>> {
    let rows = server.manager.lock()?.query(
        "SELECT gid, prepared FROM pg_prepared_xacts
         WHERE database = current_database() AND gid LIKE $1 ORDER BY prepared, gid",
        &[&gid::LIKE_PATTERN],
    )?;
    let mut found = Vec::new();
    for row in rows {
        let gid: String = row.try_get(0).map_err(Error::Db)?;
        let prepared_at: SystemTime = row.try_get(1).map_err(Error::Db)?;
        if let Some(parsed) = gid::parse(&gid) {
            found.push((gid, prepared_at, parsed));
        }
    }
    Ok(found)
}

/// The decision as the decider's row says, without writing anything.
/// Whether the database `guard` holds has the decision table (recovery
/// never creates it just to read it).
fn has_decisions(guard: &mut crate::Guard<'_>) -> Result<bool> {
    guard
        .query_one(
            "SELECT to_regclass('pgtx_two_phase_decisions') IS NOT NULL",
            &[],
        )?
        .try_get(0)
        .map_err(Error::Db)
}

fn read_decision(servers: &[Server], key: &Key, decider: Decider) -> Result<Decision> {
    let candidates: Vec<&Server> = servers.iter().filter(|s| s.may_decide(decider)).collect();
    if candidates.is_empty() {
        return Ok(Decision::DeciderNotGiven);
    }
    // A v1 candidate may be another server's database of the same name
    // and port: only a 'commit' row (under a unique key) proves anything.
    let unproven = match decider {
        Decider::Database(_) => None,
        Decider::Tag(_) => Some(Decision::LegacyUnproven),
    };
    let mut decision = unproven.unwrap_or(Decision::Undecided);
    for server in candidates {
        let mut guard = server.manager.lock()?;
        if !has_decisions(&mut guard)? {
            continue;
        }
        let row = guard.query_opt(
            "SELECT decision FROM pgtx_two_phase_decisions WHERE key = $1",
            &[&key.as_str()],
        )?;
        match row
            .map(|r| r.try_get::<_, String>(0))
            .transpose()
            .map_err(Error::Db)?
        {
            Some(d) if d == "commit" => return Ok(Decision::Commit),
            Some(_) => decision = unproven.unwrap_or(Decision::Abort),
            None => {}
        }
    }
    Ok(decision)
}

/// The decision, presuming abort: an `'abort'` row is written where none
/// is (it waits for a coordinator whose decision row is not committed yet,
/// and keeps one that has not written it from ever committing). Only in
/// the very database the gid names: a `pgtx:v1:` transaction is only read.
fn decide(servers: &[Server], key: &Key, decider: Decider) -> Result<Decision> {
    let candidates: Vec<&Server> = match decider {
        Decider::Database(_) => servers.iter().filter(|s| s.may_decide(decider)).collect(),
        Decider::Tag(_) => return read_decision(servers, key, decider),
    };
    if candidates.is_empty() {
        return Ok(Decision::DeciderNotGiven);
    }
    for server in &candidates {
        let mut guard = server.manager.lock()?;
        guard.batch_execute(CREATE_DECISIONS)?;
        guard.execute(
            "INSERT INTO pgtx_two_phase_decisions (key, decision) VALUES ($1, 'abort')
             ON CONFLICT (key) DO NOTHING",
            &[&key.as_str()],
        )?;
    }
    match read_decision(servers, key, decider)? {
        Decision::Commit => Ok(Decision::Commit),
        _ => Ok(Decision::Abort),
    }
}

impl fmt::Debug for Recovery {
    /// The databases as their settings show them: no password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .dsns
            .iter()
            .map(|dsn| {
                crate::Settings::parse(dsn).map_or_else(
                    |_| "<unreadable connection string>".to_owned(),
                    |s| s.to_string(),
                )
            })
            .collect();
        f.debug_struct("Recovery")
            .field("databases", &shown)
            .finish()
    }
}
