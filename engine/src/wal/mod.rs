//! The durable log: a segmented write-ahead log with group commit and honest recovery.
//!
//! The log is a directory of segment files (`{seq:020}.wal`), each at most
//! [`WalOptions::segment_bytes_max`] (a single larger record gets a segment to itself). Every
//! change the core asks for in a [`Write`] becomes one checksummed record — snapshot, truncation,
//! entries, then hard state, in that order — appended to the last segment. See [`record`] and
//! [`segment`] for the byte layouts. Segments after the first are zero-filled ahead of use by a
//! background thread (see `spare`), so that a sync flushes data without committing a new file
//! size; a segment is trimmed to its last record when it is sealed.
//!
//! Guarantees:
//! - [`Wal::sync`] returns only after `fdatasync` (and, when a segment was created, renamed into
//!   place or removed, an `fsync` of the directory) returned: what it covers survives a crash.
//!   The [`LogWriter`] reports a write durable only after that.
//! - Recovery ([`Wal::open`]) returns exactly the log the durable writes describe. A torn tail
//!   (damage in the last segment with nothing valid after it) is cut and reported in
//!   [`Recovered::torn_tail`]. Any other damage — a bad record before valid ones, damage in a
//!   sealed segment, a missing segment, or a tail cut that would lose entries at or below the
//!   recovered commit index — is [`WalError::Corrupt`], and nothing on disk is changed.
//! - After any I/O error the log refuses all further work (a failed `fdatasync` may have dropped
//!   dirty pages; retrying could report durable what is not): the node must stop.
//!
//! One process owns a log directory at a time.

// The decoder and the segment scanner are public (hidden) for the fuzz target, the corpus test
// and the corruption tests that craft records by hand.
mod failed_sync;
#[doc(hidden)]
pub mod fuzz;
#[doc(hidden)]
pub mod ledger;
#[doc(hidden)]
pub mod record;
mod recovery;
mod remover;
#[doc(hidden)]
pub mod segment;
mod spare;
mod state;
mod writer;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::ledger::{DurablePoint, SyncLedger};
use self::record::{Record, GROUP_START_BYTES, INDEX_MAX, PREFIX_BYTES, RECORD_BODY_BYTES_MAX};
use self::remover::Remover;
use self::segment::{segment_path, SegmentHeader, SEGMENT_HEADER_BYTES};
use self::spare::Spare;
use self::state::{LogState, Slot};
use crate::core::{Entry, HardState, Index, SnapshotMeta, Term, Write};

pub use self::writer::{DurableSend, LogWriter, WriterEvent, WriterOptions, WriterStopped};

/// How [`Wal::sync`] makes data durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` the segment (and `fsync` the directory when segments come or go).
    #[default]
    Fdatasync,
    /// Never sync. A crash of the machine (not just the process) can lose or tear anything
    /// written since boot. For tests and benchmarks only.
    UnsafeNoFsync,
}

/// How a log is laid out and made durable.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is sealed and a new one begun before a record would take it past this size.
    pub segment_bytes_max: u64,
    pub sync: SyncMode,
    /// Failpoint for fault tests: the first `n` data syncs after `open` succeed and every later one fails as a
    /// failed `fdatasync` would (the log then refuses all further work).
    #[doc(hidden)]
    pub fail_sync_after: Option<u64>,
    /// Failpoint for power-loss tests: keep a ledger of what each sync made durable (see
    /// [`ledger`]).
    #[doc(hidden)]
    pub sync_ledger: bool,
    /// Failpoint for power-loss tests: every data sync first waits this long, as on a slow
    /// disk, so that a test killing the node finds writes not yet synced.
    #[doc(hidden)]
    pub slow_sync: Option<Duration>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 * 1024 * 1024,
            sync: SyncMode::Fdatasync,
            fail_sync_after: None,
            sync_ledger: false,
            slow_sync: None,
        }
    }
}

/// What [`Wal::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The log starts after this snapshot (index 0 for a log that never had one).
    pub snapshot: SnapshotMeta,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The torn tail that recovery cut, if any, for the node's log.
    pub torn_tail: Option<TornTail>,
}

/// A torn tail cut by recovery: the last write, which had not been made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the file now ends (0 when the whole segment was removed).
    pub offset: u64,
    pub bytes_dropped: u64,
    pub reason: String,
}

