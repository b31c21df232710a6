//! The one error type of the node API, and the record of why a node stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::core::{NodeId, Term};

/// Why a node call failed. Cloneable, so one failure can complete many waiters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This node cannot do it; `leader` is where to go instead, when known.
    #[error("not the leader (leader hint {leader:?}, term {term})")]
    NotLeader { leader: Option<NodeId>, term: Term },
    #[error("timed out")]
    Timeout,
    /// The entry never committed and never will: a different entry committed at its index.
    #[error("the proposal was dropped: a new leader overwrote its entry")]
    Dropped,
    /// The entry may or may not have committed, and this node cannot tell: a leader's snapshot
    /// replaced the part of its log that held it, this leader was removed from the cluster with
    /// the entry not yet committed (it no longer receives the log), or the node stopped with
    /// the entry appended but not known committed. Retry only what is safe to apply twice, or
    /// read the state to learn what happened.
    #[error(
        "the proposal's outcome is unknown to this node: its entry may commit on the others \
         (replaced by a snapshot, or the node was removed or stopped first)"
    )]
    OutcomeUnknown,
    /// The node stopped. Proposals it had appended and not seen commit fail with
    /// `OutcomeUnknown` instead, so one failing with `Stopped` was never appended, except where
    /// it had committed already (its commit was reported first) and only its state machine
    /// response was still to come, or where the node's own threads failed (a panic: every
    /// waiter hears `Stopped`).
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

/// Whether a node stopped, and why: set once, by `Node::stop` or by the driver when it stops on
/// its own (a failed disk or state machine), so that every later call names the cause.
#[derive(Debug, Default)]
pub(crate) struct Halt {
    halted: AtomicBool,
    reason: OnceLock<String>,
}

impl Halt {
    /// Marks the node stopped; the first reason given is the one kept.
    pub(crate) fn halt(&self, reason: &str) {
        let _ = self.reason.set(reason.to_string());
        self.halted.store(true, Ordering::Release);
    }

    pub(crate) fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// What a call to the stopped node fails with.
    pub(crate) fn error(&self) -> Error {
        Error::stopped(self.reason.get().map_or("the node stopped", String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_keeps_its_first_reason() {
        let halt = Halt::default();
        assert!(!halt.is_halted());
        halt.halt("storage failed: disk gone");
        halt.halt("stop() was called");
        assert!(halt.is_halted());
        assert_eq!(halt.error(), Error::stopped("storage failed: disk gone"));
    }
}
