//! SQL identifiers written into statement text (`LISTEN "…"`), where a
//! bind parameter cannot go.

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

#[cfg(test)]
mod tests {
    use super::quote_identifier;

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
}
