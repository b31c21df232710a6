//! Proposals and membership changes waiting for their entries to commit, in index order.
//!
//! A leader appends at the end of its log, so its proposals arrive in ascending index order and
//! commit from the front: a queue, not a map (a `BTreeMap` insert per proposal was ~8% of the
//! leader driver's time at peak in memory). A proposal at an index not above the last waiting
//! one means this node lost and regained leadership meanwhile and its log was cut below the
//! waiting ones. Their entries are gone from this log, not from every log: a node that still
//! holds them can win an election and commit them. So they are set aside, not failed, and
//! answered by whatever commits at their index; only a different entry committed there proves
//! a proposal lost.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::core::{Entry, Index, Payload, SnapshotMeta, Term};

use super::pending::Completer;
use super::proposal::ProposalReply;
use super::Error;

/// A proposal appended at `index` in `term`, received at `proposed_at`.
#[derive(Debug)]
pub(crate) struct WaitingProposal {
    pub(crate) index: Index,
    pub(crate) term: Term,
    pub(crate) reply: ProposalReply,
    pub(crate) proposed_at: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Waiting {
    queue: VecDeque<WaitingProposal>,
    /// Proposals whose entries a later append of this node replaced, by index: rare, so a map.
    displaced: BTreeMap<Index, Vec<WaitingProposal>>,
}

impl Waiting {
    /// Adds `proposal` after the others; those waiting at its index or above are set aside.
    pub(crate) fn push(&mut self, proposal: WaitingProposal) {
        while self
            .queue
            .back()
            .is_some_and(|last| last.index >= proposal.index)
        {
            let gone = self.queue.pop_back().expect("checked non-empty");
            self.displaced.entry(gone.index).or_default().push(gone);
        }
        self.queue.push_back(proposal);
    }

    /// The waiting proposal of lowest index, if that index is at most `index`.
    pub(crate) fn pop_through(&mut self, index: Index) -> Option<WaitingProposal> {
        let queued = self.queue.front().map(|w| w.index);
        let displaced = self.displaced.first_key_value().map(|(&i, _)| i);
        match (queued, displaced) {
            (_, Some(d)) if d <= index && queued.is_none_or(|q| d <= q) => {
                let mut first = self.displaced.first_entry().expect("checked non-empty");
                let waiting = first.get_mut().pop();
                if first.get().is_empty() {
                    first.remove();
                }
                waiting
            }
            (Some(q), _) if q <= index => self.queue.pop_front(),
            _ => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.displaced.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len() + self.displaced.values().map(Vec::len).sum::<usize>()
    }

    /// The waiting proposals at indexes after `index`, leaving those at or below it.
    pub(crate) fn take_after(&mut self, index: Index) -> Vec<WaitingProposal> {
        let keep = self.queue.partition_point(|w| w.index <= index);
        let mut after: Vec<WaitingProposal> = self.queue.drain(keep..).collect();
        after.extend(
            self.displaced
                .split_off(&(index + 1))
                .into_values()
                .flatten(),
        );
        after
    }

    /// Every waiting proposal, leaving none.
    pub(crate) fn take_all(&mut self) -> Vec<WaitingProposal> {
        let mut all: Vec<WaitingProposal> = self.queue.drain(..).collect();
        all.extend(std::mem::take(&mut self.displaced).into_values().flatten());
        all
    }
}

/// What a proposal of `term` whose entry `snapshot` replaced is answered. One from a term after
/// the snapshot's never committed: terms only grow along the log, so the committed log through
/// the snapshot holds none later. Any other may have, and calling it dropped could make a client
/// retry what was applied.
pub(crate) fn replaced_outcome(term: Term, snapshot: &SnapshotMeta) -> Error {
    if term > snapshot.term {
        Error::Dropped
    } else {
        Error::OutcomeUnknown
    }
}

/// Membership changes waiting for their entries to commit. A change made through a joint
/// configuration is answered once the entry that leaves it commits, so that when the caller
/// hears back the membership it asked for is the one in force (and the next change can start).
#[derive(Debug, Default)]
pub(crate) struct WaitingChanges {
    /// The index and term each change was appended at, and its caller. Changes are rare and
    /// one runs at a time: a list. One a later append replaced waits like a proposal does.
    appended: Vec<(Index, Term, Completer<Index>)>,
    /// Changes whose joint entry committed, waiting for the entry that leaves it.
    joint: Vec<Completer<Index>>,
}

impl WaitingChanges {
    pub(crate) fn push(&mut self, index: Index, term: Term, reply: Completer<Index>) {
        self.appended.push((index, term, reply));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.appended.is_empty() && self.joint.is_empty()
    }

