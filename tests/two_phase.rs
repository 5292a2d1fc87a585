//! Two-phase commit across databases: all committed or all absent, as a
//! second connection sees it, with `pg_prepared_xacts` empty afterwards;
//! the seed's cases (psycopg2transaction), and, across two clusters,
//! crashes of the coordinator's process at the two points that matter and
//! a decision whose outcome is unknown, resolved by recovery.

mod common;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::eventually;
use common::fixtures::Db;
use common::logger;
use common::proxy::{Proxy, Withhold};
use common::server::TestServer;
use pgtx::two_phase::{Decision, Recovery};
use pgtx::{Error, ManagedConnection, TwoPhase, UNFINISHED_TRANSACTION};

/// pgtx's prepared transactions left in `db`'s database.
fn prepared(db: &Db) -> i64 {
    prepared_on(&mut db.admin())
}

fn prepared_on(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .expect("read pg_prepared_xacts")
        .get(0)
}

/// Sessions other than the admin's own on `db`'s database.
fn sessions(db: &Db) -> usize {
    db.backends().len()
}

fn insert(dtx: &mut TwoPhase<'_>, id: pgtx::two_phase::ParticipantId, n: i32) -> pgtx::Result<u64> {
    dtx.tx(id)?
        .execute("INSERT INTO items VALUES ($1, 'two-phase')", &[&n])
}

/// A coordinator: joins each of `dsns` in order, inserts row 1 on each,
/// commits.
fn insert_one_everywhere_and_commit<S: AsRef<str>>(dsns: &[S]) -> pgtx::Result<()> {
    let mut dtx = TwoPhase::new();
    for dsn in dsns {
        let id = dtx.join_dsn(dsn.as_ref())?;
        insert(&mut dtx, id, 1)?;
    }
    dtx.commit()
}

#[test]
fn a_commit_on_two_databases_is_seen_everywhere_and_leaves_nothing_prepared() {
    let (a, b) = (Db::new("tpc_commit_a"), Db::new("tpc_commit_b"));
    let manager = a.manager();
    let mut dtx = TwoPhase::new();
    let pa = dtx.join(&manager).expect("join a");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 1).expect("insert a");
    insert(&mut dtx, pb, 2).expect("insert b");
    assert!(
        a.item_ids().is_empty() && b.item_ids().is_empty(),
        "nothing before commit"
    );
    dtx.commit().expect("commit");
    assert_eq!(a.item_ids(), vec![1]);
    assert_eq!(b.item_ids(), vec![2]);
    assert_eq!(prepared(&a) + prepared(&b), 0);
    // The decision row (on whichever database decided) is gone again.
    let mut decided_on = 0;
    for db in [&a, &b] {
        let mut admin = db.admin();
        let table: Option<String> = admin
            .query_one("SELECT to_regclass('pgtx_two_phase_decisions')::text", &[])
            .expect("look for the table")
            .get(0);
        if table.is_some() {
            decided_on += 1;
            let rows: i64 = admin
                .query_one("SELECT count(*) FROM pgtx_two_phase_decisions", &[])
                .expect("decision rows")
                .get(0);
            assert_eq!(rows, 0, "{}", db.name);
        }
    }
    assert_eq!(decided_on, 1, "one database decided");
    // The joined manager is released and clean; the DSN connection closed.
    assert!(manager.try_lock().is_ok());
    assert_eq!(sessions(&b), 0, "the connection joined by DSN is closed");
}

#[test]
fn the_implicit_form_commits_on_ok_and_rolls_back_on_err() {
    let (a, b) = (Db::new("tpc_run_a"), Db::new("tpc_run_b"));
    let committed: i32 = TwoPhase::run(|dtx| {
        let pa = dtx.join_dsn(&a.dsn)?;
        let pb = dtx.join_dsn(&b.dsn)?;
        insert(dtx, pa, 1)?;
        insert(dtx, pb, 1)?;
        Ok::<_, Error>(7)
    })
    .expect("committed");
    assert_eq!(committed, 7);
    let failed: Result<(), Error> = TwoPhase::run(|dtx| {
        let pa = dtx.join_dsn(&a.dsn)?;
        let pb = dtx.join_dsn(&b.dsn)?;
        insert(dtx, pa, 2)?;
        insert(dtx, pb, 2)?;
        Err(Error::InvalidNotification("the closure's own error".into()))
    });
    assert!(matches!(failed, Err(Error::InvalidNotification(_))));
    assert_eq!(a.item_ids(), vec![1]);
    assert_eq!(b.item_ids(), vec![1]);
    assert_eq!(prepared(&a) + prepared(&b), 0);
}

#[test]
fn a_rollback_before_the_vote_leaves_both_untouched() {
    let (a, b) = (Db::new("tpc_rollback_a"), Db::new("tpc_rollback_b"));
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).expect("join a");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 1).expect("insert a");
    insert(&mut dtx, pb, 1).expect("insert b");
    dtx.rollback().expect("rollback");
    assert!(a.item_ids().is_empty() && b.item_ids().is_empty());
    assert_eq!(a.open_transactions() + b.open_transactions(), 0);
    assert_eq!(
        sessions(&a) + sessions(&b),
        0,
        "closed after a rollback too"
    );
}

#[test]
fn an_error_in_the_work_rolls_every_participant_back() {
    let (a, b) = (Db::new("tpc_work_error_a"), Db::new("tpc_work_error_b"));
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).expect("join a");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 1).expect("insert a");
    insert(&mut dtx, pb, 1).expect("insert b");
    assert!(insert(&mut dtx, pb, 1).is_err(), "a duplicate key on b");
    let err = dtx.commit().expect_err("b's work failed");
    assert!(matches!(err, Error::VoteFailed { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&b.name),
        "names the participant: {err}"
    );
    assert!(a.item_ids().is_empty() && b.item_ids().is_empty());
    assert_eq!(prepared(&a) + prepared(&b), 0);
}

/// Three participants: the decider, a voter that prepares, and a voter whose
/// `PREPARE` the server refuses (it ran `NOTIFY`, or used a temporary
/// table): the prepared one is rolled back too.
#[test]
fn a_participant_refused_at_the_vote_rolls_back_the_ones_already_prepared() {
    for (case, poison) in [
        ("notify", "NOTIFY pgtx_refused_vote"),
        ("temp", "CREATE TEMP TABLE pgtx_scratch (n int)"),
    ] {
        let a = Db::new(&format!("tpc_vote_{case}_a"));
        let b = Db::new(&format!("tpc_vote_{case}_b"));
        let c = Db::new(&format!("tpc_vote_{case}_c"));
        let mut dtx = TwoPhase::new();
        let ids: Vec<_> = [&a, &b, &c]
            .iter()
            .map(|db| dtx.join_dsn(&db.dsn).expect("join"))
            .collect();
        for &id in &ids {
            insert(&mut dtx, id, 1).expect("insert");
        }
        dtx.tx(ids[2])
            .expect("c")
            .batch_execute(poison)
            .expect("poison");
        let err = dtx.commit().expect_err("c cannot prepare");
        assert!(
            matches!(&err, Error::VoteFailed { participant, .. } if participant.contains(&c.name)),
            "{case}: {err:?}"
        );
        for db in [&a, &b, &c] {
            assert!(db.item_ids().is_empty(), "{case}: {}", db.name);
            assert_eq!(prepared(db), 0, "{case}: {}", db.name);
        }
    }
}

