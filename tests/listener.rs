//! LISTEN/NOTIFY with a [`Listener`] against a real server: what is
//! delivered (every notification once, in order, whole, on the channel
//! named exactly as given), what is not (after UNLISTEN, twice), the
//! observers, and the gap after a broken connection (a terminated backend,
//! a cut link, a server restart, a stopped server), which is always
//! announced by one `Reconnected` and followed by notifications again.
//!
//! Each test has a database and channel names of its own; only the tests
//! that restart or stop the server have a server of their own.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::fixtures::Db;
use common::logger;
use common::proxy::Proxy;
use common::server::TestServer;
use pgtx::{Error, ListenEvent, Listener, Notification, ObserverError, ReconnectPolicy};

/// How long an event that must come may take.
const WAIT: Duration = Duration::from_secs(15);
/// How long to watch for an event that must not come.
const QUIET: Duration = Duration::from_millis(300);

fn listener_on(db: &Db) -> Listener {
    Listener::connect(&db.dsn).expect("the listener connects")
}

/// Quick retries, so that the outage tests take fractions of a second.
fn quick_policy() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

/// Sends a notification from `client`'s session (another one than the
/// listener's).
fn send(client: &mut postgres::Client, channel: &str, payload: &str) {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .expect("pg_notify");
}

fn next(listener: &mut Listener) -> ListenEvent {
    listener
        .recv_timeout(WAIT)
        .expect("recv_timeout")
        .unwrap_or_else(|| panic!("no event within {WAIT:?}"))
}

fn next_notification(listener: &mut Listener) -> Notification {
    match next(listener) {
        ListenEvent::Notification(n) => n,
        other => panic!("expected a notification, got {other:?}"),
    }
}

/// `(channel, payload)` of the next notification.
fn next_pair(listener: &mut Listener) -> (String, String) {
    let n = next_notification(listener);
    (n.channel().to_owned(), n.payload().to_owned())
}

/// The `attempts` of the next event, which must be a `Reconnected`.
fn next_reconnected(listener: &mut Listener) -> u32 {
    match next(listener) {
        ListenEvent::Reconnected { attempts, .. } => attempts,
        other => panic!("expected Reconnected, got {other:?}"),
    }
}

fn assert_quiet(listener: &mut Listener) {
    if let Some(event) = listener.recv_timeout(QUIET).expect("recv_timeout") {
        panic!("nothing more was due, got {event:?}");
    }
}

fn pair(channel: &str, payload: &str) -> (String, String) {
    (channel.to_owned(), payload.to_owned())
}