    /// `entry` committed (entries come in log order, none skipped).
    pub(crate) fn committed(&mut self, entry: &Entry) {
        // Called for every committed entry: nearly always there is nothing to do.
        if self.appended.is_empty() && self.joint.is_empty() {
            return;
        }
        let membership = match &entry.payload {
            Payload::Membership(m) => Some(m),
            _ => None,
        };
        // Only one change runs at a time: a plain membership after a joint one leaves it.
        if membership.is_some_and(|m| !m.is_joint()) {
            for reply in self.joint.drain(..) {
                reply.complete(Ok(entry.index));
            }
        }
        for (index, term, reply) in self.take_through(entry.index) {
            if index != entry.index || term != entry.term {
                reply.complete(Err(Error::Dropped));
            } else if membership.is_some_and(|m| m.is_joint()) {
                self.joint.push(reply);
            } else {
                reply.complete(Ok(index));
            }
        }
    }

    /// A leader's snapshot replaced the log through `snapshot.index`.
    pub(crate) fn replaced(&mut self, snapshot: &SnapshotMeta) {
        for (_, term, reply) in self.take_through(snapshot.index) {
            reply.complete(Err(replaced_outcome(term, snapshot)));
        }
        // A joint change that committed was left by the snapshot's index if the snapshot's
        // membership is plain; if not, that joint configuration is still being left.
        if !snapshot.membership.is_joint() {
            for reply in self.joint.drain(..) {
                reply.complete(Ok(snapshot.index));
            }
        }
    }

    /// Removes and returns the changes appended at `index` or below.
    fn take_through(&mut self, index: Index) -> Vec<(Index, Term, Completer<Index>)> {
        let (through, after) = std::mem::take(&mut self.appended)
            .into_iter()
            .partition(|(i, _, _)| *i <= index);
        self.appended = after;
        through
    }

    /// Fails the changes appended after `index` with `error`.
    pub(crate) fn fail_after(&mut self, index: Index, error: &Error) {
        let (through, after) = std::mem::take(&mut self.appended)
            .into_iter()
            .partition(|(i, _, _)| *i <= index);
        self.appended = through;
        for (_, _, reply) in after {
            reply.complete(Err(error.clone()));
        }
    }

    /// Fails with `error` the changes whose joint entry committed and that wait for the entry
    /// leaving it.
    pub(crate) fn fail_joint(&mut self, error: &Error) {
        for reply in self.joint.drain(..) {
            reply.complete(Err(error.clone()));
        }
    }

