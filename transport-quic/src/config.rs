//! How a QUIC transport runs: who it is, whom it trusts, where its peers are, and its limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use keel_engine::core::NodeId;
use rustls::pki_types::CertificateDer;

use crate::certs::Identity;

/// A node's transport configuration. [`QuicConfig::new`] gives defaults for a LAN.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    pub id: NodeId,
    /// The UDP address the node's one endpoint binds (peers and clients both reach it here).
    pub listen: SocketAddr,
    /// Every other node and where it listens. The lower id of a pair dials; the higher accepts.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where clients reach a node, when not where this node sends it Raft traffic (a node behind
    /// NAT or a proxy): leader hints name these. Nodes missing here are hinted at their `peers`
    /// address, and this node at its `listen` address.
    pub advertise: BTreeMap<NodeId, SocketAddr>,
    /// This node's certificate (naming `node-<id>.keel`) and key.
    pub identity: Identity,
    /// The cluster CA: the only issuer trusted, for peers and clients.
    pub ca: Vec<CertificateDer<'static>>,
    /// A frame body larger than this is refused before anything is allocated for it.
    pub frame_bytes_max: usize,
    /// Messages to one peer coalesced into one frame, at most this many bytes.
    pub batch_bytes_max: usize,
    /// Messages waiting for one peer per stream; beyond this new ones are dropped (Raft retries).
    pub peer_queue_messages_max: usize,
    /// Snapshot data travels in chunk frames of this size, under QUIC flow control.
    pub snapshot_chunk_bytes: usize,
    /// A snapshot announcing more than this is refused.
    pub snapshot_bytes_max: u64,
    /// Reconnection backoff: doubles from `min` up to `max` while a peer stays unreachable.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// A connection with no traffic for this long is dead (keep-alives run at a third of it).
    pub idle_timeout: Duration,
    /// A handshake, a stream's first byte, a client's request, a forwarded proposal, or a
    /// snapshot offer must arrive whole within this, and a client must take its answer within it.
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    /// Streams a peer may have open towards this node at once (a flood waits for credit).
    pub streams_uni_max: u32,
    pub streams_bidi_max: u32,
    /// Connections being handshaken at once; beyond this new ones are refused (counted as
    /// `too_many_handshakes`).
    pub handshakes_max: usize,
    /// Key-value client connections served at once; beyond this new ones are refused.
    pub kv_connections_max: usize,
    /// Bytes of key-value requests held at once, across every client connection: each request's
    /// bytes as they arrive, until it is executed (not until its answer is taken: a client that
    /// never reads its answers would hold them for good). A request that finds no room stops
    /// being read (QUIC flow control then holds its sender back) until there is, within
    /// `handshake_timeout`. Without this bound, clients could make a node hold
    /// `max_proposal_bytes` on every stream of every connection; counting what a header only
    /// announces would let headers alone hold the whole budget. When it is full, one request at
    /// a time that holds part of it reads the rest of its body past it, so that requests that
    /// each hold part of a full budget never wait for each other: the bytes held can exceed the
    /// budget by one request.
    pub kv_request_bytes_max: usize,
    /// Whether a key-value write that reaches a follower is forwarded to the leader and
    /// answered from there (a client then needs only one node's address), instead of refused
    /// with a leader hint for the client to follow. Off by default: following the hint costs
    /// one round trip once, forwarding one peer hop on every write (and a client that follows
    /// hints takes a follower that answered for the leader, so its writes all take that hop).
    pub kv_forward_writes: bool,
    /// Threads of the transport's own tokio runtime (at least 1; it must be multi-threaded).
    /// One by default: a node's traffic is one driver's, and a second thread mostly added
    /// wake-ups between the two (on the 2-core VM, one gave a 1-client p50 of 0.435-0.439 ms
    /// where two gave 0.457-0.473, and the same peak throughput). Raise it for many peers or
    /// many key-value clients on a large machine.
    pub runtime_threads: usize,
}

/// `QuicConfig::frame_bytes_max` unless set otherwise: the largest frame a node reads.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;

impl QuicConfig {
    pub fn new(
        id: NodeId,
        listen: SocketAddr,
        identity: Identity,
        ca: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self {
            id,
            listen,
            peers: BTreeMap::new(),
            advertise: BTreeMap::new(),
            identity,
            ca,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            batch_bytes_max: 4 << 20,
            peer_queue_messages_max: 4096,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_max: 16 << 30,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            streams_uni_max: 16,
            streams_bidi_max: 256,
            handshakes_max: 256,
            kv_connections_max: 1024,
            kv_request_bytes_max: 256 << 20,
            kv_forward_writes: false,
            runtime_threads: 1,
        }
    }

    pub fn with_peer(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(id, addr);
        self
    }

    /// Clients are told to reach node `id` at `addr` (see [`QuicConfig::advertise`]).
    pub fn with_advertised(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.advertise.insert(id, addr);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id 0 is reserved".into());
        }
        if self.peers.contains_key(&self.id) {
            return Err("a node is not its own peer".into());
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > self.frame_bytes_max {
            return Err("snapshot_chunk_bytes must be in 1..=frame_bytes_max".into());
        }
        if self.batch_bytes_max > self.frame_bytes_max / 2 {
            return Err("batch_bytes_max must leave room in a frame (at most half of it)".into());
        }
        if self.runtime_threads == 0
            || self.peer_queue_messages_max == 0
            || self.handshakes_max == 0
        {
            return Err("runtime_threads and peer_queue_messages_max must be at least 1".into());
        }
        if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&self.kv_request_bytes_max) {
            return Err(
                "kv_request_bytes_max must be at least 1 (and at most usize::MAX >> 3)".into(),
            );
        }
        if self.reconnect_backoff_min.is_zero() || self.idle_timeout.is_zero() {
            return Err("backoff and idle timeout must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn transport_config(&self) -> Result<quinn::TransportConfig, String> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|e| e.to_string())?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(self.idle_timeout / 3));
        t.max_concurrent_uni_streams(self.streams_uni_max.into());
        t.max_concurrent_bidi_streams(self.streams_bidi_max.into());
        Ok(t)
    }
}
