//! The hot-data cache behind de-duplication: a bounded index from the
//! content of recently sent pages and disk blocks to where the destination
//! holds that content, so a page or block whose content is already there
//! travels as a reference instead of 4 KiB.
//!
//! # Why only the source keeps an index
//!
//! A reference names its source location *and* the content hash:
//! "copy what you hold at `from` (hash `H`) into `M`". The destination needs
//! no index of its own to resolve it, only the location; the hash lets it
//! check, before it writes anything, that what it holds at `from` is what
//! the source meant. An index on both sides, kept in step by applying the
//! same updates in the same order, would let a reference carry the hash
//! alone (16 bytes instead of about 22), but it would make the destination
//! hash every page it receives, and any divergence (a bug, a lost update,
//! the guest writing after the switch) would have to be caught anyway by
//! the same check. With the location explicit, the check is the whole
//! correctness argument, and eviction is a private matter of the source.
//!
//! # What the index holds
//!
//! An entry says: the destination holds content `H` at location `L`,
//! because the source sent it there (as data, or as a reference the
//! destination resolved). Both spaces share one index, so a memory page can
//! name a disk block holding the same bytes (the guest's page cache) and
//! the other way round. Sending anything else to `L` (other content, a zero
//! marker) replaces or removes its entry: a location has at most one entry,
//! and a content hash maps to the location that received it last.
//!
//! # Eviction
//!
//! First in, first out by insertion: the index is a ring of `capacity`
//! slots; an insertion takes the next slot and evicts whatever held it.
//! Recording content again moves it to the newest slot, so content that
//! keeps coming back stays. The order depends only on the sequence of
//! updates, never on hashing or timing: two indexes fed the same updates
//! hold the same entries.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The first 128 bits of the BLAKE3 hash of a page or block. Two different
/// contents sharing one would make a reference copy the wrong one, so the
/// width matters: a birthday pair among 128-bit hashes takes about 2^64
/// pages, some 64 ZiB of content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 16]);

