//! LISTEN/NOTIFY on a connection of its own, reconnected with a
//! [`ReconnectPolicy`] when it breaks, and every gap announced.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postgres::Notification;

use crate::blocking::driver::{Blocking, Driver};
use crate::blocking::factory::{ConnectionFactory, Occasion};
use crate::config::Settings;
use crate::conn::interrupt::Interrupt;
use crate::error::{Error, Result, describe};
use crate::machine::ident::{check_notification, quote_identifier};
use crate::machine::reconnect::{Next, Outage, ReconnectPolicy};
use crate::statements::Naming;
use crate::user_code::catch_panic;

/// What a [`Listener`] delivers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ListenEvent {
    /// A notification on a channel the listener listens to (sent with
    /// `NOTIFY` or `pg_notify` by any session, the listener's own included).
    Notification(Notification),

    /// The connection broke and is back: a new session listens to every
    /// channel again (each `LISTEN` was re-issued before this event), but
    /// notifications sent while it was down **may have been missed**.
    /// Re-read whatever state the notifications stand for.
    ///
    /// Delivered once per outage, after every notification received before
    /// the break and before any received after it.
    #[non_exhaustive]
    Reconnected {
        /// When the listener found the connection broken.
        down_since: Instant,
        /// Connection attempts it took, the successful one included.
        attempts: u32,
    },

    /// Another thread called [`ListenerWaker::wake`]: nothing arrived.
    /// Delivered once for any number of wakes since the last one
    /// delivered, to the receiving method blocked then or to the next one;
    /// observers are not told. Wake a listener to make the thread that
    /// owns it look at something else (a shutdown flag, say) and drop it.
    Woken,
}

impl ListenEvent {
    /// The notification, if this is one.
    pub fn as_notification(&self) -> Option<&Notification> {
        match self {
            ListenEvent::Notification(n) => Some(n),
            ListenEvent::Reconnected { .. } | ListenEvent::Woken => None,
        }
    }
}

/// What an observer may fail with; the failure is logged, not propagated.
pub type ObserverError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type Observer = Arc<dyn Fn(&ListenEvent) -> Result<(), ObserverError> + Send + Sync>;

/// Names an observer added with [`Listener::add_observer`], to remove it.
///
/// Unique in the process: an id from another listener names nothing here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObserverId(u64);

