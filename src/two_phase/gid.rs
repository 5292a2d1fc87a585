//! The global transaction identifiers (gids) pgtx gives prepared
//! transactions, and the key of the decision they share.
//!
//! `pgtx:v2:<coordinator>:<transaction>:<decider>:<participant>`
//!
//! - `coordinator`: this process, made unique by its pid, the time it
//!   started coordinating and the host name, so two processes (or two
//!   hosts) never share one;
//! - `transaction`: a counter within the process;
//! - `decider`: which database holds the decision row, as
//!   `<system_identifier>-<oid>` in hexadecimal: the server's
//!   `system_identifier` (`pg_control_system()`, chosen at random by
//!   `initdb`, so two clusters do not share it) and the database's oid on
//!   it. Recovery compares it with what each database it is given says of
//!   itself, so a database of the same name on another host (on the same
//!   port, as shards are) is never taken for the decider;
//! - `participant`: the participant's place in the commit order.
//!
//! `pgtx:v1:` gids (made before the decider was named by its server) have
//! a hash of the decider's database name and port instead: they are still
//! read, but since another server may have a database of that name on that
//! port, only a `'commit'` row found under their key proves anything.
//!
//! The decision key is the gid up to the transaction: every participant
//! of one distributed transaction shares it. Only gids that parse here
//! are ever touched by recovery.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const V1: &str = "pgtx:v1:";
const V2: &str = "pgtx:v2:";

/// A `LIKE` pattern for pgtx's gids (every version) in `pg_prepared_xacts`.
pub(crate) const LIKE_PATTERN: &str = "pgtx:v%";

/// What the server says identifies one of its databases, among every
/// database of every cluster: its `system_identifier` and the database's
/// oid.
pub(crate) const IDENTIFY_SQL: &str = "(SELECT system_identifier FROM pg_control_system()), \
     (SELECT oid FROM pg_database WHERE datname = current_database())";

/// One database on one cluster (see [`IDENTIFY_SQL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DatabaseId {
    pub(crate) system: u64,
    pub(crate) oid: u32,
}

impl DatabaseId {
    /// From the two columns [`IDENTIFY_SQL`] selects, starting at `first`.
    pub(crate) fn from_row(
        row: &postgres::Row,
        first: usize,
    ) -> Result<DatabaseId, postgres::Error> {
        let system: i64 = row.try_get(first)?;
        let oid: u32 = row.try_get(first + 1)?;
        Ok(DatabaseId {
            system: system.cast_unsigned(),
            oid,
        })
    }
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:x}", self.system, self.oid)
    }
}

/// One distributed transaction's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(String);