#[test]
fn a_participant_that_cannot_be_joined_leaves_the_others_usable() {
    let a = Db::new("tpc_join_fails_a");
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).expect("join a");
    insert(&mut dtx, pa, 1).expect("insert a");
    assert!(matches!(
        dtx.join_dsn("host=127.0.0.1 port=1 connect_timeout=2"),
        Err(Error::Connect(_))
    ));
    assert!(matches!(
        dtx.join_dsn("nonsense=1"),
        Err(Error::Settings(_))
    ));
    dtx.commit().expect("the joined one commits");
    assert_eq!(a.item_ids(), vec![1]);
}

#[test]
fn the_same_dsn_or_manager_joined_twice_is_one_participant() {
    let (a, b) = (Db::new("tpc_same_a"), Db::new("tpc_same_b"));
    let manager = b.manager();
    let mut dtx = TwoPhase::new();
    let first = dtx.join_dsn(&a.dsn).expect("join");
    let again = dtx.join_dsn(&a.dsn).expect("join again");
    assert_eq!(first, again);
    assert_eq!(sessions(&a), 1, "one connection for both joins");
    let m1 = dtx.join(&manager).expect("join manager");
    assert_eq!(dtx.join(&manager).expect("again"), m1);
    // The manager's connection is held: the same thread asking is refused.
    assert!(matches!(manager.lock(), Err(Error::Reentrant)));
    // An id from another coordinator is refused, not a panic.
    let mut other = TwoPhase::new();
    let foreign = other.join_dsn(&b.dsn).expect("other join");
    assert!(matches!(dtx.tx(foreign), Err(Error::InvalidParticipant)));
    other.rollback().expect("rollback other");
    dtx.rollback().expect("rollback");
}

#[test]
fn one_participant_commits_in_one_phase_on_a_server_without_prepared_transactions() {
    let server = TestServer::start_private_with(&[("max_prepared_transactions", "0")]);
    let dsns: Vec<String> = ["tpc_stock_a", "tpc_stock_b"]
        .iter()
        .map(|p| {
            let dsn = server.fresh_database(p);
            server
                .admin_on(&dsn)
                .batch_execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
                .expect("table");
            dsn
        })
        .collect();
    let count = |dsn: &str| -> i64 {
        server
            .admin_on(dsn)
            .query_one("SELECT count(*) FROM items", &[])
            .expect("count")
            .get(0)
    };
    let mut dtx = TwoPhase::new();
    let only = dtx.join_dsn(&dsns[0]).expect("join");
    insert(&mut dtx, only, 1).expect("insert");
    dtx.commit()
        .expect("one phase needs no prepared transactions");
    assert_eq!(count(&dsns[0]), 1);

    let mut dtx = TwoPhase::new();
    let ids: Vec<_> = dsns
        .iter()
        .map(|d| dtx.join_dsn(d).expect("join"))
        .collect();
    for &id in &ids {
        insert(&mut dtx, id, 2).expect("insert");
    }
    let err = dtx.commit().expect_err("two participants need PREPARE");
    assert!(matches!(err, Error::VoteFailed { .. }), "{err:?}");
    assert!(
        err.to_string().contains("max_prepared_transactions"),
        "{err}"
    );
    assert_eq!(count(&dsns[0]), 1, "rolled back");
    assert_eq!(count(&dsns[1]), 0, "rolled back");
}

/// Payloads of the notifications that arrive within `wait` of each other.
fn drain(listener: &mut postgres::Client, wait: Duration, into: &mut Vec<String>) {
    use postgres::fallible_iterator::FallibleIterator;
    let mut notifications = listener.notifications();
    let mut arriving = notifications.timeout_iter(wait);
    while let Some(n) = arriving.next().expect("notification") {
        into.push(n.payload().to_owned());
    }
}

#[test]
fn notifications_are_sent_once_after_commit_and_never_after_abort() {
    let (a, b) = (Db::new("tpc_notify_a"), Db::new("tpc_notify_b"));
    let channel = "x; DROP TABLE items";
    let mut listener = a.admin();
    listener
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .expect("listen");

    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).expect("join a");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 1).expect("insert");
    insert(&mut dtx, pb, 1).expect("insert");
    dtx.notify(channel, "aborted").expect("notify");
    dtx.rollback().expect("rollback");

    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).expect("join a");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 2).expect("insert");
    insert(&mut dtx, pb, 2).expect("insert");
    dtx.notify_via(pa, channel, "committed").expect("notify");
    assert!(matches!(
        dtx.notify(channel, &"x".repeat(8000)),
        Err(Error::InvalidNotification(_))
    ));
    assert!(matches!(
        dtx.notify("", "p"),
        Err(Error::InvalidNotification(_))
    ));
    assert!(matches!(
        dtx.notify(&"c".repeat(64), "p"),
        Err(Error::InvalidNotification(_))
    ));
    dtx.commit().expect("commit");

    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.is_empty() && Instant::now() < deadline {
        drain(&mut listener, Duration::from_millis(200), &mut received);
    }
    // Anything else in flight would have arrived with the first one.
    drain(&mut listener, Duration::from_millis(300), &mut received);
    assert_eq!(
        received,
        vec!["committed".to_owned()],
        "exactly once, not on abort"
    );
    assert_eq!(a.item_ids(), vec![2], "the injection attempt was inert");
}

#[test]
fn a_dropped_coordinator_rolls_back_every_participant_and_reports_it() {
    logger::capture();
    let (a, b) = (Db::new("tpc_dropped_a"), Db::new("tpc_dropped_b"));
    let (ma, mb) = (a.manager(), b.manager());
    {
        let mut dtx = TwoPhase::new();
        let pa = dtx.join(&ma).expect("join a");
        let pb = dtx.join(&mb).expect("join b");
        insert(&mut dtx, pa, 1).expect("insert");
        insert(&mut dtx, pb, 1).expect("insert");
    }
    assert!(a.item_ids().is_empty() && b.item_ids().is_empty());
    assert_eq!(a.open_transactions() + b.open_transactions(), 0);
    assert_eq!(
        ma.unfinished_transactions() + mb.unfinished_transactions(),
        2
    );
    let reported = logger::capture()
        .lines_containing(UNFINISHED_TRANSACTION)
        .into_iter()
        .filter(|l| l.contains(&a.name) || l.contains(&b.name))
        .count();
    assert_eq!(reported, 2);
    assert!(ma.try_lock().is_ok() && mb.try_lock().is_ok(), "released");
}

/// A participant's transaction swapped out of its `TxRef` (`mem::swap`
/// through `DerefMut`) can be neither committed nor rolled back alone (a
/// rollback would make it vote as a participant that ran nothing, and the
/// others would commit): it stays the coordinator's, which commits it.
#[test]
fn a_participant_s_transaction_swapped_out_cannot_be_ended_alone() {
    let (a, b, c) = (
        Db::new("tpc_swapped_a"),
        Db::new("tpc_swapped_b"),
        Db::new("tpc_swapped_c"),
    );
    let (ma, mc) = (a.manager(), c.manager());
    let mut dtx = TwoPhase::new();
    let pa = dtx.join(&ma).expect("join a");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 1).expect("insert");
    insert(&mut dtx, pb, 1).expect("insert");
    let mut other = mc.lock().expect("c").begin().expect("begin");
    {
        let mut lent = dtx.tx(pa).expect("lent");
        std::mem::swap(&mut *lent, &mut other);
    }
    let alone = other.rollback().map(drop);
    assert!(
        matches!(&alone, Err(Error::TransactionControl(_))),
        "{alone:?}"
    );
    dtx.commit().expect("both, by the coordinator");
    assert_eq!(a.item_ids(), vec![1]);
    assert_eq!(b.item_ids(), vec![1]);
    assert_eq!(prepared(&a) + prepared(&b), 0);
    assert!(mc.try_lock().is_ok(), "c's manager is free again");
}

