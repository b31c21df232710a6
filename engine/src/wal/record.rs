//! The record format: one self-checking record per log change.
//!
//! ```text
//! offset  size  field
//!      0     4  body_len   bytes after the 8-byte prefix (kind .. end of payload), little-endian
//!      4     4  crc        CRC32C, started from the segment's salt, over body_len's 4 bytes
//!                          followed by the body
//!      8     1  kind       1 entry, 2 hard state, 3 snapshot (install), 4 truncation,
//!                          5 compaction, 6 group start
//!      9     8  index      entry index / commit / snapshot index / truncate-from / group bytes
//!     17     8  term       entry term / current term / snapshot term / 0 / 0
//!     25     …  payload    kind-specific, length-prefixed, fully consumed
//! ```
//!
//! Payloads: an entry is a tag (0 noop, 1 command, 2 membership) followed by the command's
//! `u32` length and bytes, or the membership; a hard state is a vote flag and the vote; snapshot
//! and compaction records carry the membership; a truncation and a group start have none. A
//! group start begins the records of each write group (one `fdatasync`; see
//! [`super::recovery`] for what it tells recovery). A membership is three
//! `u32`-counted lists of `u64` node ids (voters, outgoing, learners), each strictly ascending.
//!
//! The salt (see [`super::segment`]) is random per log and 0 in segments written before it
//! existed. A record encoded under one salt never checks under another: for bytes of a given
//! length the CRC's starting value maps one to one onto its result. So the bytes of a client's
//! command, which can hold whole records with correct checksums under salt 0, cannot pass for a
//! record of the log when recovery searches damaged bytes for one; a client that does not know
//! the log's salt passes one with each forged record's 1-in-2^32 guess at most (a 32-bit
//! checksum is no secret key, but the salt never leaves the node's disk).
//!
//! The decoder is the first code to touch bytes from disk: it must never panic, never allocate
//! more than the input justifies, and accept only what the encoder can produce.

use std::borrow::Borrow;
use std::collections::BTreeSet;

use bytes::Bytes;

use crate::core::{Entry, HardState, Index, Membership, NodeId, Payload, SnapshotMeta, Term};

/// Bytes before the payload: body length, CRC, kind, index, term.
pub const RECORD_HEADER_BYTES: usize = 25;
/// Bytes before the body: body length and CRC.
pub const PREFIX_BYTES: usize = 8;
/// A group start's bytes: a header and no payload.
pub const GROUP_START_BYTES: usize = RECORD_HEADER_BYTES;
/// The body's fixed part: kind, index, term.
const BODY_FIXED_BYTES: usize = RECORD_HEADER_BYTES - PREFIX_BYTES;
/// The largest body a record may have. Bounds what a damaged length field can make the decoder
/// read, and the size of a single entry.
pub const RECORD_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest index a record may name. Far beyond any real log, and far enough below
/// `u64::MAX` that index arithmetic on what was read from disk can never overflow.
pub const INDEX_MAX: Index = u64::MAX / 4;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_COMPACT: u8 = 5;
const KIND_GROUP_START: u8 = 6;

const PAYLOAD_NOOP: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

/// One record. Decoding gives an owned entry; the log encodes a borrowed one (`Record<&Entry>`),
/// which spares each entry a reference-count round trip on its payload, shared with the threads
/// that send and apply it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<E = Entry> {
    /// A log entry.
    Entry(E),
    /// The hard state from here on.
    HardState(HardState),
    /// A snapshot was installed: it replaces the whole log.
    Snapshot(SnapshotMeta),
    /// Every entry at or after `from` is removed.
    Truncate { from: Index },
    /// A snapshot covers everything up to its index: entries after it stay. Also written at the
    /// start of every segment, so that a segment is readable once the ones before it are gone.
    Compact(SnapshotMeta),
    /// The records after it, up to the next group start, were written together and made
    /// durable by one `fdatasync`, after everything before them was. `group_bytes` is how far
    /// the group runs in this segment, from the start of this record. Changes nothing in the log.
    GroupStart { group_bytes: u64 },
}

