//! The search's memory: which (linearized set, state) configurations it has already explored.
//!
//! Lowe's insight behind the memoized Wing & Gong search: two search paths that linearized the
//! same set of operations and reached the same register state have the same future, so the
//! second is pruned. Without it the search is exponential in the number of concurrent
//! operations even on linearizable histories.
//!
//! Two costs matter on histories of thousands of operations per key, and both are kept small:
//! - hashing: the set's hash is a Zobrist hash (the XOR of a fixed random word per member),
//!   updated in O(1) as operations are linearized and undone;
//! - memory: calls are numbered in invocation order, and a linearized set is nearly always a
//!   run of leading ones followed by a few scattered bits (everything that completed long ago is
//!   linearized). A stored set keeps only the count of full leading words and the words after
//!   them up to the last set bit.
//!
//! Operations with unknown outcomes get a stronger rule than equality, see [`Memo::insert`]:
//! without it, every one of them still pending doubles the configurations for the rest of the
//! history, and a history with a few dozen timeouts on one key is out of reach when it fails
//! (a failing search must exhaust its configurations).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::register::State;

/// The set of calls linearized so far, with its hash kept current.
#[derive(Debug)]
pub(super) struct LinearizedSet {
    words: Vec<u64>,
    /// Zobrist hash of the members.
    hash: u64,
    /// Every word before this one is all ones.
    full_words: usize,
    /// Every word from this one on is zero.
    end_words: usize,
}

impl LinearizedSet {
    pub(super) fn new(calls: usize) -> Self {
        Self {
            words: vec![0; calls.div_ceil(64)],
            hash: 0,
            full_words: 0,
            end_words: 0,
        }
    }

    pub(super) fn insert(&mut self, call: usize) {
        let (word, bit) = (call / 64, 1u64 << (call % 64));
        debug_assert_eq!(self.words[word] & bit, 0, "call {call} linearized twice");
        self.words[word] |= bit;
        self.hash ^= zobrist(call);
        while self.full_words < self.words.len() && self.words[self.full_words] == u64::MAX {
            self.full_words += 1;
        }
        self.end_words = self.end_words.max(word + 1);
    }

    pub(super) fn remove(&mut self, call: usize) {
        let (word, bit) = (call / 64, 1u64 << (call % 64));
        debug_assert_ne!(
            self.words[word] & bit,
            0,
            "call {call} undone but not linearized"
        );
        self.words[word] &= !bit;
        self.hash ^= zobrist(call);
        self.full_words = self.full_words.min(word);
        while self.end_words > 0 && self.words[self.end_words - 1] == 0 {
            self.end_words -= 1;
        }
    }

    /// The words between the full prefix and the zero suffix: with `full_words`, the whole set.
    fn middle(&self) -> &[u64] {
        let end = self.end_words.max(self.full_words);
        &self.words[self.full_words..end]
    }

    /// The words up to the zero suffix.
    fn trimmed(&self) -> &[u64] {
        &self.words[..self.end_words]
    }
}

/// Every configuration the search has explored.
#[derive(Debug, Default)]
pub(super) struct Memo {
    /// Hash of (known set, state) -> its most recent entry; entries that share the hash chain
    /// through `next`.
    heads: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    entries: Vec<MemoEntry>,
    /// The stored sets' words, back to back.
    words: Vec<u64>,
}

/// One explored configuration, in 28 bytes plus its words: the memo holds up to one per step.
#[derive(Debug)]
struct MemoEntry {
    next: u32,
    state: State,
    known_full_words: u32,
    known: Span,
    /// The linearized unknown-outcome operations, up to the last non-zero word.
    unknown: Span,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    len: u32,
}

const NO_ENTRY: u32 = u32::MAX;

/// The most stored configurations one insertion compares against. Configurations with the
/// same known set and state but incomparable unknown sets share a chain, and with dozens of
/// unknown operations the chain can grow to thousands; comparing only the most recent ones
/// bounds each step's cost and at worst explores a dominated configuration again.
const CHAIN_COMPARED_MAX: u32 = 32;

