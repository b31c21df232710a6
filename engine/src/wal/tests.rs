//! Unit tests of the live log: rollover, range reads, truncation, compaction, snapshots, the
//! failpoint, and the writer thread. Damage and crashes are tested in `engine/tests/wal_*.rs`.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::core::{Membership, Payload};

fn entry(index: Index, term: Term, payload_bytes: usize) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Command(Bytes::from(vec![(index % 251) as u8; payload_bytes])),
    }
}

fn entries(range: std::ops::RangeInclusive<Index>, term: Term) -> Write {
    Write {
        entries: range.map(|i| entry(i, term, 100)).collect(),
        ..Write::default()
    }
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes_max: 2048,
        ..WalOptions::default()
    }
}

/// A log of small segments in `dir` holding entries `range` of `term`, synced.
fn synced_small_log(
    dir: &std::path::Path,
    range: std::ops::RangeInclusive<Index>,
    term: Term,
) -> Wal {
    let (mut wal, _) = Wal::open(dir, small()).unwrap();
    wal.append(&entries(range, term)).unwrap();
    wal.sync().unwrap();
    wal
}

fn reopen(wal: Wal) -> (Wal, Recovered) {
    let dir = wal.dir().to_path_buf();
    let opts = wal.opts.clone();
    drop(wal);
    Wal::open(&dir, opts).unwrap()
}

fn hs(term: Term, vote: Option<u64>, commit: Index) -> HardState {
    HardState { term, vote, commit }
}

#[test]
fn an_empty_directory_becomes_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = Wal::open(&dir.path().join("log"), WalOptions::default()).unwrap();
    assert_eq!(rec, Recovered::default());
    assert_eq!(wal.segment_paths().len(), 1);
    let (_, rec) = reopen(wal);
    assert_eq!(rec, Recovered::default());
}

#[test]
fn appended_and_synced_writes_recover_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut w = entries(1..=3, 1);
    w.hard_state = Some(hs(1, Some(2), 2));
    wal.append(&w).unwrap();
    let stats = wal.sync().unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!((stats.write_calls, stats.fdatasyncs), (1, 1));
    let (_, rec) = reopen(wal);
    assert_eq!(rec.hard_state, hs(1, Some(2), 2));
    assert_eq!(rec.entries, entries(1..=3, 1).entries);
    assert_eq!(rec.torn_tail, None);
}

#[test]
fn a_write_spanning_segments_makes_each_new_segment_durable_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    wal.sync().unwrap();
    let before = wal.segment_paths().len();
    wal.append(&entries(1..=60, 1)).unwrap();
    let stats = wal.sync().unwrap();
    let created = wal.segment_paths().len() - before;
    assert!(created >= 3, "{created} segments created");
    // One directory sync per new segment: before the next is created, and at the end.
    assert!(
        stats.dir_fsyncs as usize >= created,
        "{} directory syncs for {created} new segments",
        stats.dir_fsyncs
    );
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries, entries(1..=60, 1).entries);
}

/// A log of small segments in `dir` whose last write rolled over to a second segment, with
/// every write's hard state `(5, 2, its index)`; returns that segment and the last index.
fn rolled_over_in_the_last_write(dir: &Path) -> (PathBuf, Index) {
    let (mut wal, _) = Wal::open(dir, small()).unwrap();
    let mut last = 0;
    while wal.segment_paths().len() < 2 {
        last += 1;
        let mut w = entries(last..=last, 5);
        w.hard_state = Some(hs(5, Some(2), last));
        wal.append(&w).unwrap();
        wal.sync().unwrap();
    }
    (wal.segment_paths()[1].clone(), last)
}

fn cut_file(path: &Path, len_bytes: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len_bytes).unwrap();
}

#[test]
fn a_segment_torn_inside_its_checkpoint_is_removed_and_the_hard_state_kept() {
    let header = segment::SEGMENT_HEADER_BYTES as u64;
    let hard_state = record::record_bytes(&Record::<Entry>::HardState(hs(5, Some(2), 1))) as u64;
    // Torn inside the checkpoint's hard state, or inside the snapshot record after it.
    for cut in [header + 10, header + hard_state + 5] {
        let dir = tempfile::tempdir().unwrap();
        let (torn, last) = rolled_over_in_the_last_write(dir.path());
        cut_file(&torn, cut);
        let (mut wal, rec) = Wal::open(dir.path(), small()).unwrap();
        assert!(rec.torn_tail.is_some());
        assert!(!torn.exists(), "cut at {cut}: the torn segment is removed");
        // The rollover came inside the last write: its entry is in the first segment, the hard
        // state that followed it was in the torn one.
        assert_eq!(rec.hard_state, hs(5, Some(2), last - 1));
        let kept = rec.entries.last().expect("entries").index;
        // A snapshot covering every entry: a segment without its checkpoint, kept, would be
        // all that is left, and the term and vote gone with the segments before it.
        wal.compact(&SnapshotMeta {
            index: kept,
            term: 5,
            membership: Membership::new([1, 2], []),
        })
        .unwrap();
        wal.sync().unwrap();
        let (_, rec) = reopen(wal);
        assert_eq!(rec.hard_state, hs(5, Some(2), last - 1), "cut at {cut}");
    }
}

