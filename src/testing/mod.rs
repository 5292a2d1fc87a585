//! A real PostgreSQL server for your own tests, and a transaction that
//! always rolls back at the end of a test (feature `testing`).
//!
//! This is the harness pgtx's own tests and examples run on:
//!
//! - [`TestServer::shared`] gives one server per process: the one named by
//!   `DATABASE_URL` or any of `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
//!   `PGPASSWORD` if set, otherwise a private throwaway cluster made with
//!   the system's `initdb` in a fresh temporary directory and started on a
//!   free loopback port;
//! - [`TestServer::start`] always starts a new private cluster (for a test
//!   that stops or restarts its server), stopped and removed when dropped;
//! - [`TestServer::fresh_database`] gives each test a database of its own,
//!   so tests run in parallel without seeing each other's data;
//! - [`rolled_back`] runs a test's work in a transaction that is rolled
//!   back whatever happens, the pattern of Django's `TestCase` and diesel's
//!   `begin_test_transaction`.
//!
//! Private clusters are quick and disposable (`fsync=off`, trust
//! authentication on loopback only). Because statics never drop and a test
//! process may panic or abort, a small detached watchdog also stops and
//! removes a private cluster once its process is gone. When the process
//! runs as root (PostgreSQL refuses to), the cluster belongs to the OS user
//! `postgres` and its programs run through `runuser -u postgres --`.
//!
//! It needs the PostgreSQL server binaries (`initdb`, `pg_ctl`,
//! `postgres`: Debian's `postgresql` package), found in `PATH` or in
//! `/usr/lib/postgresql/*/bin`, newest first.
//!
//! # Examples
//!
//! ```no_run
//! use pgtx::testing::{TestServer, rolled_back};
//! use pgtx::{GenericClient, ManagedConnection};
//!
//! fn add_item(db: &mut impl GenericClient, id: i32) -> pgtx::Result<u64> {
//!     db.execute("INSERT INTO items VALUES ($1)", &[&id])
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = TestServer::shared()?;
//! let manager = ManagedConnection::new(&server.fresh_database("items_test")?)?;
//! manager.lock()?.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")?;
//! let seen: i64 = rolled_back(&manager, |tx| {
//!     add_item(tx, 1)?;
//!     tx.query_one("SELECT count(*) FROM items", &[]).map(|row| row.get(0))
//! })?;
//! assert_eq!(seen, 1);
//! // Rolled back: the next test starts from an empty table.
//! let left: i64 = manager.lock()?.query_one("SELECT count(*) FROM items", &[])?.get(0);
//! assert_eq!(left, 0);
//! # Ok(())
//! # }
//! ```

mod cluster;
mod env;

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use self::cluster::{Private, Role, START_ATTEMPTS, free_port, next_id, try_start_private_as};
use self::env::quote;
use crate::error::chain as error_chain;
use crate::{ConnectionSource, Error, Open, Tx};

/// Why a test server could not be started or used: the failing step, with
/// what the PostgreSQL programs said (never a password).
#[derive(Debug, Clone)]
pub struct TestingError(String);

impl fmt::Display for TestingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestingError {}

impl From<String> for TestingError {
    fn from(message: String) -> Self {
        TestingError(message)
    }
}

/// A PostgreSQL server for tests: a private throwaway cluster, or an
/// existing server named by `DATABASE_URL` / `PG*` variables.
///
/// A private cluster is stopped (`pg_ctl stop -m immediate`) and its
/// directory removed when the `TestServer` is dropped, or by its watchdog
/// when the process ends without dropping it.
pub struct TestServer {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    kind: Kind,
}

enum Kind {
    External { source: &'static str },
    Private(Private),
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.write_str(&self.describe())
    }
}

