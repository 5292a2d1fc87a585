//! A second handle on a connection's socket, to shut it down from outside
//! the connection: the async front takes an abandoned holder's session
//! over this way (a value lost with `mem::forget` still owns the
//! connection, so nothing else can end it). The server sees the socket
//! close, rolls back whatever transaction was open there and ends the
//! backend, as it does for any client that went away.

use std::net::Shutdown;

use parking_lot::Mutex;

use super::socket::Socket;

/// The socket's second handle, closed with the connection (see
/// [`ClosesWith`]): while the connection lives, [`sever`](Self::sever)
/// shuts the socket down; after, it does nothing.
pub(crate) struct Severer {
    socket: Mutex<Option<socket2::Socket>>,
}

impl Severer {
    /// A second handle on `socket` (none if the system refuses one: then
    /// [`sever`](Self::sever) does nothing).
    pub(super) fn new(socket: &Socket) -> Severer {
        let handle = match socket {
            Socket::Tcp(s) => socket2::SockRef::from(s).try_clone(),
            Socket::Unix(s) => socket2::SockRef::from(s).try_clone(),
        };
        if let Err(e) = &handle {
            log::warn!(
                "pgtx: no second handle on a connection's socket ({e}): an abandoned holder's \
                 connection could not be closed from outside"
            );
        }
        Severer {
            socket: Mutex::new(handle.ok()),
        }
    }

    /// Shuts the socket down both ways, if the connection is still open:
    /// its owner's next read or write fails, and the server ends the
    /// session (rolling back an open transaction).
    #[cfg_attr(not(feature = "aio"), allow(dead_code))]
    pub(crate) fn sever(&self) {
        if let Some(socket) = &*self.socket.lock() {
            let _already_closed = socket.shutdown(Shutdown::Both);
        }
    }

    /// Lets the second handle go: the socket closes with the connection's
    /// own handle, as if there had never been a second one.
    fn close(&self) {
        drop(self.socket.lock().take());
    }
}

/// Held by the connection: dropped with it, closes the [`Severer`]'s
/// handle (which may live on in a session's shared state), so that the
/// socket never outlives its connection.
pub(crate) struct ClosesWith(pub(crate) std::sync::Arc<Severer>);

impl Drop for ClosesWith {
    fn drop(&mut self) {
        self.0.close();
    }
}
