//! A tap on the bytes between `tokio-postgres` and the socket, so that
//! `BEGIN` travels in the same write and the same Sync group as the
//! transaction's first statement.
//!
//! `tokio-postgres` ends every request with its own Sync. Sending `BEGIN`
//! as one request and the first statement as the next would save the round
//! trip but not the guarantee: if `BEGIN` failed, the statement would run
//! (and commit) on its own. In one Sync group it cannot: after an error the
//! server skips every message up to the Sync. So the tap
//!
//! 1. writes `BEGIN`'s Parse/Bind/Execute in front of the first Bind that
//!    follows [`Tap::arm_begin`], in the same write;
//! 2. takes the three answers to them (ParseComplete, BindComplete,
//!    CommandComplete) out of what `tokio-postgres` reads, which then sees
//!    exactly the answers to the request it sent; when the server refused
//!    `BEGIN`, its ErrorResponse is let through and becomes that request's
//!    error;
//! 3. reads the transaction status of every ReadyForQuery, the server's own
//!    word on whether a transaction block is open.
//!
//! It starts looking at messages only once the connection is set up
//! ([`Tap::activate`]), when both directions are at a message boundary
//! and nothing is in flight.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsStream};

/// The server's transaction status, from its last ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block (only `ROLLBACK` is accepted).
    Failed,
}

/// What became of a `BEGIN` armed with [`Tap::arm_begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BeginOutcome {
    /// No Bind was written after arming: nothing was sent.
    NotSent,
    /// Sent, and the server has not answered it (the connection broke).
    Unanswered,
    /// The server began the transaction.
    Began,
    /// The server refused `BEGIN`; nothing else in its Sync group ran, and
    /// the request's error is `BEGIN`'s.
    Refused,
}

/// The shared half: the driver arms and reads it, the [`Wire`] inside the
/// connection acts on it. Both run on the driver's thread, under the
/// session lock, so the mutex is never contended.
#[derive(Default)]
pub(crate) struct Tap(Mutex<TapState>);

#[derive(Default)]
struct TapState {
    active: bool,
    /// `BEGIN`'s messages, waiting for the next Bind.
    armed: Option<Vec<u8>>,
    outcome: Option<BeginOutcome>,
    /// Answers to `BEGIN` still to be taken out of the read side.
    strip: Option<Strip>,
    outgoing: Framing,
    incoming: Framing,
    /// Sync and Query messages written: each is answered by one ReadyForQuery.
    syncs_written: u64,
    /// ReadyForQuery messages read.
    readies_read: u64,
    /// The incoming message being read is taken out.
    dropping: bool,
    status: Option<ServerStatus>,
}

struct Strip {
    /// How many ReadyForQuery precede the injected messages' answers.
    group: u64,
    /// How many of ParseComplete, BindComplete, CommandComplete remain.
    left: usize,
}

/// The answers to `BEGIN`'s Parse, Bind and Execute, in order.
const BEGIN_ANSWERS: [u8; 3] = [b'1', b'2', b'C'];

impl Tap {
    pub(crate) fn new() -> Arc<Tap> {
        Arc::new(Tap::default())
    }

    /// Starts reading messages: call once the connection is ready for queries.
    pub(crate) fn activate(&self) {
        let mut state = self.0.lock();
        state.active = true;
        state.status = Some(ServerStatus::Idle);
    }

    /// Puts `begin` (a `BEGIN` statement) in front of the next Bind written.
    pub(crate) fn arm_begin(&self, begin: &str) {
        let mut state = self.0.lock();
        state.armed = Some(begin_messages(begin));
        state.outcome = None;
    }

    /// What became of the armed `BEGIN`; disarms it if it was not sent.
    pub(crate) fn take_begin_outcome(&self) -> BeginOutcome {
        let mut state = self.0.lock();
        if state.armed.take().is_some() {
            return BeginOutcome::NotSent;
        }
        state.outcome.take().unwrap_or(BeginOutcome::NotSent)
    }

