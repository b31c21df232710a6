//! A Prometheus collector that reads nodes' atomics at scrape time.

use std::sync::Arc;

use keel_engine::core::NodeId;
use keel_engine::node::{HistogramSnapshot, Node, NodeMetrics, StateMachine, Transport};
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// One node whose metrics are exposed.
#[derive(Clone)]
pub struct NodeSource {
    pub id: NodeId,
    pub metrics: Arc<NodeMetrics>,
    pub transport: Option<Arc<dyn Transport>>,
}

impl std::fmt::Debug for NodeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSource")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl NodeSource {
    pub fn of<S: StateMachine>(node: &Node<S>) -> Self {
        Self {
            id: node.id(),
            metrics: node.metrics_handle(),
            transport: Some(node.transport()),
        }
    }
}

/// Exposes keel's metrics for every node added to it. Register it once in a registry.
#[derive(Debug, Default)]
pub struct NodeCollector {
    nodes: Mutex<Vec<NodeSource>>,
    descs: Vec<Desc>,
}

/// How a family is exposed.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every family the collector exposes: name, help, kind.
const FAMILIES: &[(&str, &str, Kind)] = &[
    (
        "keel_raft_is_leader",
        "1 if this node is the leader.",
        Kind::Gauge,
    ),
    (
        "keel_raft_has_leader",
        "1 if this node knows a leader.",
        Kind::Gauge,
    ),
    (
        "keel_raft_role",
        "0 follower, 1 pre-candidate, 2 candidate, 3 leader.",
        Kind::Gauge,
    ),
    ("keel_raft_term", "The current term.", Kind::Gauge),
    ("keel_raft_commit_index", "The commit index.", Kind::Gauge),
    (
        "keel_raft_applied_index",
        "The index applied to the state machine.",
        Kind::Gauge,
    ),
    (
        "keel_raft_last_log_index",
        "The last index in the log.",
        Kind::Gauge,
    ),
    (
        "keel_raft_commit_lag_entries",
        "Leader only: commit index minus the peer's match index.",
        Kind::Gauge,
    ),
    (
        "keel_raft_apply_lag_entries",
        "Commit index minus applied index.",
        Kind::Gauge,
    ),
    (
        "keel_proposals_pending",
        "Proposals appended but not committed yet.",
        Kind::Gauge,
    ),
    (
        "keel_peers_connected",
        "Peers with a live connection.",
        Kind::Gauge,
    ),
    (
        "keel_leader_changes_seen_total",
        "Times this node saw a new leader.",
        Kind::Counter,
    ),
    (
        "keel_proposals_committed_total",
        "Proposals committed.",
        Kind::Counter,
    ),
    (
        "keel_proposals_failed_total",
        "Proposals that failed, by reason.",
        Kind::Counter,
    ),
    (
        "keel_elections_started_total",
        "Elections (and pre-elections) this node started.",
        Kind::Counter,
    ),
    (
        "keel_snapshots_sent_total",
        "Snapshots sent to followers.",
        Kind::Counter,
    ),
    (
        "keel_snapshots_installed_total",
        "Snapshots installed from a leader.",
        Kind::Counter,
    ),
    (
        "keel_appends_dropped_apply_lag_total",
        "Appends a follower dropped while its state machine lagged by max_apply_lag_entries.",
        Kind::Counter,
    ),
    (
        "keel_snapshots_taken_total",
        "Snapshots taken of the local state.",
        Kind::Counter,
    ),
    (
        "keel_peer_sent_bytes_total",
        "Bytes sent to a peer.",
        Kind::Counter,
    ),
    (
        "keel_peer_received_bytes_total",
        "Bytes received from a peer.",
        Kind::Counter,
    ),
    (
        "keel_peer_messages_dropped_total",
        "Messages to a peer given up on before they were sent (full queue, failed write).",
        Kind::Counter,
    ),
    (
        "keel_frames_rejected_total",
        "Frames rejected as malformed, by reason.",
        Kind::Counter,
    ),
    (
        "keel_tls_handshakes_refused_total",
        "TLS handshakes refused, by reason.",
        Kind::Counter,
    ),
    (
        "keel_wal_fsync_duration_seconds",
        "I/O time of each group commit.",
        Kind::Histogram,
    ),
    (
        "keel_wal_fsync_batch_entries",
        "Entries made durable by each group commit.",
        Kind::Histogram,
    ),
    (
        "keel_proposal_batch_entries",
        "Proposals per batch handed to the core.",
        Kind::Histogram,
    ),
    (
        "keel_commit_duration_seconds",
        "From proposal to commit.",
        Kind::Histogram,
    ),
    (
        "keel_apply_duration_seconds",
        "State machine time per applied batch.",
        Kind::Histogram,
    ),
    (
        "keel_driver_turn_duration_seconds",
        "Time per turn of the node's driver thread; every write of the node waits while one runs.",
        Kind::Histogram,
    ),
    (
        "keel_peer_round_trip_time_seconds",
        "Heartbeat round trips to each follower.",
        Kind::Histogram,
    ),
    (
        "keel_build_info",
        "Always 1; the labels say which build.",
        Kind::Gauge,
    ),
];

