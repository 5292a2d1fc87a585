//! Opening one connection to one server: the socket, TLS and start-up,
//! with the tap of `wire.rs` between `tokio-postgres` and the bytes.
//!
//! `tokio-postgres` can open sockets itself, but then it owns the stream and
//! nothing can sit between it and the server; so the socket is opened here
//! (as `tokio-postgres` would: `TCP_NODELAY`, keepalives, user timeout) and
//! handed to `Config::connect_raw`, which does TLS negotiation and
//! authentication. A name is resolved here too, so that each address it
//! resolves to is one attempt, with its own `connect_timeout` and its own
//! line in the error, as in libpq.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{SslMode, TargetSessionAttrs};
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use crate::config::{Host, Target};
use crate::driver::{ConnectionStream, connection_stream};
use crate::error::Attempt;
use crate::wire::{Tap, Wire};

/// A connected client, its connection, and the tap on it.
pub(crate) struct Opened {
    pub(crate) client: Client,
    pub(crate) connection: ConnectionStream,
    pub(crate) tap: Arc<Tap>,
}

/// An attempt's error: from the socket, or from `tokio-postgres` (TLS,
/// authentication, the server refusing).
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Where one connection attempt goes: a server's Unix socket, or one
/// address of a TCP server.
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// The endpoints of `target`, in the order libpq tries them: its Unix
/// socket, its `hostaddr`, or every address its name resolves to.
///
/// # Errors
///
/// The name could not be resolved: the failed attempt, in libpq's words.
pub(crate) async fn endpoints(target: &Target) -> Result<Vec<Endpoint>, Attempt> {
    let port = target.port;
    let name = match &target.host {
        Host::Socket { dir, .. } => {
            return Ok(vec![Endpoint::Unix(dir.join(format!(".s.PGSQL.{port}")))]);
        }
        Host::Tcp { addr: Some(ip), .. } => {
            return Ok(vec![Endpoint::Tcp(SocketAddr::new(*ip, port))]);
        }
        Host::Tcp { name, addr: None } => name,
    };
    let unresolved = |cause: io::Error| {
        // std prefixes getaddrinfo's own words (which libpq shows) with this.
        let text = cause.to_string();
        let reason = text
            .strip_prefix("failed to lookup address information: ")
            .unwrap_or(&text);
        let line = format!("could not translate host name \"{name}\" to address: {reason}");
        Attempt::new(line, Box::new(cause))
    };
    match tokio::net::lookup_host((name.as_str(), port)).await {
        Ok(found) => {
            let found: Vec<Endpoint> = found.map(Endpoint::Tcp).collect();
            if found.is_empty() {
                return Err(unresolved(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the name resolved to no address",
                )));
            }
            Ok(found)
        }
        Err(cause) => Err(unresolved(cause)),
    }
}

/// A failed attempt at `endpoint` of `target`, worded as libpq words it
/// (`emitHostIdentityInfo` in `fe-connect.c`): see [`ConnectError`](crate::ConnectError).
pub(crate) fn failed(target: &Target, endpoint: &Endpoint, cause: Cause) -> Attempt {
    let server = match (endpoint, &target.host) {
        (Endpoint::Unix(path), _) => format!("on socket \"{}\"", path.display()),
        (Endpoint::Tcp(addr), Host::Tcp { name, addr: None }) if *name != addr.ip().to_string() => {
            format!("at \"{name}\" ({}), port {}", addr.ip(), addr.port())
        }
        (Endpoint::Tcp(addr), _) => format!("at \"{}\", port {}", addr.ip(), addr.port()),
    };
    let line = format!("connection to server {server} failed: {}", reason(&*cause));
    Attempt::new(line, cause)
}

/// What went wrong, in libpq's words where they differ from the error's own.
fn reason(cause: &(dyn std::error::Error + 'static)) -> String {
    if let Some(e) = cause.downcast_ref::<io::Error>() {
        return io_text(e);
    }
    let Some(e) = cause.downcast_ref::<postgres::Error>() else {
        return cause.to_string();
    };
    if let Some(db) = e.as_db_error() {
        // libpq's "FATAL:  password authentication failed for user …".
        return format!("{}:  {}", db.severity(), db.message());
    }
    // tokio-postgres leaves its cause out of its own message.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        match s.downcast_ref::<io::Error>() {
            Some(io) => text.push_str(&io_text(io)),
            None => text.push_str(&s.to_string()),
        }
        source = s.source();
    }
    text
}

/// The system's words for an OS error ("Connection refused"), without the
/// " (os error 111)" that Rust adds.
fn io_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}

