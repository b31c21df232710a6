//! Frames: an 8-byte header (body length, format version, kind) and a body that is an rkyv
//! archive (or raw bytes for snapshot chunks and forwarded commands).
//!
//! ```text
//! 0      4        5     6          8
//! | len  | version| kind| reserved | body (len bytes) ...
//! | u32le|   u8   |  u8 |  0u16    |
//! ```
//!
//! The body is read into a 16-byte-aligned buffer of its own, so the archive can be validated
//! and read in place without another copy, and slices of it (entry payloads) outlive the frame
//! as `Bytes`. Every failure maps to a [`FrameError`] with a reason the metrics count; nothing
//! here panics on input.

use bytes::Bytes;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::metrics::FrameRejection;
use crate::wire::ConvertError;

/// The format of every frame body this build writes and accepts. 2: TimeoutNow carries the
/// leader's last index (a node of format 1 is refused, not misread).
pub const FORMAT_VERSION: u8 = 2;
pub const HEADER_BYTES: usize = 8;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A `WireBatch`: Raft messages to one peer.
    Messages = 1,
    /// A `WireSnapshotOffer`: the first frame of a snapshot stream.
    SnapshotOffer = 2,
    /// Raw snapshot data.
    SnapshotChunk = 3,
    /// One raw byte: 1 if the receiver handed the snapshot to its node.
    SnapshotAck = 4,
    /// A raw command forwarded to the leader.
    ForwardRequest = 5,
    /// A `WireForwardReply`.
    ForwardReply = 6,
    /// A `WireKvRequest`.
    KvRequest = 7,
    /// A `WireKvResponse`.
    KvResponse = 8,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Messages,
            2 => Self::SnapshotOffer,
            3 => Self::SnapshotChunk,
            4 => Self::SnapshotAck,
            5 => Self::ForwardRequest,
            6 => Self::ForwardReply,
            7 => Self::KvRequest,
            8 => Self::KvResponse,
            _ => return None,
        })
    }
}

/// The first byte of every stream a peer opens: what the stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Unidirectional, ordered: Append and AppendResponse, pipelined.
    Replication = 1,
    /// Unidirectional: votes, heartbeats, TimeoutNow, ReadIndex; never behind a large append.
    Control = 2,
    /// Bidirectional: one snapshot in chunks, acknowledged at the end.
    Snapshot = 3,
    /// Bidirectional: one forwarded proposal and its outcome.
    Forward = 4,
}

impl StreamKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Replication,
            2 => Self::Control,
            3 => Self::Snapshot,
            4 => Self::Forward,
            _ => return None,
        })
    }
}

/// Why a frame (or the stream carrying it) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {body_bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge { body_bytes: usize, max_bytes: usize },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("unsupported format version {0}")]
    BadVersion(u8),
    #[error("malformed frame header")]
    BadHeader,
    #[error("unexpected frame kind {0}")]
    UnexpectedKind(u8),
    #[error("unknown stream kind {0}")]
    UnknownStream(u8),
    #[error("a snapshot message outside a snapshot transfer (it comes only with its data)")]
    SnapshotWithoutData,
    #[error("the archive failed validation: {0}")]
    Invalid(String),
    #[error("the archive cannot be used: {0}")]
    Unusable(#[from] ConvertError),
    #[error(
        "a message claims to be from node {claimed}, but the connection is node {authenticated}"
    )]
    WrongSender { claimed: u64, authenticated: u64 },
    #[error("a message for node {to} arrived at node {me}")]
    WrongRecipient { to: u64, me: u64 },
    #[error("the stream was idle too long")]
    Idle,
    /// The connection or stream failed underneath: not the peer's input's fault.
    #[error("stream error: {0}")]
    Io(String),
}

impl FrameError {
    /// A request refused for its size, as the node would have refused its command: a definite
    /// answer for the client or peer that sent it (the request was never made).
    pub(crate) fn as_too_large(&self) -> Option<keel_engine::node::Error> {
        match *self {
            FrameError::TooLarge {
                body_bytes,
                max_bytes,
            } => Some(keel_engine::node::Error::TooLarge {
                size_bytes: body_bytes,
                max_bytes,
            }),
            _ => None,
        }
    }

    /// The counter this failure increments; `None` for failures that are not the input's fault.
    pub fn rejection(&self) -> Option<FrameRejection> {
        Some(match self {
            FrameError::TooLarge { .. } => FrameRejection::TooLarge,
            FrameError::Truncated => FrameRejection::Truncated,
            FrameError::BadVersion(_) | FrameError::BadHeader => FrameRejection::BadHeader,
            FrameError::UnexpectedKind(_)
            | FrameError::UnknownStream(_)
            | FrameError::SnapshotWithoutData => FrameRejection::UnexpectedKind,
            FrameError::Invalid(_) | FrameError::Unusable(_) => FrameRejection::InvalidArchive,
            FrameError::WrongSender { .. } => FrameRejection::WrongSender,
            FrameError::WrongRecipient { .. } => FrameRejection::WrongRecipient,
            FrameError::Idle => FrameRejection::Idle,
            FrameError::Io(_) => return None,
        })
    }
}

