//! Counters, gauges and histograms a node keeps as plain atomics: cheap on the hot path (updated
//! once per batch, not per entry), read by the metrics crate at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::core::NodeId;

pub use super::histogram::{Histogram, HistogramSnapshot, COUNT_BOUNDS, DURATION_BOUNDS_NANOS};

/// A node's live numbers. Gauges and counters are atomics; read them with [`NodeMetrics::get`].
/// Durations are in nanoseconds.
#[derive(Debug)]
pub struct NodeMetrics {
    pub term: AtomicU64,
    /// 0 follower, 1 pre-candidate, 2 candidate, 3 leader.
    pub role: AtomicU64,
    /// 0 when no leader is known.
    pub leader: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub last_log_index: AtomicU64,
    pub leader_changes_seen: AtomicU64,
    pub elections_started: AtomicU64,
    pub proposals_pending: AtomicU64,
    pub proposals_committed: AtomicU64,
    pub proposals_failed_not_leader: AtomicU64,
    pub proposals_failed_dropped: AtomicU64,
    /// Proposals whose entries a leader's snapshot replaced before this node saw them commit.
    pub proposals_failed_unknown: AtomicU64,
    pub proposals_failed_too_large: AtomicU64,
    pub proposals_failed_stopped: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Appends a follower dropped while its state machine lagged by `max_apply_lag_entries`.
    pub appends_dropped_apply_lag: AtomicU64,
    /// The log's fdatasyncs (without fsync, those it would make): one per group commit, more
    /// when a segment rolled over meanwhile.
    pub wal_syncs: AtomicU64,
    pub wal_synced_entries: AtomicU64,
    /// Entries per proposal batch handed to the core.
    pub proposal_batch_entries: Histogram,
    /// From a proposal reaching the driver to its commit.
    pub commit_duration: Histogram,
    /// Time the state machine spent applying each batch.
    pub apply_duration: Histogram,
    /// Time each turn of the driver's loop took, from handling what woke it to its output sent
    /// on (the ticks it catches up on first are not counted): every write of the node waits
    /// while one runs, so a long one is a stall of the node.
    pub driver_turn_duration: Histogram,
    /// I/O time of each group commit (writes and fdatasync).
    pub wal_fsync_duration: Histogram,
    /// Entries made durable by each group commit.
    pub wal_fsync_batch_entries: Histogram,
    /// Leader only: per follower.
    pub peers: Mutex<BTreeMap<NodeId, PeerMetrics>>,
}

/// What a leader knows of one follower.
#[derive(Debug)]
pub struct PeerMetrics {
    pub match_index: u64,
    /// The leader's commit index minus the follower's match index.
    pub commit_lag_entries: u64,
    /// Heartbeat round trips, in nanoseconds.
    pub round_trip: Histogram,
}

impl PeerMetrics {
    pub(crate) fn new() -> Self {
        Self {
            match_index: 0,
            commit_lag_entries: 0,
            round_trip: Histogram::new(DURATION_BOUNDS_NANOS),
        }
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            term: zero(),
            role: zero(),
            leader: zero(),
            commit_index: zero(),
            applied_index: zero(),
            last_log_index: zero(),
            leader_changes_seen: zero(),
            elections_started: zero(),
            proposals_pending: zero(),
            proposals_committed: zero(),
            proposals_failed_not_leader: zero(),
            proposals_failed_dropped: zero(),
            proposals_failed_unknown: zero(),
            proposals_failed_too_large: zero(),
            proposals_failed_stopped: zero(),
            snapshots_taken: zero(),
            snapshots_installed: zero(),
            snapshots_sent: zero(),
            appends_dropped_apply_lag: zero(),
            wal_syncs: zero(),
            wal_synced_entries: zero(),
            proposal_batch_entries: Histogram::new(COUNT_BOUNDS),
            commit_duration: Histogram::new(DURATION_BOUNDS_NANOS),
            apply_duration: Histogram::new(DURATION_BOUNDS_NANOS),
            driver_turn_duration: Histogram::new(DURATION_BOUNDS_NANOS),
            wal_fsync_duration: Histogram::new(DURATION_BOUNDS_NANOS),
            wal_fsync_batch_entries: Histogram::new(COUNT_BOUNDS),
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

impl NodeMetrics {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    pub(crate) fn set(v: &AtomicU64, x: u64) {
        v.store(x, Ordering::Relaxed);
    }

    pub(crate) fn add(v: &AtomicU64, x: u64) {
        v.fetch_add(x, Ordering::Relaxed);
    }

    /// Counts a failed proposal under its reason.
    pub(crate) fn failed(&self, error: &super::Error, count: u64) {
        use super::Error;
        let counter = match error {
            Error::NotLeader { .. } | Error::TransferInProgress => {
                &self.proposals_failed_not_leader
            }
            Error::Dropped => &self.proposals_failed_dropped,
            Error::OutcomeUnknown => &self.proposals_failed_unknown,
            Error::TooLarge { .. } => &self.proposals_failed_too_large,
            _ => &self.proposals_failed_stopped,
        };
        Self::add(counter, count);
    }
}
