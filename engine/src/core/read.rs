//! ReadIndex bookkeeping on the leader.
//!
//! Each read records the commit index when it arrives and the read sequence number of the
//! heartbeat round that will confirm it. Reads arriving between two rounds share the next round,
//! so a burst of reads costs one round of messages. A read completes once a quorum has echoed a
//! sequence number at or above its own.

use std::collections::VecDeque;

use super::{Index, NodeId, ReadId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingRead {
    pub(crate) id: ReadId,
    /// Who asked: this node, or a follower that forwarded the read.
    pub(crate) origin: NodeId,
    pub(crate) index: Index,
    pub(crate) seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// Reads awaiting confirmation, in sequence order.
    pending: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term: their index is not
    /// known yet.
    waiting_for_commit: Vec<(ReadId, NodeId)>,
    /// The sequence number of the last round sent.
    pub(crate) sent_seq: u64,
    /// Whether some pending read needs a round that has not been sent yet.
    pub(crate) round_needed: bool,
}

impl ReadQueue {
    /// Queues a read at `index` for the next round.
    pub(crate) fn push(&mut self, id: ReadId, origin: NodeId, index: Index) {
        let seq = self.sent_seq + 1;
        self.pending.push_back(PendingRead {
            id,
            origin,
            index,
            seq,
        });
        self.round_needed = true;
    }

    pub(crate) fn wait_for_commit(&mut self, id: ReadId, origin: NodeId) {
        self.waiting_for_commit.push((id, origin));
    }

    pub(crate) fn take_waiting_for_commit(&mut self) -> Vec<(ReadId, NodeId)> {
        std::mem::take(&mut self.waiting_for_commit)
    }

    /// Starts the round for every read queued since the last one; returns its sequence.
    pub(crate) fn start_round(&mut self) -> u64 {
        self.sent_seq += 1;
        self.round_needed = false;
        self.sent_seq
    }

    /// Removes and returns the reads a quorum confirmed by echoing `confirmed_seq`.
    pub(crate) fn confirm(&mut self, confirmed_seq: u64) -> Vec<PendingRead> {
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|r| r.seq <= confirmed_seq) {
            done.extend(self.pending.pop_front());
        }
        done
    }

    /// Empties the queue when leadership is lost: every read must be failed.
    pub(crate) fn drain_all(&mut self) -> Vec<(ReadId, NodeId)> {
        let mut all: Vec<(ReadId, NodeId)> =
            self.pending.drain(..).map(|r| (r.id, r.origin)).collect();
        all.append(&mut self.waiting_for_commit);
        self.round_needed = false;
        all
    }
}
