//! A cluster of node processes on loopback, with a proxied network between them.
//!
//! Everything lives in a temporary directory: certificates, one config file, data directory and
//! log per node. Each cluster gets its own `127.a.b.0/24` (from the process id and a counter), so
//! clusters of parallel tests never share an address; node `n` listens on `127.a.b.(10+n):7000`
//! and the proxies on `127.a.b.100`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel_engine::core::NodeId;
use keel_engine::node::NodeConfig;
use keel_engine::wal::ledger::{self, PowerLoss};
use keel_transport_quic::certs::{load_ca_pem, write_dev_certs, CertPaths, Identity};
use keel_transport_quic::{KvClient, KvClientConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::network::Network;
use super::process::NodeProcess;
use super::HarnessError;

/// How a cluster runs.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The voters it starts with.
    pub voters: Vec<NodeId>,
    /// Nodes that exist (certificates, addresses, proxies) but start only when added.
    pub spares: Vec<NodeId>,
    pub election_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub lease_drift: Duration,
    /// The nodes' own timeout for admin commands and client requests.
    pub command_timeout: Duration,
    /// Acknowledge before fsync: only for the test that must fail.
    pub unsafe_no_fsync: bool,
    /// Each log sync first waits this long (a slow disk): a power loss then finds writes not
    /// yet synced, where with a fast disk and a light load it mostly finds none.
    pub slow_sync: Option<Duration>,
    /// Followers forward the key-value writes that reach them to the leader.
    pub forward_writes: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            voters: vec![1, 2, 3],
            spares: Vec::new(),
            election_timeout: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            lease_drift: Duration::from_millis(30),
            command_timeout: Duration::from_secs(2),
            unsafe_no_fsync: false,
            slow_sync: None,
            forward_writes: false,
        }
    }
}

/// What a node says about itself (`status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit: u64,
    pub applied: u64,
    /// The index of the snapshot its log starts after.
    pub snapshot: u64,
    /// Writes other nodes forwarded to it since it last started.
    pub forwards_served: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl NodeStatus {
    fn parse(v: &Value) -> Option<Self> {
        let ids = |field: &str| -> Option<Vec<NodeId>> {
            v.get(field)?
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect()
        };
        Some(Self {
            id: v.get("id")?.as_u64()?,
            role: v.get("role")?.as_str()?.to_string(),
            term: v.get("term")?.as_u64()?,
            leader: v.get("leader")?.as_u64(),
            commit: v.get("commit")?.as_u64()?,
            applied: v.get("applied")?.as_u64()?,
            snapshot: v.get("snapshot")?.as_u64()?,
            forwards_served: v.get("forwards_served")?.as_u64()?,
            voters: ids("voters")?,
            learners: ids("learners")?,
        })
    }
}

/// Every node agreed on the applied state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreement {
    pub applied: u64,
    pub digest: String,
    pub nodes: Vec<NodeId>,
    /// Where each node's log starts (its snapshot's index) once they agree.
    pub snapshots: BTreeMap<NodeId, u64>,
    /// The writes each node served for others since it last started, once they agree.
    pub forwards_served: BTreeMap<NodeId, u64>,
}

/// A running cluster. Dropping it kills every node and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, NodeProcess>,
    /// Nodes that should be running once faults are undone.
    members: BTreeSet<NodeId>,
    fail_sync_after: BTreeMap<NodeId, u64>,
    certs: PathBuf,
    // Dropped after the nodes (fields drop in order), so no process outlives its directory.
    net: Network,
    dir: tempfile::TempDir,
}

/// Gives each cluster of this process its own /24.
fn next_subnet() -> [u8; 2] {
    static CLUSTERS: AtomicU32 = AtomicU32::new(0);
    let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    [(1 + pid % 250) as u8, (n % 256) as u8]
}

