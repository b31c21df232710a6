//! Log entries, the persistent hard state, and snapshot metadata.

use bytes::Bytes;

use super::{Index, Membership, NodeId, Term};

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub payload: Payload,
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Appended by every new leader so it can commit entries of its own term (and by barriers).
    Noop,
    /// An opaque command for the user's state machine.
    Command(Bytes),
    /// A membership configuration; it takes effect as soon as it is appended, not when committed.
    Membership(Membership),
}

impl Entry {
    /// Bytes this entry accounts for when messages and batches are sized.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 24;
        HEADER_BYTES
            + match &self.payload {
                Payload::Noop => 0,
                Payload::Command(data) => data.len(),
                Payload::Membership(m) => 8 * m.members().count(),
            }
    }
}

/// What must survive a crash besides the log: the current term, the vote cast in it, and the
/// commit index (the last is an optimisation for restart, not needed for safety).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// Describes the state a snapshot captures: everything up to and including `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    /// The membership in effect at `index`.
    pub membership: Membership,
}
