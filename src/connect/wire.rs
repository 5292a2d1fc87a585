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
//! 1. writes `BEGIN`'s Parse/Bind/Execute, on the unnamed statement, in
//!    front of the first Parse or Bind that follows [`Tap::arm_begin`], in
//!    the same write (a statement's own Parse of the unnamed statement then
//!    replaces it, after it ran);
//! 2. takes the three answers to them (ParseComplete, BindComplete,
//!    CommandComplete) out of what `tokio-postgres` reads, which then sees
//!    exactly the answers to the request it sent; when the server refused
//!    `BEGIN`, its ErrorResponse is let through and becomes that request's
//!    error;
//! 3. reads the transaction status of every ReadyForQuery, the server's own
//!    word on whether a transaction block is open, and the tag of every
//!    CommandComplete (what the server says it did);
//! 4. answers a server that asks for `COPY … FROM STDIN` data (which no
//!    request of pgtx's sends) with CopyFail, so that the connection cannot
//!    wait for ever in copy mode (see [`Tap::take_copy_refused`]).
//!
//! 5. runs a pipeline as one Sync group (see [`Tap::arm_pipeline`]): the
//!    Syncs of its requests but the last are left out of what is written,
//!    and `tokio-postgres`, whose every request waits for its own
//!    ReadyForQuery, is given one made up after each request's answer;
//!    after an error the server skips the rest of the group, and each
//!    request it skipped is given an error saying so.
//!
//! `BEGIN` is never a named prepared statement: SQL can reach named
//! statements where the tap cannot see it (`EXECUTE format('DEALLOCATE
//! …')` in a `DO` block, then `PREPARE` under the same name), and a `BEGIN`
//! redefined that way would let the transaction's first statement commit
//! on its own. The unnamed statement lives only until the next Parse in
//! the same Sync group, out of reach of any SQL.
//!
//! It starts looking at messages only once the connection is set up
//! ([`Tap::activate`]), when both directions are at a message boundary
//! and nothing is in flight.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsStream};

use crate::machine::transaction_status::ServerStatus;

/// What became of a `BEGIN` armed with [`Tap::arm_begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BeginOutcome {
    /// No Parse or Bind was written after arming: nothing was sent.
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
    /// `BEGIN`'s messages, waiting for the next Parse or Bind.
    armed: Option<Vec<u8>>,
    /// The server dropped prepared statements (`DISCARD ALL`,
    /// `DEALLOCATE`) since the driver last asked.
    statements_dropped: bool,
    /// The first bytes of the CommandComplete tag or ParameterStatus being read.
    tag: Vec<u8>,
    /// The tag of the last CommandComplete let through (its first bytes).
    last_tag: Vec<u8>,
    /// The server reported a `client_encoding` other than UTF8 (user SQL
    /// ran `SET client_encoding`): SQL text is then not read by the server
    /// the way pgtx reads it.
    foreign_encoding: bool,
    /// The server reported `in_hot_standby` on after start-up: it has
    /// become a standby under this session (PostgreSQL 15 restarts to
    /// demote a server, so today only promotion is reported, turning it
    /// off; a server or pooler that reports more is followed).
    hot_standby_reported: bool,
    outcome: Option<BeginOutcome>,
    /// Answers to `BEGIN` still to be taken out of the read side.
    strip: Option<Strip>,
    outgoing: Framing,
    incoming: Framing,
    /// Sync and Query messages written: each is answered by one ReadyForQuery.
    syncs_written: u64,
    /// The tags (`S` or `Q`) of the Sync and Query messages written and not
    /// yet answered, oldest first: whether the group the server answers now
    /// is a simple Query or an extended one.
    unanswered: VecDeque<u8>,
    /// The server waits in copy-in mode for data that will not come: a
    /// CopyFail is owed (see [`TapState::take_reply`]).
    copy_fail_owed: bool,
    /// The server asked for, or started sending, COPY data since the last
    /// [`Tap::take_copy_refused`].
    copy_refused: Option<CopyRefused>,
    /// The request in flight is a COPY (see [`Tap::expect_copy`]): its
    /// copy mode is let be.
    copy_expected: bool,
    /// A copy-in began before its group's Sync was written: that Sync,
    /// which the server ignores in copy mode, is not counted.
    ignore_next_sync: bool,
    /// tokio-postgres wrote CopyDone or CopyFail: the next Sync ends a
    /// copy-in (it is queued as `F` in `unanswered`).
    copy_end_written: bool,
    /// The server entered the copy-in mode that such a Sync ends.
    copy_in_entered: bool,
    /// ReadyForQuery messages read.
    readies_read: u64,
    /// The incoming message being read is taken out.
    dropping: bool,
    status: Option<ServerStatus>,
    /// Bytes were written since the last flush that completed: part of
    /// a request may still wait in a buffer for the socket to take it.
    unflushed: bool,
    /// A pipeline being written and answered as one Sync group.
    merge: Option<Merge>,
    /// The outgoing message being written is left out (a pipeline's Sync).
    leaving_out: bool,
    /// The incoming message being read ends a request's answer (see
    /// [`Merge`]).
    completing: Option<u8>,
    /// Messages made up for `tokio-postgres` during the last read, one
    /// after another (see [`TapState::read`] and [`TapState::stitch`]):
    /// kept between reads, so that making them up allocates nothing.
    made_up: Vec<u8>,
    /// Where each run of `made_up` goes among the bytes kept: (the place
    /// among those bytes, where its run ends in `made_up`).
    made_up_at: Vec<(usize, usize)>,
}

/// A pipeline run as one Sync group (see [`Tap::arm_pipeline`]).
///
/// Its requests are the statements it was told of, each with an Execute.
/// A request of another kind written among them (a statement or portal
/// Close that `tokio-postgres` queues when one is dropped, on any thread)
/// joins the group too, as a request of its own, answered by CloseComplete:
/// the group still ends with the last statement's Sync.
#[derive(Debug)]
struct Merge {
    /// The ReadyForQuery messages read before its group's.
    group: u64,
    /// How many statements it has (requests with an Execute), once they
    /// are all sent.
    requests: Option<usize>,
    /// Its statements' Syncs written so far.
    syncs: usize,
    /// The request being written has an Execute.
    executes: bool,
    /// The requests written and not yet answered in full, in order:
    /// `true` for the pipeline's statements, `false` for a request that
    /// slipped in among them.
    unanswered: VecDeque<bool>,
    /// A request failed: the server skipped the rest of the group.
    failed: bool,
}

/// What an ErrorResponse made up for a request the server skipped says
/// (SQLSTATE 25P02, as the server says of a statement in a failed block).
pub(crate) const SKIPPED: &str = "pgtx: skipped: an earlier statement of this pipeline failed";

/// A `COPY` that reached the server through a statement method (which
/// expects rows or a row count, never copy data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyRefused {
    /// `COPY … FROM STDIN`: the server asked for data and got CopyFail, so
    /// nothing was copied; the server reported an error.
    FromClient,
    /// `COPY … TO STDOUT`: the server sent its data, which `tokio-postgres`
    /// read and dropped.
    ToClient,
}

