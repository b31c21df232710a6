//! The store's map: a hash map in shards, each shared copy-on-write. Freezing it for a snapshot
//! clones one `Arc` per shard; a write after that copies only the shard it lands in, so the
//! cost of copying is spread over the writes that follow instead of stalling the apply path.

use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};

/// Shards per map: enough that copying one is small next to the whole, few enough that a
/// snapshot's clone of the shard list stays trivial.
const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

#[derive(Clone, Debug)]
pub(crate) struct ShardedMap {
    shards: Vec<Arc<HashTable<(Bytes, Bytes)>>>,
    /// Seeded at random per process: clients choose keys, and must not choose collisions.
    hasher: DefaultHashBuilder,
    len: usize,
}

impl Default for ShardedMap {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl ShardedMap {
    /// The key's hash, and the shard its top bits pick (the table uses the low bits).
    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> (u64::BITS - SHARD_BITS)) as usize)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(hash, |(k, _)| k.as_ref() == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn insert(&mut self, key: Bytes, value: Bytes) {
        let (hash, shard) = self.locate(&key);
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.shards[shard]);
        match table.entry(
            hash,
            |(k, _)| *k == key,
            |(k, _)| hasher.hash_one(k.as_ref()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = value,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key, value));
                self.len += 1;
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Bytes> {
        let (hash, shard) = self.locate(key);
        // Look before writing: a miss must not copy a shared shard.
        self.shards[shard].find(hash, |(k, _)| k.as_ref() == key)?;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let entry = table.find_entry(hash, |(k, _)| k.as_ref() == key).ok()?;
        self.len -= 1;
        Some(entry.remove().0 .1)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn behaves_as_a_map() {
        let mut m = ShardedMap::default();
        let mut model = std::collections::BTreeMap::new();
        for i in 0..5_000u32 {
            let key = b(&format!("k{}", i % 1_700));
            match i % 5 {
                0 => assert_eq!(m.remove(&key), model.remove(&key)),
                _ => {
                    m.insert(key.clone(), b(&i.to_string()));
                    model.insert(key, b(&i.to_string()));
                }
            }
            assert_eq!(m.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(m.get(k), Some(v));
        }
        let mut all: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_frozen_copy_does_not_see_later_writes() {
        let mut m = ShardedMap::default();
        for i in 0..1_000 {
            m.insert(b(&format!("k{i}")), b("old"));
        }
        let frozen = m.clone();
        m.insert(b("k1"), b("new"));
        assert_eq!(m.remove(b"k2"), Some(b("old")));
        assert_eq!(frozen.get(b"k1"), Some(&b("old")));
        assert_eq!(frozen.get(b"k2"), Some(&b("old")));
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
}
