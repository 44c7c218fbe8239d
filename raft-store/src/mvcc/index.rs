//! The in-memory key index: for every key, the revisions at which it was written, grouped in
//! generations (a generation runs from a creation to a deletion). Values live in the revision
//! store; the index answers "which revision of which keys are visible at revision R".

use std::collections::BTreeMap;
use std::ops::Bound;

/// A point in the store's history: `main` is the global revision of a committed write, `sub`
/// orders the changes inside one write (a Txn changes several keys at one main revision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const ENCODED_LEN: usize = 16;

    pub fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// Big-endian so that byte order is revision order in the store.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let main = u64::from_be_bytes(bytes[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(bytes[8..].try_into().ok()?) as i64;
        Some(Self { main, sub })
    }
}

/// One life of a key: created at `revs[0]`; if the key was deleted, the last entry is the
/// tombstone's revision and a new, empty generation follows.
#[derive(Clone, Debug, Default)]
struct Generation {
    revs: Vec<Revision>,
}

/// A key's history; the last generation is the current one (empty when the key is deleted).
#[derive(Clone, Debug)]
struct KeyHistory {
    generations: Vec<Generation>,
}

impl KeyHistory {
    fn new() -> Self {
        Self { generations: vec![Generation::default()] }
    }

    fn current(&mut self) -> &mut Generation {
        self.generations.last_mut().expect("a key history always has a generation")
    }

    /// The revision of this key visible at `at`, if the key existed then. (Creation revision
    /// and version are read from the stored value: compaction trims the revisions kept here.)
    fn visible_at(&self, at: i64) -> Option<Revision> {
        let last = self.generations.len() - 1;
        for (i, generation) in self.generations.iter().enumerate().rev() {
            let Some(first) = generation.revs.first() else { continue };
            if first.main > at {
                continue;
            }
            // A closed generation ends with a tombstone; past it the key did not exist.
            let closed = i != last;
            let n = generation.revs.partition_point(|r| r.main <= at);
            if closed && n == generation.revs.len() {
                return None;
            }
            return Some(generation.revs[n - 1]);
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }
}

#[derive(Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

/// The key range of a request: a single key, `[key, end)`, or every key from `key` on.
pub fn range_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if range_end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if range_end == [0u8] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(range_end))
    }
}

/// True when `key` lies within `bounds`.
pub fn in_bounds(bounds: &(Bound<&[u8]>, Bound<&[u8]>), key: &[u8]) -> bool {
    let above = match bounds.0 {
        Bound::Included(start) => key >= start,
        Bound::Excluded(start) => key > start,
        Bound::Unbounded => true,
    };
    let below = match bounds.1 {
        Bound::Included(end) => key <= end,
        Bound::Excluded(end) => key < end,
        Bound::Unbounded => true,
    };
    above && below
}

/// True when the bounds describe an empty or inverted interval, which BTreeMap refuses.
fn empty_interval(bounds: &(Bound<&[u8]>, Bound<&[u8]>)) -> bool {
    match bounds {
        (Bound::Included(start), Bound::Excluded(end)) => start >= end,
        (Bound::Included(start), Bound::Included(end)) => start > end,
        _ => false,
    }
}