struct Strip {
    /// How many ReadyForQuery precede the injected messages' answers.
    group: u64,
    /// The answers still to take out, in order.
    answers: &'static [u8],
}

/// The answers to Parse, Bind and Execute, in order.
const PARSE_BIND_EXECUTE: &[u8] = b"12C";

/// How a Sync that follows CopyDone or CopyFail is queued in `unanswered`.
const COPY_END: u8 = b'F';

/// The message tags `BEGIN`'s messages go in front of: the first Parse or
/// Bind of the statement it travels with.
const INJECT_BEFORE: &[u8] = b"PB";

/// What a CopyFail tells the server (it repeats it in its error).
const COPY_FAIL_MESSAGE: &str = "pgtx: COPY FROM STDIN cannot run through a statement method";

/// How much of a ParameterStatus is kept: enough for
/// `client_encoding\0` and any encoding name.
const PARAMETER_PREFIX: usize = 48;

/// A string field of a message body: the bytes before its terminating
/// NUL (all of them, if the kept prefix cut it short).
fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or_default()
}

/// How much of a CommandComplete tag is kept to recognise the commands
/// that drop prepared statements.
const TAG_PREFIX: usize = 16;

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

    /// Puts `begin` (a `BEGIN` statement) in front of the next Parse or
    /// Bind written: Parse of the unnamed statement, Bind and Execute. A
    /// statement's own Parse of the unnamed statement comes before its
    /// Bind, and must follow `BEGIN`'s, which it replaces; a named
    /// statement's Bind leaves the unnamed one alone.
    pub(crate) fn arm_begin(&self, begin: &str) {
        let mut messages = parse("", begin);
        messages.extend(bind_execute(""));
        let mut state = self.0.lock();
        state.armed = Some(messages);
        state.outcome = None;
    }

    /// Makes the requests sent next one Sync group: a pipeline. Call
    /// [`pipeline_sent`](Self::pipeline_sent) once they are all sent
    /// (queued to `tokio-postgres`), before anything of them is written.
    ///
    /// The Syncs of all but the last are left out of what is written, and
    /// `tokio-postgres` gets a ReadyForQuery made up after each request's
    /// answer (the server in a transaction block: the pipeline runs inside
    /// one). When one fails, the server skips everything up to the Sync:
    /// each request after it gets an ErrorResponse made up ([`SKIPPED`],
    /// 25P02) and a ReadyForQuery saying the block failed, the last one
    /// the server's own.
    pub(crate) fn arm_pipeline(&self) {
        let mut state = self.0.lock();
        // The tag read after it is its own (a COMMIT of an earlier
        // transaction must not stand for this one's).
        state.last_tag.clear();
        let group = state.syncs_written;
        state.merge = Some(Merge {
            group,
            requests: None,
            syncs: 0,
            executes: false,
            unanswered: VecDeque::new(),
            failed: false,
        });
    }

    /// The pipeline armed last has `requests` requests, all sent; with
    /// none, it is over.
    pub(crate) fn pipeline_sent(&self, requests: usize) {
        let mut state = self.0.lock();
        if requests == 0 {
            state.merge = None;
        } else if let Some(merge) = &mut state.merge {
            merge.requests = Some(requests);
        }
    }

    /// The tag of the last CommandComplete the server sent (`COMMIT`,
    /// `ROLLBACK`, `INSERT 0 1`, …), cut to its first bytes: what the
    /// server says it did, whatever the statement was called.
    pub(crate) fn last_command_tag(&self) -> String {
        let state = self.0.lock();
        let tag = state.last_tag.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(tag).into_owned()
    }

    /// Whether a `COPY` reached the server through a statement method since
    /// the last call, and which way.
    pub(crate) fn take_copy_refused(&self) -> Option<CopyRefused> {
        self.0.lock().copy_refused.take()
    }

    /// Lets the next copy mode the server enters be (a `COPY` run through
    /// the copy methods, which send and read the data) until the returned
    /// guard is dropped.
    pub(crate) fn expect_copy(&self) -> ExpectedCopy<'_> {
        self.0.lock().copy_expected = true;
        ExpectedCopy { tap: self }
    }

    /// Whether the server dropped prepared statements (`DISCARD ALL`,
    /// `DEALLOCATE`) since the last call: every statement prepared before
    /// must be prepared again.
    pub(crate) fn take_statements_dropped(&self) -> bool {
        std::mem::take(&mut self.0.lock().statements_dropped)
    }

    /// Holds the armed `BEGIN` back (if any) until the returned hold is
    /// dropped, for requests that must not carry it; it is armed again
    /// then (also when the request's future is dropped unfinished).
    pub(crate) fn hold_begin(&self) -> HeldBegin<'_> {
        HeldBegin {
            tap: self,
            armed: self.0.lock().armed.take(),
        }
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

    #[cfg(feature = "aio")]
    /// Whether everything written (once active) has been flushed to the
    /// socket: no part of a request waits in a buffer.
    pub(crate) fn flushed(&self) -> bool {
        !self.0.lock().unflushed
    }

    /// The transaction status the server last reported, once active.
    pub(crate) fn server_status(&self) -> Option<ServerStatus> {
        self.0.lock().status
    }

    /// Whether the server reads SQL text as UTF8 (as tokio-postgres asks at
    /// start-up), so that pgtx's reading of it is the server's.
    pub(crate) fn reads_utf8(&self) -> bool {
        !self.0.lock().foreign_encoding
    }

    /// Whether the server reported `in_hot_standby` on since start-up.
    pub(crate) fn hot_standby_reported(&self) -> bool {
        self.0.lock().hot_standby_reported
    }
}

impl TapState {
    /// Where the armed `BEGIN` goes in `buf`: before the first message
    /// starting in it that is a Parse or a Bind.
    fn injection_point(&self, buf: &[u8]) -> Option<usize> {
        self.armed.as_ref()?;
        let mut framing = self.outgoing.clone();
        let mut at = 0;
        while at < buf.len() {
            if framing.at_start() && INJECT_BEFORE.contains(&buf[at]) {
                return Some(at);
            }
            at += framing.advance(&buf[at..]).consumed;
        }
        None
    }

    /// Follows the messages written.
    fn wrote(&mut self, bytes: &[u8]) {
        self.wrote_keeping(bytes, &mut None);
    }

    /// Follows the messages written, leaving a pipeline's Syncs out (all
    /// but its last): with `kept`, the bytes to write go there; without,
    /// the caller wrote `bytes` as they are (nothing is left out then).
    fn wrote_keeping(&mut self, mut bytes: &[u8], kept: &mut Option<&mut Vec<u8>>) {
        while !bytes.is_empty() {
            let step = self.outgoing.advance(bytes);
            let this = &bytes[..step.consumed];
            bytes = &bytes[step.consumed..];
            if step.started == Some(b'E')
                && let Some(merge) = &mut self.merge
            {
                merge.executes = true;
            }
            if step.started.is_some() {
                self.leaving_out = step.started == Some(b'S') && self.leaves_out_sync();
            }
            if !self.leaving_out
                && let Some(kept) = kept.as_deref_mut()
            {
                kept.extend_from_slice(this);
            }
            if self.leaving_out {
                continue;
            }
            if matches!(step.started, Some(b'c' | b'f')) {
                self.copy_end_written = true;
            }
            if let Some(tag @ (b'S' | b'Q')) = step.started {
                if tag == b'S' && std::mem::take(&mut self.ignore_next_sync) {
                    continue;
                }
                let ends_copy = tag == b'S' && std::mem::take(&mut self.copy_end_written);
                self.syncs_written += 1;
                self.unanswered
                    .push_back(if ends_copy { COPY_END } else { tag });
            }
        }
    }

