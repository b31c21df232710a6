//! The store's map: a hash map in shards, each shared copy-on-write. Freezing it for a snapshot
//! clones one `Arc` per shard; a write after that copies only the shard it lands in, so the
//! cost of copying is spread over the writes that follow instead of stalling the apply path.
//!
//! Each key and its value live in one allocation of their own. Commands arrive as slices of
//! whatever buffer carried them (a received frame holds many entries): keeping those slices
//! would pin every such buffer for as long as any one of its keys lives, which with a large key
//! space is nearly all of them (1 M keys under load grew a node by gigabytes).
//!
//! Entries carry no reference count. With one, copying a shard after a freeze wrote every
//! entry's count and dropping the frozen copy wrote them all again: two cache misses per key
//! per snapshot (a million of each at 1 M keys), the first on the apply path, where they were
//! the largest steps left in the open-loop tail. Instead the live map owns its entries, a frozen
//! copy only reads them, and an entry the live map replaces or removes while any frozen copy is
//! alive is buried: handed to the frozen copies, the last of which frees it when dropped.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;
use parking_lot::Mutex;

use super::table::{prefetch, Entry, Table};
use crate::chunked::Chunked;

/// Shards per map. With uniform keys the writes after a snapshot copy the whole map, shard by
/// shard as each is first written: with many small shards (about 60 entries each at 1 M keys)
/// each copy is a few microseconds and the copies spread over the ~160,000 writes it takes to
/// touch them all. With 1,024 shards they came within the first few thousand writes, and the
/// applier of every node fell ~10,000 entries behind at each snapshot. Cloning the shard list
/// for a snapshot costs one reference count per shard, well under a millisecond.
const SHARDS: usize = 16 * 1024;
/// Where an `Arc`'s allocation starts before the pointer to its value: the strong and weak
/// counts.
const ARC_HEADER_BYTES: usize = 2 * size_of::<usize>();
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

/// The live map. It owns every entry its tables point to: it frees one when it replaces or
/// removes it, or when it is dropped, unless a frozen copy is alive, in which case the entry
/// goes to the copies' [`Frozen::buried`] instead.
#[derive(Debug)]
pub(crate) struct ShardedMap {
    shards: Vec<Arc<Table>>,
    /// Seeded at random per process: clients choose keys, and must not choose collisions.
    hasher: DefaultHashBuilder,
    len: usize,
    /// Shared with every frozen copy this map made.
    frozen: Arc<Mutex<Frozen>>,
}

/// What the live map and its frozen copies agree on, under one lock.
#[derive(Debug, Default)]
struct Frozen {
    /// Frozen copies alive.
    copies: usize,
    /// Entries the live map let go of while `copies > 0`: one of the copies may still read
    /// them. The copy that brings `copies` to 0 frees them, on its own thread (the snapshot's).
    /// That includes entries written after the freeze, which no copy reads: telling them apart
    /// would take a freeze epoch per slot, and they are the lesser part (at 1 M uniform keys, a
    /// snapshot as long as 0.7 M writes buries ~0.5 M entries the copy holds and ~0.2 M it does
    /// not). In chunks: a vector doubling under the lock would copy megabytes on the apply path.
    buried: Chunked<Entry>,
}

/// A frozen copy of a [`ShardedMap`], for a snapshot: it reads the entries as they were when it
/// was made, whatever the live map does after.
#[derive(Debug)]
pub(crate) struct FrozenMap {
    shards: Vec<Arc<Table>>,
    len: usize,
    frozen: Arc<Mutex<Frozen>>,
}

impl Default for ShardedMap {
    fn default() -> Self {
        // One shared empty table: a shard gets its own on its first write.
        let empty = Arc::new(Table::default());
        Self {
            shards: vec![empty; SHARDS],
            hasher: DefaultHashBuilder::default(),
            len: 0,
            frozen: Arc::default(),
        }
    }
}

impl Clone for ShardedMap {
    /// A map with entries of its own: two live maps never share one (each would free it).
    fn clone(&self) -> Self {
        let mut copy = Self::default();
        copy.hasher = self.hasher.clone();
        for (k, v) in self.iter() {
            copy.insert(copy.key(k), v);
        }
        copy
    }
}

impl Drop for ShardedMap {
    fn drop(&mut self) {
        let entries = self
            .shards
            .iter()
            .flat_map(|shard| shard.entries().copied());
        let mut frozen = self.frozen.lock();
        if frozen.copies > 0 {
            // The copies still read them; the last one frees them.
            entries.for_each(|entry| frozen.buried.push_back(entry));
        } else {
            drop(frozen);
            for entry in entries {
                // SAFETY: no frozen copy is alive, so no table but this map's holds the entry,
                // and the map is going: this is its one free.
                #[allow(unsafe_code)]
                unsafe {
                    entry.free();
                }
            }
        }
    }
}