impl KeyIndex {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records a write of `key` at `rev`.
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        let history = match self.keys.get_mut(key) {
            Some(history) => history,
            None => self.keys.entry(key.to_vec()).or_insert_with(KeyHistory::new),
        };
        history.current().revs.push(rev);
    }

    /// Records a deletion (tombstone) of a live `key` at `rev`.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        let history = match self.keys.get_mut(key) {
            Some(history) => history,
            None => self.keys.entry(key.to_vec()).or_insert_with(KeyHistory::new),
        };
        history.current().revs.push(rev);
        history.generations.push(Generation::default());
    }

    /// Takes back the latest `put` or `tombstone` of `key` (a failed transaction's).
    pub fn undo(&mut self, key: &[u8], tombstone: bool) {
        let Some(history) = self.keys.get_mut(key) else { return };
        if tombstone {
            history.generations.pop();
        }
        history.current().revs.pop();
        if history.is_empty() {
            self.keys.remove(key);
        }
    }

    /// The keys of a range visible at revision `at`, in key order, at most `limit` (0: all).
    pub fn range(&self, key: &[u8], range_end: &[u8], at: i64, limit: usize) -> Vec<(Vec<u8>, Revision)> {
        let mut out = Vec::new();
        self.visit(key, range_end, at, |k, v| {
            out.push((k.to_vec(), v));
            limit == 0 || out.len() < limit
        });
        out
    }

    /// Number of keys of a range visible at revision `at`.
    pub fn count(&self, key: &[u8], range_end: &[u8], at: i64) -> usize {
        let mut n = 0;
        self.visit(key, range_end, at, |_, _| {
            n += 1;
            true
        });
        n
    }

    /// Calls `f` for each key visible at `at` in the range, in key order, while it returns true.
    fn visit(&self, key: &[u8], range_end: &[u8], at: i64, mut f: impl FnMut(&[u8], Revision) -> bool) {
        let bounds = range_bounds(key, range_end);
        if empty_interval(&bounds) {
            return;
        }
        for (k, history) in self.keys.range::<[u8], _>(bounds) {
            if let Some(visible) = history.visible_at(at) {
                if !f(k, visible) {
                    return;
                }
            }
        }
    }

    /// Drops history that no read at or above `at` can see. Returns the revisions whose values
    /// may now be removed from the revision store.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.keys.retain(|_, history| {
            let generations = &mut history.generations;
            // The first generation still alive after `at`: its tombstone is above `at`, or it
            // is the current one.
            let mut keep_from = 0;
            while keep_from < generations.len() - 1 {
                let tomb = generations[keep_from].revs.last().expect("closed generations are not empty");
                if tomb.main > at {
                    break;
                }
                keep_from += 1;
            }
            for generation in generations.drain(..keep_from) {
                removed.extend(generation.revs);
            }
            let last = generations.len() - 1;
            let first = &mut generations[0];
            // Keep the newest revision at or below `at` (what a read at `at` sees) and all above.
            let n = first.revs.partition_point(|r| r.main <= at);
            if n > 1 {
                removed.extend(first.revs.drain(..n - 1));
            }
            // A closed generation reduced to its tombstone is dead at `at`: drop it too.
            if last != 0 && first.revs.len() == 1 && first.revs[0].main <= at {
                removed.extend(first.revs.drain(..));
                generations.remove(0);
            }
            !history.is_empty()
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn visibility_follows_generations() {
        let mut index = KeyIndex::default();
        index.put(b"a", rev(2));
        index.put(b"a", rev(3));
        index.tombstone(b"a", rev(4));
        index.put(b"a", rev(6));
        assert_eq!(index.range(b"a", b"", 1, 0), vec![]);
        assert_eq!(index.range(b"a", b"", 3, 0)[0].1, rev(3));
        assert!(index.range(b"a", b"", 4, 0).is_empty(), "deleted at 4");
        assert!(index.range(b"a", b"", 5, 0).is_empty());
        assert_eq!(index.range(b"a", b"", 7, 0)[0].1, rev(6));
    }

    #[test]
    fn compaction_keeps_what_reads_above_it_see() {
        let mut index = KeyIndex::default();
        index.put(b"a", rev(2));
        index.put(b"a", rev(3));
        index.put(b"b", rev(4));
        index.tombstone(b"b", rev(5));
        index.put(b"a", rev(6));
        let mut removed = index.compact(5);
        removed.sort();
        assert_eq!(removed, vec![rev(2), rev(4), rev(5)]);
        assert_eq!(index.len(), 1, "b is gone entirely");
        assert_eq!(index.range(b"a", b"", 5, 0)[0].1, rev(3));
        assert_eq!(index.range(b"a", b"", 6, 0)[0].1, rev(6));
    }

    #[test]
    fn ranges_respect_bounds_and_limits() {
        let mut index = KeyIndex::default();
        for (i, k) in [&b"a"[..], b"b", b"c", b"d"].iter().enumerate() {
            index.put(k, rev(i as i64 + 2));
        }
        let keys = |v: Vec<(Vec<u8>, Revision)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(index.range(b"b", b"d", 10, 0)), vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(keys(index.range(b"b", b"\0", 10, 0)).len(), 3);
        assert_eq!(keys(index.range(b"a", b"\0", 10, 2)).len(), 2);
        assert!(index.range(b"d", b"b", 10, 0).is_empty(), "inverted range is empty");
        assert_eq!(index.count(b"a", b"\0", 3), 2);
    }
}
