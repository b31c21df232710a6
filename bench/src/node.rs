//! `keel-bench node`: one node of a cluster that spans processes or machines, serving the
//! key-value store over QUIC with mutual TLS, configured from a TOML file.
//!
//! The process is also what the whole-cluster fault tests drive: it prints one JSON line when it
//! is up, takes admin commands on stdin (one per line, one JSON line answered on stdout each),
//! and exits by itself, with code 3, only when the node stops (a failed fsync, say).

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_engine::core::{NodeId, Role};
use keel_engine::kv::KvStore;
use keel_engine::node::{Event, Node, NodeConfig, StateMachine as _};
use keel_metrics::{MetricsServer, NodeCollector, NodeSource};
use keel_transport_quic::certs::{load_ca_pem, Identity};
use keel_transport_quic::{QuicConfig, QuicTransport};
use serde::Deserialize;
use serde_json::{json, Value};

/// Exit code of a node that stopped on its own (its reason is on stderr).
pub const EXIT_NODE_STOPPED: i32 = 3;

/// The configuration file. See the README's "Run a cluster across machines" for an example.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// The log and snapshots live here (created if missing).
    pub data_dir: PathBuf,
    /// The UDP address of the node's QUIC endpoint, for peers and key-value clients alike.
    pub listen: SocketAddr,
    /// Where clients reach this node, if not at `listen` (e.g. `listen` is 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// Serve Prometheus `/metrics` and `/health` here.
    pub metrics: Option<SocketAddr>,
    pub tls: TlsFiles,
    /// Forward key-value writes that reach this node while it follows to the leader (see
    /// `QuicConfig::kv_forward_writes`), instead of refusing them with a leader hint.
    #[serde(default)]
    pub forward_writes: bool,
    /// Every other node of the cluster, by id.
    #[serde(default)]
    pub peers: BTreeMap<String, PeerAddr>,
    pub node: NodeConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by the CA for `node-<id>.keel`, and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a peer is: one address, or where to send Raft traffic (`addr`) and where clients reach
/// it (`advertise`), when these differ (a proxy between peers, NAT).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PeerAddr {
    Plain(SocketAddr),
    Split {
        addr: SocketAddr,
        advertise: Option<SocketAddr>,
    },
}

impl NodeFile {
    /// Reads and checks a config file; errors name the file and the field or path at fault.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: NodeFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        file.check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        if self.node.id == 0 {
            return Err("[node] id: a node needs an id (1 or more)".into());
        }
        for id in self.peers.keys() {
            let id = peer_id(id)?;
            if id == self.node.id {
                return Err(format!("[peers] \"{id}\": a node is not its own peer"));
            }
        }
        Ok(())
    }

    fn quic_config(&self) -> Result<QuicConfig, String> {
        let identity = Identity::load_pem(&self.tls.cert, &self.tls.key)
            .map_err(|e| format!("[tls] cert/key: {e}"))?;
        let ca = load_ca_pem(&self.tls.ca).map_err(|e| format!("[tls] ca: {e}"))?;
        let mut cfg = QuicConfig::new(self.node.id, self.listen, identity, ca);
        cfg.kv_forward_writes = self.forward_writes;
        if let Some(addr) = self.advertise {
            cfg = cfg.with_advertised(self.node.id, addr);
        }
        for (id, peer) in &self.peers {
            let id = peer_id(id)?;
            cfg = match *peer {
                PeerAddr::Plain(addr) => cfg.with_peer(id, addr),
                PeerAddr::Split { addr, advertise } => {
                    let cfg = cfg.with_peer(id, addr);
                    match advertise {
                        Some(a) => cfg.with_advertised(id, a),
                        None => cfg,
                    }
                }
            };
        }
        Ok(cfg)
    }
}

fn peer_id(key: &str) -> Result<NodeId, String> {
    match key.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!(
            "[peers] \"{key}\": a peer's key is its node id (1 or more)"
        )),
    }
}