impl ObserverId {
    pub(crate) fn next() -> ObserverId {
        // Per process rather than per listener, so that removing another
        // listener's id is the no-op it looks like.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ObserverId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ObserverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// `LISTEN`s on a connection of its own and delivers notifications, in the
/// order the server sent them, each once and whole.
///
/// Made by [`Listener::connect`] or
/// [`ManagedConnection::listener`](crate::ManagedConnection::listener)
/// (the same settings, a separate connection): notifications arrive
/// whether or not any thread holds the shared connection, and waiting for
/// them never holds it.
///
/// # Receiving
///
/// [`recv`](Self::recv) waits as long as it takes,
/// [`recv_timeout`](Self::recv_timeout) gives up after a while and
/// [`try_recv`](Self::try_recv) does not wait for a notification;
/// [`iter`](Self::iter) and [`timeout_iter`](Self::timeout_iter) are the
/// iterator forms. Waiting does not spin: the thread sleeps in the
/// connection's runtime until the socket has data or the timeout is up.
/// Nothing is read while no thread calls these; the server keeps the
/// session's notifications queued meanwhile.
///
/// # Observers
///
/// [`add_observer`](Self::add_observer) registers a function that sees
/// every event. Observers are called **on the caller's thread, from the
/// receiving methods**: each event, as it is taken, goes to every observer
/// in the order they were added and is then returned to the caller as
/// well. There is no background thread; to have observers called all the
/// time, give the listener to a thread of its own that loops over
/// [`iter`](Self::iter) (it is `Send`). An observer that returns an error
/// or panics is logged (`log`, at `error` level, naming the observer and
/// the channel, never the payload) and the others are still called; the
/// panic goes no further.
///
/// # When the connection breaks
///
/// The gap is never silent. A broken connection (a server restart, an
/// administrator's `pg_terminate_backend`, a network failure the socket
/// reports) is noticed by the receiving methods, which deliver what was
/// received before the break, then reconnect on the
/// [`ReconnectPolicy`] (by default txpostgres' schedule: at once, then
/// after 1.7 s growing ×1.7 up to 10 s, each wait ±12 %, for ever; see
/// [`set_reconnect_policy`](Self::set_reconnect_policy)),
/// re-issue every `LISTEN`, and only then deliver
/// [`ListenEvent::Reconnected`], once per outage. If a round of attempts
/// runs out ([`ReconnectPolicy::max_attempts`]), they return
/// [`Error::ReconnectFailed`]; the next call starts another round.
///
/// Reconnecting happens inside the receiving methods and respects their
/// timeout, except that an attempt in progress is finished first (bounded
/// by `connect_timeout`).
///
/// # Dropping
///
/// Dropping the listener closes its connection politely (the server sees
/// the client leave); its channels go with the session.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use pgtx::{ListenEvent, Listener};
///
/// let mut listener = Listener::connect("host=localhost user=postgres")?;
/// listener.listen("Jobs")?;
/// while let Some(event) = listener.recv_timeout(Duration::from_secs(5))? {
///     match event {
///         ListenEvent::Notification(n) => println!("{}: {}", n.channel(), n.payload()),
///         ListenEvent::Reconnected { .. } => println!("reconnected: re-read the job table"),
///         _ => {}
///     }
/// }
/// # Ok::<(), pgtx::Error>(())
/// ```
pub struct Listener {
    /// Makes its connections: no hooks, prepared statements cached.
    factory: ConnectionFactory,
    /// Drives them.
    runtime: Blocking,
    policy: ReconnectPolicy,
    link: Link,
    /// Every channel listened to, in the order first asked for: the
    /// `LISTEN`s re-issued after a reconnect.
    channels: Vec<String>,
    /// Events due before anything the connection has queued: what was
    /// received before an outage, then its `Reconnected`.
    ready: VecDeque<ListenEvent>,
    observers: Vec<(ObserverId, Observer)>,
    /// Raised by [`ListenerWaker::wake`].
    interrupt: Arc<Interrupt>,
}

static_assertions::assert_impl_all!(Listener: Send);

/// Wakes a [`Listener`] from another thread: its receiving method blocked
/// now (or the next one called) returns [`ListenEvent::Woken`]. Made by
/// [`Listener::waker`]; cheap to clone, `Send` and `Sync`, and it does not
/// keep the listener alive.
#[derive(Clone)]
pub struct ListenerWaker(Arc<Interrupt>);

static_assertions::assert_impl_all!(ListenerWaker: Send, Sync);

impl ListenerWaker {
    /// Wakes the listener (see [`ListenEvent::Woken`]).
    pub fn wake(&self) {
        self.0.raise();
    }
}

impl fmt::Debug for ListenerWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerWaker").finish_non_exhaustive()
    }
}
static_assertions::assert_not_impl_any!(Listener: Clone);

/// The connection, or the outage it is in.
enum Link {
    Up(Driver),
    Down(Outage),
    /// Only while dropping.
    Closed,
}

impl Listener {
    /// Connects with `dsn` (the connection strings of
    /// [`ManagedConnection::new`](crate::ManagedConnection::new)),
    /// listening to nothing yet.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if `dsn` cannot be read; [`Error::Connect`] if
    /// no server accepted the connection (the first connection is not
    /// retried: wrong settings fail at once); [`Error::Runtime`] if the
    /// runtime that drives the connection could not be made.
    pub fn connect(dsn: &str) -> Result<Listener> {
        Listener::open(Settings::parse(dsn)?)
    }