impl Memo {
    /// Records a configuration: `known` and `unknown` are the linearized operations with known
    /// and unknown outcomes, `state` the register's. Returns false, and records nothing, when a
    /// configuration that dominates it was explored before: the same known set and state, and a
    /// subset of its unknown operations. Whatever can follow the larger set can follow the
    /// smaller one, whose missing unknown operations may simply never take effect (and, having
    /// no completion, they hold nothing back).
    pub(super) fn insert(
        &mut self,
        known: &LinearizedSet,
        unknown: &LinearizedSet,
        state: State,
    ) -> bool {
        let hash = known.hash ^ zobrist_state(state);
        let middle = known.middle();
        let unknown_words = unknown.trimmed();
        let head = self.heads.get(&hash).copied().unwrap_or(NO_ENTRY);
        let mut cursor = head;
        let mut compared = 0;
        while cursor != NO_ENTRY && compared < CHAIN_COMPARED_MAX {
            compared += 1;
            let entry = &self.entries[cursor as usize];
            if entry.state == state
                && entry.known_full_words as usize == known.full_words
                && *self.slice(entry.known) == *middle
                && is_subset(self.slice(entry.unknown), unknown_words)
            {
                return false;
            }
            cursor = entry.next;
        }
        let index = small(self.entries.len());
        let known_span = self.push(middle);
        let unknown_span = self.push(unknown_words);
        self.entries.push(MemoEntry {
            next: head,
            state,
            known_full_words: small(known.full_words),
            known: known_span,
            unknown: unknown_span,
        });
        self.heads.insert(hash, index);
        true
    }

    fn push(&mut self, words: &[u64]) -> Span {
        let start = small(self.words.len());
        self.words.extend_from_slice(words);
        Span {
            start,
            len: small(words.len()),
        }
    }

    fn slice(&self, span: Span) -> &[u64] {
        let start = span.start as usize;
        &self.words[start..start + span.len as usize]
    }
}

fn small(n: usize) -> u32 {
    u32::try_from(n).expect("the step budget keeps the memo below 2^32 entries and words")
}

fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small.len() <= large.len() && small.iter().zip(large).all(|(s, l)| s & !l == 0)
}

/// SplitMix64's finalizer: a fixed, well-mixed word per call number.
fn zobrist(call: usize) -> u64 {
    mix(call as u64 ^ 0x9e37_79b9_7f4a_7c15)
}

fn zobrist_state(state: State) -> u64 {
    mix(u64::from(state) ^ 0xd1b5_4a32_d192_ed03)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The memo's keys are already well-mixed hashes: hashing them again would only cost time.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_is_explored_once() {
        let mut known = LinearizedSet::new(200);
        let none = LinearizedSet::new(0);
        let mut memo = Memo::default();
        assert!(memo.insert(&known, &none, 0));
        assert!(!memo.insert(&known, &none, 0));
        assert!(memo.insert(&known, &none, 1), "same set, another state");
        known.insert(3);
        assert!(memo.insert(&known, &none, 0));
        known.remove(3);
        assert!(
            !memo.insert(&known, &none, 0),
            "undoing restores the configuration"
        );
    }

    #[test]
    fn sets_that_differ_anywhere_are_different() {
        let mut memo = Memo::default();
        let none = LinearizedSet::new(0);
        let mut set = LinearizedSet::new(300);
        for call in 0..130 {
            set.insert(call);
        }
        assert_eq!(set.full_words, 2);
        assert!(memo.insert(&set, &none, 7));
        set.insert(250);
        assert!(memo.insert(&set, &none, 7));
        set.remove(250);
        set.remove(5);
        assert_eq!(set.full_words, 0);
        assert!(memo.insert(&set, &none, 7));
        set.insert(5);
        assert!(!memo.insert(&set, &none, 7));
        for call in 0..130 {
            set.remove(call);
        }
        assert_eq!((set.full_words, set.end_words, set.hash), (0, 0, 0));
    }

    #[test]
    fn fewer_unknown_operations_dominate_more() {
        let mut memo = Memo::default();
        let known = LinearizedSet::new(10);
        let mut unknown = LinearizedSet::new(100);
        unknown.insert(70);
        assert!(memo.insert(&known, &unknown, 1));
        unknown.insert(2);
        assert!(!memo.insert(&known, &unknown, 1), "a superset is dominated");
        unknown.remove(70);
        assert!(
            memo.insert(&known, &unknown, 1),
            "{{2}} is no superset of {{70}}"
        );
        unknown.remove(2);
        assert!(memo.insert(&known, &unknown, 1), "the empty set is new");
        unknown.insert(99);
        assert!(!memo.insert(&known, &unknown, 1));
        assert!(memo.insert(&known, &unknown, 2), "another state");
    }
}