/// Why bytes did not decode to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside the record: a torn write, or the end of the file.
    #[error("the record is incomplete: {needed_bytes} bytes needed, {available_bytes} available")]
    Incomplete {
        needed_bytes: usize,
        available_bytes: usize,
    },
    /// The length field is impossible.
    #[error("impossible record length {body_bytes}")]
    BadLength { body_bytes: usize },
    /// The checksum does not match: the bytes were damaged (or never fully written).
    #[error("checksum mismatch")]
    Checksum,
    /// The checksum matched but the contents make no sense: written by something else, or a bug.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

impl<E: Borrow<Entry>> Record<E> {
    /// The entry index this record is about, for naming damage near it.
    pub fn index(&self) -> Index {
        match self {
            Record::Entry(e) => e.borrow().index,
            Record::HardState(h) => h.commit,
            Record::Snapshot(s) | Record::Compact(s) => s.index,
            Record::Truncate { from } => *from,
            Record::GroupStart { .. } => 0,
        }
    }
}

/// A group start's encoding, for a group of `group_bytes` (see [`Record::GroupStart`]).
pub fn group_start(group_bytes: u64, salt: u32) -> [u8; GROUP_START_BYTES] {
    let mut out = Vec::with_capacity(GROUP_START_BYTES);
    encode(&Record::<Entry>::GroupStart { group_bytes }, &mut out, salt)
        .expect("a group start has no payload");
    out.try_into().expect("a group start is a header alone")
}

/// The bytes `record` takes on disk, without encoding it.
pub fn record_bytes<E: Borrow<Entry>>(record: &Record<E>) -> usize {
    RECORD_HEADER_BYTES
        + match record {
            Record::Entry(e) => {
                1 + match &e.borrow().payload {
                    Payload::Noop => 0,
                    Payload::Command(data) => 4 + data.len(),
                    Payload::Membership(m) => membership_bytes(m),
                }
            }
            Record::HardState(_) => 9,
            Record::Snapshot(s) | Record::Compact(s) => membership_bytes(&s.membership),
            Record::Truncate { .. } | Record::GroupStart { .. } => 0,
        }
}

fn membership_bytes(m: &Membership) -> usize {
    3 * 4 + 8 * (m.voters.len() + m.outgoing.len() + m.learners.len())
}

/// Appends the encoding of `record`, checksummed under the segment's `salt`, to `buf`. Returns
/// the record's size in bytes.
///
/// Fails (leaving `buf` as it was) only if the body would exceed [`RECORD_BODY_BYTES_MAX`].
pub fn encode<E: Borrow<Entry>>(
    record: &Record<E>,
    buf: &mut Vec<u8>,
    salt: u32,
) -> Result<usize, usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0; PREFIX_BYTES]);
    match record {
        Record::Entry(e) => {
            let e = e.borrow();
            put_fixed(buf, KIND_ENTRY, e.index, e.term);
            match &e.payload {
                Payload::Noop => buf.push(PAYLOAD_NOOP),
                Payload::Command(data) => {
                    buf.push(PAYLOAD_COMMAND);
                    let Ok(len) = u32::try_from(data.len()) else {
                        buf.truncate(start);
                        return Err(data.len());
                    };
                    buf.extend_from_slice(&len.to_le_bytes());
                    buf.extend_from_slice(data);
                }
                Payload::Membership(m) => {
                    buf.push(PAYLOAD_MEMBERSHIP);
                    put_membership(buf, m);
                }
            }
        }
        Record::HardState(h) => {
            put_fixed(buf, KIND_HARD_STATE, h.commit, h.term);
            buf.push(u8::from(h.vote.is_some()));
            buf.extend_from_slice(&h.vote.unwrap_or(0).to_le_bytes());
        }
        Record::Snapshot(s) => {
            put_fixed(buf, KIND_SNAPSHOT, s.index, s.term);
            put_membership(buf, &s.membership);
        }
        Record::Truncate { from } => put_fixed(buf, KIND_TRUNCATE, *from, 0),
        Record::GroupStart { group_bytes } => {
            put_fixed(buf, KIND_GROUP_START, *group_bytes, 0);
        }
        Record::Compact(s) => {
            put_fixed(buf, KIND_COMPACT, s.index, s.term);
            put_membership(buf, &s.membership);
        }
    }
    let record_bytes = buf.len() - start;
    let body_bytes = record_bytes - PREFIX_BYTES;
    if body_bytes > RECORD_BODY_BYTES_MAX {
        buf.truncate(start);
        return Err(body_bytes);
    }
    let len = u32::try_from(body_bytes).expect("RECORD_BODY_BYTES_MAX fits in u32");
    let len_bytes = len.to_le_bytes();
    let crc = checksum(salt, &len_bytes, &buf[start + PREFIX_BYTES..]);
    buf[start..start + 4].copy_from_slice(&len_bytes);
    buf[start + 4..start + PREFIX_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(record_bytes)
}