    /// Whether every Sync and Query written has been answered with its
    /// ReadyForQuery (always, before activation).
    pub(crate) fn settled(&self) -> bool {
        let state = self.0.lock();
        state.readies_read >= state.syncs_written
    }

    /// The transaction status the server last reported, once active.
    pub(crate) fn server_status(&self) -> Option<ServerStatus> {
        self.0.lock().status
    }
}

impl TapState {
    /// Where `BEGIN` goes in `buf`: before the first Bind that starts in it.
    fn injection_point(&self, buf: &[u8]) -> Option<usize> {
        let mut framing = self.outgoing.clone();
        let mut at = 0;
        while at < buf.len() {
            if framing.at_start() && buf[at] == b'B' {
                return Some(at);
            }
            at += framing.advance(&buf[at..]).consumed;
        }
        None
    }

    /// Follows the messages written.
    fn wrote(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let step = self.outgoing.advance(bytes);
            if step.started.is_some_and(|tag| tag == b'S' || tag == b'Q') {
                self.syncs_written += 1;
            }
            bytes = &bytes[step.consumed..];
        }
    }

    /// Follows the messages read and takes out the answers to `BEGIN`;
    /// returns how many bytes of `data` remain (moved to its front).
    fn read(&mut self, data: &mut [u8]) -> usize {
        let (mut from, mut to) = (0, 0);
        while from < data.len() {
            if self.incoming.at_start() {
                self.dropping = self.on_incoming(data[from]);
            }
            let step = self.incoming.advance(&data[from..]);
            if let Some(status) = step.status {
                self.status = Some(status);
            }
            if !self.dropping {
                data.copy_within(from..from + step.consumed, to);
                to += step.consumed;
            }
            from += step.consumed;
        }
        to
    }

    /// Decides, from its tag, whether an incoming message is one of the
    /// answers to `BEGIN` to take out.
    fn on_incoming(&mut self, tag: u8) -> bool {
        let group = self.readies_read;
        if tag == b'Z' {
            self.readies_read += 1;
        }
        // Notices, notifications and parameter changes can come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return false;
        }
        let Some(strip) = self.strip.as_mut().filter(|s| s.group == group) else {
            return false;
        };
        if tag == BEGIN_ANSWERS[BEGIN_ANSWERS.len() - strip.left] {
            strip.left -= 1;
            if strip.left == 0 {
                self.strip = None;
                self.outcome = Some(BeginOutcome::Began);
            }
            true
        } else {
            // An ErrorResponse: the server refused BEGIN and skipped to the Sync.
            self.strip = None;
            self.outcome = Some(BeginOutcome::Refused);
            false
        }
    }
}

/// Follows message boundaries in one direction of the stream (after
/// start-up, every message is a tag byte, a four-byte length that counts
/// itself, and a body).
#[derive(Clone, Default)]
struct Framing {
    header: [u8; 5],
    have: usize,
    body_left: usize,
    /// Whether the next body byte is the first one.
    body_start: bool,
}

struct Step {
    consumed: usize,
    /// The tag of a message that started in this step.
    started: Option<u8>,
    /// A ReadyForQuery's status byte, read in this step.
    status: Option<ServerStatus>,
}

impl Framing {
    fn at_start(&self) -> bool {
        self.have == 0
    }

