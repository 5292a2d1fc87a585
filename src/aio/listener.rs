//! LISTEN/NOTIFY on the async front: a connection of its own, read as a
//! [`Stream`] of events, reconnected with a [`ReconnectPolicy`] when it
//! breaks (every channel listened to again), and every gap announced — the
//! blocking [`Listener`](crate::Listener)'s rules, without a thread.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::time::Sleep;

use crate::aio::factory::BoxFuture;
use crate::config::Settings;
use crate::conn::Connection;
use crate::conn::session::DRAIN_LIMIT;
use crate::conn::writable::WritableWatch;
use crate::error::{Error, Result, describe};
use crate::listener::{ListenEvent, Observer, ObserverError, ObserverId};
use crate::machine::ident::{check_notification, quote_identifier};
use crate::machine::reconnect::{Next, Outage, ReconnectPolicy};
use crate::statements::Naming;
use crate::user_code::catch_panic;

/// Notifications from PostgreSQL's `LISTEN`/`NOTIFY` on a connection of
/// its own, as a [`Stream`] of [`ListenEvent`]s (or with
/// [`recv`](Self::recv)).
///
/// When the connection breaks, the listener reconnects on its
/// [`ReconnectPolicy`] (while it is read), listens to every channel again,
/// and delivers [`ListenEvent::Reconnected`]: notifications sent while it
/// was down may have been missed. Notifications received before the break
/// are delivered first. A round of attempts that runs out is an error
/// from the stream (or `recv`); the next read starts a new round.
///
/// Observers ([`add_observer`](Self::add_observer)) are told every event
/// the listener delivers; to run them without a thread of their own,
/// spawn [`run_observers`](Self::run_observers) on a task.
///
/// # Cancel safety
///
/// [`recv`](Self::recv) and the stream lose nothing when their future is
/// dropped: a notification stays queued, a reconnection under way goes on
/// at the next read. A `listen`, `unlisten` or `notify` whose future is
/// dropped leaves its request to be drained (and cancelled) before the
/// listener's next one; whether it took effect is then unknown.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> pgtx::Result<()> {
/// let mut listener = pgtx::aio::Listener::connect("host=localhost user=postgres").await?;
/// listener.listen("jobs").await?;
/// loop {
///     match listener.recv().await? {
///         pgtx::ListenEvent::Notification(n) => println!("job {}", n.payload()),
///         pgtx::ListenEvent::Reconnected { .. } => println!("re-read the job table"),
///         _ => {}
///     }
/// }
/// # }
/// ```
pub struct Listener {
    settings: Arc<Settings>,
    policy: ReconnectPolicy,
    link: Link,
    channels: Vec<String>,
    /// Events taken off a connection that was lost, and `Reconnected`.
    ready: VecDeque<ListenEvent>,
    observers: Vec<(ObserverId, Observer)>,
}

static_assertions::assert_impl_all!(Listener: Send, Unpin);

enum Link {
    /// Connected and listening.
    Up(Box<Connection>),
    /// A request of the listener's own was interrupted: the connection is
    /// drained (and the request cancelled) before it is used again.
    Recovering(BoxFuture<'static, Option<Connection>>),
    /// Lost: the next attempt is due when `until` fires.
    Waiting {
        outage: Outage,
        until: Pin<Box<Sleep>>,
    },
    /// An attempt under way.
    Connecting {
        outage: Outage,
        opening: BoxFuture<'static, Result<Connection>>,
    },
}

impl Listener {
    /// Connects a listener (listening to nothing yet).
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the connection string cannot be read;
    /// [`Error::Connect`] if no server accepted the connection.
    pub async fn connect(dsn: &str) -> Result<Listener> {
        Listener::open(Settings::parse(dsn)?).await
    }

    pub(crate) async fn open(settings: Settings) -> Result<Listener> {
        let settings = Arc::new(settings);
        let conn = open_listening(Arc::clone(&settings), Vec::new()).await?;
        Ok(Listener {
            settings,
            policy: ReconnectPolicy::default(),
            link: Link::Up(Box::new(conn)),
            channels: Vec::new(),
            ready: VecDeque::new(),
            observers: Vec::new(),
        })
    }

    /// Sets how the listener reconnects (default: txpostgres' schedule,
    /// for ever; see [`ReconnectPolicy`]).
    pub fn set_reconnect_policy(&mut self, policy: ReconnectPolicy) {
        self.policy = policy;
    }

