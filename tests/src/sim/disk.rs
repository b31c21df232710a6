//! A disk that loses what was not synced when its node crashes.
//!
//! Writes queue in order and become durable one group at a time. A crash keeps a random prefix of
//! the queued writes, possibly tearing the last one after some of its entries (log changes land
//! before the hard state, as the core's [`Write`] documents), and drops the rest.

use std::collections::VecDeque;

use keel_engine::core::{Entry, HardState, Restore, SnapshotMeta, Term, Write};
use rand::Rng;

use super::state_machine::StateMachine;

/// A queued write, with the snapshot data it installs if it carries a snapshot.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) write: Write,
    pub(crate) snapshot_data: Option<StateMachine>,
}

#[derive(Debug)]
pub(crate) struct Disk {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    snapshot_data: StateMachine,
    entries: Vec<Entry>,
    pub(crate) pending: VecDeque<PendingWrite>,
    /// Entries made durable since the caller last took them, each with the term of the entry
    /// before it on this disk, for the log matching check.
    pub(crate) newly_durable: Vec<(Entry, Option<Term>)>,
    /// Bug injection: persist the term but forget the vote.
    forget_vote: bool,
}

impl Disk {
    pub(crate) fn new(snapshot: SnapshotMeta, forget_vote: bool) -> Self {
        Self {
            hard_state: HardState::default(),
            snapshot_data: StateMachine::default(),
            snapshot,
            entries: Vec::new(),
            pending: VecDeque::new(),
            newly_durable: Vec::new(),
            forget_vote,
        }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// What a restarting node reads back.
    pub(crate) fn restore(&self) -> (Restore, StateMachine) {
        let restore = Restore {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied: self.snapshot.index,
        };
        (restore, self.snapshot_data.clone())
    }

    /// Makes the oldest queued write durable.
    pub(crate) fn sync_one(&mut self) -> Option<PendingWrite> {
        let pw = self.pending.pop_front()?;
        self.apply(&pw, usize::MAX);
        Some(pw)
    }

    fn apply(&mut self, pw: &PendingWrite, entries_kept: usize) {
        let w = &pw.write;
        if let Some(meta) = &w.snapshot {
            self.snapshot = meta.clone();
            self.snapshot_data = pw
                .snapshot_data
                .clone()
                .expect("a snapshot write carries its data");
            self.entries.clear();
        }
        if let Some(at) = w.truncate_from {
            let keep = at.saturating_sub(self.snapshot.index + 1) as usize;
            self.entries.truncate(keep);
        }
        let kept = entries_kept.min(w.entries.len());
        for e in &w.entries[..kept] {
            assert_eq!(
                e.index,
                self.snapshot.index + self.entries.len() as u64 + 1,
                "the core produced a write that does not continue the durable log"
            );
            let prev_term = match self.entries.last() {
                Some(last) => Some(last.term),
                None if self.snapshot.index == 0 => Some(0),
                None => Some(self.snapshot.term),
            };
            self.newly_durable.push((e.clone(), prev_term));
            self.entries.push(e.clone());
        }
        if kept == w.entries.len() {
            if let Some(mut hs) = w.hard_state {
                if self.forget_vote {
                    hs.vote = None;
                }
                self.hard_state = hs;
            }
        }
    }

    /// The node crashed: keep a random prefix of the queued writes, maybe torn, lose the rest.
    pub(crate) fn crash(&mut self, rng: &mut impl Rng) {
        let pending: Vec<PendingWrite> = self.pending.drain(..).collect();
        let survive = rng.random_range(0..=pending.len());
        for pw in &pending[..survive] {
            self.apply(pw, usize::MAX);
        }
        if let Some(torn) = pending.get(survive) {
            if rng.random_bool(0.5) {
                let kept = rng.random_range(0..=torn.write.entries.len());
                self.apply(torn, kept);
            }
        }
    }

    /// The node took a snapshot at `meta.index` of `data`: store it and drop the entries it
    /// covers (atomically, as a real snapshot-then-compact does once the snapshot is durable).
    pub(crate) fn compact(&mut self, meta: SnapshotMeta, data: StateMachine) {
        let drop = (meta.index - self.snapshot.index) as usize;
        assert!(
            drop <= self.entries.len(),
            "compaction of entries that are not durable"
        );
        self.entries.drain(..drop);
        self.snapshot = meta;
        self.snapshot_data = data;
    }
}