/// The backend pid of `client`'s session.
fn pid_of(client: &mut postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

/// Terminates the listener's backend (only it: the test database may have
/// other sessions) and waits until it is gone.
fn terminate(db: &Db, pid: i32) {
    let terminated: bool = db
        .admin()
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .expect("pg_terminate_backend")
        .get(0);
    assert!(terminated, "backend {pid} was not terminated");
}

// ---- delivery -------------------------------------------------------------

#[test]
fn a_notification_arrives_with_its_channel_payload_and_sender() {
    let db = Db::new("listen_basic");
    let mut listener = listener_on(&db);
    listener.listen("basic_jobs").expect("listen");
    let mut sender = db.admin();
    send(&mut sender, "basic_jobs", "job 1");
    let n = next_notification(&mut listener);
    assert_eq!(n.channel(), "basic_jobs");
    assert_eq!(n.payload(), "job 1");
    assert_eq!(n.process_id(), pid_of(&mut sender));
    assert_eq!(listener.channels().collect::<Vec<_>>(), ["basic_jobs"]);
    assert_quiet(&mut listener);
}

#[test]
fn three_notifications_sent_are_three_delivered() {
    let db = Db::new("listen_three");
    let mut listener = listener_on(&db);
    listener.listen("three").expect("listen");
    let mut sender = db.admin();
    for payload in ["a", "b", "c"] {
        send(&mut sender, "three", payload);
    }
    let got: Vec<_> = (0..3).map(|_| next_pair(&mut listener)).collect();
    assert_eq!(
        got,
        [pair("three", "a"), pair("three", "b"), pair("three", "c")]
    );
    assert_quiet(&mut listener);
}

#[test]
fn ten_payloads_arrive_in_the_order_sent_across_channels() {
    let db = Db::new("listen_order");
    let mut listener = listener_on(&db);
    listener.listen("order_a").expect("listen");
    listener.listen("order_b").expect("listen");
    let mut sender = db.admin();
    let sent: Vec<_> = (0..10)
        .map(|i| {
            let channel = if i % 3 == 0 { "order_b" } else { "order_a" };
            send(&mut sender, channel, &format!("payload {i}"));
            pair(channel, &format!("payload {i}"))
        })
        .collect();
    // Also ten in one transaction: still in order, none merged away
    // (the payloads differ).
    let mut tx = sender.transaction().expect("begin");
    for i in 10..20 {
        tx.execute(
            "SELECT pg_notify('order_a', $1)",
            &[&format!("payload {i}")],
        )
        .expect("pg_notify");
    }
    tx.commit().expect("commit");
    let expected: Vec<_> = sent
        .into_iter()
        .chain((10..20).map(|i| pair("order_a", &format!("payload {i}"))))
        .collect();
    let got: Vec<_> = (0..20).map(|_| next_pair(&mut listener)).collect();
    assert_eq!(got, expected);
    assert_quiet(&mut listener);
}

#[test]
fn a_burst_of_5000_notifications_arrives_complete_and_in_order() {
    let db = Db::new("listen_burst");
    let mut listener = listener_on(&db);
    listener.listen("burst").expect("listen");
    let mut sender = db.admin();
    sender
        .batch_execute(
            "SELECT pg_notify('burst', n::text) FROM generate_series(1, 4000) AS n;
             SELECT pg_notify('burst', 'single ' || n) FROM generate_series(1, 1000) AS n",
        )
        .expect("two transactions of notifications");
    let got: Vec<String> = (0..5000)
        .map(|_| next_notification(&mut listener).payload().to_owned())
        .collect();
    let expected: Vec<String> = (1..=4000)
        .map(|n| n.to_string())
        .chain((1..=1000).map(|n| format!("single {n}")))
        .collect();
    assert!(got == expected, "lost, reordered or repeated");
    assert_quiet(&mut listener);
}

#[test]
fn a_payload_of_7999_bytes_arrives_whole_and_8000_is_refused_before_sending() {
    let db = Db::new("listen_payload");
    let mut listener = listener_on(&db);
    listener.listen("big_payload").expect("listen");
    // Multi-byte characters too, so that a cut would show.
    let big: String = "é☃".repeat(1599) + "abcd"; // 1599 * 5 + 4 = 7999 bytes
    assert_eq!(big.len(), 7999);
    send(&mut db.admin(), "big_payload", &big);
    let n = next_notification(&mut listener);
    assert_eq!(n.payload(), big);

    listener
        .notify("big_payload", &big)
        .expect("7999 bytes from the listener's own session");
    assert_eq!(next_notification(&mut listener).payload(), big);

    let err = listener
        .notify("big_payload", &"x".repeat(8000))
        .expect_err("PostgreSQL refuses 8000 bytes");
    assert!(matches!(err, Error::InvalidNotification(_)), "{err:?}");
    assert!(err.to_string().contains("8000"), "{err}");
    assert_quiet(&mut listener);
}

#[test]
fn notifications_from_the_listeners_own_session_are_delivered() {
    let db = Db::new("listen_self");
    let mut listener = listener_on(&db);
    listener.listen("self_sent").expect("listen");
    listener.notify("self_sent", "from me").expect("notify");
    listener.notify("not_listened", "ignored").expect("notify");
    let n = next_notification(&mut listener);
    assert_eq!((n.channel(), n.payload()), ("self_sent", "from me"));
    assert_eq!(n.process_id(), listener.backend_pid().expect("pid"));
    assert_quiet(&mut listener);
}

#[test]
fn no_notification_is_delivered_twice_even_after_later_queries() {
    let db = Db::new("listen_once");
    let mut listener = listener_on(&db);
    listener.listen("once").expect("listen");
    let mut sender = db.admin();
    send(&mut sender, "once", "first");
    assert_eq!(next_pair(&mut listener), pair("once", "first"));
    // Queries on the listener's connection read the socket again; nothing
    // already taken may come back, and what arrives meanwhile is kept.
    listener.backend_pid().expect("a query");
    listener
        .listen("once")
        .expect("listening again changes nothing");
    send(&mut sender, "once", "second");
    listener.backend_pid().expect("another query");
    listener.notify("once", "third").expect("notify");
    assert_eq!(next_pair(&mut listener), pair("once", "second"));
    assert_eq!(next_pair(&mut listener), pair("once", "third"));
    assert_quiet(&mut listener);
    assert_eq!(listener.channels().count(), 1);
}

#[test]
fn unlisten_stops_delivery_even_of_notifications_already_received() {
    let db = Db::new("listen_unlisten");
    let mut listener = listener_on(&db);
    listener.listen("stay").expect("listen");
    listener.listen("leave").expect("listen");
    // Received (the listener's own query reads them) but not yet taken.
    listener.notify("leave", "queued").expect("notify");
    listener.notify("stay", "queued").expect("notify");
    listener.unlisten("leave").expect("unlisten");
    listener.unlisten("never_listened").expect("that is fine");
    assert_eq!(listener.channels().collect::<Vec<_>>(), ["stay"]);

    let mut sender = db.admin();
    send(&mut sender, "leave", "after unlisten");
    send(&mut sender, "stay", "after unlisten");
    assert_eq!(next_pair(&mut listener), pair("stay", "queued"));
    assert_eq!(next_pair(&mut listener), pair("stay", "after unlisten"));
    assert_quiet(&mut listener);
}

#[test]
fn unlisten_all_stops_every_channel_and_listening_again_works() {
    let db = Db::new("listen_unlisten_all");
    let mut listener = listener_on(&db);
    for channel in ["all_a", "all_b"] {
        listener.listen(channel).expect("listen");
    }
    listener.notify("all_a", "queued").expect("notify");
    listener.unlisten_all().expect("unlisten *");
    assert_eq!(listener.channels().count(), 0);
    let mut sender = db.admin();
    send(&mut sender, "all_a", "dropped");
    send(&mut sender, "all_b", "dropped");
    assert_quiet(&mut listener);

    listener.listen("all_b").expect("listen again");
    send(&mut sender, "all_b", "back");
    assert_eq!(next_pair(&mut listener), pair("all_b", "back"));
}

// ---- channel names ---------------------------------------------------------

#[test]
fn channel_names_are_taken_exactly_as_given() {
    let db = Db::new("listen_names");
    let mut listener = listener_on(&db);
    let names = [
        "MixedCase",
        "mixedcase",
        "with \"quotes\"",
        "semi;colon",
        "white space",
        "select",
        "ünï☃",
        "'single'",
        "back\\slash",
    ];
    for name in names {
        listener.listen(name).expect(name);
    }
    let mut sender = db.admin();
    for name in names {
        send(&mut sender, name, name);
    }
    for name in names {
        assert_eq!(next_pair(&mut listener), pair(name, name));
    }
    // Case matters: only the exact name is unlistened.
    listener.unlisten("MixedCase").expect("unlisten");
    send(&mut sender, "MixedCase", "gone");
    send(&mut sender, "mixedcase", "still");
    assert_eq!(next_pair(&mut listener), pair("mixedcase", "still"));
    assert_quiet(&mut listener);
}

#[test]
fn a_channel_name_cannot_inject_sql() {
    let db = Db::new("listen_injection");
    let mut admin = db.admin();
    admin
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .expect("create t");
    let mut listener = listener_on(&db);
    let evil = [
        "x\"; DROP TABLE t; --",
        "x\"; DROP TABLE t; LISTEN \"y",
        "\"\"; DROP TABLE t",
    ];
    for name in evil {
        listener.listen(name).expect(name);
    }
    listener.unlisten(evil[1]).expect("unlisten");
    let n: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .expect("t still exists")
        .get(0);
    assert_eq!(n, 1);
    send(&mut admin, evil[0], "payload");
    send(&mut admin, evil[1], "unlistened");
    send(&mut admin, evil[2], "payload");
    assert_eq!(next_pair(&mut listener), pair(evil[0], "payload"));
    assert_eq!(next_pair(&mut listener), pair(evil[2], "payload"));
    assert_quiet(&mut listener);
}

#[test]
fn a_channel_name_longer_than_63_bytes_is_refused_before_anything_is_sent() {
    let db = Db::new("listen_long");
    let mut listener = listener_on(&db);
    let longest = "l".repeat(63);
    listener.listen(&longest).expect("63 bytes is the limit");
    // 62 ASCII bytes and a two-byte character: 64 bytes, 63 characters.
    // PostgreSQL would truncate it to the 62 bytes in LISTEN, and
    // pg_notify would refuse it: neither is what was asked for.
    for name in ["l".repeat(64), "l".repeat(62) + "é", "x".repeat(200)] {
        let err = listener.listen(&name).expect_err("too long");
        assert!(matches!(err, Error::InvalidNotification(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("63"), "{message}");
        assert!(message.contains(&name.len().to_string()), "{message}");
        assert!(
            matches!(listener.unlisten(&name), Err(Error::InvalidNotification(_))),
            "unlisten must not truncate either (it would unlisten another channel)"
        );
        assert!(matches!(
            listener.notify(&name, "p"),
            Err(Error::InvalidNotification(_))
        ));
    }
    for bad in ["", "nul\0byte"] {
        let err = listener.listen(bad).expect_err("refused");
        assert!(matches!(err, Error::InvalidNotification(_)), "{err:?}");
    }
    assert_eq!(listener.channels().collect::<Vec<_>>(), [longest.as_str()]);

    // The 63-byte prefix of a refused name is still the channel it was,
    // and it works end to end.
    let mut sender = db.admin();
    send(&mut sender, &longest, "exactly 63");
    assert_eq!(next_pair(&mut listener), pair(&longest, "exactly 63"));
    listener.unlisten(&longest).expect("unlisten");
    send(&mut sender, &longest, "gone");
    assert_quiet(&mut listener);
}

#[test]
fn a_listen_the_server_refuses_is_a_db_error_and_not_remembered() {
    // A hot standby refuses LISTEN ("cannot execute LISTEN during recovery").
    let standby = TestServer::start_private_standby();
    let mut listener = Listener::connect(&standby.dsn()).expect("connect");
    let err = listener.listen("standby_chan").expect_err("refused");
    assert!(matches!(err, Error::Db(_)), "{err:?}");
    assert!(err.to_string().contains("LISTEN"), "{err}");
    assert_eq!(listener.channels().count(), 0);
    // The connection is fine: the next request works.
    listener.backend_pid().expect("still connected");
    assert!(format!("{listener:?}").contains("connected"));
}

// ---- observers --------------------------------------------------------------

/// An observer that records the payloads it sees, and its record.
type Seen = Arc<Mutex<Vec<String>>>;

fn recording() -> (
    Arc<impl Fn(&ListenEvent) -> Result<(), ObserverError> + Send + Sync + 'static>,
    Seen,
) {
    let seen = Seen::default();
    let record = seen.clone();
    let observer = Arc::new(move |event: &ListenEvent| {
        let text = match event {
            ListenEvent::Notification(n) => n.payload().to_owned(),
            _ => "reconnected".to_owned(),
        };
        record.lock().expect("record").push(text);
        Ok(())
    });
    (observer, seen)
}

fn seen(record: &Seen) -> Vec<String> {
    record.lock().expect("record").clone()
}

#[test]
fn two_observers_are_both_called_and_after_removing_one_only_the_other() {
    let db = Db::new("listen_observers");
    let mut listener = listener_on(&db);
    listener.listen("observed").expect("listen");
    let (first, first_seen) = recording();
    let (second, second_seen) = recording();
    let first_id = listener.add_observer(first);
    let second_id = listener.add_observer(second);
    assert_ne!(first_id, second_id);

    let mut sender = db.admin();
    send(&mut sender, "observed", "one");
    assert_eq!(
        next_pair(&mut listener).1,
        "one",
        "returned to the caller too"
    );
    assert_eq!(seen(&first_seen), ["one"]);
    assert_eq!(seen(&second_seen), ["one"]);

    assert!(listener.remove_observer(first_id));
    send(&mut sender, "observed", "two");
    assert_eq!(next_pair(&mut listener).1, "two");
    assert_eq!(seen(&first_seen), ["one"]);
    assert_eq!(seen(&second_seen), ["one", "two"]);
}

#[test]
fn the_same_observer_added_twice_is_one_and_removing_an_unknown_one_is_fine() {
    let db = Db::new("listen_observer_twice");
    let mut listener = listener_on(&db);
    listener.listen("observed_twice").expect("listen");
    let (observer, seen_by) = recording();
    let id = listener.add_observer(observer.clone());
    assert_eq!(listener.add_observer(observer.clone()), id);

    listener.notify("observed_twice", "once").expect("notify");
    next_notification(&mut listener);
    assert_eq!(seen(&seen_by), ["once"], "called once per event");

    assert!(listener.remove_observer(id));
    assert!(!listener.remove_observer(id), "already removed");
    let (other, _) = recording();
    let other_id = {
        let mut elsewhere = listener_on(&db);
        elsewhere.add_observer(other)
    };
    // An id from another listener names nothing here.
    assert!(!listener.remove_observer(other_id));
    listener.notify("observed_twice", "after").expect("notify");
    next_notification(&mut listener);
    assert_eq!(seen(&seen_by), ["once"]);
    // Added again after removal: a new registration.
    listener.add_observer(observer);
    listener.notify("observed_twice", "again").expect("notify");
    next_notification(&mut listener);
    assert_eq!(seen(&seen_by), ["once", "again"]);
}

#[test]
fn an_observer_that_fails_or_panics_is_logged_and_the_others_still_get_every_event() {
    let log = logger::capture();
    let db = Db::new("listen_observer_fails");
    let mut listener = listener_on(&db);
    let channel = "observer_fails_chan";
    listener.listen(channel).expect("listen");
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = {
        let calls = calls.clone();
        Arc::new(move |_: &ListenEvent| -> Result<(), ObserverError> {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("the observer's own failure".into())
        })
    };
    let panicking = Arc::new(|_: &ListenEvent| -> Result<(), ObserverError> {
        panic!("the observer's own panic")
    });
    let failing_id = listener.add_observer(failing);
    let panicking_id = listener.add_observer(panicking);
    let (healthy, healthy_seen) = recording();
    listener.add_observer(healthy);

    let mut sender = db.admin();
    send(&mut sender, channel, "secret payload 1");
    send(&mut sender, channel, "secret payload 2");
    assert_eq!(next_pair(&mut listener).1, "secret payload 1");
    assert_eq!(next_pair(&mut listener).1, "secret payload 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        seen(&healthy_seen),
        ["secret payload 1", "secret payload 2"]
    );

    // pgtx's own lines (the driver below logs statement parameters at
    // debug level, which is its business).
    let lines: Vec<String> = log
        .lines_containing(channel)
        .into_iter()
        .filter(|l| l.contains("pgtx:"))
        .collect();
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(&format!("observer {failing_id} failed")))
        .collect();
    let panicked: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(&format!("observer {panicking_id} panicked")))
        .collect();
    assert_eq!(failed.len(), 2, "{lines:#?}");
    assert_eq!(panicked.len(), 2, "{lines:#?}");
    assert!(failed[0].starts_with("ERROR"), "{failed:?}");
    assert!(
        failed[0].contains("the observer's own failure"),
        "{failed:?}"
    );
    assert!(
        panicked[0].contains("the observer's own panic"),
        "{panicked:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("secret payload")),
        "payloads are not logged: {lines:#?}"
    );
}

// ---- receiving --------------------------------------------------------------

#[test]
fn recv_timeout_try_recv_and_timeout_iter_end_when_nothing_comes() {
    let db = Db::new("listen_timeouts");
    let mut listener = listener_on(&db);
    listener.listen("quiet").expect("listen");
    assert!(listener.try_recv().expect("try_recv").is_none());
    let started = Instant::now();
    assert!(listener.recv_timeout(QUIET).expect("recv").is_none());
    let waited = started.elapsed();
    assert!(waited >= QUIET, "gave up early, after {waited:?}");
    assert!(waited < QUIET * 10, "took {waited:?}");

    let mut sender = db.admin();
    for payload in ["1", "2", "3"] {
        send(&mut sender, "quiet", payload);
    }
    // try_recv does not wait, but it reads what has arrived.
    let mut first = None;
    assert!(
        common::eventually(WAIT, || {
            first = listener.try_recv().expect("try_recv");
            first.is_some()
        }),
        "try_recv never saw the notification"
    );
    let first = first.expect("seen");
    assert_eq!(
        first.as_notification().expect("notification").payload(),
        "1"
    );
    let rest: Vec<String> = listener
        .timeout_iter(QUIET)
        .map(|event| {
            let event = event.expect("recv");
            event
                .as_notification()
                .expect("notification")
                .payload()
                .to_owned()
        })
        .collect();
    assert_eq!(rest, ["2", "3"]);
    assert!(listener.try_recv().expect("try_recv").is_none());
}

/// CPU time this thread has used, in clock ticks (user + system).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("a Linux /proc");
    // After "pid (comm)": state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields[i].parse::<u64>().expect("a number");
    ticks(11) + ticks(12)
}

