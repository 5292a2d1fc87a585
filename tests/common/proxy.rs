//! A std-only TCP fault proxy for tests: put it between a client and a
//! loopback PostgreSQL server, then [`Proxy::cut`] every connection or
//! [`Proxy::stall`] / [`Proxy::resume`] the byte flow.
//!
//! It only ever connects to a loopback target, uses one thread for accepting
//! and one per direction of each connection, and all of them end when the
//! proxy is dropped.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

const ACCEPT_POLL: Duration = Duration::from_millis(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STALL_POLL: Duration = Duration::from_millis(50);

/// A TCP proxy on `127.0.0.1:<ephemeral>` forwarding to a loopback target.
pub struct Proxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept_thread: Option<JoinHandle<()>>,
}

/// A Sync message of the extended protocol, as it goes on the wire.
const SYNC: &[u8] = b"S\0\0\0\x04";

struct Inner {
    target: SocketAddr,
    shutdown: AtomicBool,
    stalled: Mutex<bool>,
    stall_changed: Condvar,
    conns: Mutex<Vec<Conn>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicUsize,
    accepted: AtomicUsize,
    /// Reads that returned bytes on the client → server side.
    client_chunks: AtomicUsize,
    /// Sync messages seen on the client → server side (see
    /// [`Proxy::client_syncs`]).
    client_syncs: AtomicUsize,
    /// Stall (holding the chunk) at the first client → server chunk that
    /// contains every one of these byte strings.
    stall_on: Mutex<Option<Vec<Vec<u8>>>>,
    /// Hold (that connection only) the first client → server chunk that
    /// contains every one of these byte strings.
    hold_on: Mutex<Option<Vec<Vec<u8>>>>,
    /// A connection is holding a chunk until [`Proxy::release`].
    holding: Mutex<bool>,
    hold_changed: Condvar,
    /// Armed by [`Proxy::stall_on_next`].
    stall_on_next: Mutex<Option<Next>>,
    /// Forward, then stall at, the first client → server chunk that
    /// contains every one of these byte strings.
    stall_after: Mutex<Option<Vec<Vec<u8>>>>,
    hide_roles: AtomicBool,
}

/// What a stall armed by [`Proxy::stall_on_next`] holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withhold {
    /// The request itself: the server never gets it.
    Request,
    /// The server's answer: the request is forwarded, so the server acts on
    /// it, but nothing it sends back reaches the client.
    Reply,
}

/// A stall waiting for the request that follows a matching one.
struct Next {
    needles: Vec<Vec<u8>>,
    hold: Withhold,
    /// The connection that sent the matching chunk, once one has.
    matched_on: Option<usize>,
}

fn contains_all(chunk: &[u8], needles: &[Vec<u8>]) -> bool {
    needles
        .iter()
        .all(|n| chunk.windows(n.len().max(1)).any(|w| w == n.as_slice()))
}

