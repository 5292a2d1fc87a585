//! Refusing SQL that would end or restart the transaction pgtx controls.
//!
//! pgtx owns the transaction around user SQL, so a `COMMIT`, `ROLLBACK` or `BEGIN` inside
//! that SQL would commit half a unit of work or leave pgtx tracking a transaction that no
//! longer exists. The server has no switch to forbid such statements, so we find them
//! before sending. That only works if we split the text into statements exactly where the
//! server does: a string, quote or comment boundary misjudged by one character can hide a
//! `COMMIT`. The lexer below therefore follows the server's lexical rules (scan.l), and the
//! text is scanned twice because the server's treatment of backslashes in `'...'` depends
//! on `standard_conforming_strings`, which the user can change. Refusing odd text that
//! merely looks like control is acceptable; letting a control statement through is not.

/// A transaction-control statement found in SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Control {
    /// The command in upper case without noise words or arguments, e.g. `"COMMIT"`,
    /// `"START TRANSACTION"`, `"ROLLBACK PREPARED"`, `"COMMIT AND CHAIN"`.
    pub(crate) command: &'static str,
    /// 1-based position of the statement among the non-empty statements of the text.
    pub(crate) position: usize,
}

impl std::fmt::Display for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (statement {} of the text)",
            self.command, self.position
        )
    }
}

/// The first transaction-control statement in `sql`, if any.
pub(crate) fn find(sql: &str) -> Option<Control> {
    let s = sql.as_bytes();
    // Which reading the server uses depends on a setting we cannot see, so either counts.
    scan(s, false).or_else(|| scan(s, true))
}

/// The command of `sql`, if its rows take their shape only when it runs:
/// `FETCH` (the cursor's query decides), `EXECUTE` (the statement prepared
/// in SQL under that name, which SQL can replace), `CALL` (the procedure's
/// output parameters, which SQL can redefine). The server describes these
/// when asked and never checks a prepared one again (it does for every
/// query whose tables change: "cached plan must not change result type"),
/// so their text must be described each time it runs.
pub(crate) fn shape_decided_at_run_time(sql: &str) -> Option<&'static str> {
    let toks = lex(sql.as_bytes(), false);
    ["FETCH", "EXECUTE", "CALL"]
        .into_iter()
        .find(|command| is_word(&toks, 0, command))
}

/// The command of `sql` if the server refuses to run it inside a
/// transaction block (`VACUUM`, `CREATE DATABASE`, `… CONCURRENTLY`, …),
/// or if it moves data through the connection (`COPY … FROM STDIN` /
/// `TO STDOUT`), which a pipeline cannot carry: what a pipeline refuses
/// before anything is sent. Read from the first statement of the text
/// (a pipeline's statement is one statement).
pub(crate) fn outside_transaction_only(sql: &str) -> Option<&'static str> {
    let toks = lex(sql.as_bytes(), false);
    let w = |k: usize, kw: &str| is_word(&toks, k, kw);
    let concurrently = toks
        .iter()
        .take_while(|t| **t != Tok::Semi && **t != Tok::Open)
        .any(|t| matches!(t, Tok::Word(word) if word.eq_ignore_ascii_case(b"CONCURRENTLY")));
    if w(0, "VACUUM") {
        Some("VACUUM")
    } else if (w(0, "CREATE") || w(0, "DROP") || w(0, "ALTER")) && w(1, "DATABASE") {
        Some("CREATE/DROP/ALTER DATABASE")
    } else if (w(0, "CREATE") || w(0, "DROP")) && w(1, "TABLESPACE") {
        Some("CREATE/DROP TABLESPACE")
    } else if w(0, "ALTER") && w(1, "SYSTEM") {
        Some("ALTER SYSTEM")
    } else if (w(0, "CREATE") || w(0, "DROP") || w(0, "ALTER")) && w(1, "SUBSCRIPTION") {
        Some("CREATE/DROP/ALTER SUBSCRIPTION")
    } else if w(0, "DISCARD") && w(1, "ALL") {
        Some("DISCARD ALL")
    } else if w(0, "REINDEX") && (w(1, "DATABASE") || w(1, "SYSTEM") || concurrently) {
        Some("REINDEX DATABASE/SYSTEM/CONCURRENTLY")
    } else if concurrently
        && ((w(0, "CREATE") && (w(1, "INDEX") || (w(1, "UNIQUE") && w(2, "INDEX"))))
            || (w(0, "DROP") && w(1, "INDEX")))
    {
        Some("CREATE/DROP INDEX CONCURRENTLY")
    } else if w(0, "CLUSTER") && toks.iter().skip(1).all(|t| *t == Tok::Semi) {
        Some("CLUSTER (of every table)")
    } else if copy_direction(sql).is_some() {
        Some("COPY FROM STDIN / TO STDOUT")
    } else {
        None
    }
}