#[test]
fn waiting_for_a_notification_sleeps_instead_of_spinning() {
    let db = Db::new("listen_no_spin");
    let mut listener = listener_on(&db);
    listener.listen("no_spin").expect("listen");
    let before = thread_cpu_ticks();
    assert!(
        listener
            .recv_timeout(Duration::from_secs(1))
            .expect("recv")
            .is_none()
    );
    let used = thread_cpu_ticks() - before;
    // A clock tick is 10 ms: a second of spinning would be about 100.
    assert!(used <= 10, "waiting a second used {used} ticks of CPU");
}

#[test]
fn iter_waits_for_each_event_on_a_thread_of_its_own() {
    let db = Db::new("listen_iter");
    let mut listener = listener_on(&db);
    listener.listen("iterated").expect("listen");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for event in listener.iter().take(3) {
            let event = event.expect("recv");
            let n = event.as_notification().expect("notification");
            tx.send(n.payload().to_owned()).expect("the test waits");
        }
    });
    let mut sender = db.admin();
    for payload in ["a", "b", "c"] {
        send(&mut sender, "iterated", payload);
        // Each one is received while the reader blocks in recv().
        assert_eq!(rx.recv_timeout(WAIT).expect("delivered"), payload);
    }
    reader.join().expect("the reader ends after three");
}

