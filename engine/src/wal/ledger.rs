//! The sync ledger: a failpoint that lets fault tests simulate a power loss.
//!
//! Killing a process loses nothing it wrote: the page cache survives, so a log that
//! acknowledged entries before syncing them looks correct after kill -9 and restart. A power
//! loss keeps only what was synced. With [`super::WalOptions::sync_ledger`] set, the log writes
//! down, after every sync that made data durable, which segment and how many of its bytes are
//! durable, in `sync-ledger` beside the segments. A test that has killed the node then calls
//! [`cut_to_durable`], which throws away everything the ledger does not cover, and restarts it.
//!
//! What each sync mode records:
//! - `Fdatasync`: the active segment and its length after each successful sync (data, then the
//!   directory when a segment came or went). A fresh log's first segment is synced at creation,
//!   so its header is always covered.
//! - `UnsafeNoFsync`: nothing is ever durable. A fresh log records "nothing", and a log reopened
//!   in this mode keeps what an earlier, syncing run recorded. A power loss then removes every
//!   segment the mode wrote to, and the node restarts as if new: which is exactly what the mode
//!   risks.
//!
//! The file is one fixed-width line, `{seq:020} {len:020}\n` (seq 0: nothing is durable),
//! overwritten in place with a single small write: a process kill cannot tear it, and the ledger
//! itself need not survive a power loss, since the test reads it before simulating one.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::recovery::list_segments;
use super::segment::segment_path;
use super::{io_error, WalError};

const LEDGER_FILE: &str = "sync-ledger";
const LINE_BYTES: usize = 42;

/// How much of the log is durable: the first `len_bytes` of segment `seq`, and every segment
/// before it. `seq == 0`: nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurablePoint {
    pub seq: u64,
    pub len_bytes: u64,
}

impl DurablePoint {
    const NOTHING: DurablePoint = DurablePoint {
        seq: 0,
        len_bytes: 0,
    };

    pub(super) fn encode(&self) -> [u8; LINE_BYTES] {
        let line = format!("{:020} {:020}\n", self.seq, self.len_bytes);
        line.as_bytes()
            .try_into()
            .expect("two 20-digit numbers, a space and a newline")
    }

    pub(super) fn decode(line: &str) -> Option<Self> {
        let (seq, len) = line.trim_end().split_once(' ')?;
        Some(Self {
            seq: seq.parse().ok()?,
            len_bytes: len.parse().ok()?,
        })
    }
}

/// The open ledger of a log.
#[derive(Debug)]
pub(super) struct SyncLedger {
    path: PathBuf,
    file: File,
}

impl SyncLedger {
    /// Opens (or creates) the ledger of the log in `dir`; a new ledger says nothing is durable.
    pub(super) fn open(dir: &Path) -> Result<Self, WalError> {
        let path = dir.join(LEDGER_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open the sync ledger", &path))?;
        let ledger = Self { path, file };
        let len = ledger
            .file
            .metadata()
            .map_err(io_error("stat the sync ledger", &ledger.path))?
            .len();
        if len == 0 {
            ledger.record(DurablePoint::NOTHING)?;
        }
        Ok(ledger)
    }

    pub(super) fn record(&self, point: DurablePoint) -> Result<(), WalError> {
        self.file
            .write_all_at(&point.encode(), 0)
            .map_err(io_error("write the sync ledger", &self.path))
    }
}

/// What the ledger of the log in `dir` says is durable; `None` when the log keeps no ledger.
pub fn read_durable_point(dir: &Path) -> Result<Option<DurablePoint>, WalError> {
    let path = dir.join(LEDGER_FILE);
    let line = match fs::read_to_string(&path) {
        Ok(line) => line,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read the sync ledger", &path)(e)),
    };
    DurablePoint::decode(&line)
        .map(Some)
        .ok_or_else(|| WalError::InvalidRequest {
            reason: format!("unreadable sync ledger {}: {line:?}", path.display()),
        })
}

/// What [`cut_to_durable`] threw away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerLoss {
    pub durable: DurablePoint,
    pub segments_removed: usize,
    pub bytes_dropped: u64,
}

/// Simulates a power loss on the (stopped) log in `dir`: cuts the durable segment to its durable
/// length and removes every newer segment. Fails when the log keeps no ledger.
pub fn cut_to_durable(dir: &Path) -> Result<PowerLoss, WalError> {
    let durable = read_durable_point(dir)?.ok_or_else(|| WalError::InvalidRequest {
        reason: format!("{} keeps no sync ledger", dir.display()),
    })?;
    cut_after(dir, durable, false)
}

/// The unit in which [`lose_pages_after`] has a disk keep or lose what was not synced.
pub const PAGE_BYTES: u64 = 4096;

/// Simulates a power loss, on the (stopped) log in `dir`, in which the disk wrote back only some
/// of what was not synced: what `durable` covers stays, and every page written after it either
/// reached the disk or reads back as zeros, as `reached` decides page by page (a disk writes
/// unsynced pages back in any order, until an `fdatasync` returns). Harsher than
/// [`cut_to_durable`]: recovery must tell each of these from damage.
pub fn lose_pages_after(
    dir: &Path,
    durable: DurablePoint,
    mut reached: impl FnMut() -> bool,
) -> Result<PowerLoss, WalError> {
    let mut loss = PowerLoss {
        durable,
        ..PowerLoss::default()
    };
    for seq in list_segments(dir)? {
        let from = match seq.cmp(&durable.seq) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => durable.len_bytes,
            std::cmp::Ordering::Greater => 0,
        };
        let path = segment_path(dir, seq);
        let bytes = fs::read(&path).map_err(io_error("read a segment", &path))?;
        // Past the last byte written there is nothing to lose.
        let end = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |at| at as u64 + 1);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error("open a segment to damage", &path))?;
        let mut page = from;
        while page < end {
            let next = ((page / PAGE_BYTES + 1) * PAGE_BYTES).min(end);
            if !reached() {
                let zeros = vec![0; (next - page) as usize];
                file.write_all_at(&zeros, page)
                    .map_err(io_error("lose a page", &path))?;
                loss.bytes_dropped += next - page;
            }
            page = next;
        }
    }
    Ok(loss)
}

/// Cuts the log in `dir` to `durable`: the durable segment to its durable length, every newer
/// segment removed. With `sync`, a cut segment is synced (the caller syncs the directory).
pub(super) fn cut_after(
    dir: &Path,
    durable: DurablePoint,
    sync: bool,
) -> Result<PowerLoss, WalError> {
    let mut loss = PowerLoss {
        durable,
        ..PowerLoss::default()
    };
    for seq in list_segments(dir)? {
        let path = segment_path(dir, seq);
        let len = fs::metadata(&path)
            .map_err(io_error("stat a segment", &path))?
            .len();
        if seq > durable.seq {
            fs::remove_file(&path).map_err(io_error("remove an unsynced segment", &path))?;
            loss.segments_removed += 1;
            loss.bytes_dropped += len;
        } else if seq == durable.seq && len > durable.len_bytes {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open a segment to cut", &path))?;
            file.set_len(durable.len_bytes)
                .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
                .map_err(io_error("cut a segment", &path))?;
            loss.bytes_dropped += len - durable.len_bytes;
        }
    }
    Ok(loss)
}