/// `sslmode` asked for TLS and the server answered the SSL request with
/// "no".
#[derive(Debug)]
struct TlsRefused(postgres::Error);

impl fmt::Display for TlsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server does not support SSL, but SSL was required")
    }
}

impl std::error::Error for TlsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Opens the socket, then lets `tokio-postgres` negotiate TLS (through
/// `tls`, when `config`'s `ssl_mode` asks for it) and authenticate.
pub(crate) async fn open<T>(config: &Config, endpoint: &Endpoint, tls: T) -> Result<Opened, Cause>
where
    T: TlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::Future: Send + 'static,
{
    let socket = socket(config, endpoint).await?;
    let tap = Tap::new();
    let handshake = Arc::new(AtomicBool::new(false));
    let over = TapOverTls {
        tls,
        handshake: handshake.clone(),
    };
    let (client, connection) = match config
        .connect_raw(Wire::new(socket, tap.clone()), over)
        .await
    {
        Ok(connected) => connected,
        // `tokio-postgres` reports a TLS error; with no handshake begun,
        // no I/O error and no word from the server, the server said "no".
        Err(e)
            if config.get_ssl_mode() == SslMode::Require
                && !handshake.load(Ordering::Relaxed)
                && e.as_db_error().is_none()
                && !std::error::Error::source(&e).is_some_and(|s| s.is::<io::Error>()) =>
        {
            return Err(Box::new(TlsRefused(e)));
        }
        Err(e) => return Err(Box::new(e)),
    };
    // Start-up is over: both directions are at a message boundary.
    tap.activate();
    let mut connection = connection_stream(connection);
    check_session_attrs(config, &client, &mut connection).await?;
    Ok(Opened {
        client,
        connection,
        tap,
    })
}

/// libpq's `target_session_attrs=read-write` / `read-only`: asks the server
/// whether it accepts writes (`connect_raw` leaves this to the caller).
async fn check_session_attrs(
    config: &Config,
    client: &Client,
    connection: &mut ConnectionStream,
) -> Result<(), Cause> {
    let wanted = config.get_target_session_attrs();
    if wanted == TargetSessionAttrs::Any {
        return Ok(());
    }
    let mut query = pin!(client.simple_query("SHOW transaction_read_only"));
    let messages = poll_fn(|cx| {
        loop {
            match connection.poll_message(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The query's own future then fails with "connection closed".
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        query.as_mut().poll(cx)
    })
    .await?;
    let read_only = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    let refusal = match (wanted, read_only) {
        (TargetSessionAttrs::ReadWrite, Some("on")) => "session is read-only",
        (TargetSessionAttrs::ReadOnly, Some("off")) => "session is not read-only",
        _ => return Ok(()),
    };
    Err(io::Error::new(io::ErrorKind::PermissionDenied, refusal).into())
}

async fn socket(config: &Config, endpoint: &Endpoint) -> io::Result<Socket> {
    match endpoint {
        Endpoint::Unix(path) => Ok(Socket::Unix(UnixStream::connect(path).await?)),
        Endpoint::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            tune(config, &stream)?;
            Ok(Socket::Tcp(stream))
        }
    }
}

/// What `tokio-postgres` sets on its own TCP sockets.
fn tune(config: &Config, stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    if let Some(timeout) = config.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    if config.get_keepalives() {
        let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

/// libpq's `connect_timeout`: the whole attempt at one address (socket,
/// TLS, authentication) must be over within `timeout`.
pub(crate) async fn with_timeout<T>(
    attempt: impl Future<Output = Result<T, Cause>>,
    timeout: Option<Duration>,
) -> Result<T, Cause> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Box::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timeout expired",
                )))
            }),
        None => attempt.await,
    }
}

/// A TCP or Unix socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Puts the tap above TLS rather than under it: the handshake runs on the
/// bare socket, and the tap moves onto the encrypted stream.
struct TapOverTls<T> {
    tls: T,
    /// Set once the handshake begins: the server said yes to TLS.
    handshake: Arc<AtomicBool>,
}

impl<T> TlsConnect<Wire<Socket>> for TapOverTls<T>
where
    T: TlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::Future: Send + 'static,
{
    type Stream = Wire<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Wire<T::Stream>, T::Error>> + Send>>;

    fn connect(self, stream: Wire<Socket>) -> Self::Future {
        let (socket, tap) = stream.into_parts();
        self.handshake.store(true, Ordering::Relaxed);
        let handshake = self.tls.connect(socket);
        Box::pin(async move { Ok(Wire::new(handshake.await?, tap)) })
    }
}
