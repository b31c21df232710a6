//! The archived shapes of everything that crosses the wire, and their conversions.
//!
//! These mirror `keel_engine::core::{Message, Body, Entry, Payload, Membership, SnapshotMeta}`
//! (and the node's proposal outcomes and errors) so that the core stays free of rkyv. Sending
//! builds a mirror by cloning `Bytes` handles (no payload copy) and archives it; receiving never
//! deserializes: it validates the archive (bytecheck) and reads it in place, and command payloads
//! become `Bytes::slice`s of the frame buffer they arrived in.

use std::collections::BTreeSet;

use bytes::Bytes;
use keel_engine::core::{
    AppendResult, Body, Entry, Index, Membership, Message, NodeId, Payload, SnapshotMeta, Term,
};
use keel_engine::node::{Applied, Committed, Error as NodeError};
use rkyv::{Archive, Serialize};

/// Several messages to one peer, coalesced into one frame.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub struct WireBatch {
    pub messages: Vec<WireMessage>,
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub struct WireMessage {
    pub from: u64,
    pub to: u64,
    pub term: u64,
    pub body: WireBody,
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub enum WireBody {
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    Vote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<WireEntry>,
        commit: u64,
        lease_tick: u64,
        read_seq: u64,
    },
    AppendResponse {
        result: WireAppendResult,
        lease_tick: u64,
        read_seq: u64,
    },
    Heartbeat {
        commit: u64,
        lease_tick: u64,
        read_seq: u64,
    },
    HeartbeatResponse {
        lease_tick: u64,
        read_seq: u64,
    },
    Snapshot {
        snapshot: WireSnapshotMeta,
    },
    TimeoutNow {
        last_index: u64,
    },
    ReadIndex {
        id: u64,
        lease: bool,
    },
    ReadIndexResponse {
        id: u64,
        index: Option<u64>,
    },
}

#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq)]
pub enum WireAppendResult {
    Accepted {
        index: u64,
    },
    Rejected {
        rejected: u64,
        hint_index: u64,
        hint_term: u64,
    },
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub struct WireEntry {
    pub index: u64,
    pub term: u64,
    pub payload: WirePayload,
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub enum WirePayload {
    Noop,
    /// Archived as a plain byte vector: the receiver slices it out of the frame in place.
    Command(Bytes),
    Membership(WireMembership),
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq, Default)]
pub struct WireMembership {
    pub voters: Vec<u64>,
    pub outgoing: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq, Default)]
pub struct WireSnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub membership: WireMembership,
}

/// The first frame of a snapshot stream: the Raft message and how many bytes of data follow in
/// chunk frames.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub struct WireSnapshotOffer {
    pub message: WireMessage,
    pub total_bytes: u64,
}

/// What the leader sends back on a forwarded proposal's stream: `Committed` then `Applied`, or
/// `Failed` at any point.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub enum WireForwardReply {
    Committed {
        index: u64,
        term: u64,
    },
    Applied {
        index: u64,
        term: u64,
        response: Bytes,
    },
    Failed {
        error: WireError,
    },
}

/// A client's request on the key-value endpoint.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub enum WireKvRequest {
    /// An encoded `KvCommand`, proposed on the node (which must lead).
    Propose { command: Bytes },
    /// Read a key; `consistency` is 0 linearizable, 1 lease, 2 local.
    Read { key: Bytes, consistency: u8 },
}

#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub enum WireKvResponse {
    /// The command was applied at `index`; `response` is the state machine's (see
    /// `keel_engine::kv::decode_response`).
    Applied {
        index: u64,
        response: Bytes,
    },
    /// The key's value (`None`: absent) as of the read.
    Value {
        value: Option<Bytes>,
    },
    Failed {
        error: WireError,
    },
}

/// `keel_engine::node::Error`, archived. `NotLeader` carries the leader's address as the node
/// knows it, so a remote client can follow the hint.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub enum WireError {
    NotLeader {
        leader: Option<u64>,
        term: u64,
        leader_addr: Option<String>,
    },
    Timeout,
    Dropped,
    Stopped {
        reason: String,
    },
    TooLarge {
        size_bytes: u64,
        max_bytes: u64,
    },
    TransferInProgress,
    Membership {
        message: String,
    },
    Storage {
        message: String,
    },
    StateMachine {
        message: String,
    },
    Config {
        message: String,
    },
    /// Last, so that the variants before it keep their archived tags.
    OutcomeUnknown,
}

