//! Damage on disk: flipped bytes, files cut mid-record, missing segments, zeroed ranges.
//!
//! Every case ends in one of two ways: a clean torn-tail recovery, which only ever drops the
//! last (unsynced) write, or a refusal (`WalError::Corrupt`) that names the file, the offset and
//! the entries, and leaves every file exactly as it was. Never a panic, never a recovered log
//! that silently lacks an entry it should hold.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_engine::core::{Entry, HardState, Index, Membership, Payload, SnapshotMeta, Write};
use keel_engine::wal::record::{self, Record};
use keel_engine::wal::segment::{self, SegmentHeader};
use keel_engine::wal::{IndexRange, Recovered, SyncMode, Wal, WalError, WalOptions};

const SEGMENT_BYTES_MAX: u64 = 2048;
const GROUPS: u64 = 40;
const ENTRIES_PER_GROUP: u64 = 3;

/// The salt of the logs crafted here by hand.
const SALT: u32 = 0x5a17_c0de;

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes_max: SEGMENT_BYTES_MAX,
        ..WalOptions::default()
    }
}

fn entry(index: Index) -> Entry {
    Entry {
        index,
        term: 1 + index / 50,
        payload: Payload::Command(Bytes::from(format!("command {index:05} ").repeat(4))),
    }
}

/// A log written group by group, each synced, with the commit index lagging the durable end.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Every entry written, in order.
    entries: Vec<Entry>,
    segments: Vec<PathBuf>,
    /// Each segment's bytes as written.
    originals: Vec<Vec<u8>>,
    /// Where the last write (one entry and a hard state) begins in the last segment.
    last_write_offset: u64,
    /// Entries written before the last write: a torn tail must never lose one of them.
    entries_before_last_write: usize,
}

/// A new log in a directory of its own, written without syncs: no segment is zero-filled ahead
/// of use, whose timing would move the segment boundaries from run to run (and a seed would not
/// replay).
fn unsynced_log(segment_bytes_max: u64) -> (tempfile::TempDir, PathBuf, Wal) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let written = WalOptions {
        segment_bytes_max,
        sync: SyncMode::UnsafeNoFsync,
        ..opts()
    };
    let (wal, _) = Wal::open(&dir, written).unwrap();
    (tmp, dir, wal)
}

impl Fixture {
    fn new() -> Self {
        let (tmp, dir, mut wal) = unsynced_log(SEGMENT_BYTES_MAX);
        let mut entries: Vec<Entry> = Vec::new();
        let write_group = |wal: &mut Wal, entries: &mut Vec<Entry>, count: u64| {
            let next = entries.len() as u64 + 1;
            let w = Write {
                entries: (next..next + count).map(entry).collect(),
                hard_state: Some(HardState {
                    term: 1 + (next + count - 1) / 50,
                    vote: Some(1),
                    commit: (next + count - 1).saturating_sub(9),
                }),
                ..Write::default()
            };
            entries.extend(w.entries.iter().cloned());
            wal.append(&w).unwrap();
            wal.sync().unwrap();
        };
        for _ in 0..GROUPS {
            write_group(&mut wal, &mut entries, ENTRIES_PER_GROUP);
        }
        // The last write must start and end in one segment; add groups until it does.
        let (last_write_offset, entries_before_last_write) = loop {
            let segments_before = wal.segment_paths().len();
            let last = wal.segment_paths().pop().unwrap();
            let offset = fs::metadata(&last).unwrap().len();
            let before = entries.len();
            write_group(&mut wal, &mut entries, 1);
            if wal.segment_paths().len() == segments_before {
                break (offset, before);
            }
        };
        let segments = wal.segment_paths();
        assert!(segments.len() >= 5, "the fixture needs several segments");
        drop(wal);
        let originals = segments.iter().map(|p| fs::read(p).unwrap()).collect();
        Fixture {
            _tmp: tmp,
            dir,
            entries,
            segments,
            originals,
            last_write_offset,
            entries_before_last_write,
        }
    }

    fn last(&self) -> &Path {
        self.segments.last().unwrap()
    }