/// The entries a piece of damage concerns: `first..=last`, or `first..` when the end is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRange {
    pub first: Index,
    pub last: Option<Index>,
}

impl IndexRange {
    fn starting_at(first: Index) -> Self {
        Self { first, last: None }
    }

    fn single(index: Index) -> Self {
        Self {
            first: index,
            last: Some(index),
        }
    }

    /// The indexes from one of `a` and `b` up to just before the other.
    fn between(a: Index, b: Index) -> Self {
        let (lo, hi) = (a.min(b), a.max(b));
        Self {
            first: lo,
            last: Some(hi.saturating_sub(1).max(lo)),
        }
    }
}

impl std::fmt::Display for IndexRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last {
            Some(last) => write!(f, "{}..={last}", self.first),
            None => write!(f, "{}..", self.first),
        }
    }
}

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("log i/o failed ({op}, {}): {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Damage recovery will not repair: the node must not start on this log.
    #[error(
        "the log is corrupt: {} at byte {offset}, entries {index_range}: {reason}; refusing to \
         start and leaving the files as they are",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        index_range: IndexRange,
        reason: String,
    },
    /// A write or compaction that breaks the log's rules (a bug upstream). The log stops.
    #[error("invalid log request: {reason}")]
    InvalidRequest { reason: String },
    /// An entry too large for one record.
    #[error("an entry of {body_bytes} bytes exceeds the record limit of {RECORD_BODY_BYTES_MAX}")]
    RecordTooLarge { body_bytes: usize },
    /// A read asked for entries the log does not hold.
    #[error("entries {lo}..{hi} are not in the log, which holds {first}..{next}")]
    Unavailable {
        lo: Index,
        hi: Index,
        first: Index,
        next: Index,
    },
    /// An earlier error left the files in an unknown state; the log does no more work.
    #[error("the log stopped after an earlier error")]
    Stopped,
}

/// What one [`Wal::sync`] did (counting the writes and syncs of any segment rollover since the
/// previous one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries made durable.
    pub entries: u64,
    pub bytes_written: u64,
    pub write_calls: u32,
    pub fdatasyncs: u32,
    pub dir_fsyncs: u32,
    /// Time spent in `write`, `fdatasync` and `fsync` calls.
    pub io_time: Duration,
}

/// The snapshot a log durably records as where it starts: at most the index a [`Wal`] would
/// recover after a crash now (a segment rollover's sync can make a newer record durable first).
/// Shared with whoever keeps snapshot files, so that the file recovery will ask for is never
/// removed; it only grows, and is published after each sync that made it durable.
#[derive(Clone, Debug, Default)]
pub struct RecordedSnapshot(Arc<AtomicU64>);

impl RecordedSnapshot {
    /// The recorded snapshot's index (0 before any).
    pub fn index(&self) -> Index {
        self.0.load(Ordering::Acquire)
    }

    /// Records `index` as durable (the log after a sync; tests standing in for a log).
    pub(crate) fn publish(&self, index: Index) {
        self.0.fetch_max(index, Ordering::Release);
    }
}

/// Where an entry's record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryLoc {
    term: Term,
    seq: u64,
    offset: u64,
}

impl Slot for EntryLoc {
    fn term(&self) -> Term {
        self.term
    }
}

/// A segment the log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegmentMeta {
    seq: u64,
    /// The next entry's index when the segment was created.
    first_index: Index,
    /// What its records' checksums start from (0 in a segment written before salts).
    salt: u32,
}

/// Segments must hold a header, a checkpoint and a few records.
const SEGMENT_BYTES_MIN: u64 = 1024;
/// Bytes the write buffer keeps allocated between syncs; a larger group's buffer is freed.
const BUF_RETAIN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The write-ahead log. Not thread-safe by design: one writer (the [`LogWriter`] thread) owns it.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    state: LogState<EntryLoc>,
    /// Ascending; the last one is active (appended to).
    segments: Vec<SegmentMeta>,
    active: File,
    /// Bytes of the active segment already handed to `write`.
    active_written_bytes: u64,
    /// The active segment's length on disk: up to there it was zero-filled ahead of use, and
    /// writing changes no metadata (see [`spare`]).
    active_file_bytes: u64,
    /// The next segment, being zero-filled (none when nothing is synced anyway).
    spare: Option<Spare>,
    /// Removes the segments compaction leaves behind.
    remover: Remover,
    /// Where the active segment's own records begin (after header and checkpoint): a segment
    /// holding nothing else is never sealed, so every record fits somewhere.
    active_payload_start: u64,
    /// The log's salt, written into each new segment (see [`segment`]).
    log_salt: u32,
    /// Encoded records not yet written; they belong at the end of the active segment.
    buf: Vec<u8>,
    data_unsynced: bool,
    dir_unsynced: bool,
    /// A group start was put since the last sync: records put now belong to its group.
    group_open: bool,
    /// Where in `buf` the open group's start is, until written (its length is filled in then).
    group_start_at: Option<usize>,
    stats: SyncStats,
    data_syncs_attempted: u64,
    stopped: bool,
    ledger: Option<SyncLedger>,
    recorded_snapshot: RecordedSnapshot,
    /// Where the log was durable after its last sync: what a failed sync writes down.
    durable: DurablePoint,
}