    /// Advances over the rest of the current message's bytes found at the
    /// start of `bytes` (at least one byte).
    fn advance(&mut self, bytes: &[u8]) -> Step {
        let mut step = Step {
            consumed: 0,
            started: None,
            status: None,
        };
        if self.have == 0 {
            step.started = bytes.first().copied();
        }
        if self.have < 5 {
            let n = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            step.consumed = n;
            if self.have < 5 {
                return step;
            }
            let [_, a, b, c, d] = self.header;
            // A length below 4 is a broken stream; tokio-postgres reports it.
            self.body_left = usize::try_from(u32::from_be_bytes([a, b, c, d]))
                .unwrap_or(usize::MAX)
                .saturating_sub(4);
            self.body_start = true;
        }
        let body = &bytes[step.consumed..];
        let n = self.body_left.min(body.len());
        if n > 0 && self.body_start {
            self.body_start = false;
            if self.header[0] == b'Z' {
                step.status = match body[0] {
                    b'T' => Some(ServerStatus::InTransaction),
                    b'E' => Some(ServerStatus::Failed),
                    _ => Some(ServerStatus::Idle),
                };
            }
        }
        self.body_left -= n;
        step.consumed += n;
        if self.body_left == 0 {
            self.have = 0;
        }
        step
    }
}

/// Encodes `BEGIN` as Parse, Bind and Execute of the unnamed statement and
/// portal, without a Sync: the statement's own request brings that.
fn begin_messages(begin: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(begin.len() + 32);
    message(&mut out, b'P', |body| {
        body.push(0); // unnamed statement
        body.extend_from_slice(begin.as_bytes());
        body.push(0);
        body.extend_from_slice(&0_i16.to_be_bytes()); // no parameter types
    });
    message(&mut out, b'B', |body| {
        body.extend_from_slice(&[0, 0]); // unnamed portal, unnamed statement
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, parameters, result formats
    });
    message(&mut out, b'E', |body| {
        body.push(0); // unnamed portal
        body.extend_from_slice(&0_i32.to_be_bytes()); // all rows
    });
    out
}

fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let length_at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    // Our messages are a few dozen bytes; the length always fits.
    let length = u32::try_from(out.len() - length_at).unwrap_or(u32::MAX);
    out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
}

/// A stream with the tap on it. `tokio-postgres` reads and writes through it.
pub(crate) struct Wire<S> {
    inner: S,
    tap: Arc<Tap>,
    /// Bytes accepted from `tokio-postgres` (with `BEGIN` slipped in) and not
    /// yet written to `inner`.
    pending: Vec<u8>,
}

impl<S> Wire<S> {
    pub(crate) fn new(inner: S, tap: Arc<Tap>) -> Wire<S> {
        Wire {
            inner,
            tap,
            pending: Vec::new(),
        }
    }