// ---------------------------------------------------------------------------
// Participants on two clusters.

/// Places in [`clusters`]: the shared cluster, and a second one for the
/// participants that must be on another server.
const SHARED: usize = 0;
const SECOND: usize = 1;

/// The shared cluster and the second one.
fn clusters() -> [&'static TestServer; 2] {
    // Each is started once; the second meanwhile, not after, the first.
    std::thread::scope(|s| {
        let second = s.spawn(second_cluster);
        let shared = TestServer::shared();
        [shared, second.join().expect("the second cluster")]
    })
}

/// A second private cluster, started on first use and shared by this
/// binary's tests (stopped and removed with the process). A voter needs
/// `max_prepared_transactions` above 0 on its server: 20, as on the shared
/// cluster (the harness's default).
fn second_cluster() -> &'static TestServer {
    static SECOND_CLUSTER: OnceLock<TestServer> = OnceLock::new();
    SECOND_CLUSTER
        .get_or_init(|| TestServer::start_private_with(&[("max_prepared_transactions", "20")]))
}

/// `dsn` with `application_name=pgtx_place_<place>` in front: the commit
/// order goes by the settings as shown, so it is then `place`'s, whatever
/// the ports of the servers (or of the proxies in front of them).
fn in_place(place: usize, dsn: &str) -> String {
    format!("application_name=pgtx_place_{place} {dsn}")
}

/// The decisions in `db`'s decision table as a fresh connection sees them
/// (committed rows only); none when the table does not exist (yet).
fn decisions(db: &Db) -> Vec<String> {
    let mut admin = db.admin();
    let table: Option<String> = admin
        .query_one("SELECT to_regclass('pgtx_two_phase_decisions')::text", &[])
        .expect("look for the decision table")
        .get(0);
    if table.is_none() {
        return Vec::new();
    }
    admin
        .query(
            "SELECT decision FROM pgtx_two_phase_decisions ORDER BY key",
            &[],
        )
        .expect("read the decisions")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// All committed (`items`) or all absent (`&[]`) on every database, as a
/// fresh connection to each one's own server sees it, and nothing left in
/// any of their `pg_prepared_xacts`.
fn assert_settled(dbs: &[Db], items: &[i32]) {
    for db in dbs {
        assert_eq!(db.item_ids(), items, "never mixed: {}", db.name);
        assert_eq!(prepared(db), 0, "nothing left prepared: {}", db.name);
    }
}

/// Whether `listed` (a server as its settings show) is `db`'s database.
fn names(listed: &str, db: &Db) -> bool {
    listed.contains(&format!("dbname={} ", db.name))
        || listed.ends_with(&format!("dbname={}", db.name))
}

// ---------------------------------------------------------------------------
// Crashes of the coordinator's process, resolved by recovery.

const CHILD_DSNS: &str = "PGTX_TPC_CHILD_DSNS";

/// The crash tests' participants in commit order, with the cluster each
/// one is on: the decider and the first voter on the shared cluster, the
/// second voter on the second.
const CRASH_LAYOUT: [(&str, usize); 3] =
    [("decider", SHARED), ("voter1", SHARED), ("voter2", SECOND)];

/// The child side of a crash test (this test binary again, with the DSNs
/// in the environment): a three-participant distributed transaction that
/// the parent kills while it is blocked. It joins them last first: the
/// commit order is the names', not the joins'. Returns whether this
/// process is the child.
fn crash_child() -> bool {
    let Ok(dsns) = std::env::var(CHILD_DSNS) else {
        return false;
    };
    let mut dtx = TwoPhase::new();
    let ids: Vec<_> = dsns
        .split('\n')
        .rev()
        .map(|dsn| dtx.join_dsn(dsn).expect("join"))
        .collect();
    for &id in &ids {
        insert(&mut dtx, id, 1).expect("insert");
    }
    let _ = dtx.commit(); // the parent kills this process before it returns
    eprintln!("the coordinator was not killed in time");
    std::process::exit(3);
}

/// Runs test `test` again as the child coordinator of [`crash_child`] on
/// `dsns`.
fn spawn_coordinator(test: &str, dsns: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_DSNS, dsns.join("\n"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child coordinator")
}

struct Crash {
    /// In commit order, as [`CRASH_LAYOUT`] places them.
    dbs: Vec<Db>,
    /// In front of the shared cluster and of the second one.
    proxies: Vec<Proxy>,
    /// The proxy that stalls.
    stalling: usize,
    child: Child,
}

/// Three databases on two clusters, laid out as [`CRASH_LAYOUT`] says and
/// reached through one proxy per cluster, and the child coordinator
/// started on them; the proxy in front of cluster `stall_on` stalls at the
/// first chunk that contains all of `stall_at`.
fn start_crash(test: &str, prefix: &str, stall_on: usize, stall_at: &[&[u8]]) -> Crash {
    let clusters = clusters();
    let dbs: Vec<Db> = CRASH_LAYOUT
        .iter()
        .map(|(role, cluster)| Db::on(clusters[*cluster], &format!("{prefix}_{role}")))
        .collect();
    let proxies: Vec<Proxy> = clusters
        .iter()
        .map(|server| Proxy::start(server.loopback_addr().expect("loopback server")))
        .collect();
    proxies[stall_on].stall_on(stall_at);
    let dsns: Vec<String> = dbs
        .iter()
        .zip(CRASH_LAYOUT)
        .enumerate()
        .map(|(place, (db, (_, cluster)))| in_place(place, &db.dsn_via(proxies[cluster].addr())))
        .collect();
    let child = spawn_coordinator(test, &dsns);
    Crash {
        dbs,
        proxies,
        stalling: stall_on,
        child,
    }
}

impl Crash {
    /// Kills the coordinator (SIGKILL) once the proxy stalled and `ready`
    /// holds, then cuts its connections.
    fn kill_when(&mut self, ready: impl Fn(&[Db]) -> bool) {
        let reached = eventually(Duration::from_secs(30), || {
            self.proxies[self.stalling].is_stalled() && ready(&self.dbs)
        });
        self.child.kill().expect("SIGKILL the coordinator");
        let _ = self.child.wait();
        for proxy in &self.proxies {
            proxy.cut();
        }
        assert!(reached, "the coordinator never reached the crash point");
    }

    fn recovery(&self) -> Recovery {
        Recovery::new(self.dbs.iter().map(|db| db.dsn.as_str()))
    }

    fn recover(&self) -> pgtx::two_phase::Recovered {
        // The killed backends may take a moment to end (and to release what
        // the decider held): recovery may run at any time, so no waiting.
        self.recovery().run().expect("recovery")
    }
}

#[test]
fn a_coordinator_killed_after_every_vote_is_rolled_back_by_recovery() {
    if crash_child() {
        return;
    }
    // The decider's COMMIT is prepared on its first use: stall there, when
    // both voters (one on each cluster) have prepared and nothing is
    // decided.
    let mut crash = start_crash(
        "a_coordinator_killed_after_every_vote_is_rolled_back_by_recovery",
        "tpc_crash_votes",
        SHARED,
        &[b"COMMIT\0"],
    );
    crash.kill_when(|dbs| prepared(&dbs[1]) == 1 && prepared(&dbs[2]) == 1);
    let dbs = &crash.dbs;
    assert!(decisions(&dbs[0]).is_empty(), "nothing was decided");
    assert_eq!(prepared(&dbs[0]), 0, "the decider never prepares");
    let listed = crash.recovery().list().expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|t| t.decision == Decision::Undecided),
        "{listed:?}"
    );
    for voter in &dbs[1..] {
        assert!(
            listed.iter().any(|t| names(&t.server, voter)),
            "{}: {listed:?}",
            voter.name
        );
    }
    let report = crash.recover();
    assert_eq!(report.rolled_back.len(), 2, "{report:?}");
    assert!(
        report.committed.is_empty() && report.unresolved.is_empty(),
        "{report:?}"
    );
    assert_settled(dbs, &[]);
    // The presumed abort is written down, so the coordinator could never
    // have committed after recovery rolled back.
    assert_eq!(decisions(&dbs[0]), ["abort"]);
}

