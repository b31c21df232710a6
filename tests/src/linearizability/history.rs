//! What clients saw: the operations of a history, each with the outcome its client observed.
//!
//! Each kind of operation carries its own kind of result, so a history cannot pair a get with a
//! delete's answer; the only malformed history left is one whose times run backwards.

use bytes::Bytes;

/// One operation of a history: who asked what, when, and what came of it.
///
/// Times are plain integers (nanoseconds from any fixed origin) rather than `Instant`s, so that
/// tests can write histories by hand and a recorded history replays exactly. Operation A
/// precedes operation B in real time only when A completed strictly before B was invoked; equal
/// times count as concurrent, the permissive side when two clock readings coincide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Which client issued it. Shown in reports; the check does not need a client's operations
    /// to be sequential (a client may pipeline).
    pub client: u64,
    pub invoked_ns: u64,
    /// When the client had its answer, or gave up waiting. The check ignores it for `Failed`
    /// (the operation never took effect) and `Unknown` (it may take effect at any later time).
    pub completed_ns: u64,
    pub op: Op,
}

/// An operation on the key-value store and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        outcome: Outcome<()>,
    },
    /// A linearizable read; `Ok(None)`: the key was absent.
    Get {
        key: Bytes,
        outcome: Outcome<Option<Bytes>>,
    },
    /// `Ok(true)`: the key existed and is removed; `Ok(false)`: the store answered NotFound.
    Delete { key: Bytes, outcome: Outcome<bool> },
    /// Sets `key` to `new` (`None`: removes it) only if it holds `expected` (`None`: absent).
    CompareAndSwap {
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        outcome: Outcome<CasResult>,
    },
}

/// What a client learned about its operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It took effect (exactly once, somewhere between invocation and completion) with this result.
    Ok(T),
    /// It definitely did not take effect (for example NotLeader before the proposal was sent).
    Failed,
    /// The client stopped waiting: it may take effect at any time after its invocation, or never,
    /// and its result is unconstrained.
    Unknown,
}

/// The result of a compare-and-swap that took effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasResult {
    Swapped,
    /// The key held `current` (`None`: absent), not the expected value; nothing changed.
    CompareFailed {
        current: Option<Bytes>,
    },
}

/// The outcome of an operation, without its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    Unknown,
}

impl<T> Outcome<T> {
    pub(super) fn status(&self) -> Status {
        match self {
            Outcome::Ok(_) => Status::Ok,
            Outcome::Failed => Status::Failed,
            Outcome::Unknown => Status::Unknown,
        }
    }
}

impl Op {
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. }
            | Op::Get { key, .. }
            | Op::Delete { key, .. }
            | Op::CompareAndSwap { key, .. } => key,
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Op::Put { outcome, .. } => outcome.status(),
            Op::Get { outcome, .. } => outcome.status(),
            Op::Delete { outcome, .. } => outcome.status(),
            Op::CompareAndSwap { outcome, .. } => outcome.status(),
        }
    }

    /// Whether the operation can change the store (if it takes effect at all).
    pub(super) fn writes(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// Why a history cannot be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "operation {index} (client {client}) completed at {completed_ns} ns, before it was \
         invoked at {invoked_ns} ns"
    )]
    CompletedBeforeInvoked {
        index: usize,
        client: u64,
        invoked_ns: u64,
        completed_ns: u64,
    },
}

pub(super) fn validate(history: &[Operation]) -> Result<(), HistoryError> {
    match history
        .iter()
        .enumerate()
        .find(|(_, o)| o.completed_ns < o.invoked_ns)
    {
        Some((index, o)) => Err(HistoryError::CompletedBeforeInvoked {
            index,
            client: o.client,
            invoked_ns: o.invoked_ns,
            completed_ns: o.completed_ns,
        }),
        None => Ok(()),
    }
}
