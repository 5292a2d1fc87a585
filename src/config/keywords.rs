//! libpq's connection keywords, the environment variable behind each, and
//! the checks libpq makes on their values.

use super::SettingsError;

/// One connection keyword as libpq 15 knows it.
pub(crate) struct Keyword {
    /// The keyword, case-sensitive as in libpq.
    pub(crate) name: &'static str,
    /// The environment variable that supplies it when nothing else does.
    pub(crate) env: Option<&'static str>,
}

const fn kw(name: &'static str, env: Option<&'static str>) -> Keyword {
    Keyword { name, env }
}

/// libpq 15's keywords (`PQconndefaults`), plus `load_balance_hosts` from 16.
/// libpq has no environment variables for the keepalive settings.
pub(crate) const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE")),
    kw("user", Some("PGUSER")),
    kw("password", Some("PGPASSWORD")),
    kw("passfile", Some("PGPASSFILE")),
    kw("channel_binding", Some("PGCHANNELBINDING")),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    kw("dbname", Some("PGDATABASE")),
    kw("host", Some("PGHOST")),
    kw("hostaddr", Some("PGHOSTADDR")),
    kw("port", Some("PGPORT")),
    kw("client_encoding", Some("PGCLIENTENCODING")),
    kw("options", Some("PGOPTIONS")),
    kw("application_name", Some("PGAPPNAME")),
    kw("fallback_application_name", None),
    kw("keepalives", None),
    kw("keepalives_idle", None),
    kw("keepalives_interval", None),
    kw("keepalives_count", None),
    kw("tcp_user_timeout", None),
    kw("sslmode", Some("PGSSLMODE")),
    kw("sslcompression", Some("PGSSLCOMPRESSION")),
    kw("sslcert", Some("PGSSLCERT")),
    kw("sslkey", Some("PGSSLKEY")),
    kw("sslpassword", None),
    kw("sslrootcert", Some("PGSSLROOTCERT")),
    kw("sslcrl", Some("PGSSLCRL")),
    kw("sslcrldir", Some("PGSSLCRLDIR")),
    kw("sslsni", Some("PGSSLSNI")),
    kw("requirepeer", Some("PGREQUIREPEER")),
    kw("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    kw("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    kw("gssencmode", Some("PGGSSENCMODE")),
    kw("krbsrvname", Some("PGKRBSRVNAME")),
    kw("gsslib", Some("PGGSSLIB")),
    kw("replication", None),
    kw("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    kw("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
];

/// The canonical (static) spelling of a known keyword.
pub(crate) fn lookup(name: &str) -> Option<&'static str> {
    KEYWORDS.iter().find(|k| k.name == name).map(|k| k.name)
}

/// Keywords whose values are secrets: never shown, never put in a message.
pub(crate) fn is_secret(name: &str) -> bool {
    matches!(name, "password" | "sslpassword")
}

/// Checks the value of one keyword the way libpq does when it connects, so
/// that a bad value is reported when the settings are read. Messages follow
/// libpq's wording and never quote a secret.
pub(crate) fn check(name: &str, value: &str) -> Result<(), SettingsError> {
    let allowed: &[&str] = match name {
        "sslmode" => &[
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ],
        "channel_binding" => &["disable", "prefer", "require"],
        "gssencmode" => &["disable", "prefer", "require"],
        "target_session_attrs" => &[
            "any",
            "read-write",
            "read-only",
            "primary",
            "standby",
            "prefer-standby",
        ],
        "load_balance_hosts" => &["disable", "random"],
        "port" => {
            for port in value.split(',') {
                parse_port(port)?;
            }
            return Ok(());
        }
        "hostaddr" => {
            for addr in value.split(',') {
                parse_hostaddr(addr)?;
            }
            return Ok(());
        }
        "connect_timeout"
        | "keepalives"
        | "keepalives_idle"
        | "keepalives_interval"
        | "keepalives_count"
        | "tcp_user_timeout" => {
            if !value.is_empty() {
                parse_int(name, value)?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(SettingsError::new(format!(
            "invalid {name} value: \"{value}\" (expected one of: {})",
            allowed.join(", ")
        )))
    }
}

/// libpq's `parse_int_param`: an integer, blanks allowed around it.
pub(crate) fn parse_int(name: &str, value: &str) -> Result<i64, SettingsError> {
    value
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .parse::<i32>()
        .map(i64::from)
        .map_err(|_| {
            SettingsError::new(format!(
                "invalid integer value \"{value}\" for connection option \"{name}\""
            ))
        })
}

/// One entry of a `port` list; empty means the default, 5432.
pub(crate) fn parse_port(value: &str) -> Result<u16, SettingsError> {
    if value.is_empty() {
        return Ok(5432);
    }
    let n = parse_int("port", value)?;
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| SettingsError::new(format!("invalid port number: \"{value}\"")))
}

/// One entry of a `hostaddr` list; empty means "use host".
pub(crate) fn parse_hostaddr(value: &str) -> Result<Option<std::net::IpAddr>, SettingsError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| SettingsError::new(format!("could not parse network address \"{value}\"")))
}