    /// The channels listened to.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// Listens to `channel` (as written: case and spaces are kept). While
    /// the connection is down, the channel is listened to on reconnection.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] if `channel` is empty, longer than 63
    /// bytes or holds a NUL, before anything is sent; [`Error::Db`] if the
    /// server refused it. Either way the channel is not remembered.
    pub async fn listen(&mut self, channel: &str) -> Result<()> {
        check_notification(channel, None)?;
        self.control(&format!("LISTEN {}", quote_identifier(channel)))
            .await?;
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_owned());
            self.restart_attempt();
        }
        Ok(())
    }

    /// Stops listening to `channel`; notifications of it not yet
    /// delivered are dropped.
    ///
    /// # Errors
    ///
    /// As [`listen`](Self::listen).
    pub async fn unlisten(&mut self, channel: &str) -> Result<()> {
        check_notification(channel, None)?;
        self.channels.retain(|c| c != channel);
        self.restart_attempt();
        // After the round trip: what was sent before it has arrived by then.
        let done = self
            .control(&format!("UNLISTEN {}", quote_identifier(channel)))
            .await;
        self.discard_queued(|n| n.channel() == channel);
        done
    }

    /// Stops listening to every channel; notifications not yet delivered
    /// are dropped.
    ///
    /// # Errors
    ///
    /// The server's error for `UNLISTEN *`.
    pub async fn unlisten_all(&mut self) -> Result<()> {
        self.channels.clear();
        self.restart_attempt();
        let done = self.control("UNLISTEN *").await;
        self.discard_queued(|_| true);
        done
    }

    /// Sends a notification on `channel` (`pg_notify`), from the
    /// listener's own connection.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNotification`] before anything is sent, for a
    /// channel name [`listen`](Self::listen) refuses or a payload of 8000
    /// bytes or more; [`Error::Db`] if the server refused it;
    /// [`Error::ConnectionLost`] while the connection is down.
    pub async fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        check_notification(channel, Some(payload))?;
        let conn = self.connection().await?;
        let sent = conn
            .run(|c| async move {
                c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                    .await
            })
            .await
            .map(drop);
        self.after_request(sent)
    }

    /// The process id of the listener's server session (it changes when
    /// the listener reconnects).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] while the connection is down.
    pub async fn backend_pid(&mut self) -> Result<i32> {
        let conn = self.connection().await?;
        let pid = conn
            .run(|c| c.query_one("SELECT pg_backend_pid()", &[]))
            .await
            .map(|row| row.get(0));
        self.after_request(pid)
    }

    /// The next event, waiting (and reconnecting) as long as it takes;
    /// observers are told it first.
    ///
    /// # Errors
    ///
    /// [`Error::ReconnectFailed`] when a round of reconnection attempts
    /// ran out (the next call starts another).
    pub async fn recv(&mut self) -> Result<ListenEvent> {
        let event = poll_fn(|cx| self.poll_event(cx)).await?;
        self.observe(&event);
        Ok(event)
    }

    /// As [`recv`](Self::recv), giving up after `timeout` (`Ok(None)`).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ListenEvent>> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(event) => event.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// An event that has already arrived, if any, without waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn try_recv(&mut self) -> Result<Option<ListenEvent>> {
        tokio::task::yield_now().await;
        match poll_fn(|cx| Poll::Ready(self.poll_event(cx))).await {
            Poll::Ready(event) => {
                let event = event?;
                self.observe(&event);
                Ok(Some(event))
            }
            Poll::Pending => Ok(None),
        }
    }

    /// Adds an observer, told every event the listener delivers (before
    /// the caller gets it); adding the same `Arc` again changes nothing.
    /// Its error or panic is logged, and the others are still told.
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

    /// Removes an observer; whether it was there.
    pub fn remove_observer(&mut self, id: ObserverId) -> bool {
        let before = self.observers.len();
        self.observers.retain(|(known, _)| *known != id);
        self.observers.len() != before
    }

    /// Reads events for ever, telling the observers each: spawn it on a
    /// task to run them without a thread of their own. A round of
    /// reconnection attempts that runs out is logged, and another begins.
    pub async fn run_observers(mut self) {
        loop {
            if let Err(e) = self.recv().await {
                log::error!("pgtx: the listener's observers wait for a connection: {e}");
            }
        }
    }

    /// The live connection, after an interrupted request of the
    /// listener's own is drained.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] while the connection is down.
    async fn connection(&mut self) -> Result<&mut Connection> {
        poll_fn(|cx| self.poll_recovered(cx)).await;
        match &mut self.link {
            Link::Up(conn) if !conn.has_ended() => Ok(conn),
            _ => Err(Error::ConnectionLost(None)),
        }
    }

    /// Runs `LISTEN`/`UNLISTEN`; a connection that is down (or breaks) is
    /// no error: the channels are listened to again on reconnection.
    async fn control(&mut self, sql: &str) -> Result<()> {
        let Ok(conn) = self.connection().await else {
            return Ok(());
        };
        let done = conn.run(|c| c.batch_execute(sql)).await;
        match self.after_request(done) {
            Err(Error::ConnectionLost(_)) => Ok(()),
            other => other,
        }
    }

    /// A request's outcome; a broken connection starts an outage.
    fn after_request<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T> {
        let Link::Up(conn) = &mut self.link else {
            return Err(Error::ConnectionLost(None));
        };
        let result = conn.outcome(result);
        if let Err(Error::ConnectionLost(cause)) = &result {
            self.lost(cause.as_ref());
        }
        result
    }

    /// Drops queued notifications that `unwanted` picks, wherever they wait.
    fn discard_queued(&mut self, unwanted: impl Fn(&postgres::Notification) -> bool) {
        self.ready
            .retain(|event| !event.as_notification().is_some_and(&unwanted));
        if let Link::Up(conn) = &mut self.link {
            conn.notifications().retain(|n| !unwanted(n));
        }
    }

    /// Drives a recovery under way to its end.
    fn poll_recovered(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Link::Up(conn) = &mut self.link
            && conn.was_interrupted()
        {
            let fresh = self.outage_now();
            let Link::Up(conn) = std::mem::replace(&mut self.link, fresh) else {
                return Poll::Ready(());
            };
            self.link = Link::Recovering(Box::pin(recover(*conn)));
        }
        if let Link::Recovering(recovering) = &mut self.link {
            self.link = match ready!(recovering.as_mut().poll(cx)) {
                Some(conn) => Link::Up(Box::new(conn)),
                None => self.outage_now(),
            };
        }
        Poll::Ready(())
    }

    /// The next event (not yet told to observers).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<ListenEvent>> {
        loop {
            ready!(self.poll_recovered(cx));
            if let Some(event) = self.ready.pop_front() {
                return Poll::Ready(Ok(event));
            }
            match &mut self.link {
                Link::Up(conn) => {
                    if let Some(n) = conn.notifications().pop_front() {
                        return Poll::Ready(Ok(ListenEvent::Notification(n)));
                    }
                    if conn.has_ended() {
                        self.lost(None);
                        continue;
                    }
                    ready!(conn.poll_arrival(cx));
                }
                Link::Recovering(_) => {}
                Link::Waiting { until, .. } => {
                    ready!(until.as_mut().poll(cx));
                    self.start_attempt();
                }
                Link::Connecting { opening, .. } => {
                    let opened = ready!(opening.as_mut().poll(cx));
                    if let Err(e) = self.attempt_ended(opened) {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }

    /// A new outage, starting now.
    fn outage_now(&self) -> Link {
        let outage = Outage::new(Instant::now(), &self.policy);
        let until = Box::pin(tokio::time::sleep_until(outage.next_attempt_at().into()));
        Link::Waiting { outage, until }
    }

    /// The connection has ended: keeps what it received (delivered before
    /// the outage's `Reconnected`) and starts the outage.
    fn lost(&mut self, cause: Option<&postgres::Error>) {
        let fresh = self.outage_now();
        let link = std::mem::replace(&mut self.link, fresh);
        if let Link::Up(mut conn) = link {
            self.ready.extend(
                conn.notifications()
                    .drain(..)
                    .map(ListenEvent::Notification),
            );
            let end = conn.take_end_cause();
            match cause.or(end.as_ref()) {
                Some(cause) => log::warn!(
                    "pgtx: the listener's connection was lost ({}); reconnecting",
                    describe(cause)
                ),
                None => log::warn!("pgtx: the listener's connection was lost; reconnecting"),
            }
        }
    }

    /// Starts the attempt that is due.
    fn start_attempt(&mut self) {
        if !matches!(self.link, Link::Waiting { .. }) {
            return;
        }
        let fresh = self.outage_now();
        let link = std::mem::replace(&mut self.link, fresh);
        if let Link::Waiting { mut outage, .. } = link {
            outage.attempting();
            let opening = Box::pin(open_listening(
                Arc::clone(&self.settings),
                self.channels.clone(),
            ));
            self.link = Link::Connecting { outage, opening };
        }
    }

    /// Drops an attempt under way, if any, and makes another at once:
    /// the channels changed since it began.
    fn restart_attempt(&mut self) {
        if !matches!(self.link, Link::Connecting { .. }) {
            return;
        }
        let fresh = self.outage_now();
        if let Link::Connecting { outage, .. } = std::mem::replace(&mut self.link, fresh) {
            self.link = Link::Waiting {
                outage,
                until: Box::pin(tokio::time::sleep(Duration::ZERO)),
            };
            self.start_attempt();
        }
    }

    /// An attempt ended: connected (`Reconnected` is queued), or the
    /// next attempt waits; a round that ran out is the error.
    fn attempt_ended(&mut self, opened: Result<Connection>) -> Result<()> {
        if !matches!(self.link, Link::Connecting { .. }) {
            return Ok(());
        }
        let fresh = self.outage_now();
        let link = std::mem::replace(&mut self.link, fresh);
        let Link::Connecting { mut outage, .. } = link else {
            return Ok(());
        };
        match opened {
            Ok(conn) => {
                log::info!(
                    "pgtx: the listener reconnected after {:?} and {} attempt(s); \
                     notifications sent meanwhile may have been missed",
                    outage.since().elapsed(),
                    outage.attempts()
                );
                self.ready.push_back(ListenEvent::Reconnected {
                    down_since: outage.since(),
                    attempts: outage.attempts(),
                });
                self.link = Link::Up(Box::new(conn));
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
                        self.link = Link::Waiting {
                            outage,
                            until: Box::pin(tokio::time::sleep_until(at.into())),
                        };
                        Ok(())
                    }
                    Next::GiveUp(error) => {
                        log::warn!(
                            "pgtx: listener reconnection attempt {attempt} failed: {failure}; \
                             giving up this round"
                        );
                        // `self.link` is a new outage: the next read
                        // starts another round.
                        Err(error)
                    }
                }
            }
        }
    }

    /// Tells every observer `event`; failures and panics are logged.
    fn observe(&self, event: &ListenEvent) {
        let what = match event {
            ListenEvent::Notification(n) => format!("a notification on {:?}", n.channel()),
            ListenEvent::Reconnected { .. } => "a reconnection".to_owned(),
            _ => return,
        };
        for (id, observer) in &self.observers {
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

impl Stream for Listener {
    type Item = Result<ListenEvent>;

    /// The next event, told to the observers first; never ends.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<ListenEvent>>> {
        let this = self.get_mut();
        let event = ready!(this.poll_event(cx));
        if let Ok(event) = &event {
            this.observe(event);
        }
        Poll::Ready(Some(event))
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = match &self.link {
            Link::Up(_) => "up",
            Link::Recovering(_) => "recovering",
            Link::Waiting { .. } => "down",
            Link::Connecting { .. } => "connecting",
        };
        f.debug_struct("aio::Listener")
            .field("settings", &*self.settings)
            .field("link", &link)
            .field("channels", &self.channels)
            .field("queued", &self.ready.len())
            .field("observers", &self.observers.len())
            .finish()
    }
}

/// A new connection listening to `channels`, all in one round trip.
async fn open_listening(settings: Arc<Settings>, channels: Vec<String>) -> Result<Connection> {
    let mut conn =
        Connection::open(&settings, Naming::Cached, None, &WritableWatch::default()).await?;
    if channels.is_empty() {
        return Ok(conn);
    }
    let sql: String = channels
        .iter()
        .map(|c| format!("LISTEN {};", quote_identifier(c)))
        .collect();
    let listened = conn.run(|c| c.batch_execute(&sql)).await;
    conn.outcome(listened).map(|()| conn)
}

/// Makes a connection whose request was interrupted usable again: what
/// was queued is written, the request cancelled and its answers drained
/// (notifications that arrive meanwhile are kept); `None` if that failed.
async fn recover(mut conn: Connection) -> Option<Connection> {
    let written = tokio::time::timeout(DRAIN_LIMIT, conn.flush_queued()).await;
    let drained = match written {
        Ok(()) => tokio::time::timeout(DRAIN_LIMIT, conn.cancel_and_drain()).await,
        Err(elapsed) => Err(elapsed),
    };
    match drained {
        Ok(Ok(())) => Some(conn),
        _ => {
            log::warn!(
                "pgtx: the listener's interrupted request could not be drained; reconnecting"
            );
            None
        }
    }
}
