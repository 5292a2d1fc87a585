//! Notification latency and throughput: a pgtx [`Listener`] on a thread of
//! its own, side by side with a bare `tokio-postgres` connection polled for
//! [`AsyncMessage`]s on a current-thread runtime of its own (what an async
//! program without pgtx would write), fed by the same kind of sender: a
//! plain `postgres::Client` in another session.
//!
//! Each receiver listens in a database of its own, with its own sender:
//! every session that listens in a database is woken by each `NOTIFY`
//! committed there, so a receiver that sits idle in the same database would
//! add work to the other's measurement.

use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::task::Poll;
use std::time::{Duration, Instant};

use pgtx::{ListenEvent, Listener};
use postgres::{Client, NoTls, Notification, Statement};
use tokio_postgres::AsyncMessage;

use super::BoxError;

/// The channel every receiver listens to (in its own database).
const CHANNEL: &str = "pgtx_bench";

/// A payload that gets a waiting receiver out of its wait when the sender
/// gave up, so that the thread scope can end.
const STOP: &str = "stop";

/// How long a sender waits for its receiver before calling the
/// notification lost.
const PATIENCE: Duration = Duration::from_secs(30);

/// Notifications per sender statement in the throughput case.
const BATCH: usize = 1000;

/// What a receiver does with each notification; an error stops it.
pub type Each<'a> = &'a mut dyn FnMut(Notification) -> Result<(), BoxError>;

