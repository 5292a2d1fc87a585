//! TLS for real: a private server with `ssl=on` and a certificate authority
//! made by this test (with the `openssl` command), and every `sslmode`.
//! `verify-full` must refuse a server whose certificate does not name the
//! host; psql (libpq) is asked the same and must agree.
#![cfg(feature = "tls")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::server::{TestServer, assert_says_each_thing_once, error_chain};

/// The server, its certificate files and a second, unrelated authority.
struct Setup {
    server: TestServer,
    certs: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command is needed for the TLS tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair and a certificate for `subject` signed by `ca` (self-signed
/// when `ca` is `None`).
fn certificate(dir: &Path, name: &str, subject: &str, ca: Option<&str>, extensions: &str) {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), extensions).expect("write extensions");
    // A new P-256 key, unencrypted, written to `key`.
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
    ];
    match ca {
        None => {
            let mut args = vec!["req", "-x509"];
            args.extend(new_key);
            args.extend([
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                subject,
                "-extensions",
                "v3",
                "-config",
                &ext,
            ]);
            openssl(dir, &args);
        }
        Some(ca) => {
            let csr = format!("{name}.csr");
            let mut args = vec!["req"];
            args.extend(new_key);
            args.extend(["-out", &csr, "-subj", subject]);
            openssl(dir, &args);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                    "-extensions",
                    "v3",
                ],
            );
        }
    }
}

const CA_EXT: &str = "[req]\ndistinguished_name=dn\n[dn]\n[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n";
const SERVER_EXT: &str = "[v3]\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n";
const CLIENT_EXT: &str = "[v3]\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

fn setup() -> Setup {
    let server = TestServer::start_private();
    // One directory per setup: tests running side by side each make their own CA.
    static SETUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SETUPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let certs = std::env::temp_dir().join(format!("pgtx-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&certs).expect("certificate directory");
    certificate(&certs, "ca", "/CN=pgtx test CA", None, CA_EXT);
    certificate(&certs, "other-ca", "/CN=pgtx unrelated CA", None, CA_EXT);
    certificate(&certs, "server", "/CN=localhost", Some("ca"), SERVER_EXT);
    certificate(&certs, "dave", "/CN=dave", Some("ca"), CLIENT_EXT);

    // The server's files go into its own directory, owned by its OS user.
    let dir = server.dir().expect("private cluster");
    for file in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(certs.join(file), dir.join(file)).expect("copy certificate");
    }
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        for file in ["server.crt", "server.key", "ca.crt"] {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(dir.join(file))
                .status()
                .expect("chown");
            assert!(status.success());
        }
    }
    let hba = dir.join("data").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "hostssl all dave 127.0.0.1/32 cert\n\
             hostnossl all tlsonly 127.0.0.1/32 reject\n{old}"
        ),
    )
    .expect("write pg_hba.conf");
    let mut admin = server.admin();
    for statement in [
        "CREATE ROLE dave LOGIN".to_owned(),
        "CREATE ROLE tlsonly LOGIN".to_owned(),
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server.key").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_ca_file = '{}'",
            dir.join("ca.crt").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).expect(&statement);
    }
    // Wait until TLS is on.
    for _ in 0..100 {
        let on: String = admin.query_one("SHOW ssl", &[]).expect("SHOW ssl").get(0);
        if on == "on" {
            return Setup { server, certs };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("ssl did not turn on: {}", server.log());
}

impl Setup {
    fn dsn(&self, extra: &str) -> String {
        format!(
            "port={} dbname=postgres sslcert={} {extra}",
            self.server.port(),
            self.certs.join("absent.crt").display()
        )
    }

    fn file(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }

    /// Connects with pgtx: whether the session uses TLS, or the error.
    ///
    /// It asks inside a transaction, so that `BEGIN`, which travels with the
    /// first statement (slipped into the stream above TLS), is checked on
    /// every kind of connection too: both statements must see one
    /// transaction id.
    fn pgtx(&self, dsn: &str) -> Result<bool, pgtx::Error> {
        let manager = pgtx::ManagedConnection::new(dsn)?;
        manager.transaction(|mut tx| {
            let row = tx.query_one(
                "SELECT ssl, pg_current_xact_id()::text FROM pg_stat_ssl
                 WHERE pid = pg_backend_pid()",
                &[],
            )?;
            let again: String = tx
                .query_one("SELECT pg_current_xact_id()::text", &[])?
                .get(0);
            assert_eq!(row.get::<_, String>(1), again, "one transaction for both");
            Ok(tx.commit()?.returning(row.get(0)))
        })
    }

    /// Whether psql (libpq) connects with `dsn`.
    fn psql_connects(&self, dsn: &str) -> bool {
        let psql = self.server.bin("psql").expect("psql");
        Command::new(psql)
            .args(["-X", "-w", "-At", "-c", "select 1", dsn])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run psql")
            .success()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.certs);
    }
}

