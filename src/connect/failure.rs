//! What a failed attempt says: one line of [`ConnectError`](crate::ConnectError),
//! in libpq's words (`fe-connect.c`), made from the server tried and the
//! reason only, so that no password can show up.

use std::fmt;
use std::io;

use super::Cause;
use super::socket::Endpoint;
use crate::config::{Host, Target};
use crate::error::Attempt;

/// The host name of `target` could not be resolved.
pub(super) fn unresolved(target: &Target, cause: io::Error) -> Attempt {
    let name = match &target.host {
        Host::Tcp { name, .. } => name.as_str(),
        Host::Socket { .. } => "",
    };
    // std prefixes getaddrinfo's own words (which libpq shows) with this.
    let text = cause.to_string();
    let reason = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    let line = format!("could not translate host name \"{name}\" to address: {reason}");
    Attempt::new(line, Box::new(cause))
}

/// A failed attempt at `endpoint` of `target`, worded as libpq words it
/// (`emitHostIdentityInfo` in `fe-connect.c`): see [`ConnectError`](crate::ConnectError).
pub(super) fn failed(target: &Target, endpoint: &Endpoint, cause: Cause) -> Attempt {
    let server = match (endpoint, &target.host) {
        (Endpoint::Unix(path), _) => format!("on socket \"{}\"", path.display()),
        (Endpoint::Tcp(addr), Host::Tcp { name, addr: None }) if *name != addr.ip().to_string() => {
            format!("at \"{name}\" ({}), port {}", addr.ip(), addr.port())
        }
        (Endpoint::Tcp(addr), _) => format!("at \"{}\", port {}", addr.ip(), addr.port()),
    };
    let line = format!("connection to server {server} failed: {}", reason(&*cause));
    Attempt::new(line, cause)
}

/// What went wrong, in libpq's words where they differ from the error's own.
fn reason(cause: &(dyn std::error::Error + 'static)) -> String {
    if let Some(e) = cause.downcast_ref::<io::Error>() {
        return io_text(e);
    }
    let Some(e) = cause.downcast_ref::<postgres::Error>() else {
        return cause.to_string();
    };
    if let Some(db) = e.as_db_error() {
        // libpq's "FATAL:  password authentication failed for user …".
        return format!("{}:  {}", db.severity(), db.message());
    }
    // tokio-postgres leaves its cause out of its own message.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        match s.downcast_ref::<io::Error>() {
            Some(io) => text.push_str(&io_text(io)),
            None => text.push_str(&s.to_string()),
        }
        source = s.source();
    }
    text
}

/// The system's words for an OS error ("Connection refused"), without the
/// " (os error 111)" that Rust adds.
fn io_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}

/// `sslmode` asked for TLS and the server answered the SSL request with
/// "no".
#[derive(Debug)]
pub(super) struct TlsRefused(pub(super) postgres::Error);

impl fmt::Display for TlsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server does not support SSL, but SSL was required")
    }
}

impl std::error::Error for TlsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::path::PathBuf;

    use super::*;

    fn tcp(name: &str, hostaddr: Option<IpAddr>) -> Target {
        Target {
            host: Host::Tcp {
                name: name.into(),
                addr: hostaddr,
            },
            port: 5433,
        }
    }

    fn refused() -> Cause {
        Box::new(io::Error::from_raw_os_error(
            nix::errno::Errno::ECONNREFUSED as i32,
        ))
    }

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn a_name_is_shown_with_the_address_it_resolved_to() {
        let at = Endpoint::Tcp(SocketAddr::new(LOCAL, 5433));
        let line = failed(&tcp("db.example", None), &at, refused()).to_string();
        assert_eq!(
            line,
            "connection to server at \"db.example\" (127.0.0.1), port 5433 failed: Connection refused"
        );
        let line = failed(&tcp("127.0.0.1", None), &at, refused()).to_string();
        assert_eq!(
            line,
            "connection to server at \"127.0.0.1\", port 5433 failed: Connection refused"
        );
    }

    #[test]
    fn a_hostaddr_is_shown_instead_of_the_name() {
        let at = Endpoint::Tcp(SocketAddr::new(LOCAL, 5433));
        let line = failed(&tcp("db.example", Some(LOCAL)), &at, refused()).to_string();
        assert_eq!(
            line,
            "connection to server at \"127.0.0.1\", port 5433 failed: Connection refused"
        );
    }

    #[test]
    fn a_socket_is_shown_by_its_path() {
        let target = Target {
            host: Host::Socket {
                dir: PathBuf::from("/run/pg"),
                default: false,
            },
            port: 5433,
        };
        let at = Endpoint::Unix(PathBuf::from("/run/pg/.s.PGSQL.5433"));
        let cause = Box::new(io::Error::from_raw_os_error(
            nix::errno::Errno::ENOENT as i32,
        ));
        assert_eq!(
            failed(&target, &at, cause).to_string(),
            "connection to server on socket \"/run/pg/.s.PGSQL.5433\" failed: \
             No such file or directory"
        );
    }

    #[test]
    fn an_error_without_an_os_code_keeps_its_own_words() {
        let at = Endpoint::Tcp(SocketAddr::new(LOCAL, 5433));
        let cause = Box::new(io::Error::new(io::ErrorKind::TimedOut, "timeout expired"));
        assert_eq!(
            failed(&tcp("127.0.0.1", None), &at, cause).to_string(),
            "connection to server at \"127.0.0.1\", port 5433 failed: timeout expired"
        );
    }
}
