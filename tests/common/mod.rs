//! Shared helpers for integration tests: a real PostgreSQL server
//! ([`server::TestServer`]) and a TCP fault proxy ([`proxy::Proxy`]).
//!
//! Use with `mod common;` and `common::server::TestServer::shared()`.
#![allow(dead_code)]

pub mod aio;
pub mod fixtures;
pub mod logger;
pub mod patroni;
pub mod pgbouncer;
pub mod proxy;
pub mod server;
pub mod write_outcome;

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `timeout` passes; whether it
/// came to hold. For what the server does after the client has moved on
/// (a session ending, a rollback on disconnect).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs this test binary again, only the test `name`, in a cleared
/// environment holding just `env`: for a test that needs a process of its
/// own (libpq-style variables, a logger, `HOME`) without disturbing the
/// tests running beside it. The child's output is returned whole.
pub fn rerun_test<K, V>(name: &str, env: impl IntoIterator<Item = (K, V)>) -> std::process::Output
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let exe = std::env::current_exe().expect("the test binary knows its path");
    std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the test binary again")
}

/// Starts this test binary again, only the test `name`, in a cleared
/// environment holding just `env`, without waiting for it: for tests that
/// run several processes at once. Its output is piped.
pub fn spawn_test<K, V>(name: &str, env: impl IntoIterator<Item = (K, V)>) -> std::process::Child
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let exe = std::env::current_exe().expect("the test binary knows its path");
    std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the test binary again")
}

/// Asks for a connection with `lock` on this thread until a hold this
/// thread forgot is taken over: until it has run nothing for
/// `abandon_after`, asking again is refused as re-entrant. Fails the test
/// if it is not taken over within 20 s, or on any other error.
pub fn take_over<G>(mut lock: impl FnMut() -> pgtx::Result<G>) -> G {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match lock() {
            Ok(guard) => return guard,
            Err(pgtx::Error::Reentrant) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the forgotten hold was not taken over: {e:?}"),
        }
    }
}
