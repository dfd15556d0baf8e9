//! Per-tenant string interning: channels, campaigns, sources and plans become small integers so
//! that the state holds 4-byte ids instead of strings, once per distinct name.

use rustc_hash::FxHashMap;

/// Up to this many names, a lookup scans them instead of hashing.
const SCAN_UP_TO: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct Interner {
    ids: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// An interner where the empty string is id 0 (the channel-level campaign).
    pub fn with_empty() -> Self {
        let mut i = Interner::default();
        i.intern("");
        i
    }

    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        // A tenant has a handful of channels, campaigns and sources: comparing the names costs
        // less than hashing the one looked up (a name's id is its index).
        if self.names.len() <= SCAN_UP_TO {
            return self
                .names
                .iter()
                .position(|n| **n == *name)
                .map(|i| i as u32);
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