#[test]
fn a_segment_that_ends_with_its_whole_checkpoint_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, last) = rolled_over_in_the_last_write(dir.path());
    let checkpoint = record::record_bytes(&Record::<Entry>::HardState(hs(5, Some(2), 1)))
        + record::record_bytes(&Record::<Entry>::Compact(SnapshotMeta::default()));
    cut_file(
        &segment,
        (segment::SEGMENT_HEADER_BYTES + checkpoint) as u64,
    );
    let (wal, rec) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(rec.torn_tail, None);
    assert_eq!(
        wal.segment_paths(),
        vec![wal.segment_paths()[0].clone(), segment]
    );
    assert_eq!(rec.hard_state, hs(5, Some(2), last - 1));
}

#[test]
fn segments_roll_over_and_recover_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    for i in 1..=100 {
        wal.append(&entries(i..=i, 1)).unwrap();
        if i % 7 == 0 {
            wal.sync().unwrap();
        }
    }
    let stats = wal.sync().unwrap();
    assert!(stats.dir_fsyncs <= 1);
    let segments = wal.segment_paths();
    assert!(segments.len() >= 5, "{} segments", segments.len());
    for path in &segments {
        let len = std::fs::metadata(path).unwrap().len();
        assert!(len <= 2048, "{} is {len} bytes", path.display());
    }
    let (wal, rec) = reopen(wal);
    assert_eq!(rec.entries, entries(1..=100, 1).entries);
    assert_eq!(wal.segment_paths(), segments);
}

#[test]
fn a_sync_counts_the_fdatasyncs_of_the_rollovers_before_it() {
    let dir = tempfile::tempdir().unwrap();
    // Without a spare, whose readiness would decide whether a rollover has a segment to seal
    // (the syncs are counted all the same).
    let opts = WalOptions {
        sync: SyncMode::UnsafeNoFsync,
        ..small()
    };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    wal.append(&entries(1..=1, 1)).unwrap();
    wal.sync().unwrap();
    let before = wal.segment_paths().len();
    // Some 100-byte entries to a 2 KiB segment: several rollovers, each sealing its segment and
    // making the next one's header durable.
    for i in 2..=60 {
        wal.append(&entries(i..=i, 1)).unwrap();
    }
    let stats = wal.sync().unwrap();
    let rollovers = wal.segment_paths().len() - before;
    assert!(rollovers >= 2, "{rollovers} rollovers");
    assert_eq!(stats.fdatasyncs as usize, 2 * rollovers + 1);
}

#[test]
fn an_entry_larger_than_a_segment_gets_one_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    let big = Write {
        entries: vec![entry(1, 1, 10_000), entry(2, 1, 10), entry(3, 1, 10_000)],
        ..Write::default()
    };
    wal.append(&big).unwrap();
    wal.sync().unwrap();
    let (wal, rec) = reopen(wal);
    assert_eq!(rec.entries, big.entries);
    assert_eq!(wal.read(1, 4).unwrap(), big.entries);
}

#[test]
fn range_reads_cover_segments_and_the_unwritten_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = synced_small_log(dir.path(), 1..=60, 1);
    wal.append(&entries(61..=70, 1)).unwrap(); // Buffered, not yet written.
    let all = entries(1..=70, 1).entries;
    assert_eq!(wal.read(1, 71).unwrap(), all);
    assert_eq!(wal.read(20, 65).unwrap(), all[19..64].to_vec());
    assert_eq!(wal.read(70, 71).unwrap(), all[69..].to_vec());
    assert_eq!(wal.read(30, 30).unwrap(), vec![]);
    assert!(matches!(
        wal.read(0, 5),
        Err(WalError::Unavailable { first: 1, .. })
    ));
    assert!(matches!(
        wal.read(60, 72),
        Err(WalError::Unavailable { next: 71, .. })
    ));
}