impl Cluster {
    /// Writes certificates and configs, starts the proxies and the voters.
    pub fn start(opts: ClusterOptions, seed: u64) -> Result<Cluster, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("keel-faults-")
            .tempdir()
            .map_err(|e| HarnessError::io(&std::env::temp_dir(), e))?;
        let [a, b] = next_subnet();
        let all: Vec<NodeId> = opts.voters.iter().chain(&opts.spares).copied().collect();
        let addrs: BTreeMap<NodeId, SocketAddr> = all
            .iter()
            .map(|&id| {
                let host = u8::try_from(10 + id).expect("node ids are small");
                (id, SocketAddr::from(([127, a, b, host], 7000)))
            })
            .collect();
        let certs = dir.path().join("certs");
        write_dev_certs(&certs, &all).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let proxy_ip = IpAddr::V4(Ipv4Addr::new(127, a, b, 100));
        let net = Network::start(&addrs, proxy_ip, seed)
            .map_err(|e| HarnessError::Setup(format!("proxies on {proxy_ip}: {e}")))?;
        let nodes = all
            .iter()
            .map(|&id| {
                let config = dir.path().join(format!("node-{id}.toml"));
                let log = dir.path().join(format!("node-{id}.log"));
                (id, NodeProcess::new(id, config, log))
            })
            .collect();
        let mut cluster = Cluster {
            members: opts.voters.iter().copied().collect(),
            opts,
            addrs,
            nodes,
            fail_sync_after: BTreeMap::new(),
            certs,
            net,
            dir,
        };
        for id in all {
            cluster.write_config(id)?;
        }
        for id in cluster.members.clone() {
            cluster.node(id).start()?;
        }
        Ok(cluster)
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    pub fn net(&self) -> &Network {
        &self.net
    }

    pub fn node(&mut self, id: NodeId) -> &mut NodeProcess {
        self.nodes.get_mut(&id).expect("a node of this cluster")
    }

    /// Every node, spares included.
    pub fn all_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The nodes that should be running once faults are undone.
    pub fn members(&self) -> Vec<NodeId> {
        self.members.iter().copied().collect()
    }

    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.addrs[&id]
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// (Re)writes node `id`'s config file from the options and its failpoints.
    fn write_config(&self, id: NodeId) -> Result<(), HarnessError> {
        let mut node = NodeConfig::new(id, self.opts.voters.iter().copied());
        if !self.opts.voters.contains(&id) {
            node.voters.clear(); // a spare starts as a standby, waiting to be added
        }
        node.election_timeout = self.opts.election_timeout;
        node.heartbeat_interval = self.opts.heartbeat_interval;
        node.lease_drift = self.opts.lease_drift;
        node.command_timeout = self.opts.command_timeout;
        node.unsafe_no_fsync = self.opts.unsafe_no_fsync;
        node.sync_ledger = true;
        node.slow_sync = self.opts.slow_sync;
        node.fail_sync_after = self.fail_sync_after.get(&id).copied();
        // Snapshots every few hundred entries: saved, sent to a follower that lags behind the
        // compacted log, and installed, under the faults. A simulated power loss cuts only the
        // log: a snapshot's file is synced before the log records it.
        node.snapshot_threshold_entries = 300;
        let quote = |s: String| toml::Value::String(s).to_string();
        let mut text = String::new();
        text += &format!(
            "data_dir = {}\n",
            quote(self.data_dir(id).display().to_string())
        );
        text += &format!("listen = {}\n", quote(self.addrs[&id].to_string()));
        text += &format!("forward_writes = {}\n", self.opts.forward_writes);
        text += "[tls]\n";
        let (cert, key) = CertPaths::node_cert(&self.certs, id);
        let ca = CertPaths::in_dir(&self.certs).ca_cert;
        for (field, path) in [("ca", ca), ("cert", cert), ("key", key)] {
            text += &format!("{field} = {}\n", quote(path.display().to_string()));
        }
        text += "[peers]\n";
        for (&peer, &real) in self.addrs.iter().filter(|(&p, _)| p != id) {
            let addr = self.net.peer_addr(id, peer).unwrap_or(real);
            text += &format!(
                "\"{peer}\" = {{ addr = {}, advertise = {} }}\n",
                quote(addr.to_string()),
                quote(real.to_string())
            );
        }
        text += "[node]\n";
        text += &toml::to_string(&node).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let path = self.nodes[&id].config_path().to_path_buf();
        std::fs::write(&path, text).map_err(|e| HarnessError::io(&path, e))
    }

