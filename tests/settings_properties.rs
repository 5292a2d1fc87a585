//! Property tests for reading connection strings: any string gives settings
//! or an error that says where or which keyword — never a panic — and a
//! password, however it is written, never shows in what pgtx renders.
//!
//! Bounded: a few thousand generated strings per property, well under a
//! second each.

use proptest::prelude::*;

/// Pieces that steer generated strings into every branch of both parsers.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("postgres://".to_owned()),
        Just("postgresql://".to_owned()),
        Just("host".to_owned()),
        Just("password".to_owned()),
        Just("port".to_owned()),
        Just("dbname".to_owned()),
        Just("hostaddr".to_owned()),
        Just("sslmode".to_owned()),
        Just("=".to_owned()),
        Just("'".to_owned()),
        Just("\\".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        Just("/".to_owned()),
        Just("?".to_owned()),
        Just("&".to_owned()),
        Just(",".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("%".to_owned()),
        Just("%2F".to_owned()),
        Just("%00".to_owned()),
        Just("%e2%82".to_owned()),
        Just("é".to_owned()),
        Just("::1".to_owned()),
        Just("5432".to_owned()),
        "[a-z0-9]{0,4}",
        any::<char>().prop_map(String::from),
    ]
}

fn grammar_string() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..24).prop_map(|parts| parts.concat())
}

/// Checks one outcome: an error says something, settings render.
fn check(input: &str) {
    match pgtx::Settings::parse(input) {
        Ok(settings) => {
            let _ = format!("{settings} {settings:?}");
            // What is shown is the input with the secrets cut out: the
            // input itself when it can hold none.
            let shown = settings.to_string();
            if !input.contains("password") && !input.contains('@') {
                assert_eq!(shown, input);
            } else {
                let mut rest = input.chars();
                assert!(
                    shown.chars().all(|c| rest.any(|d| d == c)),
                    "{shown:?} is not {input:?} with parts cut out"
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            assert!(
                message.contains("position")
                    || message.contains('"')
                    || message.contains("could not match"),
                "the error names neither a keyword nor a position: {message}"
            );
        }
    }
}

/// A key=value value written the way libpq reads it back.
fn quote_kv(v: &str) -> String {
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_string_gives_settings_or_a_clear_error(input in any::<String>()) {
        check(&input);
    }

    #[test]
    fn connection_string_lookalikes_give_settings_or_a_clear_error(input in grammar_string()) {
        check(&input);
    }

    #[test]
    fn prefixed_lookalikes_give_settings_or_a_clear_error(
        prefix in prop_oneof![Just("postgres://"), Just("postgresql://"), Just("host=h ")],
        rest in grammar_string(),
    ) {
        check(&format!("{prefix}{rest}"));
    }

    #[test]
    fn a_password_never_shows(
        secret in "[A-Za-z0-9 '\\\\:@/?&=%,]{0,12}",
        before in "[a-z]{0,3}",
        form in 0..4_u8,
    ) {
        // A marker no keyword or host name contains, inside arbitrary text.
        let password = format!("{before}SECRET-{secret}");
        let dsn = match form {
            0 => format!("host=db password={} user=u", quote_kv(&password)),
            1 => format!("postgres://u:{}@db:5432/app", percent_encode(&password)),
            2 => format!("postgres://u@db/app?password={}&sslmode=disable", percent_encode(&password)),
            _ => format!("password = {} dbname=app", quote_kv(&password)),
        };
        let settings = pgtx::Settings::parse(&dsn).expect("well-formed");
        let shown = format!("{settings} {settings:?} {:?}", settings.get("password"));
        prop_assert!(!shown.contains("SECRET"), "{shown}");
        let manager = pgtx::ManagedConnection::new(&dsn).expect("well-formed");
        let shown = format!("{manager} {manager:?}");
        prop_assert!(!shown.contains("SECRET"), "{shown}");
    }
}
