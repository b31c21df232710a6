//! A real HTTP scrape of a running three-node cluster: the exposition parses, and its values
//! track what the cluster does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::kv::KvStore;
use keel_engine::node::{MemNetwork, Node, NodeConfig};
use keel_metrics::{MetricsServer, NodeCollector, NodeSource};
use prometheus_parse::{Sample, Scrape, Value};

const WAIT: Duration = Duration::from_secs(10);

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("writes");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("reads");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s: &&Sample| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// Observations in the histogram `name` of node `node`.
fn histogram_count(scrape: &Scrape, name: &str, node: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|x| x.metric == name && x.labels.get("node") == Some(node))
        .unwrap_or_else(|| panic!("{name} of node {node}"));
    match &sample.value {
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("{name}: a histogram, not {other:?}"),
    }
}

/// Polls the scrape until `check` holds, or fails with what it last saw.
fn eventually(addr: std::net::SocketAddr, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(addr);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_scrape_tracks_the_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemNetwork::new();
    let nodes: Vec<Arc<Node<KvStore>>> = (1..=3)
        .map(|id| {
            let mut cfg = NodeConfig::new(id, [1, 2, 3]);
            cfg.tick_interval = Duration::from_millis(5);
            cfg.heartbeat_interval = Duration::from_millis(20);
            cfg.election_timeout = Duration::from_millis(100);
            cfg.lease_drift = Duration::from_millis(10);
            let node = Node::start(
                cfg,
                dir.path().join(id.to_string()),
                net.transport(id),
                KvStore::default(),
            )
            .expect("starts");
            Arc::new(node)
        })
        .collect();
    let registry = prometheus::Registry::new();
    NodeCollector::register(&registry, nodes.iter().map(|n| NodeSource::of(n.as_ref())))
        .expect("registers");
    let health_of = nodes[2].clone();
    let mut server = MetricsServer::start("127.0.0.1:0", registry, move || {
        health_of.leader().is_some()
    })
    .expect("serves");
    let addr = server.addr();

    // Term and leader.
    let leader = nodes[0].wait_for_leader(WAIT).expect("a leader");
    let s = eventually(addr, "one leader is reported", |s| {
        (1..=3)
            .filter(|id| value(s, "keel_raft_is_leader", &[("node", &id.to_string())]) == Some(1.0))
            .count()
            == 1
    });
    let term = nodes[0].status().expect("status").term as f64;
    assert_eq!(
        value(&s, "keel_raft_is_leader", &[("node", &leader.to_string())]),
        Some(1.0)
    );
    assert_eq!(value(&s, "keel_raft_term", &[("node", "1")]), Some(term));
    assert_eq!(get(addr, "/health").0, 200);

    // A forced election: the term rises and the new leader is reported.
    let target = (1..=3).find(|&id| id != leader).expect("a follower");
    let leader_node = &nodes[usize::try_from(leader - 1).expect("small")];
    leader_node.transfer_leadership(target).expect("transfer");
    let s = eventually(addr, "the new leader is reported", |s| {
        value(s, "keel_raft_is_leader", &[("node", &target.to_string())]) == Some(1.0)
    });
    assert!(value(&s, "keel_raft_term", &[("node", &target.to_string())]).expect("term") > term);
    assert!(value(&s, "keel_leader_changes_seen_total", &[("node", "1")]).expect("counter") >= 2.0);
    let new_leader = &nodes[usize::try_from(target - 1).expect("small")];

    // The commit index after N proposals.
    let mut last = 0;
    for i in 0..50 {
        last = new_leader.put(format!("k{i}"), "v", WAIT).expect("put");
    }
    let target_label = target.to_string();
    let s = eventually(addr, "the commit index reaches the last put", |s| {
        value(s, "keel_raft_commit_index", &[("node", &target_label)]) >= Some(last as f64)
    });
    assert!(
        value(
            &s,
            "keel_proposals_committed_total",
            &[("node", &target_label)]
        )
        .expect("counter")
            >= 50.0
    );
    assert!(
        histogram_count(&s, "keel_commit_duration_seconds", &target_label) >= 1.0,
        "commit latencies were recorded"
    );
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "keel_wal_fsync_batch_entries"));
    assert!(
        histogram_count(&s, "keel_driver_turn_duration_seconds", &target_label) >= 1.0,
        "driver turns were timed"
    );

    // Commit lag rises for a cut-off follower and falls once it is back.
    let lagging = (1..=3).find(|&id| id != target).expect("a follower");
    let lagging_label = lagging.to_string();
    let lag_labels = [
        ("node", target_label.as_str()),
        ("peer", lagging_label.as_str()),
    ];
    net.isolate(lagging);
    for i in 0..30 {
        new_leader
            .put(format!("lag{i}"), "v", WAIT)
            .expect("put with a majority");
    }
    eventually(addr, "the lag rises", |s| {
        value(s, "keel_raft_commit_lag_entries", &lag_labels) >= Some(30.0)
    });
    net.heal();
    eventually(addr, "the lag falls", |s| {
        value(s, "keel_raft_commit_lag_entries", &lag_labels) < Some(5.0)
    });

    // Health follows node 3's view of the leader.
    net.isolate(3);
    let deadline = Instant::now() + WAIT;
    while get(addr, "/health").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "an isolated node never lost its leader"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    net.heal();
    server.stop();
    for n in &nodes {
        n.stop();
    }
}

#[test]
fn the_exposition_declares_every_family() {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(keel_engine::node::NodeMetrics::default());
    NodeCollector::register(
        &registry,
        [NodeSource {
            id: 7,
            metrics,
            transport: None,
        }],
    )
    .expect("registers");
    let mut body = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut body,
    )
    .expect("encodes");
    let text = String::from_utf8(body).expect("utf-8");
    for family in [
        "keel_raft_term",
        "keel_raft_commit_index",
        "keel_proposals_failed_total",
        "keel_wal_fsync_duration_seconds",
        "keel_driver_turn_duration_seconds",
        "keel_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} is declared"
        );
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has help"
        );
    }
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    assert!(parsed
        .samples
        .iter()
        .any(|s| s.metric == "keel_raft_term" && s.labels.get("node") == Some("7")));
}

/// The alert rules and the dashboard only query metrics that exist.
#[test]
fn alerts_and_dashboard_name_real_metrics() {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(keel_engine::node::NodeMetrics::default());
    let peer = keel_engine::node::PeerMetrics {
        match_index: 0,
        commit_lag_entries: 0,
        round_trip: keel_engine::node::Histogram::new(keel_engine::node::DURATION_BOUNDS_NANOS),
    };
    metrics.peers.lock().insert(2, peer);
    metrics.role.store(3, std::sync::atomic::Ordering::Relaxed);
    NodeCollector::register(
        &registry,
        [NodeSource {
            id: 1,
            metrics,
            transport: None,
        }],
    )
    .expect("registers");
    let families: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let exposed = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        families.iter().any(|f| f == name || f == base)
    };
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(manifest.join(file)).expect("readable");
        let names: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("keel_"))
            .collect();
        assert!(!names.is_empty(), "{file} queries keel metrics");
        for name in names {
            assert!(
                exposed(name),
                "{file} names {name}, which keel does not expose"
            );
        }
    }
}
