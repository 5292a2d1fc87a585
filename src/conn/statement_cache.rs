//! SQL text -> what a connection keeps for it: the statement prepared from
//! it, or (for the unnamed statement) its parameters' types. So that text
//! run again costs one round trip (Bind/Execute) instead of two
//! (Parse/Describe first). It belongs to one connection: a new one starts
//! empty.

use std::collections::HashMap;

/// How many entries a connection keeps; the least recently used one is
/// dropped to make room (for a prepared statement, dropping it makes
/// tokio-postgres close it on the server).
pub(crate) const STATEMENT_CACHE_SIZE: usize = 256;

/// A least-recently-used map from SQL text to `V`, at most `capacity` long.
pub(crate) struct StatementCache<V> {
    entries: HashMap<Box<str>, (V, u64)>,
    /// Counts uses: an entry's stamp says when it was last used.
    clock: u64,
    capacity: usize,
}

impl<V> Default for StatementCache<V> {
    fn default() -> Self {
        StatementCache::with_capacity(STATEMENT_CACHE_SIZE)
    }
}

impl<V> StatementCache<V> {
    /// An empty cache that keeps at most `capacity` entries (at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        StatementCache {
            entries: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    /// Whether `sql` has an entry (not counted as a use).
    pub(crate) fn contains(&self, sql: &str) -> bool {
        self.entries.contains_key(sql)
    }

    /// Forgets `sql`'s entry.
    pub(crate) fn remove(&mut self, sql: &str) {
        self.entries.remove(sql);
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many entries it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps `value` for `sql`, dropping the least recently used entry
    /// first when the cache is full.
    pub(crate) fn insert(&mut self, sql: &str, value: V) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(sql) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(sql, _)| sql.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(sql.into(), (value, self.clock));
    }
}

impl<V: Clone> StatementCache<V> {
    /// `sql`'s entry, counted as a use.
    pub(crate) fn get(&mut self, sql: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(sql).map(|(value, used)| {
            *used = clock;
            value.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_drops_the_least_recently_used_entry() {
        let mut cache = StatementCache::with_capacity(3);
        cache.insert("a", 1);
        cache.insert("b", 2);
        cache.insert("c", 3);
        // "a" used again: "b" is now the oldest.
        assert_eq!(cache.get("a"), Some(1));
        cache.insert("d", 4);
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains("b"), "the least recently used one goes");
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("c"), Some(3));
        assert_eq!(cache.get("d"), Some(4));
    }

    #[test]
    fn a_lookup_that_misses_changes_nothing() {
        let mut cache = StatementCache::with_capacity(2);
        cache.insert("a", 1);
        assert_eq!(cache.get("zzz"), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn replacing_an_entry_in_a_full_cache_drops_no_other() {
        let mut cache = StatementCache::with_capacity(2);
        cache.insert("a", 1);
        cache.insert("b", 2);
        cache.insert("a", 10);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("a"), Some(10));
        assert_eq!(cache.get("b"), Some(2));
    }

    #[test]
    fn remove_and_clear_forget_entries() {
        let mut cache = StatementCache::with_capacity(4);
        cache.insert("a", 1);
        cache.insert("b", 2);
        cache.remove("a");
        assert!(!cache.contains("a"));
        assert!(cache.contains("b"));
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_default_capacity_is_kept() {
        let mut cache = StatementCache::default();
        for i in 0..STATEMENT_CACHE_SIZE + 10 {
            cache.insert(&i.to_string(), i);
        }
        assert_eq!(cache.len(), STATEMENT_CACHE_SIZE);
        // The first ten were the least recently used.
        assert!((0..10).all(|i| !cache.contains(&i.to_string())));
        assert!(cache.contains(&(STATEMENT_CACHE_SIZE + 9).to_string()));
    }

    #[test]
    fn a_capacity_of_zero_still_keeps_one_entry() {
        let mut cache = StatementCache::with_capacity(0);
        cache.insert("a", 1);
        cache.insert("b", 2);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("b"), Some(2));
    }
}