/// Runs the node until it stops by itself; returns why it stopped.
pub fn run(config: &Path) -> Result<String, String> {
    // The node's own log on stderr: elections, stops, refused peers.
    crate::log_to_stderr("info");
    let file = NodeFile::load(config)?;
    let quic = file
        .quic_config()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let transport = QuicTransport::start(quic)
        .map_err(|e| format!("the QUIC endpoint on {}: {e}", file.listen))?;
    let node = Node::start(
        file.node.clone(),
        &file.data_dir,
        transport.clone(),
        KvStore::default(),
    )
    .map_err(|e| format!("node {} failed to start: {e}", file.node.id))?;
    let node = Arc::new(node);
    let events = node.subscribe();
    transport.serve_kv(&node);
    let metrics = match file.metrics {
        None => None,
        Some(addr) => {
            let registry = prometheus::Registry::new();
            NodeCollector::register(&registry, [NodeSource::of(node.as_ref())])
                .map_err(|e| format!("metrics: {e}"))?;
            let health = node.clone();
            Some(
                MetricsServer::start(&addr.to_string(), registry, move || {
                    health.leader().is_some()
                })
                .map_err(|e| format!("metrics on {addr}: {e}"))?,
            )
        }
    };
    say(&json!({
        "event": "ready",
        "id": node.id(),
        "listen": transport.local_addr().to_string(),
        "metrics": metrics.as_ref().map(|m| m.addr().to_string()),
    }));
    {
        let (node, transport) = (node.clone(), transport.clone());
        std::thread::Builder::new()
            .name("keel-admin".into())
            .spawn(move || admin_loop(&node, &transport))
            .map_err(|e| format!("the admin thread: {e}"))?;
    }
    let reason = loop {
        match events.recv() {
            Ok(Event::Stopped { reason }) => break reason,
            Ok(_) => {}
            Err(_) => break "the node's event stream closed".to_string(),
        }
    };
    transport.shutdown();
    Ok(reason)
}

/// Prints one JSON line on stdout.
fn say(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Serves admin commands from stdin until it closes.
fn admin_loop(node: &Node<KvStore>, transport: &QuicTransport) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let answer = match admin(node, transport, line) {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => json!({ "ok": false, "error": e }),
        };
        say(&answer);
    }
}

/// One admin command: `status`, `digest`, `barrier`, `campaign`, `step-down`, `transfer ID`,
/// `add-learner ID`, `promote ID`, `remove ID`.
pub fn admin(node: &Node<KvStore>, transport: &QuicTransport, line: &str) -> Result<Value, String> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let id = || -> Result<NodeId, String> {
        words
            .clone()
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("{command}: needs a node id"))
    };
    let timeout = node.config().command_timeout;
    let err = |e: keel_engine::node::Error| e.to_string();
    Ok(match command {
        "status" => {
            let s = node.status().map_err(err)?;
            json!({
                "id": s.id,
                "role": match s.role {
                    Role::Leader => "leader",
                    Role::Candidate => "candidate",
                    Role::PreCandidate => "pre-candidate",
                    Role::Follower if s.membership.learners.contains(&s.id) => "learner",
                    Role::Follower if !s.membership.contains(s.id) => "standby",
                    Role::Follower => "follower",
                },
                "term": s.term,
                "leader": s.leader,
                "commit": s.commit_index,
                "applied": s.applied_index,
                "snapshot": s.snapshot_index,
                // Writes other nodes forwarded here since this process started.
                "forwards_served": transport.metrics().snapshot().forwards_served,
                "voters": s.membership.voters,
                "outgoing": s.membership.outgoing,
                "learners": s.membership.learners,
            })
        }
        "digest" => {
            let sm = node.state_machine();
            json!({ "applied": sm.applied_index(), "digest": format!("{:016x}", digest(&sm)) })
        }
        "barrier" => {
            let applied = node.barrier().wait_applied(timeout).map_err(err)?;
            json!({ "index": applied.index })
        }
        "campaign" => {
            node.campaign().map_err(err)?;
            json!({})
        }
        "step-down" => json!({ "to": node.step_down().map_err(err)? }),
        "transfer" => {
            node.transfer_leadership(id()?).map_err(err)?;
            json!({})
        }
        "add-learner" | "promote" | "remove" => {
            let id = id()?;
            let pending = match command {
                "add-learner" => node.add_learner(id),
                "promote" => node.promote(id),
                _ => node.remove(id),
            };
            json!({ "index": pending.wait(timeout).map_err(err)? })
        }
        _ => return Err(format!("unknown command {command:?}")),
    })
}

/// A hash of the whole store, keys in order: equal on two nodes at the same applied index.
fn digest(store: &KvStore) -> u64 {
    let mut entries: Vec<_> = store.iter().collect();
    entries.sort_unstable();
    let mut h = std::hash::DefaultHasher::new();
    for (k, v) in entries {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}
