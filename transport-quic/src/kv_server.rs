//! The key-value endpoint: clients connect with the `keel-kv/1` ALPN and a certificate from the
//! cluster CA, and send one request per bidirectional stream: propose a command, or read a key
//! at a consistency level. A node that cannot serve the request (a proposal on a follower, a
//! lease read without the lease) answers `NotLeader` with the leader's id and address.

use std::sync::Arc;

use bytes::Bytes;
use keel_engine::kv::{Consistency, KvStore};
use keel_engine::node::{Error as NodeError, Node};

use crate::forward::leader_addr;
use crate::frame::{self, FrameError, FrameKind};
use crate::metrics::add;
use crate::shared::Shared;
use crate::wire::{ArchivedWireKvRequest, WireError, WireKvResponse};

/// What a request adds to the command it carries: its archive's framing and a read's key
/// (a key is part of the command in a write).
const REQUEST_OVERHEAD_BYTES: usize = 4 << 10;

/// Serves a client connection's requests until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        shared.handle.clone().spawn(async move {
            if let Err(e) = serve_request(&shared, send, &mut recv).await {
                shared.reject(None, &mut recv, &e);
            }
        });
    }
}

async fn serve_request(
    shared: &Shared,
    mut send: quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), FrameError> {
    let node = shared.kv.read().as_ref().and_then(|w| w.upgrade());
    // No larger than the largest command the node takes, so that a client cannot make it hold
    // frames of up to `frame_bytes_max` (16 MiB) on each of its streams only to refuse them.
    let max_body_bytes = node.as_ref().map_or(shared.cfg.frame_bytes_max, |n| {
        n.config()
            .max_proposal_bytes
            .saturating_add(REQUEST_OVERHEAD_BYTES)
            .min(shared.cfg.frame_bytes_max)
    });
    let request = shared
        .within_handshake(read_request(shared, recv, max_body_bytes))
        .await;
    // Held until the request is executed: its body lives that long.
    let (request, room) = match request {
        Ok(request) => request,
        Err(e) => {
            if let Some(too_large) = e.as_too_large() {
                refuse(shared, &mut send, &too_large).await;
            }
            return Err(e);
        }
    };
    add(&shared.metrics.kv_requests, 1);
    let archived = match frame::access::<ArchivedWireKvRequest>(&request.body) {
        Ok(archived) => archived,
        Err(e) => {
            drop(room); // As before any answer: the client may never take it.
            let malformed = NodeError::Config(format!("malformed key-value request: {e}"));
            refuse(shared, &mut send, &malformed).await;
            return Err(e);
        }
    };
    let response = match node {
        // Refused, not `Stopped`: a client hears that as "may have been applied".
        None => Err(NodeError::Config(
            "this node serves no key-value store".into(),
        )),
        Some(node) => execute(shared, &node, archived, &request.body).await,
    };
    let response = response.unwrap_or_else(|e| WireKvResponse::Failed {
        error: WireError::from_node(&e, leader_addr(shared, &e)),
    });
    // The room goes back before the answer is written: a client that never reads its answers
    // would otherwise hold the budget for good.
    drop((request, room));
    answer(shared, &mut send, &response).await
}

/// Writes the answer to a request and finishes the stream. The client must take it within the
/// handshake timeout, as a request must arrive within it: one that never reads its answers
/// would hold the stream and its buffer for good. A stream whose answer was not taken is reset.
async fn answer(
    shared: &Shared,
    send: &mut quinn::SendStream,
    response: &WireKvResponse,
) -> Result<(), FrameError> {
    let body = frame::archive(response)?;
    let written = shared
        .within_handshake(frame::write_frame(send, FrameKind::KvResponse, body))
        .await;
    match written {
        Ok(_) => {
            let _ = send.finish();
            Ok(())
        }
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(0));
            Err(e)
        }
    }
}

/// What a request holds until it is executed: its body lives that long.
struct Room<'a> {
    /// Its bytes' share of the request budget.
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
    /// Held by the one request whose body was read past a full budget (see `read_request`).
    _past_the_budget: Option<tokio::sync::MutexGuard<'a, ()>>,
}