/// A record's checksum: CRC32C started from `salt` (0 is plain CRC32C) over the length field
/// and the body.
pub fn checksum(salt: u32, len_bytes: &[u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(salt, len_bytes), body)
}

fn put_fixed(buf: &mut Vec<u8>, kind: u8, index: Index, term: Term) {
    buf.push(kind);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
}

fn put_membership(buf: &mut Vec<u8>, m: &Membership) {
    for set in [&m.voters, &m.outgoing, &m.learners] {
        // A membership of 2^32 nodes cannot be built in memory, let alone replicated.
        let count = u32::try_from(set.len()).expect("a membership has fewer than 2^32 nodes");
        buf.extend_from_slice(&count.to_le_bytes());
        for id in set {
            buf.extend_from_slice(&id.to_le_bytes());
        }
    }
}

/// Decodes the record at the start of `buf`, verifying its checksum under the segment's `salt`.
/// Returns the record and the number of bytes it took.
pub fn decode(buf: &[u8], salt: u32) -> Result<(Record, usize), DecodeError> {
    let Some(prefix) = buf.get(..PREFIX_BYTES) else {
        return Err(DecodeError::Incomplete {
            needed_bytes: PREFIX_BYTES,
            available_bytes: buf.len(),
        });
    };
    let mut r = Reader(prefix);
    let len_bytes = r.array::<4>()?;
    let body_bytes = u32::from_le_bytes(len_bytes) as usize;
    let crc = r.u32()?;
    if !(BODY_FIXED_BYTES..=RECORD_BODY_BYTES_MAX).contains(&body_bytes) {
        return Err(DecodeError::BadLength { body_bytes });
    }
    let record_bytes = PREFIX_BYTES + body_bytes;
    let Some(body) = buf.get(PREFIX_BYTES..record_bytes) else {
        return Err(DecodeError::Incomplete {
            needed_bytes: record_bytes,
            available_bytes: buf.len(),
        });
    };
    if checksum(salt, &len_bytes, body) != crc {
        return Err(DecodeError::Checksum);
    }
    let record = decode_body(body)?;
    Ok((record, record_bytes))
}

/// Whether `buf` may start a record [`decode`] accepts, judged without the checksum: from the
/// length field, the kind, and the few fields that fix the body's layout. Every record `decode`
/// accepts passes; garbage almost never does. For searches over damaged bytes, where checking
/// the CRC at every offset whose length field merely fits could cover up to 64 MiB each.
pub fn may_start_record(buf: &[u8]) -> bool {
    let Some(len) = buf.get(..4) else {
        return false;
    };
    let body_bytes = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(body) = buf.get(PREFIX_BYTES..PREFIX_BYTES.saturating_add(body_bytes)) else {
        return false;
    };
    (BODY_FIXED_BYTES..=RECORD_BODY_BYTES_MAX).contains(&body_bytes)
        && laid_out_bytes(body) == Some(body_bytes)
}

