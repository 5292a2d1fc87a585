//! The half of a `tokio-postgres` connection that reads and writes the
//! socket, with its socket and TLS types erased so that the driver can hold
//! any of them.

use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::AsyncMessage;

type PollMessage =
    dyn FnMut(&mut Context<'_>) -> Poll<Option<Result<AsyncMessage, postgres::Error>>> + Send;

/// The half of a `tokio-postgres` connection that reads and writes the
/// socket, with its socket and TLS types erased.
pub(crate) struct ConnectionStream(Box<PollMessage>);

impl ConnectionStream {
    /// Stands in for a connection that has ended.
    pub(crate) fn ended() -> ConnectionStream {
        ConnectionStream(Box::new(|_| Poll::Ready(None)))
    }

    /// Reads and writes what it can; the next message for the client side.
    pub(crate) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, postgres::Error>>> {
        (self.0)(cx)
    }
}

/// Erases the types of a freshly made `tokio-postgres` connection.
pub(crate) fn connection_stream<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> ConnectionStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ConnectionStream(Box::new(move |cx| connection.poll_message(cx)))
}
