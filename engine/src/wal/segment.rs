//! Segment files: naming, the header, and scanning a segment's bytes into records.
//!
//! ```text
//! offset  size  field
//!      0     8  magic          "KEEL-WAL"
//!      8     4  version        FORMAT_VERSION, little-endian (1: written before group starts;
//!                              2: before salts)
//!     12     4  salt           the log's checksum salt, never 0 (before version 3: flags, 0)
//!     16     8  seq            the segment's sequence number, as in its file name
//!     24     8  first_index    the index the next entry appended was to have when it was created
//!     32     4  crc            CRC32C over bytes 0..32
//!     36     …  records
//! ```
//!
//! Segments are named `{seq:020}.wal` so that they sort by name; sequence numbers have no gaps.
//! The last segment may run on in zeros after its last record: space filled ahead of use.
//!
//! The salt is drawn at random when the log is created and written into every segment's header;
//! each record's checksum starts from it (see [`super::record`]), so bytes a client wrote inside
//! a command never check as a record of the log. Segments of versions 1 and 2 are read with
//! salt 0, the plain checksum they were written with. One log, one salt: a segment whose header
//! cannot be read is searched under the salt the others name.

use std::path::{Path, PathBuf};

use super::record::{self, DecodeError, Record, INDEX_MAX};
use crate::core::Index;

pub const MAGIC: [u8; 8] = *b"KEEL-WAL";
/// Version 3 salts every record's checksum. Version 2 began every write group with a
/// [`Record::GroupStart`]; segments of version 2, and of version 1 (which do not), are still
/// read: with salt 0, and version 1 under the stricter rule recovery had for it.
pub const FORMAT_VERSION: u32 = 3;
const FORMAT_VERSION_WITHOUT_SALT: u32 = 2;
const FORMAT_VERSION_WITHOUT_GROUPS: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 36;
const SEGMENT_SUFFIX: &str = ".wal";

/// What a segment's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub first_index: Index,
    /// Every write group in the segment begins with a group start (format version 2 on).
    pub marks_groups: bool,
    /// What every record's checksum starts from: the log's salt, or 0 in a segment written
    /// before salts (format version 3 on, where it is never 0).
    pub salt: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0; SEGMENT_HEADER_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        let version = match (self.marks_groups, self.salt) {
            (true, 0) => FORMAT_VERSION_WITHOUT_SALT,
            (true, _) => FORMAT_VERSION,
            (false, 0) => FORMAT_VERSION_WITHOUT_GROUPS,
            (false, _) => panic!("no segment format has salts without group starts"),
        };
        out[8..12].copy_from_slice(&version.to_le_bytes());
        out[12..16].copy_from_slice(&self.salt.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some(h) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(format!(
                "segment header incomplete: {} of {SEGMENT_HEADER_BYTES} bytes",
                bytes.len()
            ));
        };
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        if h[..8] != MAGIC {
            return Err("not a keel log segment (bad magic)".into());
        }
        if half(32) != crc32c::crc32c(&h[..32]) {
            return Err("segment header checksum mismatch".into());
        }
        let version = half(8);
        if !(FORMAT_VERSION_WITHOUT_GROUPS..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "segment format version {version}; this build reads \
                 {FORMAT_VERSION_WITHOUT_GROUPS} to {FORMAT_VERSION}"
            ));
        }
        let salt = half(12);
        match (version, salt) {
            (FORMAT_VERSION, 0) => return Err("salt 0 in a salted segment".into()),
            (FORMAT_VERSION, _) | (_, 0) => {}
            _ => return Err("unknown segment flags".into()),
        }
        let first_index = word(24);
        if first_index == 0 || first_index > INDEX_MAX {
            return Err(format!("first index {first_index} out of range"));
        }
        Ok(Self {
            seq: word(16),
            first_index,
            marks_groups: version != FORMAT_VERSION_WITHOUT_GROUPS,
            salt,
        })
    }
}

pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

/// The sequence number in a segment file name, or `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment's bytes, read as far as they are valid.
#[derive(Debug)]
pub struct Scan {
    pub header: Result<SegmentHeader, String>,
    /// Valid records in order, each with its byte offset.
    pub records: Vec<(u64, Record)>,
    /// `None` when every byte was accounted for.
    pub damage: Option<Damage>,
    /// Where a run of zeros that ends the segment begins: space zero-filled ahead of use and not
    /// written yet (no record starts with a zero length).
    pub unwritten_from: Option<u64>,
}

/// Where a segment stopped being valid.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first byte that is not part of a valid record (or of the header).
    pub offset: u64,
    pub reason: String,
    /// The first valid record found after the damage, with its offset: if there is one, the
    /// damage is not a torn tail.
    pub valid_after: Option<(u64, Record)>,
}

