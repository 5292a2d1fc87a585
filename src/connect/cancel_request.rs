//! Cancel requests for a connection pgtx opened itself.
//!
//! `tokio-postgres`' `CancelToken::cancel_query` needs the socket settings
//! of a connection it opened; pgtx opens its own sockets (`connect_raw`),
//! so the request goes out on a socket opened here to the endpoint the
//! connection uses, with the TLS mode it used, through
//! `cancel_query_raw`. Unlike `cancel_query_raw` alone, sending waits for
//! the server to close the socket, as libpq's `PQcancel` does: by then the
//! server has signalled the backend, so a statement sent afterwards cannot
//! be the one the signal hits.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{CancelToken, Config};

use super::socket::{self, Endpoint, Socket};

/// How long a cancel request may take when `connect_timeout` is not set.
const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to send a cancel request for one connection.
pub(crate) struct CancelTarget {
    token: CancelToken,
    endpoint: Endpoint,
    /// The connection's socket settings (never shown: it holds the password).
    config: Config,
    tls: CancelTls,
    /// A request was begun and its arrival never confirmed (its future
    /// dropped, or it failed after it may have been written): it may
    /// still reach the server, and hit whatever runs then.
    unconfirmed: AtomicBool,
}

/// The TLS the connection negotiated with, to negotiate it again.
pub(super) enum CancelTls {
    None,
    #[cfg(feature = "tls")]
    Rustls {
        make: tokio_postgres_rustls::MakeRustlsConnect,
        server_name: String,
    },
}

impl CancelTarget {
    pub(super) fn new(
        token: CancelToken,
        endpoint: &Endpoint,
        config: &Config,
        tls: CancelTls,
    ) -> CancelTarget {
        CancelTarget {
            token,
            endpoint: endpoint.clone(),
            config: config.clone(),
            tls,
            unconfirmed: AtomicBool::new(false),
        }
    }

    /// Sends the cancel request and waits until the server has acted on it
    /// (closed the socket), within `connect_timeout` (10 s if unset).
    ///
    /// # Errors
    ///
    /// The socket, TLS or the timeout failed: the server may not have
    /// received the request.
    pub(crate) async fn send(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let timeout = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CANCEL_TIMEOUT);
        self.unconfirmed.store(true, Ordering::SeqCst);
        let sent = match tokio::time::timeout(timeout, self.deliver()).await {
            Ok(sent) => sent,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timeout expired").into()),
        };
        if sent.is_ok() {
            self.unconfirmed.store(false, Ordering::SeqCst);
        }
        sent
    }

    #[cfg(feature = "aio")]
    /// Whether a request was begun whose arrival was never confirmed (see
    /// [`send`](Self::send)): the connection it targets cannot be trusted
    /// not to see it land on a later statement.
    pub(crate) fn unconfirmed(&self) -> bool {
        self.unconfirmed.load(Ordering::SeqCst)
    }

    async fn deliver(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let stream = AwaitClose {
            socket: socket::socket(&self.config, &self.endpoint).await?,
            shut: false,
        };
        match &self.tls {
            CancelTls::None => {
                self.token
                    .cancel_query_raw(stream, tokio_postgres::NoTls)
                    .await?
            }
            #[cfg(feature = "tls")]
            CancelTls::Rustls { make, server_name } => {
                use tokio_postgres::tls::MakeTlsConnect;
                let tls = match MakeTlsConnect::<AwaitClose>::make_tls_connect(
                    &mut make.clone(),
                    server_name,
                ) {
                    Ok(tls) => tls,
                    Err(never) => match never {},
                };
                self.token.cancel_query_raw(stream, tls).await?
            }
        }
        Ok(())
    }
}

/// A socket whose shutdown waits for the peer to close instead: the server
/// closes a cancel request's socket once it has signalled the backend.
///
/// Our side is not shut down (no FIN, as libpq's `PQcancel` sends none):
/// PgBouncer forwards a cancel request only while the client's socket is
/// open, and takes a half-closed one as the client gone ("client
/// unexpected eof"), dropping the request.
struct AwaitClose {
    socket: Socket,
    /// The request is flushed; what is left is reading to the end.
    shut: bool,
}

impl AsyncRead for AwaitClose {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for AwaitClose {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            ready!(Pin::new(&mut self.socket).poll_flush(cx))?;
            self.shut = true;
        }
        // Read (and drop) whatever comes until the end of the stream.
        let mut scratch = [0_u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.socket).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                // The server resetting the socket also means it is done.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