    /// Node `id` will fail every log sync after its first `n` from its next start (`None`: never).
    pub fn set_fail_sync_after(&mut self, id: NodeId, n: Option<u64>) -> Result<(), HarnessError> {
        match n {
            Some(n) => self.fail_sync_after.insert(id, n),
            None => self.fail_sync_after.remove(&id),
        };
        self.write_config(id)
    }

    pub fn status(&mut self, id: NodeId) -> Result<NodeStatus, HarnessError> {
        let timeout = self.admin_timeout();
        let v = self.node(id).admin("status", timeout)?;
        NodeStatus::parse(&v).ok_or(HarnessError::Protocol {
            id,
            line: v.to_string(),
        })
    }

    fn admin_timeout(&self) -> Duration {
        self.opts.command_timeout + Duration::from_secs(2)
    }

    /// An admin command on node `id`.
    pub fn admin(&mut self, id: NodeId, command: &str) -> Result<Value, HarnessError> {
        let timeout = self.admin_timeout();
        self.node(id).admin(command, timeout)
    }

    /// Statuses of the nodes that can answer (running, not paused).
    pub fn statuses(&mut self) -> Vec<NodeStatus> {
        let mut statuses = Vec::new();
        for id in self.all_ids() {
            let node = self.node(id);
            if node.is_running() && !node.is_paused() {
                statuses.extend(self.status(id).ok());
            }
        }
        statuses
    }

    /// A leader that a majority of its voters, itself included, name as leader in its term.
    pub fn leader(&mut self) -> Option<NodeId> {
        let statuses = self.statuses();
        statuses
            .iter()
            .filter(|s| s.role == "leader")
            .max_by_key(|s| s.term)
            .and_then(|l| {
                let named = statuses
                    .iter()
                    .filter(|s| s.term == l.term && s.leader == Some(l.id))
                    .filter(|s| l.voters.contains(&s.id))
                    .count();
                (named > l.voters.len() / 2).then_some(l.id)
            })
    }

    pub fn wait_for_leader(&mut self, timeout: Duration) -> Result<NodeId, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: "a leader".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client of the whole cluster, with the client certificate, that leaves a node silent
    /// for `attempt_timeout` for the others.
    pub fn client(
        &self,
        request_timeout: Duration,
        attempt_timeout: Duration,
    ) -> Result<KvClient, HarnessError> {
        let seeds = self.addrs.iter().map(|(&id, &a)| (id, a)).collect();
        let mut cfg = self.client_config(seeds, request_timeout)?;
        cfg.attempt_timeout = attempt_timeout;
        KvClient::connect(cfg).map_err(|e| HarnessError::Setup(e.to_string()))
    }

    /// A client of node `id` alone, that never follows it to the leader: it sees what that
    /// node serves, on whichever side of a partition it is.
    pub fn pinned_client(
        &self,
        id: NodeId,
        request_timeout: Duration,
    ) -> Result<KvClient, HarnessError> {
        let mut cfg = self.client_config(vec![(id, self.addrs[&id])], request_timeout)?;
        cfg.follow_leader = false;
        KvClient::connect(cfg).map_err(|e| HarnessError::Setup(e.to_string()))
    }

    fn client_config(
        &self,
        seeds: Vec<(NodeId, SocketAddr)>,
        request_timeout: Duration,
    ) -> Result<KvClientConfig, HarnessError> {
        let (cert, key) = CertPaths::client_cert(&self.certs);
        let identity =
            Identity::load_pem(&cert, &key).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let ca = load_ca_pem(&CertPaths::in_dir(&self.certs).ca_cert)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let mut cfg = KvClientConfig::new(seeds, identity, ca);
        cfg.request_timeout = request_timeout;
        // Bind on the cluster's own subnet, beside the nodes.
        cfg.bind = SocketAddr::new(self.addrs.values().next().expect("nodes").ip(), 0);
        Ok(cfg)
    }

