//! Raft messages in and out of frames: a batch to one peer becomes one archive; a received
//! archive is validated, checked against the authenticated sender, and read in place.

use bytes::Bytes;
use keel_engine::core::{Message, NodeId};

use crate::frame::{self, Frame, FrameError, FrameKind};
use crate::wire::{self, ArchivedWireBatch, WireBatch, WireMessage};

/// Archives `messages` (all to one peer) into one `Messages` frame body.
pub fn encode_batch(messages: &[Message]) -> Result<Bytes, FrameError> {
    let batch = WireBatch {
        messages: messages.iter().map(WireMessage::from).collect(),
    };
    frame::archive(&batch)
}

/// Validates a `Messages` frame from the peer authenticated as `peer` to node `me`, and builds
/// its messages; entry payloads share the frame's buffer. Any message claiming another sender
/// or addressed to another node refuses the whole frame, as does a snapshot message: one comes
/// only in a snapshot transfer, with its data (the node would install a snapshot it cannot read).
pub fn decode_batch(frame: &Frame, peer: NodeId, me: NodeId) -> Result<Vec<Message>, FrameError> {
    if frame.kind != FrameKind::Messages {
        return Err(FrameError::UnexpectedKind(frame.kind as u8));
    }
    let batch = frame::access::<ArchivedWireBatch>(&frame.body)?;
    let mut out = Vec::with_capacity(batch.messages.len());
    for m in batch.messages.iter() {
        let (from, to) = (m.from.to_native(), m.to.to_native());
        if from != peer {
            return Err(FrameError::WrongSender {
                claimed: from,
                authenticated: peer,
            });
        }
        if to != me {
            return Err(FrameError::WrongRecipient { to, me });
        }
        if let wire::ArchivedWireBody::Snapshot { .. } = m.body {
            return Err(FrameError::SnapshotWithoutData);
        }
        out.push(wire::message_of(m, &frame.body)?);
    }
    Ok(out)
}

/// Parses and validates one frame from `input` exactly as a receiver would, whatever its kind:
/// the entry point of the fuzz target and the fuzz-style tests. Returns the bytes consumed.
pub fn validate_frame(
    input: &[u8],
    peer: NodeId,
    me: NodeId,
    max_body_bytes: usize,
) -> Result<usize, FrameError> {
    use crate::wire::{
        ArchivedWireForwardReply, ArchivedWireKvRequest, ArchivedWireKvResponse,
        ArchivedWireSnapshotOffer,
    };
    let (frame, used) = frame::decode_contiguous(input, max_body_bytes)?;
    match frame.kind {
        FrameKind::Messages => {
            decode_batch(&frame, peer, me)?;
        }
        FrameKind::SnapshotOffer => {
            let offer = frame::access::<ArchivedWireSnapshotOffer>(&frame.body)?;
            wire::message_of(&offer.message, &frame.body)?;
        }
        FrameKind::ForwardReply => {
            if let ArchivedWireForwardReply::Applied {
                index,
                term,
                response,
            } = frame::access::<ArchivedWireForwardReply>(&frame.body)?
            {
                wire::applied_of(index, term, response, &frame.body)?;
            }
        }
        FrameKind::KvRequest => {
            frame::access::<ArchivedWireKvRequest>(&frame.body)?;
        }
        FrameKind::KvResponse => {
            frame::access::<ArchivedWireKvResponse>(&frame.body)?;
        }
        FrameKind::SnapshotChunk | FrameKind::SnapshotAck | FrameKind::ForwardRequest => {}
    }
    Ok(used)
}

