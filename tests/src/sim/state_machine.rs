//! The simulated state machine: an applied index and a hash chained over every applied entry, so
//! two nodes agree on their whole applied sequence exactly when they agree on the hash.

use keel_engine::core::{Entry, Index, Payload};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StateMachine {
    pub(crate) applied: Index,
    pub(crate) hash: u64,
}

/// A fingerprint of what an entry carries.
pub(crate) fn fingerprint(entry: &Entry) -> u64 {
    let mut h = Fnv::default();
    match &entry.payload {
        Payload::Noop => h.write(&[1]),
        Payload::Command(data) => {
            h.write(&[2]);
            h.write(data);
        }
        Payload::Membership(m) => {
            h.write(&[3]);
            for set in [&m.voters, &m.outgoing, &m.learners] {
                for id in set {
                    h.write(&id.to_le_bytes());
                }
                h.write(&[0xff]);
            }
        }
    }
    h.0
}

impl StateMachine {
    /// Applies the next entry; returns the new hash. The caller checks the order.
    pub(crate) fn apply(&mut self, entry: &Entry) -> u64 {
        let mut h = Fnv(self.hash);
        h.write(&entry.index.to_le_bytes());
        h.write(&entry.term.to_le_bytes());
        h.write(&fingerprint(entry).to_le_bytes());
        self.hash = h.0;
        self.applied = entry.index;
        self.hash
    }
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