    /// A Sync starts being written: whether it is one of a pipeline's to
    /// leave out (every one but its last statement's; a request that
    /// slipped in among them joins the group).
    fn leaves_out_sync(&mut self) -> bool {
        let Some(merge) = &mut self.merge else {
            return false;
        };
        let statement = std::mem::take(&mut merge.executes);
        if merge.requests.is_some_and(|n| merge.syncs >= n) {
            return false; // after the pipeline
        }
        merge.unanswered.push_back(statement);
        if !statement {
            return true;
        }
        merge.syncs += 1;
        // Not all sent yet: cannot be its last.
        merge.requests.is_none_or(|n| merge.syncs < n)
    }

    /// Whether the pipeline's Syncs are still being written (what is
    /// written must then go through [`wrote_keeping`](Self::wrote_keeping)).
    fn merging_writes(&self) -> bool {
        self.leaving_out
            || self
                .merge
                .as_ref()
                .is_some_and(|m| m.requests.is_none_or(|n| m.syncs < n))
    }

    /// A message of the pipeline's group starts being let through to
    /// `tokio-postgres` (at `at` among the bytes kept): notes the one that
    /// ends a request's answer; before the server's ReadyForQuery that
    /// ends the group, makes up the answers of the requests it skipped.
    fn merge_on_start(&mut self, tag: u8, at: usize) {
        let Some(merge) = &mut self.merge else {
            return;
        };
        // `readies_read` already counts a ReadyForQuery starting now.
        let ends_group = tag == b'Z';
        let group = self.readies_read - u64::from(ends_group);
        if group != merge.group {
            return;
        }
        // A statement's answer ends with CommandComplete, EmptyQueryResponse,
        // PortalSuspended or an error; a Close's with CloseComplete.
        if matches!(tag, b'C' | b'I' | b'E' | b's' | b'3') {
            self.completing = Some(tag);
        }
        if !ends_group {
            return;
        }
        let made_up = &mut self.made_up;
        let start = made_up.len();
        let left = merge.unanswered.len();
        for (place, _) in merge.unanswered.drain(..).enumerate() {
            message(made_up, b'E', |body| {
                for (field, value) in [
                    (b'S', "ERROR"),
                    (b'V', "ERROR"),
                    (b'C', "25P02"),
                    (b'M', SKIPPED),
                ] {
                    body.push(field);
                    body.extend_from_slice(value.as_bytes());
                    body.push(0);
                }
                body.push(0);
            });
            // The last is answered by the server's own ReadyForQuery.
            if place + 1 < left {
                message(made_up, b'Z', |body| body.push(b'E'));
            }
        }
        if made_up.len() > start {
            self.made_up_at.push((at, made_up.len()));
        }
        self.merge = None;
    }

    /// A message noted by [`merge_on_start`](Self::merge_on_start) has
    /// been let through in full (up to `at` among the bytes kept): the
    /// request's answer is over, and but for the last statement (whose
    /// ReadyForQuery is the server's) one is made up.
    fn merge_on_end(&mut self, at: usize) {
        let Some(tag) = self.completing.take() else {
            return;
        };
        let Some(merge) = &mut self.merge else {
            return;
        };
        merge.failed |= tag == b'E';
        let Some(_statement) = merge.unanswered.pop_front() else {
            return;
        };
        // The group's last request is the one whose Sync was kept: the
        // last statement, once every statement's Sync is written.
        let last = merge.unanswered.is_empty() && merge.requests.is_some_and(|n| merge.syncs >= n);
        if !last {
            let status = if merge.failed { b'E' } else { b'T' };
            message(&mut self.made_up, b'Z', |body| body.push(status));
            self.made_up_at.push((at, self.made_up.len()));
        }
    }

    /// Follows the messages read and takes out the answers to `BEGIN`;
    /// returns how many bytes of `data` remain (moved to its front). The
    /// messages a pipeline makes up go among them: see `made_up`.
    fn read(&mut self, data: &mut [u8]) -> usize {
        let (mut from, mut to) = (0, 0);
        while from < data.len() {
            if self.incoming.at_start() {
                let tag = data[from];
                self.dropping = self.on_incoming(tag);
                self.tag.clear();
                if !self.dropping {
                    self.merge_on_start(tag, to);
                }
            }
            let step = self.incoming.advance(&data[from..]);
            if let Some(status) = step.status {
                self.status = Some(status);
            }
            let kind = self.incoming.header[0];
            if matches!(kind, b'C' | b'S') && !self.dropping {
                let body = &data[from + step.consumed - step.body..from + step.consumed];
                let keep = if kind == b'C' {
                    TAG_PREFIX
                } else {
                    PARAMETER_PREFIX
                };
                let room = keep.saturating_sub(self.tag.len());
                self.tag.extend_from_slice(&body[..room.min(body.len())]);
                if step.ended && kind == b'C' {
                    self.on_command_complete();
                } else if step.ended {
                    self.on_parameter_status();
                }
            }
            if !self.dropping {
                data.copy_within(from..from + step.consumed, to);
                to += step.consumed;
                if step.ended {
                    self.merge_on_end(to);
                }
            }
            from += step.consumed;
        }
        to
    }

    /// Whether the last [`read`](Self::read) made up messages, which
    /// [`stitch`](Self::stitch) puts among the bytes it kept.
    fn made_up_any(&self) -> bool {
        !self.made_up_at.is_empty()
    }

    /// Appends to `out` the bytes `kept` by the last [`read`](Self::read)
    /// with the messages it made up put in their places, and forgets them.
    fn stitch(&mut self, kept: &[u8], out: &mut Vec<u8>) {
        out.reserve(kept.len() + self.made_up.len());
        let (mut from, mut made) = (0, 0);
        for &(at, end) in &self.made_up_at {
            out.extend_from_slice(&kept[from..at]);
            out.extend_from_slice(&self.made_up[made..end]);
            (from, made) = (at, end);
        }
        out.extend_from_slice(&kept[from..]);
        self.made_up.clear();
        self.made_up_at.clear();
        if self.made_up.capacity() > KEPT_BUFFER {
            // A failed pipeline of many statements, skipped all at once.
            self.made_up = Vec::new();
            self.made_up_at = Vec::new();
        }
    }

    /// Keeps the tag, and notices the commands that drop prepared
    /// statements: the driver's cache must forget them.
    fn on_command_complete(&mut self) {
        if self.tag.starts_with(b"DEALLOCATE") || self.tag.starts_with(b"DISCARD ALL") {
            self.statements_dropped = true;
        }
        self.last_tag.clone_from(&self.tag);
    }