/// `listener` (listening to `channel`) hears a notification sent through
/// `source`'s connection, held the whole time: it has a connection of its
/// own.
fn hears_while_the_source_is_held(
    source: &impl pgtx::ConnectionSource,
    listener: &mut Listener,
    channel: &str,
) {
    listener.listen(channel).expect("listen");
    let mut guard = source.lock().expect("lock");
    let holder_pid: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    guard
        .execute("SELECT pg_notify($1, 'from the holder')", &[&channel])
        .expect("notify");
    let n = next_notification(listener);
    assert_eq!(n.payload(), "from the holder");
    assert_eq!(n.process_id(), holder_pid);
    assert_ne!(listener.backend_pid().expect("pid"), holder_pid);
}

#[test]
fn a_managers_listener_has_a_connection_of_its_own() {
    let db = Db::new("listen_manager");
    let manager = db.manager();
    let mut listener = manager.listener().expect("listener");
    hears_while_the_source_is_held(&manager, &mut listener, "managed");
}

#[test]
fn a_pools_listener_takes_none_of_the_pools_connections() {
    let db = Db::new("listen_pool");
    let pool = pgtx::Pool::new(&db.dsn, 1).expect("pool");
    let mut listener = pool.listener().expect("listener");
    hears_while_the_source_is_held(&pool, &mut listener, "pooled");
    assert_eq!(pool.state().idle, 1, "the listener is none of the pool's");
}

