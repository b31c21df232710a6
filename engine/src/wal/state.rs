//! The log that a sequence of records describes, and the rules every record must follow.
//!
//! The same rules run twice: when the live log appends a record (a write that breaks them is a bug
//! upstream, and the log stops), and when recovery replays the records from disk (a record that
//! breaks them is damage, and recovery refuses). Both paths sharing one implementation is what
//! makes "recovery returns exactly the log the writes described" checkable.

use crate::chunked::Chunked;
use crate::core::{HardState, Index, SnapshotMeta, Term};

/// Something held per entry: at least its term.
pub trait Slot {
    fn term(&self) -> Term;
}

/// The snapshot, hard state, and per-entry slots after the snapshot.
///
/// `slots.get(k)` is the entry at `first + k`. Normally `first == snapshot.index + 1`; when the
/// oldest segments were removed by compaction, replay starts in the middle of the log and
/// `first` is higher (a *hole*) until the compaction record that covers the hole is replayed.
#[derive(Debug)]
pub struct LogState<T> {
    pub snapshot: SnapshotMeta,
    pub hard_state: HardState,
    first: Index,
    slots: Chunked<T>,
}

impl<T: Slot> LogState<T> {
    /// An empty log whose next entry is `next_index`.
    pub fn new(next_index: Index) -> Self {
        assert!(next_index >= 1, "index 0 is the position before the log");
        Self {
            snapshot: SnapshotMeta::default(),
            hard_state: HardState::default(),
            first: next_index,
            slots: Chunked::default(),
        }
    }

    pub fn first_index(&self) -> Index {
        self.first
    }

    pub fn next_index(&self) -> Index {
        self.first + self.slots.len() as u64
    }

    /// The last index the log holds or covers (by its snapshot).
    pub fn last_index(&self) -> Index {
        self.next_index() - 1
    }

    /// Entries known to be missing between the snapshot and the first slot.
    pub fn hole(&self) -> Option<(Index, Index)> {
        (self.first > self.snapshot.index + 1).then(|| (self.snapshot.index + 1, self.first - 1))
    }

    pub fn slot(&self, index: Index) -> Option<&T> {
        let offset = index.checked_sub(self.first)?;
        self.slots.get(usize::try_from(offset).ok()?)
    }

    /// The slots, first to last.
    pub fn into_slots(self) -> impl Iterator<Item = T> {
        self.slots.into_iter()
    }

