//! The in-memory Raft log: entries after the last snapshot, with commit, durability and apply
//! positions.
//!
//! The core keeps every entry since the last snapshot in memory (as etcd does): the runtime bounds
//! that by snapshotting every so many entries. Entries are cheap to clone (payloads are shared),
//! and held in chunks ([`Chunked`]) so that they never move once appended.

use std::collections::VecDeque;

use super::{Entry, Index, Membership, Payload, SnapshotMeta, Term};
use crate::chunked::Chunked;

/// Entries a compaction removed from the log, in the chunks the log held them in.
#[derive(Debug, Default)]
pub struct ReleasedEntries(Vec<VecDeque<Entry>>);

impl ReleasedEntries {
    pub fn len(&self) -> usize {
        self.0.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().flatten()
    }
}

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The log starts right after this snapshot.
    snapshot: SnapshotMeta,
    /// `entries.get(k).index == snapshot.index + 1 + k`.
    entries: Chunked<Entry>,
    /// Indexes of membership entries still in `entries`, ascending.
    membership_indexes: Vec<Index>,
    pub(crate) committed: Index,
    /// The highest index the log writer reported durable (and still in this log).
    pub(crate) persisted: Index,
    /// The highest index handed out for apply.
    pub(crate) applying: Index,
}

impl RaftLog {
    /// A log restored from durable state: every entry given is durable.
    pub(crate) fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: Index) -> Self {
        let mut log = Self {
            committed: snapshot.index,
            persisted: snapshot.index,
            applying: snapshot.index,
            snapshot,
            entries: Chunked::default(),
            membership_indexes: Vec::new(),
        };
        for entry in entries {
            log.push(entry);
        }
        log.persisted = log.last_index();
        log.committed = committed.clamp(log.snapshot.index, log.last_index());
        log
    }

    pub(crate) fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub(crate) fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub(crate) fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log still knows it.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft's "at least as up-to-date" comparison (§5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries from `lo` to the end, at most `max_bytes` of them but at least one.
    pub(crate) fn slice(&self, lo: Index, max_bytes: usize) -> Vec<Entry> {
        // Counted first, so that the copy is allocated once at its size: at a few hundred
        // entries per append, growing it step by step was a visible share of the leader's turn.
        let mut end = lo;
        let mut bytes = 0;
        while let Some(e) = self.entry(end) {
            bytes += e.size_bytes();
            if end > lo && bytes > max_bytes {
                break;
            }
            end += 1;
        }
        (lo..end)
            .map(|i| self.entry(i).expect("counted above").clone())
            .collect()
    }

    /// Appends one entry that continues the log.
    pub(crate) fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "log entries must be contiguous"
        );
        assert!(entry.term >= self.last_term(), "log terms never decrease");
        if matches!(entry.payload, Payload::Membership(_)) {
            self.membership_indexes.push(entry.index);
        }
        self.entries.push_back(entry);
    }

    /// Removes every entry at or after `index`.
    pub(crate) fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.committed,
            "committed entries are never truncated"
        );
        let keep = usize::try_from(index.saturating_sub(self.first_index())).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.membership_indexes.retain(|&i| i < index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// The first index among `entries` (contiguous, after a matching prefix) that is not already
    /// in this log with the same term, or `None` if all are present.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|e| !self.matches(e.index, e.term))
            .map(|e| e.index)
    }

    /// The largest index at or below `index` whose term is at most `term` (or the snapshot
    /// boundary): where a follower's and a leader's logs may agree (fast backtracking).
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let mut i = index.min(self.last_index());
        while i > self.snapshot.index {
            match self.term(i) {
                Some(t) if t > term => i -= 1,
                _ => break,
            }
        }
        i
    }

    /// The latest membership in the log, with the index it was appended at.
    pub(crate) fn latest_membership(&self) -> (Index, &Membership) {
        self.membership_before(Index::MAX)
    }

    /// The membership in effect at `index` (the last one appended at or below it).
    pub(crate) fn membership_before(&self, index: Index) -> (Index, &Membership) {
        for &i in self.membership_indexes.iter().rev() {
            if i <= index {
                if let Some(Entry {
                    payload: Payload::Membership(m),
                    ..
                }) = self.entry(i)
                {
                    return (i, m);
                }
            }
        }
        (self.snapshot.index, &self.snapshot.membership)
    }

    /// Removes entries up to `index` (which must be applied), remembering them as a snapshot;
    /// returns the snapshot and the removed entries.
    pub(crate) fn compact(&mut self, index: Index) -> (SnapshotMeta, ReleasedEntries) {
        assert!(index <= self.applying, "only applied entries are compacted");
        if index <= self.snapshot.index {
            return (self.snapshot.clone(), ReleasedEntries::default());
        }
        let term = self
            .term(index)
            .expect("index is between the snapshot and the applied index");
        let membership = self.membership_before(index).1.clone();
        let drop = usize::try_from(index - self.snapshot.index).expect("fits in memory");
        // Whole chunks go as they are; the entries kept stay where they were.
        let released = ReleasedEntries(self.entries.drain_front(drop));
        self.membership_indexes.retain(|&i| i > index);
        self.snapshot = SnapshotMeta {
            index,
            term,
            membership,
        };
        (self.snapshot.clone(), released)
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub(crate) fn install(&mut self, snapshot: SnapshotMeta) {
        self.entries.clear();
        self.membership_indexes.clear();
        self.committed = snapshot.index;
        self.applying = snapshot.index;
        self.persisted = self.persisted.min(snapshot.index);
        self.snapshot = snapshot;
    }

    /// Entries that are committed and durable here but not yet handed out for apply.
    pub(crate) fn take_committed(&mut self, max_entries: usize) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        let due = usize::try_from(hi.saturating_sub(self.applying)).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(due.min(max_entries));
        while self.applying < hi && out.len() < max_entries {
            let entry = self
                .entry(self.applying + 1)
                .expect("committed entries above the snapshot are in the log");
            out.push(entry.clone());
            self.applying += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Command(Bytes::from_static(b"x")),
        }
    }

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t))
            .collect();
        RaftLog::restore(SnapshotMeta::default(), entries, 0)
    }

    #[test]
    fn find_conflict_by_term_skips_a_whole_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 3, 3]);
        assert_eq!(log.find_conflict_by_term(7, 2), 5);
        assert_eq!(log.find_conflict_by_term(7, 1), 2);
        assert_eq!(log.find_conflict_by_term(7, 0), 0);
        assert_eq!(log.find_conflict_by_term(20, 3), 7);
    }

    #[test]
    fn truncation_lowers_the_durable_index() {
        let mut log = log_with_terms(&[1, 1, 1]);
        assert_eq!(log.persisted, 3);
        log.truncate_from(2);
        assert_eq!(log.persisted, 1);
        assert_eq!(log.last_index(), 1);
    }

    #[test]
    fn compaction_keeps_terms_at_the_boundary() {
        let mut log = log_with_terms(&[1, 2, 3, 3]);
        log.committed = 4;
        log.take_committed(10);
        let (meta, released) = log.compact(2);
        assert_eq!(released.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((meta.index, meta.term), (2, 2));
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), None);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.entry(4).map(|e| e.term), Some(3));
        assert_eq!(released.len(), 2);
    }

    #[test]
    fn appends_and_compactions_never_move_the_entries_held() {
        // A move is a copy of the whole log within one driver turn: tens of ms at a million.
        let mut log = log_with_terms(&[1; 10]);
        let held = std::ptr::from_ref(log.entry(10).expect("held"));
        for index in 11..=100_000 {
            log.push(entry(index, 1));
        }
        assert_eq!(log.entry(10).map(std::ptr::from_ref), Some(held));
        log.committed = 100_000;
        log.take_committed(usize::MAX);
        let (_, released) = log.compact(9);
        assert_eq!(released.len(), 9);
        assert_eq!(log.entry(10).map(std::ptr::from_ref), Some(held));
    }

    #[test]
    fn only_durable_committed_entries_are_handed_out() {
        let mut log = log_with_terms(&[1, 1, 1]);
        log.committed = 3;
        log.persisted = 2;
        assert_eq!(log.take_committed(10).len(), 2);
        log.persisted = 3;
        let rest = log.take_committed(10);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].index, 3);
    }
}