#[test]
fn a_coordinator_killed_after_the_first_commit_prepared_is_committed_by_recovery() {
    if crash_child() {
        return;
    }
    // Stall at the second voter's COMMIT PREPARED, on the second cluster:
    // the decider and the first voter have committed.
    let mut crash = start_crash(
        "a_coordinator_killed_after_the_first_commit_prepared_is_committed_by_recovery",
        "tpc_crash_second",
        SECOND,
        &[b"COMMIT PREPARED", b":2'"],
    );
    crash.kill_when(|dbs| prepared(&dbs[1]) == 0 && prepared(&dbs[2]) == 1);
    let dbs = &crash.dbs;
    assert_eq!(dbs[0].item_ids(), vec![1], "the decider committed");
    assert_eq!(dbs[1].item_ids(), vec![1], "the first voter committed");
    assert!(dbs[2].item_ids().is_empty(), "the second voter is prepared");
    assert_eq!(decisions(&dbs[0]), ["commit"]);
    // The decision is read across clusters: the row on the shared one
    // decides for the transaction prepared on the second.
    let listed = crash.recovery().list().expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].decision, Decision::Commit, "{listed:?}");
    assert!(names(&listed[0].server, &dbs[2]), "{listed:?}");
    let report = crash.recover();
    assert_eq!(report.committed.len(), 1, "{report:?}");
    assert!(
        report.rolled_back.is_empty() && report.unresolved.is_empty(),
        "{report:?}"
    );
    assert_settled(dbs, &[1]);
    // Recovery cannot know that the participants it was not shown are
    // done: the decision stays for them.
    assert_eq!(decisions(&dbs[0]), ["commit"]);
    // Nothing left to do, and nothing done twice.
    let again = crash.recover();
    assert!(again.committed.is_empty() && again.rolled_back.is_empty());
    assert_settled(dbs, &[1]);
}

/// The decision itself in doubt: the connection to the decider is cut
/// while its one-phase COMMIT is in flight, with the COMMIT held in the
/// proxy ([`Withhold::Request`]: the server never got it) or with its answer
/// held ([`Withhold::Reply`]: the server committed). Either way the
/// coordinator cannot know: `InDoubt` with `decided: false`, never `Ok`,
/// never "rolled back", not transient, and both voters (one on each
/// cluster) still prepared. Recovery then does what the decider's row, read
/// from a fresh connection, says. Returns whether the decider committed.
fn the_decision_cut_in_flight(prefix: &str, hold: Withhold) -> bool {
    let [shared, second] = clusters();
    let dbs = [
        Db::on(shared, &format!("{prefix}_decider")),
        Db::on(shared, &format!("{prefix}_voter1")),
        Db::on(second, &format!("{prefix}_voter2")),
    ];
    // Only the decider goes through the proxy. Its COMMIT is one simple
    // query: stall there, before forwarding it or after.
    let proxy = dbs[0].proxy();
    let commit: &[&[u8]] = &[b"Q\0\0\0\x0bCOMMIT\0"];
    match hold {
        Withhold::Request => proxy.stall_on(commit),
        Withhold::Reply => proxy.stall_after(commit),
    }
    let dsns = [
        in_place(0, &dbs[0].dsn_via(proxy.addr())),
        in_place(1, &dbs[1].dsn),
        in_place(2, &dbs[2].dsn),
    ];
    let (outcome, (stalled, committed_before_cut)) = std::thread::scope(|s| {
        let cutter = s.spawn(|| {
            let stalled = eventually(Duration::from_secs(30), || proxy.is_stalled());
            // With the answer held, the server got the COMMIT: cut once it
            // is done with it (a cut could otherwise make it drop it).
            let committed = hold == Withhold::Reply
                && stalled
                && eventually(Duration::from_secs(30), || decisions(&dbs[0]) == ["commit"]);
            proxy.cut();
            (stalled, committed)
        });
        let mut dtx = TwoPhase::new();
        for dsn in dsns.iter().rev() {
            let id = dtx.join_dsn(dsn).expect("join");
            insert(&mut dtx, id, 1).expect("insert");
        }
        (dtx.commit(), cutter.join().expect("the cutter"))
    });
    assert!(stalled, "the decider's COMMIT never came: {outcome:?}");
    assert_eq!(committed_before_cut, hold == Withhold::Reply);
    let err = outcome.expect_err("never Ok when the decision is unknown");
    match &err {
        Error::InDoubt {
            decided: false,
            committed,
            in_doubt,
            ..
        } => {
            assert!(committed.is_empty(), "{err:?}");
            assert_eq!(in_doubt.len(), 2, "{err:?}");
            assert!(in_doubt[0].contains(&dbs[1].name), "{err:?}");
            assert!(in_doubt[1].contains(&dbs[2].name), "{err:?}");
        }
        other => panic!("expected InDoubt with the decision unknown: {other:?}"),
    }
    assert!(!err.is_transient(), "running it again could commit twice");
    assert!(!err.to_string().contains("rolled back"), "{err}");
    // What the servers hold: both voters prepared, nothing of theirs seen.
    for voter in &dbs[1..] {
        assert_eq!(prepared(voter), 1, "still prepared: {}", voter.name);
        assert!(voter.item_ids().is_empty(), "{}", voter.name);
    }
    assert_eq!(prepared(&dbs[0]), 0, "the decider never prepares");
    // What the decider did, as a fresh connection sees it (its COMMIT is
    // over or never came: this cannot change any more).
    let decided = match decisions(&dbs[0]).as_slice() {
        [] => false,
        [one] if one == "commit" => true,
        other => panic!("unexpected decisions {other:?}"),
    };
    let decider_items: &[i32] = if decided { &[1] } else { &[] };
    assert_eq!(dbs[0].item_ids(), decider_items, "with its decision row");
    let report = Recovery::new(dbs.iter().map(|db| db.dsn.as_str()))
        .run()
        .expect("recovery");
    let (finished, untouched) = if decided {
        (&report.committed, &report.rolled_back)
    } else {
        (&report.rolled_back, &report.committed)
    };
    assert_eq!(finished.len(), 2, "{report:?}");
    assert!(
        untouched.is_empty() && report.unresolved.is_empty(),
        "{report:?}"
    );
    assert_settled(&dbs, decider_items);
    decided
}