/// Why an archive that passed validation still cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("a payload lies outside its frame")]
    PayloadOutsideFrame,
}

// ---- sending: core -> mirror (cheap: Bytes clones, small vectors) ----

impl From<&Membership> for WireMembership {
    fn from(m: &Membership) -> Self {
        Self {
            voters: m.voters.iter().copied().collect(),
            outgoing: m.outgoing.iter().copied().collect(),
            learners: m.learners.iter().copied().collect(),
        }
    }
}

impl From<&SnapshotMeta> for WireSnapshotMeta {
    fn from(s: &SnapshotMeta) -> Self {
        Self {
            index: s.index,
            term: s.term,
            membership: (&s.membership).into(),
        }
    }
}

impl From<&Entry> for WireEntry {
    fn from(e: &Entry) -> Self {
        Self {
            index: e.index,
            term: e.term,
            payload: match &e.payload {
                Payload::Noop => WirePayload::Noop,
                Payload::Command(data) => WirePayload::Command(data.clone()),
                Payload::Membership(m) => WirePayload::Membership(m.into()),
            },
        }
    }
}

impl From<AppendResult> for WireAppendResult {
    fn from(r: AppendResult) -> Self {
        match r {
            AppendResult::Accepted { index } => Self::Accepted { index },
            AppendResult::Rejected {
                rejected,
                hint_index,
                hint_term,
            } => Self::Rejected {
                rejected,
                hint_index,
                hint_term,
            },
        }
    }
}

impl From<&Message> for WireMessage {
    fn from(m: &Message) -> Self {
        let body = match &m.body {
            Body::PreVote {
                last_index,
                last_term,
            } => WireBody::PreVote {
                last_index: *last_index,
                last_term: *last_term,
            },
            Body::PreVoteResponse { granted } => WireBody::PreVoteResponse { granted: *granted },
            Body::Vote {
                last_index,
                last_term,
                transfer,
            } => WireBody::Vote {
                last_index: *last_index,
                last_term: *last_term,
                transfer: *transfer,
            },
            Body::VoteResponse { granted } => WireBody::VoteResponse { granted: *granted },
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                lease_tick,
                read_seq,
            } => WireBody::Append {
                prev_index: *prev_index,
                prev_term: *prev_term,
                entries: entries.iter().map(WireEntry::from).collect(),
                commit: *commit,
                lease_tick: *lease_tick,
                read_seq: *read_seq,
            },
            Body::AppendResponse {
                result,
                lease_tick,
                read_seq,
            } => WireBody::AppendResponse {
                result: (*result).into(),
                lease_tick: *lease_tick,
                read_seq: *read_seq,
            },
            Body::Heartbeat {
                commit,
                lease_tick,
                read_seq,
            } => WireBody::Heartbeat {
                commit: *commit,
                lease_tick: *lease_tick,
                read_seq: *read_seq,
            },
            Body::HeartbeatResponse {
                lease_tick,
                read_seq,
            } => WireBody::HeartbeatResponse {
                lease_tick: *lease_tick,
                read_seq: *read_seq,
            },
            Body::Snapshot { snapshot } => WireBody::Snapshot {
                snapshot: snapshot.into(),
            },
            Body::TimeoutNow { last_index } => WireBody::TimeoutNow {
                last_index: *last_index,
            },
            Body::ReadIndex { id, lease } => WireBody::ReadIndex {
                id: *id,
                lease: *lease,
            },
            Body::ReadIndexResponse { id, index } => WireBody::ReadIndexResponse {
                id: *id,
                index: *index,
            },
        };
        Self {
            from: m.from,
            to: m.to,
            term: m.term,
            body,
        }
    }
}

impl WireError {
    /// `leader_addr` is where the hinted leader listens, when this node knows it.
    pub fn from_node(e: &NodeError, leader_addr: Option<String>) -> Self {
        match e.clone() {
            NodeError::NotLeader { leader, term } => Self::NotLeader {
                leader,
                term,
                leader_addr,
            },
            NodeError::Timeout => Self::Timeout,
            NodeError::Dropped => Self::Dropped,
            NodeError::OutcomeUnknown => Self::OutcomeUnknown,
            NodeError::Stopped { reason } => Self::Stopped { reason },
            NodeError::TooLarge {
                size_bytes,
                max_bytes,
            } => Self::TooLarge {
                size_bytes: size_bytes as u64,
                max_bytes: max_bytes as u64,
            },
            NodeError::TransferInProgress => Self::TransferInProgress,
            NodeError::Membership(message) => Self::Membership { message },
            NodeError::Storage(message) => Self::Storage { message },
            NodeError::StateMachine(message) => Self::StateMachine { message },
            NodeError::Config(message) => Self::Config { message },
        }
    }
}

