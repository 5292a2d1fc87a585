//! Reconnect time: how long after a restarted server accepts connections
//! again a caller's first transaction succeeds (a manager built with
//! `Builder::reconnect`) and a [`Listener`] delivers its
//! [`ListenEvent::Reconnected`], set against the backoff schedule.
//!
//! One private cluster; every repetition stops it (`pg_ctl stop -m fast`)
//! and starts it again at once, while all four subjects (a manager and a
//! listener, each with the default policy and with a quicker one) live
//! through the same outage. A poller connects with a plain
//! `postgres::Client` every [`POLL`] from the moment the stop returned:
//! its first successful connect, timed from when it began, is "the server
//! accepts connections again".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use pgtx::{Error, ListenEvent, Listener, ManagedConnection, ReconnectPolicy};
use postgres::NoTls;

use super::BoxError;
use super::server::TestServer;

/// How often the poller tries to connect.
const POLL: Duration = Duration::from_millis(2);

/// How often the manager's caller retries `transaction`.
const RETRY: Duration = Duration::from_millis(1);

/// Longer than any repetition can take: a subject still waiting then
/// fails the benchmark instead of hanging it.
const GIVE_UP: Duration = Duration::from_secs(60);

/// The policies measured: the default, and one whose first wait is 100 ms,
/// both without jitter, so that when each attempt was due can be worked
/// out from the schedule.
pub fn policies() -> [(&'static str, ReconnectPolicy); 2] {
    [
        (
            "default without jitter (1.7 s, ×1.7, ≤ 10 s)",
            ReconnectPolicy::default().jitter(0.0),
        ),
        (
            "initial_delay 100 ms without jitter (×1.7, ≤ 10 s)",
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(100))
                .jitter(0.0),
        ),
    ]
}

/// The waits before each attempt of an outage (the first is 0).
pub fn waits(policy: &ReconnectPolicy, attempts: usize) -> Vec<Duration> {
    policy.backoff().take(attempts).collect()
}

/// When each attempt is due after the outage began, if failed attempts
/// take no time (`cumulative[k]`: attempt k + 1).
pub fn cumulative(policy: &ReconnectPolicy, attempts: usize) -> Vec<Duration> {
    waits(policy, attempts)
        .into_iter()
        .scan(Duration::ZERO, |at, wait| {
            *at += wait;
            Some(*at)
        })
        .collect()
}

/// What kind of client a subject is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manager,
    Listener,
}

/// One subject's recovery from one outage. Times are seconds; "after
/// accepting" is signed (negative: before the poller saw the server back).
pub struct Recovery {
    pub kind: Kind,
    pub policy: usize,
    /// The outage began (the subject found the connection broken) this
    /// long before the server accepted connections again.
    pub down_before_accepting: f64,
    /// The attempt that succeeded (1: the first, made at once).
    pub attempt: u32,
    /// When that attempt was due, after the server accepted connections.
    /// Exact for a manager (from when its previous attempt failed, which
    /// its `ConnectionDead` errors show); estimated for a listener (from
    /// the start of the outage, as if failed attempts took no time).
    pub due_after_accepting: f64,
    /// The first transaction succeeded / `Reconnected` was delivered.
    pub recovered_after_accepting: f64,
    /// Manager only: when its connection was open (the `on_connect` hook
    /// ran on the reconnection thread), after the server accepted.
    pub connected_after_accepting: Option<f64>,
}

/// One repetition: the instants that frame it, and every subject's recovery.
pub struct Repetition {
    /// `pg_ctl stop` took this long (it returns once the server is gone).
    pub stop: f64,
    /// From `pg_ctl start` being run to the server accepting connections.
    pub start_to_accepting: f64,
    /// `pg_ctl start -w` returned this long after the server accepted
    /// (it looks every 100 ms).
    pub pg_ctl_returned_after_accepting: f64,
    pub recoveries: Vec<Recovery>,
}