/// A frame whose header passed: its kind and its body in an aligned buffer.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub body: Bytes,
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub body_bytes: usize,
}

impl FrameHeader {
    pub fn encode(kind: FrameKind, body_bytes: usize) -> Result<[u8; HEADER_BYTES], FrameError> {
        let len = u32::try_from(body_bytes).map_err(|_| FrameError::TooLarge {
            body_bytes,
            max_bytes: u32::MAX as usize,
        })?;
        let mut h = [0u8; HEADER_BYTES];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4] = FORMAT_VERSION;
        h[5] = kind as u8;
        Ok(h)
    }

    /// Checks a header against the format and the receiver's size limit, before any body byte
    /// is read or any buffer allocated for it.
    pub fn decode(raw: [u8; HEADER_BYTES], max_body_bytes: usize) -> Result<Self, FrameError> {
        if raw[4] != FORMAT_VERSION {
            return Err(FrameError::BadVersion(raw[4]));
        }
        if raw[6] != 0 || raw[7] != 0 {
            return Err(FrameError::BadHeader);
        }
        let kind = FrameKind::from_u8(raw[5]).ok_or(FrameError::UnexpectedKind(raw[5]))?;
        let body_bytes = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        if body_bytes > max_body_bytes {
            return Err(FrameError::TooLarge {
                body_bytes,
                max_bytes: max_body_bytes,
            });
        }
        Ok(Self { kind, body_bytes })
    }
}

/// Freezes an aligned buffer into `Bytes` without moving its contents (alignment is kept).
pub fn freeze(buf: AlignedVec) -> Bytes {
    Bytes::from_owner(buf)
}

/// Archives `value` into a frame body.
pub fn archive<T>(value: &T) -> Result<Bytes, FrameError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(value)
        .map(freeze)
        .map_err(|e| FrameError::Invalid(format!("cannot archive: {e}")))
}

/// Validates a frame body as an archive of `T` (bytecheck) and returns a view into it.
pub fn access<T>(body: &[u8]) -> Result<&T, FrameError>
where
    T: rkyv::Portable + for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(body).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// The header and body of a frame, ready for one gathered write.
pub fn encode(kind: FrameKind, body: Bytes) -> Result<[Bytes; 2], FrameError> {
    let header = FrameHeader::encode(kind, body.len())?;
    Ok([Bytes::copy_from_slice(&header), body])
}

/// Encodes a frame into one contiguous buffer (tests, fuzzing, benchmarks).
pub fn encode_contiguous(kind: FrameKind, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = FrameHeader::encode(kind, body.len())?.to_vec();
    out.extend_from_slice(body);
    Ok(out)
}

/// Parses one frame from the front of `input` (copying its body into an aligned buffer, as the
/// stream reader does); returns it and the bytes consumed. The decoder the fuzz target drives.
pub fn decode_contiguous(
    input: &[u8],
    max_body_bytes: usize,
) -> Result<(Frame, usize), FrameError> {
    let raw: [u8; HEADER_BYTES] = input
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let header = FrameHeader::decode(raw, max_body_bytes)?;
    let end = HEADER_BYTES + header.body_bytes;
    let body = input.get(HEADER_BYTES..end).ok_or(FrameError::Truncated)?;
    let mut buf = AlignedVec::<16>::with_capacity(body.len());
    buf.extend_from_slice(body);
    Ok((
        Frame {
            kind: header.kind,
            body: freeze(buf),
        },
        end,
    ))
}

/// What a frame body's buffer starts at. It grows as the body arrives, so a header that
/// announces a large body costs the receiver memory only as fast as the sender sends bytes: a
/// buffer of the announced size, at once, let a peer or client that sent only headers hold
/// `frame_bytes_max` per open stream.
const BODY_FIRST_ALLOCATION_BYTES: usize = 64 * 1024;

/// Reads the next frame from a QUIC stream: `Ok(None)` when the stream ended cleanly between
/// frames. The body is read only after the header passed the size limit.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max_body_bytes: usize,
) -> Result<Option<Frame>, FrameError> {
    match read_header(recv, max_body_bytes).await? {
        Some(header) => read_body(recv, header).await.map(Some),
        None => Ok(None),
    }
}

