//! Node configuration, in wall-clock units; the core works in ticks of `tick_interval`.

use std::time::Duration;

use crate::core::{self, NodeId};

use super::Error;

/// How a node runs. [`NodeConfig::new`] gives defaults like etcd's and openraft's.
///
/// It deserializes from configuration files (any serde format), with durations written the human
/// way (`"50ms"`, `"2s"`) and every field but `id` optional:
///
/// ```
/// let cfg: keel_engine::node::NodeConfig = toml::from_str(r#"
///     id = 2
///     voters = [1, 2, 3]
///     heartbeat_interval = "50ms"
///     election_timeout = "300ms"
/// "#).expect("a valid config");
/// assert_eq!(cfg.election_timeout, std::time::Duration::from_millis(300));
/// ```
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Voters of a brand-new cluster. Leave `voters` and `learners` empty to start a standby that
    /// joins an existing cluster when a leader adds it.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The core's clock resolution. Timeouts below are rounded to whole ticks.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Minimum election timeout; each election draws one in `[this, 2 * this)`.
    #[serde(with = "humantime_serde")]
    pub election_timeout: Duration,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Serve `lease_read` without a round trip while the leader lease holds.
    pub lease_reads: bool,
    /// The lease is shorter than the election timeout by this much (rounded up to whole ticks),
    /// for clock-rate drift between nodes, and by one tick more for their ticks' phase.
    #[serde(with = "humantime_serde")]
    pub lease_drift: Duration,
    /// A proposal larger than this is refused with `TooLarge`.
    pub max_proposal_bytes: usize,
    /// The driver takes at most this many bytes / entries of proposals in one batch.
    pub max_batch_bytes: usize,
    pub max_batch_entries: usize,
    /// Proposals waiting for the driver; beyond this, `propose` blocks (back-pressure).
    pub proposal_queue_depth: usize,
    /// A leader takes no more proposals while this many entries of its log are uncommitted
    /// (followers answering heartbeats but slow to store entries, or a quorum lost before
    /// check-quorum notices): its log and the proposals waiting on it stay bounded in memory,
    /// and callers feel the back-pressure.
    pub max_uncommitted_entries: u64,
    /// Committed entries the state machine may fall behind by. Beyond it a leader takes no more
    /// proposals, and a follower takes no more entries: it drops the appends that bring them
    /// (its leader sends them again once that follower's replication has stalled for an
    /// election timeout), so a slow state machine holds the log kept in memory where it is
    /// instead of growing it.
    pub max_apply_lag_entries: u64,
    /// Append messages in flight per follower.
    pub max_inflight_appends: usize,
    /// Bytes of entries in flight per follower: what a lagging follower can be sent before it
    /// answers.
    pub max_inflight_bytes: usize,
    /// Take a snapshot and compact the log after this many applied entries, once the commands
    /// applied since the last snapshot add up to twice its size (so snapshots write at most half
    /// as many bytes as the log), and after eight times this many whatever the sizes. Each node
    /// scales these by 85 to 100% by its id, so that the nodes of a cluster do not all snapshot
    /// at once.
    pub snapshot_threshold_entries: u64,
    /// Default timeout of the blocking helpers (`wait_for_leader`, forwarded proposals...).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Ticks come only from [`super::Node::tick`]: for deterministic tests.
    pub manual_ticks: bool,
    /// Skip fsync. Acknowledged writes can be lost on power failure: tests and benchmarks only.
    pub unsafe_no_fsync: bool,
    /// Warn (event and log) when a follower's heartbeat round trip exceeds this fraction of the
    /// election timeout (liferaft's "threshold").
    pub rtt_warning_fraction: f64,
    /// Failpoint for whole-cluster fault tests: the first `n` fsyncs of the log succeed and every
    /// later one fails, which must stop the node.
    #[doc(hidden)]
    pub fail_sync_after: Option<u64>,
    /// Failpoint for power-loss tests: the log keeps a ledger of what each sync made durable
    /// (`keel_engine::wal::ledger`), so a test can cut the log back to it after a kill.
    #[doc(hidden)]
    pub sync_ledger: bool,
    /// Failpoint for power-loss tests: every log sync first waits this long, as on a slow disk,
    /// so that a test killing the node finds writes not yet synced.
    #[doc(hidden)]
    #[serde(with = "humantime_serde")]
    pub slow_sync: Option<Duration>,
}

impl Default for NodeConfig {
    /// The defaults of [`NodeConfig::new`], with no id (a config file must give one).
    fn default() -> Self {
        Self::new(0, [])
    }
}