    pub fn kill(&mut self, id: NodeId) {
        self.node(id).kill();
    }

    pub fn restart(&mut self, id: NodeId) -> Result<(), HarnessError> {
        self.node(id).kill();
        self.node(id).start()
    }

    /// Kills node `id` and has its disk lose log writes it had not synced, as a power loss
    /// would: the first page written since the log's last sync is lost (where a write group
    /// starts, the hardest case for recovery), and each later one reached the disk or not, as
    /// `seed` decides (a disk writes pages back in any order). It stays down until restarted.
    /// A node that never syncs (`unsafe_no_fsync`) loses its whole log, as that mode risks.
    pub fn power_loss(&mut self, id: NodeId, seed: u64) -> Result<PowerLoss, HarnessError> {
        self.node(id).kill();
        let wal = self.data_dir(id).join("wal");
        let setup = |e: keel_engine::wal::WalError| HarnessError::Setup(e.to_string());
        if self.opts.unsafe_no_fsync {
            return ledger::cut_to_durable(&wal).map_err(setup);
        }
        let durable = ledger::read_durable_point(&wal)
            .map_err(setup)?
            .ok_or_else(|| {
                HarnessError::Setup(format!("{} keeps no sync ledger", wal.display()))
            })?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut first = true;
        let reached = || !std::mem::replace(&mut first, false) && rng.random_bool(0.5);
        ledger::lose_pages_after(&wal, durable, reached).map_err(setup)
    }

    /// A spare that is not a member yet.
    pub fn idle_spare(&self) -> Option<NodeId> {
        self.opts
            .spares
            .iter()
            .copied()
            .find(|id| !self.members.contains(id))
    }

    /// Starts spare `id` and adds it to the cluster as a learner.
    pub fn add_spare(&mut self, id: NodeId) -> Result<(), HarnessError> {
        if !self.node(id).is_running() {
            self.node(id).start()?;
        }
        self.members.insert(id);
        self.membership_command(&format!("add-learner {id}"))
    }

    /// Runs a membership command or transfer on the leader, following it as it moves.
    pub fn membership_command(&mut self, command: &str) -> Result<(), HarnessError> {
        let leader = self.wait_for_leader(Duration::from_secs(10))?;
        self.admin(leader, command).map(drop)
    }

