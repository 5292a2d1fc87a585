//! SQL identifiers written into statement text (`LISTEN "…"`), where a
//! bind parameter cannot go, and which names may be notification channels.

/// `name` as a quoted SQL identifier, as PostgreSQL's `quote_ident` (and
/// libpq's `PQescapeIdentifier`) write one: between double quotes, each
/// `"` doubled. Whatever `name` holds (`;`, spaces, quotes, mixed case,
/// keywords) the server reads back exactly `name`, as one identifier,
/// never as more SQL: inside a quoted identifier only `"` is special.
///
/// Quoted identifiers keep their case (`"MyChannel"` is not
/// `mychannel`), as channel names given to `pg_notify` do.
pub(crate) fn quote_identifier(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

use crate::error::{Error, Result};

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`).
pub(crate) const MAX_IDENTIFIER: usize = 63;

/// Why `name` cannot be a notification channel, if it cannot.
///
/// Refused here rather than sent: an empty quoted identifier is a syntax
/// error; a NUL cannot travel in statement text; and a name longer than
/// [`MAX_IDENTIFIER`] bytes is the worst case, because the server does not
/// refuse it everywhere: `LISTEN` and `UNLISTEN` truncate it (with only a
/// notice) to a different, shorter channel, while `pg_notify` refuses it, so
/// a listener would wait on a channel nobody can send to by that name, and
/// unlistening it would stop another channel.
pub(crate) fn channel_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("the channel name is empty".to_owned())
    } else if name.len() > MAX_IDENTIFIER {
        Some(format!(
            "the channel name is {} bytes; PostgreSQL allows {MAX_IDENTIFIER}",
            name.len()
        ))
    } else if name.contains('\0') {
        Some("a NUL byte in the channel name".to_owned())
    } else {
        None
    }
}

/// PostgreSQL refuses notification payloads of this many bytes or more.
pub(crate) const MAX_PAYLOAD: usize = 8000;

/// Why `payload` cannot be sent with `pg_notify`, if it cannot.
pub(crate) fn payload_problem(payload: &str) -> Option<String> {
    if payload.len() >= MAX_PAYLOAD {
        Some(format!(
            "the payload is {} bytes; PostgreSQL allows fewer than {MAX_PAYLOAD}",
            payload.len()
        ))
    } else if payload.contains('\0') {
        Some("a NUL byte in the payload".to_owned())
    } else {
        None
    }
}

/// `Ok` if `channel` and `payload` (if given) can be sent, else
/// [`Error::InvalidNotification`] saying why not.
pub(crate) fn check_notification(channel: &str, payload: Option<&str>) -> Result<()> {
    match channel_problem(channel).or_else(|| payload.and_then(payload_problem)) {
        None => Ok(()),
        Some(why) => Err(Error::InvalidNotification(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_IDENTIFIER, channel_problem, quote_identifier};

    /// What the server would read back: the inverse of quoting, or `None`
    /// if the text is not exactly one quoted identifier.
    fn unquote(text: &str) -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        let mut name = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                // Inside, a quote is only ever the first of a doubled pair.
                if chars.next() != Some('"') {
                    return None;
                }
            }
            name.push(c);
        }
        Some(name)
    }

    #[test]
    fn plain_names_are_wrapped_in_double_quotes_keeping_their_case() {
        assert_eq!(quote_identifier("jobs"), "\"jobs\"");
        assert_eq!(quote_identifier("MixedCase"), "\"MixedCase\"");
    }

    #[test]
    fn embedded_double_quotes_are_doubled() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_identifier("\""), "\"\"\"\"");
        assert_eq!(quote_identifier("\"\""), "\"\"\"\"\"\"");
    }

    #[test]
    fn sql_in_a_name_stays_inside_the_identifier() {
        for name in [
            "x; DROP TABLE t",
            "x\"; DROP TABLE t; --",
            "\"; DROP TABLE t; LISTEN \"y",
            "it's",
            "back\\slash",
            "$1",
            "/* comment */",
            "-- comment",
            "new\nline",
            "ünïcödé ☃",
            "",
        ] {
            let quoted = quote_identifier(name);
            assert_eq!(unquote(&quoted).as_deref(), Some(name), "{quoted}");
        }
    }

    #[test]
    fn the_only_unpaired_quotes_are_the_outer_two() {
        let quoted = quote_identifier("a\"\"\"b\"");
        let inner = &quoted[1..quoted.len() - 1];
        assert!(inner.split("\"\"").all(|piece| !piece.contains('"')));
    }

    #[test]
    fn channel_names_up_to_63_bytes_pass_and_longer_empty_or_nul_ones_do_not() {
        assert_eq!(channel_problem("jobs"), None);
        assert_eq!(channel_problem(&"c".repeat(MAX_IDENTIFIER)), None);
        assert_eq!(channel_problem("x\"; DROP TABLE t; --"), None);
        // Bytes, not characters: 63 characters, 64 bytes.
        let multibyte = "c".repeat(62) + "é";
        assert_eq!(multibyte.chars().count(), 63);
        let why = channel_problem(&multibyte).expect("too long");
        assert!(why.contains("64 bytes") && why.contains("63"), "{why}");
        assert!(channel_problem("").is_some());
        assert!(channel_problem("a\0b").is_some());
    }
}
