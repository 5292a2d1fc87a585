//! The statements an async holder runs: the one implementation behind the
//! statement methods of [`Guard`](super::Guard) and [`Tx`](super::Tx).

use postgres::SimpleQueryMessage;
use postgres::types::{ToSql, Type};

use crate::aio::session::Inner;
use crate::conn::Target;
use crate::conn::request::{Batch, Bound, Execute, Prepare, Query, Simple, StatementKind};
use crate::conn::session::{RequestShape, Retries, SessionCore, Step};
use crate::error::{Error, Result};
use crate::machine::control;
use crate::machine::fallback::Cause;
use crate::pipeline::{Answer, Pipeline};
use crate::statements::{Naming, Sql, ToStatement};
use crate::{Portal, Row, Statement};

/// Where a holder's statements run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A guard: each statement commits on its own.
    Autocommit,
    /// A transaction (`depth` 0) or the savepoint number `depth` inside
    /// it: SQL that would end or restart it is refused.
    Transaction { depth: u32 },
}

/// A handle's session and the scope its statements run in, apart (what
/// the generic handle traits' methods run on).
#[doc(hidden)]
pub struct Parts<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) core: &'a mut SessionCore,
    pub(crate) scope: Scope,
}

impl<'a> Parts<'a> {
    pub(crate) fn new(inner: &'a Inner, core: &'a mut SessionCore, scope: Scope) -> Self {
        Parts { inner, core, scope }
    }
}

/// Tidies what an earlier use left (an interrupted request first), rolls
/// back savepoints deeper than the holder's that were forgotten, and
/// refuses transaction control inside a transaction.
pub(crate) async fn prepare(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    sql: Option<&str>,
) -> Result<()> {
    // Marked active first: a takeover after this finds it active, and one
    // before it is seen here. A holder taken over runs nothing more.
    inner.shared.cancel.touch();
    inner.check_current(core)?;
    inner.tidy(core).await;
    let Scope::Transaction { depth } = scope else {
        return Ok(());
    };
    if !core.in_transaction() {
        // A `Tx` whose session no longer knows its transaction (a future
        // dropped between a decision and its request left it behind):
        // nothing more of it may run, or it would run on its own.
        return Err(Error::TransactionAborted(None));
    }
    if core.restore_depth(&inner.shared, depth).await? {
        inner.report_unfinished(Cause::SavepointForgotten);
    }
    match sql {
        Some(sql) => core.refuse_control(sql),
        None => Ok(()),
    }
}

/// Before a request of `shape`: a transaction's first statement gets a
/// live connection (one that died while the transaction waited is
/// replaced: nothing of it reached the server).
async fn ensure_for(inner: &Inner, core: &mut SessionCore, shape: RequestShape) -> Result<()> {
    if core.needs_connection_for(shape)
        && let Err(e) = inner.ensure_open(core).await
    {
        core.lose_pending(&inner.shared);
        return Err(e);
    }
    Ok(())
}

/// Runs `query` (text or a prepared statement) as a statement of `kind`.
pub(crate) async fn statement<Q, K>(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    query: &Q,
    kind: K,
    params: &[&(dyn ToSql + Sync)],
) -> Result<K::Output>
where
    Q: ?Sized + ToStatement,
    K: StatementKind,
{
    let sql = match query.sql() {
        Sql::Text(sql) => Some(sql),
        Sql::Prepared(_) => None,
    };
    prepare(inner, core, scope, sql).await?;
    let mut retries = Retries::new();
    loop {
        ensure_for(inner, core, RequestShape::Bind).await?;
        let step = core
            .cached_statement(&inner.shared, query, kind, params, &mut retries)
            .await;
        if let Some(result) = after_step(inner, core, step).await {
            return result;
        }
    }
}

/// Starts `query` and keeps its rows as a stream on the connection, read
/// with the core's `next_rows` (see [`RowStream`](super::RowStream)).
pub(crate) async fn query_raw<Q>(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    query: &Q,
    params: &[&(dyn ToSql + Sync)],
) -> Result<()>
where
    Q: ?Sized + ToStatement,
{
    let sql = match query.sql() {
        Sql::Text(sql) => Some(sql),
        Sql::Prepared(_) => None,
    };
    prepare(inner, core, scope, sql).await?;
    let mut retries = Retries::new();
    loop {
        ensure_for(inner, core, RequestShape::Bind).await?;
        let step = core
            .query_raw(&inner.shared, query, params, &mut retries)
            .await;
        if let Some(result) = after_step(inner, core, step).await {
            return result;
        }
    }
}

/// Prepares `query` as a named statement on the connection, for
/// repeated use: refused before anything is sent when names are off
/// (`statement_cache(false)`), for transaction control (it could later run
/// inside a transaction) and for statements whose rows a prepared
/// description could decode wrongly.
pub(crate) async fn prepare_statement(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    query: &str,
) -> Result<Statement> {
    if core.naming() == Naming::Unnamed {
        return Err(Error::PreparedStatementsOff);
    }
    prepare(inner, core, scope, None).await?;
    core.refuse_control(query)?;
    if let Some(command) = control::shape_decided_at_run_time(query) {
        return Err(Error::ShapeDecidedAtRunTime(command));
    }
    if control::copy_direction(query).is_some() {
        return Err(Error::CopyNotPreparable);
    }
    ensure_for(inner, core, RequestShape::Parse).await?;
    core.statement(
        &inner.shared,
        RequestShape::Parse,
        Some(query),
        &Prepare(query),
    )
    .await
}

