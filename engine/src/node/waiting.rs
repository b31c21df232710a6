//! Proposals waiting for their entries to commit, in index order.
//!
//! A leader appends at the end of its log, so its proposals arrive in ascending index order and
//! commit from the front: a queue, not a map (a `BTreeMap` insert per proposal was ~8% of the
//! leader driver's time at peak in memory). A proposal at an index not above the last waiting
//! one means this node lost and regained leadership meanwhile and its log was cut below the
//! waiting ones: their entries are gone, and they can never commit.

use std::collections::VecDeque;
use std::time::Instant;

use crate::core::{Index, Term};

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

#[cfg(test)]
mod tests {
    use super::*;
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
}