/// Bytes a message accounts for when batches are sized (a little over its archive).
pub fn message_size_bytes(m: &Message) -> usize {
    const OVERHEAD_BYTES: usize = 64;
    OVERHEAD_BYTES
        + match &m.body {
            keel_engine::core::Body::Append { entries, .. } => {
                entries.iter().map(|e| e.size_bytes()).sum()
            }
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use keel_engine::core::{AppendResult, Body, Entry, Membership, Payload, SnapshotMeta};

    use super::*;

    fn every_kind_of_message() -> Vec<Message> {
        let membership = Membership {
            voters: BTreeSet::from([1, 2, 3]),
            outgoing: BTreeSet::from([1, 2, 4]),
            learners: BTreeSet::from([5]),
        };
        let bodies = vec![
            Body::PreVote {
                last_index: 7,
                last_term: 2,
            },
            Body::PreVoteResponse { granted: true },
            Body::Vote {
                last_index: 7,
                last_term: 2,
                transfer: true,
            },
            Body::VoteResponse { granted: false },
            Body::Append {
                prev_index: 6,
                prev_term: 2,
                entries: vec![
                    Entry {
                        index: 7,
                        term: 3,
                        payload: Payload::Noop,
                    },
                    Entry {
                        index: 8,
                        term: 3,
                        payload: Payload::Command(Bytes::from_static(b"hello")),
                    },
                    Entry {
                        index: 9,
                        term: 3,
                        payload: Payload::Command(Bytes::new()),
                    },
                    Entry {
                        index: 10,
                        term: 3,
                        payload: Payload::Membership(membership.clone()),
                    },
                ],
                commit: 5,
                lease_tick: 11,
                read_seq: 12,
            },
            Body::AppendResponse {
                result: AppendResult::Accepted { index: 10 },
                lease_tick: 1,
                read_seq: 2,
            },
            Body::AppendResponse {
                result: AppendResult::Rejected {
                    rejected: 9,
                    hint_index: 4,
                    hint_term: 1,
                },
                lease_tick: 3,
                read_seq: 4,
            },
            Body::Heartbeat {
                commit: 9,
                lease_tick: 5,
                read_seq: 6,
            },
            Body::HeartbeatResponse {
                lease_tick: 5,
                read_seq: 6,
            },
            Body::Snapshot {
                snapshot: SnapshotMeta {
                    index: 100,
                    term: 4,
                    membership,
                },
            },
            Body::TimeoutNow { last_index: 12 },
            Body::ReadIndex {
                id: 77,
                lease: true,
            },
            Body::ReadIndexResponse {
                id: 77,
                index: Some(99),
            },
            Body::ReadIndexResponse {
                id: 78,
                index: None,
            },
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                from: 2,
                to: 1,
                term: 3,
                body,
            })
            .collect()
    }

    fn frame_of(messages: &[Message]) -> Frame {
        let body = encode_batch(messages).unwrap();
        let bytes = frame::encode_contiguous(FrameKind::Messages, &body).unwrap();
        frame::decode_contiguous(&bytes, 1 << 20).unwrap().0
    }

    /// What a frame of messages may carry: every kind but a snapshot's, which travels in a
    /// snapshot transfer with its data.
    fn every_kind_sent_in_batches() -> Vec<Message> {
        let mut messages = every_kind_of_message();
        messages.retain(|m| !matches!(m.body, Body::Snapshot { .. }));
        messages
    }

    #[test]
    fn every_message_kind_round_trips() {
        let messages = every_kind_sent_in_batches();
        assert_eq!(decode_batch(&frame_of(&messages), 2, 1).unwrap(), messages);
    }

    #[test]
    fn a_snapshot_message_refuses_the_frame() {
        let frame = frame_of(&every_kind_of_message());
        assert_eq!(
            decode_batch(&frame, 2, 1),
            Err(FrameError::SnapshotWithoutData)
        );
    }

    #[test]
    fn payloads_are_read_in_place_from_the_frame() {
        let messages = every_kind_sent_in_batches();
        let frame = frame_of(&messages);
        let decoded = decode_batch(&frame, 2, 1).unwrap();
        let Body::Append { entries, .. } = &decoded[4].body else {
            panic!("append")
        };
        let Payload::Command(data) = &entries[1].payload else {
            panic!("command")
        };
        let start = frame.body.as_ptr() as usize;
        let at = data.as_ptr() as usize;
        assert!(
            at >= start && at + data.len() <= start + frame.body.len(),
            "no copy"
        );
    }

    #[test]
    fn a_message_claiming_another_sender_refuses_the_frame() {
        let frame = frame_of(&every_kind_of_message());
        assert_eq!(
            decode_batch(&frame, 3, 1),
            Err(FrameError::WrongSender {
                claimed: 2,
                authenticated: 3
            })
        );
        assert_eq!(
            decode_batch(&frame, 2, 9),
            Err(FrameError::WrongRecipient { to: 1, me: 9 })
        );
    }
}