impl Key {
    /// A new, never used key for a transaction of this process.
    pub(crate) fn next() -> Key {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Key(format!("{V2}{}:{n}", coordinator()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The gid of participant number `index`, whose decision row lives in
    /// database `decider`.
    pub(crate) fn gid(&self, decider: DatabaseId, index: usize) -> String {
        format!("{}:{decider}:{index}", self.0)
    }
}

/// Where a gid says its decision row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Decider {
    /// `pgtx:v2:`: exactly this database.
    Database(DatabaseId),
    /// `pgtx:v1:`: a database with this [`database_tag`] (name and port),
    /// on any server.
    Tag(u32),
}

/// A gid of pgtx's, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) key: Key,
    pub(crate) decider: Decider,
}

/// Reads a gid; `None` for anything that is not pgtx's.
pub(crate) fn parse(gid: &str) -> Option<Parsed> {
    let (prefix, rest) = if let Some(rest) = gid.strip_prefix(V2) {
        (V2, rest)
    } else {
        (V1, gid.strip_prefix(V1)?)
    };
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
    let decider = if prefix == V2 {
        let (system, oid) = decider.split_once('-')?;
        Decider::Database(DatabaseId {
            system: hex_u64(system, 16)?,
            oid: u32::try_from(hex_u64(oid, 8)?).ok()?,
        })
    } else {
        Decider::Tag(u32::try_from(hex_u64(decider, 8)?).ok()?)
    };
    Some(Parsed {
        key: Key(format!("{prefix}{coordinator}:{transaction}")),
        decider,
    })
}

/// Hexadecimal digits only (no sign, no prefix), at most `max` of them.
fn hex_u64(digits: &str, max: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The `pgtx:v1:` tag of a database: a hash of what the server says its
/// database and port are. Not unique across servers (hence v2).
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

    const DB: DatabaseId = DatabaseId {
        system: 0xfedc_ba98_7654_3210,
        oid: 0xdead_beef,
    };

    #[test]
    fn a_gid_reads_back_to_its_key_and_decider() {
        let key = Key::next();
        let gid = key.gid(DB, 3);
        assert!(gid.starts_with("pgtx:v2:"), "{gid}");
        assert!(gid.len() < 200, "PostgreSQL's limit: {gid}");
        let parsed = parse(&gid).expect("pgtx's own");
        assert_eq!(parsed.key, key);
        assert_eq!(parsed.decider, Decider::Database(DB));
    }

    #[test]
    fn the_decider_is_told_apart_by_server_and_by_database() {
        let key = Key::next();
        let other_server = DatabaseId {
            system: DB.system + 1,
            ..DB
        };
        let other_db = DatabaseId { oid: 5, ..DB };
        for other in [other_server, other_db] {
            assert_ne!(key.gid(DB, 1), key.gid(other, 1));
            assert_eq!(
                parse(&key.gid(other, 1)).expect("pgtx's").decider,
                Decider::Database(other)
            );
        }
    }

    #[test]
    fn v1_gids_are_still_read_with_their_tag() {
        let parsed = parse("pgtx:v1:1a-2b-0000000c:4:00000001:0").expect("a v1 gid");
        assert_eq!(parsed.key.as_str(), "pgtx:v1:1a-2b-0000000c:4");
        assert_eq!(parsed.decider, Decider::Tag(1));
    }

    #[test]
    fn keys_are_never_reused() {
        let (a, b) = (Key::next(), Key::next());
        assert_ne!(a, b);
        assert_ne!(a.gid(DB, 0), b.gid(DB, 0));
        assert_ne!(a.gid(DB, 0), a.gid(DB, 1));
    }

    #[test]
    fn other_gids_are_not_pgtx_s() {
        for gid in [
            "",
            "pgtx",
            "pgtx:v1:",
            "pgtx:v2:",
            "pgtx:v3:1-2-3:4:00000001:0",
            "pgtx:v1:1-2-3:4:00000001",
            "pgtx:v1:1-2-3:x:00000001:0",
            "pgtx:v1:1-2-3:4:zz:0",
            "pgtx:v1:1-2-3:4:00000001:0:extra",
            "pgtx:v1:g h:4:00000001:0",
            "pgtx:v1:1-2-3:4:1-2:0",
            "pgtx:v2:1-2-3:4:00000001:0",
            "pgtx:v2:1-2-3:4:1-:0",
            "pgtx:v2:1-2-3:4:-1:0",
            "pgtx:v2:1-2-3:4:1-123456789:0",
            "pgtx:v2:1-2-3:4:12345678901234567-1:0",
            "pgtx:v2:1-2-3:4:+1-1:0",
            "pgtx:v2:1-2-3:4:1-1:0:extra",
            "someone_else's",
        ] {
            assert_eq!(parse(gid), None, "{gid:?}");
        }
    }

    #[test]
    fn the_v1_tag_depends_on_name_and_port() {
        assert_eq!(database_tag("a", "5432"), database_tag("a", "5432"));
        assert_ne!(database_tag("a", "5432"), database_tag("b", "5432"));
        assert_ne!(database_tag("a", "5432"), database_tag("a", "5433"));
        assert_ne!(database_tag("a5", "432"), database_tag("a", "5432"));
    }
}