impl NodeCollector {
    pub fn new() -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| {
                Desc::new(
                    (*name).into(),
                    (*help).into(),
                    Vec::new(),
                    Default::default(),
                )
                .expect("static metric names are valid")
            })
            .collect();
        Self {
            nodes: Mutex::new(Vec::new()),
            descs,
        }
    }

    /// Adds a node; its metrics carry `node="<id>"`.
    pub fn add(&self, source: NodeSource) {
        self.nodes.lock().expect("never poisoned").push(source);
    }

    /// Registers a collector for `sources` in `registry`.
    pub fn register(
        registry: &prometheus::Registry,
        sources: impl IntoIterator<Item = NodeSource>,
    ) -> prometheus::Result<Arc<NodeCollector>> {
        let collector = Arc::new(NodeCollector::new());
        for s in sources {
            collector.add(s);
        }
        registry.register(Box::new(SharedCollector(collector.clone())))?;
        Ok(collector)
    }
}

/// Lets the caller keep adding nodes after registration.
struct SharedCollector(Arc<NodeCollector>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Collector for NodeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let nodes = self.nodes.lock().expect("never poisoned").clone();
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .map(|(name, help, kind)| {
                let mut f = MetricFamily::default();
                f.set_name((*name).into());
                f.set_help((*help).into());
                f.set_field_type(match kind {
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Histogram => MetricType::HISTOGRAM,
                });
                f
            })
            .collect();
        let mut put = |name: &str, metric: proto::Metric| {
            let family = families
                .iter_mut()
                .find(|f| f.name() == name)
                .expect("every family is declared in FAMILIES");
            family.mut_metric().push(metric);
        };
        for source in &nodes {
            collect_node(source, &mut put);
        }
        put(
            "keel_build_info",
            gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0),
        );
        families.retain(|f| !f.get_metric().is_empty());
        families
    }
}

