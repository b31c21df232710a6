//! Clusters of real nodes over real QUIC and mutual TLS on 127.0.0.1, and rogue endpoints that
//! misbehave on purpose. Every wait is bounded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::core::NodeId;
use keel_engine::kv::KvStore;
use keel_engine::node::{Node, NodeConfig};
use keel_transport_quic::certs::{DevCa, Identity};
use keel_transport_quic::{tls, QuicConfig, QuicTransport};

pub const WAIT: Duration = Duration::from_secs(15);

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=keel_transport_quic=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .with_thread_names(true)
            .try_init();
    }
}

pub fn node_config(id: NodeId, voters: &[NodeId]) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, voters.iter().copied());
    cfg.tick_interval = Duration::from_millis(10);
    cfg.heartbeat_interval = Duration::from_millis(40);
    cfg.election_timeout = Duration::from_millis(300);
    cfg.lease_drift = Duration::from_millis(30);
    cfg.command_timeout = WAIT;
    cfg.unsafe_no_fsync = true;
    cfg
}

pub fn quic_config(id: NodeId, listen: SocketAddr, identity: Identity, ca: &DevCa) -> QuicConfig {
    let mut cfg = QuicConfig::new(id, listen, identity, vec![ca.cert_der()]);
    cfg.idle_timeout = Duration::from_secs(3);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg.request_timeout = WAIT;
    cfg.reconnect_backoff_min = Duration::from_millis(20);
    cfg.reconnect_backoff_max = Duration::from_millis(300);
    cfg.runtime_threads = 1;
    cfg
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub struct Member {
    pub node: Arc<Node<KvStore>>,
    pub transport: Arc<QuicTransport>,
}

pub struct Cluster {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
    pub voters: Vec<NodeId>,
    /// Every node's address, including ids that only exist in the address books.
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub members: BTreeMap<NodeId, Member>,
    node_tweak: fn(&mut NodeConfig),
    quic_tweak: fn(&mut QuicConfig),
}

impl Cluster {
    pub fn new(voters: &[NodeId]) -> Self {
        Self::with(voters, &[], |_| {}, |_| {})
    }

    /// Starts `voters`; `extra` are ids with an address in every address book but no node.
    pub fn with(
        voters: &[NodeId],
        extra: &[(NodeId, SocketAddr)],
        node_tweak: fn(&mut NodeConfig),
        quic_tweak: fn(&mut QuicConfig),
    ) -> Self {
        init_logs();
        let ca = DevCa::generate("test cluster").expect("CA");
        let mut cluster = Cluster {
            ca,
            dir: tempfile::tempdir().expect("temp dir"),
            voters: voters.to_vec(),
            addrs: extra.iter().copied().collect(),
            members: BTreeMap::new(),
            node_tweak,
            quic_tweak,
        };
        // Bind every endpoint first (port 0) to learn the addresses, then fill address books.
        let mut transports = BTreeMap::new();
        for &id in voters {
            let t = cluster.start_transport(id, localhost());
            cluster.addrs.insert(id, t.local_addr());
            transports.insert(id, t);
        }
        for (id, t) in transports {
            for (&peer, &addr) in &cluster.addrs {
                t.set_peer(peer, addr);
            }
            cluster.start_node(id, t);
        }
        cluster
    }

    fn start_transport(&self, id: NodeId, listen: SocketAddr) -> Arc<QuicTransport> {
        let identity = self.ca.issue_node(id).expect("node cert").identity;
        let mut cfg = quic_config(id, listen, identity, &self.ca);
        (self.quic_tweak)(&mut cfg);
        QuicTransport::start(cfg).expect("transport starts")
    }

    fn start_node(&mut self, id: NodeId, transport: Arc<QuicTransport>) {
        let mut cfg = node_config(id, &self.voters);
        (self.node_tweak)(&mut cfg);
        let dir = self.dir.path().join(format!("node-{id}"));
        let node = Arc::new(
            Node::start(cfg, dir, transport.clone(), KvStore::default()).expect("node starts"),
        );
        transport.serve_kv(&node);
        self.members.insert(id, Member { node, transport });
    }

    pub fn node(&self, id: NodeId) -> &Arc<Node<KvStore>> {
        &self.members[&id].node
    }

    pub fn transport(&self, id: NodeId) -> &Arc<QuicTransport> {
        &self.members[&id].transport
    }

    pub fn stop(&mut self, id: NodeId) {
        if let Some(m) = self.members.remove(&id) {
            m.node.stop();
            m.transport.shutdown();
        }
    }

    /// Starts `id` again on the address it had.
    pub fn restart(&mut self, id: NodeId) {
        self.restart_alone(id);
        self.introduce(id);
    }

    /// Starts `id` again with an empty address book: it dials no peer and refuses every peer
    /// that dials it, until [`Cluster::introduce`].
    pub fn restart_alone(&mut self, id: NodeId) {
        let t = self.start_transport(id, self.addrs[&id]);
        self.start_node(id, t);
    }

    /// Gives `id` its address book.
    pub fn introduce(&self, id: NodeId) {
        for (&peer, &addr) in &self.addrs {
            self.transport(id).set_peer(peer, addr);
        }
    }

    /// Waits until the running nodes agree on one leader among them.
    pub fn leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<NodeId> = self
                .members
                .values()
                .filter(|m| m.node.is_leader())
                .map(|m| m.node.id())
                .collect();
            if let [leader] = leaders[..] {
                if self
                    .members
                    .values()
                    .all(|m| m.node.leader() == Some(leader))
                {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn follower(&self) -> NodeId {
        let leader = self.leader();
        *self
            .members
            .keys()
            .find(|&&id| id != leader)
            .expect("a follower")
    }

    /// Waits until every running node applied `index`.
    pub fn converge(&self, index: u64) {
        for m in self.members.values() {
            if let Err(e) = m.node.wait_applied(index).wait(WAIT) {
                let report: Vec<String> = self
                    .members
                    .values()
                    .map(|m| {
                        format!(
                            "node {}: {:?}\n  {:?}",
                            m.node.id(),
                            m.node.status(),
                            m.transport.metrics().snapshot()
                        )
                    })
                    .collect();
                panic!(
                    "node {} did not apply {index}: {e}\n{}",
                    m.node.id(),
                    report.join("\n")
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in self.members.values() {
            m.node.stop();
            m.transport.shutdown();
        }
    }
}

/// Polls `f` until it holds, for at most `WAIT`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A misbehaving endpoint the test drives by hand: a runtime and a quinn endpoint with the
/// identity and trust the test chooses.
pub struct Rogue {
    pub runtime: tokio::runtime::Runtime,
    pub endpoint: quinn::Endpoint,
    pub client: quinn::ClientConfig,
}

impl Rogue {
    /// `identity` is what the rogue presents; `trusted` is whom it trusts.
    pub fn new(identity: &Identity, trusted: &DevCa) -> Self {
        Self::speaking(identity, trusted, tls::PEER_ALPN)
    }

    /// A rogue that dials with `alpn`: a peer's, or a key-value client's.
    pub fn speaking(identity: &Identity, trusted: &DevCa, alpn: &[u8]) -> Self {
        let metrics = Arc::new(keel_transport_quic::TransportMetrics::default());
        let ca = vec![trusted.cert_der()];
        let client = tls::client_config(identity, &ca, alpn, metrics.clone(), "rogue".into())
            .expect("client config");
        let server = tls::server_config(identity, &ca, metrics, "rogue".into()).expect("server");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let endpoint = {
            let _g = runtime.enter();
            quinn::Endpoint::server(server, localhost()).expect("endpoint")
        };
        Self {
            runtime,
            endpoint,
            client,
        }
    }

    /// A key-value client of `cluster` (its certificate from the cluster CA, the key-value
    /// ALPN), connected to node `id`.
    pub fn kv_client_of(cluster: &Cluster, id: NodeId) -> (Self, quinn::Connection) {
        let client = Self::speaking(
            &cluster.ca.issue_client().expect("cert").identity,
            &cluster.ca,
            tls::KV_ALPN,
        );
        let conn = client
            .dial(id, cluster.addrs[&id])
            .expect("a client certificate is accepted");
        (client, conn)
    }

    /// A rogue with peer `id`'s genuine certificate, connected to node `to` of `cluster`.
    pub fn peer_of(cluster: &Cluster, id: NodeId, to: NodeId) -> (Self, quinn::Connection) {
        let rogue = Self::new(
            &cluster.ca.issue_node(id).expect("cert").identity,
            &cluster.ca,
        );
        let conn = rogue
            .dial(to, cluster.addrs[&to])
            .expect("a peer's certificate is accepted");
        (rogue, conn)
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound")
    }

    /// Dials `addr` expecting node `id`'s certificate there.
    pub fn dial(&self, id: NodeId, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let _guard = self.runtime.enter();
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &tls::server_name_of(id))
            .map_err(|e| e.to_string())?;
        self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
        })
    }

    /// Accepts (and completes the handshake of) incoming connections in the background.
    pub fn serve(&self) {
        let endpoint = self.endpoint.clone();
        self.runtime.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(async move {
                    let _ = incoming.await;
                });
            }
        });
    }
}
