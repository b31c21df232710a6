//! One shard of the key-value map: an open-addressing table with linear probing that keeps each
//! key's full hash in its slot.
//!
//! Written here rather than taken from hashbrown for one property: where a key's probe starts
//! is computable from its hash, so the apply path can ask the memory for the slots of commands
//! ahead of the one it executes ([`Table::prefetch_slot`], [`Table::prefetch_entry`]). With a
//! million keys nearly every write misses the cache three times over (the shard, its slots, the
//! entry), each miss waiting on the one before; hashbrown keeps its layout private, and those
//! misses taken one command at a time were most of the apply time.

use std::sync::Arc;

/// Where an `Arc`'s allocation starts before the pointer to its value: the strong and weak
/// counts.
pub(super) const ARC_HEADER_BYTES: usize = 2 * size_of::<usize>();

/// A key and its value, in one allocation.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    bytes: Arc<[u8]>,
    key_len: usize,
}

impl Entry {
    pub(super) fn new(key: &[u8], value: &[u8]) -> Self {
        // Zeroed, then filled while still unshared: two block copies, where collecting a chain
        // of byte iterators copied byte by byte (a tenth of the apply time).
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0, key.len() + value.len()).collect();
        let buf = Arc::get_mut(&mut bytes).expect("a new Arc is unshared");
        buf[..key.len()].copy_from_slice(key);
        buf[key.len()..].copy_from_slice(value);
        Self {
            bytes,
            key_len: key.len(),
        }
    }

    pub(super) fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    pub(super) fn value(&self) -> &[u8] {
        &self.bytes[self.key_len..]
    }

    /// Asks the cache for the entry's first bytes: its reference count and key.
    pub(super) fn prefetch(&self) {
        prefetch(
            Arc::as_ptr(&self.bytes)
                .cast::<u8>()
                .wrapping_sub(ARC_HEADER_BYTES),
        );
    }

    /// Asks the cache for the whole entry, for a scan that copies it.
    pub(super) fn prefetch_all(&self) {
        let start = Arc::as_ptr(&self.bytes)
            .cast::<u8>()
            .wrapping_sub(ARC_HEADER_BYTES);
        for offset in (0..ARC_HEADER_BYTES + self.bytes.len()).step_by(64) {
            prefetch(start.wrapping_add(offset));
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Slot {
    hash: u64,
    entry: Option<Entry>,
}

/// Slots are added when more than this fraction would be taken: linear probing's runs grow
/// quickly past three quarters.
const MAX_LOAD: (usize, usize) = (3, 4);
const MIN_SLOTS: usize = 8;

#[derive(Debug, Default)]
pub(super) struct Table {
    /// A power of two of them, or none before the first insert.
    slots: Box<[Slot]>,
    len: usize,
}

impl Clone for Table {
    /// Copying a shard (the first write to it after a snapshot froze it) writes every entry's
    /// reference count: asked for all at once, those misses overlap instead of queueing.
    fn clone(&self) -> Self {
        self.entries().for_each(Entry::prefetch);
        Self {
            slots: self.slots.clone(),
            len: self.len,
        }
    }
}

impl Drop for Table {
    /// Dropping a shard (a snapshot's frozen copy, once written) writes every entry's reference
    /// count, as copying one does: the same prefetch first.
    fn drop(&mut self) {
        self.entries().for_each(Entry::prefetch);
    }
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

    /// Inserts `entry` or replaces the one with its key; whether the key is new.
    pub(super) fn insert(&mut self, hash: u64, entry: Entry) -> bool {
        if let Some(i) = self.position(hash, entry.key()) {
            self.slots[i].entry = Some(entry);
            return false;
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
        true
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

    /// Removes `key`; whether it was there.
    pub(super) fn remove(&mut self, hash: u64, key: &[u8]) -> bool {
        let Some(mut hole) = self.position(hash, key) else {
            return false;
        };
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
        self.slots[hole] = Slot::default();
        self.len -= 1;
        true
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

    #[test]
    fn behaves_as_a_map_under_collisions() {
        let mut t = Table::default();
        let mut model = std::collections::BTreeMap::new();
        for step in 0..20_000u32 {
            let key = step.wrapping_mul(2_654_435_761) % 300;
            let k = key.to_le_bytes();
            if step % 3 == 0 {
                assert_eq!(t.remove(crowded(key), &k), model.remove(&key).is_some());
            } else {
                let v = step.to_le_bytes();
                assert_eq!(
                    t.insert(crowded(key), Entry::new(&k, &v)),
                    model.insert(key, step).is_none()
                );
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
    }

    #[test]
    fn a_clone_shares_entries_and_not_slots() {
        let mut t = Table::default();
        for key in 0..100u32 {
            t.insert(u64::from(key), Entry::new(&key.to_le_bytes(), b"v"));
        }
        let copy = t.clone();
        t.remove(7, &7u32.to_le_bytes());
        t.insert(8, Entry::new(&8u32.to_le_bytes(), b"w"));
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
        let e = copy.get(9, &9u32.to_le_bytes()).expect("present");
        assert_eq!(Arc::strong_count(&e.bytes), 2);
    }
}
