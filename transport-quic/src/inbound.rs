//! What arrives: the accept loop (authenticating every connection before anything is read from
//! it), and per connection the streams a peer opens, each read on a task of its own so a bad or
//! slow stream never holds up another.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use keel_engine::core::NodeId;

use crate::codec;
use crate::frame::{self, FrameError, StreamKind, HEADER_BYTES};
use crate::kv_server;
use crate::metrics::{add, HandshakeRefusal};
use crate::peer::Peer;
use crate::shared::{codes, Shared};
use crate::tls::{self, KV_ALPN, PEER_ALPN};
use crate::{forward, snapshot};

/// Accepts connections until the endpoint closes, at most `handshakes_max` handshakes at once:
/// each costs a key exchange and a task for up to the handshake timeout, and anyone can start
/// one. (quinn's `max_incoming` counts only connections not yet accepted, which here is none.)
/// While the handshakes are full, a dialler must first prove its address (a stateless retry):
/// packets from forged addresses then hold no turn, and cannot keep genuine peers out.
pub(crate) async fn run_acceptor(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(shared.cfg.handshakes_max));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(turn) = handshakes.clone().try_acquire_owned() else {
            let incoming = if !incoming.remote_address_validated() && incoming.may_retry() {
                match incoming.retry() {
                    Ok(()) => continue,
                    Err(e) => e.into_incoming(),
                }
            } else {
                incoming
            };
            shared
                .metrics
                .handshake_refused(HandshakeRefusal::TooManyHandshakes);
            // Counted, not logged at warn: a flood would flood the log too.
            tracing::debug!(
                node = shared.id,
                remote = %incoming.remote_address(),
                "refused a connection: too many handshakes under way"
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        shared
            .handle
            .clone()
            .spawn(handle_incoming(shared, incoming, turn));
    }
}

async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    handshake: tokio::sync::OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let handshaken = tokio::time::timeout(shared.cfg.handshake_timeout, incoming).await;
    drop(handshake);
    let conn = match handshaken {
        Err(_) => {
            shared.metrics.handshake_refused(HandshakeRefusal::Timeout);
            tracing::warn!(node = shared.id, %remote, "a handshake did not finish in time");
            return;
        }
        // A refused certificate was counted and logged by the verifier.
        Ok(Err(e)) => {
            tracing::debug!(node = shared.id, %remote, error = %e, "handshake failed");
            return;
        }
        Ok(Ok(conn)) => conn,
    };
    match tls::alpn_of(&conn).as_deref() {
        Some(PEER_ALPN) => accept_peer(&shared, conn),
        Some(KV_ALPN) => {
            let served = &shared.kv_connections;
            if served.fetch_add(1, Ordering::AcqRel) >= shared.cfg.kv_connections_max {
                shared.refuse(
                    &conn,
                    HandshakeRefusal::TooManyClients,
                    "client limit reached",
                );
            } else {
                kv_server::serve(shared.clone(), conn).await;
            }
            served.fetch_sub(1, Ordering::AcqRel);
        }
        _ => shared.refuse(&conn, HandshakeRefusal::BadCertificate, "no known ALPN"),
    }
}

/// A dialler's certificate passed the chain check; now it must name exactly one known peer, and
/// one with a lower id than ours (the lower id dials).
fn accept_peer(shared: &Arc<Shared>, conn: quinn::Connection) {
    let Some(leaf) = tls::peer_leaf(&conn) else {
        return shared.refuse(&conn, HandshakeRefusal::BadCertificate, "no certificate");
    };
    let known: Vec<NodeId> = shared.peers.read().keys().copied().collect();
    let Some(id) = tls::identify_node(&leaf, known) else {
        return shared.refuse(
            &conn,
            HandshakeRefusal::UnknownPeer,
            "the certificate names no known peer",
        );
    };
    if id > shared.id {
        return shared.refuse(
            &conn,
            HandshakeRefusal::NotDialer,
            "a higher id dialled; the lower id of a pair dials",
        );
    }
    // The peer may be removed between the lookup and the install: `install` refuses then.
    let installed = shared
        .peer(id)
        .is_some_and(|peer| peer.install(shared, conn.clone()));
    if !installed {
        shared.refuse(&conn, HandshakeRefusal::UnknownPeer, "peer removed");
    }
}

/// Serves the streams a peer opens on `conn` until it closes.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
) {
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    shared.handle.spawn(read_uni(shared.clone(), peer.clone(), recv));
                }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    shared.handle.spawn(serve_bi(shared.clone(), peer.clone(), send, recv));
                }
                Err(_) => break,
            },
        }
    }
    let reason = conn.closed().await;
    if let quinn::ConnectionError::ApplicationClosed(close) = &reason {
        if close.error_code == codes::REFUSED {
            shared
                .metrics
                .handshake_refused(HandshakeRefusal::RefusedByPeer);
            tracing::warn!(node = shared.id, peer = peer.id, reason = ?close.reason, "the peer refused us");
        }
    }
    tracing::info!(node = shared.id, peer = peer.id, %reason, "peer connection closed");
    peer.lost(&conn);
    shared
        .metrics
        .peers_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn read_uni(shared: Arc<Shared>, peer: Arc<Peer>, mut recv: quinn::RecvStream) {
    let result = match shared.read_stream_kind(&mut recv).await {
        Ok(k) => match StreamKind::from_u8(k) {
            Some(StreamKind::Replication | StreamKind::Control) => {
                read_messages(&shared, &peer, &mut recv).await
            }
            _ => Err(FrameError::UnknownStream(k)),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        shared.reject(Some(peer.id), &mut recv, &e);
    }
}

/// Reads `Messages` frames until the stream ends; each is validated, held to the peer's
/// authenticated id, and handed to the node. The first bad frame ends the stream.
async fn read_messages(
    shared: &Shared,
    peer: &Peer,
    recv: &mut quinn::RecvStream,
) -> Result<(), FrameError> {
    while let Some(frame) = frame::read_frame(recv, shared.cfg.frame_bytes_max).await? {
        add(
            &peer.counters.bytes_received,
            (HEADER_BYTES + frame.body.len()) as u64,
        );
        let messages = codec::decode_batch(&frame, peer.id, shared.id)?;
        add(&peer.counters.frames_received, 1);
        if let Some(inbox) = shared.inbox() {
            for m in messages {
                inbox.deliver(m);
            }
        }
    }
    Ok(())
}

async fn serve_bi(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = match shared.read_stream_kind(&mut recv).await {
        Ok(k) => match StreamKind::from_u8(k) {
            Some(StreamKind::Snapshot) => snapshot::receive(&shared, &peer, send, &mut recv).await,
            Some(StreamKind::Forward) => forward::serve(&shared, &peer, send, &mut recv).await,
            _ => Err(FrameError::UnknownStream(k)),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        shared.reject(Some(peer.id), &mut recv, &e);
    }
}
