//! The one error type of the node API.

use crate::core::{NodeId, Term};

/// Why a node call failed. Cloneable, so one failure can complete many waiters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This node cannot do it; `leader` is where to go instead, when known.
    #[error("not the leader (leader hint {leader:?}, term {term})")]
    NotLeader { leader: Option<NodeId>, term: Term },
    #[error("timed out")]
    Timeout,
    /// The entry was overwritten by a new leader before it committed.
    #[error("the proposal was dropped: a new leader overwrote its entry")]
    Dropped,
    #[error("the node stopped: {reason}")]
    Stopped { reason: String },
    #[error("proposal of {size_bytes} bytes exceeds max_proposal_bytes = {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("the state machine failed: {0}")]
    StateMachine(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn stopped(reason: impl Into<String>) -> Self {
        Error::Stopped {
            reason: reason.into(),
        }
    }
}
