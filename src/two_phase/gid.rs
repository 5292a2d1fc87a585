//! The global transaction identifiers (gids) pgtx gives prepared
//! transactions, and the key of the decision they share.
//!
//! `pgtx:v1:<coordinator>:<transaction>:<decider>:<participant>`
//!
//! - `coordinator`: this process, made unique by its pid, the time it
//!   started coordinating and the host name, so two processes (or two
//!   hosts) never share one;
//! - `transaction`: a counter within the process;
//! - `decider`: which database holds the decision row (a hash of its name
//!   and port), so recovery can tell whether it was given that database;
//! - `participant`: the participant's place in the commit order.
//!
//! The decision key is the gid up to the transaction: every participant
//! of one distributed transaction shares it. Only gids that parse here
//! are ever touched by recovery.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "pgtx:v1:";

/// A `LIKE` pattern for pgtx's gids in `pg_prepared_xacts`.
pub(crate) const LIKE_PATTERN: &str = "pgtx:v1:%";

/// One distributed transaction's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key(String);

impl Key {
    /// A new, never used key for a transaction of this process.
    pub(crate) fn next() -> Key {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Key(format!("{PREFIX}{}:{n}", coordinator()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The gid of participant number `index`, whose decision row lives in
    /// the database tagged `decider`.
    pub(crate) fn gid(&self, decider: u32, index: usize) -> String {
        format!("{}:{decider:08x}:{index}", self.0)
    }
}

/// A gid of pgtx's, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) key: Key,
    pub(crate) decider: u32,
}

/// Reads a gid; `None` for anything that is not pgtx's.
pub(crate) fn parse(gid: &str) -> Option<Parsed> {
    let rest = gid.strip_prefix(PREFIX)?;
    let mut fields = rest.split(':');
    let (coordinator, transaction, decider, index) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if fields.next().is_some()
        || coordinator.is_empty()
        || !coordinator
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
        || transaction.parse::<u64>().is_err()
        || index.parse::<usize>().is_err()
    {
        return None;
    }
    let decider = u32::from_str_radix(decider, 16).ok()?;
    Some(Parsed {
        key: Key(format!("{PREFIX}{coordinator}:{transaction}")),
        decider,
    })
}

/// The tag of the database that holds a decision: a hash of what the
/// server says its database and port are.
pub(crate) fn database_tag(dbname: &str, port: &str) -> u32 {
    fnv1a(format!("{dbname}\0{port}").as_bytes())
}

fn coordinator() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut id = String::new();
        let _ = write!(
            id,
            "{:x}-{:x}-{:08x}",
            std::process::id(),
            started,
            fnv1a(host.trim().as_bytes())
        );
        id
    })
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gid_reads_back_to_its_key_and_decider() {
        let key = Key::next();
        let gid = key.gid(0xdead_beef, 3);
        assert!(gid.len() < 200, "PostgreSQL's limit: {gid}");
        let parsed = parse(&gid).expect("pgtx's own");
        assert_eq!(parsed.key, key);
        assert_eq!(parsed.decider, 0xdead_beef);
    }

    #[test]
    fn keys_are_never_reused() {
        let (a, b) = (Key::next(), Key::next());
        assert_ne!(a, b);
        assert_ne!(a.gid(1, 0), b.gid(1, 0));
        assert_ne!(a.gid(1, 0), a.gid(1, 1));
    }

    #[test]
    fn other_gids_are_not_pgtx_s() {
        for gid in [
            "",
            "pgtx",
            "pgtx:v1:",
            "pgtx:v2:1-2-3:4:00000001:0",
            "pgtx:v1:1-2-3:4:00000001",
            "pgtx:v1:1-2-3:x:00000001:0",
            "pgtx:v1:1-2-3:4:zz:0",
            "pgtx:v1:1-2-3:4:00000001:0:extra",
            "pgtx:v1:g h:4:00000001:0",
            "someone_else's",
        ] {
            assert_eq!(parse(gid), None, "{gid:?}");
        }
    }

    #[test]
    fn the_database_tag_depends_on_name_and_port() {
        assert_eq!(database_tag("a", "5432"), database_tag("a", "5432"));
        assert_ne!(database_tag("a", "5432"), database_tag("b", "5432"));
        assert_ne!(database_tag("a", "5432"), database_tag("a", "5433"));
        assert_ne!(database_tag("a5", "432"), database_tag("a", "5432"));
    }
}
