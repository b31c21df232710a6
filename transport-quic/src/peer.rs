//! One peer: its connection, two bounded send queues (replication and control) each drained by
//! a writer that coalesces what is waiting into one frame, and — when this node has the lower
//! id — the dialler that (re)connects with backoff.
//!
//! The lower id of a pair dials and the higher accepts, so a pair shares exactly one connection
//! without a tie-break protocol. Both sides open their own streams on it.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::core::{Body, Message, NodeId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::codec;
use crate::frame::{self, FrameError, FrameKind, StreamKind};
use crate::inbound;
use crate::metrics::{add, HandshakeRefusal, PeerCounters};
use crate::shared::{codes, Shared};
use crate::tls;

/// Which stream a message travels on.
pub(crate) fn lane_of(m: &Message) -> StreamKind {
    match m.body {
        Body::Append { .. } | Body::AppendResponse { .. } => StreamKind::Replication,
        _ => StreamKind::Control,
    }
}

pub(crate) struct Peer {
    pub id: NodeId,
    addr: RwLock<SocketAddr>,
    conn: watch::Sender<Option<quinn::Connection>>,
    replication: mpsc::Sender<Message>,
    control: mpsc::Sender<Message>,
    pub counters: Arc<PeerCounters>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by [`Peer::stop`]: a connection that finishes its handshake after that (a dial
    /// already under way, an accept that found the peer just before its removal) is closed,
    /// not installed, or it would stay open and served with nobody to close it.
    stopped: AtomicBool,
}

impl Peer {
    /// Registers a peer and starts its writers (and its dialler if this node dials it).
    pub fn start(shared: &Arc<Shared>, id: NodeId, addr: SocketAddr) -> Arc<Peer> {
        let depth = shared.cfg.peer_queue_messages_max;
        let (replication, replication_rx) = mpsc::channel(depth);
        let (control, control_rx) = mpsc::channel(depth);
        let peer = Arc::new(Peer {
            id,
            addr: RwLock::new(addr),
            conn: watch::Sender::new(None),
            replication,
            control,
            counters: shared.metrics.peer(id),
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let mut tasks = vec![
            shared.handle.spawn(run_lane(
                shared.clone(),
                peer.clone(),
                StreamKind::Replication,
                replication_rx,
            )),
            shared.handle.spawn(run_lane(
                shared.clone(),
                peer.clone(),
                StreamKind::Control,
                control_rx,
            )),
        ];
        if shared.id < id {
            tasks.push(
                shared
                    .handle
                    .spawn(run_dialer(shared.clone(), peer.clone())),
            );
        }
        *peer.tasks.lock() = tasks;
        peer
    }

    pub fn addr(&self) -> SocketAddr {
        *self.addr.read()
    }

    pub fn set_addr(&self, addr: SocketAddr) {
        *self.addr.write() = addr;
    }

    /// The live connection to this peer, if any.
    pub fn current(&self) -> Option<quinn::Connection> {
        self.conn
            .borrow()
            .clone()
            .filter(|c| c.close_reason().is_none())
    }

    /// Queues a message without waiting: a full queue drops it (Raft retries).
    pub fn enqueue(&self, m: Message) {
        let queue = match lane_of(&m) {
            StreamKind::Replication => &self.replication,
            _ => &self.control,
        };
        if queue.try_send(m).is_err() {
            add(&self.counters.messages_dropped, 1);
        }
    }

    /// Makes `conn` this peer's connection (closing any older one) and serves its streams;
    /// false, and `conn` is left to the caller to close, if the peer was stopped.
    #[must_use]
    pub fn install(self: &Arc<Self>, shared: &Arc<Shared>, conn: quinn::Connection) -> bool {
        // Checked under the watch's lock, which `stop` takes after setting the flag: either
        // this sees the flag, or `stop` finds the connection installed and closes it.
        let mut old = None;
        let installed = self.conn.send_if_modified(|current| {
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            old = current.replace(conn.clone());
            true
        });
        if !installed {
            return false;
        }
        add(&self.counters.connects, 1);
        add(&shared.metrics.peers_connected, 1);
        tracing::info!(node = shared.id, peer = self.id, remote = %conn.remote_address(), "peer connected");
        if let Some(old) = old.filter(|old| old.stable_id() != conn.stable_id()) {
            old.close(codes::REPLACED, b"replaced by a newer connection");
        }
        shared.handle.spawn(inbound::serve_connection(
            shared.clone(),
            self.clone(),
            conn,
        ));
        true
    }

    /// The connection ended: forget it if it is still the current one.
    pub fn lost(&self, conn: &quinn::Connection) {
        self.conn.send_if_modified(|c| {
            if c.as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                *c = None;
                true
            } else {
                false
            }
        });
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        if let Some(c) = self.conn.send_replace(None) {
            c.close(codes::SHUTDOWN, b"peer removed");
        }
    }
}

/// Drains one queue: everything waiting (up to the batch limit) becomes one frame, written to
/// this lane's stream. Writes are pipelined: nothing waits for the peer's answers.
async fn run_lane(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    lane: StreamKind,
    mut rx: mpsc::Receiver<Message>,
) {
    let mut stream: Option<(usize, quinn::SendStream)> = None;
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = codec::message_size_bytes(&first);
        batch.push(first);
        while bytes < shared.cfg.batch_bytes_max {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += codec::message_size_bytes(&m);
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = write_batch(&shared, &peer, lane, &mut stream, &batch).await {
            add(&peer.counters.messages_dropped, batch.len() as u64);
            tracing::debug!(node = shared.id, peer = peer.id, ?lane, error = %e, "dropped a batch");
            stream = None;
        }
        batch.clear();
    }
}

async fn write_batch(
    shared: &Shared,
    peer: &Peer,
    lane: StreamKind,
    stream: &mut Option<(usize, quinn::SendStream)>,
    batch: &[Message],
) -> Result<(), FrameError> {
    let conn = peer
        .current()
        .ok_or_else(|| FrameError::Io("not connected".into()))?;
    if stream.as_ref().map(|(id, _)| *id) != Some(conn.stable_id()) {
        let mut s = tokio::time::timeout(shared.cfg.handshake_timeout, conn.open_uni())
            .await
            .map_err(|_| FrameError::Io("no stream credit".into()))?
            .map_err(|e| FrameError::Io(e.to_string()))?;
        if lane == StreamKind::Control {
            // Votes and heartbeats go first when both streams have data queued.
            let _ = s.set_priority(1);
        }
        s.write_all(&[lane as u8])
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        *stream = Some((conn.stable_id(), s));
    }
    let body = codec::encode_batch(batch)?;
    if body.len() > shared.cfg.frame_bytes_max {
        return Err(FrameError::TooLarge {
            body_bytes: body.len(),
            max_bytes: shared.cfg.frame_bytes_max,
        });
    }
    let (_, s) = stream
        .as_mut()
        .ok_or_else(|| FrameError::Io("no stream".into()))?;
    let n = frame::write_frame(s, FrameKind::Messages, body).await?;
    add(&peer.counters.bytes_sent, n as u64);
    add(&peer.counters.frames_sent, 1);
    Ok(())
}

/// A little randomness for backoff jitter, without a random-number dependency.
fn jitter(max: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(r % max_ms)
}

/// Keeps a connection to a peer this node dials: waits while one is up, redials with
/// exponential backoff (and jitter) while the peer is away.
async fn run_dialer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let (min, max) = (
        shared.cfg.reconnect_backoff_min,
        shared.cfg.reconnect_backoff_max,
    );
    let mut backoff = min;
    loop {
        if let Some(conn) = peer.current() {
            let since = std::time::Instant::now();
            conn.closed().await;
            peer.lost(&conn);
            // A connection refused or dropped right after the handshake counts as a failed
            // attempt: back off rather than spin.
            if since.elapsed() < max {
                tokio::time::sleep(backoff + jitter(backoff / 2)).await;
                backoff = (backoff * 2).min(max);
            } else {
                backoff = min;
            }
            continue;
        }
        match dial(&shared, &peer).await {
            Ok(conn) => {
                if !peer.install(&shared, conn.clone()) {
                    // Stopped while dialling: this task is being aborted.
                    conn.close(codes::SHUTDOWN, b"peer removed");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(node = shared.id, peer = peer.id, error = %e, ?backoff, "dial failed");
                tokio::time::sleep(backoff + jitter(backoff / 2)).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

async fn dial(shared: &Shared, peer: &Peer) -> Result<quinn::Connection, String> {
    let endpoint = shared.endpoint().ok_or("shut down")?;
    let connecting = endpoint
        .connect_with(
            shared.peer_client.clone(),
            peer.addr(),
            &tls::server_name_of(peer.id),
        )
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(shared.cfg.handshake_timeout, connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| {
            // Our own verifier already counted a refusal of the peer's certificate; here we
            // learn that the peer refused ours.
            if refused_by_peer(&e) {
                shared
                    .metrics
                    .handshake_refused(HandshakeRefusal::RefusedByPeer);
                tracing::warn!(node = shared.id, peer = peer.id, error = %e, "the peer refused us");
            }
            e.to_string()
        })?;
    Ok(conn)
}

/// Whether a failed handshake means the peer refused us (a TLS alert, or keel's refusal after
/// the handshake), as opposed to an unreachable or stopping peer.
pub(crate) fn refused_by_peer(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            // TLS alerts travel as the QUIC CRYPTO_ERROR range 0x100..=0x1ff.
            (0x100..=0x1ff).contains(&u64::from(close.error_code))
        }
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code == codes::REFUSED,
        _ => false,
    }
}
