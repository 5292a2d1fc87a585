//! Opening one connection to one server: the socket, TLS and start-up,
//! with the tap of `wire.rs` between `tokio-postgres` and the bytes.
//!
//! `tokio-postgres` can open sockets itself, but then it owns the stream and
//! nothing can sit between it and the server; so the socket is opened here
//! (as `tokio-postgres` would: `TCP_NODELAY`, keepalives, user timeout,
//! connect timeout, every address a name resolves to) and handed to
//! `Config::connect_raw`, which does TLS negotiation and authentication.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use crate::config::{Host, Target};
use crate::driver::{ConnectionStream, connection_stream};
use crate::wire::{Tap, Wire};

/// A connected client, its connection, and the tap on it.
pub(crate) struct Opened {
    pub(crate) client: Client,
    pub(crate) connection: ConnectionStream,
    pub(crate) tap: Arc<Tap>,
}

/// Why a connection attempt failed before the server could say anything.
#[derive(Debug)]
pub(crate) struct SocketError {
    server: String,
    source: io::Error,
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection to server {} failed: {}",
            self.server, self.source
        )
    }
}

impl std::error::Error for SocketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// An attempt's error: from the socket, or from `tokio-postgres` (TLS,
/// authentication, the server refusing).
pub(crate) type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the socket, then lets `tokio-postgres` negotiate TLS (through
/// `tls`, when `config`'s `ssl_mode` asks for it) and authenticate.
pub(crate) async fn open<T>(
    config: &Config,
    target: &Target,
    tls: T,
) -> Result<Opened, ConnectError>
where
    T: TlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::Future: Send + 'static,
{
    let socket = socket(config, target).await?;
    let tap = Tap::new();
    let (client, connection) = config
        .connect_raw(Wire::new(socket, tap.clone()), TapOverTls(tls))
        .await?;
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
) -> Result<(), ConnectError> {
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

async fn socket(config: &Config, target: &Target) -> Result<Socket, SocketError> {
    let timeout = config.get_connect_timeout().copied();
    let port = target.port;
    match &target.host {
        Host::Socket { dir, .. } => {
            let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
            let server = format!("on socket \"{}\"", path.display());
            match with_timeout(UnixStream::connect(&path), timeout).await {
                Ok(stream) => Ok(Socket::Unix(stream)),
                Err(source) => Err(SocketError { server, source }),
            }
        }
        Host::Tcp { name, addr } => {
            let server = format!("at \"{name}\", port {port}");
            let addrs: Vec<SocketAddr> = match addr {
                Some(ip) => vec![SocketAddr::new(*ip, port)],
                None => match tokio::net::lookup_host((name.as_str(), port)).await {
                    Ok(found) => found.collect(),
                    Err(source) => return Err(SocketError { server, source }),
                },
            };
            let mut last =
                io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
            for addr in addrs {
                let server = format!("at \"{name}\" ({addr})");
                match with_timeout(TcpStream::connect(addr), timeout).await {
                    Ok(stream) => {
                        return tune(config, &stream)
                            .map(|()| Socket::Tcp(stream))
                            .map_err(|source| SocketError { server, source });
                    }
                    Err(e) => {
                        log::debug!("pgtx: connection to server {server} failed: {e}");
                        last = e;
                    }
                }
            }
            Err(SocketError {
                server,
                source: last,
            })
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

async fn with_timeout<T>(
    connect: impl Future<Output = io::Result<T>>,
    timeout: Option<Duration>,
) -> io::Result<T> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timeout expired"))),
        None => connect.await,
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
struct TapOverTls<T>(T);

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
        let handshake = self.0.connect(socket);
        Box::pin(async move { Ok(Wire::new(handshake.await?, tap)) })
    }
}