#[test]
fn dropping_the_listener_ends_its_session() {
    let db = Db::new("listen_drop");
    let mut listener = listener_on(&db);
    listener.listen("dropped").expect("listen");
    let pid = listener.backend_pid().expect("pid");
    assert_eq!(db.backends(), [pid]);
    drop(listener);
    assert!(
        common::eventually(WAIT, || db.backends().is_empty()),
        "the session is still there: {:?}",
        db.backends()
    );
}

#[test]
fn the_first_connection_is_not_retried_and_no_password_is_shown() {
    let server = TestServer::shared();
    let secret = "Listener-Secret-9d2e";
    let dsn = format!("{} password={secret}", server.dsn());
    // A trust server ignores the password; it is still in the settings.
    let mut listener = Listener::connect(&dsn).expect("connect");
    listener.listen("debug_shown").expect("listen");
    let shown = format!("{listener:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("Listener"), "{shown}");
    assert!(shown.contains("debug_shown"), "{shown}");
    assert!(shown.contains("connected"), "{shown}");
    assert!(
        shown.contains(&format!("port={}", server.port())),
        "{shown}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let started = Instant::now();
    let err = Listener::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres password={secret}"
    ))
    .expect_err("nothing listens there");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "it was retried");
    assert!(!format!("{err} {err:?}").contains(secret));
}