    /// Undoes every fault: heals the network, resumes paused nodes, restarts the members that
    /// are down, and makes every member a voter again.
    pub fn heal(&mut self, timeout: Duration) -> Result<NodeId, HarnessError> {
        self.net.heal();
        for id in self.members() {
            let node = self.node(id);
            if node.is_paused() {
                node.resume()?;
            }
            if !node.is_running() {
                node.start()?;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let leader =
                self.wait_for_leader(deadline.saturating_duration_since(Instant::now()))?;
            let status = self.status(leader)?;
            let missing: Vec<NodeId> = self
                .members
                .iter()
                .copied()
                .filter(|id| !status.voters.contains(id))
                .collect();
            let Some(&id) = missing.first() else {
                return Ok(leader);
            };
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: format!("healing: nodes {missing:?} never became voters"),
                });
            }
            // Membership changes fail while another is pending, or when the learner lags:
            // retry until the deadline.
            let command = if status.learners.contains(&id) {
                format!("promote {id}")
            } else {
                format!("add-learner {id}")
            };
            match self.admin(leader, &command) {
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
                // Taken; the next status shows it in force.
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Runs a barrier on the leader, waits until every member has applied it, then compares
    /// their stores' digests (see [`settled`]).
    pub fn check_agreement(&mut self, timeout: Duration) -> Result<Agreement, HarnessError> {
        let deadline = Instant::now() + timeout;
        let barrier = loop {
            let leader =
                self.wait_for_leader(deadline.saturating_duration_since(Instant::now()))?;
            match self.admin(leader, "barrier") {
                Ok(v) => break v.get("index").and_then(Value::as_u64).unwrap_or(0),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let members = self.members();
        // The node's applied index counts every entry, the barrier too; the store's (in the
        // digest) does not. Wait for the first, then compare the states.
        let (mut snapshots, mut forwards_served) = (BTreeMap::new(), BTreeMap::new());
        loop {
            let mut behind = Vec::new();
            for &id in &members {
                let status = self.status(id)?;
                snapshots.insert(id, status.snapshot);
                forwards_served.insert(id, status.forwards_served);
                if status.applied < barrier {
                    behind.push((id, status.applied));
                }
            }
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: format!("every node to apply the barrier at {barrier}: {behind:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let mut digests = BTreeMap::new();
            for &id in &members {
                let v = self.admin(id, "digest")?;
                let applied = v.get("applied").and_then(Value::as_u64).unwrap_or(0);
                // A node that gave none agrees with no other.
                let digest = v
                    .get("digest")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("(none from node {id})"), str::to_string);
                digests.insert(id, (applied, digest));
            }
            match settled(&digests) {
                Some(Ok((applied, digest))) => {
                    return Ok(Agreement {
                        applied,
                        digest,
                        nodes: members,
                        snapshots,
                        forwards_served,
                    })
                }
                Some(Err(())) => {
                    return Err(HarnessError::Diverged {
                        digests: format!("{digests:?}"),
                    })
                }
                None if Instant::now() > deadline => {
                    return Err(HarnessError::Timeout {
                        what: format!("every node's store in one state: {digests:?}"),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The end of every node's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            out += &format!(
                "--- node {id} stderr (last {lines} lines):\n{}\n",
                node.log_tail(lines)
            );
        }
        out
    }

    /// Keeps the cluster's directory (configs, data, logs) after the test, for a post-mortem.
    pub fn keep_dir(self) -> PathBuf {
        let Cluster { nodes, dir, .. } = self;
        drop(nodes);
        dir.keep()
    }
}

/// Whether the stores' `(applied, digest)` agree (`Ok`, with the highest index), diverge
/// (`Err`: the same index, different states), or may still be applying (`None`). The same
/// state at different indices agrees: a store counts only its commands, except one restored
/// from a snapshot, which counts up to the snapshot's index, and that may be a barrier's or an
/// election's empty entry.
fn settled(digests: &BTreeMap<NodeId, (u64, String)>) -> Option<Result<(u64, String), ()>> {
    let states: BTreeSet<&String> = digests.values().map(|(_, d)| d).collect();
    let indices: BTreeSet<u64> = digests.values().map(|(a, _)| *a).collect();
    match (states.len(), indices.len()) {
        (1, _) => {
            let digest = states.first()?.to_string();
            Some(Ok((indices.last().copied().unwrap_or(0), digest)))
        }
        (_, 1) => Some(Err(())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(of: &[(u64, &str)]) -> BTreeMap<NodeId, (u64, String)> {
        (1..)
            .zip(of.iter().map(|&(a, d)| (a, d.to_string())))
            .collect()
    }

    #[test]
    fn stores_agree_on_one_state_whatever_index_each_counts_it_at() {
        assert_eq!(
            settled(&stores(&[(7, "aa"), (7, "aa"), (7, "aa")])),
            Some(Ok((7, "aa".into())))
        );
        // The third restored a snapshot taken at a barrier after command 7.
        assert_eq!(
            settled(&stores(&[(7, "aa"), (7, "aa"), (9, "aa")])),
            Some(Ok((9, "aa".into())))
        );
        assert_eq!(settled(&stores(&[(7, "aa"), (7, "bb")])), Some(Err(())));
        assert_eq!(settled(&stores(&[(7, "aa"), (8, "bb")])), None);
    }
}
