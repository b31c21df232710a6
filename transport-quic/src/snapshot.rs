//! Snapshots on streams of their own: an offer frame (the Raft message and the total size), the
//! data in chunk frames under QUIC flow control, and a one-byte acknowledgement once the
//! receiver handed the complete snapshot to its node.
//!
//! Neither end holds a snapshot in memory whole. The sender reads the snapshot file a chunk at a
//! time on a blocking thread and writes each chunk as a frame; the receiver reads chunk frames
//! and a blocking thread writes them through the node's `SnapshotSink` into a file. Between disk
//! and network a short queue of chunks ([`CHUNKS_QUEUED`]) keeps both busy; when it is full the
//! reading side waits, which on the receiver means it stops reading the stream and QUIC flow
//! control holds the sender back. A transfer therefore holds a few chunks in memory whatever the
//! snapshot's size (counted in `snapshot_bytes_held`). The receiver refuses an offer larger than
//! `snapshot_bytes_max` before reading any data; a refused or broken transfer removes its file.

use std::io::{self, Read as _};
use std::sync::Arc;

use bytes::Bytes;
use keel_engine::core::{Body, Message};
use keel_engine::node::{Inbox, SnapshotReader, SnapshotTransferError};
use tokio::sync::mpsc;

use crate::frame::{self, FrameError, FrameKind, StreamKind};
use crate::metrics::{add, TransportMetrics};
use crate::peer::Peer;
use crate::shared::Shared;
use crate::wire::{self, ArchivedWireSnapshotOffer, WireSnapshotOffer};

/// Chunks queued between the disk and the network in one transfer. With the chunk being read
/// and the one being written, a transfer holds at most this many plus two chunks.
pub(crate) const CHUNKS_QUEUED: usize = 2;

/// Sends `message` and streams `data` after it to `peer`; `Ok(true)` once the peer acknowledged
/// that its node took the snapshot.
pub(crate) async fn send(
    shared: &Shared,
    peer: &Peer,
    message: &Message,
    data: SnapshotReader,
) -> Result<bool, FrameError> {
    let conn = peer
        .current()
        .ok_or_else(|| FrameError::Io("not connected".into()))?;
    let io = |e: &dyn std::fmt::Display| FrameError::Io(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
    send.write_all(&[StreamKind::Snapshot as u8])
        .await
        .map_err(|e| io(&e))?;
    let total_bytes = data.len_bytes();
    let offer = WireSnapshotOffer {
        message: message.into(),
        total_bytes,
    };
    let sent =
        frame::write_frame(&mut send, FrameKind::SnapshotOffer, frame::archive(&offer)?).await?;
    add(&peer.counters.bytes_sent, sent as u64);

    let (chunks_tx, mut chunks) = mpsc::channel(CHUNKS_QUEUED);
    let chunk_bytes = shared.cfg.snapshot_chunk_bytes;
    let metrics = shared.metrics.clone();
    // Returning early closes the channel, which stops the reader.
    tokio::task::spawn_blocking(move || read_file_chunks(data, chunk_bytes, &metrics, &chunks_tx));
    let mut data_bytes = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|e| FrameError::Io(format!("reading the snapshot: {e}")))?;
        data_bytes += chunk.bytes.len() as u64;
        let sent =
            frame::write_frame(&mut send, FrameKind::SnapshotChunk, chunk.bytes.clone()).await?;
        add(&peer.counters.bytes_sent, sent as u64);
        add(&peer.counters.snapshot_chunks_sent, 1);
    }
    if data_bytes != total_bytes {
        return Err(FrameError::Io(format!(
            "the snapshot reader stopped after {data_bytes} of {total_bytes} bytes"
        )));
    }
    send.finish().map_err(|e| io(&e))?;
    let ack = tokio::time::timeout(
        shared.cfg.request_timeout,
        frame::expect_frame(&mut recv, FrameKind::SnapshotAck, 1),
    )
    .await
    .map_err(|_| FrameError::Io("no acknowledgement in time".into()))??;
    Ok(ack.body.first() == Some(&1))
}

/// Reads the snapshot a chunk at a time into `chunks`, until it is all read, a read fails (the
/// error is the last item), or the sending side hangs up. Runs on a blocking thread.
fn read_file_chunks(
    mut data: SnapshotReader,
    chunk_bytes: usize,
    metrics: &Arc<TransportMetrics>,
    chunks: &mpsc::Sender<io::Result<HeldChunk>>,
) {
    let mut left_bytes = data.len_bytes();
    while left_bytes > 0 {
        let len = usize::try_from(left_bytes).map_or(chunk_bytes, |left| left.min(chunk_bytes));
        let mut buf = vec![0; len];
        let chunk = data
            .read_exact(&mut buf)
            .map(|()| HeldChunk::new(Bytes::from(buf), metrics));
        let failed = chunk.is_err();
        if chunks.blocking_send(chunk).is_err() || failed {
            return;
        }
        left_bytes -= len as u64;
    }
}

