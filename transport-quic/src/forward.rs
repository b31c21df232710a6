//! Forwarded proposals: a follower opens a stream to the leader's node with the command; the
//! leader proposes it there and answers with `Committed` as soon as it commits, then `Applied`
//! with the state machine's response (or `Failed`, with a leader hint, at any point). The
//! follower completes its caller's `ProposalReply` from those frames.

use bytes::Bytes;
use keel_engine::core::NodeId;
use keel_engine::node::{AppliedReply, Error as NodeError, ProposalReply};

use crate::frame::{self, FrameError, FrameKind, StreamKind};
use crate::metrics::add;
use crate::peer::Peer;
use crate::shared::Shared;
use crate::wire::{self, ArchivedWireForwardReply, WireError, WireForwardReply};

/// Sends `command` to `leader` and completes `reply` with what comes back. Never panics; a
/// failure of the stream completes the caller with an error.
pub(crate) async fn send(shared: &Shared, leader: NodeId, command: Bytes, reply: ProposalReply) {
    let not_reachable = || NodeError::NotLeader {
        leader: Some(leader),
        term: 0,
    };
    let Some(conn) = shared.peer(leader).and_then(|p| p.current()) else {
        return reply.fail(not_reachable());
    };
    let mut state = ReplyState::Waiting(reply);
    // Whether any of the command may have reached the leader.
    let mut sent = false;
    let exchange = relay(shared, &conn, command, &mut state, &mut sent);
    let outcome = tokio::time::timeout(shared.cfg.request_timeout, exchange).await;
    let error = match outcome {
        Ok(Ok(())) => return,
        // Committed (the caller heard so), only the state machine's response is lost.
        Ok(Err(e)) if matches!(state, ReplyState::Committed(_)) => NodeError::Stopped {
            reason: format!("forwarding to node {leader} failed after the commit: {e}"),
        },
        // The leader may have proposed it: its outcome is unknown here, not failed (a caller
        // told the forward failed could retry what gets applied).
        Ok(Err(e)) if sent => {
            tracing::debug!(leader, error = %e, "a forwarded proposal's answer was lost");
            NodeError::OutcomeUnknown
        }
        Ok(Err(_)) => not_reachable(),
        Err(_) => NodeError::Timeout,
    };
    state.fail(error);
}

/// How far a forwarded proposal's reply got.
enum ReplyState {
    Waiting(ProposalReply),
    Committed(AppliedReply),
    Done,
}

impl ReplyState {
    fn fail(&mut self, error: NodeError) {
        match std::mem::replace(self, ReplyState::Done) {
            ReplyState::Waiting(r) => r.fail(error),
            ReplyState::Committed(a) => a.complete(Err(error)),
            ReplyState::Done => {}
        }
    }
}