    /// Fails every waiting change: those appended with `appended`, those whose joint entry
    /// committed (only leaving it was still to come) with `joint`.
    pub(crate) fn fail_all(&mut self, appended: &Error, joint: &Error) {
        for (_, _, reply) in std::mem::take(&mut self.appended) {
            reply.complete(Err(appended.clone()));
        }
        self.fail_joint(joint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Membership;
    use crate::node::pending::{pending, Pending};
    use crate::node::proposal::Proposal;

    fn waiting(index: Index, term: Term) -> (Proposal, WaitingProposal) {
        let (proposal, reply) = ProposalReply::new();
        let w = WaitingProposal {
            index,
            term,
            reply,
            proposed_at: Instant::now(),
        };
        (proposal, w)
    }

    #[test]
    fn proposals_leave_in_index_order_up_to_the_commit() {
        let mut queue = Waiting::default();
        let mut handles = Vec::new();
        for index in 5..=8 {
            let (handle, w) = waiting(index, 2);
            queue.push(w);
            handles.push(handle);
        }
        let popped: Vec<Index> = std::iter::from_fn(|| queue.pop_through(6))
            .map(|w| w.index)
            .collect();
        assert_eq!(popped, [5, 6]);
        assert_eq!(queue.len(), 2);
        assert!(queue.pop_through(6).is_none());
        let rest: Vec<Index> = queue.take_all().into_iter().map(|w| w.index).collect();
        assert_eq!(rest, [7, 8]);
    }

    #[test]
    fn proposals_a_later_append_replaced_wait_for_what_commits_at_their_index() {
        let mut queue = Waiting::default();
        let mut handles = Vec::new();
        for (index, term) in [(5, 2), (6, 2), (7, 2), (6, 4)] {
            // Leader again in term 4, its log cut after 5: it appends at 6. Another node may
            // still hold 6 and 7 of term 2 and commit them: nothing is answered yet.
            let (handle, w) = waiting(index, term);
            queue.push(w);
            handles.push(handle);
        }
        assert_eq!(queue.len(), 4);
        assert!(handles.iter().all(|h| h.committed().try_get().is_none()));
        // Handed to the commit in index order, the set-aside ones among the others.
        let popped: Vec<(Index, Term)> = std::iter::from_fn(|| queue.pop_through(6))
            .map(|w| (w.index, w.term))
            .collect();
        assert_eq!(popped, [(5, 2), (6, 2), (6, 4)]);
        let rest: Vec<(Index, Term)> = queue
            .take_all()
            .into_iter()
            .map(|w| (w.index, w.term))
            .collect();
        assert_eq!(rest, [(7, 2)]);
    }

    #[test]
    fn proposals_after_an_index_are_taken_and_those_through_it_stay() {
        let mut w = Waiting::default();
        let mut handles = Vec::new();
        for index in [3, 5, 7] {
            let (p, waiting) = waiting(index, 1);
            handles.push(p);
            w.push(waiting);
        }
        // A later append replaced 5 and 7 (set aside), then 6 came.
        let (p, waiting6) = waiting(5, 2);
        handles.push(p);
        w.push(waiting6);
        let taken: Vec<Index> = w.take_after(4).iter().map(|p| p.index).collect();
        assert_eq!(taken, [5, 5, 7]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop_through(3).map(|p| p.index), Some(3));
    }

    #[test]
    fn a_replaced_proposal_is_dropped_only_when_its_term_proves_it() {
        let snapshot = SnapshotMeta {
            index: 50,
            term: 4,
            membership: Membership::default(),
        };
        assert_eq!(replaced_outcome(5, &snapshot), Error::Dropped);
        assert_eq!(replaced_outcome(4, &snapshot), Error::OutcomeUnknown);
        assert_eq!(replaced_outcome(3, &snapshot), Error::OutcomeUnknown);
    }

    fn membership_entry(index: Index, term: Term, voters: &[u64], outgoing: &[u64]) -> Entry {
        let mut m = Membership::new(voters.iter().copied(), []);
        m.outgoing = outgoing.iter().copied().collect();
        Entry {
            index,
            term,
            payload: Payload::Membership(m),
        }
    }

    fn change(changes: &mut WaitingChanges, index: Index, term: Term) -> Pending<Index> {
        let (handle, reply) = pending();
        changes.push(index, term, reply);
        handle
    }

    #[test]
    fn a_joint_change_is_answered_when_the_joint_configuration_is_left() {
        let mut changes = WaitingChanges::default();
        let joint = change(&mut changes, 5, 2);
        changes.committed(&membership_entry(5, 2, &[1, 4, 5], &[1, 2, 3]));
        assert!(joint.try_get().is_none(), "still joint");
        changes.committed(&Entry {
            index: 6,
            term: 2,
            payload: Payload::Command(bytes::Bytes::from_static(b"x")),
        });
        assert!(joint.try_get().is_none(), "still joint");
        changes.committed(&membership_entry(7, 3, &[1, 4, 5], &[]));
        assert_eq!(joint.try_get(), Some(Ok(7)));
        // A one-step change is answered when its own entry commits.
        let simple = change(&mut changes, 9, 3);
        changes.committed(&membership_entry(9, 3, &[1, 4], &[]));
        assert_eq!(simple.try_get(), Some(Ok(9)));
    }

    #[test]
    fn changes_replaced_by_an_append_or_a_snapshot_are_answered() {
        let mut changes = WaitingChanges::default();
        // Appended at 5 in term 2, then again at 5 in term 3 after the log was cut: either may
        // commit, and what commits at 5 answers both.
        let in_term_2 = change(&mut changes, 5, 2);
        let in_term_3 = change(&mut changes, 5, 3);
        assert!(in_term_2.try_get().is_none());
        changes.committed(&membership_entry(5, 2, &[1, 2], &[]));
        assert_eq!(in_term_2.try_get(), Some(Ok(5)));
        assert_eq!(in_term_3.try_get(), Some(Err(Error::Dropped)));
        let overwritten = change(&mut changes, 8, 3);
        changes.committed(&membership_entry(8, 4, &[1], &[]));
        assert_eq!(overwritten.try_get(), Some(Err(Error::Dropped)));

        let joint = change(&mut changes, 10, 4);
        changes.committed(&membership_entry(10, 4, &[1, 2, 3], &[1]));
        let covered = change(&mut changes, 12, 4);
        let later = change(&mut changes, 20, 4);
        let mut snapshot = SnapshotMeta {
            index: 15,
            term: 5,
            membership: Membership::new([1, 2, 3], []),
        };
        snapshot.membership.outgoing = [1].into();
        changes.replaced(&snapshot);
        assert_eq!(covered.try_get(), Some(Err(Error::OutcomeUnknown)));
        assert!(joint.try_get().is_none(), "the snapshot is still joint");
        snapshot.index = 18;
        snapshot.membership.outgoing.clear();
        changes.replaced(&snapshot);
        assert_eq!(joint.try_get(), Some(Ok(18)));
        assert!(later.try_get().is_none(), "20 lies past the snapshot");
        let stopped = Error::stopped("stop() was called");
        changes.fail_all(&stopped, &stopped);
        assert_eq!(
            later.try_get(),
            Some(Err(Error::stopped("stop() was called")))
        );
    }
}