#[test]
fn the_decider_s_commit_lost_on_the_way_is_in_doubt_undecided_and_recovery_rolls_back() {
    assert!(
        !the_decision_cut_in_flight("tpc_undecided_request", Withhold::Request),
        "the server never got the COMMIT"
    );
}

#[test]
fn the_decider_s_commit_with_its_answer_lost_is_in_doubt_undecided_and_recovery_commits() {
    assert!(
        the_decision_cut_in_flight("tpc_undecided_reply", Withhold::Reply),
        "the server committed"
    );
}

#[test]
fn recovery_leaves_alone_what_it_cannot_decide_and_anyone_else_s_prepared_transactions() {
    let (a, b) = (Db::new("tpc_foreign_a"), Db::new("tpc_foreign_b"));
    let mut mine = a.admin();
    mine.batch_execute(
        "BEGIN; INSERT INTO items VALUES (9, 'not pgtx'); PREPARE TRANSACTION 'someone_else'",
    )
    .expect("a foreign prepared transaction");
    let report = Recovery::new([a.dsn.as_str(), b.dsn.as_str()])
        .run()
        .expect("recovery");
    assert!(report.committed.is_empty() && report.rolled_back.is_empty());
    assert_eq!(prepared(&a), 1, "not pgtx's: untouched");
    mine.batch_execute("ROLLBACK PREPARED 'someone_else'")
        .expect("clean up");
    // A password never shows in the recovery's Debug.
    let shown = format!("{:?}", Recovery::new(["postgres://u:S3cretPw@h/db"]));
    assert!(!shown.contains("S3cretPw"), "{shown}");
    let _ = ManagedConnection::new(&b.dsn).expect("settings");
}

/// After the decision, a participant that cannot be reached (its
/// `COMMIT PREPARED` cut, and every reconnect attempt timing out) is
/// reported in doubt, with who committed; never `Ok`, never "rolled back".
/// Recovery then finishes it as decided.
#[test]
fn a_participant_unreachable_after_the_decision_is_reported_in_doubt_then_recovered() {
    let server = TestServer::shared();
    let (a, b) = (Db::new("tpc_doubt_a"), Db::new("tpc_doubt_b"));
    let proxy = Proxy::start(server.loopback_addr().expect("loopback server"));
    // Both through the proxy, so that the commit order is the databases'
    // names' (a decides) and not the ports'.
    let via_proxy = |db: &Db| {
        server.dsn_via(proxy.addr()).replace(
            &format!("dbname={}", server.dbname()),
            &format!("dbname={}", db.name),
        ) + " connect_timeout=1"
    };
    let (a_via_proxy, b_via_proxy) = (via_proxy(&a), via_proxy(&b));
    let mut listener = a.admin();
    listener.batch_execute("LISTEN tpc_doubt").expect("listen");
    proxy.stall_on(&[b"COMMIT PREPARED"]);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            // Once b's COMMIT PREPARED is held, cut it; the proxy stays
            // stalled, so reconnecting times out.
            assert!(eventually(Duration::from_secs(30), || proxy.is_stalled()));
            proxy.cut();
        });
        let mut dtx = TwoPhase::new();
        let pa = dtx.join_dsn(&a_via_proxy).expect("join a");
        let pb = dtx.join_dsn(&b_via_proxy).expect("join b");
        insert(&mut dtx, pa, 1).expect("insert a");
        insert(&mut dtx, pb, 1).expect("insert b");
        dtx.notify("tpc_doubt", "transfer 1").expect("notify");
        dtx.commit()
    });
    match &outcome {
        Err(Error::InDoubt {
            decided: true,
            committed,
            in_doubt,
            unsent_notifications,
            ..
        }) => {
            assert_eq!(
                unsent_notifications,
                &[("tpc_doubt".to_owned(), "transfer 1".to_owned())],
                "{outcome:?}"
            );
            assert_eq!(committed.len(), 1, "{outcome:?}");
            assert!(committed[0].contains(&a.name), "{outcome:?}");
            assert_eq!(in_doubt.len(), 1, "{outcome:?}");
            assert!(in_doubt[0].contains(&b.name), "{outcome:?}");
        }
        other => panic!("expected InDoubt after the decision: {other:?}"),
    }
    let err = outcome.expect_err("in doubt");
    assert!(!err.is_transient(), "running it again would commit twice");
    assert!(
        err.to_string().contains("1 notification(s) not sent"),
        "{err}"
    );
    // Nothing arrived (what pgtx sends goes out on the decider, a, right
    // after its last COMMIT PREPARED: it would be here by now).
    let mut received = Vec::new();
    drain(&mut listener, Duration::from_millis(300), &mut received);
    assert!(received.is_empty(), "{received:?}");
    assert_eq!(a.item_ids(), vec![1], "the decider committed");
    assert!(b.item_ids().is_empty(), "b is still prepared");
    assert_eq!(prepared(&b), 1);
    proxy.resume();
    let report = Recovery::new([a.dsn.as_str(), b.dsn.as_str()])
        .run()
        .expect("recovery");
    assert_eq!(report.committed.len(), 1, "{report:?}");
    assert_eq!(b.item_ids(), vec![1], "committed as decided");
    assert_eq!(prepared(&b), 0);
}

// ---------------------------------------------------------------------------
// Shards: two servers on different hosts, on the same port, each with a
// database of the same name (issue 18, item 1).

/// Two private clusters, on 127.0.0.1 and 127.0.0.2 and one port, started
/// on first use and shared by this binary's tests. Each has its own
/// `initdb`, so its own `system_identifier`.
fn same_port_clusters() -> [&'static TestServer; 2] {
    static PAIR: OnceLock<Vec<TestServer>> = OnceLock::new();
    let pair = PAIR.get_or_init(|| {
        TestServer::start_private_same_port(
            &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
            &[],
        )
    });
    [&pair[0], &pair[1]]
}

/// A database of one name on each of the [`same_port_clusters`]: the
/// decider's on host 1, the voter's on host 2.
fn shards(prefix: &str) -> [Db; 2] {
    let [one, two] = same_port_clusters();
    let decider = Db::on(one, prefix);
    let voter = Db::named_on(two, &decider.name);
    assert_eq!(one.port(), two.port(), "the same port");
    assert_ne!(one.host(), two.host(), "different hosts");
    [decider, voter]
}

/// Whether `db`'s database has a decision table (recovery creates it where
/// it writes an `'abort'` row).
fn has_decision_table(db: &Db) -> bool {
    db.admin()
        .query_one(
            "SELECT to_regclass('pgtx_two_phase_decisions') IS NOT NULL",
            &[],
        )
        .expect("look for the decision table")
        .get(0)
}

/// What recovery given only the voter's database makes of it while its
/// decider has committed: it is the decider's business, and the voter's
/// database (whose name and port are the decider's) is not the decider.
fn assert_left_to_the_decider(
    voter: &Db,
    listed: &[pgtx::two_phase::PreparedTransaction],
    run: &pgtx::two_phase::Recovered,
) {
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].decision, Decision::DeciderNotGiven, "{listed:?}");
    assert!(listed[0].server.contains(voter.server.host()), "{listed:?}");
    assert_eq!(run.unresolved.len(), 1, "{run:?}");
    assert!(
        run.committed.is_empty() && run.rolled_back.is_empty(),
        "{run:?}"
    );
}

