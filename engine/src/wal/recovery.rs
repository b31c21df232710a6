//! Recovery: read every segment, verify every record, and rebuild the log they describe.
//!
//! The rules, in the order they are checked:
//! - every salted header names the same salt, one log's, and no unsalted segment follows a
//!   salted one (a last segment whose header is unreadable is searched under that salt);
//! - sequence numbers have no gaps, and each segment starts where the log before it ended;
//! - a sealed segment (any but the last) is whole: it was fsynced before its successor existed,
//!   so any damage in it is corruption;
//! - in the last segment, damage is a torn tail (the last, unsynced write group, cut off) unless
//!   a later group follows it: a valid group start after it, or valid records past the end
//!   that its own group's start records. Each group is written only once the one before it is
//!   durable, so a later group proves the damaged bytes were synced. Valid records of the
//!   damaged group itself may follow the damage: a disk can persist the pages of an unsynced
//!   write in any order. (In a segment of format version 1, written before group starts, any
//!   valid record after damage is corruption.) Zeros to the end are space zero-filled ahead of
//!   use, where appends continue;
//! - every record obeys the log's rules ([`LogState`]);
//! - the log covers everything up to the recovered commit index, and has no hole after its
//!   snapshot.
//!
//! Nothing on disk is changed until every check has passed: a refusal leaves the damage in place
//! for a human (or, later, a repair from peers) to look at.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::record::Record;
use super::segment::{self, segment_path, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::state::{LogState, Slot};
use super::{fsync_dir, io_error, EntryLoc, IndexRange, SegmentMeta, TornTail, WalError};
use crate::core::{Entry, Index, Term};

impl Slot for (EntryLoc, Entry) {
    fn term(&self) -> Term {
        self.1.term
    }
}

/// What recovery found.
#[derive(Debug)]
pub(super) struct Recovery {
    pub state: LogState<(EntryLoc, Entry)>,
    /// Surviving segments, ascending; the last is where appends continue.
    pub segments: Vec<SegmentMeta>,
    /// Valid bytes in the last segment.
    pub active_len_bytes: u64,
    /// The log's salt, when a segment's header names one.
    pub log_salt: Option<u32>,
    pub torn_tail: Option<TornTail>,
    /// Where the last segment's last write group starts, when the tail was cut inside that
    /// group: its start still claims the bytes cut, where the next writes go (see `Wal::open`).
    pub open_group_at: Option<u64>,
}

/// A torn tail found by the scan, cut only once everything else checked out.
#[derive(Debug)]
struct TornCut {
    path: PathBuf,
    offset: u64,
    file_len_bytes: u64,
    reason: String,
    /// The segment was torn at creation (in its header or checkpoint): remove the file.
    remove_file: bool,
}

/// The segment sequence numbers in `dir`, ascending. Other files are left alone.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut seqs = Vec::new();
    let read_dir = fs::read_dir(dir).map_err(io_error("list the log directory", dir))?;
    for item in read_dir {
        let item = item.map_err(io_error("list the log directory", dir))?;
        if let Some(seq) = item
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_file_name)
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// The sequence number of a new log's first segment.
pub(super) const FIRST_SEGMENT_SEQ: u64 = 1;

/// Recovers the log in `dir`; `None` when it holds no segment (or only one torn at creation).
pub(super) fn recover(dir: &Path) -> Result<Option<Recovery>, WalError> {
    let seqs = list_segments(dir)?;
    let mut state: Option<LogState<(EntryLoc, Entry)>> = None;
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let mut active_len_bytes = 0;
    // The log's salt, and the first segment that named it.
    let mut salted: Option<(u32, u64)> = None;
    let mut torn: Option<TornCut> = None;
    let mut open_group_at = None;
    let next_index = |s: &Option<LogState<_>>| s.as_ref().map_or(1, LogState::next_index);

    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let bytes = fs::read(&path).map_err(io_error("read a segment", &path))?;
        // An unreadable header hides its segment's salt: the log's, if a header before it named
        // one. (Only a last segment's is searched: any other is sealed, and refused for it.)
        let log_salt = salted.map(|(salt, _)| salt);
        let scan = segment::scan(&bytes, log_salt.unwrap_or(0));
        let corrupt = |offset: u64, index_range: IndexRange, reason: String| WalError::Corrupt {
            file: path.clone(),
            offset,
            index_range,
            reason,
        };

        let header = match scan.header {
            Ok(h) => h,
            Err(reason) => {
                let valid_after = scan.damage.as_ref().and_then(|d| d.valid_after.as_ref());
                // With no other header to name the log's salt, records after this one cannot be
                // checked: any byte written after the header may belong to one.
                let unchecked_after = log_salt.is_none()
                    && !segment::all_zero(bytes.get(SEGMENT_HEADER_BYTES..).unwrap_or_default());
                if is_last && valid_after.is_none() && !unchecked_after {
                    // Created by a rollover whose header never reached the disk.
                    torn = Some(TornCut {
                        path: path.clone(),
                        offset: 0,
                        file_len_bytes: bytes.len() as u64,
                        reason,
                        remove_file: true,
                    });
                    break;
                }
                let why = if !is_last {
                    "in a segment followed by others"
                } else if valid_after.is_some() {
                    "in a segment that holds valid records"
                } else {
                    "in a segment that holds bytes after it, which no other header's salt lets \
                     anyone check"
                };
                return Err(corrupt(
                    0,
                    IndexRange::starting_at(next_index(&state)),
                    format!("{reason} ({why})"),
                ));
            }
        };
        if header.seq != seq {
            return Err(corrupt(
                0,
                IndexRange::starting_at(next_index(&state)),
                format!(
                    "the header names segment {} but the file is segment {seq}",
                    header.seq
                ),
            ));
        }
        if let Err(reason) = same_log(&mut salted, &header) {
            return Err(corrupt(
                0,
                IndexRange::starting_at(header.first_index),
                reason,
            ));
        }
        if let Some(log) = &state {
            let expected = log.next_index();
            let previous = seqs[i - 1];
            if seq != previous + 1 {
                return Err(corrupt(
                    0,
                    IndexRange::between(expected, header.first_index),
                    format!(
                        "segments {} to {} are missing between {} and this one",
                        previous + 1,
                        seq - 1,
                        segment::segment_file_name(previous)
                    ),
                ));
            }
            if header.first_index != expected {
                return Err(corrupt(
                    0,
                    IndexRange::between(expected, header.first_index),
                    format!(
                        "the segment starts at index {} but the log before it ends at {}",
                        header.first_index,
                        expected - 1
                    ),
                ));
            }
        }
        // A rollover writes the segment's checkpoint (hard state and snapshot) right after its
        // header. A last segment that ends before its checkpoint is whole holds nothing else;
        // kept, it would be the only record of term, vote and snapshot once compaction removed
        // the segments before it. Like a torn header, it was torn at creation.
        let ends_inside_checkpoint =
            matches!(scan.records.as_slice(), [] | [(_, Record::HardState(_))]);
        let proof_after = scan
            .damage
            .as_ref()
            .and_then(|d| later_group_after(&bytes, &header, &scan.records, d));
        if is_last && ends_inside_checkpoint && proof_after.is_none() {
            torn = Some(TornCut {
                path: path.clone(),
                offset: 0,
                file_len_bytes: bytes.len() as u64,
                reason: "the checkpoint after the segment's header is incomplete".into(),
                remove_file: true,
            });
            break;
        }
        let log = state.get_or_insert_with(|| LogState::new(header.first_index));
        // The last write group's start, and where it says the group ends.
        let last_group = scan.records.iter().rev().find_map(|(offset, r)| match r {
            Record::GroupStart { group_bytes } => Some((*offset, offset + group_bytes)),
            _ => None,
        });

        for (offset, record) in scan.records {
            let loc = EntryLoc {
                term: 0,
                seq,
                offset,
            };
            apply(log, record, loc)
                .map_err(|(index, reason)| corrupt(offset, IndexRange::single(index), reason))?;
        }
        segments.push(SegmentMeta {
            seq,
            first_index: header.first_index,
            salt: header.salt,
        });
        active_len_bytes = bytes.len() as u64;
        if let Some(from) = scan.unwritten_from {
            if !is_last {
                return Err(corrupt(
                    from,
                    IndexRange::starting_at(log.next_index()),
                    "zeros at the end of a sealed segment (sealing cuts what was never written)"
                        .into(),
                ));
            }
            active_len_bytes = from;
        }

        if let Some(damage) = scan.damage {
            let from = log.next_index();
            if !is_last {
                return Err(corrupt(
                    damage.offset,
                    IndexRange::starting_at(from),
                    format!(
                        "{} in a sealed segment (it was fsynced before the next one was created)",
                        damage.reason
                    ),
                ));
            }
            if let Some((at, record)) = proof_after {
                let index_range = match record {
                    Record::Entry(e) => IndexRange::between(from, e.index),
                    _ => IndexRange::starting_at(from),
                };
                let what = if header.marks_groups {
                    "a later write group"
                } else {
                    "a valid record"
                };
                return Err(corrupt(
                    damage.offset,
                    index_range,
                    format!(
                        "{}, followed by {what} at byte {at}: damage inside the log, not a torn \
                         tail",
                        damage.reason
                    ),
                ));
            }
            active_len_bytes = damage.offset;
            torn = Some(TornCut {
                path: path.clone(),
                offset: damage.offset,
                file_len_bytes: bytes.len() as u64,
                reason: damage.reason,
                remove_file: false,
            });
        }
        open_group_at = last_group
            .filter(|&(_, end)| end > active_len_bytes)
            .map(|(at, _)| at);
    }

    let Some(state) = state else {
        // No segment, or a single one torn at creation: an empty log. Only the log's first
        // segment can be that: a later one is alone once compaction removed those before it,
        // which it does only after syncing it. Damage that looks like a torn creation there
        // must not make a node that voted and acknowledged start afresh.
        if let Some(cut) = &torn {
            if seqs[0] != FIRST_SEGMENT_SEQ {
                return Err(WalError::Corrupt {
                    file: cut.path.clone(),
                    offset: 0,
                    index_range: IndexRange::starting_at(1),
                    reason: format!(
                        "{}, in the log's only segment, which compaction left alone after \
                         syncing it",
                        cut.reason
                    ),
                });
            }
            cut_torn_tail(dir, cut)?;
        }
        return Ok(None);
    };
    let first_path = segment_path(dir, segments[0].seq);
    if let Some((lo, hi)) = state.hole() {
        return Err(WalError::Corrupt {
            file: first_path,
            offset: 0,
            index_range: IndexRange {
                first: lo,
                last: Some(hi),
            },
            reason: "entries before the first segment are missing, and no snapshot covers them"
                .into(),
        });
    }
    let commit = state.hard_state.commit;
    if state.last_index() < commit {
        let (file, offset) = match &torn {
            Some(cut) => (cut.path.clone(), cut.offset),
            None => {
                let last = segments
                    .last()
                    .expect("recovery found at least one segment");
                (segment_path(dir, last.seq), active_len_bytes)
            }
        };
        return Err(WalError::Corrupt {
            file,
            offset,
            index_range: IndexRange {
                first: state.last_index() + 1,
                last: Some(commit),
            },
            reason: format!(
                "the log ends at {} but the hard state records commit {commit}: committed \
                 entries are missing",
                state.last_index()
            ),
        });
    }

    let torn_tail = match torn {
        None => None,
        Some(cut) => {
            cut_torn_tail(dir, &cut)?;
            Some(TornTail {
                file: cut.path,
                offset: cut.offset,
                bytes_dropped: cut.file_len_bytes - cut.offset,
                reason: cut.reason,
            })
        }
    };
    Ok(Some(Recovery {
        state,
        segments,
        active_len_bytes,
        log_salt: salted.map(|(salt, _)| salt),
        torn_tail,
        open_group_at,
    }))
}

