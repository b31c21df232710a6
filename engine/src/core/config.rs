//! Tunables of the core, in ticks: the runtime decides how long a tick is.

use super::NodeId;

/// Core configuration. Timeouts are in ticks of the caller's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub id: NodeId,
    /// A leader sends heartbeats this often.
    pub heartbeat_ticks: u32,
    /// The minimum election timeout; each election draws a timeout in `[this, 2 * this)`.
    pub election_ticks: u32,
    /// Ask for pre-votes before disturbing the cluster with a new term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within `election_ticks` steps down, and voters
    /// ignore vote requests while they still hear from a leader.
    pub check_quorum: bool,
    /// Serve reads on the leader lease (needs `check_quorum`).
    pub lease_reads: bool,
    /// The lease lasts `election_ticks - lease_drift_ticks` after the acknowledged send time. At
    /// least 1 with `lease_reads`: even clocks that run at one rate are out of phase, and a
    /// follower whose first tick comes right after the heartbeat that renewed the lease counts
    /// a tick less than the leader did. Only the ticks beyond that one cover clock-rate
    /// differences between nodes (the node's `lease_drift` adds the phase's tick to its own).
    pub lease_drift_ticks: u32,
    /// Append messages in flight per follower in the replicate state (the pipeline window).
    pub max_inflight_appends: usize,
    /// Bytes of entries in flight per follower in the replicate state: a follower that falls
    /// behind is sent no more than it can answer for, however large the appends.
    pub max_inflight_bytes: usize,
    /// Soft limit on the bytes of entries in one append message (at least one entry is sent).
    pub max_append_bytes: usize,
    /// Limit on the entries handed out for apply in one output.
    pub max_apply_entries: usize,
}

/// A configuration the core cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node id 0 is reserved")]
    ReservedId,
    #[error("heartbeat_ticks must be at least 1 and below election_ticks")]
    HeartbeatTicks,
    #[error("lease_reads needs check_quorum, which makes voters honour the lease")]
    LeaseWithoutCheckQuorum,
    #[error("with lease_reads, lease_drift_ticks must be at least 1 and below election_ticks")]
    LeaseDrift,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl Config {
    /// Defaults in the spirit of etcd: heartbeat every tick, elections after 10-20 ticks.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            heartbeat_ticks: 1,
            election_ticks: 10,
            pre_vote: true,
            check_quorum: true,
            lease_reads: true,
            lease_drift_ticks: 2,
            max_inflight_appends: 64,
            max_inflight_bytes: 16 << 20,
            max_append_bytes: 1 << 20,
            max_apply_entries: 4096,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ReservedId);
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::HeartbeatTicks);
        }
        if self.lease_reads && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        // Without lease reads the drift is never used: a config that turns them off need not
        // fit one in its election timeout.
        if self.lease_reads
            && (self.lease_drift_ticks == 0 || self.lease_drift_ticks >= self.election_ticks)
        {
            return Err(ConfigError::LeaseDrift);
        }
        if self.max_inflight_appends == 0 {
            return Err(ConfigError::Zero("max_inflight_appends"));
        }
        if self.max_inflight_bytes == 0 {
            return Err(ConfigError::Zero("max_inflight_bytes"));
        }
        if self.max_append_bytes == 0 {
            return Err(ConfigError::Zero("max_append_bytes"));
        }
        if self.max_apply_entries == 0 {
            return Err(ConfigError::Zero("max_apply_entries"));
        }
        Ok(())
    }
}