/// The largest snapshot offer taken: its message's snapshot metadata (a membership) is small.
const OFFER_BYTES_MAX: usize = 1 << 20;

/// Receives one snapshot from `peer`, writing it through the node's sink as it arrives, and
/// acknowledges whether the node took it.
pub(crate) async fn receive(
    shared: &Shared,
    peer: &Peer,
    mut send: quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), FrameError> {
    // An offer is a message and a length: a peer announcing more would have this node hold up
    // to `frame_bytes_max` per stream. (The chunks that follow have their own bound, per chunk.)
    let max = shared.cfg.frame_bytes_max.min(OFFER_BYTES_MAX);
    let offer_frame = shared
        .within_handshake(frame::expect_frame(recv, FrameKind::SnapshotOffer, max))
        .await?;
    add(
        &peer.counters.bytes_received,
        (frame::HEADER_BYTES + offer_frame.body.len()) as u64,
    );
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
    let total_bytes = offer.total_bytes.to_native();
    if total_bytes > shared.cfg.snapshot_bytes_max {
        return Err(FrameError::TooLarge {
            body_bytes: usize::try_from(total_bytes).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(shared.cfg.snapshot_bytes_max).unwrap_or(usize::MAX),
        });
    }
    let delivered = match shared.inbox() {
        Some(inbox) => {
            let (chunks_tx, chunks) = mpsc::channel(CHUNKS_QUEUED);
            let writer = tokio::task::spawn_blocking(move || {
                write_file_chunks(&inbox, message, total_bytes, chunks)
            });
            let read = read_stream_chunks(shared, peer, recv, total_bytes, &chunks_tx).await;
            drop(chunks_tx);
            // Wait for the writer even when the stream failed, so that its file is gone before
            // the refusal is counted.
            let written = writer
                .await
                .map_err(|e| FrameError::Io(format!("the snapshot writer failed: {e}")))?;
            read?;
            match written {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(node = shared.id, peer = peer.id, error = %e, "snapshot not taken");
                    false
                }
            }
        }
        None => false,
    };
    frame::write_frame(
        &mut send,
        FrameKind::SnapshotAck,
        Bytes::copy_from_slice(&[u8::from(delivered)]),
    )
    .await?;
    let _ = send.finish();
    Ok(())
}

/// Reads chunk frames until `total_bytes` arrived and passes them to the writer. Waiting for
/// room in the queue stops reading the stream, so flow control holds the sender back. Stops
/// early, without error, if the writer gave up (it reports why).
async fn read_stream_chunks(
    shared: &Shared,
    peer: &Peer,
    recv: &mut quinn::RecvStream,
    total_bytes: u64,
    chunks: &mpsc::Sender<HeldChunk>,
) -> Result<(), FrameError> {
    let mut data_bytes = 0u64;
    while data_bytes < total_bytes {
        let chunk = tokio::time::timeout(
            shared.cfg.request_timeout,
            frame::expect_frame(recv, FrameKind::SnapshotChunk, shared.cfg.frame_bytes_max),
        )
        .await
        .map_err(|_| FrameError::Idle)??;
        let len = chunk.body.len() as u64;
        // An empty chunk makes no progress: a stream of them would hold the transfer open for
        // ever while each one resets the idle timeout.
        if len == 0 {
            return Err(FrameError::BadHeader);
        }
        if data_bytes + len > total_bytes {
            return Err(FrameError::TooLarge {
                body_bytes: usize::try_from(data_bytes + len).unwrap_or(usize::MAX),
                max_bytes: usize::try_from(total_bytes).unwrap_or(usize::MAX),
            });
        }
        data_bytes += len;
        add(
            &peer.counters.bytes_received,
            frame::HEADER_BYTES as u64 + len,
        );
        add(&peer.counters.snapshot_chunks_received, 1);
        let held = HeldChunk::new(chunk.body, &shared.metrics);
        if chunks.send(held).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Writes chunks through the node's sink until the reading side is done, then finishes it:
/// if fewer bytes arrived than announced, `finish` refuses and the file is removed. Runs on a
/// blocking thread.
fn write_file_chunks(
    inbox: &Inbox,
    message: Message,
    total_bytes: u64,
    mut chunks: mpsc::Receiver<HeldChunk>,
) -> Result<(), SnapshotTransferError> {
    let mut sink = inbox.begin_snapshot(message, total_bytes)?;
    while let Some(chunk) = chunks.blocking_recv() {
        sink.write_chunk(&chunk.bytes)?;
    }
    sink.finish()
}

/// Snapshot data between disk and network, counted in the transport's metrics while held.
struct HeldChunk {
    bytes: Bytes,
    metrics: Arc<TransportMetrics>,
}

impl HeldChunk {
    fn new(bytes: Bytes, metrics: &Arc<TransportMetrics>) -> Self {
        metrics.snapshot_bytes_held(bytes.len() as u64);
        Self {
            bytes,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for HeldChunk {
    fn drop(&mut self) {
        self.metrics
            .snapshot_bytes_released(self.bytes.len() as u64);
    }
}