// ---- outages ----------------------------------------------------------------

/// Re-listened after each outage: quoted there too.
const TERM_B: &str = "Term \"b\"; UNLISTEN *; --";

#[test]
fn a_terminated_backend_is_reconnected_listening_again_and_announced_once_per_outage() {
    let log = logger::capture();
    let db = Db::new("listen_terminated");
    let mut listener = listener_on(&db);
    listener.set_reconnect_policy(quick_policy());
    for channel in ["term_a", TERM_B] {
        listener.listen(channel).expect("listen");
    }
    let mut sender = db.admin();
    for outage in 1..=2 {
        let before = format!("before {outage}");
        send(&mut sender, "term_a", &before);
        assert_eq!(next_pair(&mut listener), pair("term_a", &before));
        // Received (its own query reads it) but not taken when the
        // connection breaks: delivered before the gap is announced.
        listener.notify(TERM_B, "queued").expect("notify");
        let old_pid = listener.backend_pid().expect("pid");
        terminate(&db, old_pid);
        if outage == 2 {
            // Noticed by a LISTEN rather than by a receiving method: the
            // channel is remembered and listened to on the new session.
            listener.listen("term_c").expect("no error while down");
        }

        assert_eq!(next_pair(&mut listener), pair(TERM_B, "queued"));
        assert_eq!(next_reconnected(&mut listener), 1, "outage {outage}");
        let new_pid = listener.backend_pid().expect("pid");
        assert_ne!(new_pid, old_pid);
        // Every channel is listened to again.
        let after = format!("after {outage}");
        send(&mut sender, TERM_B, &after);
        send(&mut sender, "term_a", &after);
        send(&mut sender, "term_c", &after);
        assert_eq!(next_pair(&mut listener), pair(TERM_B, &after));
        assert_eq!(next_pair(&mut listener), pair("term_a", &after));
        if outage == 2 {
            assert_eq!(next_pair(&mut listener), pair("term_c", &after));
        }
        assert_quiet(&mut listener);
    }
    let lost = log.lines_containing("the listener's connection was lost");
    assert!(
        lost.iter()
            .any(|l| l.contains("57P01") || l.contains("administrator")),
        "the server's reason is logged: {lost:#?}"
    );
}