// ---- receiving: archived -> core, in place ----

/// `part` as a `Bytes` sharing `frame`'s buffer, or an error if it does not lie inside it.
///
/// Validation already guarantees that every archived vector lies inside the buffer it was
/// validated in; checking again here keeps a logic error from ever becoming a panic.
pub fn slice_in_frame(frame: &Bytes, part: &[u8]) -> Result<Bytes, ConvertError> {
    if part.is_empty() {
        return Ok(Bytes::new());
    }
    let start = (part.as_ptr() as usize)
        .checked_sub(frame.as_ptr() as usize)
        .ok_or(ConvertError::PayloadOutsideFrame)?;
    let end = start
        .checked_add(part.len())
        .filter(|&end| end <= frame.len())
        .ok_or(ConvertError::PayloadOutsideFrame)?;
    Ok(frame.slice(start..end))
}

fn membership_of(m: &ArchivedWireMembership) -> Membership {
    let set = |v: &rkyv::vec::ArchivedVec<rkyv::rend::u64_le>| -> BTreeSet<NodeId> {
        v.iter().map(|x| x.to_native()).collect()
    };
    Membership {
        voters: set(&m.voters),
        outgoing: set(&m.outgoing),
        learners: set(&m.learners),
    }
}

pub fn snapshot_meta_of(s: &ArchivedWireSnapshotMeta) -> SnapshotMeta {
    SnapshotMeta {
        index: s.index.to_native(),
        term: s.term.to_native(),
        membership: membership_of(&s.membership),
    }
}

fn entry_of(e: &ArchivedWireEntry, frame: &Bytes) -> Result<Entry, ConvertError> {
    let payload = match &e.payload {
        ArchivedWirePayload::Noop => Payload::Noop,
        ArchivedWirePayload::Command(data) => Payload::Command(slice_in_frame(frame, data)?),
        ArchivedWirePayload::Membership(m) => Payload::Membership(membership_of(m)),
    };
    Ok(Entry {
        index: e.index.to_native(),
        term: e.term.to_native(),
        payload,
    })
}

/// Builds a core message from a validated archive that lives in `frame`.
pub fn message_of(m: &ArchivedWireMessage, frame: &Bytes) -> Result<Message, ConvertError> {
    let body = match &m.body {
        ArchivedWireBody::PreVote {
            last_index,
            last_term,
        } => Body::PreVote {
            last_index: last_index.to_native(),
            last_term: last_term.to_native(),
        },
        ArchivedWireBody::PreVoteResponse { granted } => {
            Body::PreVoteResponse { granted: *granted }
        }
        ArchivedWireBody::Vote {
            last_index,
            last_term,
            transfer,
        } => Body::Vote {
            last_index: last_index.to_native(),
            last_term: last_term.to_native(),
            transfer: *transfer,
        },
        ArchivedWireBody::VoteResponse { granted } => Body::VoteResponse { granted: *granted },
        ArchivedWireBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
            lease_tick,
            read_seq,
        } => Body::Append {
            prev_index: prev_index.to_native(),
            prev_term: prev_term.to_native(),
            entries: entries
                .iter()
                .map(|e| entry_of(e, frame))
                .collect::<Result<_, _>>()?,
            commit: commit.to_native(),
            lease_tick: lease_tick.to_native(),
            read_seq: read_seq.to_native(),
        },
        ArchivedWireBody::AppendResponse {
            result,
            lease_tick,
            read_seq,
        } => Body::AppendResponse {
            result: match result {
                ArchivedWireAppendResult::Accepted { index } => AppendResult::Accepted {
                    index: index.to_native(),
                },
                ArchivedWireAppendResult::Rejected {
                    rejected,
                    hint_index,
                    hint_term,
                } => AppendResult::Rejected {
                    rejected: rejected.to_native(),
                    hint_index: hint_index.to_native(),
                    hint_term: hint_term.to_native(),
                },
            },
            lease_tick: lease_tick.to_native(),
            read_seq: read_seq.to_native(),
        },
        ArchivedWireBody::Heartbeat {
            commit,
            lease_tick,
            read_seq,
        } => Body::Heartbeat {
            commit: commit.to_native(),
            lease_tick: lease_tick.to_native(),
            read_seq: read_seq.to_native(),
        },
        ArchivedWireBody::HeartbeatResponse {
            lease_tick,
            read_seq,
        } => Body::HeartbeatResponse {
            lease_tick: lease_tick.to_native(),
            read_seq: read_seq.to_native(),
        },
        ArchivedWireBody::Snapshot { snapshot } => Body::Snapshot {
            snapshot: snapshot_meta_of(snapshot),
        },
        ArchivedWireBody::TimeoutNow { last_index } => Body::TimeoutNow {
            last_index: last_index.to_native(),
        },
        ArchivedWireBody::ReadIndex { id, lease } => Body::ReadIndex {
            id: id.to_native(),
            lease: *lease,
        },
        ArchivedWireBody::ReadIndexResponse { id, index } => Body::ReadIndexResponse {
            id: id.to_native(),
            index: index.as_ref().map(|i| i.to_native()),
        },
    };
    Ok(Message {
        from: m.from.to_native(),
        to: m.to.to_native(),
        term: m.term.to_native(),
        body,
    })
}