impl TestServer {
    /// The process's shared server, started on first use: the server named
    /// by `DATABASE_URL` / `PG*` variables if any is set, otherwise a
    /// private cluster removed when the process exits (by its watchdog,
    /// even after a panic or an abort).
    ///
    /// # Errors
    ///
    /// The reason no server is available: no server binaries, `initdb` or
    /// `pg_ctl` failing, a malformed `DATABASE_URL` or `PGPORT`. The same
    /// error every time (the first attempt is the only one).
    pub fn shared() -> Result<&'static TestServer, TestingError> {
        static SHARED: OnceLock<Result<TestServer, String>> = OnceLock::new();
        let server = SHARED.get_or_init(|| match env::external_from_env() {
            Some(server) => server,
            None => try_start_private_as(&[], Role::Primary, None),
        });
        server.as_ref().map_err(|e| TestingError(e.clone()))
    }

    /// Starts a new private cluster, even when `DATABASE_URL` is set (for
    /// a test that stops, restarts or kills its server). It is stopped and
    /// removed on drop.
    ///
    /// # Errors
    ///
    /// No server binaries found, or `initdb` or `pg_ctl start` failed
    /// (with the end of the server's log).
    pub fn start() -> Result<TestServer, TestingError> {
        TestServer::start_with(&[])
    }

    /// [`start`](Self::start) with server settings (`-c name=value`, after
    /// and so overriding the defaults; e.g. `("listen_addresses",
    /// "127.0.0.1,::1")`). They are kept across
    /// [`restart_immediate`](Self::restart_immediate) and
    /// [`start_again`](Self::start_again).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<TestServer, TestingError> {
        try_start_private_as(settings, Role::Primary, None)
            .map_err(|e| TestingError(format!("cannot start a private PostgreSQL cluster: {e}")))
    }

    /// Starts new private clusters, one listening on each of `hosts`
    /// (loopback addresses such as 127.0.0.1 and 127.0.0.2: Linux answers
    /// on all of 127.0.0.0/8), all on the same port, as servers on
    /// different hosts are (5432 everywhere). Each has its own `initdb`,
    /// so its own `system_identifier`. `settings` as for
    /// [`start_with`](Self::start_with).
    ///
    /// # Errors
    ///
    /// No port free on every host was found, or a cluster failed to start.
    pub fn start_on_one_port(
        hosts: &[Ipv4Addr],
        settings: &[(&str, &str)],
    ) -> Result<Vec<TestServer>, TestingError> {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            if !hosts
                .iter()
                .all(|host| TcpListener::bind((*host, port)).is_ok())
            {
                continue;
            }
            let started: Result<Vec<TestServer>, String> = hosts
                .iter()
                .map(|host| try_start_private_as(settings, Role::Primary, Some((*host, port))))
                .collect();
            match started {
                Ok(servers) => return Ok(servers),
                Err(e) => errors.push(format!("port {port}: {e}")),
            }
        }
        Err(TestingError(format!(
            "cannot start private clusters on {hosts:?} on one port:\n{}",
            errors.join("\n")
        )))
    }

    /// Starts a new private cluster as a hot standby with no primary: it
    /// stays in recovery for good, accepts read-only sessions, and refuses
    /// writes ("cannot execute … in a read-only transaction"). Returns once
    /// a connection sees `pg_is_in_recovery()`. Stopped and removed like
    /// [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), or the standby does not accept
    /// connections in recovery within 60 s.
    pub fn start_standby() -> Result<TestServer, TestingError> {
        let server = try_start_private_as(&[], Role::Standby, None)
            .map_err(|e| TestingError(format!("cannot start a private standby cluster: {e}")))?;
        server.wait_until_in_recovery()?;
        Ok(server)
    }

    /// Starts a streaming standby of this private cluster: a base backup
    /// of it (`pg_basebackup -R`), started on a port of its own on
    /// 127.0.0.1, that follows every write of this one; a hot standby
    /// (read-only sessions) until [`promote`](Self::promote)d. Returns once
    /// it streams. Stopped and removed on drop like any private cluster.
    ///
    /// To make this server's commits wait for the standby (no write
    /// acknowledged before a failover is lost with it), start this one
    /// with `("synchronous_standby_names", "*")`.
    ///
    /// # Errors
    ///
    /// This is no private cluster, `pg_basebackup` or `pg_ctl start`
    /// failed, or the standby did not stream within 60 s.
    pub fn start_replica(&self) -> Result<TestServer, TestingError> {
        let private = self.private_for("start_replica")?;
        let settings: Vec<(&str, &str)> = private
            .extra
            .iter()
            .filter(|(name, _)| name != "synchronous_standby_names")
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let replica =
            try_start_private_as(&settings, Role::ReplicaOf(private.listen, self.port), None)
                .map_err(|e| TestingError(format!("cannot start a streaming standby: {e}")))?;
        replica.wait_until_in_recovery()?;
        replica.wait_until_streaming()?;
        Ok(replica)
    }

    /// Waits until `replica` has replayed every write this server has
    /// made so far (its WAL position now).
    ///
    /// # Errors
    ///
    /// Either server cannot be queried, or `replica` has not caught up
    /// within 60 s.
    pub fn wait_for_replay(&self, replica: &TestServer) -> Result<(), TestingError> {
        let lsn: String = self
            .admin()?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .map_err(|e| {
                TestingError(format!("cannot read the WAL position: {}", error_chain(&e)))
            })?
            .get(0);
        let mut client = replica.admin()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let replayed: bool = client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .map_err(|e| {
                    TestingError(format!(
                        "cannot read the replay position: {}",
                        error_chain(&e)
                    ))
                })?
                .get(0);
            if replayed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestingError(format!(
                    "the standby has not replayed up to {lsn} in 60 s ({})",
                    replica.describe()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until this standby's WAL receiver streams from its primary.
    fn wait_until_streaming(&self) -> Result<(), TestingError> {
        let mut client = self.admin()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let streaming = client
                .query_opt(
                    "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                    &[],
                )
                .map_err(|e| TestingError(format!("cannot ask the standby: {}", error_chain(&e))))?
                .is_some();
            if streaming {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestingError(format!(
                    "the standby does not stream within 60 s ({}); server.log:\n{}",
                    self.describe(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a connection succeeds and reports `pg_is_in_recovery()`.
    fn wait_until_in_recovery(&self) -> Result<(), TestingError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = match postgres::Client::connect(&self.dsn(), postgres::NoTls) {
                Ok(mut client) => match client.query_one("SELECT pg_is_in_recovery()", &[]) {
                    Ok(row) if row.get::<_, bool>(0) => return Ok(()),
                    Ok(_) => {
                        return Err(TestingError(format!(
                            "the standby cluster is not in recovery ({}); server.log:\n{}",
                            self.describe(),
                            self.log()
                        )));
                    }
                    Err(e) => error_chain(&e),
                },
                Err(e) => error_chain(&e),
            };
            if Instant::now() >= deadline {
                return Err(TestingError(format!(
                    "the standby cluster accepts no connections ({}): {last}; server.log:\n{}",
                    self.describe(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether this is a private cluster (not an external server).
    pub fn is_private(&self) -> bool {
        matches!(self.kind, Kind::Private(_))
    }

    /// A key=value connection string for the default database, over TCP
    /// (`host=127.0.0.1 port=N user=postgres dbname=postgres` for a
    /// private cluster). It holds the password of an external server that
    /// has one: keep it out of logs.
    pub fn dsn(&self) -> String {
        self.dsn_for(&self.dbname)
    }

    /// A key=value connection string for database `dbname` on this server.
    pub fn dsn_for(&self, dbname: &str) -> String {
        self.build_dsn(&self.host, self.port, dbname)
    }

    /// A key=value connection string for the default database, connecting
    /// to `addr` instead (a fault-injecting proxy in front of this server).
    pub fn dsn_via(&self, addr: SocketAddr) -> String {
        self.build_dsn(&addr.ip().to_string(), addr.port(), &self.dbname)
    }

    fn build_dsn(&self, host: &str, port: u16, dbname: &str) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "host={} port={} user={} dbname={}",
            quote(host),
            port,
            quote(&self.user),
            quote(dbname)
        );
        if let Some(password) = &self.password {
            let _ = write!(s, " password={}", quote(password));
        }
        s
    }

    /// A key=value connection string over the unix socket (private
    /// clusters only).
    pub fn socket_dsn(&self) -> Option<String> {
        match &self.kind {
            Kind::Private(p) => Some(format!(
                "host={} port={} user={} dbname={}",
                quote(&p.dir.to_string_lossy()),
                self.port,
                quote(&self.user),
                quote(&self.dbname)
            )),
            Kind::External { .. } => None,
        }
    }

    /// The host name (or socket directory, for an external server set so).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The name of the default database.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The server's TCP address if it is on this machine's loopback
    /// interface (always for a private cluster): what a test proxy may
    /// connect to.
    pub fn loopback_addr(&self) -> Option<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .ok()?
            .find(|a| a.ip().is_loopback())
    }

    /// The private cluster's temporary directory (data directory, socket,
    /// `server.log`).
    pub fn dir(&self) -> Option<&Path> {
        self.private().map(|p| p.dir.as_path())
    }

    /// The PID of the private cluster's postmaster, if it is running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let p = self.private()?;
        let text = std::fs::read_to_string(p.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The private cluster's `server.log` (empty for an external server).
    pub fn log(&self) -> String {
        self.private()
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// Which server this is, for humans (never the password).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::External { source } => format!(
                "external PostgreSQL server from {source}: host={} port={} user={} dbname={}{}",
                self.host,
                self.port,
                self.user,
                self.dbname,
                if self.password.is_some() {
                    " (password hidden)"
                } else {
                    ""
                }
            ),
            Kind::Private(p) => format!(
                "private throwaway PostgreSQL cluster at {}:{} (binaries {}, data {})",
                p.listen,
                self.port,
                p.bin_dir.display(),
                p.dir.display()
            ),
        }
    }

    /// Creates a new database with a unique name (`prefix`, lowercased,
    /// then the process id and a counter) and returns its connection
    /// string.
    ///
    /// # Errors
    ///
    /// The server could not be reached, or refused `CREATE DATABASE`.
    pub fn fresh_database(&self, prefix: &str) -> Result<String, TestingError> {
        let mut name: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert_str(0, "db_");
        }
        let suffix = format!("_{}_{}", std::process::id(), next_id());
        name.truncate(63 - suffix.len());
        name.push_str(&suffix);
        self.admin()?
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .map_err(|e| {
                TestingError(format!(
                    "CREATE DATABASE {name} failed: {}",
                    error_chain(&e)
                ))
            })?;
        Ok(self.dsn_for(&name))
    }

    /// A plain `postgres::Client` on the default database (to set things
    /// up, or to look at the server's view from outside pgtx).
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub fn admin(&self) -> Result<postgres::Client, TestingError> {
        self.admin_on(&self.dsn())
    }

    /// A plain `postgres::Client` connected with `dsn`.
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub fn admin_on(&self, dsn: &str) -> Result<postgres::Client, TestingError> {
        postgres::Client::connect(dsn, postgres::NoTls).map_err(|e| {
            TestingError(format!(
                "cannot connect to the test server ({}): {}",
                self.describe(),
                error_chain(&e)
            ))
        })
    }

    /// Terminates every other session connected to database `dbname`
    /// (`pg_terminate_backend`) and returns how many were signalled; on
    /// PostgreSQL 14+ waits (up to 5 s each) until they are gone.
    ///
    /// # Errors
    ///
    /// The server could not be reached or asked.
    pub fn terminate_backends(&self, dbname: &str) -> Result<usize, TestingError> {
        let mut admin = self.admin()?;
        let failed = |e: postgres::Error| TestingError(error_chain(&e));
        let version: i32 = admin
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .map_err(failed)?
            .get(0);
        // Pick the victims first: with a single query the planner may push
        // pg_terminate_backend() below the datname filter and kill everyone.
        let pids: Vec<i32> = admin
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&dbname],
            )
            .map_err(failed)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let sql = if version >= 140000 {
            "SELECT pg_terminate_backend($1, 5000)"
        } else {
            "SELECT pg_terminate_backend($1)"
        };
        Ok(pids
            .iter()
            .filter(|pid| {
                admin
                    .query_one(sql, &[*pid])
                    .map(|row| row.get::<_, bool>(0))
                    // Already gone, or PG14+ timed out waiting: not terminated.
                    .unwrap_or(false)
            })
            .count())
    }

    /// `pg_ctl restart -m immediate` on the same port: every connection is
    /// killed without a clean shutdown (crash recovery runs).
    ///
    /// # Errors
    ///
    /// This is no private cluster, or `pg_ctl` failed.
    pub fn restart_immediate(&self) -> Result<(), TestingError> {
        Ok(self
            .private_for("restart_immediate")?
            .restart_immediate(self.port)?)
    }

    /// Stops the private cluster (`pg_ctl stop -m fast`).
    ///
    /// # Errors
    ///
    /// This is no private cluster, or `pg_ctl` failed.
    pub fn stop(&self) -> Result<(), TestingError> {
        Ok(self.private_for("stop")?.stop()?)
    }

    /// Stops the private cluster at once (`pg_ctl stop -m immediate`), as
    /// a crash would: its sessions end without a word, nothing is flushed.
    ///
    /// # Errors
    ///
    /// This is no private cluster, or `pg_ctl` failed.
    pub fn stop_immediate(&self) -> Result<(), TestingError> {
        Ok(self.private_for("stop_immediate")?.stop_immediate()?)
    }

    /// Promotes this standby (`pg_ctl promote -w`): it leaves recovery and
    /// takes writes. Returns once it has.
    ///
    /// # Errors
    ///
    /// This is no private cluster, or `pg_ctl promote` failed (it is no
    /// standby, or did not finish within 60 s).
    pub fn promote(&self) -> Result<(), TestingError> {
        Ok(self.private_for("promote")?.promote()?)
    }

    /// Starts the private cluster again after [`stop`](Self::stop), on the
    /// same port.
    ///
    /// # Errors
    ///
    /// This is no private cluster, or `pg_ctl` failed.
    pub fn start_again(&self) -> Result<(), TestingError> {
        Ok(self.private_for("start_again")?.start_again(self.port)?)
    }

    /// Where a PostgreSQL program (`psql`, `pgbench`, …) is: next to the
    /// private cluster's server binaries, else in `PATH` or
    /// `/usr/lib/postgresql/*/bin`.
    pub fn bin(&self, name: &str) -> Option<PathBuf> {
        if let Some(p) = self.private() {
            let path = p.bin_dir.join(name);
            if path.is_file() {
                return Some(path);
            }
        }
        cluster::candidate_bin_dirs()
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    fn private(&self) -> Option<&Private> {
        match &self.kind {
            Kind::Private(p) => Some(p),
            Kind::External { .. } => None,
        }
    }

    fn private_for(&self, what: &str) -> Result<&Private, TestingError> {
        self.private().ok_or_else(|| {
            TestingError(format!(
                "TestServer::{what} needs a private cluster (TestServer::start()), but this is an {}",
                self.describe()
            ))
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Kind::Private(p) = &self.kind {
            p.destroy();
        }
    }
}

/// Runs `work` in a transaction that is always rolled back at its end,
/// and returns what `work` returned: whatever a test does inside, the next
/// test finds the database as it was. Code under test that takes
/// `&mut impl` [`GenericClient`](crate::GenericClient) runs on the `Tx` as
/// it would on a guard or a savepoint (its own savepoints included).
///
/// # Errors
///
/// Taking the connection or beginning failed, `work` returned `Err` (the
/// transaction rolled back, as always), or the rollback failed
/// ([`Error::ConnectionLost`]).
///
/// # Panics
///
/// A panic in `work` is passed on; the transaction is rolled back on the
/// way out (and reported, as any `Tx` dropped by a panic).
pub fn rolled_back<S, T, E, F>(source: &S, work: F) -> Result<T, E>
where
    S: ConnectionSource,
    E: From<Error>,
    F: FnOnce(&mut Tx<'_, Open>) -> Result<T, E>,
{
    let mut tx = source.lock()?.begin()?;
    let outcome = work(&mut tx);
    tx.rollback()?;
    outcome
}
