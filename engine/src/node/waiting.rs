//! Proposals and membership changes waiting for their entries to commit, in index order.
//!
//! A leader appends at the end of its log, so its proposals arrive in ascending index order and
//! commit from the front: a queue, not a map (a `BTreeMap` insert per proposal was ~8% of the
//! leader driver's time at peak in memory). A proposal at an index not above the last waiting
//! one means this node lost and regained leadership meanwhile and its log was cut below the
//! waiting ones: their entries are gone, and they can never commit.

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
}

impl Waiting {
    /// Adds `proposal` after the others; fails (with `Dropped`) and counts those waiting at its
    /// index or above, whose entries its append replaced.
    pub(crate) fn push(&mut self, proposal: WaitingProposal) -> u64 {
        let mut dropped = 0;
        while self
            .queue
            .back()
            .is_some_and(|last| last.index >= proposal.index)
        {
            let gone = self.queue.pop_back().expect("checked non-empty");
            gone.reply.fail(Error::Dropped);
            dropped += 1;
        }
        self.queue.push_back(proposal);
        dropped
    }

    /// The first waiting proposal, if its index is at most `index`.
    pub(crate) fn pop_through(&mut self, index: Index) -> Option<WaitingProposal> {
        if self.queue.front()?.index > index {
            return None;
        }
        self.queue.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Every waiting proposal, oldest first, leaving none.
    pub(crate) fn take_all(&mut self) -> VecDeque<WaitingProposal> {
        std::mem::take(&mut self.queue)
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
    /// By index: the term the change was appended in, and its caller.
    appended: BTreeMap<Index, (Term, Completer<Index>)>,
    /// Changes whose joint entry committed, waiting for the entry that leaves it.
    joint: Vec<Completer<Index>>,
}

impl WaitingChanges {
    /// Adds a change appended at `index`; those waiting at its index or above were replaced by
    /// its append, and are dropped.
    pub(crate) fn push(&mut self, index: Index, term: Term, reply: Completer<Index>) {
        for (_, (_, gone)) in self.appended.split_off(&index) {
            gone.complete(Err(Error::Dropped));
        }
        self.appended.insert(index, (term, reply));
    }

    /// `entry` committed (entries come in log order, none skipped).
    pub(crate) fn committed(&mut self, entry: &Entry) {
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
        while let Some(first) = self.appended.first_entry() {
            if *first.key() > entry.index {
                break;
            }
            let (index, (term, reply)) = first.remove_entry();
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
        let rest = self.appended.split_off(&(snapshot.index + 1));
        for (_, (term, reply)) in std::mem::replace(&mut self.appended, rest) {
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

    /// Fails every waiting change with `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        let appended = std::mem::take(&mut self.appended)
            .into_values()
            .map(|(_, r)| r);
        for reply in appended.chain(self.joint.drain(..)) {
            reply.complete(Err(error.clone()));
        }
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
            assert_eq!(queue.push(w), 0);
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
    fn an_append_below_waiting_proposals_drops_them() {
        let mut queue = Waiting::default();
        let (kept, w) = waiting(5, 2);
        queue.push(w);
        let (replaced, w) = waiting(6, 2);
        queue.push(w);
        let (above, w) = waiting(7, 2);
        queue.push(w);
        // Leader again in term 4, its log cut after 5: it appends at 6.
        let (_new, w) = waiting(6, 4);
        assert_eq!(queue.push(w), 2);
        for gone in [replaced, above] {
            let result = gone.wait(std::time::Duration::from_secs(1));
            assert!(matches!(result, Err(Error::Dropped)), "{result:?}");
        }
        assert!(kept.committed().try_get().is_none(), "5 still waits");
        let left: Vec<(Index, Term)> = queue
            .take_all()
            .into_iter()
            .map(|w| (w.index, w.term))
            .collect();
        assert_eq!(left, [(5, 2), (6, 4)]);
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
        let replaced = change(&mut changes, 5, 2);
        let kept = change(&mut changes, 5, 3);
        assert_eq!(replaced.try_get(), Some(Err(Error::Dropped)));
        let overwritten = change(&mut changes, 8, 3);
        changes.committed(&membership_entry(8, 4, &[1], &[]));
        assert_eq!(kept.try_get(), Some(Err(Error::Dropped)));
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
        changes.fail_all(&Error::stopped("stop() was called"));
        assert_eq!(
            later.try_get(),
            Some(Err(Error::stopped("stop() was called")))
        );
    }
}
