//! Events a node publishes to its subscribers, and the status it answers with.

use std::time::Duration;

use parking_lot::Mutex;

use crate::core::{Index, Membership, NodeId, ProgressState, Role, Term};

/// Something observable happened on a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    RoleChanged {
        role: Role,
        term: Term,
    },
    LeaderChanged {
        leader: Option<NodeId>,
        term: Term,
    },
    /// This node's election timer fired and it started a (pre-)election.
    ElectionStarted {
        term: Term,
    },
    CommitAdvanced {
        index: Index,
    },
    Applied {
        index: Index,
    },
    SnapshotTaken {
        index: Index,
    },
    SnapshotInstalled {
        index: Index,
    },
    /// A follower's heartbeat round trip is a large fraction of the election timeout: elections
    /// may start spuriously if it grows.
    SlowHeartbeat {
        peer: NodeId,
        round_trip: Duration,
    },
    Stopped {
        reason: String,
    },
}

/// Subscribers get events on bounded channels; a subscriber that falls behind misses events
/// rather than slowing the node.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    senders: Mutex<Vec<crossbeam_channel::Sender<Event>>>,
}

impl Subscribers {
    const DEPTH: usize = 4096;

    pub(crate) fn subscribe(&self) -> crossbeam_channel::Receiver<Event> {
        let (tx, rx) = crossbeam_channel::bounded(Self::DEPTH);
        self.senders.lock().push(tx);
        rx
    }

    pub(crate) fn publish(&self, event: Event) {
        let mut senders = self.senders.lock();
        if senders.is_empty() {
            return;
        }
        senders.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Full(_)) => true,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
    }
}

/// A node's view of itself and, on a leader, of its followers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    pub applied_index: Index,
    pub first_index: Index,
    pub last_index: Index,
    pub snapshot_index: Index,
    pub membership: Membership,
    /// Leader only: every other member's replication state.
    pub followers: Vec<FollowerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    pub id: NodeId,
    pub match_index: Index,
    pub next_index: Index,
    /// Entries the follower is behind the leader's last index.
    pub lag_entries: u64,
    pub state: ProgressState,
}