#[test]
fn recovery_given_only_a_voter_leaves_it_prepared_while_its_decider_on_another_host_commits() {
    let [decider, voter] = shards("tpc_shard_live");
    // A slow link to the voter: its COMMIT PREPARED is held.
    let proxy = voter.proxy();
    proxy.stall_on(&[b"COMMIT PREPARED"]);
    let dsns = [
        in_place(0, &decider.dsn),
        in_place(1, &voter.dsn_via(proxy.addr())),
    ];
    let (outcome, (reached, listed, run, voter_meanwhile)) = std::thread::scope(|s| {
        let coordinator = s.spawn(|| insert_one_everywhere_and_commit(&dsns));
        let reached = eventually(Duration::from_secs(30), || {
            proxy.is_stalled() && prepared(&voter) == 1 && decider.item_ids() == [1]
        });
        let recovery = Recovery::new([voter.dsn.as_str()]);
        let listed = recovery.list();
        let run = recovery.run();
        let meanwhile = (
            prepared(&voter),
            voter.item_ids(),
            has_decision_table(&voter),
        );
        // Only now may the coordinator go on (asserting first could leave
        // it blocked, and the scope with it).
        proxy.resume();
        let outcome = coordinator.join().expect("the coordinator");
        (outcome, (reached, listed, run, meanwhile))
    });
    assert!(
        reached,
        "the decider never committed with the voter prepared: {outcome:?}"
    );
    assert_left_to_the_decider(&voter, &listed.expect("list"), &run.expect("run"));
    assert_eq!(
        voter_meanwhile,
        (1, vec![], false),
        "still prepared, untouched, and no 'abort' written on the voter"
    );
    outcome.expect("the coordinator commits the voter it prepared");
    for db in [&decider, &voter] {
        assert_eq!(db.item_ids(), vec![1], "both committed: {}", db.dsn);
        assert_eq!(prepared(db), 0, "{}", db.dsn);
    }
}

#[test]
fn recovery_given_only_a_voter_leaves_it_prepared_after_a_crash_and_commits_it_with_the_decider() {
    if crash_child() {
        return;
    }
    let [decider, voter] = shards("tpc_shard_crash");
    let proxy = voter.proxy();
    proxy.stall_on(&[b"COMMIT PREPARED"]);
    let dsns = [
        in_place(0, &decider.dsn),
        in_place(1, &voter.dsn_via(proxy.addr())),
    ];
    let mut child = spawn_coordinator(
        "recovery_given_only_a_voter_leaves_it_prepared_after_a_crash_and_commits_it_with_the_decider",
        &dsns,
    );
    let reached = eventually(Duration::from_secs(30), || {
        proxy.is_stalled() && prepared(&voter) == 1 && decider.item_ids() == [1]
    });
    child.kill().expect("SIGKILL the coordinator");
    let _ = child.wait();
    proxy.cut();
    assert!(reached, "the coordinator never reached the crash point");
    let alone = Recovery::new([voter.dsn.as_str()]);
    assert_left_to_the_decider(
        &voter,
        &alone.list().expect("list"),
        &alone.run().expect("run"),
    );
    assert_eq!(prepared(&voter), 1, "left prepared");
    assert!(voter.item_ids().is_empty());
    assert!(
        !has_decision_table(&voter),
        "no 'abort' written on the voter"
    );
    // With the decider given, its 'commit' row decides.
    let report = Recovery::new([voter.dsn.as_str(), decider.dsn.as_str()])
        .run()
        .expect("recovery");
    assert_eq!(report.committed.len(), 1, "{report:?}");
    assert!(
        report.committed[0].server.contains(voter.server.host()),
        "{report:?}"
    );
    assert_settled(&[decider, voter], &[1]);
}

/// The coordinator's side: after its decision, a voter's prepared
/// transaction that someone else rolled back (here an operator, as the
/// recovery of the issue did) is reported in doubt, never `Ok`.
#[test]
fn a_voter_rolled_back_behind_the_coordinator_s_back_after_the_decision_is_in_doubt_not_ok() {
    let [decider, voter] = shards("tpc_shard_gone");
    let proxy = voter.proxy();
    proxy.stall_on(&[b"COMMIT PREPARED"]);
    let dsns = [
        in_place(0, &decider.dsn),
        in_place(1, &voter.dsn_via(proxy.addr())),
    ];
    let (outcome, reached, rolled_back) = std::thread::scope(|s| {
        let coordinator = s.spawn(|| insert_one_everywhere_and_commit(&dsns));
        let reached = eventually(Duration::from_secs(30), || {
            proxy.is_stalled() && prepared(&voter) == 1 && decider.item_ids() == [1]
        });
        let mut admin = voter.admin();
        let rolled_back = admin
            .query_one(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                &[],
            )
            .and_then(|row| {
                let gid: String = row.get(0);
                admin.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
            });
        proxy.resume();
        (
            coordinator.join().expect("the coordinator"),
            reached,
            rolled_back,
        )
    });
    assert!(
        reached,
        "the decider never committed with the voter prepared"
    );
    rolled_back.expect("the operator's ROLLBACK PREPARED");
    match &outcome {
        Err(Error::InDoubt {
            decided: true,
            committed,
            in_doubt,
            source,
            ..
        }) => {
            assert_eq!(committed.len(), 1, "{outcome:?}");
            assert!(committed[0].contains("place_0"), "{outcome:?}");
            assert_eq!(in_doubt.len(), 1, "{outcome:?}");
            assert!(
                in_doubt[0].contains(&format!("port={} ", proxy.addr().port())),
                "the voter, through its proxy: {outcome:?}"
            );
            assert!(
                matches!(
                    **source,
                    Error::PreparedTransactionGone {
                        rolled_back: true,
                        ..
                    }
                ),
                "{source:?}"
            );
        }
        other => panic!("expected InDoubt after the decision: {other:?}"),
    }
    // The message says what happened; its source says why (each once).
    let text = common::server::error_chain(&outcome.expect_err("in doubt"));
    assert!(text.contains("rolled back"), "{text}");
    // What the servers hold: the split the rollback made, as reported.
    assert_eq!(decider.item_ids(), vec![1]);
    assert!(voter.item_ids().is_empty());
    assert_eq!(prepared(&decider) + prepared(&voter), 0);
}

/// A voter's COMMIT PREPARED reaches the server but its answer is lost
/// with the connection: the retry finds the gid gone, and the server's
/// word that the transaction id committed (`txid_status`) makes it `Ok`.
#[test]
fn a_commit_prepared_whose_answer_was_lost_is_proven_committed_on_the_retry() {
    let [decider, voter] = shards("tpc_shard_lost_answer");
    let proxy = voter.proxy();
    proxy.stall_after(&[b"COMMIT PREPARED"]);
    let dsns = [
        in_place(0, &decider.dsn),
        in_place(1, &voter.dsn_via(proxy.addr())),
    ];
    let (outcome, reached) = std::thread::scope(|s| {
        let coordinator = s.spawn(|| insert_one_everywhere_and_commit(&dsns));
        // The server committed it; the client has not heard.
        let reached = eventually(Duration::from_secs(30), || {
            proxy.is_stalled() && prepared(&voter) == 0 && voter.item_ids() == [1]
        });
        proxy.cut();
        proxy.resume();
        (coordinator.join().expect("the coordinator"), reached)
    });
    assert!(reached, "the voter's COMMIT PREPARED never arrived");
    outcome.expect("proven committed");
    assert!(proxy.total_connections() >= 2, "the retry reconnected");
    assert_settled(&[decider, voter], &[1]);
}

