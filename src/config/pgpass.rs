//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), read as
//! libpq's `passwordFromFile` reads it, at each connection attempt.
//!
//! Each line is `hostname:port:database:username:password`; `*` matches
//! anything, `\` escapes `:` and `\`, lines starting with `#` are comments,
//! and the first matching line wins. A file that group or others may access
//! is ignored with a warning, as libpq does.

use std::path::Path;

/// What a connection attempt is matched against.
pub(crate) struct Lookup<'a> {
    /// The host name as given; a socket directory only matches `localhost`
    /// when it is the default one (`is_default_socket`).
    pub(crate) host: &'a str,
    pub(crate) is_default_socket: bool,
    pub(crate) port: u16,
    pub(crate) dbname: &'a str,
    pub(crate) user: &'a str,
}

/// The password for `lookup` from `file`, if the file exists, is private to
/// its owner and has a matching line.
pub(crate) fn password(file: &Path, lookup: &Lookup<'_>) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        log::warn!("password file \"{}\" is not a plain file", file.display());
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "password file \"{}\" has group or world access; permissions should be u=rw \
                 (0600) or less",
                file.display()
            );
            return None;
        }
    }
    let text = std::fs::read(file).ok()?;
    find(&String::from_utf8_lossy(&text), lookup)
}

/// The first matching line's password (empty counts as none).
fn find(text: &str, lookup: &Lookup<'_>) -> Option<String> {
    let host = if lookup.host.is_empty() || lookup.is_default_socket {
        "localhost"
    } else {
        lookup.host
    };
    let port = lookup.port.to_string();
    let wanted = [host, port.as_str(), lookup.dbname, lookup.user];
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let mut rest = line;
            for token in wanted {
                rest = matches_field(rest, token)?;
            }
            Some(unescape_password(rest))
        })
        .filter(|password| !password.is_empty())
}

/// libpq's `pwdfMatchesString`: whether the field at the start of `line`
/// matches `token`; if so, the rest of the line after the field's `:`.
fn matches_field<'l>(line: &'l str, token: &str) -> Option<&'l str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let b = line.as_bytes();
    let t = token.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < b.len() {
        let mut escaped = false;
        if b[i] == b'\\' {
            i += 1;
            escaped = true;
            if i == b.len() {
                return None;
            }
        }
        if b[i] == b':' && j == t.len() && !escaped {
            return Some(&line[i + 1..]);
        }
        if j == t.len() || b[i] != t[j] {
            return None;
        }
        i += 1;
        j += 1;
    }
    None
}

/// The password field: up to an unescaped `:`, with `\` escapes removed.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(host: &'a str, port: u16, dbname: &'a str, user: &'a str) -> Lookup<'a> {
        Lookup {
            host,
            is_default_socket: false,
            port,
            dbname,
            user,
        }
    }

    const FILE: &str = "\
# a comment
db.example:5432:app:alice:first
db.example:5432:app:alice:second
*:5433:*:bob:wild
localhost:*:*:carol:local
host\\:with\\:colons:*:*:*:esc\\:aped\\\\pw:ignored
h:*:*:empty:
h:*:*:empty:after-empty
";

    #[test]
    fn first_match_wins() {
        assert_eq!(
            find(FILE, &lookup("db.example", 5432, "app", "alice")).as_deref(),
            Some("first")
        );
    }

    #[test]
    fn wildcards_match_anything() {
        assert_eq!(
            find(FILE, &lookup("x", 5433, "y", "bob")).as_deref(),
            Some("wild")
        );
        assert_eq!(find(FILE, &lookup("x", 5432, "y", "bob")), None);
    }

    #[test]
    fn sockets_and_missing_hosts_match_localhost() {
        let mut l = lookup("/var/run/postgresql", 1, "d", "carol");
        assert_eq!(
            find(FILE, &l),
            None,
            "only the default socket directory is localhost"
        );
        l.is_default_socket = true;
        assert_eq!(find(FILE, &l).as_deref(), Some("local"));
        assert_eq!(
            find(FILE, &lookup("", 1, "d", "carol")).as_deref(),
            Some("local")
        );
    }

    #[test]
    fn escapes_in_fields_and_password() {
        assert_eq!(
            find(FILE, &lookup("host:with:colons", 1, "d", "u")).as_deref(),
            Some("esc:aped\\pw")
        );
    }

    #[test]
    fn empty_password_counts_as_none() {
        assert_eq!(find(FILE, &lookup("h", 1, "d", "empty")), None);
    }

    #[test]
    fn crlf_lines_are_read() {
        assert_eq!(
            find("h:1:d:u:pw\r\n", &lookup("h", 1, "d", "u")).as_deref(),
            Some("pw")
        );
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_file_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("pgtx-pgpass-{}", std::process::id()));
        std::fs::write(&path, "*:*:*:*:pw\n").expect("write");
        let l = lookup("h", 1, "d", "u");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(password(&path, &l).as_deref(), Some("pw"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(password(&path, &l), None);
        std::fs::remove_file(&path).expect("cleanup");
    }
}