#[test]
fn a_cut_link_is_noticed_by_a_blocked_recv_and_reconnected() {
    let db = Db::new("listen_cut");
    let server = TestServer::shared();
    let proxy = Proxy::start(server.loopback_addr().expect("loopback"));
    let dsn = server.dsn_via(proxy.addr()).replace(
        &format!("dbname={}", server.dbname()),
        &format!("dbname={}", db.name),
    );
    let mut listener = Listener::connect(&dsn).expect("connect");
    listener.set_reconnect_policy(quick_policy());
    listener.listen("cut_chan").expect("listen");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for event in listener.iter() {
            let done = matches!(&event, Ok(ListenEvent::Notification(n)) if n.payload() == "after");
            tx.send(event).expect("the test waits");
            if done {
                break;
            }
        }
    });
    let mut sender = db.admin();
    send(&mut sender, "cut_chan", "before");
    let event = rx.recv_timeout(WAIT).expect("delivered").expect("event");
    assert_eq!(
        event.as_notification().expect("notification").payload(),
        "before"
    );

    proxy.cut(); // while the reader is blocked in recv()
    let event = rx.recv_timeout(WAIT).expect("announced").expect("event");
    assert!(
        matches!(event, ListenEvent::Reconnected { attempts: 1.., .. }),
        "{event:?}"
    );
    send(&mut sender, "cut_chan", "after");
    let event = rx.recv_timeout(WAIT).expect("delivered").expect("event");
    assert_eq!(
        event.as_notification().expect("notification").payload(),
        "after"
    );
    reader.join().expect("reader");
    assert_eq!(proxy.total_connections(), 2);
}

#[test]
fn after_an_immediate_server_restart_notifications_flow_again_after_one_reconnected() {
    let server = TestServer::start_private();
    let mut listener = Listener::connect(&server.dsn()).expect("connect");
    listener.set_reconnect_policy(quick_policy());
    let (observer, observed) = recording();
    listener.add_observer(observer);
    listener.listen("restart_chan").expect("listen");
    let (tx, rx) = mpsc::channel::<Result<ListenEvent, Error>>();
    let reader = thread::spawn(move || {
        for event in listener.iter() {
            let done = matches!(&event, Ok(ListenEvent::Notification(n)) if n.payload() == "after");
            tx.send(event).expect("the test waits");
            if done {
                break;
            }
        }
        listener
    });
    let mut sender = server.admin();
    send(&mut sender, "restart_chan", "before");
    let event = rx.recv_timeout(WAIT).expect("delivered").expect("event");
    assert_eq!(
        event.as_notification().expect("notification").payload(),
        "before"
    );

    server.restart_immediate();
    let event = rx.recv_timeout(WAIT).expect("announced").expect("event");
    let ListenEvent::Reconnected {
        down_since,
        attempts,
        ..
    } = event
    else {
        panic!("expected Reconnected, got {event:?}");
    };
    assert!(attempts >= 1);
    assert!(down_since.elapsed() < WAIT);
    let mut sender = server.admin();
    send(&mut sender, "restart_chan", "after");
    let event = rx.recv_timeout(WAIT).expect("delivered").expect("event");
    assert_eq!(
        event.as_notification().expect("notification").payload(),
        "after"
    );
    let mut listener = reader.join().expect("reader");
    assert_quiet(&mut listener);
    assert_eq!(seen(&observed), ["before", "reconnected", "after"]);
}