/// One proxied connection; the streams are clones kept only to shut them
/// down.
struct Conn {
    id: usize,
    client: TcpStream,
    server: TcpStream,
    closed: Arc<AtomicBool>,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Starts a proxy listening on `127.0.0.1:0` that forwards every accepted
    /// connection to `target`.
    ///
    /// # Panics
    /// If `target` is not a loopback address, or the listener can't be bound.
    pub fn start(target: SocketAddr) -> Proxy {
        assert!(
            target.ip().is_loopback(),
            "the test proxy only connects to loopback addresses, not {target}"
        );
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy listener");
        listener
            .set_nonblocking(true)
            .expect("make the proxy listener non-blocking");
        let addr = listener.local_addr().expect("proxy listener address");
        let inner = Arc::new(Inner {
            target,
            shutdown: AtomicBool::new(false),
            stalled: Mutex::new(false),
            stall_changed: Condvar::new(),
            conns: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            client_chunks: AtomicUsize::new(0),
            client_syncs: AtomicUsize::new(0),
            stall_on: Mutex::new(None),
            hold_on: Mutex::new(None),
            holding: Mutex::new(false),
            hold_changed: Condvar::new(),
            stall_on_next: Mutex::new(None),
            stall_after: Mutex::new(None),
            hide_roles: AtomicBool::new(false),
        });
        let accept_inner = Arc::clone(&inner);
        let accept_thread = std::thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(&accept_inner, &listener))
            .expect("spawn the proxy accept thread");
        Proxy {
            addr,
            inner,
            accept_thread: Some(accept_thread),
        }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.inner.target
    }

    /// Closes every current connection at once (both sides see the socket
    /// shut down); new connections are still accepted.
    pub fn cut(&self) {
        self.inner.cut_all();
    }

    /// Stops forwarding bytes in both directions, without closing anything.
    /// Connections are still accepted, but nothing flows until
    /// [`resume`](Self::resume).
    pub fn stall(&self) {
        *lock(&self.inner.stalled) = true;
        self.inner.stall_changed.notify_all();
    }

    /// Forwards bytes again after [`stall`](Self::stall), including any that
    /// were held back.
    pub fn resume(&self) {
        *lock(&self.inner.stalled) = false;
        self.inner.stall_changed.notify_all();
    }

    /// Stalls the proxy at the first chunk a client sends that contains
    /// every one of `needles`, before that chunk is forwarded: the client
    /// is then stuck waiting for the answer to exactly that request. Once
    /// it fired, [`is_stalled`](Self::is_stalled) is true.
    pub fn stall_on(&self, needles: &[&[u8]]) {
        *lock(&self.inner.stall_on) = Some(needles.iter().map(|n| n.to_vec()).collect());
    }

    /// Forwards the first chunk a client sends that contains every one of
    /// `needles`, then stalls: the server gets that request and acts on
    /// it, but its answer is held (the client cannot know what happened).
    /// Once it fired, [`is_stalled`](Self::is_stalled) is true.
    pub fn stall_after(&self, needles: &[&[u8]]) {
        *lock(&self.inner.stall_after) = Some(needles.iter().map(|n| n.to_vec()).collect());
    }

    /// Holds the first chunk a client sends that contains every one of
    /// `needles`, on that connection only (the others flow on), until
    /// [`release`](Self::release). Once it fired, [`is_holding`](Self::is_holding)
    /// is true.
    pub fn hold_on(&self, needles: &[&[u8]]) {
        *lock(&self.inner.hold_on) = Some(needles.iter().map(|n| n.to_vec()).collect());
    }

    /// Whether a connection is holding a chunk (see [`hold_on`](Self::hold_on)).
    pub fn is_holding(&self) -> bool {
        *lock(&self.inner.holding)
    }

    /// Forwards the chunk [`hold_on`](Self::hold_on) held.
    pub fn release(&self) {
        *lock(&self.inner.holding) = false;
        self.inner.hold_changed.notify_all();
    }

    /// Stalls the proxy at the next chunk sent on the connection that sent
    /// a chunk containing every one of `needles` (which is forwarded): the
    /// request that follows, say the execution of a statement whose
    /// preparation the needles match. [`Withhold`] says whether that request
    /// is held, or forwarded with its answer held. Once it fired,
    /// [`is_stalled`](Self::is_stalled) is true.
    pub fn stall_on_next(&self, needles: &[&[u8]], hold: Withhold) {
        *lock(&self.inner.stall_on_next) = Some(Next {
            needles: needles.iter().map(|n| n.to_vec()).collect(),
            hold,
            matched_on: None,
        });
    }

    /// Whether the proxy is currently stalled.
    pub fn is_stalled(&self) -> bool {
        *lock(&self.inner.stalled)
    }

    /// Number of connections currently open through the proxy.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    /// Number of connections accepted (and forwarded) since the start.
    pub fn total_connections(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// How many chunks of bytes went from clients to the server since the
    /// start, over all connections: each read from a client socket that
    /// returned data counts once, whatever its size.
    ///
    /// A client that waits for the server's answer before writing again
    /// makes one chunk per write (TCP can't merge writes that are a round
    /// trip apart), so the difference of two readings taken while the
    /// client waits is the number of its writes in between. A chunk is
    /// counted before it is forwarded, so once the server has answered a
    /// write, the write is in the count.
    pub fn client_chunks(&self) -> usize {
        self.inner.client_chunks.load(Ordering::SeqCst)
    }

    /// How many Sync messages clients sent since the start, found by their
    /// five bytes in each chunk: for tests whose statements and parameters
    /// hold no such bytes, and whose writes are small enough not to be
    /// split inside one.
    pub fn client_syncs(&self) -> usize {
        self.inner.client_syncs.load(Ordering::SeqCst)
    }

    /// From now on, the server's reports of its role (`in_hot_standby`,
    /// `default_transaction_read_only`) reach clients under other names,
    /// as from a server older than PostgreSQL 14 or a pooler that does not
    /// pass them on. (Found in each chunk read: the start-up burst they
    /// come in is small enough to arrive whole.)
    pub fn hide_roles(&self) {
        self.inner.hide_roles.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        self.inner.cut_all();
        self.inner.stall_changed.notify_all();
        let pumps = std::mem::take(&mut *lock(&self.inner.pumps));
        for t in pumps {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn cut_all(&self) {
        let conns = std::mem::take(&mut *lock(&self.conns));
        for c in &conns {
            c.close();
        }
        // Wake pumps waiting in a stall so they notice.
        let _guard = lock(&self.stalled);
        self.stall_changed.notify_all();
    }

    fn close(&self, id: usize) {
        let mut conns = lock(&self.conns);
        if let Some(i) = conns.iter().position(|c| c.id == id) {
            conns.swap_remove(i).close();
        }
    }

    /// Stalls if `chunk` is the one [`Proxy::stall_on`] waits for.
    fn maybe_stall_on(&self, chunk: &[u8]) {
        let mut armed = lock(&self.stall_on);
        let fires = armed
            .as_ref()
            .is_some_and(|needles| contains_all(chunk, needles));
        if fires {
            *armed = None;
            self.begin_stall();
        }
    }

    /// Stalls if `chunk` is the one [`Proxy::stall_after`] waits for;
    /// returns whether it is (then it is to be forwarded all the same).
    fn maybe_stall_after(&self, chunk: &[u8]) -> bool {
        let mut armed = lock(&self.stall_after);
        let fires = armed
            .as_ref()
            .is_some_and(|needles| contains_all(chunk, needles));
        if fires {
            *armed = None;
            self.begin_stall();
        }
        fires
    }

    /// Holds this connection's `chunk` if it is the one [`Proxy::hold_on`]
    /// waits for, until released; returns false if the connection should
    /// end instead.
    fn maybe_hold(&self, chunk: &[u8], closed: &AtomicBool) -> bool {
        let fires = {
            let mut armed = lock(&self.hold_on);
            let fires = armed.as_ref().is_some_and(|needles| {
                needles
                    .iter()
                    .all(|n| chunk.windows(n.len().max(1)).any(|w| w == n.as_slice()))
            });
            if fires {
                *armed = None;
            }
            fires
        };
        if !fires {
            return true;
        }
        let mut holding = lock(&self.holding);
        *holding = true;
        loop {
            if self.shutdown.load(Ordering::SeqCst) || closed.load(Ordering::SeqCst) {
                return false;
            }
            if !*holding {
                return true;
            }
            holding = self
                .hold_changed
                .wait_timeout(holding, STALL_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stalls if `chunk`, from connection `id`, is the one
    /// [`Proxy::stall_on_next`] waits for; returns whether it is to be
    /// forwarded all the same ([`Withhold::Reply`]).
    fn maybe_stall_on_next(&self, id: usize, chunk: &[u8]) -> bool {
        let mut armed = lock(&self.stall_on_next);
        let Some(next) = armed.as_mut() else {
            return false;
        };
        match next.matched_on {
            Some(on) if on == id => {
                let hold = next.hold;
                *armed = None;
                // Before forwarding: the answer finds the proxy stalled.
                self.begin_stall();
                hold == Withhold::Reply
            }
            Some(_) => false,
            None => {
                if contains_all(chunk, &next.needles) {
                    next.matched_on = Some(id);
                }
                false
            }
        }
    }

    fn begin_stall(&self) {
        *lock(&self.stalled) = true;
        self.stall_changed.notify_all();
    }

    /// Blocks while the proxy is stalled; returns false if the connection
    /// should end instead.
    fn wait_unstalled(&self, closed: &AtomicBool) -> bool {
        let mut stalled = lock(&self.stalled);
        loop {
            if self.shutdown.load(Ordering::SeqCst) || closed.load(Ordering::SeqCst) {
                return false;
            }
            if !*stalled {
                return true;
            }
            stalled = self
                .stall_changed
                .wait_timeout(stalled, STALL_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: &TcpListener) {
    while !inner.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if let Err(e) = handle(inner, client) {
                    eprintln!("test proxy: dropping a connection: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

fn handle(inner: &Arc<Inner>, client: TcpStream) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&inner.target, CONNECT_TIMEOUT)?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
    let closed = Arc::new(AtomicBool::new(false));
    let conn = Conn {
        id,
        client: client.try_clone()?,
        server: server.try_clone()?,
        closed: Arc::clone(&closed),
    };
    let up = (client.try_clone()?, server.try_clone()?);
    let down = (server, client);
    lock(&inner.conns).push(conn);
    inner.accepted.fetch_add(1, Ordering::SeqCst);

    let mut pumps = lock(&inner.pumps);
    pumps.retain(|t| !t.is_finished());
    for (dir, (from, to)) in [("up", up), ("down", down)] {
        let pump_inner = Arc::clone(inner);
        let pump_closed = Arc::clone(&closed);
        let from_client = dir == "up";
        let spawned = std::thread::Builder::new()
            .name(format!("proxy-{id}-{dir}"))
            .spawn(move || pump(&pump_inner, id, &pump_closed, from_client, from, to));
        match spawned {
            Ok(t) => pumps.push(t),
            Err(e) => {
                drop(pumps);
                inner.close(id);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The parameter statuses a server reports about its role, and the names
/// they are renamed to (as long, so the messages keep their lengths).
const ROLE_REPORTS: [(&[u8], &[u8]); 2] = [
    (b"in_hot_standby\0", b"in_hot_standbz\0"),
    (
        b"default_transaction_read_only\0",
        b"default_transaction_read_onlz\0",
    ),
];

/// Renames the role reports in a chunk from the server.
fn hide_roles(chunk: &mut [u8]) {
    for (name, hidden) in ROLE_REPORTS {
        let mut at = 0;
        while let Some(found) = chunk[at..].windows(name.len()).position(|w| w == name) {
            let start = at + found;
            chunk[start..start + name.len()].copy_from_slice(hidden);
            at = start + name.len();
        }
    }
}

/// Copies bytes `from` → `to` until either side closes, the connection is
/// cut, or the proxy shuts down; then closes both sides of the connection.
/// Counts the chunks read when `from_client`.
fn pump(
    inner: &Inner,
    id: usize,
    closed: &AtomicBool,
    from_client: bool,
    mut from: TcpStream,
    mut to: TcpStream,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Don't even read while stalled, so bytes stay queued in the kernel.
        if !inner.wait_unstalled(closed) {
            break;
        }
        let n = match from.read(&mut buf) {
            // The client closed its sending side only: pass the half-close
            // on and keep the answers flowing (a cancel request waits for
            // the server to close after it).
            Ok(0) if from_client => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut forward_anyway = false;
        if !from_client && inner.hide_roles.load(Ordering::SeqCst) {
            hide_roles(&mut buf[..n]);
        }
        if from_client {
            inner.client_chunks.fetch_add(1, Ordering::SeqCst);
            let syncs = buf[..n].windows(SYNC.len()).filter(|w| *w == SYNC).count();
            inner.client_syncs.fetch_add(syncs, Ordering::SeqCst);
            inner.maybe_stall_on(&buf[..n]);
            if !inner.maybe_hold(&buf[..n], closed) {
                break;
            }
            forward_anyway = inner.maybe_stall_on_next(id, &buf[..n]);
            forward_anyway |= inner.maybe_stall_after(&buf[..n]);
        }
        // A stall may have begun while this read was blocked: hold the bytes.
        if !forward_anyway && !inner.wait_unstalled(closed) {
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    inner.close(id);
}