/// Binds `query` with `params` to a new portal: a cursor, declared inside
/// the transaction (`DECLARE … NO SCROLL CURSOR FOR query`), whose rows
/// [`query_portal`] fetches.
pub(crate) async fn bind(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Portal> {
    prepare(inner, core, scope, Some(query)).await?;
    let (transaction, number) = core.next_portal();
    let portal = Portal::new(transaction, number);
    let declare = portal.declare_sql(query);
    statement(inner, core, scope, declare.as_str(), Execute, params).await?;
    Ok(portal)
}

/// The next `max_rows` rows of `portal` (all that are left when
/// `max_rows` is 0 or less).
pub(crate) async fn query_portal(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    portal: &Portal,
    max_rows: i32,
) -> Result<Vec<Row>> {
    inner.check_current(core)?;
    inner.tidy(core).await;
    if core.transaction_number() != portal.transaction() || !core.in_transaction() {
        return Err(Error::PortalClosed);
    }
    let fetch = portal.fetch_sql(max_rows);
    statement(inner, core, scope, fetch.as_str(), Query, &[]).await
}

/// Runs `query` on the unnamed statement with the parameter types given
/// (Parse, Bind, Describe, Execute in one round trip; nothing named is
/// left behind, so it suits transaction poolers too).
pub(crate) async fn typed<K: StatementKind>(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    query: &str,
    kind: K,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<K::Output> {
    let (values, types): (Vec<&(dyn ToSql + Sync)>, Vec<Type>) =
        params.iter().map(|(v, t)| (*v, t.clone())).unzip();
    prepare(inner, core, scope, Some(query)).await?;
    ensure_for(inner, core, RequestShape::Bind).await?;
    let bound = Bound {
        kind,
        target: Target::Unnamed(query, &types),
        params: &values,
    };
    core.statement(&inner.shared, RequestShape::Bind, Some(query), &bound)
        .await
}

/// Starts `COPY … FROM STDIN` (`copy_in`) or `COPY … TO STDOUT` and keeps
/// its data as a stream on the connection (see `SessionCore::copy`).
pub(crate) async fn copy<Q>(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    query: &Q,
    copy_in: bool,
) -> Result<()>
where
    Q: ?Sized + ToStatement,
{
    let sql = match query.sql() {
        Sql::Text(sql) => Some(sql),
        Sql::Prepared(_) => None,
    };
    if let Some(sql) = sql
        && control::copy_direction(sql) != Some(copy_in)
    {
        return Err(Error::not_a_copy(copy_in, sql));
    }
    prepare(inner, core, scope, sql).await?;
    let mut retries = Retries::new();
    loop {
        ensure_for(inner, core, RequestShape::Bind).await?;
        let step = core.copy(&inner.shared, query, copy_in, &mut retries).await;
        if let Some(result) = after_step(inner, core, step).await {
            return result;
        }
    }
}

/// After a request that may have found its connection gone before
/// anything of it was sent (`Step::Reconnect`): `None` once a new one is
/// open, to run the request again. (A loop over an async closure would
/// cost the futures their `Send`: its higher-ranked borrows are beyond
/// what the compiler proves `Send` today.)
async fn after_step<T>(inner: &Inner, core: &mut SessionCore, step: Step<T>) -> Option<Result<T>> {
    match step {
        Step::Done(result) => Some(result),
        Step::Reconnect => match inner.ensure_open(core).await {
            Ok(()) => None,
            Err(e) => {
                if core.needs_connection_for(RequestShape::Bind) {
                    core.lose_pending(&inner.shared);
                }
                Some(Err(e))
            }
        },
    }
}

/// Runs `pipeline` in one round trip inside the transaction (with its
/// `COMMIT` when `commit`): see `SessionCore::pipeline`.
pub(crate) async fn pipeline(
    inner: &Inner,
    core: &mut SessionCore,
    pipeline: &Pipeline<'_>,
    commit: bool,
) -> Result<Vec<Answer>> {
    prepare(inner, core, Scope::Transaction { depth: 0 }, None).await?;
    ensure_for(inner, core, RequestShape::Bind).await?;
    core.pipeline(&inner.shared, pipeline, commit).await
}

/// Statements separated by `;`, as one simple Query.
pub(crate) async fn batch_execute(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    sql: &str,
) -> Result<()> {
    prepare(inner, core, scope, Some(sql)).await?;
    ensure_for(inner, core, RequestShape::Query).await?;
    core.statement(&inner.shared, RequestShape::Query, Some(sql), &Batch(sql))
        .await
}

/// Statements separated by `;`, as one simple Query, with their rows (as
/// text) and command tags.
pub(crate) async fn simple_query(
    inner: &Inner,
    core: &mut SessionCore,
    scope: Scope,
    sql: &str,
) -> Result<Vec<SimpleQueryMessage>> {
    prepare(inner, core, scope, Some(sql)).await?;
    ensure_for(inner, core, RequestShape::Query).await?;
    core.statement(&inner.shared, RequestShape::Query, Some(sql), &Simple(sql))
        .await
}