#[test]
fn truncation_replaces_a_conflicting_tail_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    let mut w = entries(1..=30, 1);
    w.hard_state = Some(hs(1, None, 10));
    wal.append(&w).unwrap();
    wal.sync().unwrap();
    // A new leader overwrites 21.. with its own entries.
    let mut w = entries(21..=25, 2);
    w.truncate_from = Some(21);
    w.hard_state = Some(hs(2, Some(3), 22));
    wal.append(&w).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.last_index(), 25);
    let mut expected = entries(1..=20, 1).entries;
    expected.extend(entries(21..=25, 2).entries);
    assert_eq!(wal.read(1, 26).unwrap(), expected);
    let (wal, rec) = reopen(wal);
    assert_eq!(rec.entries, expected);
    assert_eq!(rec.hard_state, hs(2, Some(3), 22));
    // Truncating to the end without new entries also survives.
    let (mut wal, _) = (wal, ());
    wal.append(&Write {
        truncate_from: Some(24),
        ..Write::default()
    })
    .unwrap();
    wal.sync().unwrap();
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries, expected[..23].to_vec());
}

#[test]
fn writes_that_break_the_log_rules_stop_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut w = entries(1..=5, 2);
    w.hard_state = Some(hs(2, None, 3));
    wal.append(&w).unwrap();
    wal.sync().unwrap();
    let truncate_committed = Write {
        truncate_from: Some(3),
        ..Write::default()
    };
    for bad in [entries(7..=7, 2), entries(6..=6, 1), truncate_committed] {
        let (mut wal, _) = reopen(Wal::open(dir.path(), WalOptions::default()).unwrap().0);
        assert!(matches!(
            wal.append(&bad),
            Err(WalError::InvalidRequest { .. })
        ));
        assert!(matches!(wal.sync(), Err(WalError::Stopped)));
    }
    let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(
        rec.entries.len(),
        5,
        "nothing of the bad writes was made durable"
    );
}

#[test]
fn compaction_removes_covered_segments_and_keeps_later_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    let mut w = entries(1..=100, 1);
    w.hard_state = Some(hs(1, Some(1), 90));
    wal.append(&w).unwrap();
    wal.sync().unwrap();
    let before = wal.segment_paths();
    let snap = SnapshotMeta {
        index: 60,
        term: 1,
        membership: Membership::new([1, 2, 3], []),
    };
    wal.compact(&snap).unwrap();
    let after = wal.segment_paths();
    // The oldest go (and the compaction record may begin a segment in a ready spare).
    let kept: Vec<_> = before.iter().filter(|p| after.contains(p)).collect();
    assert!(kept.len() < before.len(), "{after:?}");
    assert!(before.ends_with(&kept.into_iter().cloned().collect::<Vec<_>>()));
    assert_eq!(wal.first_index(), 61);
    assert!(matches!(
        wal.read(55, 62),
        Err(WalError::Unavailable { .. })
    ));
    assert_eq!(wal.read(61, 101).unwrap(), entries(61..=100, 1).entries);
    // Appends continue; recovery starts from the first surviving segment's checkpoint.
    wal.append(&entries(101..=110, 1)).unwrap();
    wal.sync().unwrap();
    let (mut wal, rec) = reopen(wal);
    // The files went in the background, and were gone once the log closed.
    for gone in before.iter().filter(|p| !after.contains(p)) {
        assert!(!gone.exists(), "{gone:?}");
        assert!(!crate::background::dead_path(gone).exists(), "{gone:?}");
    }
    assert_eq!(rec.snapshot, snap);
    assert_eq!(rec.hard_state, hs(1, Some(1), 90));
    assert_eq!(rec.entries, entries(61..=110, 1).entries);
    // A stale compaction changes nothing; one past the log is refused.
    wal.compact(&SnapshotMeta::default()).unwrap();
    let beyond = SnapshotMeta {
        index: 500,
        ..snap.clone()
    };
    assert!(matches!(
        wal.compact(&beyond),
        Err(WalError::InvalidRequest { .. })
    ));
}

#[test]
fn a_segment_left_part_way_through_removal_is_not_read_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = synced_small_log(dir.path(), 1..=5, 1);
    drop(wal);
    // What a crash while a compacted segment was cut leaves: a torn file under the dead name.
    let dead = crate::background::dead_path(&segment::segment_path(dir.path(), 0));
    std::fs::write(&dead, b"torn").unwrap();
    let (wal, rec) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(rec.entries, entries(1..=5, 1).entries);
    // The remover clears it, and is done once the log closes.
    drop(wal);
    assert!(!dead.exists());
}

#[test]
fn compacting_everything_leaves_one_segment_and_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = synced_small_log(dir.path(), 1..=80, 3);
    let snap = SnapshotMeta {
        index: 80,
        term: 3,
        membership: Membership::new([1], []),
    };
    wal.compact(&snap).unwrap();
    assert_eq!(wal.segment_paths().len(), 1);
    let (_, rec) = reopen(wal);
    assert_eq!(rec.snapshot, snap);
    assert!(rec.entries.is_empty());
}

