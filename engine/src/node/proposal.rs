//! Proposal handles: what `propose` returns, and the completers the node keeps.

use std::time::Duration;

use bytes::Bytes;

use crate::core::{Index, Term};

use super::pending::{pending, Completer, Pending};
use super::Error;

/// A proposal's entry is committed: a quorum holds it durably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub index: Index,
    pub term: Term,
}

/// A proposal's command was applied on this node; `response` is what the state machine returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: Index,
    pub term: Term,
    pub response: Bytes,
}

/// The handle `propose` returns: block on it, or await its parts.
#[must_use = "a proposal handle does nothing unless waited for"]
#[derive(Debug)]
pub struct Proposal {
    committed: Pending<Committed>,
    applied: Pending<Applied>,
}

impl Proposal {
    /// Blocks until the entry commits (or fails).
    pub fn wait(&self, timeout: Duration) -> Result<Committed, Error> {
        self.committed.wait(timeout)
    }

    /// Blocks until this node applied the command, returning the state machine's response.
    pub fn wait_applied(&self, timeout: Duration) -> Result<Applied, Error> {
        self.applied.wait(timeout)
    }

    /// Resolves when the entry commits.
    pub fn committed(&self) -> &Pending<Committed> {
        &self.committed
    }

    /// Resolves when the command was applied here.
    pub fn applied(self) -> Pending<Applied> {
        self.applied
    }

    /// Both halves, to await one after the other: a transport relaying a forwarded proposal's
    /// outcome sends `Committed` as soon as it is known, then `Applied`.
    pub fn into_parts(self) -> (Pending<Committed>, Pending<Applied>) {
        (self.committed, self.applied)
    }

    pub(crate) fn failed(error: Error) -> Self {
        let (proposal, reply) = ProposalReply::new();
        reply.fail(error);
        proposal
    }
}

/// The completing side of a [`Proposal`]. Transports use it to carry a forwarded proposal's
/// outcome back to the node that received it from its caller.
#[derive(Debug)]
pub struct ProposalReply {
    pub(crate) committed: Completer<Committed>,
    pub(crate) applied: Completer<Applied>,
}

impl ProposalReply {
    /// A new handle and the reply that completes it.
    pub fn new() -> (Proposal, ProposalReply) {
        let (committed, committed_reply) = pending();
        let (applied, applied_reply) = pending();
        (
            Proposal { committed, applied },
            ProposalReply {
                committed: committed_reply,
                applied: applied_reply,
            },
        )
    }

    /// Completes both parts with `error`.
    pub fn fail(self, error: Error) {
        self.committed.complete(Err(error.clone()));
        self.applied.complete(Err(error));
    }

    pub fn commit(self, committed: Committed) -> AppliedReply {
        self.committed.complete(Ok(committed));
        AppliedReply(self.applied)
    }
}

/// What is left to complete once a proposal committed: its application.
#[derive(Debug)]
pub struct AppliedReply(pub(crate) Completer<Applied>);

impl AppliedReply {
    pub fn complete(self, result: Result<Applied, Error>) {
        self.0.complete(result);
    }
}
