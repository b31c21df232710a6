//! Whole-cluster fault tests: real `keel-bench node` processes on loopback, real QUIC with
//! mutual TLS and real fsync, faults injected from outside, and a linearizability verdict on
//! what clients saw (issue 9).
//!
//! - [`proxy`] and [`network`]: a UDP proxy per pair of peers, and partitions built from them.
//! - [`process`] and [`cluster`]: node processes (start, kill -9, SIGSTOP/SIGCONT, power loss,
//!   admin commands on stdin) and the cluster they form.
//! - [`workload`]: client threads recording a history of what they asked and saw.
//! - [`schedule`]: faults and when they happen, fixed or drawn from a seed.
//! - [`scenario`]: one run (cluster, load, faults, healing) and its verdict.

mod binary;
pub mod cluster;
pub mod network;
pub mod process;
pub mod proxy;
pub mod scenario;
pub mod schedule;
pub mod workload;

use std::path::Path;

use keel_engine::core::NodeId;

/// Why the harness could not do what a scenario asked (as opposed to a verdict on keel).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up: {0}")]
    Setup(String),
    #[error("node {id}: {what}: {reason}")]
    Node {
        id: NodeId,
        what: String,
        reason: String,
    },
    #[error("node {id} refused {command:?}: {error}")]
    Refused {
        id: NodeId,
        command: String,
        error: String,
    },
    #[error("node {id} said something unexpected: {line}")]
    Protocol { id: NodeId, line: String },
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    /// Nodes at the same applied index hold different states.
    #[error("nodes applied the same index to different states: {digests}")]
    Diverged { digests: String },
}

impl HarnessError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        HarnessError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