    /// The term at `index` if the log knows it (an entry, or the snapshot's last entry).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.slot(index).map(Slot::term)
    }

    fn last_term(&self) -> Option<Term> {
        match self.slots.back() {
            Some(s) => Some(s.term()),
            None if self.hole().is_none() => Some(self.snapshot.term),
            None => None,
        }
    }

    /// Appends the entry at `index`.
    pub fn push(&mut self, index: Index, slot: T) -> Result<(), String> {
        if index != self.next_index() {
            return Err(format!(
                "entry {index} does not continue the log (next index {})",
                self.next_index()
            ));
        }
        if let Some(last) = self.last_term() {
            if slot.term() < last {
                return Err(format!(
                    "entry {index} has term {} below the previous entry's {last}",
                    slot.term()
                ));
            }
        }
        self.slots.push_back(slot);
        Ok(())
    }

    /// Removes every entry at or after `from`.
    pub fn truncate(&mut self, from: Index) -> Result<(), String> {
        if from <= self.snapshot.index {
            return Err(format!(
                "truncation from {from} reaches into the snapshot at {}",
                self.snapshot.index
            ));
        }
        if from <= self.hard_state.commit {
            return Err(format!(
                "truncation from {from} would remove committed entries (commit {})",
                self.hard_state.commit
            ));
        }
        if from < self.first {
            self.slots.clear();
            self.first = from;
        } else {
            let keep = usize::try_from(from - self.first).unwrap_or(usize::MAX);
            self.slots.truncate(keep);
        }
        Ok(())
    }

    /// A snapshot received from the leader replaces the whole log.
    pub fn install(&mut self, snapshot: &SnapshotMeta) -> Result<(), String> {
        if snapshot.index < self.snapshot.index {
            return Err(format!(
                "installed snapshot at {} is older than the snapshot at {}",
                snapshot.index, self.snapshot.index
            ));
        }
        self.slots.clear();
        self.first = snapshot.index + 1;
        self.snapshot = snapshot.clone();
        Ok(())
    }

    /// A local snapshot covers everything up to its index; later entries stay. A snapshot no newer
    /// than the current one changes nothing (segment checkpoints repeat the current snapshot).
    pub fn compact(&mut self, snapshot: &SnapshotMeta) -> Result<(), String> {
        if snapshot.index <= self.snapshot.index {
            return Ok(());
        }
        if let Some(term) = self.term_at(snapshot.index) {
            if term != snapshot.term {
                return Err(format!(
                    "snapshot at {} has term {} but the entry there has term {term}",
                    snapshot.index, snapshot.term
                ));
            }
        }
        let covered = snapshot.index + 1;
        // Terms never decrease along the log, the snapshot's included: a later entry of an
        // older term means the records contradict each other.
        if let Some(term) = self.term_at(covered) {
            if term < snapshot.term {
                return Err(format!(
                    "snapshot at {} has term {} but the entry after it has term {term}",
                    snapshot.index, snapshot.term
                ));
            }
        }
        if covered >= self.next_index() {
            self.slots.clear();
            self.first = covered;
        } else if covered > self.first {
            let covered_slots =
                usize::try_from(covered - self.first).expect("less than the slots held");
            self.slots.drain_front(covered_slots);
            self.first = covered;
        }
        self.snapshot = snapshot.clone();
        Ok(())
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), String> {
        if hard_state.term < self.hard_state.term {
            return Err(format!(
                "hard state term {} is below the previous {}",
                hard_state.term, self.hard_state.term
            ));
        }
        self.hard_state = hard_state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Slot for Term {
        fn term(&self) -> Term {
            *self
        }
    }

    fn snap(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            ..SnapshotMeta::default()
        }
    }

    #[test]
    fn entries_must_continue_the_log_with_terms_that_never_decrease() {
        let mut s = LogState::<Term>::new(1);
        s.push(1, 1).unwrap();
        s.push(2, 2).unwrap();
        assert!(s.push(4, 2).is_err());
        assert!(s.push(3, 1).is_err());
        assert_eq!(s.last_index(), 2);
    }

    #[test]
    fn truncation_never_reaches_committed_entries() {
        let mut s = LogState::<Term>::new(1);
        for i in 1..=5 {
            s.push(i, 1).unwrap();
        }
        s.set_hard_state(HardState {
            term: 1,
            vote: None,
            commit: 3,
        })
        .unwrap();
        assert!(s.truncate(3).is_err());
        s.truncate(4).unwrap();
        assert_eq!(s.last_index(), 3);
        s.truncate(10).unwrap();
        assert_eq!(s.last_index(), 3, "past the end is a no-op");
    }

    #[test]
    fn compaction_keeps_later_entries_and_fills_a_hole() {
        // Replay starting mid-log, as after the oldest segments were removed.
        let mut s = LogState::<Term>::new(50);
        assert_eq!(s.hole(), Some((1, 49)));
        for i in 50..=60 {
            s.push(i, 2).unwrap();
        }
        assert!(s.compact(&snap(55, 3)).is_err(), "term mismatch at 55");
        s.compact(&snap(55, 2)).unwrap();
        assert_eq!(s.hole(), None);
        assert_eq!(s.first_index(), 56);
        assert_eq!(s.last_index(), 60);
        s.compact(&snap(40, 1)).unwrap();
        assert_eq!(s.snapshot.index, 55, "older snapshots change nothing");
    }

    #[test]
    fn appends_never_move_the_slots_held() {
        // A move is a copy of every slot within one turn of the log writer, which every write
        // waits for.
        let mut s = LogState::<Term>::new(1);
        s.push(1, 1).unwrap();
        let held = std::ptr::from_ref(s.slot(1).expect("held"));
        for i in 2..=100_000 {
            s.push(i, 1).unwrap();
        }
        assert_eq!(s.slot(1).map(std::ptr::from_ref), Some(held));
        s.compact(&snap(50_000, 1)).unwrap();
        assert_eq!(s.slot(50_001).copied(), Some(1));
        assert_eq!(s.into_slots().count(), 50_000);
    }

    #[test]
    fn install_replaces_everything() {
        let mut s = LogState::<Term>::new(1);
        for i in 1..=5 {
            s.push(i, 1).unwrap();
        }
        s.install(&snap(100, 4)).unwrap();
        assert_eq!(s.next_index(), 101);
        assert!(
            s.push(101, 3).is_err(),
            "terms continue from the snapshot's"
        );
        s.push(101, 4).unwrap();
        assert!(s.install(&snap(50, 4)).is_err());
    }
}
