//! Counters and gauges a node keeps as plain atomics: cheap on the hot path (updated once per
//! batch, not per entry), read by the metrics crate at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// A node's live numbers. Every field is monotonic or a gauge; read with [`NodeMetrics::get`].
#[derive(Debug, Default)]
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
    pub proposals_failed: AtomicU64,
    pub proposal_batches: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_synced_entries: AtomicU64,
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
}