#[test]
fn an_installed_snapshot_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = synced_small_log(dir.path(), 1..=40, 1);
    let snap = SnapshotMeta {
        index: 500,
        term: 4,
        membership: Membership::new([1, 2, 3], [4]),
    };
    let mut w = Write {
        snapshot: Some(snap.clone()),
        hard_state: Some(hs(4, None, 500)),
        ..Write::default()
    };
    wal.append(&w).unwrap();
    w = entries(501..=505, 4);
    wal.append(&w).unwrap();
    wal.sync().unwrap();
    let (mut wal, rec) = reopen(wal);
    assert_eq!(rec.snapshot, snap);
    assert_eq!(rec.entries, entries(501..=505, 4).entries);
    // Compacting past the install drops every segment from before it.
    let segments = wal.segment_paths().len();
    wal.compact(&SnapshotMeta {
        index: 502,
        term: 4,
        membership: snap.membership.clone(),
    })
    .unwrap();
    assert!(wal.segment_paths().len() < segments);
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries, entries(503..=505, 4).entries);
}

#[test]
fn a_log_opens_in_a_directory_created_with_its_missing_parents() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b").join("wal");
    let (mut wal, _) = Wal::open(&dir, small()).unwrap();
    wal.append(&entries(1..=3, 1)).unwrap();
    wal.sync().unwrap();
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries.len(), 3);
    // An existing directory is fine, with or without syncing.
    create_dir_durably(&dir, true).unwrap();
    create_dir_durably(&dir, false).unwrap();
}

#[test]
fn the_recorded_snapshot_moves_when_a_sync_makes_it_durable_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = synced_small_log(dir.path(), 1..=40, 1);
    let recorded = wal.recorded_snapshot();
    assert_eq!(recorded.index(), 0);
    let snap = |index| SnapshotMeta {
        index,
        term: 1,
        membership: Membership::new([1, 2, 3], []),
    };
    wal.compact(&snap(20)).unwrap();
    assert_eq!(recorded.index(), 20, "a compaction syncs its record");
    let install = Write {
        snapshot: Some(snap(60)),
        ..Write::default()
    };
    wal.append(&install).unwrap();
    assert_eq!(
        recorded.index(),
        20,
        "appended but not synced: recovery would start at 20"
    );
    wal.sync().unwrap();
    assert_eq!(recorded.index(), 60);
    let (wal, rec) = reopen(wal);
    assert_eq!(rec.snapshot.index, 60);
    assert_eq!(
        wal.recorded_snapshot().index(),
        60,
        "a reopened log starts from its record"
    );
}

#[test]
fn the_bootstrap_membership_is_recorded_as_a_snapshot_at_index_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let bootstrap = SnapshotMeta {
        index: 0,
        term: 0,
        membership: Membership::new([1, 2, 3], []),
    };
    wal.append(&Write {
        snapshot: Some(bootstrap.clone()),
        ..Write::default()
    })
    .unwrap();
    wal.append(&entries(1..=2, 1)).unwrap();
    wal.sync().unwrap();
    let (_, rec) = reopen(wal);
    assert_eq!(rec.snapshot, bootstrap);
    assert_eq!(rec.entries.len(), 2);
}

#[test]
fn the_hard_state_survives_rollover_and_compaction_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    let mut w = entries(1..=3, 5);
    w.hard_state = Some(hs(5, Some(2), 3));
    wal.append(&w).unwrap();
    // Many entries with no new hard state push it far behind.
    wal.append(&entries(4..=100, 5)).unwrap();
    wal.sync().unwrap();
    wal.compact(&SnapshotMeta {
        index: 90,
        term: 5,
        membership: Membership::default(),
    })
    .unwrap();
    let (_, rec) = reopen(wal);
    assert_eq!(rec.hard_state, hs(5, Some(2), 3));
}

#[test]
fn the_sync_failpoint_fails_the_nth_sync_and_stops_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        fail_sync_after: Some(2),
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    for i in 1..=2 {
        wal.append(&entries(i..=i, 1)).unwrap();
        wal.sync().unwrap();
    }
    // A sync with nothing to sync is not a sync.
    wal.sync().unwrap();
    wal.append(&entries(3..=3, 1)).unwrap();
    assert!(matches!(wal.sync(), Err(WalError::Io { .. })));
    assert!(matches!(
        wal.append(&entries(4..=4, 1)),
        Err(WalError::Stopped)
    ));
    assert!(matches!(wal.sync(), Err(WalError::Stopped)));
}

