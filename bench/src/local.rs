//! A local cluster on this machine: nodes with real logs (fsync on unless told otherwise) in a
//! temporary directory, each serving its own `/metrics`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use keel_engine::core::{Index, NodeId};
use keel_engine::kv::{KvCommand, KvStore};
use keel_engine::node::{Committed, Error, MemNetwork, Node, NodeConfig, Pending, Transport};
use keel_metrics::{MetricsServer, NodeCollector, NodeSource};
use keel_transport_quic::certs::DevCa;
use keel_transport_quic::{QuicConfig, QuicTransport};

use crate::load::{Request, Target};

pub struct LocalCluster {
    pub nodes: Vec<Arc<Node<KvStore>>>,
    pub metrics: Vec<MetricsServer>,
    quic: Vec<Arc<QuicTransport>>,
    /// The node the load goes to: the leader, as last known.
    leader: AtomicU64,
}

impl LocalCluster {
    /// Starts `size` nodes; over QUIC with mutual TLS (a fresh dev CA, certificates naming each
    /// node) when `quic`, over the in-memory transport otherwise.
    pub fn start(
        dir: &Path,
        size: u64,
        quic: bool,
        no_fsync: bool,
        metrics_port_base: Option<u16>,
    ) -> Result<Self, String> {
        let voters: Vec<NodeId> = (1..=size).collect();
        let transports: Vec<Arc<dyn Transport>>;
        let mut quic_transports = Vec::new();
        if quic {
            let ca =
                DevCa::generate("keel-bench dev CA").map_err(|e| format!("certificates: {e}"))?;
            for &id in &voters {
                let issued = ca
                    .issue_node(id)
                    .map_err(|e| format!("certificates: {e}"))?;
                let listen = "127.0.0.1:0".parse().expect("a valid address");
                let cfg = QuicConfig::new(id, listen, issued.identity, vec![ca.cert_der()]);
                let t =
                    QuicTransport::start(cfg).map_err(|e| format!("node {id}'s transport: {e}"))?;
                quic_transports.push(t);
            }
            for a in &quic_transports {
                for b in &quic_transports {
                    if a.id() != b.id() {
                        a.set_peer(b.id(), b.local_addr());
                    }
                }
            }
            transports = quic_transports
                .iter()
                .map(|t| t.clone() as Arc<dyn Transport>)
                .collect();
        } else {
            let net = MemNetwork::new();
            transports = voters
                .iter()
                .map(|&id| net.transport(id) as Arc<dyn Transport>)
                .collect();
        }
        let mut nodes = Vec::new();
        let mut metrics = Vec::new();
        for (&id, transport) in voters.iter().zip(transports) {
            let mut cfg = NodeConfig::new(id, voters.iter().copied());
            cfg.unsafe_no_fsync = no_fsync;
            let node = Node::start(
                cfg,
                dir.join(format!("node-{id}")),
                transport,
                KvStore::default(),
            )
            .map_err(|e| format!("node {id} failed to start: {e}"))?;
            let node = Arc::new(node);
            let registry = prometheus::Registry::new();
            NodeCollector::register(&registry, [NodeSource::of(node.as_ref())])
                .map_err(|e| format!("metrics: {e}"))?;
            let port = metrics_port_base.map_or(0, |p| p + u16::try_from(id).unwrap_or(0));
            let health = node.clone();
            let server = MetricsServer::start(&format!("127.0.0.1:{port}"), registry, move || {
                health.leader().is_some()
            })
            .map_err(|e| e.to_string())?;
            nodes.push(node);
            metrics.push(server);
        }
        let leader = nodes[0]
            .wait_for_leader(Duration::from_secs(10))
            .map_err(|e| format!("no leader elected: {e}"))?;
        Ok(Self {
            nodes,
            metrics,
            quic: quic_transports,
            leader: AtomicU64::new(leader),
        })
    }

    pub fn leader(&self) -> &Arc<Node<KvStore>> {
        let id = self.leader.load(Ordering::Relaxed);
        self.nodes
            .iter()
            .find(|n| n.id() == id)
            .unwrap_or(&self.nodes[0])
    }

    pub fn stop(&self) {
        for n in &self.nodes {
            n.stop();
        }
        for t in &self.quic {
            t.shutdown();
        }
    }
}

impl Target for LocalCluster {
    fn put(&self, key: Bytes, value: Bytes) -> Box<dyn Request> {
        let leader = self.leader();
        let proposal = leader.propose(KvCommand::Put { key, value }.encode());
        // Follow the leader hint for the next request.
        if let Some(Err(Error::NotLeader {
            leader: Some(l), ..
        })) = proposal.committed().try_get()
        {
            self.leader.store(l, Ordering::Relaxed);
        }
        let (committed, _applied) = proposal.into_parts();
        Box::new(PutRequest(committed))
    }

    fn get(&self, _key: Bytes, lease: bool) -> Box<dyn Request> {
        let leader = self.leader();
        // The value is read locally once the read index is applied; the load only times it.
        Box::new(ReadRequest(if lease {
            leader.lease_read()
        } else {
            leader.read_index()
        }))
    }

    fn read_back(&self, keys: &[Bytes]) -> Vec<Result<Option<Bytes>, Error>> {
        // One read index serves them all: every read then sees what was applied up to it.
        let leader = self.leader();
        match leader.read_index().wait(Duration::from_secs(10)) {
            Ok(_) => {
                let store = leader.state_machine();
                keys.iter().map(|k| Ok(store.get(k))).collect()
            }
            Err(e) => vec![Err(e); keys.len()],
        }
    }
}

/// A write, done once committed.
struct PutRequest(Pending<Committed>);

impl Request for PutRequest {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Index>, Error>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map(|c| Some(c.index)))
    }
}

struct ReadRequest(Pending<Index>);

impl Request for ReadRequest {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Index>, Error>> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.map(|_| None))
    }
}
