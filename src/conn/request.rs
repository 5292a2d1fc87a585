//! What a request to the server is, as data: so that the session can send
//! it (and send it again, after a stale statement) without a closure, and
//! its future stays `Send`.

use std::future::Future;

use postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

use super::{Connection, Target};
use crate::statements::Params;

/// One request to run on a connection.
pub(crate) trait Request: Sync {
    /// What the request yields.
    type Output: Send;

    /// Sends it on `conn` and reads the answer.
    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<Self::Output, postgres::Error>> + Send + 'c;
}

/// What a statement method does with a statement's answer: one of the
/// four kinds a `postgres` user knows, as the two tokio-postgres calls
/// that make it (on a prepared statement, and on text with its parameter
/// types). Which of the two runs is the session's choice; the choosing is
/// written once, in `Connection::bind`.
pub(crate) trait StatementKind: Copy + Send + Sync + 'static {
    /// What the statement method returns.
    type Output: Send;

    /// Runs `statement` with `params`.
    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Self::Output, postgres::Error>> + Send + 'c;

    /// Runs `sql` on the unnamed statement, each parameter with its type.
    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Self::Output, postgres::Error>> + Send + 'c;

    /// Runs `target` with `params` on `conn` (see `Connection::bind`).
    fn send<'c>(
        self,
        conn: &'c mut Connection,
        target: Target<'c>,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Self::Output, postgres::Error>> + Send + 'c {
        conn.bind(self, target, params)
    }
}

/// `execute`: the number of rows affected.
#[derive(Clone, Copy)]
pub(crate) struct Execute;

/// `query`: every row.
#[derive(Clone, Copy)]
pub(crate) struct Query;

/// `query_one`: exactly one row.
#[derive(Clone, Copy)]
pub(crate) struct QueryOne;

/// `query_opt`: at most one row.
#[derive(Clone, Copy)]
pub(crate) struct QueryOpt;

impl StatementKind for Execute {
    type Output = u64;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        params: Params<'c>,
    ) -> impl Future<Output = Result<u64, postgres::Error>> + Send + 'c {
        client.execute(statement, params)
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<u64, postgres::Error>> + Send + 'c {
        client.execute_typed(sql, params)
    }
}

impl StatementKind for Query {
    type Output = Vec<Row>;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Vec<Row>, postgres::Error>> + Send + 'c {
        client.query(statement, params)
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, postgres::Error>> + Send + 'c {
        client.query_typed(sql, params)
    }
}

impl StatementKind for QueryOne {
    type Output = Row;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Row, postgres::Error>> + Send + 'c {
        client.query_one(statement, params)
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Row, postgres::Error>> + Send + 'c {
        client.query_typed_one(sql, params)
    }
}

impl StatementKind for QueryOpt {
    type Output = Option<Row>;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        params: Params<'c>,
    ) -> impl Future<Output = Result<Option<Row>, postgres::Error>> + Send + 'c {
        client.query_opt(statement, params)
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Option<Row>, postgres::Error>> + Send + 'c {
        client.query_typed_opt(sql, params)
    }
}

/// Statements separated by `;`, as one simple Query.
pub(crate) struct Batch<'a>(pub(crate) &'a str);

impl Request for Batch<'_> {
    type Output = ();

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<(), postgres::Error>> + Send + 'c {
        conn.run(|c| c.batch_execute(self.0))
    }
}

/// Statements separated by `;`, as one simple Query, with their rows (as
/// text) and command tags.
pub(crate) struct Simple<'a>(pub(crate) &'a str);

impl Request for Simple<'_> {
    type Output = Vec<SimpleQueryMessage>;

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, postgres::Error>> + Send + 'c {
        conn.run(|c| c.simple_query(self.0))
    }
}

/// Prepares a statement (Parse and Describe, no Execute).
pub(crate) struct Prepare<'a>(pub(crate) &'a str);

impl Request for Prepare<'_> {
    type Output = Statement;

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<Statement, postgres::Error>> + Send + 'c {
        conn.run(|c| c.prepare(self.0))
    }
}

/// A statement kind run on a target chosen already.
pub(crate) struct Bound<'a, K> {
    pub(crate) kind: K,
    pub(crate) target: Target<'a>,
    pub(crate) params: Params<'a>,
}

impl<K: StatementKind> Request for Bound<'_, K> {
    type Output = K::Output;

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<K::Output, postgres::Error>> + Send + 'c {
        self.kind.send(conn, self.target, self.params)
    }
}