#[test]
fn unsafe_no_fsync_still_writes_but_never_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        sync: SyncMode::UnsafeNoFsync,
        ..small()
    };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    wal.append(&entries(1..=50, 1)).unwrap();
    let stats = wal.sync().unwrap();
    assert_eq!(stats.entries, 50);
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries.len(), 50);
}

// ------------------------------------------------------------------------- the writer thread

fn durable_writes(events: &crossbeam_channel::Receiver<WriterEvent>, count: usize) -> Vec<Write> {
    let mut out = Vec::new();
    while out.len() < count {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            WriterEvent::Durable { writes, .. } => out.extend(writes),
            WriterEvent::Failed(e) => panic!("writer failed: {e}"),
        }
    }
    out
}

#[test]
fn the_writer_completes_writes_in_order_and_groups_them() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (writer, events) = LogWriter::spawn(wal);
    for i in 1..=500 {
        writer.submit(entries(i..=i, 1)).unwrap();
    }
    let done = durable_writes(&events, 500);
    let indexes: Vec<Index> = done.iter().map(|w| w.entries[0].index).collect();
    assert_eq!(indexes, (1..=500).collect::<Vec<_>>());
    let wal = writer.stop();
    assert_eq!(wal.last_index(), 500);
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries.len(), 500);
}

#[test]
fn one_fsync_covers_every_write_that_queued_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (writer, events) = LogWriter::spawn(wal);
    for i in 1..=2000 {
        writer.submit(entries(i..=i, 1)).unwrap();
    }
    let mut groups = 0;
    let mut completed = 0;
    while completed < 2000 {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            WriterEvent::Durable { writes, stats } => {
                assert_eq!(stats.fdatasyncs, 1, "one fdatasync per group");
                groups += 1;
                completed += writes.len();
            }
            WriterEvent::Failed(e) => panic!("{e}"),
        }
    }
    assert!(
        groups < 2000,
        "{groups} groups for 2000 writes: no grouping"
    );
    drop(writer.stop());
}

#[test]
fn barriers_and_compactions_are_ordered_with_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    let (writer, events) = LogWriter::spawn(wal);
    writer.submit(entries(1..=60, 1)).unwrap();
    writer.submit(Write::default()).unwrap(); // A barrier.
    writer
        .compact(SnapshotMeta {
            index: 50,
            term: 1,
            membership: Membership::default(),
        })
        .unwrap();
    writer.submit(entries(61..=61, 1)).unwrap();
    let done = durable_writes(&events, 3);
    assert!(done[1].is_empty());
    let wal = writer.stop();
    assert_eq!(wal.first_index(), 51);
    assert_eq!(wal.last_index(), 61);
}

/// A write carrying a vote grant to `to`: a message that must wait for the write.
fn granting(index: Index, to: crate::core::NodeId) -> Write {
    let mut w = entries(index..=index, 1);
    w.then_send.push(crate::core::Message {
        from: 1,
        to,
        term: 1,
        body: crate::core::Body::VoteResponse { granted: true },
    });
    w
}

#[test]
fn the_writer_sends_what_waited_once_durable_and_reports_what_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        fail_sync_after: Some(2),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let (sent_tx, sent) = crossbeam_channel::unbounded();
    // Sends messages to node 2, leaves those to node 3 for the event.
    let send: DurableSend = Box::new(move |waiting: &mut Vec<crate::core::Message>| {
        waiting.retain(|m| m.to != 2 || sent_tx.send(m.to).is_err());
    });
    let (writer, events) = LogWriter::spawn_sending(wal, WriterOptions::default(), send);
    writer.submit(granting(1, 2)).unwrap();
    let done = durable_writes(&events, 1);
    assert!(done[0].then_send.is_empty(), "the writer sent it");
    assert_eq!(sent.try_recv(), Ok(2), "sent before the write was reported");

    writer.submit(granting(2, 3)).unwrap();
    let done = durable_writes(&events, 1);
    assert_eq!(done[0].then_send.len(), 1, "left for the event");
    assert!(sent.try_recv().is_err());

    // The third sync fails: its message never goes.
    writer.submit(granting(3, 2)).unwrap();
    match events.recv_timeout(Duration::from_secs(10)).unwrap() {
        WriterEvent::Failed(_) => {}
        other => panic!("expected a failure, got {other:?}"),
    }
    drop(writer.stop());
    assert!(
        sent.try_recv().is_err(),
        "a message went out before its fsync"
    );
}

