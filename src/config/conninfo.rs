//! Reading a connection string the way libpq's `conninfo_parse` and
//! `conninfo_uri_parse` do: `key=value` pairs with quoting and escapes, or a
//! `postgresql://` / `postgres://` URI with percent-encoding.
//!
//! Besides the options, parsing yields the string as given with every secret
//! taken out, which is how [`Settings`](super::Settings) shows itself.

use std::ops::Range;

use super::SettingsError;
use super::keywords;

/// Connection options by keyword; a later value replaces an earlier one.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    values: Vec<(&'static str, String)>,
}

impl Options {
    /// The value set for `keyword`, if any (an empty value is a value).
    pub(crate) fn get(&self, keyword: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == keyword)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `keyword`, replacing an earlier value.
    pub(crate) fn set(&mut self, keyword: &'static str, value: String) {
        match self.values.iter_mut().find(|(k, _)| *k == keyword) {
            Some(slot) => slot.1 = value,
            None => self.values.push((keyword, value)),
        }
    }

    /// Sets `keyword` only if it has no value yet.
    pub(crate) fn set_default(&mut self, keyword: &'static str, value: String) {
        if self.get(keyword).is_none() {
            self.values.push((keyword, value));
        }
    }

    /// Sets a keyword given by name, rejecting unknown ones as libpq does.
    fn store(&mut self, name: &str, value: String) -> Result<(), SettingsError> {
        let keyword = keywords::lookup(name).ok_or_else(|| {
            SettingsError::new(format!("invalid connection option \"{}\"", printable(name)))
        })?;
        self.set(keyword, value);
        Ok(())
    }

    /// Checks every value that libpq would reject when connecting.
    pub(crate) fn check(&self) -> Result<(), SettingsError> {
        self.values
            .iter()
            .try_for_each(|(k, v)| keywords::check(k, v))
    }
}

/// A parsed connection string.
pub(crate) struct Parsed {
    pub(crate) options: Options,
    /// The string as given, without secrets.
    pub(crate) shown: String,
}

/// Parses a connection string: a URI if it starts with `postgresql://` or
/// `postgres://` (exactly, as libpq checks), `key=value` pairs otherwise.
pub(crate) fn parse(s: &str) -> Result<Parsed, SettingsError> {
    for prefix in ["postgresql://", "postgres://"] {
        if s.starts_with(prefix) {
            return parse_uri(s, prefix.len());
        }
    }
    parse_key_value(s)
}

/// C's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// A keyword as it may appear in a message: control characters escaped,
/// long ones cut short.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn parse_key_value(s: &str) -> Result<Parsed, SettingsError> {
    let b = s.as_bytes();
    let mut options = Options::default();
    let mut secrets: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_space(b[i]) {
            i += 1;
            continue;
        }
        let name_start = i;
        while i < b.len() && b[i] != b'=' && !is_space(b[i]) {
            i += 1;
        }
        let name = &s[name_start..i];
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // The word may be part of a password written without quotes,
            // so say where it is rather than what it is.
            return Err(SettingsError::new(format!(
                "missing \"=\" after the word at position {} in connection info string",
                name_start + 1
            )));
        }
        i += 1;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            let quote_at = i;
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(SettingsError::new(format!(
                        "unterminated quoted string for \"{}\" starting at position {} in \
                         connection info string",
                        printable(name),
                        quote_at + 1
                    )));
                }
                match b[i] {
                    b'\\' => {
                        i += 1;
                        if i < b.len() {
                            value.push(b[i]);
                            i += 1;
                        }
                    }
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() {
                match b[i] {
                    c if is_space(c) => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        i += 1;
                        if i < b.len() {
                            value.push(b[i]);
                            i += 1;
                        }
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        }
        // Only ASCII bytes were dropped, so the value is still UTF-8.
        let value = String::from_utf8_lossy(&value).into_owned();
        options.store(name, value)?;
        if keywords::is_secret(name) {
            let mut end = i;
            while end < b.len() && is_space(b[end]) {
                end += 1;
            }
            let mut start = name_start;
            if end == b.len() {
                while start > 0 && is_space(b[start - 1]) {
                    start -= 1;
                }
            }
            secrets.push(start..end);
        }
    }
    options.check()?;
    let mut shown = String::with_capacity(s.len());
    let mut at = 0;
    for span in &secrets {
        shown.push_str(&s[at..span.start]);
        at = span.end;
    }
    shown.push_str(&s[at..]);
    Ok(Parsed { options, shown })
}

