//! One attempt at one endpoint: the socket, then TLS and start-up by
//! `tokio-postgres` (`Config::connect_raw`), with the tap of `wire.rs`
//! between `tokio-postgres` and the bytes.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use super::cancel_request::{CancelTarget, CancelTls};
use super::sever::Severer;
use super::socket::{self, Endpoint, Socket};
use super::stream::{ConnectionStream, connection_stream};
use super::{Cause, failure};
use crate::config::{ServerRole, SessionTarget};
use crate::connect::wire::{Tap, Wire};

/// A connected client, its connection, the tap on it, and where to send
/// its cancel requests.
pub(crate) struct Opened {
    pub(crate) client: Client,
    pub(crate) connection: ConnectionStream,
    pub(crate) tap: Arc<Tap>,
    pub(crate) cancel: Arc<CancelTarget>,
    /// Shuts the socket down from outside the connection.
    pub(crate) severer: Arc<Severer>,
    /// What the server reported about itself at start-up (and what
    /// `target_session_attrs` asked, if it had to).
    pub(crate) role: ServerRole,
}

/// Opens the socket, then lets `tokio-postgres` negotiate TLS (through
/// `tls`, when `config`'s `ssl_mode` asks for it) and authenticate.
pub(super) async fn open<T>(
    config: &Config,
    endpoint: &Endpoint,
    tls: T,
    cancel_tls: CancelTls,
) -> Result<Opened, Cause>
where
    T: TlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::Future: Send + 'static,
{
    let socket = socket::socket(config, endpoint).await?;
    let severer = Arc::new(Severer::new(&socket));
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
            return Err(Box::new(failure::TlsRefused(e)));
        }
        Err(e) => return Err(Box::new(e)),
    };
    // Start-up is over: both directions are at a message boundary.
    tap.activate();
    let role = ServerRole {
        default_read_only: ServerRole::flag(connection.parameter("default_transaction_read_only")),
        in_hot_standby: ServerRole::flag(connection.parameter("in_hot_standby")),
    };
    let connection = connection_stream(connection);
    let cancel = Arc::new(CancelTarget::new(
        client.cancel_token(),
        endpoint,
        config,
        cancel_tls,
    ));
    Ok(Opened {
        client,
        connection,
        tap,
        cancel,
        severer,
        role,
    })
}

/// libpq's `target_session_attrs`: judges the session from what the
/// server reported at start-up, asking it first when it reported too
/// little (`connect_raw` leaves all this to the caller); `host_order.rs`
/// decides what to ask and whether the session is kept.
pub(super) async fn check_session_attrs(
    opened: &mut Opened,
    attrs: SessionTarget,
) -> Result<(), Cause> {
    let Opened {
        client,
        connection,
        role,
        ..
    } = opened;
    if let Some(question) = attrs.question(*role) {
        let mut query = pin!(client.simple_query(question.sql()));
        let answer = poll_fn(|cx| {
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
        .await;
        let rows: Vec<_> = answer
            .iter()
            .flatten()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
                _ => None,
            })
            .collect();
        match (answer, rows.as_slice()) {
            (Ok(_), [value]) => question.answered(value, role),
            (Err(e), _) if e.is_closed() => return Err(Box::new(e)),
            _ => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, question.failed()).into());
            }
        }
    }
    match attrs.refusal(*role) {
        Some(refusal) => Err(io::Error::new(io::ErrorKind::PermissionDenied, refusal).into()),
        None => Ok(()),
    }
}

/// libpq's `connect_timeout`: the whole attempt at one address (socket,
/// TLS, authentication) must be over within `timeout`.
pub(super) async fn with_timeout<T>(
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