#[test]
fn a_failed_sync_is_reported_and_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        fail_sync_after: Some(3),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let (writer, events) = LogWriter::spawn(wal);
    let mut durable = 0;
    for i in 1..=3 {
        writer.submit(entries(i..=i, 1)).unwrap();
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            WriterEvent::Durable { writes, .. } => durable += writes.len(),
            WriterEvent::Failed(e) => panic!("{e}"),
        }
    }
    writer.submit(entries(4..=4, 1)).unwrap();
    match events.recv_timeout(Duration::from_secs(10)).unwrap() {
        WriterEvent::Failed(WalError::Io { .. }) => {}
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(durable, 3);
    // The thread has stopped: later submissions are refused (once the queue notices).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while writer.submit(Write::default()).is_ok() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(events.recv_timeout(Duration::from_millis(50)).is_err());
    drop(writer.stop());
}

fn with_ledger(sync: SyncMode) -> WalOptions {
    WalOptions {
        sync,
        sync_ledger: true,
        ..small()
    }
}

/// What the active segment holds (its file may run on in zeros filled ahead of use).
fn active_len(wal: &Wal) -> u64 {
    wal.active_written_bytes
}

#[test]
fn the_sync_ledger_follows_every_sync_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), with_ledger(SyncMode::Fdatasync)).unwrap();
    let point = || ledger::read_durable_point(dir.path()).unwrap().unwrap();
    assert_eq!(point().seq, 1, "a fresh log's header is durable");
    for i in 1..=40 {
        wal.append(&entries(i..=i, 1)).unwrap();
        wal.sync().unwrap();
        let last = wal.segment_paths().len() as u64;
        assert_eq!(
            point(),
            ledger::DurablePoint {
                seq: last,
                len_bytes: active_len(&wal)
            }
        );
    }
    assert!(wal.segment_paths().len() > 1, "the test spans a rollover");
}

#[test]
fn a_power_loss_keeps_exactly_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        fail_sync_after: Some(5),
        ..with_ledger(SyncMode::Fdatasync)
    };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    for i in 1..=5 {
        wal.append(&entries(i..=i, 1)).unwrap();
        wal.sync().unwrap();
    }
    // The sixth group is written, but its sync fails: it is in the page cache only.
    wal.append(&entries(6..=9, 1)).unwrap();
    assert!(wal.sync().is_err());
    drop(wal);
    let loss = ledger::cut_to_durable(dir.path()).unwrap();
    assert!(loss.bytes_dropped > 0);
    let (_, rec) = Wal::open(dir.path(), with_ledger(SyncMode::Fdatasync)).unwrap();
    assert_eq!(rec.entries.last().map(|e| e.index), Some(5));
    assert_eq!(rec.torn_tail, None, "cut at a record boundary");
}

/// A power loss during a sync that began with the log durable up to `durable`, in which the
/// first page written past that point is lost and every later page reached the disk.
fn lose_the_first_unsynced_page(dir: &Path, durable: ledger::DurablePoint) {
    let mut first = true;
    ledger::lose_pages_after(dir, durable, || !std::mem::replace(&mut first, false)).unwrap();
}

#[test]
fn a_rollover_makes_the_new_segment_s_header_durable_before_its_first_group() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes_max: 32 * 1024,
        ..with_ledger(SyncMode::Fdatasync)
    };
    let (mut wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let write = |range: std::ops::RangeInclusive<Index>, payload_bytes| Write {
        entries: range.map(|i| entry(i, 1, payload_bytes)).collect(),
        ..Write::default()
    };
    // Too little room left in the active segment (the first, or a spare the log moved to)...
    let mut next = 1;
    while wal.active_written_bytes + 5100 < opts.segment_bytes_max {
        wal.append(&write(next..=next, 1000)).unwrap();
        wal.sync().unwrap();
        next += 1;
    }
    // ...for a group of three entries over four pages: it begins the next; a power loss cuts its
    // sync short.
    let segments = wal.segment_paths().len();
    wal.append(&write(next..=next + 2, 5000)).unwrap();
    assert_eq!(
        wal.segment_paths().len(),
        segments + 1,
        "the group rolled over"
    );
    let durable = ledger::read_durable_point(dir.path()).unwrap().unwrap();
    wal.sync().unwrap();
    drop(wal);
    lose_the_first_unsynced_page(dir.path(), durable);

    let (_, rec) = Wal::open(dir.path(), opts).unwrap();
    assert!(rec.torn_tail.is_some(), "the group is a torn tail");
    assert_eq!(rec.entries, write(1..=next - 1, 1000).entries);
}