    /// The server entered copy mode for a statement of a request that
    /// cannot take part in it.
    ///
    /// Copy-in (`tag` `G`): the server waits for data and ignores Sync
    /// until it gets CopyDone or CopyFail, so the request would never be
    /// answered: a CopyFail is owed. Copy-out (`H`) ends by itself: the
    /// data is only noted, for a clear error.
    ///
    /// A copy the request expects (see [`Tap::expect_copy`]) goes on. In
    /// copy-in mode after an extended query the server ignores the
    /// group's Sync: one ReadyForQuery answers it and the Sync that follows
    /// CopyDone or CopyFail, so it is taken as answered.
    fn on_copy(&mut self, tag: u8) {
        if std::mem::take(&mut self.copy_expected) {
            if tag == b'G' {
                self.copy_in_entered = true;
                match self.unanswered.front() {
                    Some(b'S') => {
                        self.unanswered.pop_front();
                        self.readies_read += 1;
                    }
                    Some(_) => {}
                    None => self.ignore_next_sync = true,
                }
            }
            return;
        }
        if tag == b'H' {
            self.copy_refused = Some(CopyRefused::ToClient);
            return;
        }
        self.copy_refused = Some(CopyRefused::FromClient);
        self.copy_fail_owed = true;
    }

    /// The tap's own messages for a server in copy-in mode, once they can
    /// go: the outgoing stream is at a message boundary (they must not
    /// land inside one of `tokio-postgres`'s), and the Sync or Query that
    /// ends the group in copy mode has been written (tokio-postgres'
    /// write may have stopped between Execute and Sync).
    ///
    /// CopyFail makes the server report an error. After an extended query
    /// it then skips to the next Sync; the group's own Sync was ignored in
    /// copy mode, so a Sync follows, whose ReadyForQuery answers the group
    /// (which is why it is not counted as written). After a simple Query
    /// the server goes on by itself.
    fn take_reply(&mut self) -> Option<Vec<u8>> {
        if !self.copy_fail_owed || !self.outgoing.at_start() {
            return None;
        }
        let terminator = *self.unanswered.front()?;
        self.copy_fail_owed = false;
        let mut reply = Vec::new();
        message(&mut reply, b'f', |body| {
            body.extend_from_slice(COPY_FAIL_MESSAGE.as_bytes());
            body.push(0);
        });
        if terminator == b'S' {
            message(&mut reply, b'S', |_| {});
        }
        Some(reply)
    }

    /// Follows `client_encoding` and `in_hot_standby`, which the server
    /// reports whenever they change.
    fn on_parameter_status(&mut self) {
        if let Some(rest) = self.tag.strip_prefix(b"client_encoding\0") {
            self.foreign_encoding = !until_nul(rest).eq_ignore_ascii_case(b"UTF8");
        } else if let Some(rest) = self.tag.strip_prefix(b"in_hot_standby\0") {
            self.hot_standby_reported = until_nul(rest) == b"on";
        }
    }

    /// Decides, from its tag, whether an incoming message is one of the
    /// answers to `BEGIN` to take out.
    fn on_incoming(&mut self, tag: u8) -> bool {
        let group = self.readies_read;
        if tag == b'Z' {
            self.readies_read += 1;
            if self.unanswered.pop_front() == Some(COPY_END)
                && !std::mem::take(&mut self.copy_in_entered)
            {
                // tokio-postgres sends CopyFail and Sync when its COPY
                // fails to start (the server refused the statement, or it
                // was no COPY): the server, not in copy mode, ignores the
                // CopyFail and answers the Sync, an answer that no request
                // of tokio-postgres' waits for (its own ended with the
                // ReadyForQuery before). Let through, it would end the
                // connection ("unexpected message").
                return true;
            }
        }
        // Notices, notifications and parameter changes can come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return false;
        }
        if matches!(tag, b'G' | b'H') {
            self.on_copy(tag);
        }
        let Some(strip) = self.strip.as_mut().filter(|s| s.group == group) else {
            return false;
        };
        if let Some((&expected, rest)) = strip.answers.split_first()
            && tag == expected
        {
            strip.answers = rest;
            if rest.is_empty() {
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
    /// How many of the consumed bytes are body bytes (the last ones).
    body: usize,
    /// The message ended in this step.
    ended: bool,
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
            body: 0,
            ended: false,
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
        step.body = n;
        if self.body_left == 0 {
            self.have = 0;
            step.ended = true;
        }
        step
    }
}

/// Parse of `sql` as the prepared statement `name`.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + sql.len() + 16);
    message(&mut out, b'P', |body| {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.push(0);
        body.extend_from_slice(&0_i16.to_be_bytes()); // no parameter types
    });
    out
}

/// Bind of the prepared statement `name` to the unnamed portal, and Execute,
/// without a Sync: the statement's own request brings that.
fn bind_execute(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 32);
    message(&mut out, b'B', |body| {
        body.push(0); // unnamed portal
        body.extend_from_slice(name.as_bytes());
        body.push(0);
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

/// A copy expected by [`Tap::expect_copy`]; no longer expected once dropped.
pub(crate) struct ExpectedCopy<'t> {
    tap: &'t Tap,
}

impl Drop for ExpectedCopy<'_> {
    fn drop(&mut self) {
        self.tap.0.lock().copy_expected = false;
    }
}

/// A `BEGIN` held back by [`Tap::hold_begin`]; armed again when dropped.
pub(crate) struct HeldBegin<'t> {
    tap: &'t Tap,
    armed: Option<Vec<u8>>,
}

impl Drop for HeldBegin<'_> {
    fn drop(&mut self) {
        if let Some(armed) = self.armed.take() {
            self.tap.0.lock().armed = Some(armed);
        }
    }
}

/// How large a buffer for stitching made-up answers in is kept between
/// reads (a larger one, from a read of large rows, is let go).
const KEPT_BUFFER: usize = 64 * 1024;

/// A stream with the tap on it. `tokio-postgres` reads and writes through it.
pub(crate) struct Wire<S> {
    inner: S,
    tap: Arc<Tap>,
    /// Bytes accepted from `tokio-postgres` (with `BEGIN` slipped in) and not
    /// yet written to `inner`.
    pending: Vec<u8>,
    /// Bytes read (with made-up answers among them, see
    /// [`Tap::arm_pipeline`]) that `tokio-postgres` has yet to be given.
    made_up: Vec<u8>,
}

impl<S> Wire<S> {
    pub(crate) fn new(inner: S, tap: Arc<Tap>) -> Wire<S> {
        Wire {
            inner,
            tap,
            pending: Vec::new(),
            made_up: Vec::new(),
        }
    }