/// Which way the COPY of `sql` moves data through the connection:
/// `Some(true)` for `COPY … FROM STDIN`, `Some(false)` for `COPY … TO
/// STDOUT`, `None` when `sql` is no such COPY (another statement, or a
/// COPY to or from a file or program). Read at the top level of the
/// statement: a query in parentheses and a column list are skipped.
pub(crate) fn copy_direction(sql: &str) -> Option<bool> {
    let toks = lex(sql.as_bytes(), false);
    if !is_word(&toks, 0, "COPY") {
        return None;
    }
    let mut depth = 0usize;
    for (k, tok) in toks.iter().enumerate().skip(1) {
        match tok {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            Tok::Semi if depth == 0 => return None,
            Tok::Word(_) if depth == 0 && is_word(&toks, k, "FROM") => {
                return is_word(&toks, k + 1, "STDIN").then_some(true);
            }
            Tok::Word(_) if depth == 0 && is_word(&toks, k, "TO") => {
                return is_word(&toks, k + 1, "STDOUT").then_some(false);
            }
            _ => {}
        }
    }
    None
}

/// A token; only the distinctions statement splitting and classification need survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a [u8]),
    Semi,
    Open,
    Close,
    Other,
}

/// How a quoted token treats its closing quote and backslashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `'...'` with `''` doubling (also `U&'...'`).
    Standard,
    /// `E'...'`, and `'...'` when `standard_conforming_strings` is off.
    Escape,
    /// `B'...'`/`X'...'`: the server knows no `''` doubling there.
    Bits,
    /// `"..."`: doubling, but no continuation across lines.
    Ident,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// The first index from `i` on whose byte fails `keep`.
fn span(s: &[u8], i: usize, keep: impl Fn(u8) -> bool) -> usize {
    s.get(i..).map_or(s.len(), |rest| {
        i + rest.iter().take_while(|&&c| keep(c)).count()
    })
}

/// Tokens of `s`; `backslash` selects `standard_conforming_strings = off`.
fn lex(s: &[u8], backslash: bool) -> Vec<Tok<'_>> {
    let at = |i: usize| s.get(i).copied();
    let plain = if backslash {
        Quote::Escape
    } else {
        Quote::Standard
    };
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        let (tok, end) = match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => (None, i + 1),
            b'-' if at(i + 1) == Some(b'-') => (None, line_end(s, i)),
            b'/' if at(i + 1) == Some(b'*') => (None, comment_end(s, i)),
            b'\'' => (Some(Tok::Other), quoted_end(s, i + 1, plain)),
            b'"' => (Some(Tok::Other), quoted_end(s, i + 1, Quote::Ident)),
            // `$1` is a parameter; only a `$` followed by a tag and `$` opens a quote.
            b'$' if at(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                (Some(Tok::Other), span(s, i + 1, |d| d.is_ascii_digit()))
            }
            b'$' => (Some(Tok::Other), dollar_end(s, i)),
            b';' => (Some(Tok::Semi), i + 1),
            b'(' => (Some(Tok::Open), i + 1),
            b')' => (Some(Tok::Close), i + 1),
            // Digits only: what follows is lexed afresh, as older servers do (newer ones
            // reject such "trailing junk" outright).
            b'0'..=b'9' => (Some(Tok::Other), span(s, i, |d| d.is_ascii_digit())),
            c if is_ident_start(c) => {
                // Identifiers swallow `$`, so `a$b$` never opens a dollar quote.
                let end = span(s, i, is_ident_cont);
                let prefix = if end == i + 1 {
                    c.to_ascii_uppercase()
                } else {
                    0
                };
                let quoted = match (prefix, at(end), at(end + 1)) {
                    (b'E', Some(b'\''), _) => Some((end + 1, Quote::Escape)),
                    (b'B' | b'X', Some(b'\''), _) => Some((end + 1, Quote::Bits)),
                    (b'U', Some(b'&'), Some(b'\'')) => Some((end + 2, Quote::Standard)),
                    (b'U', Some(b'&'), Some(b'"')) => Some((end + 2, Quote::Ident)),
                    _ => None,
                };
                match quoted {
                    Some((from, kind)) => (Some(Tok::Other), quoted_end(s, from, kind)),
                    None => (Some(Tok::Word(&s[i..end])), end),
                }
            }
            _ => (Some(Tok::Other), i + 1),
        };
        toks.extend(tok);
        i = end;
    }
    toks
}

