//! Pipelines: several statements, and `COMMIT`, in one write and one Sync
//! group (one round trip), on a connection whose statements are prepared
//! already (see `SessionCore::pipeline` for the rest).
//!
//! `tokio-postgres` runs the statements as requests side by side, each with
//! its own Sync; the wire tap leaves out every Sync but the last (see
//! `Tap::arm_pipeline`), so that the server runs them as one group: after
//! an error it skips the rest, and a `BEGIN` sent with the first never
//! leaves the others to run on their own. `COMMIT` closes the group (on
//! the unnamed statement): the server answers it all in one flush, and
//! after an error skips it with the rest, the block then being rolled back
//! by one more round trip.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::unnamed::{ParameterCount, typed};
use super::{Connection, Target};
use crate::connect::wire::Tap;
use crate::pipeline::Answer;
use crate::statements::Params;

/// One statement of a pipeline, ready to run: its target and parameters,
/// and whether its rows are wanted (`query`) or its row count (`execute`).
#[derive(Clone, Copy)]
pub(crate) struct Piped<'a> {
    pub(crate) target: Target<'a>,
    pub(crate) params: Params<'a>,
    pub(crate) rows: bool,
}

/// What a pipeline came back with.
pub(crate) struct Sent {
    /// Each statement's answer, in order: the server's error for the one
    /// that failed, and for those after it an error saying they were
    /// skipped (see `wire::SKIPPED`).
    pub(crate) answers: Vec<Result<Answer, postgres::Error>>,
    /// The answer to the `COMMIT` that ended it, if it was to end the
    /// transaction (skipped, after a failed statement; not sent when a
    /// statement could not be).
    pub(crate) end: Option<Result<(), postgres::Error>>,
    /// A statement could not be sent (its parameters did not encode):
    /// the others ran without it.
    pub(crate) unsent: bool,
}

/// A step's parameters with their types, for the unnamed statement (or
/// why they cannot be bound).
type TypedParams<'p> = Result<Vec<(&'p (dyn ToSql + Sync), Type)>, ParameterCount>;

type Running<'c> = Pin<Box<dyn Future<Output = Result<Answer, postgres::Error>> + Send + 'c>>;

impl Connection {
    /// Runs `steps` as one Sync group in one write, followed (with
    /// `commit`) by `COMMIT` as a simple Query; reads every answer.
    pub(crate) async fn pipeline(
        &mut self,
        steps: &[Piped<'_>],
        commit: bool,
    ) -> Result<Sent, postgres::Error> {
        let tap = self.tap.clone();
        self.run(|client| run(client, tap, steps, commit)).await
    }
}

/// The requests of a pipeline, sent side by side: each is queued to
/// `tokio-postgres` when first polled, so they all are, in order, before
/// any is written.
async fn run(
    client: &Client,
    tap: Arc<Tap>,
    steps: &[Piped<'_>],
    commit: bool,
) -> Result<Sent, postgres::Error> {
    // Text on the unnamed statement binds its parameters with their
    // types: made before the requests, which borrow them.
    let typed_params: Vec<TypedParams<'_>> = steps
        .iter()
        .map(|step| match step.target {
            Target::Prepared(_) => Ok(Vec::new()),
            Target::Unnamed(_, types) => typed(step.params, types),
        })
        .collect();
    let mut running: Vec<Running<'_>> = steps
        .iter()
        .zip(&typed_params)
        .map(|(step, typed)| start(client, step, typed))
        .collect();
    let mut answers: Vec<Option<Result<Answer, postgres::Error>>> =
        std::iter::repeat_with(|| None).take(steps.len()).collect();
    tap.arm_pipeline();
    // The first poll queues every request. One that is done at once was
    // never sent (its parameters failed to encode).
    poll_fn(|cx| {
        let _ = poll_each(&mut running, &mut answers, cx);
        Poll::Ready(())
    })
    .await;
    let unsent = answers.iter().any(Option::is_some);
    // COMMIT closes the group, on the unnamed statement (no name SQL could
    // redefine): after an error the server skips it with the rest, and
    // the block is left for a ROLLBACK. Without every statement, it is not
    // sent at all.
    let mut end = (commit && !unsent).then(|| Box::pin(client.execute_typed("COMMIT", &[])));
    let mut ended = None;
    if let Some(request) = &mut end {
        // Queued now, behind every statement (done at once: never sent).
        poll_fn(|cx| {
            if let Poll::Ready(done) = request.as_mut().poll(cx) {
                ended = Some(done);
            }
            Poll::Ready(())
        })
        .await;
    }
    let sent = answers.iter().filter(|a| a.is_none()).count()
        + usize::from(end.is_some() && ended.is_none());
    tap.pipeline_sent(sent);
    poll_fn(|cx| {
        let mut pending = poll_each(&mut running, &mut answers, cx).is_pending();
        if let Some(request) = &mut end
            && ended.is_none()
        {
            match request.as_mut().poll(cx) {
                Poll::Ready(done) => ended = Some(done),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    Ok(Sent {
        answers: answers.into_iter().flatten().collect(),
        end: ended.map(|done: Result<u64, postgres::Error>| done.map(drop)),
        unsent,
    })
}

/// Polls each of `requests` whose answer is not in `answers` yet, keeping
/// the answers that come; ready once every one has answered. Requests
/// side by side: at the first poll, each is queued to `tokio-postgres`
/// in order, before any is written.
pub(super) fn poll_each<F: Future + ?Sized>(
    requests: &mut [Pin<Box<F>>],
    answers: &mut [Option<F::Output>],
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut pending = false;
    for (request, answer) in requests.iter_mut().zip(answers.iter_mut()) {
        if answer.is_none() {
            match request.as_mut().poll(cx) {
                Poll::Ready(done) => *answer = Some(done),
                Poll::Pending => pending = true,
            }
        }
    }
    if pending {
        Poll::Pending
    } else {
        Poll::Ready(())
    }
}

/// The request of one step (not yet polled: nothing is sent).
fn start<'c>(client: &'c Client, step: &'c Piped<'c>, typed: &'c TypedParams<'c>) -> Running<'c> {
    match (step.target, typed, step.rows) {
        (Target::Prepared(statement), _, false) => Box::pin(async move {
            client
                .execute(statement, step.params)
                .await
                .map(Answer::Count)
        }),
        (Target::Prepared(statement), _, true) => {
            Box::pin(async move { client.query(statement, step.params).await.map(Answer::Rows) })
        }
        (Target::Unnamed(sql, _), Ok(typed), false) => {
            Box::pin(async move { client.execute_typed(sql, typed).await.map(Answer::Count) })
        }
        (Target::Unnamed(sql, _), Ok(typed), true) => {
            Box::pin(async move { client.query_typed(sql, typed).await.map(Answer::Rows) })
        }
        (Target::Unnamed(..), Err(count), _) => Box::pin(async move {
            // tokio-postgres' error for a wrong number of parameters,
            // made while the request is encoded (never sent): see
            // `Connection::refuse_parameters`.
            let refused = [(count as &(dyn ToSql + Sync), Type::TEXT)];
            client.execute_typed("", &refused).await.map(Answer::Count)
        }),
    }
}
