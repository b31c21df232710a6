//! What the core asks its caller to do after each call.

use super::Role;
use super::{Entry, HardState, Index, Message, NodeId, ReadId, SnapshotMeta, Term};

/// Everything the caller must carry out, in the order documented on [`crate::core`].
#[derive(Debug, Default)]
pub struct Output {
    /// Messages that may go out at once: they depend on nothing that is not yet durable.
    pub messages: Vec<Message>,
    /// State to make durable, followed by the messages that may only go out after it is.
    pub write: Option<Write>,
    /// Committed, locally durable entries to apply, in order, continuing the previous output's.
    pub committed: Vec<Entry>,
    /// Reads whose index is known: serve each once the applied index reaches it.
    pub reads: Vec<ReadResult>,
    /// Role, leader or term changed since the last output.
    pub soft_state: Option<SoftState>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.write.is_none()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.soft_state.is_none()
    }
}

/// One write for the log writer. Writes must be made durable in the order they were produced; an
/// empty write (only `then_send`) is a barrier that completes when every earlier write has.
///
/// Within one write, the log changes come first (snapshot, then truncation, then entries) and the
/// hard state last: if a crash tears the write, a surviving hard state never claims a commit index
/// whose entries did not survive.
#[derive(Debug, Default)]
pub struct Write {
    /// Replace the whole log and state machine with this snapshot (its data travelled with the
    /// snapshot message).
    pub snapshot: Option<SnapshotMeta>,
    /// Remove every entry at or after this index before appending `entries`.
    pub truncate_from: Option<Index>,
    /// Entries to append; contiguous, continuing the log after truncation.
    pub entries: Vec<Entry>,
    /// Persist after the log changes above.
    pub hard_state: Option<HardState>,
    /// Send these only once everything above, and every earlier write, is durable.
    pub then_send: Vec<Message>,
}

impl Write {
    /// The (index, term) to report with [`super::Core::persisted`] once this write is durable.
    pub fn last_entry(&self) -> Option<(Index, Term)> {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => Some((e.index, e.term)),
            (None, Some(s)) => Some((s.index, s.term)),
            (None, None) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.then_send.is_empty()
    }
}

/// A read request whose fate is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub id: ReadId,
    /// The index the state machine must reach before the read is served, or `Err` with the
    /// leader hint when leadership could not be confirmed.
    pub index: Result<Index, Option<NodeId>>,
}

/// The volatile state observers care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
}