/// Reads a request, taking room for its bytes as they arrive (see `kv_request_bytes_max`), and
/// the room it holds. Room for what a header only announces would let a client that sends
/// headers alone hold the whole budget.
///
/// Requests that each hold part of a full budget would each wait for room only the others
/// hold, until all were given up on. So a request that holds room and finds none left may read
/// the rest of its body past the budget instead, one request at a time (until it is executed):
/// that one always finishes and lets go, and the budget is exceeded by one request at most.
async fn read_request<'a>(
    shared: &'a Shared,
    recv: &mut quinn::RecvStream,
    max_body_bytes: usize,
) -> Result<(frame::Frame, Room<'a>), FrameError> {
    let header = frame::read_header(recv, max_body_bytes)
        .await?
        .ok_or(FrameError::Truncated)?;
    if header.kind != FrameKind::KvRequest {
        return Err(FrameError::UnexpectedKind(header.kind as u8));
    }
    let mut room: Option<tokio::sync::SemaphorePermit<'a>> = None;
    let mut past_the_budget = None;
    let mut body = frame::BodyReader::new(header);
    let closed = |_| FrameError::Io("the request budget was closed".into());
    // Each chunk is taken from the stream before its room: a stream holds at most one chunk
    // (QUIC's, not the request's size) beyond the budget while it waits.
    while let Some(bytes) = body.read_chunk(recv).await? {
        // A request larger than the whole budget holds all of it at most.
        let held = room.as_ref().map_or(0, |r| r.num_permits());
        let more = bytes.min(shared.cfg.kv_request_bytes_max - held);
        if more == 0 || past_the_budget.is_some() {
            continue;
        }
        let more = u32::try_from(more).unwrap_or(u32::MAX);
        let budget = &shared.kv_request_bytes;
        let permit = match budget.try_acquire_many(more) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::NoPermits) if room.is_some() => {
                tokio::select! {
                    biased;
                    permit = budget.acquire_many(more) => permit.map_err(closed)?,
                    token = shared.kv_past_the_budget.lock() => {
                        past_the_budget = Some(token);
                        continue;
                    }
                }
            }
            Err(_) => budget.acquire_many(more).await.map_err(closed)?,
        };
        match &mut room {
            Some(r) => r.merge(permit),
            None => room = Some(permit),
        }
    }
    let room = Room {
        _permit: room,
        _past_the_budget: past_the_budget,
    };
    Ok((body.finish(), room))
}

/// Answers a request refused before it could execute. Saying so lets the client report a
/// definite failure (a write left unanswered is indeterminate to it); the stream is still closed
/// and counted as rejected, whatever becomes of the answer.
async fn refuse(shared: &Shared, send: &mut quinn::SendStream, error: &NodeError) {
    let refused = WireKvResponse::Failed {
        error: WireError::from_node(error, None),
    };
    let _ = answer(shared, send, &refused).await;
}

async fn execute(
    shared: &Shared,
    node: &Node<KvStore>,
    request: &ArchivedWireKvRequest,
    frame_body: &Bytes,
) -> Result<WireKvResponse, NodeError> {
    let timeout = shared.cfg.request_timeout;
    match request {
        ArchivedWireKvRequest::Propose { command } => {
            let command = crate::wire::slice_in_frame(frame_body, command)
                .map_err(|e| NodeError::Config(e.to_string()))?;
            // A full proposal queue is back-pressure: wait for room, off this worker. (A
            // forwarded write never waits: it only hands the command to the transport.)
            let proposal = if shared.cfg.kv_forward_writes {
                match node.try_propose_forwarded(command) {
                    Ok(proposal) => proposal,
                    Err(command) => shared.blocking(|| node.propose_forwarded(command)).await,
                }
            } else {
                match node.try_propose(command) {
                    Ok(proposal) => proposal,
                    Err(command) => shared.blocking(|| node.propose(command)).await,
                }
            };
            let (_, applied) = proposal.into_parts();
            let applied = within(tokio::time::timeout(timeout, applied).await)?;
            Ok(WireKvResponse::Applied {
                index: applied.index,
                response: applied.response,
            })
        }
        ArchivedWireKvRequest::Read { key, consistency } => {
            match consistency_of(*consistency) {
                Some(Consistency::Linearizable) => {
                    within(tokio::time::timeout(timeout, node.read_index()).await)?;
                }
                Some(Consistency::Lease) => {
                    within(tokio::time::timeout(timeout, node.lease_read()).await)?;
                }
                Some(Consistency::Local) => {}
                None => return Err(NodeError::Config("unknown consistency level".into())),
            }
            // The applier holds the state machine for each batch it applies, and for the whole
            // of a snapshot's restore: waiting for it here would stop every task on this
            // worker, the node's peer traffic too.
            let value = node.try_state_machine().map(|sm| sm.get(key.as_slice()));
            let value = match value {
                Some(value) => value,
                None => {
                    shared
                        .blocking(|| node.state_machine().get(key.as_slice()))
                        .await
                }
            };
            Ok(WireKvResponse::Value { value })
        }
    }
}

/// A timed-out wait is the node's `Timeout`.
fn within<T>(r: Result<Result<T, NodeError>, tokio::time::error::Elapsed>) -> Result<T, NodeError> {
    r.unwrap_or(Err(NodeError::Timeout))
}

pub(crate) fn consistency_code(c: Consistency) -> u8 {
    match c {
        Consistency::Linearizable => 0,
        Consistency::Lease => 1,
        Consistency::Local => 2,
    }
}

fn consistency_of(code: u8) -> Option<Consistency> {
    Some(match code {
        0 => Consistency::Linearizable,
        1 => Consistency::Lease,
        2 => Consistency::Local,
        _ => return None,
    })
}
