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

use hashbrown::DefaultHashBuilder;

use super::table::{prefetch, Entry, Table, ARC_HEADER_BYTES};

/// Shards per map. With uniform keys the writes after a snapshot copy the whole map, shard by
/// shard as each is first written: with many small shards (about 60 entries each at 1 M keys)
/// each copy is a few microseconds and the copies spread over the ~160,000 writes it takes to
/// touch them all. With 1,024 shards they came within the first few thousand writes, and the
/// applier of every node fell ~10,000 entries behind at each snapshot. Cloning the shard list
/// for a snapshot costs one reference count per shard, well under a millisecond.
const SHARDS: usize = 16 * 1024;
/// Where in the hash the shard's bits start: above any table's slot bits.
const SHARD_SHIFT: u32 = 32;

/// A key and its hash, computed once for the prefetches ahead of its command and its execution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key<'a> {
    bytes: &'a [u8],
    hash: u64,
}

/// What [`ShardedMap::prefetch`] asks the cache for: each stage reads what the one before
/// brought in, so a command's stages are issued a few commands apart.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Prefetch {
    /// The shard's header: its reference count and where its slots are.
    Shard,
    /// The slot where the key's probe starts.
    Slot,
    /// The entry the probe will compare the key with.
    Entry,
}

#[derive(Clone, Debug)]
pub(crate) struct ShardedMap {
    shards: Vec<Arc<Table>>,
    /// Seeded at random per process: clients choose keys, and must not choose collisions.
    hasher: DefaultHashBuilder,
    len: usize,
}

impl Default for ShardedMap {
    fn default() -> Self {
        // One shared empty table: a shard gets its own on its first write.
        let empty = Arc::new(Table::default());
        Self {
            shards: vec![empty; SHARDS],
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl ShardedMap {
    pub(crate) fn key<'a>(&self, bytes: &'a [u8]) -> Key<'a> {
        Key {
            bytes,
            hash: self.hasher.hash_one(bytes),
        }
    }

    /// The shard that bits from the middle of the hash pick; the table uses the low bits.
    fn shard_index(key: Key<'_>) -> usize {
        (key.hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
    }

    fn shard(&self, key: Key<'_>) -> &Arc<Table> {
        &self.shards[Self::shard_index(key)]
    }

    fn shard_mut(&mut self, key: Key<'_>) -> &mut Table {
        Arc::make_mut(&mut self.shards[Self::shard_index(key)])
    }

    pub(crate) fn get(&self, key: Key<'_>) -> Option<&[u8]> {
        self.shard(key).get(key.hash, key.bytes).map(Entry::value)
    }

    pub(crate) fn insert(&mut self, key: Key<'_>, value: &[u8]) {
        let entry = Entry::new(key.bytes, value);
        if self.shard_mut(key).insert(key.hash, entry) {
            self.len += 1;
        }
    }

    /// Removes `key`; whether it was there.
    pub(crate) fn remove(&mut self, key: Key<'_>) -> bool {
        // Look before writing: a miss must not copy a shared shard.
        if self.shard(key).get(key.hash, key.bytes).is_none() {
            return false;
        }
        let removed = self.shard_mut(key).remove(key.hash, key.bytes);
        self.len -= usize::from(removed);
        removed
    }

    /// Asks the cache for one stage of `key`'s next access, without waiting for it.
    pub(crate) fn prefetch(&self, key: Key<'_>, stage: Prefetch) {
        let shard = self.shard(key);
        match stage {
            Prefetch::Shard => {
                // The reference count sits just before the table; the two may straddle a line.
                let table = Arc::as_ptr(shard).cast::<u8>();
                prefetch(table.wrapping_sub(ARC_HEADER_BYTES));
                prefetch(table.wrapping_add(size_of::<Table>() - 1));
            }
            Prefetch::Slot => shard.prefetch_slot(key.hash),
            Prefetch::Entry => shard.prefetch_entry(key.hash),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every key and its value, in no particular order. Entries live wherever they were
    /// allocated: the iterator asks for each (all its lines) some entries before it yields it,
    /// so that a full scan (a snapshot) waits on memory a few times less.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        const AHEAD: usize = 16;
        let entries = || self.shards.iter().flat_map(|shard| shard.entries());
        let mut lead = entries();
        lead.by_ref().take(AHEAD).for_each(Entry::prefetch_all);
        entries().map(move |e| {
            if let Some(next) = lead.next() {
                next.prefetch_all();
            }
            (e.key(), e.value())
        })
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
                0 => assert_eq!(m.remove(m.key(&key)), model.remove(&key).is_some()),
                _ => {
                    m.insert(m.key(&key), i.to_string().as_bytes());
                    model.insert(key, i.to_string().into_bytes());
                }
            }
            assert_eq!(m.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(m.get(m.key(k)), Some(&v[..]));
        }
        let mut all: Vec<_> = m.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        all.sort();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        // Empty keys and values are keys and values too.
        m.insert(m.key(b""), b"");
        assert_eq!(m.get(m.key(b"")), Some(&b""[..]));
    }

    #[test]
    fn a_frozen_copy_does_not_see_later_writes() {
        let mut m = ShardedMap::default();
        for i in 0..1_000 {
            m.insert(m.key(format!("k{i}").as_bytes()), b"old");
        }
        let frozen = m.clone();
        m.insert(m.key(b"k1"), b"new");
        assert!(m.remove(m.key(b"k2")));
        assert!(!m.remove(m.key(b"k2")));
        assert_eq!(frozen.get(frozen.key(b"k1")), Some(&b"old"[..]));
        assert_eq!(m.get(m.key(b"k1")), Some(&b"new"[..]));
        assert_eq!(frozen.get(frozen.key(b"k2")), Some(&b"old"[..]));
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
    fn keys_of_one_shard_start_their_probes_all_over_its_slots() {
        // A table probes from the hash's low bits: if the shard choice fixed those bits too,
        // every key of a shard would start at the same slot and probe through all the others.
        let m = ShardedMap::default();
        let mut homes = std::collections::HashSet::new();
        for i in 0..1_000_000u32 {
            let bytes = i.to_le_bytes();
            let key = m.key(&bytes);
            if ShardedMap::shard_index(key) < 8 {
                homes.insert(key.hash & 127);
            }
        }
        assert!(
            homes.len() > 100,
            "only {} of 128 homes in 8 shards",
            homes.len()
        );
    }

    #[test]
    fn the_prefetching_scan_yields_every_entry_once() {
        let mut m = ShardedMap::default();
        // Fewer entries than the scan looks ahead, and many more.
        for n in [0u32, 3, 5_000] {
            for i in 0..n {
                m.insert(m.key(&i.to_le_bytes()), b"v");
            }
            let mut seen: Vec<u32> = m
                .iter()
                .map(|(k, _)| u32::from_le_bytes(k.try_into().expect("4 bytes")))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }
}