/// What a manager's caller saw.
struct CallerTrace {
    /// `(seen at, attempts)` for the first `ConnectionDead` of each count.
    attempts_seen: Vec<(Instant, u32)>,
    /// When the outage began, as `ConnectionDead::down_for` dates it.
    since: Option<Instant>,
    recovered: Instant,
}

struct ListenerTrace {
    down_since: Instant,
    attempts: u32,
    recovered: Instant,
}

/// A manager with a reconnection policy, and when its connections opened.
struct Subject {
    policy: usize,
    manager: ManagedConnection,
    opened: Arc<Mutex<Vec<Instant>>>,
}

/// The cluster and the four subjects, kept from one repetition to the next.
pub struct Bench {
    server: TestServer,
    managers: Vec<Subject>,
    listeners: Vec<(usize, Listener)>,
}

impl Bench {
    /// Starts the private cluster and connects every subject.
    pub fn new() -> Result<Bench, BoxError> {
        let server = TestServer::start_private();
        let dsn = server.dsn() + " connect_timeout=2";
        let mut managers = Vec::new();
        let mut listeners = Vec::new();
        for (i, (_, policy)) in policies().into_iter().enumerate() {
            let opened = Arc::new(Mutex::new(Vec::new()));
            let record = opened.clone();
            let manager = ManagedConnection::builder(&dsn)
                .reconnect(policy.clone())
                .on_connect(move |_conn| {
                    record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                    Ok(())
                })
                .build()?;
            one_transaction(&manager)?;
            managers.push(Subject {
                policy: i,
                manager,
                opened,
            });
            let mut listener = Listener::connect(&dsn)?;
            listener.set_reconnect_policy(policy);
            listener.listen("pgtx_bench_reconnect")?;
            listeners.push((i, listener));
        }
        Ok(Bench {
            server,
            managers,
            listeners,
        })
    }

    /// Stops and starts the server once and times every subject's recovery.
    pub fn repetition(&mut self) -> Result<Repetition, BoxError> {
        let Bench {
            server,
            managers,
            listeners,
        } = self;
        let server = &*server;
        let dsn = server.dsn() + " connect_timeout=2";
        let stopped = AtomicBool::new(false);
        // The callers are running transactions before the server stops.
        let ready = Barrier::new(managers.len() + 1);
        std::thread::scope(|s| -> Result<Repetition, BoxError> {
            let callers: Vec<_> = managers
                .iter()
                .map(|subject| {
                    let ready = &ready;
                    s.spawn(move || caller(&subject.manager, ready))
                })
                .collect();
            let receivers: Vec<_> = listeners
                .iter_mut()
                .map(|(policy, listener)| (*policy, s.spawn(move || wait_reconnected(listener))))
                .collect();
            let poller = s.spawn(|| -> Result<Instant, BoxError> {
                while !stopped.load(Ordering::Acquire) {
                    std::thread::sleep(POLL);
                }
                let deadline = Instant::now() + GIVE_UP;
                loop {
                    let began = Instant::now();
                    if postgres::Client::connect(&dsn, NoTls).is_ok() {
                        return Ok(began);
                    }
                    if began > deadline {
                        return Err("the server did not come back".into());
                    }
                    std::thread::sleep(POLL);
                }
            });
            ready.wait();
            // Let the listeners settle into their wait.
            std::thread::sleep(Duration::from_millis(20));
            let stop_began = Instant::now();
            server.stop();
            let stop = stop_began.elapsed();
            stopped.store(true, Ordering::Release);
            let start_began = Instant::now();
            server.start();
            let pg_ctl_returned = Instant::now();
            let accepting = poller.join().map_err(|_| "the poller panicked")??;
            let after = |t: Instant| signed_secs(t, accepting);

            let mut recoveries = Vec::new();
            for (subject, handle) in managers.iter().zip(callers) {
                let trace = handle.join().map_err(|_| "a caller panicked")??;
                let policy = &policies()[subject.policy].1;
                let (failed_at, failed) = trace
                    .attempts_seen
                    .last()
                    .copied()
                    .ok_or("the caller never saw ConnectionDead")?;
                let attempt = failed + 1;
                let wait = waits(policy, attempt as usize)
                    .last()
                    .copied()
                    .unwrap_or_default();
                let connected = subject
                    .opened
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last()
                    .copied();
                recoveries.push(Recovery {
                    kind: Kind::Manager,
                    policy: subject.policy,
                    down_before_accepting: -after(trace.since.unwrap_or(failed_at)),
                    attempt,
                    due_after_accepting: after(failed_at + wait),
                    recovered_after_accepting: after(trace.recovered),
                    connected_after_accepting: connected.map(after),
                });
            }
            for (policy, handle) in receivers {
                let trace = handle.join().map_err(|_| "a listener panicked")??;
                let due = cumulative(&policies()[policy].1, trace.attempts as usize)
                    .last()
                    .copied()
                    .unwrap_or_default();
                recoveries.push(Recovery {
                    kind: Kind::Listener,
                    policy,
                    down_before_accepting: -after(trace.down_since),
                    attempt: trace.attempts,
                    due_after_accepting: after(trace.down_since + due),
                    recovered_after_accepting: after(trace.recovered),
                    connected_after_accepting: None,
                });
            }
            Ok(Repetition {
                stop: stop.as_secs_f64(),
                start_to_accepting: signed_secs(accepting, start_began),
                pg_ctl_returned_after_accepting: after(pg_ctl_returned),
                recoveries,
            })
        })
    }
}