/// Reads the next frame's header: `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_header(
    recv: &mut quinn::RecvStream,
    max_body_bytes: usize,
) -> Result<Option<FrameHeader>, FrameError> {
    let mut raw = [0u8; HEADER_BYTES];
    match recv.read_exact(&mut raw).await {
        Ok(()) => FrameHeader::decode(raw, max_body_bytes).map(Some),
        Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameError::Io(e.to_string())),
    }
}

/// Reads the body `header` announced.
pub async fn read_body(
    recv: &mut quinn::RecvStream,
    header: FrameHeader,
) -> Result<Frame, FrameError> {
    let mut body = BodyReader::new(header);
    while body.read_chunk(recv).await?.is_some() {}
    Ok(body.finish())
}

/// A frame's body, read a chunk at a time: for a caller that accounts for each chunk as it
/// arrives.
#[derive(Debug)]
pub struct BodyReader {
    header: FrameHeader,
    buf: AlignedVec<16>,
}

impl BodyReader {
    pub fn new(header: FrameHeader) -> Self {
        let first = header.body_bytes.min(BODY_FIRST_ALLOCATION_BYTES);
        Self {
            header,
            buf: AlignedVec::<16>::with_capacity(first),
        }
    }

    /// Reads the next chunk into the body: its length, or `None` once the body is whole.
    pub async fn read_chunk(
        &mut self,
        recv: &mut quinn::RecvStream,
    ) -> Result<Option<usize>, FrameError> {
        let left = self.header.body_bytes - self.buf.len();
        if left == 0 {
            return Ok(None);
        }
        match recv.read_chunk(left, true).await {
            Ok(Some(chunk)) => {
                // Doubling, but never past the announced size: the entries a frame carries
                // keep its whole allocation alive, slack included.
                let needed = self.buf.len() + chunk.bytes.len();
                if needed > self.buf.capacity() {
                    let grown = (self.buf.capacity() * 2)
                        .max(needed)
                        .min(self.header.body_bytes);
                    self.buf.reserve_exact(grown - self.buf.len());
                }
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(Some(chunk.bytes.len()))
            }
            Ok(None) => Err(FrameError::Truncated),
            Err(e) => Err(FrameError::Io(e.to_string())),
        }
    }

    /// The whole frame (call once `read_chunk` said the body is whole).
    pub fn finish(self) -> Frame {
        debug_assert_eq!(self.buf.len(), self.header.body_bytes);
        Frame {
            kind: self.header.kind,
            body: freeze(self.buf),
        }
    }
}

/// Like [`read_frame`], but the stream must produce a frame of `kind`.
pub async fn expect_frame(
    recv: &mut quinn::RecvStream,
    kind: FrameKind,
    max_body_bytes: usize,
) -> Result<Frame, FrameError> {
    match read_frame(recv, max_body_bytes).await? {
        Some(f) if f.kind == kind => Ok(f),
        Some(f) => Err(FrameError::UnexpectedKind(f.kind as u8)),
        None => Err(FrameError::Truncated),
    }
}

/// Writes one frame.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    kind: FrameKind,
    body: Bytes,
) -> Result<usize, FrameError> {
    let mut parts = encode(kind, body)?;
    let bytes = parts[0].len() + parts[1].len();
    send.write_all_chunks(&mut parts)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks_limits() {
        let h = FrameHeader::encode(FrameKind::Messages, 1000).unwrap();
        assert_eq!(
            FrameHeader::decode(h, 1000).unwrap(),
            FrameHeader {
                kind: FrameKind::Messages,
                body_bytes: 1000
            }
        );
        assert!(matches!(
            FrameHeader::decode(h, 999),
            Err(FrameError::TooLarge { .. })
        ));
        let mut bad = h;
        bad[4] = 9;
        assert_eq!(
            FrameHeader::decode(bad, 1000),
            Err(FrameError::BadVersion(9))
        );
        let mut bad = h;
        bad[5] = 0;
        assert_eq!(
            FrameHeader::decode(bad, 1000),
            Err(FrameError::UnexpectedKind(0))
        );
        let mut bad = h;
        bad[7] = 1;
        assert_eq!(FrameHeader::decode(bad, 1000), Err(FrameError::BadHeader));
    }

    #[test]
    fn bodies_are_aligned_for_in_place_access() {
        for len in [0, 1, 7, 100, 4096] {
            let (frame, used) = decode_contiguous(
                &encode_contiguous(FrameKind::SnapshotChunk, &vec![3; len]).unwrap(),
                1 << 20,
            )
            .unwrap();
            assert_eq!(used, HEADER_BYTES + len);
            assert_eq!(frame.body.len(), len);
            if len > 0 {
                assert_eq!(frame.body.as_ptr() as usize % 16, 0);
            }
        }
    }
}
