//! The user's state machine, as the node drives it.

use std::io;

use bytes::Bytes;

use crate::core::{Index, Term};

/// One committed command, handed to [`StateMachine::apply`] in log order.
#[derive(Clone, Copy, Debug)]
pub struct Command<'a> {
    pub index: Index,
    pub term: Term,
    /// The command's bytes. They may be a slice of a larger buffer (a follower receives many
    /// entries in one frame): a state machine that keeps bytes past `apply` should copy them,
    /// or a single kept value holds the whole buffer in memory.
    pub data: &'a Bytes,
}

/// A failure that leaves the state machine unable to go on: the node stops and says why. A
/// command that is merely refused (a missing key, a failed compare) is a response, not this.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateMachineError(pub String);

/// What the node replicates into. Commands arrive in log order, exactly once per index: after a
/// restart the node skips every index at or below [`StateMachine::applied_index`].
pub trait StateMachine: Send + Sync + 'static {
    /// Applies commands in order and returns one response per command. Where the state is
    /// durable, store the last index with it atomically.
    fn apply(&mut self, commands: &[Command<'_>]) -> Result<Vec<Bytes>, StateMachineError>;

    /// The index of the last command whose effects the state holds (0 when empty).
    fn applied_index(&self) -> Index;

    /// A consistent view of the state at [`StateMachine::applied_index`], serialized later on
    /// another thread: taking it must be cheap, so snapshots stay off the apply path.
    fn snapshot(&self) -> Box<dyn SnapshotSource>;

    /// Replaces the whole state with a snapshot taken at `index`.
    fn restore(&mut self, index: Index, data: &mut dyn io::Read) -> Result<(), StateMachineError>;
}

/// A frozen view of the state that writes itself out as a stream of bytes.
pub trait SnapshotSource: Send {
    fn write_to(&mut self, out: &mut dyn io::Write) -> io::Result<()>;
}