pub(crate) fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the directory's entries (files created, removed, renamed) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync the log directory", dir))
}

/// Creates `dir` and any missing parents, and makes each new directory's entry durable in its
/// parent (with `sync`): a file synced inside a directory whose own entry a power loss can take
/// is not durable either. (ext4 syncs new parents along with a file; POSIX does not promise it.)
pub(crate) fn create_dir_durably(dir: &Path, sync: bool) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    if sync {
        // Top down: a directory's entry is synced once its parent's is.
        for created in missing.iter().rev() {
            // A relative path's first component's parent is the working directory.
            let parent = match created.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

impl Wal {
    /// Opens the log in `dir` (creating the directory and an empty log if there is none) and
    /// recovers what it holds.
    ///
    /// A new node records its initial membership by appending a [`Write`] whose `snapshot` is the
    /// bootstrap snapshot (index 0): recovery then returns it as [`Recovered::snapshot`].
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        if opts.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(WalError::InvalidRequest {
                reason: format!(
                    "segment_bytes_max {} is below {SEGMENT_BYTES_MIN}",
                    opts.segment_bytes_max
                ),
            });
        }
        if opts.sync == SyncMode::UnsafeNoFsync {
            tracing::warn!(
                dir = %dir.display(),
                "the log runs with SyncMode::UnsafeNoFsync: nothing is durable, a machine crash \
                 can lose acknowledged entries (tests and benchmarks only)"
            );
        }
        create_dir_durably(dir, opts.sync == SyncMode::Fdatasync)
            .map_err(io_error("create the log directory", dir))?;
        failed_sync::recover(dir)?;
        let Some(found) = recovery::recover(dir)? else {
            return Self::create(dir, opts);
        };
        let active_meta = *found.segments.last().expect("recovery found a segment");
        let path = segment_path(dir, active_meta.seq);
        let active = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("open the active segment", &path))?;
        let spare = Spare::start_unless_unsynced(dir, &opts)?;
        let remover = Remover::start(dir, opts.sync)?;
        let active_file_bytes = active
            .metadata()
            .map_err(io_error("read the active segment's length", &path))?
            .len();
        let log_salt = match found.log_salt {
            Some(salt) => salt,
            None => new_salt(dir)?,
        };
        let (state, slots) = split_state(found.state);
        let recovered = Recovered {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            entries: slots,
            torn_tail: found.torn_tail,
        };
        let ledger = opts
            .sync_ledger
            .then(|| SyncLedger::open(dir))
            .transpose()?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            state,
            segments: found.segments,
            active,
            active_written_bytes: found.active_len_bytes,
            active_file_bytes,
            spare,
            remover,
            active_payload_start: SEGMENT_HEADER_BYTES as u64,
            log_salt,
            buf: Vec::new(),
            data_unsynced: false,
            dir_unsynced: false,
            group_open: false,
            group_start_at: None,
            stats: SyncStats::default(),
            data_syncs_attempted: 0,
            stopped: false,
            ledger,
            recorded_snapshot: RecordedSnapshot::default(),
            durable: DurablePoint::default(),
        };
        wal.assert_invariants();
        if let Some(at) = found.open_group_at {
            wal.close_cut_group(at)?;
        }
        wal.sync_recovered()?;
        if wal.active_salt() == 0 {
            // Written before salts: what comes next goes into a salted segment, where bytes a
            // client wrote can no longer pass for records. (A build before salts cannot open
            // the log after this.)
            wal.roll()?;
            wal.data_syncs_attempted = 0;
        }
        wal.recorded_snapshot.publish(wal.state.snapshot.index);
        Ok((wal, recovered))
    }

    /// A fresh log: the first segment, made durable at once.
    fn create(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        let seq = recovery::FIRST_SEGMENT_SEQ;
        let path = segment_path(dir, seq);
        let active = create_segment_file(&path)?;
        let ledger = opts
            .sync_ledger
            .then(|| SyncLedger::open(dir))
            .transpose()?;
        let spare = Spare::start_unless_unsynced(dir, &opts)?;
        let remover = Remover::start(dir, opts.sync)?;
        let log_salt = new_salt(dir)?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            state: LogState::new(1),
            segments: vec![SegmentMeta {
                seq,
                first_index: 1,
                salt: log_salt,
            }],
            active,
            active_written_bytes: 0,
            active_file_bytes: 0,
            spare,
            remover,
            active_payload_start: 0,
            log_salt,
            buf: Vec::new(),
            data_unsynced: false,
            dir_unsynced: true,
            group_open: false,
            group_start_at: None,
            stats: SyncStats::default(),
            data_syncs_attempted: 0,
            stopped: false,
            ledger,
            recorded_snapshot: RecordedSnapshot::default(),
            durable: DurablePoint::default(),
        };
        wal.begin_segment(seq, 1)?;
        wal.sync()?;
        // The failpoint counts the caller's syncs, not this one.
        wal.data_syncs_attempted = 0;
        Ok((wal, Recovered::default()))
    }

    /// Rewrites the start of the write group at `at`, cut short by recovery, to claim only what
    /// was kept (made durable by `sync_recovered`). Left claiming the bytes cut, where the next
    /// group goes, it would make a torn tail of that group look like damage inside this one,
    /// followed by "a later group", and the log would be refused after a second crash.
    fn close_cut_group(&mut self, at: u64) -> Result<(), WalError> {
        let kept = record::group_start(self.active_written_bytes - at, self.active_salt());
        let path = self.active_path();
        self.active
            .write_all_at(&kept, at)
            .map_err(io_error("close the write group recovery cut", &path))
    }

    /// Makes what recovery read durable before anyone relies on it. A process killed after
    /// writing a group but before syncing it leaves that group whole in the page cache:
    /// recovery returns it, and the node would count it durable (and acknowledge it to a
    /// leader) although a power loss could still take it.
    /// (The sync failpoint counts the caller's syncs, not this one.)
    fn sync_recovered(&mut self) -> Result<(), WalError> {
        if self.opts.sync == SyncMode::Fdatasync {
            let path = self.active_path();
            self.active
                .sync_data()
                .map_err(io_error("fdatasync the recovered segment", &path))?;
            fsync_dir(&self.dir)?;
        }
        self.record_durable()
    }

    /// Writes down, for power-loss tests, that everything written so far is durable.
    fn record_durable(&mut self) -> Result<(), WalError> {
        self.durable = DurablePoint {
            seq: self.active_seq(),
            len_bytes: self.active_written_bytes,
        };
        match &self.ledger {
            Some(ledger) if self.opts.sync == SyncMode::Fdatasync => ledger.record(self.durable),
            _ => Ok(()),
        }
    }

    /// Stops the log after a write or sync of its data failed (see [`failed_sync`]). Before the
    /// log's first sync (a new log's, or a recovered one's) there is no durable point to go
    /// back to, and no marker: one saying "nothing" would have the next open remove every
    /// segment, and nothing was acknowledged from those syncs anyway.
    fn sync_failed(&mut self) {
        self.stopped = true;
        if self.durable.seq != 0 {
            failed_sync::mark(&self.dir, self.durable);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot this log durably records, kept current as the log syncs.
    pub fn recorded_snapshot(&self) -> RecordedSnapshot {
        self.recorded_snapshot.clone()
    }

    pub fn hard_state(&self) -> HardState {
        self.state.hard_state
    }

    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.state.snapshot
    }

    /// The first index held as an entry (one past the snapshot).
    pub fn first_index(&self) -> Index {
        self.state.first_index()
    }

    /// The last index held, or the snapshot's when no entry follows it.
    pub fn last_index(&self) -> Index {
        self.state.last_index()
    }

    /// Segment files the log holds, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|s| segment_path(&self.dir, s.seq))
            .collect()
    }

    /// Encodes `write` — snapshot, truncation, entries, hard state, in that order — into the
    /// buffer. No system call unless a segment fills up (then it is sealed: written and synced).
    /// Nothing is durable until [`Wal::sync`].
    pub fn append(&mut self, write: &Write) -> Result<(), WalError> {
        self.check_running()?;
        let result = self.append_records(write);
        if result.is_err() {
            // Part of the write may be buffered or written: the log's state is no longer known
            // to match what the caller believes. Stop rather than guess.
            self.stopped = true;
        }
        result
    }

    fn append_records(&mut self, write: &Write) -> Result<(), WalError> {
        if let Some(snapshot) = &write.snapshot {
            self.put(&Record::Snapshot(snapshot.clone()))?;
        }
        if let Some(from) = write.truncate_from {
            self.put(&Record::Truncate { from })?;
        }
        for entry in &write.entries {
            self.put(&Record::Entry(entry))?;
        }
        if let Some(hard_state) = write.hard_state {
            self.put(&Record::HardState(hard_state))?;
        }
        Ok(())
    }

    /// Validates `record` against the log, then buffers it (sealing the active segment first if
    /// the record would overflow it). The first record since the last sync goes after a group
    /// start, whose length [`Wal::write_buf`] fills in: recovery tells a torn last group from
    /// damage inside the log by them (see [`recovery`]).
    fn put(&mut self, record: &Record<&Entry>) -> Result<(), WalError> {
        if record.index() > INDEX_MAX {
            return Err(WalError::InvalidRequest {
                reason: format!("index {} beyond {INDEX_MAX}", record.index()),
            });
        }
        let record_bytes = record::record_bytes(record);
        let body_bytes = record_bytes - PREFIX_BYTES;
        if body_bytes > RECORD_BODY_BYTES_MAX {
            return Err(WalError::RecordTooLarge { body_bytes });
        }
        // A group start goes in the same segment as its group's first record.
        let opens_group = !self.group_open;
        let group_start_bytes = if opens_group { GROUP_START_BYTES } else { 0 };
        let end = self.active_end_bytes();
        let past_end = end + (group_start_bytes + record_bytes) as u64;
        // Past the zero-filled part, a ready spare is worth a new segment: every write in it is
        // cheaper to sync than one that grows a file. Taken only between groups, when all before
        // is synced: a group still costs one write and one fdatasync.
        let spare_due = past_end > self.active_file_bytes
            && self.buf.is_empty()
            && !self.data_unsynced
            && self.spare.as_ref().is_some_and(Spare::ready);
        if (past_end > self.opts.segment_bytes_max || spare_due) && end > self.active_payload_start
        {
            self.roll()?;
        }
        if opens_group {
            // Room for it: `write_buf` writes it in once the group's length is known.
            self.group_start_at = Some(self.buf.len());
            self.buf.extend_from_slice(&[0; GROUP_START_BYTES]);
            self.group_open = true;
        }
        let offset = self.active_end_bytes();
        let seq = self.active_seq();
        let invalid = |reason| WalError::InvalidRequest { reason };
        match record {
            Record::Entry(e) => {
                let loc = EntryLoc {
                    term: e.term,
                    seq,
                    offset,
                };
                self.state.push(e.index, loc).map_err(invalid)?;
                self.stats.entries += 1;
            }
            Record::HardState(h) => self.state.set_hard_state(*h).map_err(invalid)?,
            Record::Snapshot(s) => self.state.install(s).map_err(invalid)?,
            Record::Truncate { from } => self.state.truncate(*from).map_err(invalid)?,
            Record::Compact(s) => self.state.compact(s).map_err(invalid)?,
            Record::GroupStart { .. } => {}
        }
        let salt = self.active_salt();
        let written = record::encode(record, &mut self.buf, salt)
            .map_err(|body_bytes| WalError::RecordTooLarge { body_bytes })?;
        debug_assert_eq!(written, record_bytes);
        Ok(())
    }

    fn active_seq(&self) -> u64 {
        self.segments
            .last()
            .expect("the log always has a segment")
            .seq
    }

    fn active_salt(&self) -> u32 {
        self.segments
            .last()
            .expect("the log always has a segment")
            .salt
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.dir, self.active_seq())
    }

    fn active_end_bytes(&self) -> u64 {
        self.active_written_bytes + self.buf.len() as u64
    }

    /// Seals the active segment (written and synced, so that damage in it is always corruption)
    /// and begins the next.
    fn roll(&mut self) -> Result<(), WalError> {
        self.write_buf()?;
        self.sync_data()?;
        self.trim_active()?;
        // The segment being sealed may itself be new since the last sync (a write spanning
        // segments): its name must be durable before the next one's, or a crash could keep the
        // later segment and lose the earlier, and recovery would find a gap.
        if self.dir_unsynced {
            self.sync_dir()?;
        }
        // Sealed whole: what a power loss may take from here on is in the next segment alone.
        self.record_durable()?;
        let seq = self.active_seq() + 1;
        let first_index = self.state.next_index();
        let path = segment_path(&self.dir, seq);
        let taken = match &mut self.spare {
            Some(spare) => spare.take(&path)?,
            None => None,
        };
        (self.active, self.active_file_bytes) = match taken {
            Some(prepared) => prepared,
            None => (create_segment_file(&path)?, 0),
        };
        self.active_written_bytes = 0;
        self.segments.push(SegmentMeta {
            seq,
            first_index,
            salt: self.log_salt,
        });
        self.dir_unsynced = true;
        self.begin_segment(seq, first_index)?;
        // The header and checkpoint are made durable, with the segment's name, before any group
        // goes in. Written and synced with the first group instead, a power loss could keep a
        // later page of that group and lose the header's page: a segment with a bad header and
        // valid records after it, which recovery must refuse as damage, not cut as a torn tail.
        // One more fdatasync per segment.
        self.write_buf()?;
        self.sync_data()?;
        self.sync_dir()?;
        self.record_durable()
    }

    /// Cuts the unused zeros off the segment being sealed, durably, before the next segment
    /// exists: a sealed segment ends with its last record, so anything else there is damage.
    fn trim_active(&mut self) -> Result<(), WalError> {
        if self.active_file_bytes <= self.active_written_bytes {
            return Ok(());
        }
        let path = self.active_path();
        let trimmed = self
            .active
            .set_len(self.active_written_bytes)
            .and_then(|()| match self.opts.sync {
                SyncMode::Fdatasync => self.active.sync_all(),
                SyncMode::UnsafeNoFsync => Ok(()),
            });
        if let Err(source) = trimmed {
            self.sync_failed();
            return Err(WalError::Io {
                op: "trim a sealed segment",
                path,
                source,
            });
        }
        self.active_file_bytes = self.active_written_bytes;
        Ok(())
    }

    /// Buffers a new segment's header and checkpoint: the current hard state and snapshot, so the
    /// segment still describes the log once the segments before it are removed.
    fn begin_segment(&mut self, seq: u64, first_index: Index) -> Result<(), WalError> {
        assert!(self.buf.is_empty() && self.active_written_bytes == 0);
        let salt = self.active_salt();
        self.buf.extend_from_slice(
            &SegmentHeader {
                seq,
                first_index,
                marks_groups: true,
                salt,
            }
            .encode(),
        );
        for record in [
            Record::<Entry>::HardState(self.state.hard_state),
            Record::Compact(self.state.snapshot.clone()),
        ] {
            record::encode(&record, &mut self.buf, salt)
                .map_err(|body_bytes| WalError::RecordTooLarge { body_bytes })?;
        }
        self.active_payload_start = self.buf.len() as u64;
        Ok(())
    }

    /// Writes the buffered records and makes them, and everything before them, durable.
    /// Returns what it did since the previous call (including any segment rollovers).
    pub fn sync(&mut self) -> Result<SyncStats, WalError> {
        self.check_running()?;
        let result = self.write_buf().and_then(|()| self.sync_data());
        let result = result.and_then(|()| {
            if self.dir_unsynced {
                self.sync_dir()?;
            }
            self.record_durable()
        });
        if let Err(e) = result {
            self.stopped = true;
            return Err(e);
        }
        self.group_open = false;
        self.recorded_snapshot.publish(self.state.snapshot.index);
        if self.buf.capacity() > BUF_RETAIN_BYTES_MAX {
            self.buf = Vec::new();
        }
        Ok(std::mem::take(&mut self.stats))
    }

    fn write_buf(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(at) = self.group_start_at.take() {
            // The group's part in this segment ends with the buffer.
            let group_bytes = (self.buf.len() - at) as u64;
            let start = record::group_start(group_bytes, self.active_salt());
            self.buf[at..at + GROUP_START_BYTES].copy_from_slice(&start);
        }
        let started = Instant::now();
        let result = self
            .active
            .write_all_at(&self.buf, self.active_written_bytes);
        self.stats.io_time += started.elapsed();
        if let Err(source) = result {
            self.sync_failed();
            return Err(WalError::Io {
                op: "write to the active segment",
                path: self.active_path(),
                source,
            });
        }
        self.stats.write_calls += 1;
        self.stats.bytes_written += self.buf.len() as u64;
        self.active_written_bytes += self.buf.len() as u64;
        self.active_file_bytes = self.active_file_bytes.max(self.active_written_bytes);
        self.buf.clear();
        self.data_unsynced = true;
        Ok(())
    }

    fn sync_data(&mut self) -> Result<(), WalError> {
        if !self.data_unsynced {
            return Ok(());
        }
        self.data_syncs_attempted += 1;
        if self
            .opts
            .fail_sync_after
            .is_some_and(|n| self.data_syncs_attempted > n)
        {
            self.sync_failed();
            return Err(WalError::Io {
                op: "fdatasync the active segment",
                path: self.active_path(),
                source: std::io::Error::other("injected failure (WalOptions::fail_sync_after)"),
            });
        }
        if self.opts.sync == SyncMode::Fdatasync {
            if let Some(delay) = self.opts.slow_sync {
                std::thread::sleep(delay);
            }
            let started = Instant::now();
            let result = self.active.sync_data();
            self.stats.io_time += started.elapsed();
            if let Err(source) = result {
                self.sync_failed();
                return Err(WalError::Io {
                    op: "fdatasync the active segment",
                    path: self.active_path(),
                    source,
                });
            }
        }
        self.stats.fdatasyncs += 1;
        self.data_unsynced = false;
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), WalError> {
        if self.opts.sync == SyncMode::Fdatasync {
            let started = Instant::now();
            let result = fsync_dir(&self.dir);
            self.stats.io_time += started.elapsed();
            if let Err(e) = result {
                self.sync_failed();
                return Err(e);
            }
        }
        self.stats.dir_fsyncs += 1;
        self.dir_unsynced = false;
        Ok(())
    }

    fn check_running(&self) -> Result<(), WalError> {
        if self.stopped {
            return Err(WalError::Stopped);
        }
        Ok(())
    }

    /// The caller saved a snapshot covering `snapshot.index`: records that durably (with
    /// everything appended before), then has the oldest segments whose entries it covers removed
    /// (in the background: see [`remover`]).
    /// A snapshot no newer than the current one does nothing.
    pub fn compact(&mut self, snapshot: &SnapshotMeta) -> Result<(), WalError> {
        self.check_running()?;
        if snapshot.index <= self.state.snapshot.index {
            return Ok(());
        }
        if snapshot.index > self.state.last_index() {
            return Err(WalError::InvalidRequest {
                reason: format!(
                    "compaction to {} beyond the log's last index {}",
                    snapshot.index,
                    self.state.last_index()
                ),
            });
        }
        let result = self
            .put(&Record::Compact(snapshot.clone()))
            .and_then(|()| self.sync().map(drop))
            .and_then(|()| self.remove_covered_segments());
        if result.is_err() {
            self.stopped = true;
        }
        result
    }

    /// Queues for removal, oldest first, the longest prefix of segments that recovery no longer
    /// needs: every segment before one whose first index is at most one past the snapshot. That
    /// segment's checkpoint, and the compaction record after it, describe everything the removed
    /// ones held.
    fn remove_covered_segments(&mut self) -> Result<(), WalError> {
        let covered_next = self.state.snapshot.index + 1;
        let Some(keep_from) = (1..self.segments.len())
            .rev()
            .find(|&k| self.segments[k].first_index <= covered_next)
        else {
            return Ok(());
        };
        for meta in self.segments.drain(..keep_from) {
            self.remover.remove(segment_path(&self.dir, meta.seq))?;
        }
        self.assert_invariants();
        Ok(())
    }

    /// The entries with `lo <= index < hi`, read back from the segments (and the unwritten
    /// buffer), each checksum verified.
    pub fn read(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, WalError> {
        let first = self.state.first_index();
        let next = self.state.next_index();
        if lo == hi {
            return Ok(Vec::new());
        }
        if lo > hi || lo < first || hi > next {
            return Err(WalError::Unavailable {
                lo,
                hi,
                first,
                next,
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(hi - lo).unwrap_or(0));
        let mut open: Option<(u64, File)> = None;
        for index in lo..hi {
            let loc = *self
                .state
                .slot(index)
                .expect("index is between first and next");
            let record = self.read_record(index, loc, &mut open)?;
            match record {
                Record::Entry(e) if e.index == index && e.term == loc.term => out.push(e),
                other => {
                    return Err(WalError::Corrupt {
                        file: segment_path(&self.dir, loc.seq),
                        offset: loc.offset,
                        index_range: IndexRange::single(index),
                        reason: format!("expected entry {index}, found {other:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    fn read_record(
        &self,
        index: Index,
        loc: EntryLoc,
        open: &mut Option<(u64, File)>,
    ) -> Result<Record, WalError> {
        let path = segment_path(&self.dir, loc.seq);
        let corrupt = |reason: String| WalError::Corrupt {
            file: path.clone(),
            offset: loc.offset,
            index_range: IndexRange::single(index),
            reason,
        };
        if loc.seq == self.active_seq() && loc.offset >= self.active_written_bytes {
            let at = usize::try_from(loc.offset - self.active_written_bytes)
                .expect("buffered offsets fit in memory");
            let (record, _) = record::decode(&self.buf[at..], self.active_salt())
                .map_err(|e| corrupt(format!("buffered record: {e}")))?;
            return Ok(record);
        }
        if open.as_ref().is_none_or(|(seq, _)| *seq != loc.seq) {
            let file = File::open(&path).map_err(io_error("open a segment to read", &path))?;
            *open = Some((loc.seq, file));
        }
        let (_, file) = open.as_ref().expect("opened above");
        let mut prefix = [0u8; PREFIX_BYTES];
        file.read_exact_at(&mut prefix, loc.offset)
            .map_err(io_error("read a record", &path))?;
        let body_bytes = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
        if body_bytes > RECORD_BODY_BYTES_MAX {
            return Err(corrupt(format!("record length {body_bytes}")));
        }
        let mut bytes = vec![0u8; PREFIX_BYTES + body_bytes];
        file.read_exact_at(&mut bytes, loc.offset)
            .map_err(io_error("read a record", &path))?;
        let salt = loc
            .seq
            .checked_sub(self.segments[0].seq)
            .and_then(|i| self.segments.get(usize::try_from(i).ok()?))
            .expect("an entry's location names a segment the log holds")
            .salt;
        let (record, _) = record::decode(&bytes, salt).map_err(|e| corrupt(e.to_string()))?;
        Ok(record)
    }

    fn assert_invariants(&self) {
        assert!(!self.segments.is_empty(), "the log always has a segment");
        assert!(
            self.segments.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "segment sequence numbers have no gaps"
        );
        assert_eq!(
            self.state.hole(),
            None,
            "the live log has no hole after its snapshot"
        );
        if let Some(front) = self.state.slot(self.state.first_index()) {
            assert!(
                front.seq >= self.segments[0].seq,
                "no entry lives in a removed segment"
            );
        }
    }
}

/// A new log's salt: random, so that no client can write a command that checks as a record of
/// the log, and never 0, which means "no salt".
fn new_salt(dir: &Path) -> Result<u32, WalError> {
    loop {
        let salt = getrandom::u32()
            .map_err(|e| io_error("draw the log's checksum salt", dir)(e.into()))?;
        if salt != 0 {
            return Ok(salt);
        }
    }
}

fn create_segment_file(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error("create a segment", path))
}

/// Splits the recovered state into the live log's (locations only) and the entries.
fn split_state(recovered: LogState<(EntryLoc, Entry)>) -> (LogState<EntryLoc>, Vec<Entry>) {
    let first = recovered.first_index();
    let mut state = LogState::new(first);
    state.snapshot = recovered.snapshot.clone();
    state.hard_state = recovered.hard_state;
    let held = recovered.next_index() - first;
    let mut entries =
        Vec::with_capacity(usize::try_from(held).expect("entries held fit in memory"));
    for (loc, entry) in recovered.into_slots() {
        state
            .push(entry.index, loc)
            .expect("recovered entries are contiguous with non-decreasing terms");
        entries.push(entry);
    }
    (state, entries)
}

#[cfg(test)]
mod tests;
