//! [`QuicTransport`]: the node runtime's `Transport` over one QUIC endpoint, on a tokio runtime
//! the transport owns (the engine stays runtime-free).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_engine::core::{Message, NodeId};
use keel_engine::kv::KvStore;
use keel_engine::node::{
    Inbox, Node, PeerTraffic, ProposalReply, SnapshotReader, Transport, TransportStats,
};
use parking_lot::{Mutex, RwLock};

use crate::config::QuicConfig;
use crate::metrics::TransportMetrics;
use crate::peer::Peer;
use crate::shared::{codes, Shared};
use crate::tls::{self, PEER_ALPN};
use crate::{forward, inbound, snapshot};

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// A node's QUIC transport. Create it with [`QuicTransport::start`], hand it to `Node::start`.
pub struct QuicTransport {
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.shared.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds the endpoint, starts the runtime, and begins dialling the configured peers.
    pub fn start(cfg: QuicConfig) -> Result<Arc<Self>, TransportError> {
        cfg.validate().map_err(TransportError::Config)?;
        let id = cfg.id;
        let metrics = Arc::new(TransportMetrics::default());
        let local = format!("node-{id}");
        let transport_cfg = Arc::new(cfg.transport_config().map_err(TransportError::Config)?);
        let mut server =
            tls::server_config(&cfg.identity, &cfg.ca, metrics.clone(), local.clone())?;
        server.transport_config(transport_cfg.clone());
        // Connections not yet accepted; the acceptor bounds handshakes under way.
        server.max_incoming(cfg.handshakes_max);
        let mut client =
            tls::client_config(&cfg.identity, &cfg.ca, PEER_ALPN, metrics.clone(), local)?;
        client.transport_config(transport_cfg);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.runtime_threads)
            .thread_name(format!("keel-quic-{id}"))
            .enable_all()
            .build()?;
        let endpoint = {
            let _guard = runtime.enter();
            let socket = std::net::UdpSocket::bind(cfg.listen)?;
            let endpoint_cfg = tls::endpoint_config(&cfg.identity);
            quinn::Endpoint::new(
                endpoint_cfg,
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let local_addr = endpoint.local_addr()?;
        let peers = cfg.peers.clone();
        let kv_request_bytes_max = cfg.kv_request_bytes_max;
        let shared = Arc::new(Shared {
            id,
            cfg,
            endpoint: Mutex::new(Some(endpoint.clone())),
            peer_client: client,
            inbox: RwLock::new(None),
            peers: RwLock::new(BTreeMap::new()),
            metrics,
            kv: RwLock::new(None),
            kv_connections: Default::default(),
            kv_request_bytes: tokio::sync::Semaphore::new(kv_request_bytes_max),
            kv_past_the_budget: tokio::sync::Mutex::new(()),
            blocking_calls: tokio::sync::Semaphore::new(crate::shared::BLOCKING_CALLS_MAX),
            handle: runtime.handle().clone(),
        });
        runtime.spawn(inbound::run_acceptor(shared.clone(), endpoint));
        let transport = Arc::new(Self {
            shared,
            runtime: Mutex::new(Some(runtime)),
            local_addr,
        });
        for (peer, addr) in peers {
            transport.set_peer(peer, addr);
        }
        tracing::info!(node = id, %local_addr, "QUIC transport listening");
        Ok(transport)
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The address the endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics(&self) -> &Arc<TransportMetrics> {
        &self.shared.metrics
    }

    /// Adds a peer or changes its address (e.g. a node added to the cluster).
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.shared.id || id == 0 {
            return;
        }
        let mut peers = self.shared.peers.write();
        match peers.get(&id) {
            Some(p) => p.set_addr(addr),
            None => {
                peers.insert(id, Peer::start(&self.shared, id, addr));
            }
        }
    }

    /// Forgets a peer: closes its connection, stops its tasks and drops its metrics.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(p) = self.shared.peers.write().remove(&id) {
            p.stop();
            self.shared.metrics.forget(id);
        }
    }

    /// Peers with a live connection now.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.shared
            .peers
            .read()
            .values()
            .filter(|p| p.current().is_some())
            .map(|p| p.id)
            .collect()
    }

    /// Serves the key-value client endpoint from `node` (held weakly: the node owns this
    /// transport, not the other way round).
    pub fn serve_kv(&self, node: &Arc<Node<KvStore>>) {
        *self.shared.kv.write() = Some(Arc::downgrade(node));
    }

    /// Closes the endpoint (peers are told at once) and stops the runtime. Idempotent; `detach`
    /// calls it when the node stops.
    pub fn shutdown(&self) {
        *self.shared.inbox.write() = None;
        *self.shared.kv.write() = None::<Weak<Node<KvStore>>>;
        let Some(runtime) = self.runtime.lock().take() else {
            return;
        };
        let endpoint = self.shared.endpoint.lock().take();
        for (_, peer) in std::mem::take(&mut *self.shared.peers.write()) {
            peer.stop();
        }
        if let Some(endpoint) = endpoint {
            endpoint.close(codes::SHUTDOWN, b"node stopped");
            if tokio::runtime::Handle::try_current().is_err() {
                // Let the close frames leave, so peers notice now rather than at idle timeout.
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle())
                        .await;
                });
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        } else {
            runtime.shutdown_background();
        }
        tracing::info!(node = self.shared.id, "QUIC transport stopped");
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) -> bool {
        // The runtime is gone after shutdown; a spawn then is refused rather than panicking.
        if self.runtime.lock().is_none() {
            return false;
        }
        self.shared.handle.spawn(f);
        true
    }
}