impl Drop for FrozenMap {
    fn drop(&mut self) {
        let buried = {
            let mut frozen = self.frozen.lock();
            frozen.copies -= 1;
            if frozen.copies > 0 {
                return;
            }
            std::mem::take(&mut frozen.buried)
        };
        for entry in buried {
            // SAFETY: this was the last frozen copy, so nothing reads a buried entry any more
            // (the live map buried it when it stopped pointing to it), and each entry is buried
            // once. The lock orders every copy's reads before this free.
            #[allow(unsafe_code)]
            unsafe {
                entry.free();
            }
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
        match self.shard_mut(key).insert(key.hash, entry) {
            Some(replaced) => self.let_go(replaced),
            None => self.len += 1,
        }
    }

    /// Removes `key`; whether it was there.
    pub(crate) fn remove(&mut self, key: Key<'_>) -> bool {
        // Look before writing: a miss must not copy a shared shard.
        if self.shard(key).get(key.hash, key.bytes).is_none() {
            return false;
        }
        let removed = self
            .shard_mut(key)
            .remove(key.hash, key.bytes)
            .expect("the key was found just above");
        self.len -= 1;
        self.let_go(removed);
        true
    }

    /// An entry no table of this map points to any more: freed, or buried while a frozen copy
    /// may still read it.
    fn let_go(&mut self, entry: Entry) {
        let mut frozen = self.frozen.lock();
        if frozen.copies > 0 {
            frozen.buried.push_back(entry);
            return;
        }
        drop(frozen);
        // SAFETY: no frozen copy is alive (the lock orders their last reads before this), so
        // only this map's tables could hold the entry, and none does any more.
        #[allow(unsafe_code)]
        unsafe {
            entry.free();
        }
    }

    /// A copy that keeps reading the map as it is now.
    pub(crate) fn freeze(&self) -> FrozenMap {
        self.frozen.lock().copies += 1;
        FrozenMap {
            shards: self.shards.clone(),
            len: self.len,
            frozen: self.frozen.clone(),
        }
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

    /// Every key and its value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        scan(&self.shards)
    }
}

#[cfg(test)]
impl ShardedMap {
    /// Every key and its value, copied out and sorted: what tests compare.
    pub(crate) fn sorted(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all: Vec<_> = self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        all.sort();
        all
    }
}

impl FrozenMap {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every key and its value as they were when the copy was made, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        scan(&self.shards)
    }
}

/// Every entry of `shards`. Entries live wherever they were allocated: the iterator asks for
/// each (all its lines) some entries before it yields it, so that a full scan (a snapshot) waits
/// on memory a few times less.
fn scan(shards: &[Arc<Table>]) -> impl Iterator<Item = (&[u8], &[u8])> {
    const AHEAD: usize = 16;
    let entries = || shards.iter().flat_map(|shard| shard.entries());
    let mut lead = entries();
    lead.by_ref().take(AHEAD).for_each(Entry::prefetch_all);
    entries().map(move |e| {
        if let Some(next) = lead.next() {
            next.prefetch_all();
        }
        (e.key(), e.value())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::table::LIVE_ENTRIES;

    fn frozen_get(frozen: &FrozenMap, key: &[u8]) -> Option<Vec<u8>> {
        frozen
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_vec())
    }

    fn live_entries() -> isize {
        LIVE_ENTRIES.with(std::cell::Cell::get)
    }

    #[test]
    fn frozen_copies_read_what_the_live_map_let_go_of_and_nothing_leaks() {
        let before = live_entries();
        let value = |key: u32, round: u32| format!("{key}-{round}-{}", "x".repeat(40));
        let mut m = ShardedMap::default();
        for key in 0..2_000u32 {
            m.insert(m.key(&key.to_le_bytes()), value(key, 0).as_bytes());
        }
        let first = m.freeze();
        // Overwrite and delete all of it, many times over: freed entries' memory would be
        // reused by these allocations, and the copy would read someone else's bytes.
        for round in 1..=5 {
            for key in 0..2_000u32 {
                m.insert(m.key(&key.to_le_bytes()), value(key, round).as_bytes());
            }
        }
        let second = m.freeze();
        for key in (0..2_000u32).step_by(2) {
            assert!(m.remove(m.key(&key.to_le_bytes())));
        }
        let read_all = |frozen: &FrozenMap| {
            let mut all: Vec<(u32, String)> = frozen
                .iter()
                .map(|(k, v)| {
                    let key = u32::from_le_bytes(k.try_into().expect("4 bytes"));
                    (key, String::from_utf8(v.to_vec()).expect("utf-8"))
                })
                .collect();
            all.sort();
            all
        };
        let expected = |round: u32| {
            (0..2_000u32)
                .map(|key| (key, value(key, round)))
                .collect::<Vec<_>>()
        };
        assert_eq!(read_all(&first), expected(0));
        // The older copy goes first: what the newer one reads stays.
        drop(first);
        for key in 0..2_000u32 {
            m.insert(m.key(&key.to_le_bytes()), value(key, 9).as_bytes());
        }
        assert_eq!(read_all(&second), expected(5));
        // The live map goes while a copy reads: the copy frees what the map held.
        drop(m);
        assert_eq!(read_all(&second), expected(5));
        drop(second);
        assert_eq!(live_entries(), before, "every entry freed once");
    }

    #[test]
    fn with_no_frozen_copy_entries_are_freed_at_once() {
        let before = live_entries();
        let mut m = ShardedMap::default();
        let frozen = m.freeze();
        drop(frozen);
        for round in 0..10u32 {
            m.insert(m.key(b"k"), &round.to_le_bytes());
        }
        assert_eq!(live_entries(), before + 1);
        assert!(m.remove(m.key(b"k")));
        assert_eq!(live_entries(), before);
        let copy = {
            m.insert(m.key(b"a"), b"1");
            m.clone()
        };
        drop(m);
        assert_eq!(
            copy.get(copy.key(b"a")),
            Some(&b"1"[..]),
            "a clone owns its entries"
        );
        drop(copy);
        assert_eq!(live_entries(), before);
    }

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
        assert_eq!(m.sorted(), model.into_iter().collect::<Vec<_>>());
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
        let frozen = m.freeze();
        m.insert(m.key(b"k1"), b"new");
        assert!(m.remove(m.key(b"k2")));
        assert!(!m.remove(m.key(b"k2")));
        let in_frozen = |key: &[u8]| frozen_get(&frozen, key);
        assert_eq!(in_frozen(b"k1"), Some(b"old".to_vec()));
        assert_eq!(m.get(m.key(b"k1")), Some(&b"new"[..]));
        assert_eq!(in_frozen(b"k2"), Some(b"old".to_vec()));
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
