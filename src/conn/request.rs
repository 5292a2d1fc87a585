//! What a request to the server is, as data: so that the session can send
//! it (and send it again, after a stale statement) without a closure, and
//! its future stays `Send`.

use std::future::Future;

use bytes::Bytes;
use postgres::types::{ToSql, Type};
use tokio_postgres::{
    Client, CopyInSink, CopyOutStream, Row, RowStream, SimpleQueryMessage, Statement,
};

use super::{Connection, Target};
use crate::statements::Params;

/// One request to run on a connection.
pub(crate) trait Request: Sync {
    /// What the request yields.
    type Output: Send;

    /// What the request leaves open on the connection when it succeeds.
    const OPENS: Opens = Opens::Nothing;

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

    /// What the statement leaves open on the connection when it succeeds.
    const OPENS: Opens = Opens::Nothing;

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

/// What a request leaves open on the connection when it succeeds: a
/// stream the caller goes on reading or writing (see `streaming.rs`). The
/// request then returns without waiting for the server's ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opens {
    /// Nothing: the request is over when it returns.
    Nothing,
    /// Rows, read one by one.
    Rows,
    /// COPY data, read or written (the wire tap lets the copy mode be).
    Copy,
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

/// `query_raw`: the rows as a stream, read as the caller asks for them.
#[derive(Clone, Copy)]
pub(crate) struct QueryRaw;

/// `copy_in`: a sink for `COPY … FROM STDIN` data.
#[derive(Clone, Copy)]
pub(crate) struct CopyIn;

/// `copy_out`: a stream of `COPY … TO STDOUT` data.
#[derive(Clone, Copy)]
pub(crate) struct CopyOut;

impl StatementKind for QueryRaw {
    type Output = RowStream;
    const OPENS: Opens = Opens::Rows;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        params: Params<'c>,
    ) -> impl Future<Output = Result<RowStream, postgres::Error>> + Send + 'c {
        client.query_raw(statement, params.iter().copied())
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<RowStream, postgres::Error>> + Send + 'c {
        client.query_typed_raw(sql, params.iter().map(|(value, ty)| (*value, ty.clone())))
    }
}

// COPY takes no parameters (the copy methods pass none), and tokio-postgres
// runs it only as a prepared statement: text is prepared by tokio-postgres
// under a name, run, and closed.
impl StatementKind for CopyIn {
    type Output = CopyInSink<Bytes>;
    const OPENS: Opens = Opens::Copy;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        _params: Params<'c>,
    ) -> impl Future<Output = Result<CopyInSink<Bytes>, postgres::Error>> + Send + 'c {
        client.copy_in(statement)
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        _params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<CopyInSink<Bytes>, postgres::Error>> + Send + 'c {
        client.copy_in(sql)
    }
}

impl StatementKind for CopyOut {
    type Output = CopyOutStream;
    const OPENS: Opens = Opens::Copy;

    fn prepared<'c>(
        self,
        client: &'c Client,
        statement: &'c Statement,
        _params: Params<'c>,
    ) -> impl Future<Output = Result<CopyOutStream, postgres::Error>> + Send + 'c {
        client.copy_out(statement)
    }

    fn typed<'c>(
        self,
        client: &'c Client,
        sql: &'c str,
        _params: &'c [(&'c (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<CopyOutStream, postgres::Error>> + Send + 'c {
        client.copy_out(sql)
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

/// The statement prepared from some text on this connection (prepared
/// and cached the first time: see `Connection::prepare_cached`).
pub(crate) struct PrepareCached<'a>(pub(crate) &'a str);

impl Request for PrepareCached<'_> {
    type Output = Statement;

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<Statement, postgres::Error>> + Send + 'c {
        conn.prepare_cached(self.0)
    }
}

/// Several texts prepared and cached in one round trip (see
/// `Connection::prepare_all`).
pub(crate) struct PrepareAll<'a>(pub(crate) &'a [&'a str]);

impl Request for PrepareAll<'_> {
    type Output = ();

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<Self::Output, postgres::Error>> + Send + 'c {
        conn.prepare_all(self.0)
    }
}

/// The parameter types of some text, for the unnamed statement (looked up
/// once per connection: see `Connection::describe`).
pub(crate) struct Describe<'a>(pub(crate) &'a str);

impl Request for Describe<'_> {
    type Output = std::sync::Arc<[Type]>;

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<std::sync::Arc<[Type]>, postgres::Error>> + Send + 'c {
        conn.describe(self.0)
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
    const OPENS: Opens = K::OPENS;

    fn send<'c>(
        &'c self,
        conn: &'c mut Connection,
    ) -> impl Future<Output = Result<K::Output, postgres::Error>> + Send + 'c {
        self.kind.send(conn, self.target, self.params)
    }
}
