//! The socket of one attempt, opened as `tokio-postgres` would open it
//! (`TCP_NODELAY`, keepalives, user timeout) so that the crate, not
//! `tokio-postgres`, owns the stream; and the endpoints of a server: its
//! Unix socket, or each address its name resolves to, as libpq tries them.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::Config;

use crate::config::{Host, Target};

/// Where one connection attempt goes: a server's Unix socket, or one
/// address of a TCP server.
#[derive(Clone)]
pub(super) enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// The endpoints of `target`, in the order libpq tries them: its Unix
/// socket, its `hostaddr`, or every address its name resolves to.
///
/// # Errors
///
/// The name could not be resolved (or resolved to no address).
pub(super) async fn endpoints(target: &Target) -> io::Result<Vec<Endpoint>> {
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
    let found: Vec<Endpoint> = tokio::net::lookup_host((name.as_str(), port))
        .await?
        .map(Endpoint::Tcp)
        .collect();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolved to no address",
        ));
    }
    Ok(found)
}

/// Connects to `endpoint`.
///
/// # Errors
///
/// The socket's error (refused, no such file, …).
pub(super) async fn socket(config: &Config, endpoint: &Endpoint) -> io::Result<Socket> {
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
