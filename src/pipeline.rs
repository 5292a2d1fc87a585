//! [`Pipeline`]: statements queued to run in one round trip, inside a
//! transaction (with its `COMMIT`, or without), and their results.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::statements::{Sql, ToStatement};
use crate::types::ToSql;
use crate::{Row, Statement};

/// Statements queued to run together in one round trip: every statement,
/// and with [`Tx::commit_pipeline`](crate::Tx::commit_pipeline) the
/// transaction's `COMMIT`, leave in one write and are answered in one
/// read. Run it with `commit_pipeline` (the transaction ends, as with
/// `commit`) or [`Tx::run_pipeline`](crate::Tx::run_pipeline) (the
/// transaction goes on); the async handles have the same two.
///
/// ```no_run
/// # fn demo(manager: &pgtx::ManagedConnection) -> pgtx::Result<()> {
/// let tx = manager.lock()?.begin()?;
/// let (from, to, amount) = (1_i32, 2_i32, 10_i64);
/// let mut pipeline = pgtx::Pipeline::new();
/// pipeline.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", &[&amount, &from]);
/// pipeline.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", &[&amount, &to]);
/// let balance = pipeline.query("SELECT balance FROM accounts WHERE id = $1", &[&from]);
/// let (_done, results) = tx.commit_pipeline(&pipeline)?; // one round trip
/// let left: i64 = results.get(balance).map_or(0, |rows| rows[0].get(0));
/// # Ok(())
/// # }
/// ```
///
/// # The error rule
///
/// The statements run as one Sync group of the extended protocol, as
/// libpq's pipeline mode runs them: when statement *i* fails, the server
/// skips every statement after it, and the transaction is aborted.
/// [`Error::PipelineFailed`](crate::Error::PipelineFailed) names *i* (its
/// index in the pipeline and the server's error) and how many were skipped.
/// With `commit_pipeline`, nothing is committed and the connection is
/// left idle; with `run_pipeline`, the transaction can then only roll
/// back, as after any failed statement (its `commit` says so).
///
/// # What it cannot contain
///
/// Statements that end or restart the transaction (`COMMIT`, `BEGIN`, …:
/// [`Error::TransactionControl`](crate::Error::TransactionControl)),
/// statements the server refuses inside a transaction block (`VACUUM`,
/// `CREATE DATABASE`, `CREATE INDEX CONCURRENTLY`, …) and `COPY` to or
/// from the client ([`Error::NotInPipeline`](crate::Error::NotInPipeline))
/// are refused before anything is sent, as the `source` of
/// [`Error::PipelineFailed`](crate::Error::PipelineFailed); run by
/// `run_pipeline`, the transaction is then as it was. Each entry is
/// one statement (the extended protocol runs one per Parse).
///
/// A pipeline holds borrows of its statements and parameters (`'p`), not
/// of any connection: it can be built before the transaction begins, and
/// run on several transactions.
pub struct Pipeline<'p> {
    id: u64,
    pub(crate) entries: Vec<Entry<'p>>,
}

/// One queued statement.
pub(crate) struct Entry<'p> {
    pub(crate) query: Sql<'p>,
    pub(crate) params: Vec<&'p (dyn ToSql + Sync)>,
    /// Its rows are wanted (`query`), or its row count (`execute`).
    pub(crate) rows: bool,
}

impl Default for Pipeline<'_> {
    fn default() -> Self {
        Pipeline::new()
    }
}