/// The body length the fixed fields and counts at the start of `body` imply.
fn laid_out_bytes(body: &[u8]) -> Option<usize> {
    let mut r = Reader(body);
    let kind = r.u8().ok()?;
    if r.u64().ok()? > INDEX_MAX {
        return None;
    }
    r.u64().ok()?;
    let payload = match kind {
        KIND_ENTRY => match r.u8().ok()? {
            PAYLOAD_NOOP => 1,
            PAYLOAD_COMMAND => 1 + 4 + r.u32().ok()? as usize,
            PAYLOAD_MEMBERSHIP => 1 + r.membership_bytes()?,
            _ => return None,
        },
        KIND_HARD_STATE => 1 + 8,
        KIND_SNAPSHOT | KIND_COMPACT => r.membership_bytes()?,
        KIND_TRUNCATE | KIND_GROUP_START => 0,
        _ => return None,
    };
    Some(BODY_FIXED_BYTES + payload)
}

fn decode_body(body: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader(body);
    let kind = r.u8()?;
    let index = r.u64()?;
    let term = r.u64()?;
    if index > INDEX_MAX {
        return Err(DecodeError::Malformed("index out of range"));
    }
    let record = match kind {
        KIND_ENTRY => {
            let payload = match r.u8()? {
                PAYLOAD_NOOP => Payload::Noop,
                PAYLOAD_COMMAND => {
                    let len = r.u32()? as usize;
                    Payload::Command(Bytes::copy_from_slice(r.bytes(len)?))
                }
                PAYLOAD_MEMBERSHIP => Payload::Membership(r.membership()?),
                _ => return Err(DecodeError::Malformed("unknown payload tag")),
            };
            if index == 0 {
                return Err(DecodeError::Malformed("entry index 0"));
            }
            Record::Entry(Entry {
                index,
                term,
                payload,
            })
        }
        KIND_HARD_STATE => {
            let vote = match (r.u8()?, r.u64()?) {
                (0, 0) => None,
                (1, id) => Some(id),
                _ => return Err(DecodeError::Malformed("bad vote")),
            };
            Record::HardState(HardState {
                term,
                vote,
                commit: index,
            })
        }
        KIND_SNAPSHOT | KIND_COMPACT => {
            let meta = SnapshotMeta {
                index,
                term,
                membership: r.membership()?,
            };
            if kind == KIND_SNAPSHOT {
                Record::Snapshot(meta)
            } else {
                Record::Compact(meta)
            }
        }
        KIND_TRUNCATE => {
            if index == 0 || term != 0 {
                return Err(DecodeError::Malformed("bad truncation"));
            }
            Record::Truncate { from: index }
        }
        KIND_GROUP_START => {
            if index < RECORD_HEADER_BYTES as u64 || term != 0 {
                return Err(DecodeError::Malformed("bad group start"));
            }
            Record::GroupStart { group_bytes: index }
        }
        _ => return Err(DecodeError::Malformed("unknown record kind")),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes in record"));
    }
    Ok(record)
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.0.len() {
            return Err(DecodeError::Malformed("field runs past the record"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn ids(&mut self) -> Result<BTreeSet<NodeId>, DecodeError> {
        let count = self.u32()? as usize;
        // Check the count against what is left before building anything from it.
        if count.saturating_mul(8) > self.0.len() {
            return Err(DecodeError::Malformed("node id list runs past the record"));
        }
        let mut ids = BTreeSet::new();
        let mut previous: Option<NodeId> = None;
        for _ in 0..count {
            let id = self.u64()?;
            if previous.is_some_and(|p| p >= id) {
                return Err(DecodeError::Malformed("node ids not strictly ascending"));
            }
            previous = Some(id);
            ids.insert(id);
        }
        Ok(ids)
    }

    /// Skips a membership's three counted id lists, returning their encoded size.
    fn membership_bytes(&mut self) -> Option<usize> {
        let mut total = 0;
        for _ in 0..3 {
            let ids_bytes = (self.u32().ok()? as usize).checked_mul(8)?;
            self.bytes(ids_bytes).ok()?;
            total += 4 + ids_bytes;
        }
        Some(total)
    }

    fn membership(&mut self) -> Result<Membership, DecodeError> {
        Ok(Membership {
            voters: self.ids()?,
            outgoing: self.ids()?,
            learners: self.ids()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u32 = 0x5a17_c0de;

    fn samples() -> Vec<Record> {
        let joint = Membership {
            voters: [1, 2, 4].into(),
            outgoing: [1, 2, 3].into(),
            learners: [9].into(),
        };
        vec![
            Record::Entry(Entry {
                index: 1,
                term: 1,
                payload: Payload::Noop,
            }),
            Record::Entry(Entry {
                index: 2,
                term: 3,
                payload: Payload::Command(Bytes::from_static(b"put k v")),
            }),
            Record::Entry(Entry {
                index: 3,
                term: 3,
                payload: Payload::Command(Bytes::new()),
            }),
            Record::Entry(Entry {
                index: INDEX_MAX,
                term: u64::MAX,
                payload: Payload::Membership(joint.clone()),
            }),
            Record::HardState(HardState {
                term: 7,
                vote: Some(3),
                commit: 42,
            }),
            Record::HardState(HardState::default()),
            Record::Snapshot(SnapshotMeta {
                index: 100,
                term: 5,
                membership: joint.clone(),
            }),
            Record::Truncate { from: 17 },
            Record::GroupStart { group_bytes: 25 },
            Record::GroupStart {
                group_bytes: 1 << 30,
            },
            Record::Compact(SnapshotMeta::default()),
            Record::Compact(SnapshotMeta {
                index: 9,
                term: 2,
                membership: Membership::new([1, 2, 3], []),
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for record in samples() {
            let mut buf = Vec::new();
            let n = encode(&record, &mut buf, SALT).unwrap();
            assert_eq!(n, buf.len());
            assert_eq!(record_bytes(&record), n);
            assert_eq!(decode(&buf, SALT), Ok((record.clone(), n)), "{record:?}");
        }
    }

    #[test]
    fn a_record_checks_only_under_the_salt_it_was_written_with() {
        for record in samples() {
            for salt in [0, 1, SALT, u32::MAX] {
                let mut buf = Vec::new();
                encode(&record, &mut buf, salt).unwrap();
                assert!(decode(&buf, salt).is_ok(), "{record:?}");
                for other in [0, 1, 2, SALT, SALT ^ 1, u32::MAX]
                    .into_iter()
                    .filter(|&o| o != salt)
                {
                    assert_eq!(
                        decode(&buf, other),
                        Err(DecodeError::Checksum),
                        "{record:?} written under {salt:#x} checks under {other:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn salt_zero_is_the_plain_checksum_of_segments_written_before_salts() {
        let mut buf = Vec::new();
        encode(&samples()[1], &mut buf, 0).unwrap();
        let plain = crc32c::crc32c(&[&buf[..4], &buf[PREFIX_BYTES..]].concat());
        assert_eq!(buf[4..PREFIX_BYTES], plain.to_le_bytes());
    }

    #[test]
    fn every_record_may_start_a_record_and_a_damaged_one_may_not() {
        for record in samples() {
            let mut buf = Vec::new();
            encode(&record, &mut buf, SALT).unwrap();
            assert!(may_start_record(&buf), "{record:?}");
            // Its length field one off, or its kind unknown: the layout no longer fits.
            for damage in [
                |b: &mut Vec<u8>| b[0] = b[0].wrapping_add(1),
                |b: &mut Vec<u8>| b[PREFIX_BYTES] = 9,
            ] {
                let mut bad = buf.clone();
                bad.push(0);
                damage(&mut bad);
                assert!(!may_start_record(&bad), "{record:?}");
            }
        }
    }

    #[test]
    fn records_decode_back_to_back() {
        let mut buf = Vec::new();
        for record in samples() {
            encode(&record, &mut buf, SALT).unwrap();
        }
        let mut at = 0;
        let mut out = Vec::new();
        while at < buf.len() {
            let (r, n) = decode(&buf[at..], SALT).unwrap();
            out.push(r);
            at += n;
        }
        assert_eq!(out, samples());
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_bit_flip_is_caught() {
        for record in samples() {
            let mut buf = Vec::new();
            encode(&record, &mut buf, SALT).unwrap();
            for len in 0..buf.len() {
                assert!(
                    matches!(
                        decode(&buf[..len], SALT),
                        Err(DecodeError::Incomplete { .. } | DecodeError::BadLength { .. })
                    ),
                    "prefix of {len} bytes"
                );
            }
            for byte in 0..buf.len() {
                for bit in 0..8 {
                    let mut damaged = buf.clone();
                    damaged[byte] ^= 1 << bit;
                    assert!(
                        decode(&damaged, SALT).is_err(),
                        "flip {byte}:{bit} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn a_valid_checksum_over_nonsense_is_malformed_not_a_panic() {
        // Bodies the encoder never writes, sealed with a correct checksum.
        let seal = |body: &[u8]| {
            let len = (body.len() as u32).to_le_bytes();
            let crc = checksum(SALT, &len, body);
            let mut buf = len.to_vec();
            buf.extend_from_slice(&crc.to_le_bytes());
            buf.extend_from_slice(body);
            buf
        };
        let fixed = |kind: u8, index: u64, term: u64| {
            let mut b = vec![kind];
            b.extend_from_slice(&index.to_le_bytes());
            b.extend_from_slice(&term.to_le_bytes());
            b
        };
        let mut unknown_kind = fixed(99, 1, 1);
        unknown_kind.push(0);
        let mut huge_command = fixed(KIND_ENTRY, 1, 1);
        huge_command.push(PAYLOAD_COMMAND);
        huge_command.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut huge_list = fixed(KIND_SNAPSHOT, 1, 1);
        huge_list.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut unsorted = fixed(KIND_COMPACT, 1, 1);
        unsorted.extend_from_slice(&2u32.to_le_bytes());
        unsorted.extend_from_slice(&5u64.to_le_bytes());
        unsorted.extend_from_slice(&5u64.to_le_bytes());
        unsorted.extend_from_slice(&[0; 8]);
        let mut trailing = fixed(KIND_TRUNCATE, 3, 0);
        trailing.push(0);
        let mut bad_vote = fixed(KIND_HARD_STATE, 3, 1);
        bad_vote.push(0);
        bad_vote.extend_from_slice(&7u64.to_le_bytes());
        let mut index_zero = fixed(KIND_ENTRY, 0, 1);
        index_zero.push(PAYLOAD_NOOP);
        let mut index_huge = fixed(KIND_ENTRY, INDEX_MAX + 1, 1);
        index_huge.push(PAYLOAD_NOOP);
        for body in [
            unknown_kind,
            huge_command,
            huge_list,
            unsorted,
            trailing,
            bad_vote,
            index_zero,
            index_huge,
            fixed(KIND_TRUNCATE, 3, 9),
            fixed(KIND_GROUP_START, 24, 0),
            fixed(KIND_GROUP_START, 100, 1),
        ] {
            assert!(matches!(
                decode(&seal(&body), SALT),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn impossible_lengths_are_refused_before_reading() {
        let mut buf = vec![0u8; 16];
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&buf, SALT),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&[0; 64], SALT),
            Err(DecodeError::BadLength { body_bytes: 0 })
        ));
    }
}