impl ContentHash {
    pub fn of(content: &[u8]) -> ContentHash {
        let full = blake3::hash(content);
        let mut first = [0; 16];
        first.copy_from_slice(&full.as_bytes()[..16]);
        ContentHash(first)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Where the destination holds a page-sized piece of content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    /// A page of guest RAM.
    Page(u32),
    /// A block of guest disk `disk` (its index in the migration request).
    Block { disk: u16, block: u32 },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Page(page) => write!(f, "page {page}"),
            Location::Block { disk, block } => write!(f, "block {block} of disk {disk}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: ContentHash,
    location: Location,
}

/// Bounded content index with first-in-first-out eviction (module docs).
#[derive(Debug, Clone)]
pub struct ContentIndex {
    /// Ring of entries in insertion order; `next` is the oldest (or free).
    slots: Vec<Option<Entry>>,
    next: usize,
    by_hash: HashMap<ContentHash, usize>,
    by_location: HashMap<Location, usize>,
}

impl ContentIndex {
    /// An index of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> ContentIndex {
        let capacity = capacity.max(1);
        ContentIndex {
            slots: vec![None; capacity],
            next: 0,
            by_hash: HashMap::with_capacity(capacity),
            by_location: HashMap::with_capacity(capacity),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.by_location.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_location.is_empty()
    }

    /// Where the destination holds content `hash`, if the index knows.
    pub fn find(&self, hash: &ContentHash) -> Option<Location> {
        self.by_hash
            .get(hash)
            .and_then(|&slot| self.slots[slot])
            .map(|entry| entry.location)
    }

    /// `location` now holds content `hash` at the destination; it becomes
    /// the newest entry, evicting the oldest when the index is full.
    pub fn record(&mut self, location: Location, hash: ContentHash) {
        self.forget(location);
        if let Some(slot) = self.by_hash.get(&hash).copied() {
            self.clear(slot);
        }
        let slot = self.next;
        self.clear(slot);
        self.slots[slot] = Some(Entry { hash, location });
        self.by_hash.insert(hash, slot);
        self.by_location.insert(location, slot);
        self.next = (slot + 1) % self.slots.len();
    }

    /// `location` no longer holds what the index says (it was overwritten
    /// with content the index does not keep, or may have been).
    pub fn forget(&mut self, location: Location) {
        if let Some(slot) = self.by_location.get(&location).copied() {
            self.clear(slot);
        }
    }

    fn clear(&mut self, slot: usize) {
        if let Some(entry) = self.slots[slot].take() {
            self.by_hash.remove(&entry.hash);
            self.by_location.remove(&entry.location);
        }
    }

    /// The entries, oldest first: what two indexes must agree on.
    pub fn entries(&self) -> impl Iterator<Item = (Location, ContentHash)> + '_ {
        let (newer, older) = self.slots.split_at(self.next);
        older
            .iter()
            .chain(newer)
            .flatten()
            .map(|entry| (entry.location, entry.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash(n: u8) -> ContentHash {
        ContentHash::of(&[n; 4096])
    }

    #[test]
    fn finds_what_was_recorded_until_it_is_evicted() {
        let mut index = ContentIndex::new(2);
        index.record(Location::Page(1), hash(1));
        index.record(Location::Block { disk: 0, block: 7 }, hash(2));
        assert_eq!(index.find(&hash(1)), Some(Location::Page(1)));
        assert_eq!(
            index.find(&hash(2)),
            Some(Location::Block { disk: 0, block: 7 })
        );
        index.record(Location::Page(3), hash(3));
        assert_eq!(index.find(&hash(1)), None, "the oldest is evicted");
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn overwriting_a_location_invalidates_its_entry() {
        let mut index = ContentIndex::new(8);
        index.record(Location::Page(1), hash(1));
        index.record(Location::Page(1), hash(2));
        assert_eq!(index.find(&hash(1)), None, "page 1 no longer holds it");
        assert_eq!(index.find(&hash(2)), Some(Location::Page(1)));
        index.forget(Location::Page(1));
        assert_eq!(index.find(&hash(2)), None);
        assert!(index.is_empty());
    }

    #[test]
    fn content_recorded_again_moves_to_its_newest_location_and_stays() {
        let mut index = ContentIndex::new(2);
        index.record(Location::Page(1), hash(1));
        index.record(Location::Page(2), hash(2));
        index.record(Location::Page(3), hash(1));
        assert_eq!(index.find(&hash(1)), Some(Location::Page(3)));
        index.record(Location::Page(4), hash(4));
        assert_eq!(index.find(&hash(2)), None, "page 2 was the oldest");
        assert_eq!(index.find(&hash(1)), Some(Location::Page(3)));
    }

    #[derive(Debug, Clone)]
    enum Update {
        Record(Location, u8),
        Forget(Location),
    }

    fn location() -> impl Strategy<Value = Location> {
        prop_oneof![
            (0..64u32).prop_map(Location::Page),
            (0..64u32).prop_map(|block| Location::Block { disk: 0, block }),
        ]
    }

    fn update() -> impl Strategy<Value = Update> {
        prop_oneof![
            3 => (location(), 0..32u8).prop_map(|(l, h)| Update::Record(l, h)),
            1 => location().prop_map(Update::Forget),
        ]
    }

    proptest! {
        /// Two indexes fed the same updates hold the same entries in the
        /// same order, and every entry is the last content sent to its
        /// location, whatever the capacity.
        #[test]
        fn indexes_fed_the_same_updates_agree(
            capacity in 1..40usize,
            updates in proptest::collection::vec(update(), 0..400),
        ) {
            let mut one = ContentIndex::new(capacity);
            let mut other = ContentIndex::new(capacity);
            let mut held: HashMap<Location, ContentHash> = HashMap::new();
            for update in &updates {
                match *update {
                    Update::Record(location, content) => {
                        one.record(location, hash(content));
                        other.record(location, hash(content));
                        held.insert(location, hash(content));
                    }
                    Update::Forget(location) => {
                        one.forget(location);
                        other.forget(location);
                        held.remove(&location);
                    }
                }
            }
            let entries: Vec<_> = one.entries().collect();
            prop_assert_eq!(&entries, &other.entries().collect::<Vec<_>>());
            prop_assert!(entries.len() <= capacity);
            for (location, content) in entries {
                prop_assert_eq!(held.get(&location), Some(&content));
                prop_assert_eq!(one.find(&content), Some(location));
            }
        }
    }
}