impl<'p> Pipeline<'p> {
    /// An empty pipeline.
    pub fn new() -> Pipeline<'p> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Pipeline {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            entries: Vec::new(),
        }
    }

    /// Queues a statement whose number of affected rows is wanted (as
    /// [`Tx::execute`](crate::Tx::execute)); the returned ticket reads it
    /// from the results.
    pub fn execute<T>(&mut self, query: &'p T, params: &[&'p (dyn ToSql + Sync)]) -> Queued<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.push(query.sql(), params, false)
    }

    /// Queues a query whose rows are wanted (as
    /// [`Tx::query`](crate::Tx::query)); the returned ticket reads them
    /// from the results.
    pub fn query<T>(&mut self, query: &'p T, params: &[&'p (dyn ToSql + Sync)]) -> Queued<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.push(query.sql(), params, true)
    }

    /// How many statements are queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push<T>(
        &mut self,
        query: Sql<'p>,
        params: &[&'p (dyn ToSql + Sync)],
        rows: bool,
    ) -> Queued<T> {
        self.entries.push(Entry {
            query,
            params: params.to_vec(),
            rows,
        });
        Queued {
            pipeline: self.id,
            index: self.entries.len() - 1,
            _output: PhantomData,
        }
    }

    /// Results for this pipeline's statements, in order.
    pub(crate) fn results(&self, answers: Vec<Answer>) -> PipelineResults {
        PipelineResults {
            pipeline: self.id,
            answers,
        }
    }
}

impl fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statements: Vec<&str> = self
            .entries
            .iter()
            .map(|entry| match entry.query {
                Sql::Text(sql) => sql,
                Sql::Prepared(_) => "<prepared statement>",
            })
            .collect();
        f.debug_struct("Pipeline")
            .field("statements", &statements)
            .finish_non_exhaustive()
    }
}

/// A statement queued in a [`Pipeline`]: reads its result (`u64` rows
/// affected, or `Vec<Row>`) from the [`PipelineResults`].
pub struct Queued<T> {
    pipeline: u64,
    index: usize,
    _output: PhantomData<fn() -> T>,
}

impl<T> Queued<T> {
    /// Its place in the pipeline (0 for the first statement), as
    /// [`Error::PipelineFailed`](crate::Error::PipelineFailed) names it.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl<T> Clone for Queued<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Queued<T> {}

impl<T> fmt::Debug for Queued<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// What one statement of a pipeline gave back.
#[derive(Debug)]
#[doc(hidden)]
pub enum Answer {
    /// The rows it affected (`execute`).
    Count(u64),
    /// Its rows (`query`).
    Rows(Vec<Row>),
}

/// The results of a pipeline that ran in full, read with the tickets its
/// statements were queued with.
#[derive(Debug)]
pub struct PipelineResults {
    pipeline: u64,
    answers: Vec<Answer>,
}

impl PipelineResults {
    /// The result of `queued`: rows affected for a statement queued with
    /// [`execute`](Pipeline::execute), rows for one queued with
    /// [`query`](Pipeline::query). `None` if `queued` belongs to another
    /// pipeline.
    pub fn get<T: Outcome>(&self, queued: Queued<T>) -> Option<&T> {
        if queued.pipeline != self.pipeline {
            return None;
        }
        T::pick(self.answers.get(queued.index)?)
    }

    /// How many statements ran.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether the pipeline had no statement.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// What a queued statement gives back: `u64` (rows affected) or
/// `Vec<Row>`. This trait is sealed.
pub trait Outcome: sealed::Sealed + Sized {}

impl Outcome for u64 {}
impl Outcome for Vec<Row> {}

mod sealed {
    use super::Answer;
    use crate::Row;

    /// Keeps [`Outcome`](super::Outcome) implemented by this crate only.
    pub trait Sealed {
        #[doc(hidden)]
        fn pick(answer: &Answer) -> Option<&Self>;
    }

    impl Sealed for u64 {
        fn pick(answer: &Answer) -> Option<&u64> {
            match answer {
                Answer::Count(count) => Some(count),
                Answer::Rows(_) => None,
            }
        }
    }

    impl Sealed for Vec<Row> {
        fn pick(answer: &Answer) -> Option<&Vec<Row>> {
            match answer {
                Answer::Rows(rows) => Some(rows),
                Answer::Count(_) => None,
            }
        }
    }
}

impl<'p> Entry<'p> {
    /// The statement's text, when it was given as text.
    pub(crate) fn text(&self) -> Option<&'p str> {
        match self.query {
            Sql::Text(sql) => Some(sql),
            Sql::Prepared(_) => None,
        }
    }

    /// The prepared statement, when it was given as one.
    pub(crate) fn prepared(&self) -> Option<&'p Statement> {
        match self.query {
            Sql::Prepared(statement) => Some(statement),
            Sql::Text(_) => None,
        }
    }
}