/// Whether `header` belongs to the log whose salt `salted` holds (with the first segment that
/// named it), which it sets at the log's first salted segment. Another salt means a segment of
/// another log among this one's, and an unsalted segment after a salted one a segment no writer
/// of this log made.
fn same_log(salted: &mut Option<(u32, u64)>, header: &SegmentHeader) -> Result<(), String> {
    match *salted {
        None if header.salt != 0 => *salted = Some((header.salt, header.seq)),
        Some((salt, first)) if header.salt != salt => {
            let named = segment::segment_file_name(first);
            return Err(if header.salt == 0 {
                format!(
                    "an unsalted segment after the salted {named}: written by no writer of \
                     this log"
                )
            } else {
                format!("the header's salt differs from {named}'s: a segment of another log")
            });
        }
        _ => {}
    }
    Ok(())
}

/// What after `damage` proves it is not a torn tail: a valid record of a write group after the
/// damaged one (each group is written only once the one before it is durable, so the damaged
/// bytes were synced), with its offset. In a segment without group starts, any valid record.
fn later_group_after(
    bytes: &[u8],
    header: &SegmentHeader,
    records: &[(u64, Record)],
    damage: &segment::Damage,
) -> Option<(u64, Record)> {
    let first_valid = damage.valid_after.clone()?;
    if !header.marks_groups {
        return Some(first_valid);
    }
    // Damage inside a group whose start survived: anything valid past that group's end.
    let group_end = records
        .iter()
        .rev()
        .find_map(|(offset, record)| match record {
            Record::GroupStart { group_bytes } => Some(offset + group_bytes),
            _ => None,
        });
    if let Some(end) = group_end.filter(|&end| damage.offset < end) {
        let found = usize::try_from(end)
            .ok()
            .and_then(|end| segment::find_valid_record(bytes, end, header.salt));
        if found.is_some() {
            return found;
        }
    }
    // Otherwise (its start is damaged, or the group began in the segment before): the start
    // of a later group.
    segment::group_start_after(bytes, damage.offset + 1, header.salt)
}

