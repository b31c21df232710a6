//! Counters of what the core refused or noticed. Plain integers: the core is single-threaded and
//! the runtime copies them out when it publishes metrics.

/// Counts of inputs the core rejected or events worth watching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages addressed to another node, or claiming to come from this one.
    pub misaddressed: u64,
    /// Vote responses or replication acknowledgements from nodes this node does not count.
    pub from_unknown_node: u64,
    /// Messages carrying a term older than ours.
    pub stale_term: u64,
    /// Messages that contradict themselves or the protocol (non-contiguous entries, an ack past
    /// the leader's log, a second leader in one term, a conflict below the commit index...).
    pub invalid: u64,
    /// Vote requests ignored because this node still heard from a leader within the election
    /// timeout (check-quorum lease).
    pub votes_ignored_in_lease: u64,
    /// Appends this node rejected because its log did not contain the previous entry.
    pub appends_rejected: u64,
    pub elections_started: u64,
    pub pre_elections_started: u64,
    /// Times a leader stepped down because it had not heard from a quorum.
    pub check_quorum_step_downs: u64,
    /// Reads served by the lease without a heartbeat round.
    pub lease_reads: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
}