#[test]
fn every_sslmode_against_a_tls_server() {
    let s = setup();
    let ca = s.file("ca.crt");
    let other = s.file("other-ca.crt");
    let absent = s.file("absent-root.crt");
    let ok = |dsn: String, tls: bool| {
        match s.pgtx(&dsn) {
            Ok(used) => assert_eq!(used, tls, "{dsn}: TLS in use"),
            Err(e) => panic!("{dsn}: {}", error_chain(&e)),
        }
        assert!(s.psql_connects(&dsn), "psql disagrees: {dsn}");
    };
    let refused = |dsn: String| -> pgtx::Error {
        let e = s.pgtx(&dsn).expect_err(&dsn);
        // Refused before any statement ran: when connecting (TLS, the
        // server) or, as libpq does for a missing root file, when reading
        // the settings; never a session that got in and failed later.
        assert!(
            matches!(e, pgtx::Error::Connect(_) | pgtx::Error::Settings(_)),
            "{dsn}: {}",
            error_chain(&e)
        );
        assert!(!s.psql_connects(&dsn), "psql connects with {dsn}");
        // The whole chain says each thing once (issue 18, item 6).
        assert_says_each_thing_once(&e);
        e
    };

    ok(s.dsn("host=127.0.0.1 user=postgres sslmode=disable"), false);
    ok(
        s.dsn(&format!(
            "host=127.0.0.1 user=postgres sslmode=prefer sslrootcert={absent}"
        )),
        true,
    );
    ok(
        s.dsn(&format!(
            "host=127.0.0.1 user=postgres sslmode=require sslrootcert={absent}"
        )),
        true,
    );
    // allow tries without TLS first; this role is refused that way.
    ok(
        s.dsn(&format!(
            "host=127.0.0.1 user=tlsonly sslmode=allow sslrootcert={absent}"
        )),
        true,
    );
    ok(s.dsn("host=127.0.0.1 user=postgres sslmode=allow"), false);
    ok(
        s.dsn(&format!(
            "host=127.0.0.1 user=postgres sslmode=verify-ca sslrootcert={ca}"
        )),
        true,
    );
    ok(
        s.dsn(&format!(
            "host=localhost user=postgres sslmode=verify-full sslrootcert={ca}"
        )),
        true,
    );
    ok(
        s.dsn(&format!(
            "host=127.0.0.1 user=postgres sslmode=verify-full sslrootcert={ca}"
        )),
        true,
    );
    // verify-ca does not look at the name.
    ok(
        s.dsn(&format!(
            "host=wrong.example hostaddr=127.0.0.1 user=postgres sslmode=verify-ca sslrootcert={ca}"
        )),
        true,
    );
    // A root certificate file makes require check the chain, as in libpq.
    refused(s.dsn(&format!(
        "host=127.0.0.1 user=postgres sslmode=require sslrootcert={other}"
    )));

    // verify-full refuses a certificate that does not name the host.
    let e = refused(s.dsn(&format!(
        "host=wrong.example hostaddr=127.0.0.1 user=postgres sslmode=verify-full sslrootcert={ca}"
    )));
    assert!(matches!(e, pgtx::Error::Connect(_)), "{e:?}");
    assert!(
        error_chain(&e).contains("certificate"),
        "{}",
        error_chain(&e)
    );

    // An unrelated authority is refused.
    refused(s.dsn(&format!(
        "host=localhost user=postgres sslmode=verify-ca sslrootcert={other}"
    )));
    refused(s.dsn(&format!(
        "host=localhost user=postgres sslmode=verify-full sslrootcert={other}"
    )));

    // Verification without a root certificate is a settings error.
    let e = refused(s.dsn(&format!(
        "host=localhost user=postgres sslmode=verify-full sslrootcert={absent}"
    )));
    assert!(matches!(e, pgtx::Error::Settings(_)), "{e:?}");
    assert!(e.to_string().contains("absent-root.crt"), "{e}");

    // Client certificates: dave may log in only with his.
    let dave = s.file("dave.crt");
    let dave_key = s.file("dave.key");
    ok(
        format!(
            "host=localhost port={} user=dave dbname=postgres sslmode=verify-full \
             sslrootcert={ca} sslcert={dave} sslkey={dave_key}",
            s.server.port()
        ),
        true,
    );
    refused(s.dsn(&format!(
        "host=localhost user=dave sslmode=verify-full sslrootcert={ca}"
    )));
}

#[test]
fn a_private_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pgtx-tls-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    certificate(&dir, "ca", "/CN=key test CA", None, CA_EXT);
    certificate(&dir, "client", "/CN=client", Some("ca"), CLIENT_EXT);
    let key = dir.join("client.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // Port 1: the key is checked before anything is sent.
    let dsn = format!(
        "host=127.0.0.1 port=1 sslmode=require sslcert={} sslkey={}",
        dir.join("client.crt").display(),
        key.display()
    );
    let manager = pgtx::ManagedConnection::new(&dsn).expect("parses");
    let e = manager.lock().expect_err("a readable key is refused");
    assert!(matches!(e, pgtx::Error::Settings(_)), "{e:?}");
    assert!(e.to_string().contains("group or world access"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cancel request goes out on a socket pgtx opens itself, with the
/// TLS the connection negotiated (here verify-full, for a role the server
/// refuses without TLS), and it interrupts the statement.
#[test]
fn a_statement_on_a_tls_connection_is_cancelled() {
    let s = setup();
    let ca = s.file("ca.crt");
    let dsn = s.dsn(&format!(
        "host=localhost user=tlsonly sslmode=verify-full sslrootcert={ca}"
    ));
    let manager = pgtx::ManagedConnection::new(&dsn).expect("parses");
    let cancel = manager.cancel_handle();
    let mut admin = s.server.admin();
    let outcome = std::thread::scope(|scope| {
        scope.spawn(|| {
            let started = common::eventually(std::time::Duration::from_secs(10), || {
                admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                         WHERE a.usename = 'tlsonly' AND a.state = 'active' AND s.ssl",
                        &[],
                    )
                    .expect("pg_stat_activity")
                    .get::<_, i64>(0)
                    == 1
            });
            assert!(started, "the statement never ran over TLS");
            assert!(cancel.cancel().expect("cancel over TLS"), "it was running");
        });
        manager
            .lock()
            .expect("TLS connection")
            .execute("SELECT pg_sleep(30)", &[])
    });
    assert!(
        matches!(outcome, Err(pgtx::Error::Cancelled(_))),
        "{outcome:?}"
    );
}
