//! The test server, as the integration tests, examples and benchmarks use
//! it (they include this file with `#[path = ...] mod server;`): pgtx's
//! own [`pgtx::testing::TestServer`], with the harness's habit of failing
//! the test at once (a panic with the reason) where the library returns
//! an error, and helpers that look at error chains.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::sync::OnceLock;

/// A test server: [`pgtx::testing::TestServer`], whose setup and fault
/// methods panic with the reason instead of returning it.
pub enum TestServer {
    Shared(&'static pgtx::testing::TestServer),
    Own(Box<pgtx::testing::TestServer>),
}

impl Deref for TestServer {
    type Target = pgtx::testing::TestServer;

    fn deref(&self) -> &pgtx::testing::TestServer {
        match self {
            TestServer::Shared(server) => server,
            TestServer::Own(server) => server,
        }
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// The harness's way of failing: the test stops here, with the reason.
fn or_fail<T>(result: Result<T, pgtx::testing::TestingError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

impl TestServer {
    /// The per-process shared server (see
    /// [`pgtx::testing::TestServer::shared`]).
    pub fn shared() -> &'static TestServer {
        static SHARED: OnceLock<TestServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            TestServer::Shared(
                pgtx::testing::TestServer::shared()
                    .unwrap_or_else(|e| panic!("no test PostgreSQL server: {e}")),
            )
        })
    }

    /// A new private cluster of the test's own.
    pub fn start_private() -> TestServer {
        TestServer::Own(Box::new(or_fail(pgtx::testing::TestServer::start())))
    }

    /// A new private cluster with `settings`.
    pub fn start_private_with(settings: &[(&str, &str)]) -> TestServer {
        TestServer::Own(Box::new(or_fail(pgtx::testing::TestServer::start_with(
            settings,
        ))))
    }

    /// New private clusters, one on each of `hosts`, all on one port.
    pub fn start_private_same_port(
        hosts: &[Ipv4Addr],
        settings: &[(&str, &str)],
    ) -> Vec<TestServer> {
        or_fail(pgtx::testing::TestServer::start_on_one_port(
            hosts, settings,
        ))
        .into_iter()
        .map(|server| TestServer::Own(Box::new(server)))
        .collect()
    }

    /// A new private cluster that stays a hot standby.
    pub fn start_private_standby() -> TestServer {
        TestServer::Own(Box::new(
            or_fail(pgtx::testing::TestServer::start_standby()),
        ))
    }

    /// A new database of the test's own; its DSN.
    pub fn fresh_database(&self, prefix: &str) -> String {
        or_fail((**self).fresh_database(prefix))
    }

    /// A plain client on the default database.
    pub fn admin(&self) -> postgres::Client {
        or_fail((**self).admin())
    }

    /// A plain client connected with `dsn`.
    pub fn admin_on(&self, dsn: &str) -> postgres::Client {
        or_fail((**self).admin_on(dsn))
    }

    /// Terminates the other sessions of database `dbname`; how many.
    pub fn terminate_backends(&self, dbname: &str) -> usize {
        or_fail((**self).terminate_backends(dbname))
    }

    /// `pg_ctl restart -m immediate`.
    pub fn restart_immediate(&self) {
        or_fail((**self).restart_immediate());
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        or_fail((**self).stop());
    }

    /// Starts it again after `stop`.
    pub fn start(&self) {
        or_fail((**self).start_again());
    }

    /// `pg_ctl stop -m immediate`: as a crash.
    pub fn stop_immediate(&self) {
        or_fail((**self).stop_immediate());
    }

    /// A streaming standby of this private cluster.
    pub fn start_replica(&self) -> TestServer {
        TestServer::Own(Box::new(or_fail((**self).start_replica())))
    }

    /// `pg_ctl promote -w`.
    pub fn promote(&self) {
        or_fail((**self).promote());
    }

    /// Waits until `replica` has replayed everything written here so far.
    pub fn wait_for_replay(&self, replica: &TestServer) {
        or_fail((**self).wait_for_replay(replica));
    }
}

/// An error with its sources (`postgres::Error`'s own text is often just
/// "db error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    chain_parts(e).join(": ")
}

/// An error's message, then each `source()`'s, in order.
pub fn chain_parts(e: &dyn std::error::Error) -> Vec<String> {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts
}

/// Asserts that `e` says each thing once (Rust's convention: an error
/// prints its source in its message or returns it from `source()`, not
/// both): no part of its chain repeats what the parts before it said, a
/// trailing parenthesised note such as std's " (os error 111)" aside.
/// Returns the chain joined by ": ", as [`error_chain`] renders it.
pub fn assert_says_each_thing_once(e: &dyn std::error::Error) -> String {
    let parts = chain_parts(e);
    for (n, part) in parts.iter().enumerate().skip(1) {
        let before = parts[..n].join(": ");
        let said = match part.rfind(" (") {
            Some(at) if part.ends_with(')') => &part[..at],
            _ => part.as_str(),
        };
        assert!(
            !said.is_empty() && !before.contains(said),
            "part {n} of the chain repeats what came before it:\n  before: {before:?}\n  part:   {part:?}"
        );
    }
    parts.join(": ")
}
