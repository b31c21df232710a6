//! One shard of the key-value map: an open-addressing table with linear probing that keeps each
//! key's full hash in its slot.
//!
//! Written here rather than taken from hashbrown for one property: where a key's probe starts
//! is computable from its hash, so the apply path can ask the memory for the slots of commands
//! ahead of the one it executes ([`Table::prefetch_slot`], [`Table::prefetch_entry`]). With a
//! million keys nearly every write misses the cache three times over (the shard, its slots, the
//! entry), each miss waiting on the one before; hashbrown keeps its layout private, and those
//! misses taken one command at a time were most of the apply time.

use std::ptr::NonNull;

/// A key and its value, in one allocation of their own.
///
/// An entry is a plain pointer: copying a table (a shard's first write after a snapshot froze
/// it) copies its slots' bytes and nothing else. Who frees an entry, and when, is the map's
/// business ([`super::map`]): a table never frees one, and its user must call [`Entry::free`]
/// exactly once per entry, after the last read of it anywhere.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    bytes: NonNull<[u8]>,
    key_len: usize,
}

// SAFETY: an entry's bytes are never written after `Entry::new`, so reading them from any thread
// is sound for as long as the allocation lives; the map frees each entry only after every table
// that may point to it, on whatever thread, has stopped reading (see `super::map`).
#[allow(unsafe_code)]
unsafe impl Send for Entry {}
// SAFETY: as for `Send`: shared access only ever reads immutable bytes.
#[allow(unsafe_code)]
unsafe impl Sync for Entry {}