#[test]
fn a_power_loss_while_a_rollover_begins_the_next_segment_keeps_the_sealed_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    // The rollover seals the segment (sync 2); the power goes while the next segment's header
    // is synced (sync 3, failed here, with no marker left: a power loss writes none).
    let opts = WalOptions {
        fail_sync_after: Some(2),
        ..with_ledger(SyncMode::Fdatasync)
    };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    // Without a spare: a rollover onto a ready one, between groups, has nothing to seal.
    wal.spare = None;
    wal.append(&entries(1..=2, 1)).unwrap();
    wal.sync().unwrap();
    assert!(wal.append(&entries(3..=60, 1)).is_err());
    drop(wal);
    std::fs::remove_file(dir.path().join(failed_sync::MARKER_FILE)).unwrap();
    let durable = ledger::read_durable_point(dir.path()).unwrap().unwrap();
    lose_the_first_unsynced_page(dir.path(), durable);
    let (_, rec) = Wal::open(dir.path(), with_ledger(SyncMode::Fdatasync)).unwrap();
    assert!(
        rec.torn_tail.is_some(),
        "the new segment was torn at creation"
    );
    let last = rec.entries.last().map_or(0, |e| e.index);
    assert!(last > 2, "the sealed segment's entries are kept: {last}");
}

#[test]
fn recovery_makes_the_unsynced_tail_it_returns_durable() {
    let dir = tempfile::tempdir().unwrap();
    drop(Wal::open(dir.path(), with_ledger(SyncMode::Fdatasync)).unwrap());
    let opts = WalOptions {
        fail_sync_after: Some(0),
        ..with_ledger(SyncMode::Fdatasync)
    };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    wal.append(&entries(1..=3, 1)).unwrap();
    assert!(wal.sync().is_err(), "written, never synced");
    drop(wal);
    // A kill between the write and its sync, not a failed sync: no marker.
    std::fs::remove_file(dir.path().join(failed_sync::MARKER_FILE)).unwrap();
    // The entries survived the "crash" in the page cache; recovery returns them, so it must
    // sync them before the node counts them durable.
    let (wal, rec) = Wal::open(dir.path(), with_ledger(SyncMode::Fdatasync)).unwrap();
    assert_eq!(rec.entries.len(), 3);
    let point = ledger::read_durable_point(dir.path()).unwrap().unwrap();
    assert_eq!(point.len_bytes, active_len(&wal));
    drop(wal);
    ledger::cut_to_durable(dir.path()).unwrap();
    let (_, rec) = Wal::open(dir.path(), with_ledger(SyncMode::Fdatasync)).unwrap();
    assert_eq!(
        rec.entries.len(),
        3,
        "a power loss after recovery keeps them"
    );
}

#[test]
fn after_a_failed_sync_the_next_open_cuts_the_log_back_to_where_it_was_durable() {
    let dir = tempfile::tempdir().unwrap();
    // The first rollover's sync, sealing the segment, succeeds; the next, of the new segment's
    // header, fails.
    let failing = WalOptions {
        fail_sync_after: Some(2),
        ..small()
    };
    let (mut wal, _) = Wal::open(dir.path(), failing).unwrap();
    // Without a spare: a rollover onto a ready one, between groups, has nothing to seal.
    wal.spare = None;
    wal.append(&entries(1..=2, 1)).unwrap();
    wal.sync().unwrap();
    let segments = wal.segment_paths();
    // Enough to roll into new segments: the failed sync is a rollover's, inside the append.
    let failed = wal
        .append(&entries(3..=60, 1))
        .and_then(|()| wal.sync().map(drop));
    assert!(failed.is_err(), "the third sync fails");
    drop(wal);
    assert!(dir.path().join(failed_sync::MARKER_FILE).exists());
    let on_disk = recovery::list_segments(dir.path()).unwrap();
    assert!(
        on_disk.len() > segments.len(),
        "a rollover began a segment: {on_disk:?}"
    );
    // The sealed segment is durable, through its last entry.
    let sealed = segment::scan(&std::fs::read(&segments[segments.len() - 1]).unwrap(), 0);
    let sealed_last = (sealed.records.iter().rev())
        .find_map(|(_, r)| matches!(r, Record::Entry(_)).then(|| r.index()))
        .expect("entries");
    assert!(sealed_last > 2);
    // What the failed sync wrote is in the page cache, and would read back whole.
    let (mut wal, rec) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(rec.entries.last().map(|e| e.index), Some(sealed_last));
    assert_eq!(
        wal.segment_paths(),
        segments,
        "the segments it began are gone"
    );
    assert!(!dir.path().join(failed_sync::MARKER_FILE).exists());
    let next = sealed_last + 1;
    wal.append(&entries(next..=next, 1)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(rec.entries.last().map(|e| e.index), Some(next));
}

#[test]
fn a_failed_sync_marker_naming_a_missing_segment_is_refused_and_nothing_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    wal.append(&entries(1..=40, 1)).unwrap();
    wal.sync().unwrap();
    let segments = wal.segment_paths();
    drop(wal);
    let missing = ledger::DurablePoint {
        seq: 99,
        len_bytes: 10,
    };
    std::fs::write(dir.path().join(failed_sync::MARKER_FILE), missing.encode()).unwrap();
    let refused = Wal::open(dir.path(), small()).map(drop).unwrap_err();
    assert!(refused.to_string().contains("not there"), "{refused}");
    assert_eq!(
        recovery::list_segments(dir.path()).unwrap().len(),
        segments.len()
    );
}

