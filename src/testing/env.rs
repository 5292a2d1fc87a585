//! An existing server named by `DATABASE_URL` or the `PG*` variables.

use super::{Kind, TestServer};

/// Environment variables that make [`TestServer::shared`] use an existing
/// server instead of starting one.
pub(super) const EXTERNAL_VARS: &[&str] = &[
    "DATABASE_URL",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
];

/// Quotes a value for a key=value connection string if needed.
pub(super) fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_owned();
    }
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The external server named by `DATABASE_URL` / `PG*` variables, if any is
/// set. `DATABASE_URL` wins; fields it leaves out come from `PG*` variables,
/// then libpq-like defaults.
pub(super) fn external_from_env() -> Option<Result<TestServer, String>> {
    if !EXTERNAL_VARS.iter().any(|v| env_nonempty(v).is_some()) {
        return None;
    }
    let mut host = None;
    let mut port = None;
    let mut user = None;
    let mut password = None;
    let mut dbname = None;
    let mut source = "PG* environment variables";
    if let Some(url) = env_nonempty("DATABASE_URL") {
        source = "DATABASE_URL";
        let config: postgres::Config = match url.parse() {
            Ok(c) => c,
            // The error text may echo the URL; don't print it (password).
            Err(_) => return Some(Err("DATABASE_URL is not a valid connection string".into())),
        };
        host = config.get_hosts().first().map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.to_string_lossy().into_owned(),
        });
        port = config.get_ports().first().copied();
        user = config.get_user().map(str::to_owned);
        password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        dbname = config.get_dbname().map(str::to_owned);
    }
    let host = host
        .or_else(|| env_nonempty("PGHOST"))
        .unwrap_or_else(|| "localhost".into());
    let port = match port {
        Some(p) => p,
        None => match env_nonempty("PGPORT") {
            Some(p) => match p.parse() {
                Ok(p) => p,
                Err(_) => return Some(Err(format!("PGPORT={p} is not a port number"))),
            },
            None => 5432,
        },
    };
    let user = user
        .or_else(|| env_nonempty("PGUSER"))
        .or_else(|| env_nonempty("USER"))
        .unwrap_or_else(|| "postgres".into());
    let password = password.or_else(|| env_nonempty("PGPASSWORD"));
    let dbname = dbname
        .or_else(|| env_nonempty("PGDATABASE"))
        .unwrap_or_else(|| user.clone());
    Some(Ok(TestServer {
        host,
        port,
        user,
        password,
        dbname,
        kind: Kind::External { source },
    }))
}