async fn relay(
    shared: &Shared,
    conn: &quinn::Connection,
    command: Bytes,
    state: &mut ReplyState,
    sent: &mut bool,
) -> Result<(), FrameError> {
    let io = |e: &dyn std::fmt::Display| FrameError::Io(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
    send.write_all(&[StreamKind::Forward as u8])
        .await
        .map_err(|e| io(&e))?;
    *sent = true;
    frame::write_frame(&mut send, FrameKind::ForwardRequest, command).await?;
    send.finish().map_err(|e| io(&e))?;
    loop {
        let f = frame::expect_frame(
            &mut recv,
            FrameKind::ForwardReply,
            shared.cfg.frame_bytes_max,
        )
        .await?;
        match frame::access::<ArchivedWireForwardReply>(&f.body)? {
            ArchivedWireForwardReply::Committed { index, term } => {
                if let ReplyState::Waiting(r) = std::mem::replace(state, ReplyState::Done) {
                    *state = ReplyState::Committed(r.commit(wire::committed_of(index, term)));
                }
            }
            ArchivedWireForwardReply::Applied {
                index,
                term,
                response,
            } => {
                let applied = wire::applied_of(index, term, response, &f.body)?;
                match std::mem::replace(state, ReplyState::Done) {
                    ReplyState::Waiting(r) => r
                        .commit(wire::committed_of(index, term))
                        .complete(Ok(applied)),
                    ReplyState::Committed(a) => a.complete(Ok(applied)),
                    ReplyState::Done => {}
                }
                return Ok(());
            }
            ArchivedWireForwardReply::Failed { error } => {
                state.fail(error.to_node());
                return Ok(());
            }
        }
    }
}

/// Serves one forwarded proposal from `peer` on this (leader's) node.
pub(crate) async fn serve(
    shared: &Shared,
    peer: &Peer,
    mut send: quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), FrameError> {
    let failed = |e: &NodeError| WireForwardReply::Failed {
        error: WireError::from_node(e, leader_addr(shared, e)),
    };
    // No larger than the largest command the node takes: a peer could otherwise have it hold
    // frames of up to `frame_bytes_max` (16 MiB) on each of its streams only to refuse them.
    let inbox = shared.inbox();
    let max_body_bytes = inbox.as_ref().map_or(shared.cfg.frame_bytes_max, |inbox| {
        inbox.max_proposal_bytes().min(shared.cfg.frame_bytes_max)
    });
    let request = shared
        .within_handshake(frame::expect_frame(
            recv,
            FrameKind::ForwardRequest,
            max_body_bytes,
        ))
        .await;
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            if let Some(too_large) = e.as_too_large() {
                let too_large = failed(&too_large);
                let _ = shared
                    .within_handshake(frame::write_frame(
                        &mut send,
                        FrameKind::ForwardReply,
                        frame::archive(&too_large)?,
                    ))
                    .await;
            }
            return Err(e);
        }
    };
    add(&shared.metrics.forwards_served, 1);
    add(
        &peer.counters.bytes_received,
        (frame::HEADER_BYTES + request.body.len()) as u64,
    );
    let Some(inbox) = inbox else {
        let reply = failed(&NodeError::Stopped {
            reason: "the node stopped".into(),
        });
        frame::write_frame(&mut send, FrameKind::ForwardReply, frame::archive(&reply)?).await?;
        return Ok(());
    };
    let (proposal, reply) = ProposalReply::new();
    // A full proposal queue is back-pressure: wait for room, off this worker.
    if let Err((command, reply)) = inbox.try_propose(request.body, reply) {
        shared.blocking(|| inbox.propose(command, reply)).await;
    }
    let (committed, applied) = proposal.into_parts();
    let timeout = shared.cfg.request_timeout;
    let committed = tokio::time::timeout(timeout, committed)
        .await
        .unwrap_or(Err(NodeError::Timeout));
    let reply = match committed {
        Ok(c) => WireForwardReply::Committed {
            index: c.index,
            term: c.term,
        },
        Err(e) => failed(&e),
    };
    let done = matches!(reply, WireForwardReply::Failed { .. });
    frame::write_frame(&mut send, FrameKind::ForwardReply, frame::archive(&reply)?).await?;
    if !done {
        let applied = tokio::time::timeout(timeout, applied)
            .await
            .unwrap_or(Err(NodeError::Timeout));
        let reply = match applied {
            Ok(a) => WireForwardReply::Applied {
                index: a.index,
                term: a.term,
                response: a.response,
            },
            Err(e) => failed(&e),
        };
        frame::write_frame(&mut send, FrameKind::ForwardReply, frame::archive(&reply)?).await?;
    }
    let _ = send.finish();
    Ok(())
}

/// The address of the leader a `NotLeader` error names, for the caller to follow.
pub(crate) fn leader_addr(shared: &Shared, e: &NodeError) -> Option<String> {
    match e {
        NodeError::NotLeader {
            leader: Some(id), ..
        } => shared.addr_of(*id).map(|a| a.to_string()),
        _ => None,
    }
}