impl Transport for QuicTransport {
    fn attach(&self, inbox: Inbox) {
        *self.shared.inbox.write() = Some(inbox);
    }

    /// What keel-metrics exposes: traffic per peer, refusals by reason, live connections.
    fn stats(&self) -> TransportStats {
        let m = self.shared.metrics.snapshot();
        let named = |map: std::collections::BTreeMap<&'static str, u64>| {
            map.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        TransportStats {
            peers_connected: m.peers_connected,
            peers: m
                .peers
                .iter()
                .map(|(&id, p)| {
                    let traffic = PeerTraffic {
                        sent_bytes: p.bytes_sent,
                        received_bytes: p.bytes_received,
                        messages_dropped: p.messages_dropped,
                    };
                    (id, traffic)
                })
                .collect(),
            frames_rejected: named(m.frames_rejected),
            handshakes_refused: named(m.handshakes_refused),
        }
    }

    fn send(&self, messages: Vec<Message>) {
        let peers = self.shared.peers.read();
        for m in messages {
            match peers.get(&m.to) {
                Some(peer) => peer.enqueue(m),
                None => tracing::debug!(node = self.shared.id, to = m.to, "no such peer; dropped"),
            }
        }
    }

    fn send_snapshot(&self, message: Message, data: SnapshotReader) {
        let shared = self.shared.clone();
        let to = message.to;
        // Reported undelivered if the runtime is gone and the task never runs.
        let unsent = message.clone();
        let started = self.spawn(async move {
            let delivered = match shared.peer(to) {
                Some(peer) => match snapshot::send(&shared, &peer, &message, data).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(node = shared.id, peer = to, error = %e, "snapshot not sent");
                        false
                    }
                },
                None => false,
            };
            if let Some(inbox) = shared.inbox() {
                inbox.snapshot_sent(&message, delivered);
            }
        });
        if !started {
            if let Some(inbox) = self.shared.inbox() {
                inbox.snapshot_sent(&unsent, false);
            }
        }
    }

    fn forward(&self, leader: NodeId, command: Bytes, reply: ProposalReply) {
        let shared = self.shared.clone();
        // If the runtime is gone the future is dropped unstarted, and dropping the reply
        // completes the caller with `Stopped`.
        self.spawn(async move { forward::send(&shared, leader, command, reply).await });
    }

    fn detach(&self) {
        self.shutdown();
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::certs::DevCa;
    use crate::metrics::HandshakeRefusal;

    fn start(id: NodeId, ca: &DevCa) -> Arc<QuicTransport> {
        let identity = ca.issue_node(id).expect("node cert").identity;
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut cfg = QuicConfig::new(id, listen, identity, vec![ca.cert_der()]);
        cfg.reconnect_backoff_min = Duration::from_millis(20);
        cfg.reconnect_backoff_max = Duration::from_millis(100);
        cfg.runtime_threads = 1;
        QuicTransport::start(cfg).expect("transport starts")
    }

    fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A connection whose handshake ends after its peer was stopped (here: a redial accepted
    /// while the stopped peer is still in the map, as when `remove_peer` runs between the
    /// accept's lookup and its install) is refused, not installed and served for ever.
    #[test]
    fn a_connection_that_arrives_for_a_stopped_peer_is_refused() {
        let ca = DevCa::generate("test").expect("CA");
        let (one, two) = (start(1, &ca), start(2, &ca));
        one.set_peer(2, two.local_addr());
        two.set_peer(1, one.local_addr());
        eventually("connected", || two.connected_peers() == [1]);
        let refused = || {
            two.metrics()
                .handshakes_refused(HandshakeRefusal::UnknownPeer)
        };
        // A dial before node 2 knew node 1 may have been refused already.
        let before = refused();
        let peer = two.shared.peer(1).expect("peer 1");
        peer.stop();
        // Node 1 redials (the lower id dials) and node 2 accepts for the stopped peer.
        eventually("redials refused", || refused() >= before + 2);
        assert!(peer.current().is_none(), "nothing installed after the stop");
    }
}