/// `a - b` in seconds, negative when `a` came first.
fn signed_secs(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64(),
        None => -b.duration_since(a).as_secs_f64(),
    }
}

fn one_transaction(manager: &ManagedConnection) -> Result<(), Error> {
    manager.transaction(|mut tx| {
        tx.query_one("SELECT 1", &[])?;
        tx.commit()
    })
}

/// A caller that retries `transaction` every [`RETRY`]: through the
/// server going away, the outage, and the first success after it.
fn caller(manager: &ManagedConnection, ready: &Barrier) -> Result<CallerTrace, BoxError> {
    one_transaction(manager)?;
    ready.wait();
    let deadline = Instant::now() + GIVE_UP;
    let mut broken = false;
    let mut trace = CallerTrace {
        attempts_seen: Vec::new(),
        since: None,
        recovered: Instant::now(),
    };
    while Instant::now() < deadline {
        match one_transaction(manager) {
            Ok(()) if broken => {
                trace.recovered = Instant::now();
                return Ok(trace);
            }
            Ok(()) => {}
            Err(Error::ConnectionDead {
                down_for, attempts, ..
            }) => {
                broken = true;
                let now = Instant::now();
                trace.since.get_or_insert(now - down_for);
                if trace
                    .attempts_seen
                    .last()
                    .is_none_or(|&(_, a)| a != attempts)
                {
                    trace.attempts_seen.push((now, attempts));
                }
            }
            // The connection breaking, the caller's own attempt failing.
            Err(_) => broken = true,
        }
        std::thread::sleep(RETRY);
    }
    Err("the manager did not recover".into())
}

/// Receives until the listener reports `Reconnected`.
fn wait_reconnected(listener: &mut Listener) -> Result<ListenerTrace, BoxError> {
    let deadline = Instant::now() + GIVE_UP;
    while let Some(wait) = deadline.checked_duration_since(Instant::now()) {
        // Notifications (none are sent) and quiet spells: wait on.
        if let Some(ListenEvent::Reconnected {
            down_since,
            attempts,
            ..
        }) = listener.recv_timeout(wait)?
        {
            return Ok(ListenerTrace {
                down_since,
                attempts,
                recovered: Instant::now(),
            });
        }
    }
    Err("the listener did not reconnect".into())
}