    /// Connects with `settings`.
    pub(crate) fn open(settings: Settings) -> Result<Listener> {
        let factory = ConnectionFactory::new(settings, Naming::Cached);
        let runtime = Blocking::new()?;
        let driver = factory.open(&runtime, Occasion::Fresh)?;
        Ok(Listener {
            factory,
            runtime,
            policy: ReconnectPolicy::default(),
            link: Link::Up(driver),
            channels: Vec::new(),
            ready: VecDeque::new(),
            observers: Vec::new(),
            interrupt: Arc::default(),
        })
    }

    /// A handle that wakes this listener from another thread (see
    /// [`ListenEvent::Woken`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let mut listener = pgtx::Listener::connect("host=localhost user=postgres")?;
    /// let waker = listener.waker();
    /// std::thread::spawn(move || waker.wake());
    /// // Returns `Woken` once the other thread has called `wake`, if no
    /// // notification came first.
    /// let event = listener.recv()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn waker(&self) -> ListenerWaker {
        ListenerWaker(self.interrupt.clone())
    }

    /// The policy used from the next outage on.
    pub fn set_reconnect_policy(&mut self, policy: ReconnectPolicy) {
        self.policy = policy;
    }

    /// The reconnection policy (txpostgres' defaults unless set).
    pub fn reconnect_policy(&self) -> &ReconnectPolicy {
        &self.policy
    }

    /// The channels listened to, in the order first asked for.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// Listens to `channel`: sends `LISTEN` with the name quoted as an
    /// identifier, so it is taken exactly as given (case, spaces, quotes
    /// and semicolons included; nothing in it can run as SQL). Listening
    /// again to the same channel changes nothing.
    ///
    /// If the connection is down, or breaks meanwhile, the channel is
    /// remembered and listened to as part of reconnecting (in the
    /// receiving methods), and the gap is announced by
    /// [`ListenEvent::Reconnected`] as usual, so this still returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] if `channel` is empty, longer than 63
    /// bytes or holds a NUL, before anything is sent. (PostgreSQL would
    /// truncate a longer name in `LISTEN`, with only a notice, to another
    /// channel, while `pg_notify` refuses it: nothing could ever be sent to
    /// the name asked for.) [`Error::Db`] if the server refused it (a
    /// server in recovery). Either way the channel is not remembered.
    pub fn listen(&mut self, channel: &str) -> Result<()> {
        check_notification(channel, None)?;
        self.execute_control(&format!("LISTEN {}", quote_identifier(channel)))?;
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_owned());
        }
        Ok(())
    }

    /// Stops listening to `channel` (`UNLISTEN`). Once it returns, no
    /// notification of that channel is delivered, not even one already
    /// received. Unlistening a channel not listened to is fine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] for a name [`listen`](Self::listen)
    /// refuses, before anything is sent (the server would truncate a long
    /// one and so stop listening to another channel). [`Error::Db`] if the
    /// server refused it; the listener still listens to the channel. A
    /// connection that is down or breaks meanwhile is no error: the new
    /// session will not listen to it.
    pub fn unlisten(&mut self, channel: &str) -> Result<()> {
        check_notification(channel, None)?;
        self.execute_control(&format!("UNLISTEN {}", quote_identifier(channel)))?;
        self.channels.retain(|c| c != channel);
        self.discard_queued(|n| n.channel() == channel);
        Ok(())
    }

    /// Stops listening to every channel (`UNLISTEN *`) and drops the
    /// notifications received and not yet taken. A pending
    /// [`ListenEvent::Reconnected`] is kept.
    ///
    /// # Errors
    ///
    /// As [`unlisten`](Self::unlisten).
    pub fn unlisten_all(&mut self) -> Result<()> {
        self.execute_control("UNLISTEN *")?;
        self.channels.clear();
        self.discard_queued(|_| true);
        Ok(())
    }

    /// Sends a notification from the listener's own session
    /// (`pg_notify(channel, payload)`, the values sent as parameters). A
    /// channel it listens to delivers it back, as any other.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`], before anything is sent, for a
    /// channel name [`listen`](Self::listen) refuses, or a payload of 8000
    /// bytes or more or with a NUL (PostgreSQL's limits, as
    /// [`TwoPhase::notify`](crate::TwoPhase::notify) checks them);
    /// [`Error::Db`] if the server refused it; [`Error::ConnectionLost`] if
    /// the connection is down or broke: nothing was sent, and the receiving
    /// methods reconnect.
    pub fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        check_notification(channel, Some(payload))?;
        self.query(|driver| {
            driver
                .run(|c| async move {
                    c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                        .await
                })
                .map(drop)
        })
    }

    /// The process id of the listener's server session (as
    /// [`Notification::process_id`] names the sender), one round trip.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] if the connection is down or broke (the
    /// receiving methods reconnect); [`Error::Db`] for any other failure.
    pub fn backend_pid(&mut self) -> Result<i32> {
        self.query(|driver| {
            driver
                .run(|c| c.query_one("SELECT pg_backend_pid()", &[]))
                .map(|row| row.get(0))
        })
    }

    /// Waits for the next event, as long as it takes (reconnecting when
    /// the connection breaks).
    ///
    /// # Errors
    ///
    /// [`Error::ReconnectFailed`] if a round of reconnection attempts ran
    /// out ([`ReconnectPolicy::max_attempts`]; never with the default
    /// policy). The listener stays usable; the next call tries again.
    pub fn recv(&mut self) -> Result<ListenEvent> {
        loop {
            if let Some(event) = self.next_event(None)? {
                return Ok(event);
            }
        }
    }

    /// Waits at most `timeout` for the next event; `Ok(None)` if none came.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ListenEvent>> {
        self.next_event(Instant::now().checked_add(timeout))
    }

    /// The next event if one has arrived; does not wait for one. It still
    /// reads the socket once, and makes a reconnection attempt if one is
    /// due (which takes as long as connecting takes).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Option<ListenEvent>> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Events as they come, for ever: each item is [`recv`](Self::recv).
    pub fn iter(&mut self) -> Events<'_> {
        Events {
            listener: self,
            timeout: None,
        }
    }

    /// Events until none comes within `timeout` of the previous one: each
    /// item is [`recv_timeout`](Self::recv_timeout), and the iterator ends
    /// at the first `Ok(None)`.
    pub fn timeout_iter(&mut self, timeout: Duration) -> Events<'_> {
        Events {
            listener: self,
            timeout: Some(timeout),
        }
    }

    /// Adds an observer, called with every event the receiving methods take
    /// (see [Observers](Self#observers)), and returns its id.
    ///
    /// Observers are told apart by their `Arc`: adding the same one again
    /// (the same `Arc` or a clone of it) adds nothing and returns the id it
    /// already has, so it is still called once per event.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use pgtx::{ListenEvent, Listener};
    ///
    /// let mut listener = Listener::connect("host=localhost user=postgres")?;
    /// let print = Arc::new(|event: &ListenEvent| {
    ///     println!("{event:?}");
    ///     Ok(())
    /// });
    /// let id = listener.add_observer(print.clone());
    /// assert_eq!(listener.add_observer(print), id);
    /// listener.listen("jobs")?;
    /// listener.recv()?; // printed by the observer, and returned here too
    /// assert!(listener.remove_observer(id));
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn add_observer<F>(&mut self, observer: Arc<F>) -> ObserverId
    where
        F: Fn(&ListenEvent) -> Result<(), ObserverError> + Send + Sync + 'static,
    {
        let observer: Observer = observer;
        if let Some((id, _)) = self
            .observers
            .iter()
            .find(|(_, known)| std::ptr::addr_eq(Arc::as_ptr(known), Arc::as_ptr(&observer)))
        {
            return *id;
        }
        let id = ObserverId::next();
        self.observers.push((id, observer));
        id
    }

    /// Removes an observer; whether it was there (removing one that is
    /// not, or no longer, is fine).
    pub fn remove_observer(&mut self, id: ObserverId) -> bool {
        let before = self.observers.len();
        self.observers.retain(|(known, _)| *known != id);
        self.observers.len() != before
    }

    /// Runs `LISTEN`/`UNLISTEN`; a connection that is down or breaks is no
    /// error (see `listen`).
    fn execute_control(&mut self, sql: &str) -> Result<()> {
        let Link::Up(driver) = &mut self.link else {
            return Ok(());
        };
        let result = driver.run(|c| c.batch_execute(sql));
        match driver.outcome(result) {
            Err(Error::ConnectionLost(cause)) => {
                self.lost(cause.as_ref());
                Ok(())
            }
            other => other,
        }
    }

    /// Runs a statement of the listener's own; a broken connection is
    /// [`Error::ConnectionLost`].
    fn query<T>(
        &mut self,
        run: impl FnOnce(&mut Driver) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let Link::Up(driver) = &mut self.link else {
            return Err(Error::ConnectionLost(None));
        };
        let result = run(driver);
        let result = driver.outcome(result);
        if let Err(Error::ConnectionLost(cause)) = &result {
            self.lost(cause.as_ref());
        }
        result
    }

    /// Drops queued notifications that `unwanted` picks, wherever they wait.
    fn discard_queued(&mut self, unwanted: impl Fn(&Notification) -> bool) {
        self.ready
            .retain(|event| !event.as_notification().is_some_and(&unwanted));
        if let Link::Up(driver) = &mut self.link {
            driver.notifications().retain(|n| !unwanted(n));
        }
    }

    /// The next event by `deadline` (`None`: none), given to the observers.
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<ListenEvent>> {
        loop {
            if let Some(event) = self.take_queued() {
                self.observe(&event);
                return Ok(Some(event));
            }
            if self.interrupt.take() {
                return Ok(Some(ListenEvent::Woken));
            }
            match &mut self.link {
                Link::Up(driver) if driver.has_ended() => self.lost(None),
                Link::Up(driver) => {
                    // Woken, the flag stays raised for the top of the
                    // loop, which delivers it after anything queued.
                    if !driver.wait_notification(deadline, &self.interrupt)
                        && !driver.has_ended()
                        && !self.interrupt.is_raised()
                    {
                        return Ok(None);
                    }
                }
                Link::Down(outage) => {
                    let due = outage.next_attempt_at();
                    if deadline.is_some_and(|deadline| deadline < due) {
                        self.runtime.block_on(self.interrupt.sleep_until(deadline));
                        if self.interrupt.take() {
                            return Ok(Some(ListenEvent::Woken));
                        }
                        return Ok(None);
                    }
                    self.runtime.block_on(self.interrupt.sleep_until(Some(due)));
                    if self.interrupt.take() {
                        return Ok(Some(ListenEvent::Woken));
                    }
                    self.reconnect()?;
                }
                Link::Closed => return Ok(None),
            }
        }
    }

    fn take_queued(&mut self) -> Option<ListenEvent> {
        if let Some(event) = self.ready.pop_front() {
            return Some(event);
        }
        match &mut self.link {
            Link::Up(driver) => driver
                .notifications()
                .pop_front()
                .map(ListenEvent::Notification),
            _ => None,
        }
    }

    /// The connection has ended (`cause`: why, if a request already took
    /// the reason from the driver): keeps what it received (delivered
    /// before the outage's `Reconnected`) and starts the outage.
    fn lost(&mut self, cause: Option<&postgres::Error>) {
        let now = Instant::now();
        let link = std::mem::replace(&mut self.link, Link::Down(Outage::new(now, &self.policy)));
        if let Link::Up(mut driver) = link {
            self.ready.extend(
                driver
                    .notifications()
                    .drain(..)
                    .map(ListenEvent::Notification),
            );
            // `postgres::Error` shows a server's error as a bare "db error":
            // say what the server said (57P01 for pg_terminate_backend).
            let end = driver.take_end_cause();
            match cause.or(end.as_ref()) {
                Some(cause) => log::warn!(
                    "pgtx: the listener's connection was lost ({}); reconnecting",
                    describe(cause)
                ),
                None => log::warn!("pgtx: the listener's connection was lost; reconnecting"),
            }
        }
    }

    /// One reconnection attempt: connects and re-issues every `LISTEN`.
    fn reconnect(&mut self) -> Result<()> {
        let Listener {
            factory,
            runtime,
            link,
            channels,
            ready,
            ..
        } = self;
        let Link::Down(outage) = link else {
            return Ok(());
        };
        outage.attempting();
        match open_listening(factory, runtime, channels) {
            Ok(driver) => {
                log::info!(
                    "pgtx: the listener reconnected after {:?} and {} attempt(s); \
                     notifications sent meanwhile may have been missed",
                    outage.since().elapsed(),
                    outage.attempts()
                );
                ready.push_back(ListenEvent::Reconnected {
                    down_since: outage.since(),
                    attempts: outage.attempts(),
                });
                *link = Link::Up(driver);
                Ok(())
            }
            Err(e) => {
                let attempt = outage.attempts();
                let failure = crate::error::chain(&e);
                let now = Instant::now();
                match outage.failed(now, e) {
                    Next::RetryAt(at) => {
                        log::warn!(
                            "pgtx: listener reconnection attempt {attempt} failed: {failure}; \
                             next attempt in {:?}",
                            at.saturating_duration_since(now)
                        );
                        Ok(())
                    }
                    Next::GiveUp(error) => {
                        log::warn!(
                            "pgtx: listener reconnection attempt {attempt} failed: {failure}; giving up this round"
                        );
                        Err(error)
                    }
                }
            }
        }
    }

    /// Gives `event` to every observer; failures and panics are logged.
    fn observe(&self, event: &ListenEvent) {
        for (id, observer) in &self.observers {
            let what = match event {
                ListenEvent::Notification(n) => format!("a notification on {:?}", n.channel()),
                ListenEvent::Reconnected { .. } => "a reconnection".to_owned(),
                // Not a server's event: not given to observers.
                ListenEvent::Woken => return,
            };
            let outcome = catch_panic(
                || format!("listener observer {id} panicked on {what}"),
                || observer(event),
            );
            if let Some(Err(e)) = outcome {
                log::error!("pgtx: listener observer {id} failed on {what}: {e}");
            }
        }
    }
}