/// Reads a whole segment. Never panics, whatever the bytes. When the header cannot be read, the
/// search for valid records after it checks them under `salt_without_header`.
pub fn scan(bytes: &[u8], salt_without_header: u32) -> Scan {
    let header = SegmentHeader::decode(bytes);
    let salt = match &header {
        Ok(h) => h.salt,
        Err(reason) => {
            let valid_after = find_valid_record(bytes, 1, salt_without_header);
            return Scan {
                header: header.clone(),
                records: Vec::new(),
                damage: Some(Damage {
                    offset: 0,
                    reason: reason.clone(),
                    valid_after,
                }),
                unwritten_from: None,
            };
        }
    };
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut damage = None;
    let mut unwritten_from = None;
    while at < bytes.len() {
        match record::decode(&bytes[at..], salt) {
            Ok((r, n)) => {
                records.push((at as u64, r));
                at += n;
            }
            Err(_) if all_zero(&bytes[at..]) => {
                unwritten_from = Some(at as u64);
                break;
            }
            Err(e) => {
                damage = Some(Damage {
                    offset: at as u64,
                    reason: describe(e),
                    valid_after: find_valid_record(bytes, at + 1, salt),
                });
                break;
            }
        }
    }
    Scan {
        header,
        records,
        damage,
        unwritten_from,
    }
}

pub fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn describe(e: DecodeError) -> String {
    match e {
        DecodeError::Incomplete { .. } => format!("partial record ({e})"),
        _ => format!("bad record ({e})"),
    }
}

/// The first offset at or after `from` where a whole record valid under `salt` starts.
///
/// A torn write leaves a partial record, zeros or garbage, and nothing valid after it; any valid
/// record after the damage means the damage is inside the log, not at its end. This tries every
/// offset, and checksums only where the bytes are laid out as a record
/// ([`record::may_start_record`]): in a large torn entry of random bytes about one offset in a
/// hundred has a length field that fits, and the checksums over those ran to minutes.
pub fn find_valid_record(bytes: &[u8], from: usize, salt: u32) -> Option<(u64, Record)> {
    // A segment zero-filled ahead of use and torn at its header: nothing to try.
    if bytes.get(from..).is_none_or(all_zero) {
        return None;
    }
    (from..bytes.len())
        .filter(|&at| record::may_start_record(&bytes[at..]))
        .find_map(|at| {
            record::decode(&bytes[at..], salt)
                .ok()
                .map(|(r, _)| (at as u64, r))
        })
}

