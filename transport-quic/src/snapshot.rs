//! Snapshots on streams of their own: an offer frame (the Raft message and the total size), the
//! data in chunk frames under QUIC flow control, and a one-byte acknowledgement once the
//! receiver handed the snapshot to its node.
//!
//! The node runtime hands the transport a snapshot as one `Bytes` and takes one back, so the
//! whole snapshot is in memory at both ends; on the wire it never travels as one frame, and the
//! receiver refuses an offer larger than `snapshot_bytes_max` before reading any data.

use bytes::{Bytes, BytesMut};
use keel_engine::core::{Body, Message};

use crate::frame::{self, FrameError, FrameKind, StreamKind};
use crate::metrics::add;
use crate::peer::Peer;
use crate::shared::Shared;
use crate::wire::{self, ArchivedWireSnapshotOffer, WireSnapshotOffer};

/// Sends `data` with `message` to `peer`; `Ok(true)` once the peer acknowledged delivery.
pub(crate) async fn send(
    shared: &Shared,
    peer: &Peer,
    message: &Message,
    data: Bytes,
) -> Result<bool, FrameError> {
    let conn = peer
        .current()
        .ok_or_else(|| FrameError::Io("not connected".into()))?;
    let io = |e: &dyn std::fmt::Display| FrameError::Io(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
    send.write_all(&[StreamKind::Snapshot as u8])
        .await
        .map_err(|e| io(&e))?;
    let offer = WireSnapshotOffer {
        message: message.into(),
        total_bytes: data.len() as u64,
    };
    let mut sent =
        frame::write_frame(&mut send, FrameKind::SnapshotOffer, frame::archive(&offer)?).await?;
    let chunk = shared.cfg.snapshot_chunk_bytes;
    let mut at = 0;
    while at < data.len() {
        let end = (at + chunk).min(data.len());
        sent +=
            frame::write_frame(&mut send, FrameKind::SnapshotChunk, data.slice(at..end)).await?;
        add(&peer.counters.snapshot_chunks_sent, 1);
        at = end;
    }
    send.finish().map_err(|e| io(&e))?;
    add(&peer.counters.bytes_sent, sent as u64);
    let ack = tokio::time::timeout(
        shared.cfg.request_timeout,
        frame::expect_frame(&mut recv, FrameKind::SnapshotAck, 1),
    )
    .await
    .map_err(|_| FrameError::Io("no acknowledgement in time".into()))??;
    Ok(ack.body.first() == Some(&1))
}

/// Receives one snapshot from `peer` and hands it to the node.
pub(crate) async fn receive(
    shared: &Shared,
    peer: &Peer,
    mut send: quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), FrameError> {
    let max = shared.cfg.frame_bytes_max;
    let offer_frame = frame::expect_frame(recv, FrameKind::SnapshotOffer, max).await?;
    let offer = frame::access::<ArchivedWireSnapshotOffer>(&offer_frame.body)?;
    let message = wire::message_of(&offer.message, &offer_frame.body)?;
    if message.from != peer.id {
        return Err(FrameError::WrongSender {
            claimed: message.from,
            authenticated: peer.id,
        });
    }
    if message.to != shared.id {
        return Err(FrameError::WrongRecipient {
            to: message.to,
            me: shared.id,
        });
    }
    if !matches!(message.body, Body::Snapshot { .. }) {
        return Err(FrameError::UnexpectedKind(FrameKind::SnapshotOffer as u8));
    }
    let total = offer.total_bytes.to_native();
    if total > shared.cfg.snapshot_bytes_max {
        return Err(FrameError::TooLarge {
            body_bytes: usize::try_from(total).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(shared.cfg.snapshot_bytes_max).unwrap_or(usize::MAX),
        });
    }
    let total = usize::try_from(total).map_err(|_| FrameError::TooLarge {
        body_bytes: usize::MAX,
        max_bytes: usize::MAX,
    })?;
    // Grow with what actually arrives rather than trusting the announced size up front.
    let mut data = BytesMut::with_capacity(total.min(max));
    let mut received = frame::HEADER_BYTES + offer_frame.body.len();
    while data.len() < total {
        let chunk = frame::expect_frame(recv, FrameKind::SnapshotChunk, max).await?;
        if data.len() + chunk.body.len() > total {
            return Err(FrameError::TooLarge {
                body_bytes: data.len() + chunk.body.len(),
                max_bytes: total,
            });
        }
        received += frame::HEADER_BYTES + chunk.body.len();
        data.extend_from_slice(&chunk.body);
        add(&peer.counters.snapshot_chunks_received, 1);
    }
    add(&peer.counters.bytes_received, received as u64);
    let delivered = match shared.inbox() {
        Some(inbox) => {
            inbox.deliver_snapshot(message, data.freeze());
            1
        }
        None => 0,
    };
    frame::write_frame(
        &mut send,
        FrameKind::SnapshotAck,
        Bytes::copy_from_slice(&[delivered]),
    )
    .await?;
    let _ = send.finish();
    Ok(())
}