/// Replays one record; on failure, the index it concerns and why it breaks the rules.
fn apply(
    log: &mut LogState<(EntryLoc, Entry)>,
    record: Record,
    mut loc: EntryLoc,
) -> Result<(), (Index, String)> {
    let index = record.index();
    let result = match record {
        Record::Entry(e) => {
            loc.term = e.term;
            log.push(e.index, (loc, e))
        }
        Record::HardState(h) => log.set_hard_state(h),
        Record::Snapshot(s) => log.install(&s),
        Record::Truncate { from } => log.truncate(from),
        Record::Compact(s) => log.compact(&s),
        Record::GroupStart { .. } => Ok(()),
    };
    result.map_err(|reason| (index, reason))
}

fn cut_torn_tail(dir: &Path, cut: &TornCut) -> Result<(), WalError> {
    tracing::warn!(
        file = %cut.path.display(),
        offset = cut.offset,
        bytes_dropped = cut.file_len_bytes - cut.offset,
        reason = %cut.reason,
        "log recovery: truncating a torn tail (the last write had not been made durable)"
    );
    if cut.remove_file {
        fs::remove_file(&cut.path).map_err(io_error("remove a torn segment", &cut.path))?;
        return fsync_dir(dir);
    }
    debug_assert!(cut.offset >= SEGMENT_HEADER_BYTES as u64 || cut.offset == 0);
    let file = OpenOptions::new()
        .write(true)
        .open(&cut.path)
        .map_err(io_error("open a segment to cut its torn tail", &cut.path))?;
    file.set_len(cut.offset)
        .map_err(io_error("cut a torn tail", &cut.path))?;
    file.sync_all().map_err(io_error(
        "sync a segment after cutting its torn tail",
        &cut.path,
    ))
}