/// End of a `--` comment: the newline stays, as it may matter to a string continuation.
fn line_end(s: &[u8], i: usize) -> usize {
    span(s, i, |c| c != b'\n' && c != b'\r')
}

/// End of a `/* */` comment starting at `i`; they nest, unlike in C.
fn comment_end(s: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(pair) = s.get(i..i + 2) {
        match pair {
            b"/*" => (depth, i) = (depth + 1, i + 2),
            b"*/" => {
                (depth, i) = (depth.saturating_sub(1), i + 2);
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    s.len()
}

/// End of a quoted token whose contents start at `i`; unterminated means end of text.
fn quoted_end(s: &[u8], mut i: usize, kind: Quote) -> usize {
    let q = if kind == Quote::Ident { b'"' } else { b'\'' };
    loop {
        match s.get(i).copied() {
            None => return s.len(),
            Some(b'\\') if kind == Quote::Escape => i += 2,
            Some(c) if c == q && kind != Quote::Bits && s.get(i + 1) == Some(&q) => i += 2,
            Some(c) if c == q => match continuation(s, i + 1) {
                // The continued part keeps the literal's rules, so `E'a'\n'\''` is one string.
                Some(next) if kind != Quote::Ident => i = next,
                _ => return i + 1,
            },
            Some(_) => i += 1,
        }
    }
}

/// Where a literal resumes if, per the SQL standard, it continues after whitespace that
/// contains a newline (`'a'\n'b'` is `'ab'`); `/* */` comments do not count as whitespace.
fn continuation(s: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match *s.get(i)? {
            b'\n' | b'\r' => newline = true,
            b' ' | b'\t' | 0x0c => {}
            0x0b if newline => {}
            b'-' if s.get(i + 1) == Some(&b'-') => {
                i = line_end(s, i);
                continue;
            }
            b'\'' if newline => return Some(i + 1),
            _ => return None,
        }
        i += 1;
    }
}

/// End of the token at the `$` at `i`: a whole dollar-quoted string, or the lone `$`.
fn dollar_end(s: &[u8], i: usize) -> usize {
    let tag_end = match s.get(i + 1) {
        Some(&c) if is_ident_start(c) => {
            span(s, i + 1, |c| is_ident_start(c) || c.is_ascii_digit())
        }
        _ => i + 1,
    };
    if s.get(tag_end) != Some(&b'$') {
        return i + 1;
    }
    let delim = &s[i..=tag_end];
    let body = tag_end + 1;
    let close = s
        .get(body..)
        .and_then(|rest| rest.windows(delim.len()).position(|w| w == delim));
    close.map_or(s.len(), |p| body + p + delim.len())
}

fn is_word(t: &[Tok<'_>], k: usize, kw: &str) -> bool {
    matches!(t.get(k), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

/// Does the statement starting at `t` create a routine, the only place where the server
/// accepts a `BEGIN ATOMIC ... END` body?
fn is_routine(t: &[Tok<'_>]) -> bool {
    let kind = |k| is_word(t, k, "FUNCTION") || is_word(t, k, "PROCEDURE");
    is_word(t, 0, "CREATE")
        && (kind(1) || (is_word(t, 1, "OR") && is_word(t, 2, "REPLACE") && kind(3)))
}

/// Splits the tokens of `s` into statements and classifies each top-level one.
fn scan(s: &[u8], backslash: bool) -> Option<Control> {
    let toks = lex(s, backslash);
    let (mut position, mut depth, mut parens) = (0, 0usize, 0usize);
    let (mut start, mut routine) = (true, false);
    let mut i = 0;
    while let Some(&tok) = toks.get(i) {
        let rest = &toks[i..];
        i += 1;
        if tok == Tok::Semi {
            (start, parens) = (true, 0);
            continue;
        }
        if start {
            start = false;
            // The server's grammar ends a body only with an END where a body statement
            // would start (no body statement starts with END). Counting CASE/BEGIN/END
            // words like psql does would let `SELECT 1 AS case` or a column named
            // `begin` swallow the following top-level statements.
            if depth > 0 && is_word(rest, 0, "END") {
                (depth, routine) = (depth - 1, false);
                continue;
            }
            if depth == 0 {
                position += 1;
                if let Some(command) = classify(rest) {
                    return Some(Control { command, position });
                }
            }
            routine = is_routine(rest);
        }
        match tok {
            Tok::Open => parens += 1,
            Tok::Close => parens = parens.saturating_sub(1),
            // Inside parentheses `begin atomic` is a parameter named begin of type atomic.
            _ if routine
                && parens == 0
                && is_word(rest, 0, "BEGIN")
                && is_word(rest, 1, "ATOMIC") =>
            {
                (depth, routine, start) = (depth + 1, false, true);
                i += 1;
            }
            _ => {}
        }
    }
    None
}

/// The control command a top-level statement starting at `t` performs, if any.
fn classify(t: &[Tok<'_>]) -> Option<&'static str> {
    let w = |k: usize, kw: &str| is_word(t, k, kw);
    if w(0, "BEGIN") {
        return Some("BEGIN");
    }
    if w(0, "START") {
        return Some("START TRANSACTION");
    }
    if w(0, "PREPARE") {
        // `PREPARE transaction AS ...` would prepare a statement named "transaction".
        let named = w(2, "AS") || t.get(2) == Some(&Tok::Open);
        return (w(1, "TRANSACTION") && !named).then_some("PREPARE TRANSACTION");
    }
    let verb = ["COMMIT", "ROLLBACK", "END", "ABORT"]
        .into_iter()
        .find(|v| w(0, v))?;
    let k = if w(1, "WORK") || w(1, "TRANSACTION") {
        2
    } else {
        1
    };
    let chain = w(k, "AND") && w(k + 1, "CHAIN");
    Some(match (verb, w(1, "PREPARED"), chain) {
        ("COMMIT", true, _) => "COMMIT PREPARED",
        ("ROLLBACK", true, _) => "ROLLBACK PREPARED",
        ("ROLLBACK", ..) if w(k, "TO") => return None,
        ("COMMIT", _, true) => "COMMIT AND CHAIN",
        ("ROLLBACK", _, true) => "ROLLBACK AND CHAIN",
        ("END", _, true) => "END AND CHAIN",
        ("ABORT", _, true) => "ABORT AND CHAIN",
        (verb, ..) => verb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direction_of_a_copy_is_read_at_the_top_level_only() {
        for (sql, expected) in [
            ("COPY items FROM STDIN", Some(true)),
            (
                "copy items (id, note) from stdin with (format binary)",
                Some(true),
            ),
            ("COPY \"from\" FROM STDIN", Some(true)),
            ("COPY items TO STDOUT", Some(false)),
            (
                "COPY (SELECT 1 FROM t WHERE x = 'TO STDOUT') TO STDOUT (FORMAT csv)",
                Some(false),
            ),
            ("COPY (SELECT a FROM b) TO STDOUT", Some(false)),
            ("/* COPY */ COPY items FROM STDIN", Some(true)),
            ("COPY items FROM '/tmp/file'", None),
            ("COPY items TO PROGRAM 'cat'", None),
            ("SELECT 1", None),
            ("COPY items FROM STDIN; SELECT 1", Some(true)),
            ("COPY items", None),
        ] {
            assert_eq!(copy_direction(sql), expected, "{sql}");
        }
    }

    fn cmd(sql: &str) -> Option<(&'static str, usize)> {
        find(sql).map(|c| (c.command, c.position))
    }

    #[test]
    fn finds_statements_whose_rows_take_their_shape_when_they_run() {
        for (sql, command) in [
            ("FETCH FORWARD 10 FROM c", Some("FETCH")),
            ("  /* next */ fetch all in c", Some("FETCH")),
            ("-- a comment\nEXECUTE q(1)", Some("EXECUTE")),
            ("call p($1)", Some("CALL")),
            ("SELECT 'FETCH'", None),
            ("MOVE 10 IN c", None),
            ("SELECT fetch FROM t", None),
            ("fetcher", None),
            ("", None),
        ] {
            assert_eq!(shape_decided_at_run_time(sql), command, "{sql:?}");
        }
    }

    #[test]
    fn detects_control_statements() {
        let cases = [
            ("COMMIT", "COMMIT"),
            ("commit work", "COMMIT"),
            ("COMMIT TRANSACTION;", "COMMIT"),
            ("COMMIT AND NO CHAIN", "COMMIT"),
            ("COMMIT AND CHAIN", "COMMIT AND CHAIN"),
            ("COMMIT WORK AND CHAIN", "COMMIT AND CHAIN"),
            ("END", "END"),
            ("END TRANSACTION", "END"),
            ("ROLLBACK", "ROLLBACK"),
            ("ROLLBACK TRANSACTION", "ROLLBACK"),
            ("ROLLBACK AND CHAIN", "ROLLBACK AND CHAIN"),
            ("ABORT", "ABORT"),
            ("ABORT WORK", "ABORT"),
            ("BEGIN", "BEGIN"),
            ("BEGIN WORK", "BEGIN"),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY", "BEGIN"),
            ("START TRANSACTION READ WRITE", "START TRANSACTION"),
            ("PREPARE TRANSACTION 'gid'", "PREPARE TRANSACTION"),
            ("COMMIT PREPARED 'gid'", "COMMIT PREPARED"),
            ("ROLLBACK PREPARED 'gid'", "ROLLBACK PREPARED"),
            ("cOmMiT", "COMMIT"),
            ("ROLLBACK /* x */ PREPARED 'g'", "ROLLBACK PREPARED"),
            ("COMMIT -- bye\n", "COMMIT"),
            ("  /* hi */ -- there\n\tBEGIN/**/WORK", "BEGIN"),
        ];
        for (sql, want) in cases {
            assert_eq!(cmd(sql), Some((want, 1)), "{sql:?}");
        }
    }

    #[test]
    fn passes_other_statements() {
        let cases = [
            "",
            "   \n\t",
            "-- only a comment",
            "/* only */ /* comments */",
            ";;;",
            "SAVEPOINT x",
            "RELEASE x",
            "RELEASE SAVEPOINT x",
            "ROLLBACK TO x",
            "ROLLBACK TO SAVEPOINT x",
            "ROLLBACK WORK TO SAVEPOINT x",
            "ROLLBACK TRANSACTION TO x",
            "PREPARE name AS SELECT 1",
            "PREPARE name (int) AS SELECT $1",
            "PREPARE transaction AS SELECT 1",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT 'COMMIT'",
            "SELECT \"commit\" FROM t",
            "SELECT begin_date FROM t",
            "DO $$ BEGIN INSERT INTO t VALUES (1); COMMIT; END $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  \
             SELECT CASE WHEN true THEN 1 ELSE 2 END;\n  SELECT 2;\nEND;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC END",
            "SELECT 1 /* COMMIT */; -- COMMIT\nSELECT 2",
            "/* /* */ COMMIT */",
            "/* unterminated; COMMIT",
            "SELECT 'unterminated; COMMIT",
            "SELECT $q$ unterminated; COMMIT",
        ];
        for sql in cases {
            assert_eq!(cmd(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn finds_control_among_statements() {
        assert_eq!(
            cmd("INSERT INTO t VALUES (1); COMMIT; INSERT INTO t VALUES (2)"),
            Some(("COMMIT", 2))
        );
        assert_eq!(cmd(";; SELECT 1;;; SELECT 2; END;"), Some(("END", 3)));
        assert_eq!(cmd("SELECT $1; END"), Some(("END", 2)));
        assert_eq!(
            cmd("DO $f$ BEGIN COMMIT; END $f$; COMMIT"),
            Some(("COMMIT", 2))
        );
        assert_eq!(cmd("SELECT $a$ $b$ $ab$ $a$; ABORT"), Some(("ABORT", 2)));
        assert_eq!(
            cmd("SELECT a$b$ FROM t; COMMIT; SELECT $b$"),
            Some(("COMMIT", 2))
        );
        assert_eq!(cmd("SELECT \"a\"\"b;\"; COMMIT"), Some(("COMMIT", 2)));
        assert_eq!(cmd("SELECT B'01', X'1F'; COMMIT"), Some(("COMMIT", 2)));
        assert_eq!(cmd("SELECT 'it''s'; BEGIN"), Some(("BEGIN", 2)));
        assert_eq!(
            cmd("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; COMMIT"),
            Some(("COMMIT", 2))
        );
        let shown = find("SELECT 1; COMMIT").map(|c| c.to_string());
        assert_eq!(shown.as_deref(), Some("COMMIT (statement 2 of the text)"));
    }

    #[test]
    fn either_backslash_reading_counts() {
        // With standard_conforming_strings off the server ends the first string at `''`.
        assert_eq!(cmd(r"SELECT '\''; COMMIT; SELECT ''"), Some(("COMMIT", 2)));
        // With it on, the backslash is an ordinary character.
        assert_eq!(cmd(r"SELECT 'a\'; COMMIT; --'"), Some(("COMMIT", 2)));
        assert_eq!(cmd(r"SELECT E'\''; COMMIT"), Some(("COMMIT", 2)));
        assert_eq!(cmd(r"SELECT e'\\'; COMMIT"), Some(("COMMIT", 2)));
        // A continued E string keeps its escapes, whatever the setting.
        assert_eq!(cmd("SELECT E'a'\n'\\''; COMMIT; --'"), Some(("COMMIT", 2)));
        assert_eq!(cmd(r"SELECT E'\'; COMMIT; --'"), None);
        assert_eq!(cmd(r"SELECT U&'\'; COMMIT"), Some(("COMMIT", 2)));
    }

    #[test]
    fn atomic_bodies_do_not_hide_later_statements() {
        // Words the psql heuristic would count as block openers.
        let head = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC";
        let sql = format!("{head} SELECT 1 AS case; END; COMMIT; END");
        assert_eq!(cmd(&sql), Some(("COMMIT", 2)));
        let sql = format!("{head} SELECT begin FROM t; END; COMMIT; END");
        assert_eq!(cmd(&sql), Some(("COMMIT", 2)));
        // A parameter named begin of type atomic opens nothing.
        let sql =
            "CREATE FUNCTION f(begin atomic) RETURNS int LANGUAGE sql AS 'select 1'; COMMIT; END";
        assert_eq!(cmd(sql), Some(("COMMIT", 2)));
        // Only routines have bodies.
        assert_eq!(
            cmd("CREATE VIEW v AS SELECT begin atomic FROM t; COMMIT; END"),
            Some(("COMMIT", 2))
        );
        // Nested routine bodies.
        let sql = "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC CREATE FUNCTION g() RETURNS int \
                   LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2; END; ROLLBACK";
        assert_eq!(cmd(sql), Some(("ROLLBACK", 2)));
    }

    #[test]
    fn fuzz_never_panics() {
        // `|`-separated so the alphabet stays readable on a few lines.
        let fragments: Vec<&str> =
            "'|\"|$$|$a$|$1|--|\n|/*|*/|;|\\| COMMIT |E'|U&'|B'|BEGIN ATOMIC\
                                    |END| CREATE FUNCTION |(|)|x|é| |CASE"
                .split('|')
                .collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = next() % 24;
            let sql: String = (0..len)
                .map(|_| fragments[next() as usize % fragments.len()])
                .collect();
            if let Some(c) = find(&sql) {
                assert!(c.position >= 1 && !c.command.is_empty(), "{sql:?}");
            }
        }
    }

    #[test]
    fn what_cannot_run_inside_a_transaction_block_is_named() {
        for (sql, refused) in [
            ("VACUUM items", true),
            ("vacuum", true),
            ("CREATE DATABASE x", true),
            ("drop database if exists x", true),
            ("ALTER SYSTEM SET work_mem = '4MB'", true),
            ("CREATE INDEX CONCURRENTLY i ON t (a)", true),
            ("create unique index concurrently i on t (a)", true),
            ("DROP INDEX CONCURRENTLY i", true),
            ("REINDEX DATABASE x", true),
            ("REINDEX TABLE CONCURRENTLY t", true),
            ("DISCARD ALL", true),
            ("CLUSTER", true),
            ("COPY t FROM STDIN", true),
            ("COPY t TO STDOUT", true),
            ("CREATE TABLESPACE s LOCATION '/x'", true),
            ("CLUSTER t USING i", false),
            ("CREATE INDEX i ON t (concurrently)", false),
            ("CREATE VIEW v AS SELECT concurrently FROM t", false),
            ("SELECT 'VACUUM'", false),
            ("UPDATE accounts SET balance = 1", false),
            ("-- VACUUM\nSELECT 1", false),
            ("COPY t FROM '/tmp/file'", false),
            ("DISCARD PLANS", false),
        ] {
            assert_eq!(outside_transaction_only(sql).is_some(), refused, "{sql}");
        }
    }
}