/// The first group start at or after `from` among the records valid under `salt` there, with its
/// offset, searching past any further damage.
pub fn group_start_after(bytes: &[u8], from: u64, salt: u32) -> Option<(u64, Record)> {
    let mut at = usize::try_from(from).ok()?;
    while let Some((found, _)) = find_valid_record(bytes, at, salt) {
        // Records run back to back from the one found, up to the next damage.
        let mut next = usize::try_from(found).ok()?;
        while let Ok((record, n)) = record::decode(&bytes[next..], salt) {
            if matches!(record, Record::GroupStart { .. }) {
                return Some((next as u64, record));
            }
            next += n;
        }
        at = next + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Entry, Payload};

    const SALT: u32 = 0x5a17_c0de;

    fn segment_with(n: u64) -> Vec<u8> {
        let mut buf = SegmentHeader {
            seq: 3,
            first_index: 1,
            marks_groups: true,
            salt: SALT,
        }
        .encode()
        .to_vec();
        for index in 1..=n {
            let e = Entry {
                index,
                term: 1,
                payload: Payload::Command(bytes::Bytes::from(vec![index as u8; 40])),
            };
            record::encode(&Record::Entry(e), &mut buf, SALT).unwrap();
        }
        buf
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let h = SegmentHeader {
            seq: 7,
            first_index: 1234,
            marks_groups: true,
            salt: SALT,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for i in 0..SEGMENT_HEADER_BYTES {
            let mut b = bytes;
            b[i] ^= 0x10;
            assert!(SegmentHeader::decode(&b).is_err());
        }
        assert!(SegmentHeader::decode(&bytes[..20]).is_err());
    }

    #[test]
    fn each_format_version_says_what_its_records_are_checked_under() {
        let salted = SegmentHeader {
            seq: 7,
            first_index: 1,
            marks_groups: true,
            salt: SALT,
        };
        let version = |h: SegmentHeader| u32::from_le_bytes(h.encode()[8..12].try_into().unwrap());
        assert_eq!(version(salted), 3);
        let before_salts = SegmentHeader { salt: 0, ..salted };
        assert_eq!(version(before_salts), 2);
        let before_groups = SegmentHeader {
            marks_groups: false,
            ..before_salts
        };
        assert_eq!(version(before_groups), 1);
        for h in [salted, before_salts, before_groups] {
            assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }
        // A header sealed with a correct checksum over fields no writer pairs.
        let reseal = |mut b: [u8; SEGMENT_HEADER_BYTES], version: u32, salt: u32| {
            b[8..12].copy_from_slice(&version.to_le_bytes());
            b[12..16].copy_from_slice(&salt.to_le_bytes());
            let crc = crc32c::crc32c(&b[..32]);
            b[32..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let bytes = salted.encode();
        assert!(
            SegmentHeader::decode(&reseal(bytes, 3, 0)).is_err(),
            "salt 0"
        );
        assert!(
            SegmentHeader::decode(&reseal(bytes, 2, SALT)).is_err(),
            "flags"
        );
        assert!(
            SegmentHeader::decode(&reseal(bytes, 4, SALT)).is_err(),
            "version"
        );
    }

    #[test]
    fn behind_an_unreadable_header_records_are_found_only_under_their_salt() {
        let mut bytes = segment_with(3);
        bytes[0] ^= 1;
        let valid_after = |salt| scan(&bytes, salt).damage.unwrap().valid_after;
        assert_eq!(valid_after(0), None);
        assert_eq!(valid_after(SALT ^ 1), None);
        let (at, _) = valid_after(SALT).unwrap();
        assert_eq!(at, SEGMENT_HEADER_BYTES as u64);
    }

    #[test]
    fn clean_segment_scans_fully() {
        let s = scan(&segment_with(5), 0);
        assert!(s.damage.is_none());
        assert_eq!(s.records.len(), 5);
        assert_eq!(s.records[0].0, SEGMENT_HEADER_BYTES as u64);
    }

    #[test]
    fn torn_tail_has_nothing_valid_after_it() {
        let bytes = segment_with(5);
        let cut = bytes.len() - 10;
        let s = scan(&bytes[..cut], 0);
        assert_eq!(s.records.len(), 4);
        let d = s.damage.unwrap();
        assert!(d.valid_after.is_none());
        assert_eq!(d.offset, s.records[3].0 + (s.records[1].0 - s.records[0].0));
    }

    #[test]
    fn damage_before_valid_records_is_found() {
        let mut bytes = segment_with(5);
        let s = scan(&bytes, 0);
        let second = s.records[1].0 as usize;
        bytes[second + 30] ^= 1;
        let s = scan(&bytes, 0);
        assert_eq!(s.records.len(), 1);
        let d = s.damage.unwrap();
        assert_eq!(d.offset, second as u64);
        let (_, after) = d.valid_after.unwrap();
        assert_eq!(after.index(), 3);
    }

    #[test]
    fn a_group_start_is_found_past_further_damage_and_only_after_the_offset_given() {
        let group_start = Record::<Entry>::GroupStart { group_bytes: 500 };
        let mut bytes = segment_with(2);
        let first_group = bytes.len() as u64;
        record::encode(&group_start, &mut bytes, SALT).unwrap();
        let records_from = bytes.len();
        bytes.extend_from_slice(&segment_with(3)[SEGMENT_HEADER_BYTES..]);
        let second_group = bytes.len() as u64;
        record::encode(&group_start, &mut bytes, SALT).unwrap();
        bytes.extend_from_slice(&segment_with(1)[SEGMENT_HEADER_BYTES..]);
        // The second of the three records after the first group start: the search walks the
        // first, meets the damage, and searches on past it.
        let entry_bytes = segment_with(1).len() - SEGMENT_HEADER_BYTES;
        bytes[records_from + entry_bytes + 5] ^= 1;
        let found = |from| group_start_after(&bytes, from, SALT).map(|(at, _)| at);
        assert_eq!(found(0), Some(first_group));
        assert_eq!(
            found(first_group + 1),
            Some(second_group),
            "past the damage"
        );
        assert_eq!(found(second_group + 1), None);
        bytes.resize(bytes.len() + 4096, 0);
        let found = |from| group_start_after(&bytes, from, SALT).map(|(at, _)| at);
        assert_eq!(found(second_group + 1), None, "zeros after");
    }

    #[test]
    fn a_large_entry_of_random_bytes_torn_in_a_zero_filled_segment_is_a_torn_tail() {
        // Random bytes (compressed or encrypted commands): about one offset in a hundred has a
        // length field that fits in the segment; checksummed, the search took minutes.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..12 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut bytes = segment_with(1);
        let start = bytes.len();
        let entry = Entry {
            index: 2,
            term: 1,
            payload: Payload::Command(bytes::Bytes::from(random)),
        };
        record::encode(&Record::Entry(entry), &mut bytes, SALT).unwrap();
        bytes.truncate(start + (bytes.len() - start) / 2);
        bytes.resize(64 << 20, 0);
        let s = scan(&bytes, 0);
        assert_eq!(s.records.len(), 1);
        let d = s.damage.expect("torn");
        assert_eq!(d.offset, start as u64);
        assert!(d.valid_after.is_none(), "{:?}", d.valid_after);
    }
}