    /// The stream and the tap, to wrap the stream in TLS and the tap around
    /// that. Only done during the TLS handshake, before anything is pending.
    pub(crate) fn into_parts(self) -> (S, Arc<Tap>) {
        (self.inner, self.tap)
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Queues the tap's own messages, if the outgoing stream is at a
    /// message boundary, and writes and flushes what is pending as far as
    /// the socket takes it now (the rest goes with the next read or write).
    fn send_reply(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(reply) = self.tap.0.lock().take_reply() {
            self.pending.extend_from_slice(&reply);
        } else if self.pending.is_empty() {
            return Ok(());
        }
        if let Poll::Ready(result) = self.poll_pending(cx) {
            result?;
            if let Poll::Ready(result) = Pin::new(&mut self.inner).poll_flush(cx) {
                result?;
            }
        }
        Ok(())
    }

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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.made_up.is_empty() {
                // What a pipeline's answers became, beyond what the last
                // read could hold: before anything new.
                let n = this.made_up.len().min(buf.remaining());
                buf.put_slice(&this.made_up[..n]);
                this.made_up.drain(..n);
                return Poll::Ready(Ok(()));
            }
            // The tap's own answers (CopyFail) go out from here: a request
            // waiting for the server writes nothing else.
            this.send_reply(cx)?;
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let after = buf.filled().len();
            let mut state = this.tap.0.lock();
            if after == before || !state.active {
                return Poll::Ready(Ok(()));
            }
            let kept = state.read(&mut buf.filled_mut()[before..]);
            if state.made_up_any() {
                // Made-up messages go among the bytes kept: the whole is
                // put together here (in `made_up`, empty now, whose
                // allocation is kept), and what `buf` cannot hold waits.
                let mut whole = std::mem::take(&mut this.made_up);
                state.stitch(&buf.filled()[before..before + kept], &mut whole);
                drop(state);
                buf.set_filled(before);
                let n = whole.len().min(buf.remaining());
                buf.put_slice(&whole[..n]);
                whole.drain(..n);
                if whole.is_empty() && whole.capacity() > KEPT_BUFFER {
                    // A read of large rows: not kept for the next one.
                    whole = Vec::new();
                }
                this.made_up = whole;
                return Poll::Ready(Ok(()));
            }
            buf.set_filled(before + kept);
            let replying = state.copy_fail_owed;
            drop(state);
            if replying {
                this.send_reply(cx)?;
            }
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
        state.unflushed = true;
        let found = match state.armed {
            Some(_) => state.injection_point(buf),
            None => None,
        };
        let armed = match found {
            Some(_) => state.armed.take(),
            None => None,
        };
        if state.merging_writes() {
            // A pipeline's Syncs are left out (and `BEGIN` may go in):
            // what is written is rewritten, into `pending`.
            let mut kept = Vec::with_capacity(buf.len() + armed.as_ref().map_or(0, Vec::len));
            let at = found.unwrap_or(buf.len());
            state.wrote_keeping(&buf[..at], &mut Some(&mut kept));
            if let Some(begin) = armed {
                state.strip = Some(Strip {
                    group: state.syncs_written,
                    answers: PARSE_BIND_EXECUTE,
                });
                state.outcome = Some(BeginOutcome::Unanswered);
                kept.extend_from_slice(&begin);
            }
            state.wrote_keeping(&buf[at..], &mut Some(&mut kept));
            drop(state);
            this.pending.extend_from_slice(&kept);
            return match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        let (Some(at), Some(begin)) = (found, armed) else {
            drop(state);
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            let reply = {
                let mut state = this.tap.0.lock();
                state.wrote(&buf[..n]);
                state.take_reply()
            };
            if let Some(reply) = reply {
                this.pending.extend_from_slice(&reply);
            }
            return Poll::Ready(Ok(n));
        };
        state.wrote(&buf[..at]);
        state.strip = Some(Strip {
            group: state.syncs_written,
            answers: PARSE_BIND_EXECUTE,
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
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.tap.0.lock().unflushed = false;
        Poll::Ready(Ok(()))
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

    fn copy_fail() -> Vec<u8> {
        msg(b'f', format!("{COPY_FAIL_MESSAGE}\0").as_bytes())
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

    /// An active tap that has read `stream` in two reads, split at
    /// `split`, and passed all of it on.
    fn read_split(stream: &[u8], split: usize) -> Arc<Tap> {
        let tap = Tap::new();
        tap.activate();
        let mut data = stream.to_vec();
        let (a, b) = data.split_at_mut(split);
        let mut state = tap.0.lock();
        assert_eq!(state.read(a) + state.read(b), stream.len(), "all passed on");
        drop(state);
        tap
    }

    #[test]
    fn a_client_encoding_other_than_utf8_is_noticed_at_any_read_split() {
        let stream = [
            msg(b'S', b"client_encoding\0SJIS\0"),
            msg(b'C', b"SET\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        for split in 1..stream.len() {
            let tap = read_split(&stream, split);
            assert!(!tap.reads_utf8(), "split at {split}");
            let mut back = msg(b'S', b"client_encoding\0UTF8\0");
            tap.0.lock().read(&mut back);
            assert!(tap.reads_utf8(), "split at {split}");
        }
        // Other parameters leave it alone.
        let tap = Tap::new();
        tap.activate();
        tap.0
            .lock()
            .read(&mut msg(b'S', b"application_name\0SJIS\0"));
        assert!(tap.reads_utf8());
    }

    #[test]
    fn a_server_turning_hot_standby_is_noticed_at_any_read_split() {
        let stream = [
            msg(b'S', b"in_hot_standby\0on\0"),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        assert!(!Tap::new().hot_standby_reported());
        for split in 1..stream.len() {
            let tap = read_split(&stream, split);
            assert!(tap.hot_standby_reported(), "split at {split}");
            // Promotion reports it off again.
            tap.0.lock().read(&mut msg(b'S', b"in_hot_standby\0off\0"));
            assert!(!tap.hot_standby_reported(), "split at {split}");
        }
        let tap = Tap::new();
        tap.activate();
        tap.0
            .lock()
            .read(&mut msg(b'S', b"default_transaction_read_only\0on\0"));
        assert!(!tap.hot_standby_reported());
    }

    #[test]
    fn dropping_prepared_statements_is_reported_once() {
        for tag in ["DISCARD ALL", "DEALLOCATE ALL", "DEALLOCATE"] {
            let tap = Tap::new();
            let mut state = tap.0.lock();
            state.active = true;
            let mut answers = [msg(b'C', format!("{tag}\0").as_bytes()), msg(b'Z', b"I")].concat();
            let n = answers.len();
            // Split inside the tag, as a read may.
            let (a, b) = answers.split_at_mut(5);
            assert_eq!(state.read(a) + state.read(b), n);
            drop(state);
            assert!(tap.take_statements_dropped(), "{tag}");
            assert!(!tap.take_statements_dropped(), "reported once");
            assert_eq!(tap.last_command_tag(), tag);
        }
        let tap = Tap::new();
        let mut state = tap.0.lock();
        state.active = true;
        let mut other = [msg(b'C', b"DISCARD PLANS\0"), msg(b'C', b"SELECT 1\0")].concat();
        state.read(&mut other);
        drop(state);
        assert!(
            !tap.take_statements_dropped(),
            "DISCARD PLANS keeps prepared statements"
        );
        assert_eq!(tap.last_command_tag(), "SELECT 1");
    }

    #[test]
    fn begin_is_parsed_unnamed_every_time_in_front_of_the_first_parse_or_bind() {
        let tap = Tap::new();
        tap.activate();
        let mut expected = msg(b'P', b"\0BEGIN\0\0\0");
        expected.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        expected.extend(msg(b'E', &[0, 0, 0, 0, 0]));
        // What tokio-postgres' query_typed writes: Parse, Bind, Describe,
        // Execute, Sync, all on the unnamed statement.
        let mut unnamed = msg(b'P', b"\0SELECT 1\0\0\0");
        unnamed.extend(msg(b'B', b"\0\0\0\0\0\0\0\x01\0\x01"));
        unnamed.extend(msg(b'D', b"S\0"));
        unnamed.extend(msg(b'E', b"\0\0\0\0\0"));
        unnamed.extend(msg(b'S', b""));
        // A cached statement: a Close of an evicted one, then Bind by name.
        let mut named = msg(b'C', b"Ss1\0");
        named.extend(msg(b'S', b""));
        let bind_at = named.len();
        named.extend(msg(b'B', b"\0s2\0\0\0\0\0\0\0"));
        named.extend(msg(b'E', b"\0\0\0\0\0"));
        named.extend(msg(b'S', b""));
        // A Bind's tag byte inside another message's body is not a message start.
        let mut tricky = msg(b'Q', b"B\0");
        tricky.extend(msg(b'B', b""));
        for (statement, at) in [(&unnamed, 0), (&named, bind_at), (&tricky, 7)] {
            tap.arm_begin("BEGIN");
            let mut state = tap.0.lock();
            assert_eq!(state.injection_point(statement), Some(at));
            let armed = state.armed.take().expect("armed");
            assert_eq!(armed, expected, "no name, parsed again each time");
            state.strip = Some(Strip {
                group: 0,
                answers: PARSE_BIND_EXECUTE,
            });
            let answers = [msg(b'1', b""), msg(b'2', b""), msg(b'C', b"BEGIN\0")].concat();
            assert_eq!(
                state.read(&mut answers.clone()),
                0,
                "BEGIN's answers taken out"
            );
            assert_eq!(state.outcome, Some(BeginOutcome::Began));
            assert!(state.last_tag.is_empty(), "BEGIN's tag is not the user's");
            state.readies_read = 0;
        }
    }

    #[test]
    fn a_copy_in_is_failed_and_synced_after_an_extended_query_only() {
        for (terminator, reply) in [
            (msg(b'S', b""), [copy_fail(), msg(b'S', b"")].concat()),
            (msg(b'Q', b"COPY t FROM STDIN\0"), copy_fail()),
        ] {
            let mut state = active();
            state.wrote(&terminator);
            // Split anywhere, the CopyInResponse is recognised.
            let answers = msg(b'G', b"\0\0\x01\0\0");
            let kept = read_in_chunks(&mut state, &answers, 2);
            assert_eq!(kept, answers, "tokio-postgres still sees it");
            assert_eq!(state.copy_refused, Some(CopyRefused::FromClient));
            assert!(state.copy_fail_owed);
            assert_eq!(state.take_reply(), Some(reply));
            assert_eq!(state.take_reply(), None, "sent once");
            // The group's one ReadyForQuery settles it: the tap's Sync is not counted.
            read_in_chunks(
                &mut state,
                &[msg(b'E', b"SERROR\0\0"), msg(b'Z', b"I")].concat(),
                3,
            );
            assert_eq!(state.readies_read, state.syncs_written);
        }
    }

    #[test]
    fn an_expected_copy_in_is_let_be_and_settles_with_one_ready_for_query() {
        // Bind, Execute, Sync (ignored in copy mode); data; CopyDone, Sync.
        for sync_first in [true, false] {
            let mut state = active();
            state.copy_expected = true;
            state.wrote(&[msg(b'B', b"\0s1\0\0\0\0\0\0\0"), msg(b'E', b"\0\0\0\0\0")].concat());
            if sync_first {
                state.wrote(&msg(b'S', b""));
            }
            read_in_chunks(
                &mut state,
                &[msg(b'2', b""), msg(b'G', b"\0\0\0")].concat(),
                2,
            );
            if !sync_first {
                // The write stopped before the group's Sync.
                state.wrote(&msg(b'S', b""));
            }
            assert_eq!(state.copy_refused, None, "not refused");
            assert!(!state.copy_fail_owed);
            assert_eq!(state.take_reply(), None);
            assert!(!state.copy_expected, "expected once");
            state.wrote(&[msg(b'd', b"1\n"), msg(b'c', b""), msg(b'S', b"")].concat());
            assert!(
                state.readies_read < state.syncs_written,
                "unsettled in copy mode"
            );
            read_in_chunks(
                &mut state,
                &[msg(b'C', b"COPY 1\0"), msg(b'Z', b"I")].concat(),
                3,
            );
            assert_eq!(
                state.readies_read, state.syncs_written,
                "settled ({sync_first})"
            );
            assert!(state.unanswered.is_empty());
        }
    }

    #[test]
    fn a_copy_the_server_never_began_has_the_ready_for_query_of_its_copy_fail_taken_out() {
        // Bind, Execute, Sync; the server refuses the COPY (ErrorResponse,
        // ReadyForQuery); tokio-postgres then drops its sink: CopyFail,
        // Sync, written before or after the refusal is read.
        for fail_first in [false, true] {
            let mut state = active();
            state.copy_expected = true;
            state.wrote(
                &[
                    msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                    msg(b'E', b"\0\0\0\0\0"),
                    msg(b'S', b""),
                ]
                .concat(),
            );
            let fail = [msg(b'f', b"\0"), msg(b'S', b"")].concat();
            if fail_first {
                state.wrote(&fail);
            }
            let refused = [msg(b'E', b"SERROR\0\0"), msg(b'Z', b"I")].concat();
            assert_eq!(
                read_in_chunks(&mut state, &refused, 3),
                refused,
                "the refusal goes through"
            );
            if !fail_first {
                state.wrote(&fail);
            }
            assert!(state.readies_read < state.syncs_written);
            let stray = msg(b'Z', b"I");
            assert!(
                read_in_chunks(&mut state, &stray, 2).is_empty(),
                "taken out ({fail_first})"
            );
            assert_eq!(state.readies_read, state.syncs_written, "settled");
        }
    }

    #[test]
    fn a_copy_in_failed_before_its_start_was_read_keeps_its_ready_for_query() {
        // The sink is dropped (a future dropped) before the CopyInResponse
        // is read: CopyFail and Sync follow the group at once.
        let mut state = active();
        state.copy_expected = true;
        state.wrote(
            &[
                msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'S', b""),
            ]
            .concat(),
        );
        state.wrote(&[msg(b'f', b"\0"), msg(b'S', b"")].concat());
        let answers = [
            msg(b'2', b""),
            msg(b'G', b"\0\0\0"),
            msg(b'E', b"SERROR\0\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        assert_eq!(
            read_in_chunks(&mut state, &answers, 3),
            answers,
            "all let through"
        );
        assert_eq!(state.readies_read, state.syncs_written, "settled");
    }

    #[test]
    fn an_expected_copy_out_counts_its_sync() {
        let mut state = active();
        state.copy_expected = true;
        state.wrote(
            &[
                msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'S', b""),
            ]
            .concat(),
        );
        read_in_chunks(
            &mut state,
            &[
                msg(b'2', b""),
                msg(b'H', b"\0\0\0"),
                msg(b'd', b"1\n"),
                msg(b'c', b""),
            ]
            .concat(),
            4,
        );
        assert_eq!(state.copy_refused, None);
        assert!(state.readies_read < state.syncs_written);
        read_in_chunks(
            &mut state,
            &[msg(b'C', b"COPY 1\0"), msg(b'Z', b"I")].concat(),
            4,
        );
        assert_eq!(state.readies_read, state.syncs_written);
    }

    #[test]
    fn the_taps_reply_waits_for_a_message_boundary() {
        let mut state = active();
        state.wrote(&msg(b'S', b""));
        read_in_chunks(&mut state, &msg(b'G', b"\0\0\0"), 10);
        let half = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
        state.wrote(&half[..4]);
        assert_eq!(state.take_reply(), None, "not inside a Bind");
        state.wrote(&half[4..]);
        assert!(state.take_reply().is_some());
    }

    #[test]
    fn the_taps_reply_waits_for_the_sync_of_the_group_in_copy_mode() {
        // tokio-postgres' write stopped between Execute and Sync; the
        // server ran Execute and entered copy mode.
        let mut state = active();
        state.wrote(&[msg(b'B', b"\0s1\0\0\0\0\0\0\0"), msg(b'E', b"\0\0\0\0\0")].concat());
        read_in_chunks(&mut state, &msg(b'G', b"\0\0\0"), 10);
        assert_eq!(
            state.take_reply(),
            None,
            "the group's Sync is not written yet"
        );
        state.wrote(&msg(b'S', b""));
        assert_eq!(
            state.take_reply(),
            Some([copy_fail(), msg(b'S', b"")].concat()),
            "then CopyFail and a Sync of the tap's own"
        );
        read_in_chunks(
            &mut state,
            &[msg(b'E', b"SERROR\0\0"), msg(b'Z', b"I")].concat(),
            3,
        );
        assert_eq!(
            state.readies_read, state.syncs_written,
            "one answer per counted Sync"
        );
    }

    #[test]
    fn a_copy_out_is_noted_and_left_to_end_by_itself() {
        let mut state = active();
        state.wrote(&msg(b'S', b""));
        let answers = [
            msg(b'H', b"\0\0\0"),
            msg(b'd', b"1\n"),
            msg(b'c', b""),
            msg(b'C', b"COPY 1\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        assert_eq!(read_in_chunks(&mut state, &answers, 4), answers);
        assert_eq!(state.copy_refused, Some(CopyRefused::ToClient));
        assert_eq!(state.take_reply(), None, "nothing to answer");
    }

    #[test]
    fn a_held_begin_is_not_injected_and_is_armed_again_afterwards() {
        let tap = Tap::new();
        tap.arm_begin("BEGIN");
        let held = tap.hold_begin();
        assert!(tap.0.lock().armed.is_none(), "not armed while held");
        drop(held);
        assert!(tap.0.lock().armed.is_some(), "armed again");
        // Nothing armed: nothing comes back.
        let tap = Tap::new();
        drop(tap.hold_begin());
        assert!(tap.0.lock().armed.is_none());
    }

    #[test]
    fn answers_to_begin_are_taken_out_however_the_reads_split() {
        for chunk in 1..40 {
            let mut state = active();
            // An earlier group (a statement close) is answered first.
            state.wrote(&[msg(b'C', b"Ss1\0"), msg(b'S', b"")].concat());
            state.strip = Some(Strip {
                group: state.syncs_written,
                answers: PARSE_BIND_EXECUTE,
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
            assert_eq!(state.last_tag, b"SELECT 1\0");
        }
    }

    #[test]
    fn a_refused_begin_lets_its_error_through() {
        let mut state = active();
        state.strip = Some(Strip {
            group: 0,
            answers: PARSE_BIND_EXECUTE,
        });
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

    /// Feeds `data` to the read side in chunks of `chunk` bytes, with the
    /// made-up messages put among the bytes kept, as `Wire` does.
    fn read_merged(state: &mut TapState, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut seen = Vec::new();
        for piece in data.chunks(chunk) {
            let mut piece = piece.to_vec();
            let n = state.read(&mut piece);
            state.stitch(&piece[..n], &mut seen);
        }
        seen
    }

    fn bind_execute_sync() -> Vec<u8> {
        [
            msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat()
    }

    fn skipped() -> Vec<u8> {
        msg(
            b'E',
            format!("SERROR\0VERROR\0C25P02\0M{SKIPPED}\0\0").as_bytes(),
        )
    }

    /// Three requests, each with its Sync, written in pieces of every size.
    fn write_three(state: &mut TapState, piece: usize) -> Vec<u8> {
        let requests = [
            bind_execute_sync(),
            bind_execute_sync(),
            bind_execute_sync(),
        ]
        .concat();
        let mut written = Vec::new();
        for bytes in requests.chunks(piece) {
            state.wrote_keeping(bytes, &mut Some(&mut written));
        }
        written
    }

    #[test]
    fn a_pipeline_is_written_with_one_sync_at_any_write_split() {
        for piece in 1..30 {
            let tap = Tap::new();
            tap.activate();
            tap.arm_pipeline();
            tap.pipeline_sent(3);
            let mut state = tap.0.lock();
            assert!(state.merging_writes());
            let written = write_three(&mut state, piece);
            let one_sync = [
                msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'S', b""),
            ]
            .concat();
            assert_eq!(written, one_sync, "piece {piece}");
            assert_eq!(state.syncs_written, 1, "only the last counts");
            assert!(!state.merging_writes());
            // What follows (a COMMIT as a simple Query) is written as is.
            let mut after = Vec::new();
            state.wrote_keeping(&msg(b'Q', b"COMMIT\0"), &mut Some(&mut after));
            assert_eq!(after, msg(b'Q', b"COMMIT\0"));
            assert_eq!(state.syncs_written, 2);
        }
    }

    #[test]
    fn each_request_of_a_pipeline_gets_a_ready_for_query_at_any_read_split() {
        for chunk in 1..40 {
            let tap = Tap::new();
            tap.activate();
            tap.arm_pipeline();
            tap.pipeline_sent(3);
            let mut state = tap.0.lock();
            write_three(&mut state, 64);
            let answers = [
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'2', b""),
                msg(b'N', b"notice"),
                msg(b'D', b"\0\x01\0\0\0\x017"),
                msg(b'C', b"SELECT 1\0"),
                msg(b'2', b""),
                msg(b'C', b"INSERT 0 1\0"),
                msg(b'Z', b"T"),
            ]
            .concat();
            let seen = read_merged(&mut state, &answers, chunk);
            let expected = [
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'Z', b"T"),
                msg(b'2', b""),
                msg(b'N', b"notice"),
                msg(b'D', b"\0\x01\0\0\0\x017"),
                msg(b'C', b"SELECT 1\0"),
                msg(b'Z', b"T"),
                msg(b'2', b""),
                msg(b'C', b"INSERT 0 1\0"),
                msg(b'Z', b"T"),
            ]
            .concat();
            assert_eq!(seen, expected, "chunk {chunk}");
            assert!(state.merge.is_none(), "over with its group");
            assert_eq!(state.readies_read, state.syncs_written, "settled");
        }
    }

    #[test]
    fn the_requests_after_a_failed_one_are_answered_as_skipped() {
        for failing in 0..3 {
            let tap = Tap::new();
            tap.activate();
            tap.arm_pipeline();
            tap.pipeline_sent(3);
            let mut state = tap.0.lock();
            write_three(&mut state, 7);
            let error = msg(b'E', b"SERROR\0C23505\0Mduplicate\0\0");
            let mut answers = Vec::new();
            let mut expected = Vec::new();
            for request in 0..3 {
                let last = request == 2;
                if request < failing {
                    answers.extend([msg(b'2', b""), msg(b'C', b"UPDATE 1\0")].concat());
                    expected.extend(
                        [msg(b'2', b""), msg(b'C', b"UPDATE 1\0"), msg(b'Z', b"T")].concat(),
                    );
                } else if request == failing {
                    answers.extend(error.clone());
                    expected.extend(error.clone());
                    if !last {
                        expected.extend(msg(b'Z', b"E"));
                    }
                } else {
                    expected.extend(skipped());
                    if !last {
                        expected.extend(msg(b'Z', b"E"));
                    }
                }
            }
            answers.extend(msg(b'Z', b"E"));
            expected.extend(msg(b'Z', b"E"));
            for chunk in [1, 3, 500] {
                let mut state = TapState {
                    merge: Some(Merge {
                        group: 0,
                        requests: Some(3),
                        syncs: 3,
                        executes: false,
                        unanswered: [true, true, true].into(),
                        failed: false,
                    }),
                    ..active()
                };
                state.syncs_written = 1;
                let seen = read_merged(&mut state, &answers, chunk);
                assert_eq!(seen, expected, "failing {failing}, chunk {chunk}");
                assert_eq!(state.status, Some(ServerStatus::Failed));
                assert!(state.merge.is_none());
            }
            let seen = read_merged(&mut state, &answers, 5);
            assert_eq!(seen, expected, "failing {failing}, after writing");
        }
    }

    #[test]
    fn the_answers_made_up_for_many_skipped_requests_are_not_kept_after() {
        let requests = 2000;
        let mut state = TapState {
            merge: Some(Merge {
                group: 0,
                requests: Some(requests),
                syncs: requests,
                executes: false,
                unanswered: std::iter::repeat_n(true, requests).collect(),
                failed: false,
            }),
            ..active()
        };
        state.syncs_written = 1;
        let mut answers = msg(b'E', b"SERROR\0C23505\0Mduplicate\0\0");
        answers.extend(msg(b'Z', b"E"));
        let seen = read_merged(&mut state, &answers, answers.len());
        // The first request's error, then each other's skipped error.
        let skipped_errors = seen
            .windows(SKIPPED.len())
            .filter(|w| *w == SKIPPED.as_bytes());
        assert_eq!(skipped_errors.count(), requests - 1);
        assert!(seen.len() > KEPT_BUFFER, "{} bytes made up", seen.len());
        assert!(state.made_up.capacity() <= KEPT_BUFFER);
        assert!(state.made_up_at.is_empty());
    }

    #[test]
    fn a_pipeline_s_begin_and_the_answers_before_its_group_are_left_alone() {
        let tap = Tap::new();
        tap.activate();
        let mut state = tap.0.lock();
        // A statement close queued before the pipeline, answered first.
        state.wrote(&[msg(b'C', b"Ss1\0"), msg(b'S', b"")].concat());
        drop(state);
        tap.arm_pipeline();
        tap.pipeline_sent(2);
        let mut state = tap.0.lock();
        let group = state.syncs_written;
        state.strip = Some(Strip {
            group,
            answers: PARSE_BIND_EXECUTE,
        });
        let requests = [bind_execute_sync(), bind_execute_sync()].concat();
        let mut written = Vec::new();
        state.wrote_keeping(&requests, &mut Some(&mut written));
        let answers = [
            msg(b'3', b""),
            msg(b'Z', b"I"),
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'C', b"BEGIN\0"),
            msg(b'2', b""),
            msg(b'C', b"UPDATE 1\0"),
            msg(b'2', b""),
            msg(b'C', b"UPDATE 2\0"),
            msg(b'Z', b"T"),
        ]
        .concat();
        let seen = read_merged(&mut state, &answers, 4);
        let expected = [
            msg(b'3', b""),
            msg(b'Z', b"I"),
            msg(b'2', b""),
            msg(b'C', b"UPDATE 1\0"),
            msg(b'Z', b"T"),
            msg(b'2', b""),
            msg(b'C', b"UPDATE 2\0"),
            msg(b'Z', b"T"),
        ]
        .concat();
        assert_eq!(seen, expected);
        assert_eq!(state.outcome, Some(BeginOutcome::Began));
        assert_eq!(state.readies_read, state.syncs_written);
    }

    /// A statement Close that `tokio-postgres` queues among the pipeline's
    /// requests (a `Statement` dropped on another thread) joins the group:
    /// its Sync is left out too, it gets its ReadyForQuery, and the group
    /// still ends with the last statement's Sync.
    #[test]
    fn a_close_slipped_in_among_a_pipeline_s_requests_joins_its_group() {
        for chunk in [1, 4, 500] {
            let tap = Tap::new();
            tap.activate();
            tap.arm_pipeline();
            tap.pipeline_sent(3);
            let mut state = tap.0.lock();
            let close = [msg(b'C', b"Ss9\0"), msg(b'S', b"")].concat();
            let requests = [
                bind_execute_sync(),
                close,
                bind_execute_sync(),
                bind_execute_sync(),
            ]
            .concat();
            let mut written = Vec::new();
            for piece in requests.chunks(chunk) {
                state.wrote_keeping(piece, &mut Some(&mut written));
            }
            let syncs = written
                .windows(5)
                .filter(|w| *w == msg(b'S', b"").as_slice())
                .count();
            assert_eq!(syncs, 1, "one Sync, the last statement's");
            assert!(written.ends_with(&msg(b'S', b"")));
            let answers = [
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'3', b""),
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'Z', b"T"),
            ]
            .concat();
            let expected = [
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'Z', b"T"),
                msg(b'3', b""),
                msg(b'Z', b"T"),
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'Z', b"T"),
                msg(b'2', b""),
                msg(b'C', b"UPDATE 1\0"),
                msg(b'Z', b"T"),
            ]
            .concat();
            assert_eq!(
                read_merged(&mut state, &answers, chunk),
                expected,
                "chunk {chunk}"
            );
            assert!(state.merge.is_none());
            assert_eq!(state.readies_read, state.syncs_written, "settled");
        }
    }
}