/// A new connection listening to `channels`, all in one round trip.
fn open_listening(
    factory: &ConnectionFactory,
    runtime: &Blocking,
    channels: &[String],
) -> Result<Driver> {
    let mut driver = factory.open(runtime, Occasion::Fresh)?;
    if channels.is_empty() {
        return Ok(driver);
    }
    let sql: String = channels
        .iter()
        .map(|c| format!("LISTEN {};", quote_identifier(c)))
        .collect();
    let listened = driver.run(|c| c.batch_execute(&sql));
    driver.outcome(listened).map(|()| driver)
}

impl Drop for Listener {
    /// Closes the connection politely (waiting up to a second for the
    /// server to see it go).
    fn drop(&mut self) {
        if let Link::Up(driver) = std::mem::replace(&mut self.link, Link::Closed) {
            driver.close();
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.link {
            Link::Up(driver) if !driver.has_ended() => "connected",
            Link::Up(_) | Link::Down(_) => "reconnecting",
            Link::Closed => "closed",
        };
        f.debug_struct("Listener")
            .field("settings", self.factory.settings())
            .field("state", &state)
            .field("channels", &self.channels)
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

/// Events of a [`Listener`], from [`Listener::iter`] (for ever) or
/// [`Listener::timeout_iter`] (until a quiet spell).
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct Events<'a> {
    listener: &'a mut Listener,
    timeout: Option<Duration>,
}

impl Iterator for Events<'_> {
    type Item = Result<ListenEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.timeout {
            None => Some(self.listener.recv()),
            Some(timeout) => self.listener.recv_timeout(timeout).transpose(),
        }
    }
}

impl fmt::Debug for Events<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
