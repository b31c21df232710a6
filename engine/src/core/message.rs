//! The messages cores exchange.
//!
//! Plain data with no pointers to itself, so the transport can archive them as they are.

use super::{Entry, Index, NodeId, ReadId, SnapshotMeta, Term};

/// One message between two cores. `term` is the sender's term, except in a granted pre-vote
/// request or response, where it is the term the pre-candidate would campaign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// "Would you vote for me in `term`?", asked without disturbing anyone's term (thesis 9.6).
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// A real vote request. `transfer` marks a campaign started by the leader's TimeoutNow, which
    /// voters honour even while they still hear from that leader.
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// Replicate `entries` after (`prev_index`, `prev_term`). `lease_tick` and `read_seq` are
    /// echoed in the response: they confirm leadership for lease and ReadIndex reads.
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        lease_tick: u64,
        read_seq: u64,
    },
    AppendResponse {
        result: AppendResult,
        lease_tick: u64,
        read_seq: u64,
    },
    /// Keeps followers' election timers quiet and carries the commit index they can trust.
    Heartbeat {
        commit: Index,
        lease_tick: u64,
        read_seq: u64,
    },
    HeartbeatResponse {
        lease_tick: u64,
        read_seq: u64,
    },
    /// Install the snapshot described by `snapshot`; the runtime carries its data alongside.
    Snapshot {
        snapshot: SnapshotMeta,
    },
    /// From the leader to its transfer target: campaign now. `last_index` is the leader's last
    /// entry when it sent this. A leader appends nothing while it transfers, so a target whose
    /// log holds an entry of the leader's term after `last_index` knows the transfer was given
    /// up since, and ignores the TimeoutNow instead of deposing the leader. (One that arrives
    /// late at a target that has no such entry yet, or from a leader that took no proposals
    /// since, still starts an election.)
    TimeoutNow {
        last_index: Index,
    },
    /// A follower asks the leader for a read index on behalf of one of its callers.
    ReadIndex {
        id: ReadId,
        lease: bool,
    },
    /// The leader's answer: the index to wait for, or `None` if it could not confirm leadership.
    ReadIndexResponse {
        id: ReadId,
        index: Option<Index>,
    },
}

/// A follower's answer to [`Body::Append`] or [`Body::Snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `index`, durably.
    Accepted { index: Index },
    /// The log does not contain (`rejected`, prev term). The hint names the follower's best guess
    /// of the last index at which the logs may agree, with its term there (fast backtracking).
    Rejected {
        rejected: Index,
        hint_index: Index,
        hint_term: Term,
    },
}

impl Body {
    /// Short name used in stats, traces and scenario output.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::PreVote { .. } => "PreVote",
            Body::PreVoteResponse { .. } => "PreVoteResponse",
            Body::Vote { .. } => "Vote",
            Body::VoteResponse { .. } => "VoteResponse",
            Body::Append { .. } => "Append",
            Body::AppendResponse { .. } => "AppendResponse",
            Body::Heartbeat { .. } => "Heartbeat",
            Body::HeartbeatResponse { .. } => "HeartbeatResponse",
            Body::Snapshot { .. } => "Snapshot",
            Body::TimeoutNow { .. } => "TimeoutNow",
            Body::ReadIndex { .. } => "ReadIndex",
            Body::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }

    /// Whether only a leader sends this; a receiver at the same or lower term learns who leads.
    pub(crate) fn is_from_leader(&self) -> bool {
        matches!(
            self,
            Body::Append { .. }
                | Body::Heartbeat { .. }
                | Body::Snapshot { .. }
                | Body::TimeoutNow { .. }
        )
    }
}