/// Takes notifications on the receiver's own thread.
pub trait Receiver: Send {
    /// Waits for `count` notifications, handing each to `each` as soon as
    /// it is taken.
    fn receive(&mut self, count: usize, each: Each<'_>) -> Result<(), BoxError>;
}

/// `Listener::recv`, as a program would loop over it.
pub struct PgtxReceiver(Listener);

impl PgtxReceiver {
    pub fn connect(dsn: &str) -> Result<PgtxReceiver, BoxError> {
        let mut listener = Listener::connect(dsn)?;
        listener.listen(CHANNEL)?;
        Ok(PgtxReceiver(listener))
    }
}

impl Receiver for PgtxReceiver {
    fn receive(&mut self, count: usize, each: Each<'_>) -> Result<(), BoxError> {
        for _ in 0..count {
            match self.0.recv()? {
                ListenEvent::Notification(n) => each(n)?,
                other => {
                    return Err(
                        format!("the listener reported {other:?} during the benchmark").into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A `tokio-postgres` connection on a current-thread runtime, polled with
/// `Connection::poll_message` in one `block_on` per run.
pub struct TokioReceiver {
    runtime: tokio::runtime::Runtime,
    connection:
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    /// Kept so the connection stays open (dropping the client ends it).
    _client: tokio_postgres::Client,
}

impl TokioReceiver {
    pub fn connect(dsn: &str) -> Result<TokioReceiver, BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, mut connection) =
            runtime.block_on(tokio_postgres::connect(dsn, tokio_postgres::NoTls))?;
        let sql = format!("LISTEN {CHANNEL}");
        {
            let mut listen = pin!(client.batch_execute(&sql));
            runtime.block_on(poll_fn(|cx| {
                // The connection does the client's I/O: poll it meanwhile.
                while let Poll::Ready(message) = connection.poll_message(cx) {
                    match message {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(BoxError::from(e))),
                        None => return Poll::Ready(Err("the connection closed".into())),
                    }
                }
                listen.as_mut().poll(cx).map_err(BoxError::from)
            }))?;
        }
        Ok(TokioReceiver {
            runtime,
            connection,
            _client: client,
        })
    }
}

impl Receiver for TokioReceiver {
    fn receive(&mut self, count: usize, each: Each<'_>) -> Result<(), BoxError> {
        let connection = &mut self.connection;
        let mut left = count;
        if left == 0 {
            return Ok(());
        }
        // One `block_on` for the whole run, each notification handled
        // inside the poll: the runtime is entered once, not once per
        // notification.
        self.runtime.block_on(poll_fn(|cx| {
            loop {
                match connection.poll_message(cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                        if let Err(e) = each(n) {
                            return Poll::Ready(Err(e));
                        }
                        left -= 1;
                        if left == 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => {} // a notice
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => {
                        return Poll::Ready(Err("the connection closed".into()));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        }))
    }
}

/// A receiver, the session that notifies it, and the database they share.
pub struct Pair<R> {
    receiver: R,
    sender: Client,
    notify_one: Statement,
    notify_batch: Statement,
}

impl<R: Receiver> Pair<R> {
    pub fn new(receiver: R, dsn: &str) -> Result<Pair<R>, BoxError> {
        let mut sender = Client::connect(dsn, NoTls)?;
        let notify_one = sender.prepare("SELECT pg_notify($1, $2)")?;
        let notify_batch = sender.prepare(
            "SELECT count(pg_notify($1, i::text)) FROM generate_series(1, $2::int4) AS i",
        )?;
        Ok(Pair {
            receiver,
            sender,
            notify_one,
            notify_batch,
        })
    }

    /// Latency of `count` notifications sent one at a time: the sender
    /// writes the time it sends into the payload (nanoseconds since a base
    /// instant of this process, the same clock on both threads), the
    /// receiving thread subtracts it from the time the notification was
    /// handed to it, and only then does the sender send the next one.
    pub fn latencies(&mut self, count: usize) -> Result<Vec<Duration>, BoxError> {
        let base = Instant::now();
        let (delivered, deliveries) = mpsc::channel::<Duration>();
        let Pair {
            receiver,
            sender,
            notify_one,
            ..
        } = self;
        let (sent, received) = std::thread::scope(|s| {
            let receiving = s.spawn(move || -> Result<(), BoxError> {
                receiver.receive(count, &mut |n| {
                    let at = base.elapsed();
                    if n.payload() == STOP {
                        return Err("stopped by the sender".into());
                    }
                    let sent_at = Duration::from_nanos(n.payload().parse()?);
                    delivered
                        .send(at.saturating_sub(sent_at))
                        .map_err(|_| "the sender stopped".into())
                })
            });
            let mut samples = Vec::with_capacity(count);
            let sent = (|| -> Result<Vec<Duration>, BoxError> {
                for _ in 0..count {
                    let payload = base.elapsed().as_nanos().to_string();
                    sender.execute(&*notify_one, &[&CHANNEL, &payload])?;
                    match deliveries.recv_timeout(PATIENCE) {
                        Ok(latency) => samples.push(latency),
                        Err(RecvTimeoutError::Disconnected) => break, // its error follows
                        Err(RecvTimeoutError::Timeout) => {
                            return Err(format!("a notification took over {PATIENCE:?}").into());
                        }
                    }
                }
                Ok(samples)
            })();
            if sent.is_err() && !receiving.is_finished() {
                stop_receiver(sender, notify_one);
            }
            (sent, receiving.join())
        });
        let samples = both(sent, received)?;
        if samples.len() != count {
            return Err(format!("{} of {count} notifications arrived", samples.len()).into());
        }
        Ok(samples)
    }

    /// Notifications per second: `total` of them (rounded up to whole
    /// batches) sent [`BATCH`] per statement (each statement its own
    /// transaction, delivered when it commits), as fast as the sender can.
    ///
    /// [`Flow::Blast`]: the receiving thread takes them meanwhile; the rate
    /// runs from the first send to the moment it took the last one, and
    /// the sender's own rate (all sent over the time its statements took)
    /// comes with it, to tell who was the limit. [`Flow::QueuedFirst`]: the
    /// receiving thread starts once everything is committed, and the rate
    /// runs from then to the last one taken.
    pub fn throughput(&mut self, total: usize, flow: Flow) -> Result<Rates, BoxError> {
        let batches = total.div_ceil(BATCH);
        let total = batches * BATCH;
        let batch = i32::try_from(BATCH)?;
        let (finished, finish) = mpsc::channel::<Instant>();
        let (start, go) = mpsc::channel::<()>();
        let Pair {
            receiver,
            sender,
            notify_one,
            notify_batch,
        } = self;
        let (sent, received) = std::thread::scope(|s| {
            let receiving = s.spawn(move || -> Result<(), BoxError> {
                if go.recv().is_err() {
                    return Ok(()); // the sender failed before the start
                }
                receiver.receive(total, &mut |n| {
                    if n.payload() == STOP {
                        return Err("stopped by the sender".into());
                    }
                    Ok(())
                })?;
                // If the sender gave up meanwhile, nobody waits for this.
                let _ = finished.send(Instant::now());
                Ok(())
            });
            // Blasting, the receiving thread goes at once; queued first,
            // once everything is committed.
            let mut start = Some(start);
            let mut began = Instant::now();
            if flow == Flow::Blast
                && let Some(start) = start.take()
            {
                began = Instant::now();
                // If the receiving thread is gone, its error follows.
                let _ = start.send(());
            }
            let sent = (|| -> Result<(Instant, Instant, Instant), BoxError> {
                for _ in 0..batches {
                    sender.query_one(&*notify_batch, &[&CHANNEL, &batch])?;
                }
                let all_sent = Instant::now();
                if let Some(start) = start.take() {
                    began = Instant::now();
                    let _ = start.send(());
                }
                match finish.recv_timeout(PATIENCE) {
                    Ok(at) => Ok((began, all_sent, at)),
                    Err(RecvTimeoutError::Disconnected) => Err("the receiver failed".into()),
                    Err(RecvTimeoutError::Timeout) => {
                        Err(format!("the last notification took over {PATIENCE:?}").into())
                    }
                }
            })();
            // A receiving thread still waiting to start starts no more.
            drop(start);
            if sent.is_err() && !receiving.is_finished() {
                stop_receiver(sender, notify_one);
            }
            (sent, receiving.join())
        });
        let (began, all_sent, last) = both(sent, received)?;
        let rate = |end: Instant| total as f64 / end.duration_since(began).as_secs_f64();
        Ok(Rates {
            delivered: rate(last),
            sent: (flow == Flow::Blast).then(|| rate(all_sent)),
        })
    }
}

/// How the throughput case feeds the receiver.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flow {
    /// The receiver takes notifications while the sender sends them.
    Blast,
    /// Everything is committed before the receiver starts: the server
    /// holds what does not fit in the socket buffers, and the receiving
    /// side alone sets the pace.
    QueuedFirst,
}

/// What one throughput measurement found, notifications per second.
pub struct Rates {
    /// Taken by the receiving thread.
    pub delivered: f64,
    /// Committed by the sender ([`Flow::Blast`] only).
    pub sent: Option<f64>,
}

/// The sending side's outcome, unless either side failed: then both
/// sides' errors (one side failing makes the other fail too).
fn both<T>(
    sent: Result<T, BoxError>,
    received: std::thread::Result<Result<(), BoxError>>,
) -> Result<T, BoxError> {
    match (sent, received) {
        (_, Err(_)) => Err("the receiving thread panicked".into()),
        (Ok(value), Ok(Ok(()))) => Ok(value),
        (Err(e), Ok(Ok(()))) => Err(e),
        (Ok(_), Ok(Err(r))) => Err(format!("receiving: {r}").into()),
        (Err(e), Ok(Err(r))) => Err(format!("{e} (receiving: {r})").into()),
    }
}

/// Gets a receiver waiting in `next` out of its wait after the sender gave
/// up, so that the thread scope can end (best effort: if the sender's own
/// connection broke, nothing can).
fn stop_receiver(sender: &mut Client, notify_one: &Statement) {
    if let Err(e) = sender.execute(notify_one, &[&CHANNEL, &STOP]) {
        eprintln!("cannot stop the receiving thread: {e}");
    }
}

/// The `q`-quantile (nearest rank) of `samples`, which must be sorted.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the table calls the two receivers, pgtx first.
pub const NAMES: [&str; 2] = [
    "pgtx `Listener::recv`",
    "bare tokio-postgres `poll_message`",
];

/// Both receivers with their senders, and what they measured so far.
pub struct Notify {
    pgtx: Pair<PgtxReceiver>,
    tokio: Pair<TokioReceiver>,
    /// Every latency sample of every round, pgtx first.
    pub latency: [Vec<Duration>; 2],
    /// Notifications per second, one per round, pgtx first.
    pub throughput: [Vec<f64>; 2],
    /// The sender's own rate in those rounds, pgtx's sender first.
    pub sent: [Vec<f64>; 2],
    /// Notifications per second drained after all were queued, per round.
    pub drained: [Vec<f64>; 2],
}

impl Notify {
    /// Two fresh databases on `server`, a receiver and a sender in each.
    pub fn new(server: &super::server::TestServer) -> Result<Notify, BoxError> {
        let pgtx_db = server.fresh_database("pgtx_bench_notify_pgtx");
        let tokio_db = server.fresh_database("pgtx_bench_notify_tokio");
        Ok(Notify {
            pgtx: Pair::new(PgtxReceiver::connect(&pgtx_db)?, &pgtx_db)?,
            tokio: Pair::new(TokioReceiver::connect(&tokio_db)?, &tokio_db)?,
            latency: [Vec::new(), Vec::new()],
            throughput: [Vec::new(), Vec::new()],
            sent: [Vec::new(), Vec::new()],
            drained: [Vec::new(), Vec::new()],
        })
    }

    /// `count` latency samples from each receiver (after a short warm-up),
    /// the one `pgtx_first` says first; returns this round's medians.
    pub fn latency_round(
        &mut self,
        count: usize,
        pgtx_first: bool,
    ) -> Result<[Duration; 2], BoxError> {
        let mut medians = [Duration::ZERO; 2];
        for which in order(pgtx_first) {
            let mut samples = match which {
                0 => {
                    self.pgtx.latencies(WARM_UP)?;
                    self.pgtx.latencies(count)?
                }
                _ => {
                    self.tokio.latencies(WARM_UP)?;
                    self.tokio.latencies(count)?
                }
            };
            self.latency[which].extend_from_slice(&samples);
            samples.sort();
            medians[which] = quantile(&samples, 0.5);
        }
        Ok(medians)
    }

    /// One throughput measurement of `total` notifications per receiver,
    /// blasted and then queued first; returns the delivered rates, pgtx
    /// first, blasted then queued first.
    pub fn throughput_round(
        &mut self,
        total: usize,
        pgtx_first: bool,
    ) -> Result<[[f64; 2]; 2], BoxError> {
        let mut rates = [[0.0; 2]; 2];
        for (f, flow) in [Flow::Blast, Flow::QueuedFirst].into_iter().enumerate() {
            for which in order(pgtx_first) {
                let found = match which {
                    0 => self.pgtx.throughput(total, flow)?,
                    _ => self.tokio.throughput(total, flow)?,
                };
                rates[f][which] = found.delivered;
                match flow {
                    Flow::Blast => self.throughput[which].push(found.delivered),
                    Flow::QueuedFirst => self.drained[which].push(found.delivered),
                }
                if let Some(sent) = found.sent {
                    self.sent[which].push(sent);
                }
            }
        }
        Ok(rates)
    }

    /// The "Notifications" section of the report (what was measured).
    pub fn markdown(&self) -> String {
        let mut sorted = self.latency.clone();
        for samples in &mut sorted {
            samples.sort();
        }
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let mut m = String::new();
        let _ = writeln!(
            m,
            "| | {} | {} | pgtx / tokio-postgres |",
            NAMES[0], NAMES[1]
        );
        let _ = writeln!(m, "|---|---:|---:|---:|");
        if !sorted[0].is_empty() && !sorted[1].is_empty() {
            for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                let [a, b] = [quantile(&sorted[0], q), quantile(&sorted[1], q)];
                let _ = writeln!(
                    m,
                    "| latency {label}, µs ({} notifications each) | {:.0} | {:.0} | {:.2}× |",
                    sorted[0].len().min(sorted[1].len()),
                    micros(a),
                    micros(b),
                    micros(a) / micros(b)
                );
            }
        }
        if !self.throughput[0].is_empty() && !self.throughput[1].is_empty() {
            let [a, b] = [
                super::median(&self.throughput[0]),
                super::median(&self.throughput[1]),
            ];
            let spread = |v: &[f64]| {
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(0.0, f64::max);
                format!("{min:.0} – {max:.0}")
            };
            let _ = writeln!(
                m,
                "| throughput, notifications/s delivered (median of {} rounds; min – max) | {a:.0} ({}) | {b:.0} ({}) | {:.2}× |",
                self.throughput[0].len(),
                spread(&self.throughput[0]),
                spread(&self.throughput[1]),
                a / b
            );
            let [c, d] = [super::median(&self.sent[0]), super::median(&self.sent[1])];
            let _ = writeln!(
                m,
                "| … the sender's own rate in those runs, notifications/s committed (median) | {c:.0} | {d:.0} | {:.2}× |",
                c / d
            );
            let [e, f] = [
                super::median(&self.drained[0]),
                super::median(&self.drained[1]),
            ];
            let _ = writeln!(
                m,
                "| throughput, notifications/s drained, all queued first (median; min – max) | {e:.0} ({}) | {f:.0} ({}) | {:.2}× |",
                spread(&self.drained[0]),
                spread(&self.drained[1]),
                e / f
            );
        }
        m.push_str(NOTIFY_METHOD);
        m
    }
}

/// Uncounted notifications before each latency round.
const WARM_UP: usize = 20;

/// The two receivers in the order of the round (they take turns going first).
fn order(pgtx_first: bool) -> [usize; 2] {
    if pgtx_first { [0, 1] } else { [1, 0] }
}

const NOTIFY_METHOD: &str = "
How it is measured. Each receiver listens on a connection of its own, in
a database of its own, on a thread of its own; the sender is a plain
`postgres::Client` (one per database, `SELECT pg_notify($1, $2)`,
prepared). The pgtx receiver loops over `Listener::recv`; the other is
what an async program without pgtx would write: `tokio_postgres::connect`
on a current-thread runtime, and one `block_on` for the whole run that
polls `Connection::poll_message` and handles each
`AsyncMessage::Notification` inside the poll (the runtime entered once,
not once per notification: as strong a baseline as a hand-written async
loop).

- Latency: one notification at a time. The sender puts the time it sends
  into the payload (nanoseconds since an instant of the benchmark process:
  the same monotonic clock on both threads) and, once the statement
  returned, waits until the receiving thread has taken the notification
  before sending the next. The receiving thread subtracts the payload from
  the time `recv` (`poll_message`) handed it the notification. So a sample
  is the whole path: the sender's write, the server's commit and signal to
  the listening backend, that backend's write, the receiving thread waking
  in `epoll_wait`, and the parsing. The two receivers take turns, round
  after round (each round starts with 20 uncounted ones), and the
  quantiles are over every round's samples.
- Throughput: the sender blasts batches of 1,000 (`SELECT
  count(pg_notify($1, i::text)) FROM generate_series(1, 1000) AS i`, one
  transaction each, delivered at its commit) without waiting for the
  receiver; the rate is the notifications sent over the time from the
  first send to when the receiving thread took the last one. The
  sender's own rate (the same count over the time its statements took) is
  shown beside it: where it is higher, the receiving side was the limit;
  where it is the same, the receiver kept up and the sender was.
- Throughput, queued first: the same batches, all committed before the
  receiving thread starts; the rate runs from its start to the last one
  taken. The listening backend has written what fits into the socket
  buffers and holds the rest in the server's notification queue, so the
  receiving side alone (that backend reading the queue and writing, the
  client reading and parsing) sets the pace.
";