/// The "Reconnection" section of the report.
pub fn markdown(repetitions: &[Repetition]) -> String {
    use std::fmt::Write as _;
    let median = |v: Vec<f64>| super::median(&v);
    let ms = |s: f64| format!("{:.0}", s * 1000.0);
    let mut m = String::new();
    let _ = writeln!(
        m,
        "| client | policy | ready after the server accepts again, ms (median of {}) | min – max | attempt that succeeded | it was due, ms after accepting (median) | the outage began, ms before accepting (median) |",
        repetitions.len()
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|");
    let policies = policies();
    for kind in [Kind::Manager, Kind::Listener] {
        for (p, (policy_name, _)) in policies.iter().enumerate() {
            let of: Vec<&Recovery> = repetitions
                .iter()
                .flat_map(|r| &r.recoveries)
                .filter(|r| r.kind == kind && r.policy == p)
                .collect();
            if of.is_empty() {
                continue;
            }
            let pick = |f: fn(&Recovery) -> f64| of.iter().map(|r| f(r)).collect::<Vec<_>>();
            let ready = pick(|r| r.recovered_after_accepting);
            let min = ready.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ready.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut attempts: Vec<u32> = of.iter().map(|r| r.attempt).collect();
            attempts.sort_unstable();
            attempts.dedup();
            let attempts: Vec<String> = attempts.iter().map(u32::to_string).collect();
            let client = match kind {
                Kind::Manager => {
                    "manager: first `transaction` that succeeds (caller retrying every 1 ms)"
                }
                Kind::Listener => "`Listener`: `Reconnected` delivered",
            };
            let due = match kind {
                Kind::Manager => ms(median(pick(|r| r.due_after_accepting))),
                Kind::Listener => format!("≈ {}", ms(median(pick(|r| r.due_after_accepting)))),
            };
            let _ = writeln!(
                m,
                "| {client} | {policy_name} | {} | {} – {} | {} | {due} | {} |",
                ms(median(ready.clone())),
                ms(min),
                ms(max),
                attempts.join(", "),
                ms(median(pick(|r| r.down_before_accepting))),
            );
        }
    }
    let connected: Vec<f64> = repetitions
        .iter()
        .flat_map(|r| &r.recoveries)
        .filter_map(|r| Some(r.recovered_after_accepting - r.connected_after_accepting?))
        .collect();
    let _ = writeln!(m);
    for (name, policy) in &policies {
        let due: Vec<String> = cumulative(policy, 6)
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        let _ = writeln!(
            m,
            "- Policy {name}: attempts due {} s after the outage began (if failed attempts took no time; each wait counts from the previous failure).",
            due.join(", ")
        );
    }
    let _ = writeln!(
        m,
        "- The server: `pg_ctl stop -m fast` took {} ms, it accepted connections {} ms after `pg_ctl start` began, and `pg_ctl start -w` returned {} ms after that (medians). A manager's caller had its first transaction {} ms (median) after the reconnection thread's `on_connect` hook ran on the new connection.",
        ms(median(repetitions.iter().map(|r| r.stop).collect())),
        ms(median(
            repetitions.iter().map(|r| r.start_to_accepting).collect()
        )),
        ms(median(
            repetitions
                .iter()
                .map(|r| r.pg_ctl_returned_after_accepting)
                .collect()
        )),
        if connected.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}", super::median(&connected) * 1000.0)
        },
    );
    m.push_str(RECONNECT_METHOD);
    m
}

const RECONNECT_METHOD: &str = "
How it is measured. A private cluster of its own; each repetition stops it
(`pg_ctl stop -m fast -w`) and starts it again at once (`pg_ctl start
-w`), while four clients live through the same outage: a manager built
with `.reconnect(policy)` whose caller retries `transaction` every 1 ms,
and a `Listener` (listening to one channel) waiting in `recv_timeout`, each
with both policies. \"The server accepts again\" is the start of the first
successful `postgres::Client::connect` of a poller that tries every 2 ms
from the moment `pg_ctl stop` returned (so it is late by up to 2 ms and a
connect). A manager's attempts are read from its `ConnectionDead` errors
(`attempts`, `down_for`): the successful attempt is the one after the last
failure the caller saw, and it was due the policy's wait after that
failure. A listener's outage begins when it finds the connection broken
(`down_since`) and `Reconnected` says how many attempts it took; when the
last one was due is estimated by adding up the policy's waits. Almost all
of the time to recover is the wait for the next attempt due: the server
comes back between two attempts, and nothing tries sooner.
";
