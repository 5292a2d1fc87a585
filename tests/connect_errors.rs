//! A connection that fails says what happened, as libpq says it: the
//! server tried (host and port, or the Unix socket) and why it failed —
//! refused, timed out, the password refused, TLS refused, the name not
//! resolved — one line per attempt, every attempt in order.
//!
//! Each case is also put to psql (libpq) with the same settings: pgtx's
//! message must be exactly what psql prints, without psql's `psql: error: `
//! prefix and its indented hint lines. And it says each thing once: the
//! whole chain (the message, then each `source()`) is that message alone,
//! with nothing repeated (issue 18, item 6).

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::server::{TestServer, assert_says_each_thing_once, error_chain};
use pgtx::{ConnectError, Error, ManagedConnection, SqlState};

/// The role whose password is checked (`scram-sha-256` over TCP).
const USER: &str = "alice";
const PASSWORD: &str = "Right-Alice-31c";
const WRONG: &str = "Wrong-Alice-77d";

/// A private server on which `alice` must give her password over TCP and
/// TLS is off (`initdb`'s default), shared by the tests of this file.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = TestServer::start_private();
        let mut admin = server.admin();
        admin
            .batch_execute(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))
            .expect("create role");
        let ssl: String = admin.query_one("SHOW ssl", &[]).expect("SHOW ssl").get(0);
        assert_eq!(
            ssl, "off",
            "the TLS refusal case needs a server without TLS"
        );
        let hba = server
            .dir()
            .expect("private")
            .join("data")
            .join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all {USER} 127.0.0.1/32 scram-sha-256\n{old}"),
        )
        .expect("write pg_hba.conf");
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .expect("reload");
        let passwordless = format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres",
            server.port()
        );
        assert!(
            common::eventually(Duration::from_secs(10), || {
                postgres::Client::connect(&passwordless, postgres::NoTls).is_err()
            }),
            "pg_hba.conf was not reloaded"
        );
        server
    })
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

/// Connects with pgtx, which must fail with [`Error::Connect`].
fn refused(dsn: &str) -> Error {
    let manager = ManagedConnection::new(dsn).expect("the settings parse");
    let e = manager.lock().map(drop).expect_err(dsn);
    assert!(matches!(e, Error::Connect(_)), "{dsn}: {e:?}");
    e
}

/// The attempts of a failed connection.
fn attempts(e: &Error) -> &ConnectError {
    match e {
        Error::Connect(connect) => connect,
        other => panic!("expected Error::Connect: {other:?}"),
    }
}

/// What psql (libpq) prints when it cannot connect with `dsn`, without
/// its `psql: error: ` prefix and its hint lines.
fn libpq_says(dsn: &str) -> String {
    let psql = server().bin("psql").expect("psql");
    let out = Command::new(psql)
        .args(["-X", "-w", "-At", "-c", "SELECT 1", dsn])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent/pgtx/pgpass")
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(!out.status.success(), "psql connected with {dsn}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .trim_end()
        .lines()
        .filter(|line| !line.starts_with('\t'))
        .collect();
    let text = lines.join("\n");
    text.strip_prefix("psql: error: ")
        .unwrap_or(&text)
        .to_owned()
}

/// The message says `expected`, word for word what libpq says, and the
/// whole chain says it once: the message has every reason in it, so there
/// is no source to repeat one.
fn says(e: &Error, dsn: &str, expected: &str) {
    let message = e.to_string();
    assert_eq!(message, expected, "{dsn}");
    assert_eq!(assert_says_each_thing_once(e), expected, "{dsn}: the chain");
    assert!(std::error::Error::source(e).is_none(), "{dsn}: {e:?}");
    assert_eq!(
        message,
        libpq_says(dsn),
        "{dsn}: libpq words it differently"
    );
    assert!(!message.contains("os error"), "{message}");
}

#[test]
fn a_closed_port_is_connection_refused_at_that_host_and_port() {
    let port = closed_port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let e = refused(&dsn);
    says(
        &e,
        &dsn,
        &format!("connection to server at \"127.0.0.1\", port {port} failed: Connection refused"),
    );
    let io = attempts(&e)
        .last_cause()
        .downcast_ref::<std::io::Error>()
        .expect("an I/O error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(e.is_transient());
    assert!(e.as_db_error().is_none());
}

#[test]
fn a_wrong_password_names_the_server_and_its_reason_but_not_the_password() {
    let port = server().port();
    let dsn = format!("host=127.0.0.1 port={port} user={USER} password={WRONG} dbname=postgres");
    let e = refused(&dsn);
    says(
        &e,
        &dsn,
        &format!(
            "connection to server at \"127.0.0.1\", port {port} failed: \
             FATAL:  password authentication failed for user \"{USER}\""
        ),
    );
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD));
    let cause = attempts(&e).last_cause();
    assert!(
        cause.downcast_ref::<postgres::Error>().is_some(),
        "{cause:?}"
    );
    let everything = format!("{e} {e:?} {}", error_chain(&e));
    assert!(!everything.contains(WRONG), "{everything}");
    // The right password gets in: the refusal was about the password.
    let right = dsn.replace(WRONG, PASSWORD);
    let manager = ManagedConnection::new(&right).expect("settings");
    let mut guard = manager.lock().expect("the right password connects");
    let user: String = guard
        .query_one("SELECT current_user::text", &[])
        .expect("query")
        .get(0);
    assert_eq!(user, USER);
}

#[test]
fn a_name_that_does_not_resolve_is_named() {
    let dsn = "host=nonexistent.invalid port=5432 user=postgres dbname=postgres";
    let e = refused(dsn);
    let message = e.to_string();
    assert!(
        message.starts_with("could not translate host name \"nonexistent.invalid\" to address: "),
        "{message}"
    );
    says(&e, dsn, &message);
}