impl ArchivedWireError {
    pub fn to_node(&self) -> NodeError {
        match self {
            Self::NotLeader { leader, term, .. } => NodeError::NotLeader {
                leader: leader.as_ref().map(|l| l.to_native()),
                term: term.to_native(),
            },
            Self::Timeout => NodeError::Timeout,
            Self::Dropped => NodeError::Dropped,
            Self::OutcomeUnknown => NodeError::OutcomeUnknown,
            Self::Stopped { reason } => NodeError::Stopped {
                reason: reason.as_str().to_owned(),
            },
            Self::TooLarge {
                size_bytes,
                max_bytes,
            } => NodeError::TooLarge {
                size_bytes: usize::try_from(size_bytes.to_native()).unwrap_or(usize::MAX),
                max_bytes: usize::try_from(max_bytes.to_native()).unwrap_or(usize::MAX),
            },
            Self::TransferInProgress => NodeError::TransferInProgress,
            Self::Membership { message } => NodeError::Membership(message.as_str().to_owned()),
            Self::Storage { message } => NodeError::Storage(message.as_str().to_owned()),
            Self::StateMachine { message } => NodeError::StateMachine(message.as_str().to_owned()),
            Self::Config { message } => NodeError::Config(message.as_str().to_owned()),
        }
    }

    /// The leader hint and its address, when this is `NotLeader`.
    pub fn leader_hint(&self) -> Option<(Option<NodeId>, Option<String>)> {
        match self {
            Self::NotLeader {
                leader,
                leader_addr,
                ..
            } => Some((
                leader.as_ref().map(|l| l.to_native()),
                leader_addr.as_ref().map(|a| a.as_str().to_owned()),
            )),
            _ => None,
        }
    }
}

pub fn committed_of(index: &rkyv::rend::u64_le, term: &rkyv::rend::u64_le) -> Committed {
    Committed {
        index: Index::from(index.to_native()),
        term: Term::from(term.to_native()),
    }
}

pub fn applied_of(
    index: &rkyv::rend::u64_le,
    term: &rkyv::rend::u64_le,
    response: &[u8],
    frame: &Bytes,
) -> Result<Applied, ConvertError> {
    Ok(Applied {
        index: index.to_native(),
        term: term.to_native(),
        response: slice_in_frame(frame, response)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{access, archive};

    #[test]
    fn every_node_error_round_trips() {
        let errors = [
            NodeError::NotLeader {
                leader: Some(2),
                term: 7,
            },
            NodeError::Timeout,
            NodeError::Dropped,
            NodeError::OutcomeUnknown,
            NodeError::Stopped {
                reason: "stop() was called".into(),
            },
            NodeError::TooLarge {
                size_bytes: 9,
                max_bytes: 8,
            },
            NodeError::TransferInProgress,
            NodeError::Membership("not caught up".into()),
            NodeError::Storage("disk gone".into()),
            NodeError::StateMachine("bad command".into()),
            NodeError::Config("bad field".into()),
        ];
        for e in errors {
            let bytes = archive(&WireError::from_node(&e, None)).unwrap();
            let archived: &ArchivedWireError = access(&bytes).unwrap();
            assert_eq!(archived.to_node(), e);
        }
    }
}