/// libpq's `conninfo_uri_decode`: `%XX` escapes, no `+` for space, `%00`
/// forbidden. `at` is the position of `s` in the whole string, for messages.
fn percent_decode(s: &str, at: usize, what: &str) -> Result<String, SettingsError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let digits =
                (b.get(i + 1).copied().and_then(hex)).zip(b.get(i + 2).copied().and_then(hex));
            let Some((hi, lo)) = digits else {
                return Err(SettingsError::new(format!(
                    "invalid percent-encoded token at position {} in the {what} of the URI",
                    at + i + 1
                )));
            };
            let byte = (hi * 16 + lo) as u8;
            if byte == 0 {
                return Err(SettingsError::new(format!(
                    "forbidden value %00 at position {} in the {what} of the URI",
                    at + i + 1
                )));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        SettingsError::new(format!(
            "the {what} of the URI at position {} is not valid UTF-8 once percent-decoded",
            at + 1
        ))
    })
}

fn parse_uri(s: &str, prefix_len: usize) -> Result<Parsed, SettingsError> {
    let b = s.as_bytes();
    let mut options = Options::default();
    let mut shown = String::from(&s[..prefix_len]);
    let start = prefix_len;

    // Credentials: everything before an '@' that comes before any '/'.
    let mut p = start;
    while p < b.len() && b[p] != b'@' && b[p] != b'/' {
        p += 1;
    }
    if p < b.len() && b[p] == b'@' {
        let at = p;
        let mut q = start;
        while b[q] != b':' && b[q] != b'@' {
            q += 1;
        }
        let user = percent_decode(&s[start..q], start, "user name")?;
        if !user.is_empty() {
            options.set("user", user);
        }
        shown.push_str(&s[start..q]);
        if b[q] == b':' {
            let password = percent_decode(&s[q + 1..at], q + 1, "password")?;
            if !password.is_empty() {
                options.set("password", password);
            }
        }
        shown.push('@');
        p = at + 1;
    } else {
        p = start;
    }

    // Hosts and ports: host[:port][,host[:port]]..., IPv6 in brackets.
    let netloc_start = p;
    let mut hosts = String::new();
    let mut ports = String::new();
    let terminator = loop {
        if p < b.len() && b[p] == b'[' {
            let open = p;
            p += 1;
            let host_start = p;
            while p < b.len() && b[p] != b']' {
                p += 1;
            }
            if p >= b.len() {
                return Err(SettingsError::new(format!(
                    "end of string reached when looking for the \"]\" matching the \"[\" at \
                     position {} in the URI",
                    open + 1
                )));
            }
            if p == host_start {
                return Err(SettingsError::new(format!(
                    "IPv6 host address may not be empty (position {} in the URI)",
                    open + 1
                )));
            }
            hosts.push_str(&percent_decode(&s[host_start..p], host_start, "host")?);
            p += 1;
            if p < b.len() && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                return Err(SettingsError::new(format!(
                    "unexpected character {:?} at position {} in the URI (expected \":\", \
                     \"/\", \"?\" or \",\")",
                    s[p..].chars().next().unwrap_or_default(),
                    p + 1
                )));
            }
        } else {
            let host_start = p;
            while p < b.len() && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                p += 1;
            }
            hosts.push_str(&percent_decode(&s[host_start..p], host_start, "host")?);
        }
        if p < b.len() && b[p] == b':' {
            p += 1;
            let port_start = p;
            while p < b.len() && !matches!(b[p], b'/' | b'?' | b',') {
                p += 1;
            }
            ports.push_str(&percent_decode(&s[port_start..p], port_start, "port")?);
        }
        match b.get(p) {
            Some(b',') => {
                p += 1;
                hosts.push(',');
                ports.push(',');
            }
            other => break other.copied(),
        }
    };
    if !hosts.is_empty() {
        options.set("host", hosts);
    }
    if !ports.is_empty() {
        options.set("port", ports);
    }

    // Database name: after '/', up to '?'.
    let mut terminator = terminator;
    if terminator == Some(b'/') {
        p += 1;
        let db_start = p;
        while p < b.len() && b[p] != b'?' {
            p += 1;
        }
        // An empty name is not set at all, so PGDATABASE still applies.
        if p > db_start {
            options.set(
                "dbname",
                percent_decode(&s[db_start..p], db_start, "database name")?,
            );
        }
        terminator = b.get(p).copied();
    }
    shown.push_str(&s[netloc_start..p]);

    // Query parameters: key=value&key=value.
    if terminator.is_some() {
        p += 1;
        let query_start = p;
        let mut removed = false;
        let mut kept: Vec<&str> = Vec::new();
        while p < b.len() {
            let param_start = p;
            let mut eq = None;
            while p < b.len() && b[p] != b'&' {
                if b[p] == b'=' {
                    if eq.is_some() {
                        return Err(SettingsError::new(format!(
                            "extra key/value separator \"=\" at position {} in a URI query \
                             parameter",
                            p + 1
                        )));
                    }
                    eq = Some(p);
                }
                p += 1;
            }
            let Some(eq) = eq else {
                return Err(SettingsError::new(format!(
                    "missing key/value separator \"=\" in the URI query parameter at position {}",
                    param_start + 1
                )));
            };
            let mut key = percent_decode(&s[param_start..eq], param_start, "query")?;
            let mut value = percent_decode(&s[eq + 1..p], eq + 1, "query")?;
            // libpq's nod to JDBC.
            if key == "ssl" && value == "true" {
                key = "sslmode".into();
                value = "require".into();
            }
            let keyword = keywords::lookup(&key).ok_or_else(|| {
                SettingsError::new(format!(
                    "invalid URI query parameter: \"{}\"",
                    printable(&key)
                ))
            })?;
            if keywords::is_secret(keyword) {
                removed = true;
            } else {
                kept.push(&s[param_start..p]);
            }
            options.set(keyword, value);
            if p < b.len() {
                p += 1;
            }
        }
        if !removed {
            shown.push_str(&s[query_start - 1..]);
        } else if !kept.is_empty() {
            shown.push('?');
            shown.push_str(&kept.join("&"));
        }
    }
    options.check()?;
    Ok(Parsed { options, shown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Vec<(&'static str, String)> {
        let mut v = parse(s).expect("parses").options.values;
        v.sort();
        v
    }

    fn pairs(p: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut v: Vec<_> = p.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        v.sort();
        v
    }

    fn error(s: &str) -> String {
        match parse(s) {
            Ok(_) => panic!("{s:?} should not parse"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn key_value_with_quotes_escapes_and_blanks() {
        assert_eq!(
            opts(r"host = db  user='o\'brien' password=a\ b dbname='x y'"),
            pairs(&[
                ("host", "db"),
                ("user", "o'brien"),
                ("password", "a b"),
                ("dbname", "x y")
            ])
        );
    }

    #[test]
    fn quoted_value_may_be_followed_directly_by_the_next_keyword() {
        assert_eq!(
            opts("dbname='a'user=b"),
            pairs(&[("dbname", "a"), ("user", "b")])
        );
    }

    #[test]
    fn later_keyword_wins_and_empty_values_count() {
        assert_eq!(
            opts("port=1 port=2 host="),
            pairs(&[("port", "2"), ("host", "")])
        );
    }

    #[test]
    fn empty_string_sets_nothing() {
        assert!(opts("").is_empty());
        assert!(opts("  \t\n").is_empty());
    }

    #[test]
    fn key_value_errors_name_the_key_or_position() {
        assert!(error("host=x colour=blue").contains("\"colour\""));
        assert!(error("HOST=x").contains("\"HOST\""));
        assert!(error("host=x lonely").contains("position 8"));
        assert!(error("password='abc").contains("\"password\" starting at position 10"));
        assert!(error("port=abc").contains("invalid integer value \"abc\""));
        assert!(error("port=70000").contains("invalid port number: \"70000\""));
        assert!(error("sslmode=maybe").contains("invalid sslmode value"));
    }

    #[test]
    fn uri_with_everything() {
        assert_eq!(
            opts(
                "postgresql://us%40er:p%3Aw@h1:5433,[::1]:5434,h3/my%20db?sslmode=disable&application_name=x"
            ),
            pairs(&[
                ("user", "us@er"),
                ("password", "p:w"),
                ("host", "h1,::1,h3"),
                ("port", "5433,5434,"),
                ("dbname", "my db"),
                ("sslmode", "disable"),
                ("application_name", "x"),
            ])
        );
    }

    #[test]
    fn uri_with_empty_parts() {
        assert!(opts("postgres://").is_empty());
        assert!(opts("postgres:///").is_empty());
        assert_eq!(
            opts("postgres:///postgres"),
            pairs(&[("dbname", "postgres")])
        );
        assert_eq!(opts("postgres://:5433"), pairs(&[("port", "5433")]));
        assert_eq!(opts("postgres://u@"), pairs(&[("user", "u")]));
        assert_eq!(
            opts("postgres://%2Ftmp%2Fsock/db"),
            pairs(&[("host", "/tmp/sock"), ("dbname", "db")])
        );
        assert_eq!(
            opts("postgres://h?host=%2Fvar%2Frun"),
            pairs(&[("host", "/var/run")])
        );
        assert_eq!(
            opts("postgres://h?ssl=true"),
            pairs(&[("host", "h"), ("sslmode", "require")])
        );
    }

    #[test]
    fn uri_errors_name_the_position() {
        assert!(error("postgres://[::1").contains("\"]\""));
        assert!(error("postgres://[]/db").contains("may not be empty"));
        assert!(error("postgres://[::1]x").contains("position 17"));
        assert!(error("postgres://h/db?x").contains("position 17"));
        assert!(error("postgres://h/db?a=b=c").contains("extra key/value separator"));
        assert!(error("postgres://h/db?colour=red").contains("\"colour\""));
        assert!(error("postgres://h/d%zz").contains("position 15"));
        assert!(error("postgres://h/d%00").contains("%00"));
        assert!(error("postgres://h:x/db").contains("invalid integer value \"x\""));
    }

    #[test]
    fn shown_string_has_no_secrets() {
        let cases = [
            (
                "postgres://alice:s3cret@db:5433/app?password=s3cret&sslmode=disable",
                "postgres://alice@db:5433/app?sslmode=disable",
            ),
            ("postgres://:s3cret@db", "postgres://@db"),
            ("postgres://db/app?password=s3cret", "postgres://db/app"),
            (
                "postgres://db/app?pass%77ord=s3cret&sslmode=disable",
                "postgres://db/app?sslmode=disable",
            ),
            (
                "host=localhost password='a b s3cret' user=bob",
                "host=localhost user=bob",
            ),
            ("host=localhost password = s3cret", "host=localhost"),
            ("password=s3cret", ""),
            ("sslpassword=s3cret host=h", "host=h"),
            ("postgres:///postgres", "postgres:///postgres"),
        ];
        for (dsn, want) in cases {
            assert_eq!(parse(dsn).expect("parses").shown, want, "{dsn}");
        }
    }
}