#[test]
fn without_fsync_a_power_loss_leaves_a_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), with_ledger(SyncMode::UnsafeNoFsync)).unwrap();
    for i in 1..=40 {
        wal.append(&entries(i..=i, 1)).unwrap();
        wal.sync().unwrap();
    }
    let segments = wal.segment_paths().len();
    drop(wal);
    let loss = ledger::cut_to_durable(dir.path()).unwrap();
    assert_eq!(loss.segments_removed, segments);
    let (_, rec) = Wal::open(dir.path(), with_ledger(SyncMode::UnsafeNoFsync)).unwrap();
    assert_eq!(rec, Recovered::default());
}

#[test]
fn a_log_without_a_ledger_refuses_a_simulated_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    drop(Wal::open(dir.path(), small()).unwrap());
    assert!(ledger::cut_to_durable(dir.path()).is_err());
}

/// A log that has moved into a zero-filled segment, and the next index to append.
fn log_in_a_spare(dir: &std::path::Path) -> (Wal, Index) {
    let (mut wal, _) = Wal::open(dir, WalOptions::default()).unwrap();
    let mut next = 1;
    append_until_in_a_spare(&mut wal, &mut next);
    (wal, next)
}

/// Appends one-entry groups until the log has moved into a zero-filled spare segment.
fn append_until_in_a_spare(wal: &mut Wal, next: &mut Index) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal.active_file_bytes <= wal.active_written_bytes {
        assert!(std::time::Instant::now() < deadline, "no spare within 10 s");
        wal.append(&entries(*next..=*next, 1)).unwrap();
        wal.sync().unwrap();
        *next += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn appends_go_into_a_zero_filled_segment_and_its_zeros_are_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, mut next) = log_in_a_spare(dir.path());
    // Writing into the spare does not grow the file: a sync then flushes data alone.
    let path = wal.segment_paths().pop().unwrap();
    let file_len = std::fs::metadata(&path).unwrap().len();
    for _ in 0..10 {
        wal.append(&entries(next..=next, 1)).unwrap();
        wal.sync().unwrap();
        next += 1;
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), file_len);
    assert!(wal.active_written_bytes < file_len);
    // The zeros after the last record are space not yet used, not a torn tail.
    let (mut wal, rec) = reopen(wal);
    assert_eq!(rec.torn_tail, None);
    assert_eq!(rec.entries, entries(1..=next - 1, 1).entries);
    // Appends continue where the records end.
    wal.append(&entries(next..=next + 4, 1)).unwrap();
    wal.sync().unwrap();
    let (_, rec) = reopen(wal);
    assert_eq!(rec.torn_tail, None);
    assert_eq!(rec.entries, entries(1..=next + 4, 1).entries);
}

#[test]
fn a_torn_write_in_zero_filled_space_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, next) = log_in_a_spare(dir.path());
    let (path, end) = (wal.segment_paths().pop().unwrap(), wal.active_written_bytes);
    drop(wal);
    // Half a record's worth of bytes reached the disk after the last synced write.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0x5a; 40], end).unwrap();
    let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let torn = rec.torn_tail.expect("a torn tail");
    assert_eq!(torn.offset, end);
    assert_eq!(rec.entries, entries(1..=next - 1, 1).entries);
}

#[test]
fn a_sealed_segment_keeps_no_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
    let mut next = 1;
    // Into a spare, then on through several more segments.
    append_until_in_a_spare(&mut wal, &mut next);
    let sealed_from = wal.segment_paths().len();
    while wal.segment_paths().len() < sealed_from + 3 {
        append_until_in_a_spare(&mut wal, &mut next);
        wal.append(&entries(next..=next + 9, 1)).unwrap();
        wal.sync().unwrap();
        next += 10;
    }
    let paths = wal.segment_paths();
    for path in &paths[..paths.len() - 1] {
        let bytes = std::fs::read(path).unwrap();
        let scan = segment::scan(&bytes, 0);
        assert!(
            scan.damage.is_none() && scan.unwritten_from.is_none(),
            "{path:?}"
        );
    }
    let (_, rec) = reopen(wal);
    assert_eq!(rec.entries, entries(1..=next - 1, 1).entries);
}