fn collect_node(source: &NodeSource, put: &mut impl FnMut(&str, proto::Metric)) {
    let m = &source.metrics;
    let node = source.id.to_string();
    let base = [("node", node.as_str())];
    let get = NodeMetrics::get;
    let role = get(&m.role);
    let leader = get(&m.leader);
    let commit = get(&m.commit_index);
    let applied = get(&m.applied_index);
    put(
        "keel_raft_is_leader",
        gauge(&base, f64::from(u8::from(role == 3))),
    );
    put(
        "keel_raft_has_leader",
        gauge(&base, f64::from(u8::from(leader != 0))),
    );
    put("keel_raft_role", gauge(&base, role as f64));
    put("keel_raft_term", gauge(&base, get(&m.term) as f64));
    put("keel_raft_commit_index", gauge(&base, commit as f64));
    put("keel_raft_applied_index", gauge(&base, applied as f64));
    put(
        "keel_raft_last_log_index",
        gauge(&base, get(&m.last_log_index) as f64),
    );
    put(
        "keel_raft_apply_lag_entries",
        gauge(&base, commit.saturating_sub(applied) as f64),
    );
    put(
        "keel_proposals_pending",
        gauge(&base, get(&m.proposals_pending) as f64),
    );
    put(
        "keel_leader_changes_seen_total",
        counter(&base, get(&m.leader_changes_seen)),
    );
    put(
        "keel_proposals_committed_total",
        counter(&base, get(&m.proposals_committed)),
    );
    for (reason, v) in [
        ("not_leader", &m.proposals_failed_not_leader),
        ("dropped", &m.proposals_failed_dropped),
        ("outcome_unknown", &m.proposals_failed_unknown),
        ("too_large", &m.proposals_failed_too_large),
        ("stopped", &m.proposals_failed_stopped),
    ] {
        put(
            "keel_proposals_failed_total",
            counter(&[("node", node.as_str()), ("reason", reason)], get(v)),
        );
    }
    put(
        "keel_elections_started_total",
        counter(&base, get(&m.elections_started)),
    );
    put(
        "keel_snapshots_sent_total",
        counter(&base, get(&m.snapshots_sent)),
    );
    put(
        "keel_snapshots_installed_total",
        counter(&base, get(&m.snapshots_installed)),
    );
    put(
        "keel_appends_dropped_apply_lag_total",
        counter(&base, get(&m.appends_dropped_apply_lag)),
    );
    put(
        "keel_snapshots_taken_total",
        counter(&base, get(&m.snapshots_taken)),
    );
    const NANOS: f64 = 1e-9;
    put(
        "keel_wal_fsync_duration_seconds",
        histogram(&base, &m.wal_fsync_duration.snapshot(), NANOS),
    );
    put(
        "keel_wal_fsync_batch_entries",
        histogram(&base, &m.wal_fsync_batch_entries.snapshot(), 1.0),
    );
    put(
        "keel_proposal_batch_entries",
        histogram(&base, &m.proposal_batch_entries.snapshot(), 1.0),
    );
    put(
        "keel_commit_duration_seconds",
        histogram(&base, &m.commit_duration.snapshot(), NANOS),
    );
    put(
        "keel_apply_duration_seconds",
        histogram(&base, &m.apply_duration.snapshot(), NANOS),
    );
    put(
        "keel_driver_turn_duration_seconds",
        histogram(&base, &m.driver_turn_duration.snapshot(), NANOS),
    );
    let peers = m.peers.lock();
    for (peer, p) in peers.iter() {
        let peer = peer.to_string();
        let labels = [("node", node.as_str()), ("peer", peer.as_str())];
        if role == 3 {
            put(
                "keel_raft_commit_lag_entries",
                gauge(&labels, p.commit_lag_entries as f64),
            );
        }
        put(
            "keel_peer_round_trip_time_seconds",
            histogram(&labels, &p.round_trip.snapshot(), NANOS),
        );
    }
    drop(peers);
    if let Some(transport) = &source.transport {
        let stats = transport.stats();
        put(
            "keel_peers_connected",
            gauge(&base, stats.peers_connected as f64),
        );
        for (peer, traffic) in &stats.peers {
            let peer = peer.to_string();
            let labels = [("node", node.as_str()), ("peer", peer.as_str())];
            put(
                "keel_peer_sent_bytes_total",
                counter(&labels, traffic.sent_bytes),
            );
            put(
                "keel_peer_received_bytes_total",
                counter(&labels, traffic.received_bytes),
            );
            put(
                "keel_peer_messages_dropped_total",
                counter(&labels, traffic.messages_dropped),
            );
        }
        for (reason, n) in &stats.frames_rejected {
            let labels = [("node", node.as_str()), ("reason", reason.as_str())];
            put("keel_frames_rejected_total", counter(&labels, *n));
        }
        for (reason, n) in &stats.handshakes_refused {
            let labels = [("node", node.as_str()), ("reason", reason.as_str())];
            put("keel_tls_handshakes_refused_total", counter(&labels, *n));
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*k).into());
            l.set_value((*v).into());
            l
        })
        .collect()
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value);
    let mut m = proto::Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn counter(pairs: &[(&str, &str)], value: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    let mut m = proto::Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

/// A histogram snapshot, with bounds and sum scaled into base units.
fn histogram(pairs: &[(&str, &str)], s: &HistogramSnapshot, scale: f64) -> proto::Metric {
    let mut h = proto::Histogram::default();
    h.set_sample_count(s.count);
    h.set_sample_sum(s.sum as f64 * scale);
    let buckets = s
        .bounds
        .iter()
        .zip(&s.cumulative)
        .map(|(&bound, &count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(bound as f64 * scale);
            b.set_cumulative_count(count);
            b
        })
        .collect::<Vec<_>>();
    h.set_bucket(buckets);
    let mut m = proto::Metric::default();
    m.set_label(labels(pairs));
    m.set_histogram(h);
    m
}
