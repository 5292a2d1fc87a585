//! Statements for transaction poolers ([`Naming::Unnamed`]): the helpers
//! that describe SQL text without leaving a prepared statement behind,
//! and bind parameters to the unnamed statement with their types.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use postgres::types::{ToSql, Type};
use tokio_postgres::Client;

#[cfg(doc)]
use crate::statements::Naming;
use crate::statements::Params;

/// The parameter types of `sql`, described on the server (see
/// `Connection::describe`, which says why; `in_block`: a transaction block is
/// open).
pub(crate) async fn describe(
    client: &Client,
    sql: &str,
    in_block: bool,
) -> Result<Vec<Type>, postgres::Error> {
    if in_block {
        // Dropped here: its Close goes out before any later request.
        return Ok(client.prepare(sql).await?.params().to_vec());
    }
    let (begun, described) = both(client.batch_execute("BEGIN"), async {
        // Dropped at the end of this block, before ROLLBACK is sent.
        Ok::<_, postgres::Error>(client.prepare(sql).await?.params().to_vec())
    })
    .await;
    let rolled_back = client.batch_execute("ROLLBACK").await;
    begun?;
    rolled_back?;
    described
}

/// Runs two futures side by side (so that their messages leave in one
/// write) until both are done.
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut done_a, mut done_b) = (None, None);
    poll_fn(|cx| {
        if done_a.is_none()
            && let Poll::Ready(out) = a.as_mut().poll(cx)
        {
            done_a = Some(out);
        }
        if done_b.is_none()
            && let Poll::Ready(out) = b.as_mut().poll(cx)
        {
            done_b = Some(out);
        }
        match (done_a.take(), done_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (done_a, done_b) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

/// Each parameter with its type, for the unnamed statement.
///
/// # Errors
///
/// [`ParameterCount`] if there are not as many parameters as types.
pub(crate) fn typed<'p>(
    params: Params<'p>,
    types: &[Type],
) -> Result<Vec<(&'p (dyn ToSql + Sync), Type)>, ParameterCount> {
    if params.len() != types.len() {
        return Err(ParameterCount {
            expected: types.len(),
            given: params.len(),
        });
    }
    Ok(params.iter().copied().zip(types.iter().cloned()).collect())
}

/// A statement got another number of parameters than it has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParameterCount {
    expected: usize,
    given: usize,
}

impl std::fmt::Display for ParameterCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} parameters but got {}",
            self.expected, self.given
        )
    }
}

impl std::error::Error for ParameterCount {}

impl ToSql for ParameterCount {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Err(Box::new(*self))
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_paired_with_their_types_or_refused_when_the_counts_differ() {
        let (one, two) = (1_i32, "two");
        let params: Params<'_> = &[&one, &two];
        let typed = typed(params, &[Type::INT4, Type::TEXT]).expect("as many as types");
        let types: Vec<Type> = typed.into_iter().map(|(_, t)| t).collect();
        assert_eq!(types, [Type::INT4, Type::TEXT]);

        let err = super::typed(params, &[Type::INT4]).expect_err("one too many");
        assert_eq!(err.to_string(), "expected 1 parameters but got 2");
        let err = super::typed(&[], &[Type::INT4]).expect_err("one short");
        assert_eq!(err.to_string(), "expected 1 parameters but got 0");
    }

    #[test]
    fn a_parameter_count_never_encodes() {
        let count = ParameterCount {
            expected: 2,
            given: 1,
        };
        let mut out = bytes::BytesMut::new();
        match count.to_sql_checked(&Type::TEXT, &mut out) {
            Err(e) => assert_eq!(e.to_string(), "expected 2 parameters but got 1"),
            Ok(_) => panic!("a ParameterCount was encoded"),
        }
        assert!(out.is_empty());
    }
}