#[cfg(test)]
thread_local! {
    /// Entries allocated and not yet freed by this thread: tests check nothing leaks.
    pub(super) static LIVE_ENTRIES: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

impl Entry {
    pub(super) fn new(key: &[u8], value: &[u8]) -> Self {
        // Exactly the room needed: the boxed slice takes the vector's allocation as it is.
        let mut bytes = Vec::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        #[cfg(test)]
        LIVE_ENTRIES.with(|n| n.set(n.get() + 1));
        Self {
            bytes: NonNull::from(Box::leak(bytes.into_boxed_slice())),
            key_len: key.len(),
        }
    }

    /// Sound for an entry borrowed from a table the caller is reading (a live map's or a frozen
    /// copy's): the map frees an entry only once no such table holds it. The kv module never
    /// reads through an entry copied out of a table past its let-go.
    fn bytes(&self) -> &[u8] {
        // SAFETY: the pointer came from a leaked box and is freed only by `free`; the entry is
        // borrowed from a table that holds it (the doc above), so it has not been freed.
        #[allow(unsafe_code)]
        unsafe {
            self.bytes.as_ref()
        }
    }

    pub(super) fn key(&self) -> &[u8] {
        &self.bytes()[..self.key_len]
    }

    pub(super) fn value(&self) -> &[u8] {
        &self.bytes()[self.key_len..]
    }

    /// Frees the entry's allocation.
    ///
    /// # Safety
    /// Called once per entry, after which nothing reads this entry or any copy of it.
    #[allow(unsafe_code)]
    pub(super) unsafe fn free(self) {
        #[cfg(test)]
        LIVE_ENTRIES.with(|n| n.set(n.get() - 1));
        // SAFETY: the pointer came from `Box::leak` in `new`; the caller promises this is the
        // only free and the last use.
        drop(unsafe { Box::from_raw(self.bytes.as_ptr()) });
    }

    /// Asks the cache for the entry's first bytes: its key.
    pub(super) fn prefetch(&self) {
        prefetch(self.bytes.as_ptr().cast::<u8>());
    }

    /// Asks the cache for the whole entry, for a scan that copies it.
    pub(super) fn prefetch_all(&self) {
        let start = self.bytes.as_ptr().cast::<u8>();
        for offset in (0..self.bytes.len()).step_by(64) {
            prefetch(start.wrapping_add(offset));
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    hash: u64,
    entry: Option<Entry>,
}

/// Slots are added when more than this fraction would be taken: linear probing's runs grow
/// quickly past three quarters.
const MAX_LOAD: (usize, usize) = (3, 4);
const MIN_SLOTS: usize = 8;

/// Entries are the map's to free: dropping or copying a table touches none of them. A copy
/// points to the same entries, so only the map's copy-on-write (`Arc::make_mut`, which it
/// accounts for) may make one.
#[derive(Clone, Debug, Default)]
pub(super) struct Table {
    /// A power of two of them, or none before the first insert.
    slots: Box<[Slot]>,
    len: usize,
}

impl Table {
    /// The slot where `hash`'s probe starts; the table has slots.
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    fn position(&self, hash: u64, key: &[u8]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            match &slot.entry {
                None => return None,
                Some(e) if slot.hash == hash && e.key() == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    pub(super) fn get(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        let i = self.position(hash, key)?;
        self.slots[i].entry.as_ref()
    }

    /// Inserts `entry`, or replaces the one with its key and returns that one.
    pub(super) fn insert(&mut self, hash: u64, entry: Entry) -> Option<Entry> {
        if let Some(i) = self.position(hash, entry.key()) {
            return self.slots[i].entry.replace(entry);
        }
        if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            self.grow();
        }
        // The probe above ended at this slot (or the table grew): it is in cache either way.
        let i = self.vacancy(hash);
        self.slots[i] = Slot {
            hash,
            entry: Some(entry),
        };
        self.len += 1;
        None
    }

    /// The first empty slot of `hash`'s probe.
    fn vacancy(&self, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        while self.slots[i].entry.is_some() {
            i = (i + 1) & mask;
        }
        i
    }

    /// Removes `key`'s entry and returns it.
    pub(super) fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Entry> {
        let mut hole = self.position(hash, key)?;
        // Backward shift instead of tombstones: each later entry of the run moves into the hole
        // when that keeps it at or after its home, so every probe still reaches it.
        let mask = self.slots.len() - 1;
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            if self.slots[i].entry.is_none() {
                break;
            }
            let home = self.home(self.slots[i].hash);
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots.swap(hole, i);
                hole = i;
            }
        }
        // The removed entry has travelled to the last hole.
        self.len -= 1;
        std::mem::take(&mut self.slots[hole]).entry
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(Slot::default)
                .take(capacity)
                .collect(),
        );
        for slot in old {
            if slot.entry.is_some() {
                let i = self.vacancy(slot.hash);
                self.slots[i] = slot;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter_map(|s| s.entry.as_ref())
    }

    /// Asks the cache for the slot where `hash`'s probe starts.
    pub(super) fn prefetch_slot(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[self.home(hash)]);
        }
    }

    /// Asks the cache for the first entry along `hash`'s probe whose hash is `hash`: best after
    /// [`Self::prefetch_slot`] has had time to bring the slots in.
    pub(super) fn prefetch_entry(&self, hash: u64) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        while let Some(e) = &self.slots[i].entry {
            if self.slots[i].hash == hash {
                e.prefetch();
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Asks the cache for the line holding `p`, without waiting for it.
#[allow(unsafe_code)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program can observe and never faults,
    // whatever the address; SSE is part of every x86_64 processor.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes chosen to collide in the low bits, so probes run long and removals shift.
    fn crowded(key: u32) -> u64 {
        u64::from(key % 5) | (u64::from(key) << 40)
    }

    /// Frees an entry the table gave back (the map's job outside these tests).
    #[allow(unsafe_code)]
    fn free(e: Entry) {
        // SAFETY: the table gave it back and no copy of the table holds it.
        unsafe { e.free() }
    }

    fn free_all(t: Table) {
        t.entries().copied().for_each(free);
    }

    #[test]
    fn behaves_as_a_map_under_collisions() {
        let live_before = LIVE_ENTRIES.with(std::cell::Cell::get);
        let mut t = Table::default();
        let mut model = std::collections::BTreeMap::new();
        for step in 0..20_000u32 {
            let key = step.wrapping_mul(2_654_435_761) % 300;
            let k = key.to_le_bytes();
            if step % 3 == 0 {
                let removed = t.remove(crowded(key), &k);
                assert_eq!(
                    removed.map(|e| e.value().to_vec()),
                    model.remove(&key).map(|v: u32| v.to_le_bytes().to_vec())
                );
                removed.into_iter().for_each(free);
            } else {
                let v = step.to_le_bytes();
                let replaced = t.insert(crowded(key), Entry::new(&k, &v));
                assert_eq!(
                    replaced.map(|e| e.value().to_vec()),
                    model.insert(key, step).map(|v| v.to_le_bytes().to_vec())
                );
                replaced.into_iter().for_each(free);
            }
            assert_eq!(t.len(), model.len());
            if step % 997 == 0 {
                for key in 0..300u32 {
                    let found = t.get(crowded(key), &key.to_le_bytes()).map(Entry::value);
                    let expected = model.get(&key).map(|v| v.to_le_bytes());
                    assert_eq!(found, expected.as_ref().map(|v| &v[..]), "key {key}");
                }
            }
        }
        assert_eq!(t.entries().count(), model.len());
        assert!(t.len() * MAX_LOAD.1 <= t.slots.len() * MAX_LOAD.0);
        free_all(t);
        assert_eq!(LIVE_ENTRIES.with(std::cell::Cell::get), live_before);
    }

    #[test]
    fn a_clone_shares_entries_and_not_slots() {
        let mut t = Table::default();
        for key in 0..100u32 {
            t.insert(u64::from(key), Entry::new(&key.to_le_bytes(), b"v"));
        }
        let copy = t.clone();
        let removed = t.remove(7, &7u32.to_le_bytes()).expect("present");
        let replaced = t
            .insert(8, Entry::new(&8u32.to_le_bytes(), b"w"))
            .expect("present");
        assert_eq!(
            copy.get(7, &7u32.to_le_bytes()).map(Entry::value),
            Some(&b"v"[..])
        );
        assert_eq!(
            copy.get(8, &8u32.to_le_bytes()).map(Entry::value),
            Some(&b"v"[..])
        );
        assert_eq!(
            t.get(8, &8u32.to_le_bytes()).map(Entry::value),
            Some(&b"w"[..])
        );
        // The copy points at the same allocations.
        let (mine, theirs) = (
            t.get(9, &9u32.to_le_bytes()),
            copy.get(9, &9u32.to_le_bytes()),
        );
        assert!(std::ptr::eq(
            mine.expect("present").key(),
            theirs.expect("present").key()
        ));
        drop(copy);
        free(removed);
        free(replaced);
        free_all(t);
    }
}