#[test]
fn a_stopped_server_gives_reconnect_failed_then_the_next_recv_reconnects_when_it_is_back() {
    let server = TestServer::start_private();
    let mut listener = Listener::connect(&server.dsn()).expect("connect");
    listener.set_reconnect_policy(quick_policy().max_attempts(Some(3)));
    listener.listen("stopped_chan").expect("listen");
    listener.notify("stopped_chan", "queued").expect("notify");

    server.stop();
    // What was received before the break still comes first.
    assert_eq!(next_pair(&mut listener), pair("stopped_chan", "queued"));
    let started = Instant::now();
    let err = listener
        .recv_timeout(WAIT)
        .expect_err("three attempts, all refused");
    let Error::ReconnectFailed {
        attempts,
        first,
        last,
    } = &err
    else {
        panic!("expected ReconnectFailed, got {err:?}");
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(first.as_deref(), Some(Error::Connect(_))),
        "{first:?}"
    );
    assert!(matches!(**last, Error::Connect(_)), "{last:?}");
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert!(
        started.elapsed() < WAIT,
        "gave up after {:?}",
        started.elapsed()
    );

    // While down: listening is remembered, sending is refused.
    listener
        .listen("stopped_late")
        .expect("remembered for later");
    assert!(matches!(
        listener.notify("stopped_chan", "nobody hears"),
        Err(Error::ConnectionLost(_))
    ));
    assert!(format!("{listener:?}").contains("reconnecting"));

    server.start();
    assert!(
        next_reconnected(&mut listener) >= 4,
        "the attempts of the outage are counted across rounds"
    );
    let mut sender = server.admin();
    send(&mut sender, "stopped_chan", "back");
    send(&mut sender, "stopped_late", "late");
    assert_eq!(next_pair(&mut listener), pair("stopped_chan", "back"));
    assert_eq!(next_pair(&mut listener), pair("stopped_late", "late"));
    assert_quiet(&mut listener);
}

#[test]
fn a_recv_blocked_on_one_thread_is_woken_from_another_and_notifications_flow_on() {
    let db = Db::new("listen_woken");
    let mut listener = listener_on(&db);
    listener.listen("woken_chan").expect("listen");
    let waker = listener.waker();
    let (blocked, is_blocked) = mpsc::channel();
    let receiver = thread::spawn(move || {
        let _ = blocked.send(());
        // No deadline: only the wake can end this.
        let event = listener.recv().expect("woken");
        (listener, event)
    });
    is_blocked.recv().expect("the receiver started");
    waker.wake();
    let (mut listener, event) = receiver.join().expect("receiver thread");
    assert!(matches!(event, ListenEvent::Woken), "{event:?}");
    assert!(event.as_notification().is_none());
    // Woken once: the next receive waits for what comes.
    assert_quiet(&mut listener);
    let mut sender = db.admin();
    send(&mut sender, "woken_chan", "after the wake");
    assert_eq!(
        next_pair(&mut listener),
        pair("woken_chan", "after the wake")
    );
}

#[test]
fn wakes_before_a_receive_are_one_woken_and_no_notification_is_lost() {
    let db = Db::new("listen_woken_early");
    let mut listener = listener_on(&db);
    listener.listen("early_chan").expect("listen");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    listener.add_observer(Arc::new(
        move |_: &ListenEvent| -> Result<(), ObserverError> {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    ));
    let mut sender = db.admin();
    send(&mut sender, "early_chan", "first");
    // Received (read off the socket) before the wakes: waited for, as the
    // server delivers it to the listening session a moment after the
    // sender's commit.
    let first = listener.recv_timeout(WAIT).expect("read");
    assert_eq!(
        first
            .as_ref()
            .and_then(ListenEvent::as_notification)
            .map(Notification::payload),
        Some("first"),
        "{first:?}"
    );
    send(&mut sender, "early_chan", "second");
    let waker = listener.waker();
    waker.wake();
    waker.clone().wake();
    let mut events = Vec::new();
    while let Some(event) = listener.recv_timeout(QUIET).expect("events") {
        events.push(event);
    }
    let woken = events
        .iter()
        .filter(|e| matches!(e, ListenEvent::Woken))
        .count();
    assert_eq!(woken, 1, "{events:?}");
    let payloads: Vec<&str> = events
        .iter()
        .filter_map(|e| e.as_notification().map(Notification::payload))
        .collect();
    assert_eq!(payloads, ["second"], "{events:?}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "observers saw the two notifications, not the wake"
    );
}

#[test]
fn a_listener_waiting_out_an_outage_is_woken_too() {
    let server = TestServer::start_private();
    let mut listener = Listener::connect(&server.dsn()).expect("connect");
    // The next attempt would be a minute away.
    listener.set_reconnect_policy(
        ReconnectPolicy::default()
            .initial_delay(Duration::from_secs(60))
            .factor(1.0)
            .jitter(0.0),
    );
    listener.listen("outage_chan").expect("listen");
    server.stop();
    // The break is found and the first attempt (at once) fails: the
    // listener now waits for the next one.
    assert!(
        listener
            .recv_timeout(Duration::from_millis(300))
            .expect("no event yet")
            .is_none()
    );
    let waker = listener.waker();
    let started = Instant::now();
    let receiver = thread::spawn(move || listener.recv());
    waker.wake();
    let event = receiver.join().expect("receiver thread").expect("woken");
    assert!(matches!(event, ListenEvent::Woken), "{event:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not the next attempt"
    );
}
