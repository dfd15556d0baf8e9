//! Per-tenant string interning: channels, campaigns, sources and plans become small integers so
//! that the state holds 4-byte ids instead of strings, once per distinct name.

use rustc_hash::FxHashMap;

/// Up to this many names, a lookup scans them instead of hashing.
const SCAN_UP_TO: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct Interner {
    ids: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    /// Each name's [`tag`], by id: a scan compares these and calls `memcmp` only on a match.
    tags: Vec<(usize, u64)>,
}

/// A name's length, and its first and last four bytes (all its bytes when shorter than four):
/// for names of up to eight bytes (`meta`, `cmp-1`, `shopify`) equal tags mean equal names.
#[inline]
fn tag(name: &str) -> (usize, u64) {
    let b = name.as_bytes();
    let n = b.len();
    let bytes = if n >= 4 {
        let first = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let last = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(first) | u64::from(last) << 32
    } else {
        b.iter().fold(0, |t, &x| t << 8 | u64::from(x))
    };
    (n, bytes)
}

impl Interner {
    /// An interner where the empty string is id 0 (the channel-level campaign).
    pub fn with_empty() -> Self {
        let mut i = Interner::default();
        i.intern("");
        i
    }

    /// The id of `name`, given it if new. Inlined where names are looked up for every record
    /// and forecast line (a call was a third of a lookup's instructions); adding a name, once
    /// per distinct name, is not.
    #[inline]
    pub fn intern(&mut self, name: &str) -> u32 {
        match self.get(name) {
            Some(id) => id,
            None => self.add(name),
        }
    }

    #[cold]
    #[inline(never)]
    fn add(&mut self, name: &str) -> u32 {
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.tags.push(tag(name));
        self.ids.insert(name.into(), id);
        id
    }

    #[inline]
    pub fn get(&self, name: &str) -> Option<u32> {
        // A tenant has a handful of channels, campaigns and sources: comparing the names costs
        // less than hashing the one looked up (a name's id is its index).
        if self.names.len() <= SCAN_UP_TO {
            let t = tag(name);
            for (i, &u) in self.tags.iter().enumerate() {
                if u == t && (t.0 <= 8 || *self.names[i] == *name) {
                    return Some(i as u32);
                }
            }
            return None;
        }
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_empty_is_zero() {
        let mut i = Interner::with_empty();
        assert_eq!(i.get(""), Some(0));
        let a = i.intern("meta");
        assert_eq!(i.intern("meta"), a);
        assert_eq!(i.name(a), "meta");
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn names_with_the_same_length_and_edges_stay_apart() {
        // Up to SCAN_UP_TO names each, so that lookups scan. In the second set the nine-byte
        // names share their length and their first and last four bytes: only the full
        // comparison tells them apart.
        let sets: [&[&str]; 2] = [
            &["", "a", "ab", "ba", "abc", "cmp-1", "cmp-2", "abcdefgh"],
            &["abcdefgh", "abcdefgi", "bbcdefgh", "abcdXefgh", "abcdYefgh"],
        ];
        for names in sets {
            assert!(names.len() <= SCAN_UP_TO);
            let mut i = Interner::default();
            for (n, name) in names.iter().enumerate() {
                assert_eq!(i.intern(name), n as u32);
            }
            for (n, name) in names.iter().enumerate() {
                assert_eq!(i.get(name), Some(n as u32), "{name}");
            }
            for absent in ["abcdZefgh", "cmp-3", "b", "abcdefgj"] {
                assert_eq!(i.get(absent), None, "{absent}");
            }
        }
    }

    #[test]
    fn lookups_agree_past_the_scanned_size() {
        let mut i = Interner::with_empty();
        let names: Vec<String> = (0..3 * SCAN_UP_TO).map(|n| format!("c{n}")).collect();
        for (n, name) in names.iter().enumerate() {
            assert_eq!(i.intern(name), n as u32 + 1);
            for (m, earlier) in names[..=n].iter().enumerate() {
                assert_eq!(i.get(earlier), Some(m as u32 + 1));
                assert_eq!(i.intern(earlier), m as u32 + 1);
            }
            assert_eq!(i.get("missing"), None);
        }
        assert_eq!(i.get(""), Some(0));
    }
}