impl NodeConfig {
    pub fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            id,
            voters: voters.into_iter().collect(),
            learners: Vec::new(),
            tick_interval: Duration::from_millis(10),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(150),
            pre_vote: true,
            check_quorum: true,
            lease_reads: true,
            lease_drift: Duration::from_millis(20),
            max_proposal_bytes: 1 << 20,
            max_batch_bytes: 4 << 20,
            max_batch_entries: 8192,
            proposal_queue_depth: 65_536,
            max_uncommitted_entries: 65_536,
            max_apply_lag_entries: 65_536,
            max_inflight_appends: 64,
            max_inflight_bytes: 16 << 20,
            snapshot_threshold_entries: 100_000,
            command_timeout: Duration::from_secs(5),
            manual_ticks: false,
            unsafe_no_fsync: false,
            rtt_warning_fraction: 0.5,
            fail_sync_after: None,
            sync_ledger: false,
            slow_sync: None,
        }
    }

    fn ticks(&self, what: &'static str, d: Duration) -> Result<u32, Error> {
        let ticks = d.as_nanos() / self.tick_interval.as_nanos().max(1);
        u32::try_from(ticks).map_err(|_| Error::Config(format!("{what} is too long")))
    }

    /// The core's configuration, in ticks.
    pub(crate) fn core_config(&self) -> Result<core::Config, Error> {
        if self.tick_interval.is_zero() {
            return Err(Error::Config("tick_interval must be positive".into()));
        }
        let mut c = core::Config::new(self.id);
        c.heartbeat_ticks = self
            .ticks("heartbeat_interval", self.heartbeat_interval)?
            .max(1);
        c.election_ticks = self.ticks("election_timeout", self.election_timeout)?;
        c.pre_vote = self.pre_vote;
        c.check_quorum = self.check_quorum;
        c.lease_reads = self.lease_reads;
        // Rounded up, and one tick more: a follower's first tick may come right after the
        // heartbeat that renewed the lease, so it can count a tick less than the leader did.
        // That tick only makes up for the phase; without it, a drift under a tick left clocks
        // running at different rates no margin at all.
        let drift = self
            .lease_drift
            .as_nanos()
            .div_ceil(self.tick_interval.as_nanos())
            + 1;
        c.lease_drift_ticks =
            u32::try_from(drift).map_err(|_| Error::Config("lease_drift is too long".into()))?;
        c.max_inflight_appends = self.max_inflight_appends;
        c.max_inflight_bytes = self.max_inflight_bytes;
        c.max_append_bytes = self.max_batch_bytes;
        c.validate().map_err(|e| Error::Config(e.to_string()))?;
        if self.max_batch_entries == 0
            || self.proposal_queue_depth == 0
            || self.max_uncommitted_entries == 0
            || self.max_apply_lag_entries == 0
        {
            return Err(Error::Config(
                "batch and queue limits must be at least 1".into(),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_needs_only_an_id() {
        let cfg: NodeConfig = toml::from_str("id = 4").expect("parses");
        assert_eq!(cfg.id, 4);
        assert_eq!(
            cfg.heartbeat_interval,
            NodeConfig::new(4, []).heartbeat_interval
        );
        assert!(cfg.voters.is_empty(), "a standby unless voters are given");
    }

    #[test]
    fn a_bad_field_is_named() {
        let bad_duration = toml::from_str::<NodeConfig>("id = 1\nelection_timeout = \"soon\"")
            .expect_err("not a duration");
        assert!(
            bad_duration.to_string().contains("election_timeout"),
            "{bad_duration}"
        );
        let unknown =
            toml::from_str::<NodeConfig>("id = 1\nelection_timout = \"1s\"").expect_err("a typo");
        assert!(unknown.to_string().contains("election_timout"), "{unknown}");
    }

    #[test]
    fn durations_become_ticks() {
        let mut cfg = NodeConfig::new(1, [1]);
        cfg.tick_interval = Duration::from_millis(10);
        cfg.heartbeat_interval = Duration::from_millis(50);
        cfg.election_timeout = Duration::from_millis(150);
        cfg.lease_drift = Duration::from_millis(20);
        let core = cfg.core_config().expect("valid");
        assert_eq!(
            (
                core.heartbeat_ticks,
                core.election_ticks,
                core.lease_drift_ticks
            ),
            (5, 15, 3)
        );
        // The lease drift rounds up, and a tick is added for the phase.
        for (drift_ms, ticks) in [(0, 1), (5, 2), (10, 2), (15, 3), (20, 3), (21, 4)] {
            cfg.lease_drift = Duration::from_millis(drift_ms);
            let core = cfg.core_config().expect("valid");
            assert_eq!(core.lease_drift_ticks, ticks, "{drift_ms} ms");
        }
        cfg.election_timeout = Duration::from_millis(40);
        assert!(
            cfg.core_config().is_err(),
            "the election timeout must exceed the heartbeat"
        );
    }
}