#[test]
fn tls_required_of_a_server_without_it_is_refused_in_libpq_words() {
    let port = server().port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require");
    let e = refused(&dsn);
    says(
        &e,
        &dsn,
        &format!(
            "connection to server at \"127.0.0.1\", port {port} failed: \
             server does not support SSL, but SSL was required"
        ),
    );
    // tokio-postgres's own error stays underneath the last attempt's cause.
    let cause = error_chain(attempts(&e).last_cause());
    assert_eq!(
        cause,
        "server does not support SSL, but SSL was required: \
         error performing TLS handshake: server does not support TLS"
    );
}

#[test]
fn a_unix_socket_that_does_not_exist_is_named_by_its_path() {
    let dir = std::env::temp_dir().join(format!("pgtx-no-server-{}", std::process::id()));
    let dsn = format!(
        "host={} port=5432 user=postgres dbname=postgres",
        dir.display()
    );
    let e = refused(&dsn);
    says(
        &e,
        &dsn,
        &format!(
            "connection to server on socket \"{}/.s.PGSQL.5432\" failed: \
             No such file or directory",
            dir.display()
        ),
    );
}

#[test]
fn every_host_tried_is_listed_in_order() {
    let closed = closed_port();
    let port = server().port();
    let expected = format!(
        "connection to server at \"127.0.0.1\", port {closed} failed: Connection refused\n\
         connection to server at \"127.0.0.1\", port {port} failed: \
         FATAL:  password authentication failed for user \"{USER}\""
    );
    for dsn in [
        format!(
            "host=127.0.0.1,127.0.0.1 port={closed},{port} user={USER} password={WRONG} \
             dbname=postgres"
        ),
        format!("postgres://{USER}:{WRONG}@127.0.0.1:{closed},127.0.0.1:{port}/postgres"),
    ] {
        let e = refused(&dsn);
        says(&e, &dsn, &expected);
        // The server's reason is found though another attempt came first.
        assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{dsn}");
        let everything = format!("{e} {e:?} {}", error_chain(&e));
        assert!(!everything.contains(WRONG), "{everything}");
    }
}

#[test]
fn a_server_that_never_answers_times_out_and_the_next_host_is_tried() {
    // The kernel completes the TCP handshake into the backlog, but nobody
    // ever reads the start-up packet or answers it: the attempt can only
    // end by `connect_timeout` (1 is taken as 2 seconds, as in libpq).
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    let closed = closed_port();
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={silent_port},{closed} user=postgres dbname=postgres \
         connect_timeout=1"
    );
    let started = Instant::now();
    let e = refused(&dsn);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "gave up after {waited:?}"
    );
    says(
        &e,
        &dsn,
        &format!(
            "connection to server at \"127.0.0.1\", port {silent_port} failed: timeout expired\n\
             connection to server at \"127.0.0.1\", port {closed} failed: Connection refused"
        ),
    );
    drop(silent);
}

#[test]
fn a_database_that_does_not_exist_is_named_as_libpq_names_it() {
    let port = server().port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=pgtx_no_such_database");
    let e = refused(&dsn);
    says(
        &e,
        &dsn,
        &format!(
            "connection to server at \"127.0.0.1\", port {port} failed: \
             FATAL:  database \"pgtx_no_such_database\" does not exist"
        ),
    );
    assert_eq!(e.code(), Some(&SqlState::INVALID_CATALOG_NAME));
}

#[test]
fn a_server_that_stalls_after_accepting_times_out_as_libpq_says() {
    // The proxy accepts the connection but forwards nothing: the start-up
    // packet never reaches the server, and no answer comes back.
    let proxy = Proxy::start(std::net::SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        server().port(),
    )));
    proxy.stall();
    let port = proxy.addr().port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
    let e = refused(&dsn);
    says(
        &e,
        &dsn,
        &format!("connection to server at \"127.0.0.1\", port {port} failed: timeout expired"),
    );
    assert!(e.is_transient());
}

/// A statement's error and the commit it aborts: the server's words and
/// SQLSTATE in the message, once, with no source repeating them.
#[test]
fn a_statement_error_and_the_abort_it_causes_say_the_server_s_words_once() {
    let manager = ManagedConnection::new(&server().dsn()).expect("settings");
    let expected = "ERROR: relation \"pgtx_no_such_table\" does not exist (SQLSTATE 42P01)";

    let e = manager
        .lock()
        .expect("lock")
        .execute("SELECT * FROM pgtx_no_such_table", &[])
        .expect_err("no such table");
    assert!(matches!(e, Error::Db(_)), "{e:?}");
    assert_eq!(e.to_string(), expected);
    assert_eq!(assert_says_each_thing_once(&e), expected);
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let failed = tx
        .execute("SELECT * FROM pgtx_no_such_table", &[])
        .expect_err("no such table");
    assert_eq!(assert_says_each_thing_once(&failed), expected);
    let e = tx.commit().expect_err("the transaction was aborted");
    assert!(matches!(e, Error::TransactionAborted(_)), "{e:?}");
    let aborted = format!(
        "the transaction was aborted by an earlier error and has been rolled back: {expected}"
    );
    assert_eq!(e.to_string(), aborted);
    assert_eq!(assert_says_each_thing_once(&e), aborted);
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));

    // A failure on this side keeps its cause in the message too.
    let e = manager
        .lock()
        .expect("lock")
        .query_one("SELECT $1::int4", &[&"not an int"])
        .expect_err("a text parameter for an int4");
    assert!(matches!(e, Error::Db(_)), "{e:?}");
    let shown = assert_says_each_thing_once(&e);
    assert_eq!(shown, e.to_string());
    assert!(
        shown.starts_with("error serializing parameter 0: ") && shown.contains("int4"),
        "{shown}"
    );
}