/// The `pgtx:v1:` tag of a database: FNV-1a of its name, a NUL and its
/// port (as pgtx before gid v2 made it).
fn v1_tag(dbname: &str, port: u16) -> u32 {
    format!("{dbname}\0{port}")
        .bytes()
        .fold(0x811c_9dc5_u32, |hash, b| {
            (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
}

/// A `pgtx:v1:` gid names its decider by name and port only, which both
/// shards share: only a `'commit'` row proves anything, and neither no row
/// nor an `'abort'` row makes recovery touch it.
#[test]
fn v1_gids_are_committed_on_a_commit_row_and_otherwise_left_alone() {
    let [decider, voter] = shards("tpc_shard_v1");
    let key = format!("pgtx:v1:1a2b-3c4d-0000abcd:{}", std::process::id());
    let gid = format!("{key}:{:08x}:1", v1_tag(&voter.name, voter.server.port()));
    let mut prepared_by_hand = voter.admin();
    prepared_by_hand
        .batch_execute(&format!(
            "BEGIN; INSERT INTO items VALUES (1, 'v1'); PREPARE TRANSACTION '{gid}'"
        ))
        .expect("a v1 prepared transaction");
    let create = "CREATE TABLE pgtx_two_phase_decisions (
        key text PRIMARY KEY,
        decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
        decided_at timestamptz NOT NULL DEFAULT now())";
    let alone = Recovery::new([voter.dsn.as_str()]);
    for row in [None, Some("abort")] {
        if let Some(decision) = row {
            // As an earlier pgtx's recovery would have written it on the
            // voter's database, which has the decider's name and port.
            voter
                .admin()
                .batch_execute(&format!(
                    "{create}; INSERT INTO pgtx_two_phase_decisions VALUES ('{key}', '{decision}')"
                ))
                .expect("an abort row");
        }
        let listed = alone.list().expect("list");
        assert_eq!(listed.len(), 1, "{row:?}: {listed:?}");
        assert_eq!(listed[0].decision, Decision::LegacyUnproven, "{row:?}");
        assert_eq!(listed[0].gid, gid);
        let run = alone.run().expect("run");
        assert_eq!(run.unresolved.len(), 1, "{row:?}: {run:?}");
        assert!(
            run.committed.is_empty() && run.rolled_back.is_empty(),
            "{run:?}"
        );
        assert_eq!(prepared(&voter), 1, "{row:?}: untouched");
    }
    assert_eq!(decisions(&voter), ["abort"], "nothing written by recovery");
    // The real decider's 'commit' row, under the unique key, is proof.
    decider
        .admin()
        .batch_execute(&format!(
            "{create}; INSERT INTO pgtx_two_phase_decisions VALUES ('{key}', 'commit')"
        ))
        .expect("the commit row");
    let report = Recovery::new([voter.dsn.as_str(), decider.dsn.as_str()])
        .run()
        .expect("recovery");
    assert_eq!(report.committed.len(), 1, "{report:?}");
    assert_eq!(voter.item_ids(), vec![1]);
    assert_eq!(prepared(&voter), 0);
}

// ---------------------------------------------------------------------------
// Purging decision rows that can no longer fence anything (issue 18,
// item 2).

const A_DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn the_commit_row_of_a_coordinator_killed_after_every_commit_prepared_is_purged() {
    if crash_child() {
        return;
    }
    // Stall at the coordinator's last step, deleting its decision row:
    // every participant has committed.
    let mut crash = start_crash(
        "the_commit_row_of_a_coordinator_killed_after_every_commit_prepared_is_purged",
        "tpc_purge_left",
        SHARED,
        &[b"DELETE FROM pgtx_two_phase_decisions"],
    );
    crash.kill_when(|dbs| {
        dbs.iter()
            .all(|db| prepared(db) == 0 && db.item_ids() == [1])
    });
    let dbs = &crash.dbs;
    assert_eq!(decisions(&dbs[0]), ["commit"], "the leftover");
    let report = crash.recover();
    assert_eq!(
        report,
        pgtx::two_phase::Recovered::default(),
        "nothing to finish"
    );
    assert_eq!(decisions(&dbs[0]), ["commit"], "recovery leaves it");
    let recovery = crash.recovery();
    let young = recovery.purge(A_DAY).expect("purge");
    assert_eq!(
        (young.commit_rows, young.abort_rows),
        (0, 0),
        "younger than a day"
    );
    assert_eq!(decisions(&dbs[0]), ["commit"]);
    let purged = recovery.purge(Duration::ZERO).expect("purge");
    assert_eq!((purged.commit_rows, purged.abort_rows), (1, 0));
    assert!(decisions(&dbs[0]).is_empty(), "purged");
    assert_settled(dbs, &[1]);
}

/// Which database the gids of `db`'s decisions name: its server's
/// `system_identifier` and its oid, as `pgtx:v2:` writes them.
fn database_id(db: &Db) -> String {
    let row = db
        .admin()
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_control_system()),
                    (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .expect("identify the database");
    let (system, oid): (i64, u32) = (row.get(0), row.get(1));
    format!("{:016x}-{oid:x}", system.cast_unsigned())
}

/// A live coordinator stalled in its second phase keeps its `'commit'`
/// row through a purge (its voter is still prepared); an `'abort'` row
/// that recovery wrote goes, but only once it is older than asked.
#[test]
fn purge_keeps_a_decision_still_needed_and_removes_old_abort_rows() {
    let (decider, voter) = (Db::new("tpc_purge_decider"), Db::new("tpc_purge_voter"));
    // An 'abort' row, as recovery writes it: a prepared transaction of a
    // coordinator that died before deciding, rolled back by recovery.
    let orphan = format!(
        "pgtx:v2:dead-1-0:{}:{}:1",
        std::process::id(),
        database_id(&decider)
    );
    voter
        .admin()
        .batch_execute(&format!(
            "BEGIN; INSERT INTO items VALUES (7, 'orphan'); PREPARE TRANSACTION '{orphan}'"
        ))
        .expect("an orphan prepared transaction");
    let both = Recovery::new([decider.dsn.as_str(), voter.dsn.as_str()]);
    let report = both.run().expect("recovery");
    assert_eq!(report.rolled_back.len(), 1, "{report:?}");
    assert_eq!(decisions(&decider), ["abort"]);

    let proxy = voter.proxy();
    proxy.stall_on(&[b"COMMIT PREPARED"]);
    let dsns = [
        in_place(0, &decider.dsn),
        in_place(1, &voter.dsn_via(proxy.addr())),
    ];
    let (outcome, reached, young, purged, left) = std::thread::scope(|s| {
        let coordinator = s.spawn(|| insert_one_everywhere_and_commit(&dsns));
        let reached = eventually(Duration::from_secs(30), || {
            proxy.is_stalled() && prepared(&voter) == 1 && decider.item_ids() == [1]
        });
        let young = both.purge(A_DAY);
        let purged = both.purge(Duration::ZERO);
        let left = decisions(&decider);
        proxy.resume();
        let outcome = coordinator.join().expect("the coordinator");
        (outcome, reached, young, purged, left)
    });
    assert!(reached, "the coordinator never reached its second phase");
    let young = young.expect("purge");
    assert_eq!((young.commit_rows, young.abort_rows), (0, 0));
    let purged = purged.expect("purge");
    assert_eq!(
        (purged.commit_rows, purged.abort_rows),
        (0, 1),
        "the abort row goes, the commit row its voter needs stays"
    );
    assert_eq!(left, ["commit"]);
    outcome.expect("the coordinator finishes");
    assert_eq!(decider.item_ids(), vec![1]);
    assert_eq!(voter.item_ids(), vec![1], "the orphan stayed rolled back");
    assert!(
        decisions(&decider).is_empty(),
        "the coordinator's own cleanup"
    );
    assert_eq!(prepared(&decider) + prepared(&voter), 0);
}

// ---------------------------------------------------------------------------
// Ergonomics (issue 18, item 8).

/// A participant on a stock server (`max_prepared_transactions = 0`) can
/// only decide, never vote: with the decider chosen by sorting it fails
/// when the stock server sorts second, and `decide_on` makes it work.
#[test]
fn the_decider_chosen_with_decide_on_lets_a_stock_server_take_part() {
    static STOCK: OnceLock<TestServer> = OnceLock::new();
    let stock_server =
        STOCK.get_or_init(|| TestServer::start_private_with(&[("max_prepared_transactions", "0")]));
    let stock = Db::on(stock_server, "tpc_decide_on_stock");
    let other = Db::new("tpc_decide_on_other");
    // The stock server's participant sorts second.
    let dsns = [in_place(1, &stock.dsn), in_place(0, &other.dsn)];
    let attempt = |n: i32, choose: bool| {
        let mut dtx = TwoPhase::new();
        let on_stock = dtx.join_dsn(&dsns[0])?;
        let elsewhere = dtx.join_dsn(&dsns[1])?;
        insert(&mut dtx, on_stock, n)?;
        insert(&mut dtx, elsewhere, n)?;
        if choose {
            dtx.decide_on(on_stock)?;
        }
        dtx.commit()
    };
    let err = attempt(1, false).expect_err("the stock server cannot vote");
    assert!(
        matches!(&err, Error::VoteFailed { participant, .. } if participant.contains(&stock.name)),
        "{err:?}"
    );
    assert!(stock.item_ids().is_empty() && other.item_ids().is_empty());
    attempt(2, true).expect("the stock server decides");
    assert_eq!(stock.item_ids(), vec![2]);
    assert_eq!(other.item_ids(), vec![2]);
    assert_eq!(prepared(&other), 0);
    assert!(
        decisions(&stock).is_empty(),
        "the decider's row is gone again"
    );
    assert!(!has_decision_table(&other), "the other one only voted");
    // An id of another transaction is refused.
    let mut dtx = TwoPhase::new();
    let mut foreign = TwoPhase::new();
    let id = foreign.join_dsn(&other.dsn).expect("join");
    assert!(matches!(dtx.decide_on(id), Err(Error::InvalidParticipant)));
    foreign.rollback().expect("rollback");
}

/// `VoteFailed` names the step that failed: a voter's PREPARE, the
/// decider's record of the decision, or the decider's own COMMIT (here
/// refused by a deferred constraint), in its fields and in its text. Each
/// time everything is rolled back.
#[test]
fn vote_failed_says_whether_a_voter_the_decision_record_or_the_decider_s_commit_failed() {
    use pgtx::two_phase::VoteStep;
    let (a, b) = (Db::new("tpc_step_a"), Db::new("tpc_step_b"));
    a.admin()
        .batch_execute("CREATE TABLE deferred (id int, UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")
        .expect("a deferred constraint");
    // a decides (place 0), b votes.
    let dsns = [in_place(0, &a.dsn), in_place(1, &b.dsn)];
    let cases: [(&str, VoteStep, &str, &str); 3] = [
        (
            "decider_commit",
            VoteStep::DeciderCommit,
            "INSERT INTO deferred VALUES (1), (1)",
            "the decider",
        ),
        (
            "record",
            VoteStep::RecordDecision,
            "SELECT 1 / 0",
            "could not record the decision",
        ),
        ("prepare", VoteStep::Prepare, "", "could not prepare"),
    ];
    for (case, step, on_decider, says) in cases {
        let mut dtx = TwoPhase::new();
        let pa = dtx.join_dsn(&dsns[0]).expect("join a");
        let pb = dtx.join_dsn(&dsns[1]).expect("join b");
        insert(&mut dtx, pa, 1).expect("insert a");
        insert(&mut dtx, pb, 1).expect("insert b");
        if on_decider.is_empty() {
            assert!(insert(&mut dtx, pb, 1).is_err(), "{case}: b's work fails");
        } else {
            let _ = dtx.tx(pa).expect("a").batch_execute(on_decider);
        }
        let err = dtx.commit().expect_err(case);
        let failed = if step == VoteStep::Prepare { &b } else { &a };
        match &err {
            Error::VoteFailed {
                participant,
                step: reported,
                ..
            } => {
                assert_eq!(*reported, step, "{case}: {err:?}");
                assert!(participant.contains(&failed.name), "{case}: {err:?}");
            }
            other => panic!("{case}: expected VoteFailed: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(says), "{case}: {text}");
        if step == VoteStep::DeciderCommit {
            assert!(text.contains("could not commit"), "{case}: {text}");
        }
        if step != VoteStep::Prepare {
            assert!(!text.contains("could not prepare"), "{case}: {text}");
        }
        for db in [&a, &b] {
            assert!(db.item_ids().is_empty(), "{case}: {}", db.name);
            assert_eq!(prepared(db), 0, "{case}: {}", db.name);
        }
    }
}

/// Connections of a `Pool` join as participants (each call another one),
/// commit or roll back with the rest, and go back to the pool clean.
#[test]
fn a_pool_s_connections_join_and_go_back_to_the_pool_clean() {
    let (a, b) = (Db::new("tpc_pool_a"), Db::new("tpc_pool_b"));
    let pool = pgtx::Pool::new(&a.dsn, 2).expect("pool");
    let mut dtx = TwoPhase::new();
    let first = dtx.join_pool(&pool).expect("join one");
    let second = dtx.join_pool(&pool).expect("join another");
    assert_ne!(first, second, "two connections, two participants");
    assert!(
        matches!(dtx.join_pool(&pool), Err(Error::Reentrant)),
        "every connection is held by this transaction"
    );
    assert!(
        matches!(pool.try_lock(), Err(Error::Reentrant)),
        "held by this thread's transaction: refused, not waited for"
    );
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, first, 1).expect("insert");
    insert(&mut dtx, second, 2).expect("insert");
    insert(&mut dtx, pb, 1).expect("insert");
    assert_eq!(a.open_transactions(), 2, "two sessions in the transaction");
    dtx.commit().expect("commit");
    assert_eq!(a.item_ids(), vec![1, 2]);
    assert_eq!(b.item_ids(), vec![1]);
    assert_eq!(prepared(&a) + prepared(&b), 0);
    assert_eq!(a.open_transactions(), 0);
    assert_eq!(pool.state().unfinished, 0);
    // Back in the pool: both can be taken at once.
    {
        let one = pool.try_lock().expect("free again");
        let two = pool.try_lock().expect("both free again");
        drop((one, two));
    }
    // Rolled back with the rest.
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_pool(&pool).expect("join");
    let pb = dtx.join_dsn(&b.dsn).expect("join b");
    insert(&mut dtx, pa, 3).expect("insert");
    insert(&mut dtx, pb, 3).expect("insert");
    dtx.rollback().expect("rollback");
    assert_eq!(a.item_ids(), vec![1, 2]);
    assert_eq!(b.item_ids(), vec![1]);
    assert_eq!(a.open_transactions(), 0);
    drop(pool.try_lock().expect("free after the rollback"));
}
