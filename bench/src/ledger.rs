//! What the load's clients were told about their writes, kept so that afterwards every
//! acknowledged write can be checked: the key must hold it, or a write whose outcome the client
//! never learned. It is sized by the key space up front and does not grow while the load runs:
//! in `local` the nodes share the process with the loader, and the memory figure is theirs.

use std::collections::HashMap;

use bytes::Bytes;
use keel_engine::core::Index;
use parking_lot::Mutex;

use crate::load::{key_bytes, Target};

/// Shards, so the workers recording at once rarely wait on one another.
const SHARDS: u64 = 64;

pub struct Ledger {
    key_prefix: String,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// Per key of the shard (key number / SHARDS): its newest acknowledged write, as (value id,
    /// commit index); id 0 where there is none.
    acked: Vec<(u64, Index)>,
    /// Per key number, writes that failed or timed out: any may have been applied.
    unknown: HashMap<u64, Vec<u64>>,
}

/// Write `id` to key number `key` was acknowledged at `index`.
#[derive(Clone, Copy, Debug)]
pub struct Acknowledged {
    pub key: u64,
    pub id: u64,
    pub index: Index,
}

/// What checking the ledger against the cluster found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Keys with an acknowledged write, each read back.
    pub keys: u64,
    /// Of those, keys that held neither their newest acknowledged write nor an unknown one.
    pub failures: u64,
}

/// `v` with every page of it written: a zeroed allocation is only mapped as it is first
/// written, and taking those page faults while the load runs (a million keys' slots are 4,096
/// pages, nearly all touched in the run's first 100 ms) made the loader send late.
fn touched(mut v: Vec<(u64, Index)>) -> Vec<(u64, Index)> {
    let per_page = 4096 / size_of::<(u64, Index)>();
    for slot in v.iter_mut().step_by(per_page) {
        // Through `black_box`: the compiler knows the allocation is zeroed and would drop a
        // plain store of zero.
        *slot = std::hint::black_box((0, 0));
    }
    v
}

impl Ledger {
    pub fn new(key_prefix: &str, key_space: u64) -> Self {
        let per_shard = usize::try_from(key_space.div_ceil(SHARDS)).expect("key space fits");
        Self {
            key_prefix: key_prefix.to_string(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        acked: touched(vec![(0, 0); per_shard]),
                        unknown: HashMap::new(),
                    })
                })
                .collect(),
        }
    }

    fn locate(key: u64) -> (usize, usize) {
        ((key % SHARDS) as usize, (key / SHARDS) as usize)
    }

    /// Records a batch of acknowledged writes and empties it. One at a time, each took a lock
    /// (a full memory fence) and then missed the cache on its random slot: 7% of the machine
    /// at 500,000 writes/s. In slot order, a shard's lock is taken once per batch and the
    /// misses overlap.
    pub fn acknowledged_all(&self, acks: &mut Vec<Acknowledged>) {
        acks.sort_unstable_by_key(|a| Self::locate(a.key));
        for run in acks.chunk_by(|a, b| Self::locate(a.key).0 == Self::locate(b.key).0) {
            let mut shard = self.shards[Self::locate(run[0].key).0].lock();
            for a in run {
                let newest = &mut shard.acked[Self::locate(a.key).1];
                if a.index >= newest.1 {
                    *newest = (a.id, a.index);
                }
            }
        }
        acks.clear();
    }

    /// Write `id` to key number `key` failed or timed out: it may or may not have been applied.
    pub fn unknown(&self, key: u64, id: u64) {
        let (shard, _) = Self::locate(key);
        self.shards[shard]
            .lock()
            .unknown
            .entry(key)
            .or_default()
            .push(id);
    }

    /// Whether `key` may hold the value with id `id`: its newest acknowledged write, or one whose
    /// outcome is unknown.
    fn accepts(&self, key: u64, id: u64) -> bool {
        let (shard, slot) = Self::locate(key);
        let shard = self.shards[shard].lock();
        shard.acked[slot].0 == id || shard.unknown.get(&key).is_some_and(|ids| ids.contains(&id))
    }

    /// Key numbers with an acknowledged write.
    fn acked_keys(&self) -> Vec<u64> {
        let mut keys = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let shard = shard.lock();
            for (slot, (id, _)) in shard.acked.iter().enumerate() {
                if *id != 0 {
                    keys.push(slot as u64 * SHARDS + s as u64);
                }
            }
        }
        keys
    }

    /// Reads back every key with an acknowledged write (linearizably, after the load) and
    /// checks its value. Values carry their write's id in their first 8 bytes; shorter values
    /// carry only part of it, and then presence is all that is checked.
    pub fn verify(&self, target: &dyn Target) -> Verification {
        let numbers = self.acked_keys();
        let keys: Vec<Bytes> = numbers
            .iter()
            .map(|&n| key_bytes(&self.key_prefix, n))
            .collect();
        let values = target.read_back(&keys);
        let mut failures = 0;
        for ((number, key), value) in numbers.iter().zip(&keys).zip(values) {
            let ok = match value {
                Ok(Some(value)) if value.len() < 8 => true,
                Ok(Some(value)) => {
                    let id = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
                    self.accepts(*number, id)
                }
                Ok(None) | Err(_) => false,
            };
            if !ok {
                failures += 1;
                if failures <= 5 {
                    eprintln!(
                        "verification: key {:?} lost its acknowledged write",
                        String::from_utf8_lossy(key)
                    );
                }
            }
        }
        Verification {
            keys: numbers.len() as u64,
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_acknowledged_write_and_every_unknown_one() {
        let ledger = Ledger::new("k", 1_000);
        let ack = |key, id, index| Acknowledged { key, id, index };
        let mut batch = vec![ack(7, 1, 10), ack(7, 3, 30), ack(71, 6, 15)];
        ledger.acknowledged_all(&mut batch);
        assert!(batch.is_empty());
        // Acknowledgements arrive out of order across clients and batches, and within a
        // batch: the newest index wins.
        let mut batch = vec![
            ack(999, 5, 40),
            ack(7, 2, 20),
            ack(71, 8, 17),
            ack(71, 7, 16),
        ];
        ledger.acknowledged_all(&mut batch);
        ledger.unknown(7, 4);
        assert!(ledger.accepts(7, 3));
        assert!(ledger.accepts(7, 4));
        assert!(
            !ledger.accepts(7, 2),
            "an overwritten write is not the key's value"
        );
        assert!(!ledger.accepts(8, 3));
        assert!(ledger.accepts(71, 8) && !ledger.accepts(71, 7));
        assert_eq!(ledger.acked_keys(), vec![7, 71, 999]);
    }
}
