//! No password shows up in anything pgtx renders — `Display` and `Debug` of
//! the settings, the builder, the manager, a guard, a transaction and a
//! savepoint in each state, parse errors, connection and statement errors
//! and their sources, and log records — whichever way the password came in: URI
//! userinfo, `key=value`, URI query parameter, `PGPASSWORD`, or the
//! password file.
//!
//! Each case runs in a child process (this test binary again) with its own
//! environment; the child renders everything, with a logger at `Trace`
//! level, and the parent greps what it printed.

mod common;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use common::server::{TestServer, error_chain};

const CHILD_DSN: &str = "PGTX_SECRETS_DSN";
const TEST_NAME: &str = "no_rendering_shows_a_password";
const RIGHT: &str = "Right-Pass-7f3a";

struct Case {
    name: &'static str,
    /// `{P}` is the server's port, `{PW}` the secret of this case.
    dsn: &'static str,
    secret: &'static str,
    env: &'static [(&'static str, &'static str)],
    pgpass: Option<&'static str>,
    /// Whether connecting must succeed (the secret is the right password).
    connects: bool,
}

const fn case(name: &'static str, dsn: &'static str, secret: &'static str, connects: bool) -> Case {
    Case {
        name,
        dsn,
        secret,
        env: &[],
        pgpass: None,
        connects,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "URI userinfo, right",
            "postgres://carol:{PW}@127.0.0.1:{P}/postgres",
            RIGHT,
            true,
        ),
        case(
            "URI userinfo, wrong",
            "postgres://carol:{PW}@127.0.0.1:{P}/postgres",
            "Wrong-Uri-91ab",
            false,
        ),
        case(
            "URI userinfo, percent-encoded",
            "postgres://carol:Wrong%2DEnc%2D55@127.0.0.1:{P}/postgres",
            "Wrong-Enc-55",
            false,
        ),
        case(
            "key=value, right",
            "host=127.0.0.1 port={P} user=carol dbname=postgres password={PW}",
            RIGHT,
            true,
        ),
        case(
            "key=value quoted, wrong",
            "host=127.0.0.1 port={P} user=carol password='{PW}' dbname=postgres",
            "Wrong KV 2c",
            false,
        ),
        case(
            "URI query, right",
            "postgres://carol@127.0.0.1:{P}/postgres?password={PW}&sslmode=disable",
            RIGHT,
            true,
        ),
        case(
            "URI query, wrong",
            "postgres://carol@127.0.0.1:{P}/postgres?password={PW}",
            "Wrong-Query-3d",
            false,
        ),
        case(
            "sslpassword",
            "host=127.0.0.1 port={P} user=postgres sslpassword={PW}",
            "Key-Pass-4e",
            true,
        ),
        Case {
            env: &[("PGPASSWORD", "{PW}")],
            ..case(
                "PGPASSWORD, right",
                "host=127.0.0.1 port={P} user=carol dbname=postgres",
                RIGHT,
                true,
            )
        },
        Case {
            env: &[("PGPASSWORD", "{PW}")],
            ..case(
                "PGPASSWORD, wrong",
                "host=127.0.0.1 port={P} user=carol dbname=postgres",
                "Wrong-Env-5f",
                false,
            )
        },
        Case {
            pgpass: Some("*:*:*:carol:{PW}\n"),
            ..case(
                "password file, right",
                "host=127.0.0.1 port={P} user=carol dbname=postgres",
                RIGHT,
                true,
            )
        },
        Case {
            pgpass: Some("*:*:*:carol:{PW}\n"),
            ..case(
                "password file, wrong",
                "host=127.0.0.1 port={P} user=carol dbname=postgres",
                "Wrong-File-6a",
                false,
            )
        },
        case(
            "unreachable server",
            "postgres://carol:{PW}@127.0.0.1:1/postgres",
            "Unreached-7b",
            false,
        ),
        // Strings that do not parse: the error must not quote the password.
        case(
            "parse error after the password",
            "password={PW} colour=blue",
            "Parse-Err-8c",
            false,
        ),
        case(
            "unterminated quoted password",
            "host=h password='{PW}",
            "Unterminated-9d",
            false,
        ),
        case(
            "unquoted password with a blank",
            "host=h password=Blank {PW}",
            "Half-Secret-0e",
            false,
        ),
        case(
            "bad percent-encoding in the password",
            "postgres://carol:{PW}%zz@h/db",
            "Bad-Percent-1f",
            false,
        ),
        case(
            "bad query after a query password",
            "postgres://h/db?password={PW}&colour=x",
            "Query-Err-2a",
            false,
        ),
        case(
            "extra = in a query password",
            "postgres://h/db?password={PW}=x",
            "Extra-Eq-3b",
            false,
        ),
    ]
}

