//! The state every task of one transport shares.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use keel_engine::core::NodeId;
use keel_engine::kv::KvStore;
use keel_engine::node::{Inbox, Node};
use parking_lot::{Mutex, RwLock};

use crate::config::QuicConfig;
use crate::frame::FrameError;
use crate::metrics::{HandshakeRefusal, TransportMetrics};
use crate::peer::Peer;

/// QUIC application error codes keel closes connections and streams with.
pub(crate) mod codes {
    use quinn::VarInt;
    /// The node stopped.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// A newer connection from the same peer took this one's place.
    pub const REPLACED: VarInt = VarInt::from_u32(2);
    /// The peer's identity was refused after the handshake (the reason is in the close frame).
    pub const REFUSED: VarInt = VarInt::from_u32(3);
    /// A stream carried a frame that was refused.
    pub const REJECTED: VarInt = VarInt::from_u32(4);
}

/// Calls that may block (a proposal into a full queue, a read of a state machine the applier
/// holds) running at once, each on a thread of its own. More wait for a turn without a thread:
/// a node restoring a large snapshot would otherwise tie one thread to every read waiting for it.
pub const BLOCKING_CALLS_MAX: usize = 4;

pub(crate) struct Shared {
    pub id: NodeId,
    pub cfg: QuicConfig,
    /// `None` once shut down: the socket closes when the last handle goes.
    pub endpoint: Mutex<Option<quinn::Endpoint>>,
    pub peer_client: quinn::ClientConfig,
    pub inbox: RwLock<Option<Inbox>>,
    pub peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    pub metrics: Arc<TransportMetrics>,
    pub kv: RwLock<Option<Weak<Node<KvStore>>>>,
    /// Key-value client connections being served now.
    pub kv_connections: std::sync::atomic::AtomicUsize,
    /// Room for key-value requests held, one permit per byte (`kv_request_bytes_max`).
    pub kv_request_bytes: tokio::sync::Semaphore,
    /// Held by the one request reading past a full budget (see `kv_server::read_request`).
    pub kv_past_the_budget: tokio::sync::Mutex<()>,
    /// One permit per call blocking a thread of its own ([`BLOCKING_CALLS_MAX`]).
    pub blocking_calls: tokio::sync::Semaphore,
    pub handle: tokio::runtime::Handle,
}

impl Shared {
    pub fn inbox(&self) -> Option<Inbox> {
        self.inbox.read().clone()
    }

    pub fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint.lock().clone()
    }

    pub fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.read().get(&id).cloned()
    }

    /// Where node `id` listens, as this node knows it (for leader hints to clients).
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        if let Some(&advertised) = self.cfg.advertise.get(&id) {
            return Some(advertised);
        }
        if id == self.id {
            return self.endpoint().and_then(|e| e.local_addr().ok());
        }
        self.peer(id).map(|p| p.addr())
    }

    /// Closes a freshly authenticated connection this node will not talk to.
    pub fn refuse(&self, conn: &quinn::Connection, reason: HandshakeRefusal, detail: &str) {
        self.metrics.handshake_refused(reason);
        tracing::warn!(
            node = self.id,
            remote = %conn.remote_address(),
            reason = reason.name(),
            detail,
            "refused a connection"
        );
        conn.close(codes::REFUSED, reason.name().as_bytes());
    }

    /// Counts and logs a refused frame and closes the stream it came on; never panics, never
    /// touches other streams.
    pub fn reject(&self, peer: Option<NodeId>, recv: &mut quinn::RecvStream, e: &FrameError) {
        match e.rejection() {
            Some(reason) => {
                self.metrics.frame_rejected(reason);
                tracing::warn!(
                    node = self.id,
                    ?peer,
                    reason = reason.name(),
                    error = %e,
                    "refused a frame; closing its stream"
                );
            }
            None => tracing::debug!(node = self.id, ?peer, error = %e, "stream ended"),
        }
        let _ = recv.stop(codes::REJECTED);
    }

    /// Runs `call`, which may block, on a thread of its own (`block_in_place`: this worker's
    /// other tasks move to another), once fewer than [`BLOCKING_CALLS_MAX`] calls run. Only for
    /// a call that would block: each costs a thread hand-off.
    pub async fn blocking<T>(&self, call: impl FnOnce() -> T) -> T {
        // Never closed; were it, the call would simply run without a turn.
        let _turn = self.blocking_calls.acquire().await.ok();
        tokio::task::block_in_place(call)
    }

    /// `read` bounded by the handshake timeout (`Idle` past it): a peer or client that stalls
    /// inside a frame would otherwise hold its stream, and the buffer it fills, for good.
    pub async fn within_handshake<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, FrameError>>,
    ) -> Result<T, FrameError> {
        tokio::time::timeout(self.cfg.handshake_timeout, read)
            .await
            .map_err(|_| FrameError::Idle)?
    }

    /// Reads a stream's first byte (what it carries), within the handshake timeout so an idle
    /// stream cannot hold a stream slot forever.
    pub async fn read_stream_kind(&self, recv: &mut quinn::RecvStream) -> Result<u8, FrameError> {
        let mut kind = [0u8; 1];
        match tokio::time::timeout(self.cfg.handshake_timeout, recv.read_exact(&mut kind)).await {
            Err(_) => Err(FrameError::Idle),
            Ok(Ok(())) => Ok(kind[0]),
            Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => Err(FrameError::Truncated),
            Ok(Err(quinn::ReadExactError::ReadError(e))) => Err(FrameError::Io(e.to_string())),
        }
    }
}
