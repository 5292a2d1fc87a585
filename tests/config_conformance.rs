//! libpq as the oracle: each case (a connection string, environment
//! variables, a password file, service files) is resolved by `psql` and by
//! pgtx against the same private server, and both must reach the same role,
//! database, port and session options — or both must fail.
//!
//! pgtx runs in a child process (this test binary again, with
//! `PGTX_ORACLE_DSN` set) so that it sees exactly the environment psql sees,
//! read through the real process environment.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::server::{TestServer, error_chain};

/// Set in the child process: the connection string pgtx must use.
const CHILD_DSN: &str = "PGTX_ORACLE_DSN";
/// This file's one test, which is also the child's entry point.
const TEST_NAME: &str = "psql_and_pgtx_resolve_every_case_alike";
const QUERY: &str = "select current_user::text, current_database()::text, \
                     coalesce(inet_server_port()::text, ''), current_setting('search_path')";
const ALICE_PW: &str = "alice-secret-1";
/// Has a colon and a backslash, which the password file must escape.
const BOB_PW: &str = r"b:o\b";
const DEFAULT_PATH: &str = "\"$user\", public";

/// One conformance case. Placeholders: `{H}` 127.0.0.1, `{P}` the server's
/// port, `{S}` its socket directory, `{HOME}` the case's home directory,
/// `{SYS}` its PGSYSCONFDIR.
struct Case {
    name: &'static str,
    dsn: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// `~/.pgpass` contents and mode.
    pgpass: Option<(&'static str, u32)>,
    /// Extra files, relative to `{HOME}` (mode 0600).
    files: &'static [(&'static str, &'static str)],
    /// `user|database|port or empty for a socket|search_path`, or `None` for
    /// "must fail".
    expect: Option<&'static str>,
}

const fn case(name: &'static str, dsn: &'static str, expect: Option<&'static str>) -> Case {
    Case {
        name,
        dsn,
        env: &[],
        pgpass: None,
        files: &[],
        expect,
    }
}

const SERVICE_FILE: &str = "\
# services for the conformance test
[other]
dbname=postgres

[svc]
host={H}
port={P}
dbname=appdb
user=postgres
";

fn cases() -> Vec<Case> {
    const FAIL: Option<&str> = None;
    let with_env = |mut c: Case, env: &'static [(&'static str, &'static str)]| {
        c.env = env;
        c
    };
    let with_pgpass = |mut c: Case, text: &'static str, mode: u32| {
        c.pgpass = Some((text, mode));
        c
    };
    let with_files = |mut c: Case, files: &'static [(&'static str, &'static str)]| {
        c.files = files;
        c
    };
    vec![
        // key=value basics and defaults
        case(
            "all given",
            "host={H} port={P} user=postgres dbname=postgres",
            Some("postgres|postgres|{P}|D"),
        ),
        case(
            "dbname defaults to user",
            "host={H} port={P} user=postgres",
            Some("postgres|postgres|{P}|D"),
        ),
        case(
            "user defaults to the OS user",
            "host={H} port={P}",
            Some("root|root|{P}|D"),
        ),
        case(
            "blanks around =",
            "host = {H}   port= {P} dbname =appdb",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "quoted value with blank",
            "host={H} port={P} dbname='my db'",
            Some("root|my db|{P}|D"),
        ),
        case(
            "escaped blank",
            r"host={H} port={P} dbname=my\ db",
            Some("root|my db|{P}|D"),
        ),
        case(
            "later keyword wins",
            "host={H} port={P} dbname=postgres dbname=appdb",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "socket directory as host",
            "host={S} port={P} dbname=appdb",
            Some("root|appdb||D"),
        ),
        case(
            "IPv6 host",
            "host=::1 port={P} dbname=appdb",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "hostaddr beats an unresolvable host",
            "host=nonexistent.invalid hostaddr=127.0.0.1 port={P}",
            Some("root|root|{P}|D"),
        ),
        case(
            "options keyword",
            "host={H} port={P} options='-c search_path=from_dsn'",
            Some("root|root|{P}|from_dsn"),
        ),
        case(
            "default socket directory has no server",
            "host='' port={P}",
            FAIL,
        ),
        // URIs
        case("URI", "postgres://{H}:{P}/appdb", Some("root|appdb|{P}|D")),
        case(
            "postgresql:// URI with user",
            "postgresql://postgres@{H}:{P}/appdb",
            Some("postgres|appdb|{P}|D"),
        ),
        case(
            "URI percent-encoded database",
            "postgres://{H}:{P}/my%20db",
            Some("root|my db|{P}|D"),
        ),
        case(
            "URI IPv6 literal",
            "postgres://[::1]:{P}/appdb",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "URI percent-encoded socket directory",
            "postgres://{S%}:{P}/appdb",
            Some("root|appdb||D"),
        ),
        case(
            "URI host in query",
            "postgres:///appdb?host={S%}&port={P}",
            Some("root|appdb||D"),
        ),
        case(
            "URI query parameters",
            "postgres://{H}:{P}/appdb?user=postgres&sslmode=disable&application_name=x",
            Some("postgres|appdb|{P}|D"),
        ),
        case(
            "URI options percent-encoded",
            "postgres://{H}:{P}/appdb?options=-c%20search_path%3Dq",
            Some("root|appdb|{P}|q"),
        ),
        case(
            "URI read-write target",
            "postgres://{H}:{P}/appdb?target_session_attrs=read-write",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "URI read-only target on a primary",
            "postgres://{H}:{P}/appdb?target_session_attrs=read-only",
            FAIL,
        ),
        case(
            "URI ssl=true needs TLS the server lacks",
            "postgres://{H}:{P}/appdb?ssl=true",
            FAIL,
        ),
        with_env(
            case(
                "postgres:///db uses PGHOST socket",
                "postgres:///appdb",
                Some("root|appdb||D"),
            ),
            &[("PGHOST", "{S}"), ("PGPORT", "{P}")],
        ),
        // several hosts
        case(
            "second host answers",
            "host={H},{H} port=1,{P} dbname=appdb",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "URI second host answers",
            "postgres://{H}:1,{H}:{P}/appdb",
            Some("root|appdb|{P}|D"),
        ),
        case(
            "one port for all hosts",
            "host=nonexistent.invalid,{H} port={P}",
            Some("root|root|{P}|D"),
        ),
        case("ports do not match hosts", "host={H},{H} port=1,2,3", FAIL),
        // passwords
        case(
            "password keyword",
            "host={H} port={P} user=alice password=alice-secret-1 dbname=appdb",
            Some("alice|appdb|{P}|D"),
        ),
        case(
            "URI userinfo password",
            "postgres://alice:alice-secret-1@{H}:{P}/appdb",
            Some("alice|appdb|{P}|D"),
        ),
        case(
            "URI query password",
            "postgres://alice@{H}:{P}/appdb?password=alice-secret-1",
            Some("alice|appdb|{P}|D"),
        ),
        case(
            "URI percent-encoded password",
            "postgres://bob:b%3Ao%5Cb@{H}:{P}/appdb",
            Some("bob|appdb|{P}|D"),
        ),
        case(
            "wrong password",
            "postgres://alice:wrong@{H}:{P}/appdb",
            FAIL,
        ),
        case(
            "no password at all",
            "host={H} port={P} user=alice dbname=appdb",
            FAIL,
        ),
        with_env(
            case(
                "PGPASSWORD",
                "host={H} port={P} user=alice dbname=appdb",
                Some("alice|appdb|{P}|D"),
            ),
            &[("PGPASSWORD", ALICE_PW)],
        ),
        with_pgpass(
            case(
                "pgpass exact line",
                "host={H} port={P} user=alice dbname=appdb",
                Some("alice|appdb|{P}|D"),
            ),
            "{H}:{P}:appdb:alice:alice-secret-1\n",
            0o600,
        ),
        with_pgpass(
            case(
                "pgpass wildcards",
                "host={H} port={P} user=alice dbname=appdb",
                Some("alice|appdb|{P}|D"),
            ),
            "# comment\n*:*:*:alice:alice-secret-1\n",
            0o600,
        ),
        with_pgpass(
            case(
                "pgpass first match wins",
                "host={H} port={P} user=alice dbname=appdb",
                FAIL,
            ),
            "*:*:*:alice:wrong\n*:*:*:alice:alice-secret-1\n",
            0o600,
        ),
        with_pgpass(
            case(
                "pgpass other database does not match",
                "host={H} port={P} user=alice dbname=appdb",
                FAIL,
            ),
            "*:*:postgres:alice:alice-secret-1\n",
            0o600,
        ),
        with_pgpass(
            case(
                "pgpass escapes",
                "host={H} port={P} user=bob dbname=appdb",
                Some("bob|appdb|{P}|D"),
            ),
            "*:*:*:bob:b\\:o\\\\b\n",
            0o600,
        ),
        with_pgpass(
            case(
                "pgpass readable by group is ignored",
                "host={H} port={P} user=alice dbname=appdb",
                FAIL,
            ),
            "*:*:*:alice:alice-secret-1\n",
            0o640,
        ),
        with_pgpass(
            case(
                "pgpass socket directory by path",
                "host={S} port={P} user=alice dbname=appdb",
                Some("alice|appdb||D"),
            ),
            "{S}:{P}:*:alice:alice-secret-1\n",
            0o600,
        ),
        with_pgpass(
            case(
                "pgpass localhost is not a custom socket",
                "host={S} port={P} user=alice dbname=appdb",
                FAIL,
            ),
            "localhost:*:*:alice:alice-secret-1\n",
            0o600,
        ),
        with_env(
            with_pgpass(
                case(
                    "PGPASSWORD wins over pgpass",
                    "host={H} port={P} user=alice dbname=appdb",
                    FAIL,
                ),
                "*:*:*:alice:alice-secret-1\n",
                0o600,
            ),
            &[("PGPASSWORD", "wrong")],
        ),
        with_env(
            with_files(
                case(
                    "PGPASSFILE",
                    "host={H} port={P} user=alice dbname=appdb",
                    Some("alice|appdb|{P}|D"),
                ),
                &[("elsewhere.pass", "*:*:*:alice:alice-secret-1\n")],
            ),
            &[("PGPASSFILE", "{HOME}/elsewhere.pass")],
        ),
        with_files(
            case(
                "passfile keyword",
                "host={H} port={P} user=alice dbname=appdb passfile={HOME}/p2",
                Some("alice|appdb|{P}|D"),
            ),
            &[("p2", "*:*:*:alice:alice-secret-1\n")],
        ),
        // environment
        with_env(
            case(
                "everything from the environment",
                "",
                Some("postgres|appdb|{P}|D"),
            ),
            &[
                ("PGHOST", "{H}"),
                ("PGPORT", "{P}"),
                ("PGUSER", "postgres"),
                ("PGDATABASE", "appdb"),
            ],
        ),
        with_env(
            case(
                "explicit beats environment",
                "host={H} port={P} user=root dbname=postgres",
                Some("root|postgres|{P}|D"),
            ),
            &[("PGDATABASE", "appdb"), ("PGUSER", "nobody")],
        ),
        with_env(
            case("PGHOSTADDR", "port={P}", Some("root|root|{P}|D")),
            &[("PGHOSTADDR", "127.0.0.1")],
        ),
        with_env(
            case(
                "PGOPTIONS",
                "host={H} port={P}",
                Some("root|root|{P}|from_env"),
            ),
            &[("PGOPTIONS", "-c search_path=from_env")],
        ),
        with_env(
            case("bad PGPORT", "host={H}", FAIL),
            &[("PGPORT", "not-a-port")],
        ),
        with_env(
            case("bad PGSSLMODE", "host={H} port={P}", FAIL),
            &[("PGSSLMODE", "sometimes")],
        ),
        with_env(
            case(
                "PGSSLMODE=disable",
                "host={H} port={P}",
                Some("root|root|{P}|D"),
            ),
            &[("PGSSLMODE", "disable")],
        ),
        with_env(
            case("PGTARGETSESSIONATTRS", "host={H} port={P}", FAIL),
            &[("PGTARGETSESSIONATTRS", "read-only")],
        ),
        // service files
        with_files(
            case(
                "service keyword",
                "service=svc",
                Some("postgres|appdb|{P}|D"),
            ),
            &[(".pg_service.conf", SERVICE_FILE)],
        ),
        with_env(
            with_files(
                case("PGSERVICE", "", Some("postgres|appdb|{P}|D")),
                &[(".pg_service.conf", SERVICE_FILE)],
            ),
            &[("PGSERVICE", "svc")],
        ),
        with_files(
            case(
                "explicit beats service",
                "service=svc dbname=postgres",
                Some("postgres|postgres|{P}|D"),
            ),
            &[(".pg_service.conf", SERVICE_FILE)],
        ),
        with_env(
            with_files(
                case(
                    "service beats environment",
                    "service=svc",
                    Some("postgres|appdb|{P}|D"),
                ),
                &[(".pg_service.conf", SERVICE_FILE)],
            ),
            &[("PGDATABASE", "postgres"), ("PGUSER", "root")],
        ),
        with_files(
            case(
                "service in URI query",
                "postgres://?service=svc",
                Some("postgres|appdb|{P}|D"),
            ),
            &[(".pg_service.conf", SERVICE_FILE)],
        ),
        with_files(
            case(
                "service from PGSYSCONFDIR",
                "service=svc",
                Some("postgres|appdb|{P}|D"),
            ),
            &[("sys/pg_service.conf", SERVICE_FILE)],
        ),
        with_env(
            with_files(
                case("PGSERVICEFILE", "service=svc", Some("postgres|appdb|{P}|D")),
                &[("my.conf", SERVICE_FILE)],
            ),
            &[("PGSERVICEFILE", "{HOME}/my.conf")],
        ),
        with_files(
            case("unknown service", "service=nope", FAIL),
            &[(".pg_service.conf", SERVICE_FILE)],
        ),
        with_files(
            case("service file syntax error", "service=bad", FAIL),
            &[(".pg_service.conf", "[bad]\nhost {H}\n")],
        ),
        // bad input
        case("unknown keyword", "host={H} port={P} colour=blue", FAIL),
        case("keywords are case-sensitive", "HOST={H} port={P}", FAIL),
        case("port not a number", "host={H} port=abc", FAIL),
        case("port out of range", "host={H} port=70000", FAIL),
        case(
            "unterminated quote",
            "host={H} port={P} dbname='appdb",
            FAIL,
        ),
        case("word without =", "host={H} port={P} appdb", FAIL),
        case("bad sslmode", "host={H} port={P} sslmode=sometimes", FAIL),
        case(
            "bad connect_timeout",
            "host={H} port={P} connect_timeout=soon",
            FAIL,
        ),
        case(
            "URI bad percent-encoding",
            "postgres://{H}:{P}/app%zzdb",
            FAIL,
        ),
        case(
            "URI unknown query parameter",
            "postgres://{H}:{P}/appdb?colour=blue",
            FAIL,
        ),
        case(
            "URI unclosed IPv6 bracket",
            "postgres://[::1:{P}/appdb",
            FAIL,
        ),
    ]
}

