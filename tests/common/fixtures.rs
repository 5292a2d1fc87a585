//! pgtx-specific helpers: a manager on a database of its own, and queries
//! made from a second connection to prove what the server really holds.

use std::net::SocketAddr;

use pgtx::ManagedConnection;

use super::proxy::Proxy;
use super::server::TestServer;

/// A test's own database, on the shared server unless made with
/// [`Db::on`].
pub struct Db {
    pub dsn: String,
    pub name: String,
    /// The server it is on.
    pub server: &'static TestServer,
}

impl Db {
    /// A fresh database on the shared server with
    /// `CREATE TABLE items (id int primary key, note text)`.
    pub fn new(prefix: &str) -> Db {
        Db::on(TestServer::shared(), prefix)
    }

    /// [`Db::new`] on `server` (a second cluster, say).
    pub fn on(server: &'static TestServer, prefix: &str) -> Db {
        let dsn = server.fresh_database(prefix);
        let name = dsn
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("dbname="))
            .expect("harness DSNs name their database")
            .to_owned();
        Db::with_tables(Db { dsn, name, server })
    }

    /// A database named exactly `name` (a plain identifier) on `server`,
    /// with the tables of [`Db::new`]: the same name on two servers.
    pub fn named_on(server: &'static TestServer, name: &str) -> Db {
        server
            .admin()
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let dsn = server.dsn_for(name);
        Db::with_tables(Db {
            dsn,
            name: name.to_owned(),
            server,
        })
    }

    fn with_tables(db: Db) -> Db {
        db.admin()
            .batch_execute(
                "CREATE TABLE items (id int PRIMARY KEY, note text);
                 CREATE TABLE counter (n bigint NOT NULL); INSERT INTO counter VALUES (0);",
            )
            .expect("create the test tables");
        db
    }

    pub fn manager(&self) -> ManagedConnection {
        ManagedConnection::new(&self.dsn).expect("harness DSNs parse")
    }

    /// A manager on this database whose connections go through a fault
    /// proxy of their own (to cut, stall, or count what the client sends).
    pub fn manager_via_proxy(&self) -> (Proxy, ManagedConnection) {
        let proxy = self.proxy();
        let manager = ManagedConnection::new(&self.dsn_via(proxy.addr())).expect("settings");
        (proxy, manager)
    }

    /// A fault proxy in front of this database's server.
    pub fn proxy(&self) -> Proxy {
        Proxy::start(
            self.server
                .loopback_addr()
                .expect("the test server listens on loopback"),
        )
    }

    /// This database's DSN, but connecting to `addr` (a proxy in front of
    /// its server).
    pub fn dsn_via(&self, addr: SocketAddr) -> String {
        self.server.dsn_via(addr).replace(
            &format!("dbname={}", self.server.dbname()),
            &format!("dbname={}", self.name),
        )
    }

    /// Refuses (`false`) or allows new sessions of this database on its
    /// server, as an outage would; sessions already open go on.
    pub fn allow_connections(&self, allow: bool) {
        self.server
            .admin()
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .expect("alter database");
    }

    /// A second, independent connection to the same database.
    pub fn admin(&self) -> postgres::Client {
        self.server.admin_on(&self.dsn)
    }

    /// Rows in `items`, as another connection sees them (committed data only).
    pub fn item_ids(&self) -> Vec<i32> {
        self.admin()
            .query("SELECT id FROM items ORDER BY id", &[])
            .expect("read items")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub fn counter(&self) -> i64 {
        self.admin()
            .query_one("SELECT n FROM counter", &[])
            .expect("read counter")
            .get(0)
    }

    /// Sessions of this database that are inside a transaction block, seen
    /// from `pg_stat_activity` (proves no transaction was left open).
    pub fn open_transactions(&self) -> i64 {
        let mut admin = self.admin();
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND state LIKE 'idle in transaction%'",
                &[],
            )
            .expect("read pg_stat_activity")
            .get(0)
    }

    /// Backend pids of other sessions connected to this database.
    pub fn backends(&self) -> Vec<i32> {
        self.admin()
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                 ORDER BY pid",
                &[],
            )
            .expect("read pg_stat_activity")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}