#[test]
fn no_rendering_shows_a_password() {
    if let Ok(dsn) = std::env::var(CHILD_DSN) {
        child(&dsn);
        return;
    }
    let server = TestServer::start_private();
    let mut admin = server.admin();
    admin
        .batch_execute(&format!("CREATE ROLE carol LOGIN PASSWORD '{RIGHT}'"))
        .expect("create role");
    let hba = server
        .dir()
        .expect("private")
        .join("data")
        .join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all carol 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .expect("write pg_hba.conf");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
    // The reload is asynchronous: wait until carol is asked for a password
    // (a password-less connection is refused), not for a fixed time.
    let passwordless = format!(
        "host=127.0.0.1 port={} user=carol dbname=postgres",
        server.port()
    );
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || {
            postgres::Client::connect(&passwordless, postgres::NoTls).is_err()
        }),
        "pg_hba.conf was not reloaded"
    );

    let work = std::env::temp_dir().join(format!("pgtx-secrets-{}", std::process::id()));
    for (n, case) in cases().iter().enumerate() {
        let home = work.join(n.to_string());
        std::fs::create_dir_all(&home).expect("home");
        let fill = |s: &str| {
            s.replace("{P}", &server.port().to_string())
                .replace("{PW}", case.secret)
        };
        if let Some(text) = case.pgpass {
            let path = home.join(".pgpass");
            std::fs::write(&path, fill(text)).expect("write .pgpass");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let home = home.to_string_lossy().into_owned();
        let mut env = vec![
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".to_owned(), home.clone()),
            ("PGSYSCONFDIR".to_owned(), home),
        ];
        env.extend(case.env.iter().map(|(k, v)| ((*k).to_owned(), fill(v))));
        env.push((CHILD_DSN.to_owned(), fill(case.dsn)));
        let out = common::rerun_test(TEST_NAME, env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: child failed:\n{stdout}\n{stderr}",
            case.name
        );
        // The child did render things, and connected (or not) as expected.
        let outcome = if case.connects {
            "CONNECTED"
        } else {
            "NOT CONNECTED"
        };
        assert!(
            stdout.contains(&format!("\n{outcome}\n")),
            "{}: expected {outcome}:\n{stdout}",
            case.name
        );
        assert!(stdout.contains("RENDERED"), "{}:\n{stdout}", case.name);
        for secret in [case.secret, &case.secret.replace(' ', "\\ ")] {
            for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
                assert!(
                    !text.contains(secret),
                    "{}: the password {secret:?} appears in the child's {what}:\n{text}",
                    case.name
                );
            }
        }
        // Half of a password written without quotes is still a secret.
        for part in case.secret.split(' ') {
            assert!(
                !stdout.contains(part) || part.len() < 4,
                "{}: {part:?} shown",
                case.name
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Collects every log record, at every level.
struct Capture(Mutex<String>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            text,
            "log {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGS: Capture = Capture(Mutex::new(String::new()));

/// The child: render everything about `dsn`.
fn child(dsn: &str) {
    log::set_logger(&LOGS).expect("logger");
    log::set_max_level(log::LevelFilter::Trace);
    let mut out = String::from("\n");
    match pgtx::Settings::parse(dsn) {
        Ok(settings) => {
            let _ = writeln!(
                out,
                "settings {settings} / {settings:?} / {:?}",
                settings.get("password")
            );
        }
        Err(e) => {
            let _ = writeln!(out, "parse error {e} / {e:?}");
        }
    }
    let builder = pgtx::ManagedConnection::builder(dsn);
    let _ = writeln!(out, "builder {builder:?}");
    match builder.build() {
        Ok(manager) => {
            let _ = writeln!(out, "manager {manager} / {manager:?}");
            match manager.lock() {
                Ok(mut guard) => {
                    let row = guard.query_one("SELECT current_user::text", &[]);
                    let _ = writeln!(
                        out,
                        "guard {guard:?} / {:?}",
                        row.map(|r| r.get::<_, String>(0))
                    );
                    let _ = writeln!(out, "status {} / {:?}", guard.status(), guard.status());
                    match guard.begin() {
                        Ok(mut tx) => {
                            let _ = writeln!(out, "tx {tx:?}");
                            match tx.savepoint() {
                                Ok(mut sp) => {
                                    let _ = writeln!(out, "savepoint {sp:?}");
                                    let refused = sp.execute("COMMIT", &[]);
                                    let _ = writeln!(out, "refused {refused:?}");
                                    let failed = sp.execute("SELECT 1/0", &[]);
                                    let _ = writeln!(out, "failed {failed:?}");
                                    match sp.rollback() {
                                        Ok(done) => {
                                            let _ = writeln!(out, "savepoint {done:?}");
                                        }
                                        Err(e) => {
                                            let _ = writeln!(out, "savepoint error {e} / {e:?}");
                                        }
                                    }
                                }
                                Err(e) => {
                                    let _ = writeln!(out, "savepoint error {e} / {e:?}");
                                }
                            }
                            let _ = writeln!(out, "tx {tx:?}");
                            match tx.rollback() {
                                Ok(done) => {
                                    let _ = writeln!(out, "tx {done:?}");
                                }
                                Err(e) => {
                                    let _ = writeln!(out, "tx error {e} / {e:?}");
                                }
                            }
                        }
                        Err(e) => {
                            let _ = writeln!(out, "begin error {e} / {e:?}");
                        }
                    }
                    let _ = writeln!(out, "manager {manager} / {manager:?}");
                    let _ = writeln!(out, "\nCONNECTED");
                }
                Err(e) => {
                    let _ = writeln!(out, "connect error {e} / {e:?} / {}", error_chain(&e));
                    let _ = writeln!(out, "\nNOT CONNECTED");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "new error {e} / {e:?} / {}", error_chain(&e));
            let _ = writeln!(out, "\nNOT CONNECTED");
        }
    }
    log::logger().flush();
    out.push_str(&LOGS.0.lock().unwrap_or_else(|e| e.into_inner()));
    out.push_str("RENDERED\n");
    println!("{out}");
}
