//! The deterministic Raft core: election with pre-vote and check-quorum, pipelined replication
//! with fast backtracking, commit from durable acknowledgements, joint-consensus membership with
//! learners, leadership transfer, ReadIndex and lease reads, and snapshots.
//!
//! The core is a plain struct driven by calls ([`Core::tick`], [`Core::step`],
//! [`Core::propose`], [`Core::read_index`], [`Core::propose_membership`],
//! [`Core::transfer_leadership`], [`Core::campaign`], and the reports [`Core::persisted`],
//! [`Core::applied`], [`Core::compact`], [`Core::report_snapshot`]). After any call the caller
//! takes an [`Output`] with [`Core::take_output`] and carries it out in this order:
//!
//! 1. send [`Output::messages`] (they never depend on the pending write);
//! 2. persist [`Output::write`] (after every earlier write), and only once it is durable send its
//!    [`Write::then_send`] messages and report [`Core::persisted`] with [`Write::last_entry`];
//! 3. apply [`Output::committed`] in order (they are durable locally and committed by a quorum);
//! 4. serve [`Output::reads`] once the local applied index reaches each read's index.
//!
//! Messages that must wait for durability (vote grants, append acknowledgements, vote requests of a
//! candidate whose self-vote is not yet durable) only ever appear inside a [`Write`], so a runtime
//! cannot send them early without reaching into the write it has not yet made durable.

mod config;
mod entry;
mod log;
mod membership;
mod message;
mod output;
mod progress;
mod quorum;
mod raft;
mod read;
mod rng;
mod stats;
mod unsynced;

pub use self::config::{Config, ConfigError};
pub use self::entry::{Entry, HardState, Payload, SnapshotMeta};
pub use self::log::ReleasedEntries;
pub use self::membership::{Membership, MembershipError};
pub use self::message::{AppendResult, Body, Message};
pub use self::output::{Output, ReadResult, SoftState, Write};
pub use self::progress::{Progress, ProgressState};
pub use self::raft::{Compaction, Core, CoreError, ReadMode, Restore, Role};
pub use self::stats::Stats;

/// A node's identity in the cluster. Zero is reserved for "no node".
pub type NodeId = u64;
/// A Raft term. Zero is the term before any election.
pub type Term = u64;
/// A log index. Zero is the position before the first entry.
pub type Index = u64;
/// A caller-chosen identifier for a read request, echoed back when the read may be served.
pub type ReadId = u64;
