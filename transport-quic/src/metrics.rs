//! The transport's counters, as plain atomics read at scrape time: frames rejected and TLS
//! handshakes refused, each by reason; bytes and frames per peer; messages dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel_engine::core::NodeId;
use parking_lot::Mutex;

/// Why a frame or a stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameRejection {
    TooLarge,
    Truncated,
    /// Wrong format version or a malformed header.
    BadHeader,
    /// A frame or stream kind that does not belong where it arrived.
    UnexpectedKind,
    /// The archive failed validation (or pointed outside its frame).
    InvalidArchive,
    /// A message whose `from` is not the authenticated peer.
    WrongSender,
    WrongRecipient,
    /// A stream that sent nothing for too long.
    Idle,
}

impl FrameRejection {
    pub const ALL: [FrameRejection; 8] = [
        Self::TooLarge,
        Self::Truncated,
        Self::BadHeader,
        Self::UnexpectedKind,
        Self::InvalidArchive,
        Self::WrongSender,
        Self::WrongRecipient,
        Self::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Truncated => "truncated",
            Self::BadHeader => "bad_header",
            Self::UnexpectedKind => "unexpected_kind",
            Self::InvalidArchive => "invalid_archive",
            Self::WrongSender => "wrong_sender",
            Self::WrongRecipient => "wrong_recipient",
            Self::Idle => "idle",
        }
    }
}

/// Why a TLS handshake or a freshly authenticated connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandshakeRefusal {
    /// The chain does not lead to the cluster CA.
    UnknownCa,
    /// The certificate has expired or is not yet valid.
    Expired,
    /// The certificate is valid but names another node than the one dialled.
    WrongId,
    /// The certificate names no node this node knows as a peer.
    UnknownPeer,
    /// A peer that should wait to be dialled dialled us (the lower id dials).
    NotDialer,
    /// Any other certificate problem (bad signature, wrong key usage, malformed).
    BadCertificate,
    /// The other side refused us (seen by the side that was refused).
    RefusedByPeer,
    /// The handshake did not finish in time.
    Timeout,
    /// The key-value endpoint already serves `kv_connections_max` clients.
    TooManyClients,
    /// `handshakes_max` handshakes were under way already.
    TooManyHandshakes,
}

impl HandshakeRefusal {
    pub const ALL: [HandshakeRefusal; 10] = [
        Self::UnknownCa,
        Self::Expired,
        Self::WrongId,
        Self::UnknownPeer,
        Self::NotDialer,
        Self::BadCertificate,
        Self::RefusedByPeer,
        Self::Timeout,
        Self::TooManyClients,
        Self::TooManyHandshakes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::WrongId => "wrong_id",
            Self::UnknownPeer => "unknown_peer",
            Self::NotDialer => "not_dialer",
            Self::BadCertificate => "bad_certificate",
            Self::RefusedByPeer => "refused_by_peer",
            Self::Timeout => "timeout",
            Self::TooManyClients => "too_many_clients",
            Self::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

/// Traffic with one peer.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub frames_sent: AtomicU64,
    /// Frames of messages that passed validation (refused ones count in `frames_rejected`).
    pub frames_received: AtomicU64,
    /// Messages dropped because the queue was full or the peer unreachable (Raft retries).
    pub messages_dropped: AtomicU64,
    pub snapshot_chunks_sent: AtomicU64,
    pub snapshot_chunks_received: AtomicU64,
    pub connects: AtomicU64,
}

/// Every counter of one transport. Cheap to share; read with [`TransportMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct TransportMetrics {
    frames_rejected: [AtomicU64; FrameRejection::ALL.len()],
    handshakes_refused: [AtomicU64; HandshakeRefusal::ALL.len()],
    peers: Mutex<BTreeMap<NodeId, Arc<PeerCounters>>>,
    pub(crate) peers_connected: AtomicU64,
    pub(crate) kv_requests: AtomicU64,
    pub(crate) forwards_served: AtomicU64,
    /// Snapshot data in memory now, between disk and network (both directions, all transfers).
    snapshot_bytes_held: AtomicU64,
    snapshot_bytes_held_peak: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub frames_rejected: BTreeMap<&'static str, u64>,
    pub handshakes_refused: BTreeMap<&'static str, u64>,
    pub peers_connected: u64,
    pub kv_requests: u64,
    pub forwards_served: u64,
    /// Snapshot data in memory between disk and network now, and the most ever at once: a few
    /// chunks per transfer, whatever the snapshot's size.
    pub snapshot_bytes_held: u64,
    pub snapshot_bytes_held_peak: u64,
    pub peers: BTreeMap<NodeId, PeerSnapshot>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub messages_dropped: u64,
    pub snapshot_chunks_sent: u64,
    pub snapshot_chunks_received: u64,
    pub connects: u64,
}

fn get(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

pub(crate) fn add(v: &AtomicU64, x: u64) {
    v.fetch_add(x, Ordering::Relaxed);
}

impl TransportMetrics {
    pub(crate) fn frame_rejected(&self, reason: FrameRejection) {
        add(&self.frames_rejected[reason as usize], 1);
    }

    pub(crate) fn snapshot_bytes_held(&self, bytes: u64) {
        let held = self.snapshot_bytes_held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.snapshot_bytes_held_peak
            .fetch_max(held, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_bytes_released(&self, bytes: u64) {
        self.snapshot_bytes_held.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn handshake_refused(&self, reason: HandshakeRefusal) {
        add(&self.handshakes_refused[reason as usize], 1);
    }

    pub fn frames_rejected(&self, reason: FrameRejection) -> u64 {
        get(&self.frames_rejected[reason as usize])
    }

    pub fn handshakes_refused(&self, reason: HandshakeRefusal) -> u64 {
        get(&self.handshakes_refused[reason as usize])
    }

    /// The counters of traffic with `peer` (created on first use).
    pub fn peer(&self, peer: NodeId) -> Arc<PeerCounters> {
        self.peers.lock().entry(peer).or_default().clone()
    }

    /// Drops a removed peer's counters: its series end with it (as the node's per-member
    /// series do). Its stopping tasks may still count into the ones they hold.
    pub(crate) fn forget(&self, peer: NodeId) {
        self.peers.lock().remove(&peer);
    }

    pub fn peers_connected(&self) -> u64 {
        get(&self.peers_connected)
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            frames_rejected: FrameRejection::ALL
                .iter()
                .map(|&r| (r.name(), self.frames_rejected(r)))
                .collect(),
            handshakes_refused: HandshakeRefusal::ALL
                .iter()
                .map(|&r| (r.name(), self.handshakes_refused(r)))
                .collect(),
            peers_connected: self.peers_connected(),
            kv_requests: get(&self.kv_requests),
            forwards_served: get(&self.forwards_served),
            snapshot_bytes_held: get(&self.snapshot_bytes_held),
            snapshot_bytes_held_peak: get(&self.snapshot_bytes_held_peak),
            peers: self
                .peers
                .lock()
                .iter()
                .map(|(&id, c)| {
                    (
                        id,
                        PeerSnapshot {
                            bytes_sent: get(&c.bytes_sent),
                            bytes_received: get(&c.bytes_received),
                            frames_sent: get(&c.frames_sent),
                            frames_received: get(&c.frames_received),
                            messages_dropped: get(&c.messages_dropped),
                            snapshot_chunks_sent: get(&c.snapshot_chunks_sent),
                            snapshot_chunks_received: get(&c.snapshot_chunks_received),
                            connects: get(&c.connects),
                        },
                    )
                })
                .collect(),
        }
    }
}