#[test]
fn psql_and_pgtx_resolve_every_case_alike() {
    if let Ok(dsn) = std::env::var(CHILD_DSN) {
        child(&dsn);
        return;
    }
    let server = TestServer::start_private_with(&[("listen_addresses", "127.0.0.1,::1")]);
    prepare(&server);
    let psql = server
        .bin("psql")
        .expect("psql next to the server binaries");
    let socket = server
        .dir()
        .expect("private cluster")
        .to_string_lossy()
        .into_owned();
    let work = std::env::temp_dir().join(format!("pgtx-conformance-{}", std::process::id()));
    let cases = cases();
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    let mut disagreements = Vec::new();
    let mut report = String::new();
    for (n, case) in cases.iter().enumerate() {
        let home = work.join(n.to_string());
        let sys = home.join("sys");
        std::fs::create_dir_all(&sys).expect("case directory");
        let fill = |s: &str| {
            s.replace("{S%}", &percent_encode(&socket))
                .replace("{S}", &socket)
                .replace("{H}", "127.0.0.1")
                .replace("{P}", &server.port().to_string())
                .replace("{HOME}", &home.to_string_lossy())
                .replace("{SYS}", &sys.to_string_lossy())
        };
        if let Some((text, mode)) = case.pgpass {
            write_file(&home.join(".pgpass"), &fill(text), mode);
        }
        for (path, text) in case.files {
            write_file(&home.join(path), &fill(text), 0o600);
        }
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        env.insert("LC_ALL".into(), "C".into());
        env.insert("HOME".into(), home.to_string_lossy().into_owned());
        env.insert("PGSYSCONFDIR".into(), sys.to_string_lossy().into_owned());
        for (k, v) in case.env {
            env.insert((*k).into(), fill(v));
        }
        let dsn = fill(case.dsn);
        let expect = case
            .expect
            .map(|e| fill(&e.replace("|D", &format!("|{DEFAULT_PATH}"))));

        let by_psql = run_psql(&psql, &dsn, &env);
        let by_pgtx = run_pgtx(&dsn, &env);
        let shown = |r: &Result<String, String>| match r {
            Ok(v) => format!("ok {v}"),
            Err(e) => format!("error: {}", e.lines().next().unwrap_or_default()),
        };
        report.push_str(&format!(
            "{:>2} {:<45} psql {:<40} pgtx {}\n",
            n + 1,
            case.name,
            shown(&by_psql),
            shown(&by_pgtx)
        ));
        let agree = match (&by_psql, &by_pgtx) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        let as_expected = |r: &Result<String, String>| match (&expect, r) {
            (Some(want), Ok(got)) => want == got,
            (None, Err(_)) => true,
            _ => false,
        };
        if !agree || !as_expected(&by_psql) || !as_expected(&by_pgtx) {
            disagreements.push(format!(
                "case {} {:?}: dsn {dsn:?}\n  expected {expect:?}\n  psql: {by_psql:?}\n  pgtx: {by_pgtx:?}",
                n + 1,
                case.name
            ));
        }
        // Whatever pgtx printed (errors included) must not contain a password.
        if let Err(e) = &by_pgtx {
            for secret in [ALICE_PW, BOB_PW, "wrong"] {
                assert!(
                    !e.contains(secret),
                    "case {}: pgtx error shows a password: {e}",
                    case.name
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("{report}");
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}\n\nall cases:\n{report}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}

/// Roles, databases and password authentication for alice and bob.
fn prepare(server: &TestServer) {
    let mut admin = server.admin();
    for statement in [
        "CREATE ROLE root LOGIN".to_owned(),
        "CREATE DATABASE root OWNER root".to_owned(),
        "CREATE DATABASE appdb".to_owned(),
        "CREATE DATABASE \"my db\"".to_owned(),
        format!("CREATE ROLE alice LOGIN PASSWORD '{ALICE_PW}'"),
        format!("CREATE ROLE bob LOGIN PASSWORD '{BOB_PW}'"),
    ] {
        admin.batch_execute(&statement).expect(&statement);
    }
    let hba = server
        .dir()
        .expect("private")
        .join("data")
        .join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let new = format!(
        "local all alice,bob scram-sha-256\n\
         host all alice,bob 127.0.0.1/32 scram-sha-256\n\
         host all alice,bob ::1/128 scram-sha-256\n{old}"
    );
    std::fs::write(&hba, new).expect("write pg_hba.conf");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
    // Wait until the new rules are in force: alice without a password fails.
    let without_password = format!(
        "host=127.0.0.1 port={} user=alice dbname=appdb",
        server.port()
    );
    for _ in 0..100 {
        if postgres::Client::connect(&without_password, postgres::NoTls).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("pg_hba.conf reload did not take effect");
}

fn write_file(path: &Path, text: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("directory");
    }
    std::fs::write(path, text).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn run_psql(psql: &PathBuf, dsn: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let out = Command::new(psql)
        .args(["-X", "-w", "-A", "-t", "-c", QUERY, dsn])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn run_pgtx(dsn: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut env = env.clone();
    env.insert(CHILD_DSN.to_owned(), dsn.to_owned());
    let out = common::rerun_test(TEST_NAME, &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        if let Some(ok) = line.strip_prefix("PGTX_OK ") {
            return Ok(ok.to_owned());
        }
        if let Some(err) = line.strip_prefix("PGTX_ERR ") {
            return Err(err.to_owned());
        }
    }
    panic!(
        "the pgtx child printed no result ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child: connect with pgtx and print what the server says.
fn child(dsn: &str) {
    let outcome = (|| -> pgtx::Result<String> {
        let manager = pgtx::ManagedConnection::new(dsn)?;
        let mut guard = manager.lock()?;
        let row = guard.query_one(QUERY, &[])?;
        let columns: Vec<String> = (0..4).map(|i| row.get::<_, String>(i)).collect();
        Ok(columns.join("|"))
    })();
    match outcome {
        // On a line of its own: libtest has printed the test's name.
        Ok(line) => println!("\nPGTX_OK {line}"),
        Err(e) => println!("\nPGTX_ERR {}", error_chain(&e).replace('\n', " ")),
    }
}