    /// The stream and the tap, to wrap the stream in TLS and the tap around
    /// that. Only done during the TLS handshake, before anything is pending.
    pub(crate) fn into_parts(self) -> (S, Arc<Tap>) {
        (self.inner, self.tap)
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes what is pending; `Ready(Ok)` once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let after = buf.filled().len();
            let mut state = this.tap.0.lock();
            if after == before || !state.active {
                return Poll::Ready(Ok(()));
            }
            let kept = state.read(&mut buf.filled_mut()[before..]);
            buf.set_filled(before + kept);
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
            // Everything read was answers to BEGIN: returning no bytes would
            // read as end of stream, so read on (or wait for more).
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let mut state = this.tap.0.lock();
        if !state.active {
            drop(state);
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let at = match state.armed.as_ref() {
            Some(_) => state.injection_point(buf),
            None => None,
        };
        let Some(at) = at else {
            drop(state);
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.tap.0.lock().wrote(&buf[..n]);
            return Poll::Ready(Ok(n));
        };
        let begin = state.armed.take().unwrap_or_default();
        state.wrote(&buf[..at]);
        state.strip = Some(Strip {
            group: state.syncs_written,
            left: BEGIN_ANSWERS.len(),
        });
        state.outcome = Some(BeginOutcome::Unanswered);
        state.wrote(&buf[at..]);
        drop(state);
        // One buffer, so BEGIN and the statement leave in one write.
        this.pending.reserve(buf.len() + begin.len());
        this.pending.extend_from_slice(&buf[..at]);
        this.pending.extend_from_slice(&begin);
        this.pending.extend_from_slice(&buf[at..]);
        // All of `buf` is accepted; what the socket does not take now is
        // written by the next write or flush.
        match this.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Wire<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        message(&mut out, tag, |b| b.extend_from_slice(body));
        out
    }

    fn active() -> TapState {
        TapState {
            active: true,
            ..TapState::default()
        }
    }

    /// Feeds `data` to the read side in chunks of `chunk` bytes.
    fn read_in_chunks(state: &mut TapState, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut kept = Vec::new();
        for piece in data.chunks(chunk) {
            let mut piece = piece.to_vec();
            let n = state.read(&mut piece);
            kept.extend_from_slice(&piece[..n]);
        }
        kept
    }

    #[test]
    fn begin_is_parse_bind_execute_of_the_unnamed_statement() {
        let bytes = begin_messages("BEGIN");
        let mut expected = msg(b'P', b"\0BEGIN\0\0\0");
        expected.extend(msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        expected.extend(msg(b'E', &[0, 0, 0, 0, 0]));
        assert_eq!(bytes, expected);
    }

    #[test]
    fn injection_goes_before_the_first_bind_after_earlier_messages() {
        let mut state = active();
        state.armed = Some(begin_messages("BEGIN"));
        let mut buf = msg(b'C', b"Ss1\0");
        buf.extend(msg(b'S', b""));
        let bind_at = buf.len();
        buf.extend(msg(b'B', b"\0s2\0\0\0\0\0\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        buf.extend(msg(b'S', b""));
        assert_eq!(state.injection_point(&buf), Some(bind_at));
        // A Bind's tag byte inside another message's body is not a message start.
        let mut tricky = msg(b'Q', b"B\0");
        tricky.extend(msg(b'B', b""));
        assert_eq!(state.injection_point(&tricky), Some(7));
    }

    #[test]
    fn answers_to_begin_are_taken_out_however_the_reads_split() {
        for chunk in 1..40 {
            let mut state = active();
            // An earlier group (a statement close) is answered first.
            state.wrote(&[msg(b'C', b"Ss1\0"), msg(b'S', b"")].concat());
            state.strip = Some(Strip {
                group: state.syncs_written,
                left: 3,
            });
            let earlier = [msg(b'3', b""), msg(b'Z', b"I")].concat();
            let ours = [
                msg(b'1', b""),
                msg(b'N', b"notice"),
                msg(b'2', b""),
                msg(b'C', b"BEGIN\0"),
            ]
            .concat();
            let theirs = [
                msg(b'2', b""),
                msg(b'D', b"\0\x01\0\0\0\x017"),
                msg(b'C', b"SELECT 1\0"),
                msg(b'Z', b"T"),
            ]
            .concat();
            let kept = read_in_chunks(&mut state, &[&earlier[..], &ours, &theirs].concat(), chunk);
            let expected = [&earlier[..], &msg(b'N', b"notice"), &theirs].concat();
            assert_eq!(kept, expected, "chunk {chunk}");
            assert_eq!(state.outcome, Some(BeginOutcome::Began));
            assert_eq!(state.status, Some(ServerStatus::InTransaction));
        }
    }

    #[test]
    fn a_refused_begin_lets_its_error_through() {
        let mut state = active();
        state.strip = Some(Strip { group: 0, left: 3 });
        let answers = [msg(b'E', b"SERROR\0\0"), msg(b'Z', b"I")].concat();
        let kept = read_in_chunks(&mut state, &answers, 3);
        assert_eq!(kept, answers);
        assert_eq!(state.outcome, Some(BeginOutcome::Refused));
        assert_eq!(state.status, Some(ServerStatus::Idle));
    }

    #[test]
    fn ready_for_query_reports_the_server_status() {
        let mut state = active();
        let kept = read_in_chunks(&mut state, &msg(b'Z', b"E"), 1);
        assert_eq!(kept.len(), 6);
        assert_eq!(state.status, Some(ServerStatus::Failed));
        assert_eq!(state.readies_read, 1);
    }
}