    fn restore(&self) {
        for (path, bytes) in self.segments.iter().zip(&self.originals) {
            fs::write(path, bytes).unwrap();
        }
    }

    fn assert_files_unchanged(&self) {
        for (path, bytes) in self.segments.iter().zip(&self.originals) {
            let now = fs::read(path).unwrap_or_default();
            assert!(&now == bytes, "{} was changed", path.display());
        }
    }

    /// Opens the log and expects a refusal. (Each test checks that the damaged file is
    /// unchanged after it.)
    fn expect_corrupt(&self) -> (PathBuf, u64, IndexRange, String) {
        let err = Wal::open(&self.dir, opts()).expect_err("damage must be refused");
        println!("refused: {err}");
        match err {
            WalError::Corrupt {
                file,
                offset,
                index_range,
                reason,
            } => (file, offset, index_range, reason),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// Opens the log and checks the recovered log is an unbroken prefix of what was written,
    /// holding at least every entry written before the last write.
    fn expect_recovered(&self) -> Recovered {
        let (_, rec) = Wal::open(&self.dir, opts()).expect("recovery must succeed");
        assert!(rec.snapshot.index == 0);
        assert!(
            rec.entries.len() >= self.entries_before_last_write,
            "lost {} entries written before the last write",
            self.entries_before_last_write - rec.entries.len().min(self.entries_before_last_write)
        );
        assert_eq!(rec.entries[..], self.entries[..rec.entries.len()]);
        assert!(rec.entries.len() as u64 >= rec.hard_state.commit);
        rec
    }
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::write(path, &bytes).unwrap();
    bytes
}

fn assert_unchanged(path: &Path, expected: &[u8]) {
    assert!(
        fs::read(path).unwrap() == expected,
        "{} changed after a refusal",
        path.display()
    );
}

#[test]
fn an_undamaged_log_recovers_every_entry() {
    let fx = Fixture::new();
    let rec = fx.expect_recovered();
    assert_eq!(rec.entries, fx.entries);
    assert_eq!(rec.torn_tail, None);
    fx.assert_files_unchanged();
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_refused() {
    let fx = Fixture::new();
    let target = &fx.segments[1];
    let at = 700;
    let damaged = damage(target, |b| b[at] ^= 0x40);
    let (file, offset, range, _) = fx.expect_corrupt();
    assert_eq!(&file, target);
    assert!(offset as usize <= at && offset >= 36, "offset {offset}");
    assert!(range.first > 1);
    assert_unchanged(target, &damaged);
}

#[test]
fn a_flipped_byte_before_valid_records_in_the_last_segment_is_refused() {
    let fx = Fixture::new();
    let at = fx.last_write_offset as usize - 20; // In the write before the last one.
    let damaged = damage(fx.last(), |b| b[at] ^= 1);
    let (file, offset, _, reason) = fx.expect_corrupt();
    assert_eq!(file, fx.last());
    assert!(offset as usize <= at);
    assert!(reason.contains("later write group"), "{reason}");
    assert_unchanged(fx.last(), &damaged);
}

#[test]
fn a_flipped_byte_in_the_last_write_is_a_torn_tail() {
    let fx = Fixture::new();
    let len = fx.originals.last().unwrap().len();
    // Damage the last record (the last write's hard state): nothing valid follows it.
    let at = len - 3;
    damage(fx.last(), |b| b[at] ^= 0xff);
    let rec = fx.expect_recovered();
    let torn = rec.torn_tail.expect("a torn tail is reported");
    assert_eq!(torn.file, fx.last());
    assert!(torn.offset >= fx.last_write_offset && torn.offset as usize <= at);
    assert_eq!(fs::metadata(fx.last()).unwrap().len(), torn.offset, "cut");
    // Recovering again finds a clean log.
    assert_eq!(fx.expect_recovered().torn_tail, None);
}

#[test]
fn a_file_cut_mid_record_in_the_last_write_is_a_torn_tail() {
    let fx = Fixture::new();
    let len = fx.originals.last().unwrap().len() as u64;
    for cut in [fx.last_write_offset + 3, fx.last_write_offset + 40, len - 1] {
        fx.restore();
        fs::OpenOptions::new()
            .write(true)
            .open(fx.last())
            .unwrap()
            .set_len(cut)
            .unwrap();
        let rec = fx.expect_recovered();
        let torn = rec.torn_tail.expect("a torn tail is reported");
        assert!(torn.offset >= fx.last_write_offset && torn.offset <= cut);
    }
}

#[test]
fn a_sealed_segment_cut_short_is_refused() {
    let fx = Fixture::new();
    let target = &fx.segments[2];
    let len = fx.originals[2].len() as u64;
    fs::OpenOptions::new()
        .write(true)
        .open(target)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (file, _, _, reason) = fx.expect_corrupt();
    assert_eq!(&file, target);
    assert!(reason.contains("sealed segment"), "{reason}");
    assert_eq!(fs::metadata(target).unwrap().len(), len - 5);
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let fx = Fixture::new();
    fs::remove_file(&fx.segments[2]).unwrap();
    let (file, offset, range, reason) = fx.expect_corrupt();
    assert_eq!(file, fx.segments[3], "names the segment after the gap");
    assert_eq!(offset, 0);
    assert!(range.last.is_some_and(|last| last >= range.first));
    assert!(reason.contains("missing"), "{reason}");
    for (i, path) in fx.segments.iter().enumerate() {
        assert_eq!(path.exists(), i != 2);
    }
}

#[test]
fn a_missing_first_segment_is_refused() {
    let fx = Fixture::new();
    fs::remove_file(&fx.segments[0]).unwrap();
    let (file, _, range, reason) = fx.expect_corrupt();
    assert_eq!(file, fx.segments[1]);
    assert_eq!(range.first, 1);
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn a_zeroed_range_inside_the_log_is_refused() {
    let fx = Fixture::new();
    // In a sealed segment, and in the last one before valid records.
    for (target, lo, hi) in [
        (fx.segments[1].clone(), 300, 700),
        (
            fx.last().to_path_buf(),
            fx.last_write_offset as usize - 200,
            fx.last_write_offset as usize - 100,
        ),
    ] {
        fx.restore();
        let damaged = damage(&target, |b| b[lo..hi].fill(0));
        let (file, offset, _, _) = fx.expect_corrupt();
        assert_eq!(file, target);
        assert!((offset as usize) <= lo || (offset as usize) < hi);
        assert_unchanged(&target, &damaged);
    }
}

#[test]
fn a_zeroed_last_write_is_a_torn_tail() {
    let fx = Fixture::new();
    // Inside the last write's entry, after its group start (whose fields past the checksum
    // are zeros anyway).
    let from = fx.last_write_offset as usize + record::GROUP_START_BYTES + 10;
    damage(fx.last(), |b| b[from..].fill(0));
    let rec = fx.expect_recovered();
    assert!(rec.torn_tail.is_some());
}

#[test]
fn damage_followed_only_by_records_of_its_own_write_group_is_a_torn_tail() {
    // The last write's entry is damaged, its hard state after it intact: a disk may persist the
    // pages of an unsynced write in any order. No later group starts after the damage.
    for kind in ["flipped", "zeroed"] {
        let fx = Fixture::new();
        let at = last_entry_offset(&fx);
        damage(fx.last(), |b| match kind {
            "flipped" => b[at] ^= 0x20,
            _ => b[at..at + 16].fill(0),
        });
        let rec = fx.expect_recovered();
        let torn = rec.torn_tail.expect("a torn tail is reported");
        assert!(
            torn.offset >= fx.last_write_offset && torn.offset as usize <= at,
            "{kind}: cut at {}",
            torn.offset
        );
        assert_eq!(rec.entries.len(), fx.entries_before_last_write, "{kind}");
        assert_eq!(fs::metadata(fx.last()).unwrap().len(), torn.offset, "cut");
    }
}

/// A segment's bytes with every record checksummed under `salt` and its header saying so: with
/// salt 0, as a build before salts wrote them (and `marks_groups` false, before group starts).
fn resalted(bytes: &[u8], salt: u32, marks_groups: bool) -> Vec<u8> {
    let scan = segment::scan(bytes, 0);
    assert!(scan.damage.is_none());
    let header = SegmentHeader {
        marks_groups,
        salt,
        ..scan.header.unwrap()
    };
    let mut out = header.encode().to_vec();
    for (_, r) in &scan.records {
        record::encode(r, &mut out, salt).unwrap();
    }
    out.resize(bytes.len(), 0);
    out
}

#[test]
fn a_record_a_client_wrote_inside_a_command_never_passes_for_a_later_write_group() {
    // A command's bytes can hold whole records, checksummed the way a log without salts wrote
    // them: here group starts. When its entry is damaged in the last write (a page before them
    // lost), the search for valid records after the damage walks through the command's bytes;
    // taken for "a later write group", they made the log refuse to open.
    let (_tmp, dir, mut wal) = unsynced_log(SEGMENT_BYTES_MAX);
    let forged: Vec<u8> = [25, 200, 4096]
        .into_iter()
        .flat_map(|group_bytes| record::group_start(group_bytes, 0))
        .collect();
    let forging = Entry {
        index: 5,
        term: 1,
        payload: Payload::Command(Bytes::from(forged)),
    };
    for entries in [(1..=3).map(entry).collect(), vec![entry(4), forging]] {
        wal.append(&Write {
            entries,
            ..Write::default()
        })
        .unwrap();
        wal.sync().unwrap();
    }
    let last = wal.segment_paths().pop().unwrap();
    drop(wal);
    let bytes = fs::read(&last).unwrap();
    let (fifth, _) = segment::scan(&bytes, 0)
        .records
        .into_iter()
        .find(|(_, r)| matches!(r, Record::Entry(e) if e.index == 5))
        .unwrap();
    damage(&last, |b| b[fifth as usize + 10] ^= 0x20);
    let (_, rec) = Wal::open(&dir, opts()).expect("a torn tail, not damage inside the log");
    assert_eq!(rec.torn_tail.expect("reported").offset, fifth);
    assert_eq!(rec.entries, (1..=4).map(entry).collect::<Vec<_>>());
}

#[test]
fn a_segment_of_another_log_is_refused() {
    // Whole by itself, every checksum right, but under a salt no other segment names, or under
    // none after salted ones.
    for (salt, named) in [(SALT, "another log"), (0, "unsalted segment after")] {
        let fx = Fixture::new();
        let damaged = damage(&fx.segments[2], |b| *b = resalted(b, salt, true));
        let (file, offset, _, reason) = fx.expect_corrupt();
        assert_eq!((file.as_path(), offset), (fx.segments[2].as_path(), 0));
        assert!(reason.contains(named), "{reason}");
        assert_unchanged(&fx.segments[2], &damaged);
    }
}

#[test]
fn a_log_written_before_salts_opens_whole_and_salts_its_new_segments() {
    let fx = Fixture::new();
    for path in &fx.segments {
        damage(path, |b| *b = resalted(b, 0, true));
    }
    let (mut wal, rec) = Wal::open(&fx.dir, opts()).unwrap();
    assert_eq!(rec.entries, fx.entries);
    // It begins a salted segment at once: no group goes into an unsalted one any more.
    let old = fx.segments.len();
    assert_eq!(wal.segment_paths().len(), old + 1);
    let mut next = fx.entries.len() as u64 + 1;
    while wal.segment_paths().len() < old + 3 {
        wal.append(&Write {
            entries: vec![entry(next)],
            ..Write::default()
        })
        .unwrap();
        wal.sync().unwrap();
        next += 1;
    }
    // Old entries read back from unsalted segments, new ones from salted.
    assert_eq!(
        wal.read(1, next).unwrap(),
        (1..next).map(entry).collect::<Vec<_>>()
    );
    let salts: Vec<u32> = wal
        .segment_paths()
        .iter()
        .map(|p| SegmentHeader::decode(&fs::read(p).unwrap()).unwrap().salt)
        .collect();
    drop(wal);
    assert!(salts[..old].iter().all(|&s| s == 0), "{salts:?}");
    assert!(
        salts[old..].iter().all(|&s| s != 0 && s == salts[old]),
        "{salts:?}"
    );
    let (_, rec) = Wal::open(&fx.dir, opts()).unwrap();
    assert_eq!(rec.entries, (1..next).map(entry).collect::<Vec<_>>());
}

#[test]
fn a_lone_salted_segment_whose_header_rots_is_refused_not_started_afresh() {
    // No other header names the salt, so nothing after this one can be checked: removed as
    // torn at creation, it would take the node's vote and acknowledged entries with it.
    let (_tmp, dir, mut wal) = unsynced_log(1 << 20);
    for index in 1..=3 {
        wal.append(&Write {
            entries: vec![entry(index)],
            ..Write::default()
        })
        .unwrap();
        wal.sync().unwrap();
    }
    let segments = wal.segment_paths();
    drop(wal);
    assert_eq!(segments.len(), 1);
    let damaged = damage(&segments[0], |b| b[20] ^= 0x04);
    let err = Wal::open(&dir, opts()).expect_err("refused");
    assert!(matches!(&err, WalError::Corrupt { file, offset: 0, .. } if *file == segments[0]));
    assert_unchanged(&segments[0], &damaged);
}

#[test]
fn a_salted_segment_whose_header_rots_after_unsalted_ones_is_refused() {
    let fx = Fixture::new();
    for path in &fx.segments {
        damage(path, |b| *b = resalted(b, 0, true));
    }
    // Opened by this build: a salted segment follows, with a group in it.
    let (mut wal, _) = Wal::open(&fx.dir, opts()).unwrap();
    wal.append(&Write {
        entries: vec![entry(fx.entries.len() as u64 + 1)],
        ..Write::default()
    })
    .unwrap();
    wal.sync().unwrap();
    let salted = wal.segment_paths().pop().unwrap();
    drop(wal);
    let damaged = damage(&salted, |b| b[20] ^= 0x04);
    let err = Wal::open(&fx.dir, opts()).expect_err("refused");
    assert!(matches!(&err, WalError::Corrupt { file, offset: 0, .. } if *file == salted));
    assert_unchanged(&salted, &damaged);
}

/// A byte of the last write's entry (after its group start) in the last segment.
fn last_entry_offset(fx: &Fixture) -> usize {
    fx.last_write_offset as usize + record::GROUP_START_BYTES + 30
}

#[test]
fn a_segment_written_before_group_starts_keeps_the_stricter_rule() {
    // Format version 1 marks no groups: there, any valid record after damage is corruption.
    let fx = Fixture::new();
    let at = last_entry_offset(&fx);
    for path in &fx.segments[..fx.segments.len() - 1] {
        damage(path, |b| *b = resalted(b, 0, false));
    }
    let damaged = damage(fx.last(), |b| {
        *b = resalted(b, 0, false);
        b[at] ^= 0x20;
    });
    let (file, offset, _, reason) = fx.expect_corrupt();
    assert_eq!(file, fx.last());
    assert!(offset as usize <= at);
    assert!(reason.contains("followed by a valid record"), "{reason}");
    assert_unchanged(fx.last(), &damaged);
}

#[test]
fn damage_from_a_synced_group_into_the_last_one_is_refused() {
    // Zeros from the end of the write before the last one through the last write's group
    // start: what follows (the last write's entry) lies past the end the earlier group's start
    // records, so that group was followed by another and was synced.
    let fx = Fixture::new();
    let (lo, hi) = (
        fx.last_write_offset as usize - 10,
        fx.last_write_offset as usize + record::GROUP_START_BYTES + 5,
    );
    let damaged = damage(fx.last(), |b| b[lo..hi].fill(0));
    let (file, offset, _, reason) = fx.expect_corrupt();
    assert_eq!(file, fx.last());
    assert!(offset as usize <= lo, "{offset}");
    assert!(reason.contains("later write group"), "{reason}");
    assert_unchanged(fx.last(), &damaged);
}

/// An entry of about 1 KiB.
fn big(index: Index) -> Entry {
    Entry {
        index,
        term: 1,
        payload: Payload::Command(Bytes::from(vec![index as u8; 1000])),
    }
}

#[test]
fn a_lost_page_inside_a_large_last_write_is_a_torn_tail() {
    // A group of 16 KiB, one of whose 4 KiB pages never reached the disk while the rest did,
    // in a segment zero-filled ahead of use.
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    for index in 1..=5 {
        wal.append(&Write {
            entries: vec![big(index)],
            ..Write::default()
        })
        .unwrap();
        wal.sync().unwrap();
    }
    wal.append(&Write {
        entries: (6..=21).map(big).collect(),
        ..Write::default()
    })
    .unwrap();
    wal.sync().unwrap();
    // The last segment (a ready spare may have been taken for this group), and where in it
    // the group starts.
    let last = wal.segment_paths().pop().unwrap();
    drop(wal);
    let group_at = last_group_start(&last);
    let page = 4096;
    let lost_from = group_at.next_multiple_of(page);
    damage(&last, |b| b[lost_from..lost_from + page].fill(0));
    let (_, rec) = Wal::open(tmp.path(), WalOptions::default()).expect("recovers");
    let torn = rec.torn_tail.expect("a torn tail is reported");
    assert!(torn.offset as usize <= lost_from, "cut at {}", torn.offset);
    assert!(
        rec.entries.len() >= 5,
        "every synced group before it is kept"
    );
    assert_eq!(
        rec.entries[..],
        (1..=rec.entries.len() as u64).map(big).collect::<Vec<_>>()[..]
    );
}

#[test]
fn a_torn_group_written_after_a_torn_tail_was_cut_is_a_torn_tail_too() {
    // Two power losses: the first tears a large group (recovery keeps its records before the
    // lost page), the second the first group written after that.
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    let write = |wal: &mut Wal, indexes: std::ops::RangeInclusive<Index>| {
        wal.append(&Write {
            entries: indexes.map(big).collect(),
            ..Write::default()
        })
        .unwrap();
        wal.sync().unwrap();
    };
    write(&mut wal, 1..=1);
    write(&mut wal, 2..=17);
    let last = wal.segment_paths().pop().unwrap();
    drop(wal);
    let page = 4096;
    let lost_from = (last_group_start(&last) + 1).next_multiple_of(page);
    damage(&last, |b| b[lost_from..lost_from + page].fill(0));
    let (mut wal, rec) = Wal::open(tmp.path(), WalOptions::default()).expect("recovers");
    assert!(rec.torn_tail.is_some(), "the first loss is a torn tail");
    let kept = rec.entries.len() as Index;
    assert!(
        kept > 1,
        "the torn group's records before the lost page are kept"
    );

    write(&mut wal, kept + 1..=kept + 16);
    assert_eq!(
        wal.segment_paths().pop().unwrap(),
        last,
        "written in the same segment"
    );
    drop(wal);
    // The page that holds the new group's start is lost; its later pages reached the disk.
    let start = last_group_start(&last);
    damage(&last, |b| {
        b[start..(start + 1).next_multiple_of(page)].fill(0)
    });
    let (_, rec) = Wal::open(tmp.path(), WalOptions::default())
        .expect("the second loss is a torn tail too, not damage inside the log");
    assert!(rec.torn_tail.is_some());
    assert_eq!(
        rec.entries[..],
        (1..=kept).map(big).collect::<Vec<_>>()[..],
        "everything recovered the first time is kept"
    );
}

/// Where the last write group in a segment starts.
fn last_group_start(path: &Path) -> usize {
    let bytes = fs::read(path).unwrap();
    let scan = segment::scan(&bytes, 0);
    let (at, _) = scan
        .records
        .iter()
        .rev()
        .find(|(_, r)| matches!(r, Record::GroupStart { .. }))
        .expect("a group start");
    *at as usize
}

#[test]
fn a_damaged_segment_header_is_refused() {
    let fx = Fixture::new();
    for (i, at) in [(0, 3), (2, 20), (fx.segments.len() - 1, 30)] {
        fx.restore();
        let damaged = damage(&fx.segments[i], |b| b[at] ^= 0x08);
        let (file, offset, _, _) = fx.expect_corrupt();
        assert_eq!(file, fx.segments[i]);
        assert_eq!(offset, 0);
        assert_unchanged(&fx.segments[i], &damaged);
    }
}

#[test]
fn a_segment_torn_at_creation_is_removed() {
    let fx = Fixture::new();
    // A rollover created the next segment, but its header never fully reached the disk.
    let next_seq = fx.segments.len() as u64 + 1;
    let next = fx.dir.join(format!("{next_seq:020}.wal"));
    let header = SegmentHeader {
        seq: next_seq,
        first_index: 999,
        marks_groups: true,
        salt: SALT,
    }
    .encode();
    fs::write(&next, &header[..20]).unwrap();
    let rec = fx.expect_recovered();
    let torn = rec.torn_tail.expect("reported");
    assert_eq!(torn.file, next);
    assert!(!next.exists(), "the torn segment is removed");
    assert_eq!(rec.entries, fx.entries);
    fx.assert_files_unchanged();
    // Appends continue in the previous segment.
    let (mut wal, _) = Wal::open(&fx.dir, opts()).unwrap();
    let next_index = fx.entries.len() as u64 + 1;
    wal.append(&Write {
        entries: vec![entry(next_index)],
        ..Write::default()
    })
    .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(&fx.dir, opts()).unwrap();
    assert_eq!(rec.entries.len() as u64, next_index);
}

#[test]
fn a_lone_later_segment_that_looks_torn_at_creation_is_refused_not_started_afresh() {
    let fx = Fixture::new();
    // Compaction removed every segment before the last; then the last lost all but part of its
    // header. A torn creation would be removed, and the node start with an empty log.
    for path in &fx.segments[..fx.segments.len() - 1] {
        fs::remove_file(path).unwrap();
    }
    let last = fx.last().to_path_buf();
    let damaged = damage(&last, |b| b.truncate(20));
    let (file, offset, _, reason) = fx.expect_corrupt();
    assert_eq!((file.as_path(), offset), (last.as_path(), 0));
    assert!(reason.contains("only segment"), "{reason}");
    assert_unchanged(&last, &damaged);
}

#[test]
fn a_hard_state_claiming_more_than_the_log_holds_is_refused() {
    // Crafted by hand: no sequence of writes produces it, but a buggy writer or damage could.
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = SegmentHeader {
        seq: 1,
        first_index: 1,
        marks_groups: true,
        salt: SALT,
    }
    .encode()
    .to_vec();
    for r in [
        Record::HardState(HardState {
            term: 1,
            vote: None,
            commit: 10,
        }),
        Record::Entry(entry(1)),
        Record::Entry(entry(2)),
    ] {
        record::encode(&r, &mut bytes, SALT).unwrap();
    }
    let path = tmp.path().join(format!("{:020}.wal", 1));
    fs::write(&path, &bytes).unwrap();
    match Wal::open(tmp.path(), opts()) {
        Err(WalError::Corrupt { index_range, .. }) => {
            assert_eq!(
                index_range,
                IndexRange {
                    first: 3,
                    last: Some(10)
                }
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_unchanged(&path, &bytes);
}

#[test]
fn a_snapshot_newer_in_term_than_the_entry_after_it_is_refused() {
    // Crafted by hand, checksums valid: a snapshot at 9 of term 5 followed by an entry of term 1.
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = SegmentHeader {
        seq: 1,
        first_index: 10,
        marks_groups: true,
        salt: SALT,
    }
    .encode()
    .to_vec();
    let first = Entry {
        index: 10,
        term: 1,
        payload: Payload::Command(Bytes::from_static(b"x")),
    };
    for r in [
        Record::HardState(HardState::default()),
        Record::Entry(first),
        Record::Compact(SnapshotMeta {
            index: 9,
            term: 5,
            membership: Membership::new([1], []),
        }),
    ] {
        record::encode(&r, &mut bytes, SALT).unwrap();
    }
    let path = tmp.path().join(format!("{:020}.wal", 1));
    fs::write(&path, &bytes).unwrap();
    match Wal::open(tmp.path(), opts()) {
        Err(WalError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_unchanged(&path, &bytes);
}

/// A small deterministic generator, so a failing case can be replayed by its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_damage_is_cut_as_a_torn_tail_or_refused_never_lost() {
    let fx = Fixture::new();
    let seed = std::env::var("KEEL_WAL_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    println!("KEEL_WAL_DAMAGE_SEED={seed}");
    let mut rng = SplitMix(seed);
    let (mut refused, mut torn) = (0, 0);
    for round in 0..150 {
        fx.restore();
        let i = rng.below(fx.segments.len() as u64) as usize;
        let len = fx.originals[i].len();
        let at = rng.below(len as u64) as usize;
        let kind = rng.below(3);
        let mut zeroed_to = at;
        let damaged = damage(&fx.segments[i], |b| match kind {
            0 => b[at] ^= 1 << rng.below(8),
            1 => {
                zeroed_to = (at + 1 + rng.below(64) as usize).min(len);
                b[at..zeroed_to].fill(0)
            }
            _ => b.truncate(at),
        });
        if damaged == fx.originals[i] {
            continue; // Zeroing zeros changes nothing.
        }
        let is_last = i + 1 == fx.segments.len();
        match Wal::open(&fx.dir, opts()) {
            Err(WalError::Corrupt { file, .. }) => {
                refused += 1;
                assert_unchanged(&fx.segments[i], &damaged);
                assert!(
                    file == fx.segments[i]
                        || file == fx.segments[(i + 1).min(fx.segments.len() - 1)],
                    "round {round}: refusal names {} for damage in {}",
                    file.display(),
                    fx.segments[i].display()
                );
            }
            Ok((_, rec)) => {
                torn += 1;
                assert!(
                    is_last,
                    "round {round}: damage in sealed segment {i} at {at} (kind {kind}) accepted"
                );
                // Zeros to the end of the last segment read as space not yet written (as a
                // zero-filled segment's tail does); any other damage accepted is a torn tail.
                let zeros_to_end = kind == 1 && zeroed_to == len;
                let torn_tail = rec.torn_tail.as_ref();
                // A file cut exactly between two records is a shorter log, whole: nothing to
                // report (with a group start before every group, such cuts come more often).
                let cut_between_records = kind == 2 && segment::scan(&damaged, 0).damage.is_none();
                assert!(
                    torn_tail.is_some() || zeros_to_end || cut_between_records,
                    "round {round}: damage at {at} (kind {kind}) is not reported"
                );
                // Accepted only if all of it is damage: the cut is at or before the damage, and
                // everything before the cut is intact and recovered.
                // (Zeroing may begin over bytes that were zeros already: what counts is the first
                // byte that changed.)
                let changed = fx.originals[i]
                    .iter()
                    .zip(&damaged)
                    .position(|(a, b)| a != b)
                    .unwrap_or(damaged.len());
                assert!(torn_tail.is_none_or(|t| t.offset as usize <= changed));
                assert_eq!(rec.entries[..], fx.entries[..rec.entries.len()]);
                assert!(rec.entries.len() as u64 >= rec.hard_state.commit);
                if !zeros_to_end && kind != 2 {
                    // Damage that does not reach the end of the file is a torn tail only in the
                    // last write group.
                    assert!(
                        rec.entries.len() >= fx.entries_before_last_write,
                        "round {round}: damage at {at} (kind {kind}) cut synced entries"
                    );
                }
            }
            Err(other) => panic!("round {round}: unexpected error {other}"),
        }
    }
    println!("{refused} refused, {torn} torn tails");
    assert!(refused > 0 && torn > 0);
}
