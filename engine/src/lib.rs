//! keel-engine: a batched, multi-threaded Raft replication engine that services link as a library.
//!
//! This crate owns the replication protocol and, as later layers land, the durable log and the node
//! runtime. Its heart is [`core`]: a deterministic Raft state machine that does no I/O, reads no
//! clock and starts no thread. Everything that touches the outside world drives the core through
//! its calls and carries out the [`core::Output`] it returns; the simulator in `keel-tests` drives
//! the very same core through a hostile network and crashing disks.
//!
//! The core must never: perform I/O, read a clock, spawn threads, or panic on input that came from
//! the network. Invariants it relies on are asserted; messages it cannot accept are counted in
//! [`core::Stats`] and dropped or answered as Raft says.
//!
//! [`wal`] is the durable log the runtime persists the core's writes to: segment files of
//! checksummed records, group commit on a log-writer thread, and recovery that cuts a torn tail
//! but refuses (and leaves in place) any other damage. It must never report durable what has not
//! been fsynced, and never panic on bytes read from disk.

mod background;
mod chunked;
pub mod core;
pub mod kv;
pub mod node;
pub mod wal;

/// The README's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
