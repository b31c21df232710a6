//! The store's map: a hash map in shards, each shared copy-on-write. Freezing it for a snapshot
//! clones one `Arc` per shard; a write after that copies only the shard it lands in, so the
//! cost of copying is spread over the writes that follow instead of stalling the apply path.
//!
//! Each key and its value live in one allocation of their own. Commands arrive as slices of
//! whatever buffer carried them (a received frame holds many entries): keeping those slices
//! would pin every such buffer for as long as any one of its keys lives, which with a large key
//! space is nearly all of them (1 M keys under load grew a node by gigabytes).

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Shards per map. With uniform keys the writes after a snapshot copy the whole map, shard by
/// shard as each is first written: with many small shards (about 60 entries each at 1 M keys)
/// each copy is a few microseconds and the copies spread over the ~160,000 writes it takes to
/// touch them all. With 1,024 shards they came within the first few thousand writes, and the
/// applier of every node fell ~10,000 entries behind at each snapshot. Cloning the shard list
/// for a snapshot costs one reference count per shard, well under a millisecond.
const SHARDS: usize = 16 * 1024;
/// Where in the hash the shard's bits start: above any table's bucket bits, below the tag's.
const SHARD_SHIFT: u32 = 32;

/// A key and its value, in one allocation.
#[derive(Clone, Debug)]
struct Entry {
    bytes: Arc<[u8]>,
    key_len: usize,
}

impl Entry {
    fn new(key: &[u8], value: &[u8]) -> Self {
        Self {
            // A chain of slice iterators has an exact length: one allocation, no Vec first.
            bytes: key.iter().chain(value).copied().collect(),
            key_len: key.len(),
        }
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_len..]
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ShardedMap {
    shards: Vec<Arc<HashTable<Entry>>>,
    /// Seeded at random per process: clients choose keys, and must not choose collisions.
    hasher: DefaultHashBuilder,
    len: usize,
}

impl Default for ShardedMap {
    fn default() -> Self {
        // One shared empty table: a shard gets its own on its first write.
        let empty = Arc::new(HashTable::new());
        Self {
            shards: vec![empty; SHARDS],
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl ShardedMap {
    /// The key's hash, and the shard that bits from its middle pick. The table inside the
    /// shard uses the low bits for the bucket and the top seven as each slot's tag: taking the
    /// shard from the top bits gave every key of a shard the same tag, so each probe compared
    /// keys byte by byte along the whole group.
    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> SHARD_SHIFT) as usize & (SHARDS - 1))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(hash, |e| e.key() == key)
            .map(Entry::value)
    }

    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) {
        let (hash, shard) = self.locate(key);
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let entry = Entry::new(key, value);
        match table.entry(hash, |e| e.key() == key, |e| hasher.hash_one(e.key())) {
            // Replaced whole: the old allocation (old key and value) goes at once.
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(entry);
                self.len += 1;
            }
        }
    }

    /// Removes `key`; whether it was there.
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        let (hash, shard) = self.locate(key);
        // Look before writing: a miss must not copy a shared shard.
        if self.shards[shard].find(hash, |e| e.key() == key).is_none() {
            return false;
        }
        let table = Arc::make_mut(&mut self.shards[shard]);
        let Ok(entry) = table.find_entry(hash, |e| e.key() == key) else {
            return false;
        };
        entry.remove();
        self.len -= 1;
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every key and its value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|e| (e.key(), e.value())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut m = ShardedMap::default();
        let mut model = std::collections::BTreeMap::new();
        for i in 0..5_000u32 {
            let key = format!("k{}", i % 1_700).into_bytes();
            match i % 5 {
                0 => assert_eq!(m.remove(&key), model.remove(&key).is_some()),
                _ => {
                    m.insert(&key, i.to_string().as_bytes());
                    model.insert(key, i.to_string().into_bytes());
                }
            }
            assert_eq!(m.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(m.get(k), Some(&v[..]));
        }
        let mut all: Vec<_> = m.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        all.sort();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        // Empty keys and values are keys and values too.
        m.insert(b"", b"");
        assert_eq!(m.get(b""), Some(&b""[..]));
    }

    #[test]
    fn a_frozen_copy_does_not_see_later_writes() {
        let mut m = ShardedMap::default();
        for i in 0..1_000 {
            m.insert(format!("k{i}").as_bytes(), b"old");
        }
        let frozen = m.clone();
        m.insert(b"k1", b"new");
        assert!(m.remove(b"k2"));
        assert!(!m.remove(b"k2"));
        assert_eq!(frozen.get(b"k1"), Some(&b"old"[..]));
        assert_eq!(m.get(b"k1"), Some(&b"new"[..]));
        assert_eq!(frozen.get(b"k2"), Some(&b"old"[..]));
        assert_eq!((frozen.len(), m.len()), (1_000, 999));
        // Only the written shards were copied.
        let shared = frozen
            .shards
            .iter()
            .zip(&m.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 2, "{shared} shards still shared");
    }

    #[test]
    fn keys_of_one_shard_have_varied_tags() {
        // hashbrown tags each slot with the hash's top seven bits and compares keys only where
        // the tag matches: if the shard choice fixed those bits, every probe would compare keys.
        let m = ShardedMap::default();
        let mut tags = std::collections::HashSet::new();
        for i in 0..1_000_000u32 {
            let (hash, shard) = m.locate(&i.to_le_bytes());
            if shard < 8 {
                tags.insert(hash >> 57);
            }
        }
        assert!(
            tags.len() > 64,
            "only {} of 128 tags in 8 shards",
            tags.len()
        );
    }
}
