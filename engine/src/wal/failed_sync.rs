//! What a failed sync leaves for the next run: the point up to which the log was durable.
//!
//! A failed `fdatasync` stops the log, and the node with it. The bytes that sync was to make
//! durable may still be in the page cache, marked clean though the disk never took them (Linux
//! reports a writeback error once, then forgets it). A process restarted on the same boot would
//! read them back in recovery, and its own sync of them succeed: it would count durable, and
//! acknowledge, what a power loss can still take. So the log writes down, as it stops, where it
//! was last known durable (`sync-failed` beside the segments); the next open cuts everything
//! after that point before recovering. What it cuts was never acknowledged: acknowledgements
//! wait for the sync that failed.
//!
//! Writing the marker is best effort: a disk that fails syncs may fail this too, and it says so
//! in the log. A sync that fails before the log's first success in a run (the one that makes
//! what recovery read durable) leaves none: there is no durable point of this run to go back to.
//! What recovery read then stays trusted by the next run, as before this marker existed.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use super::ledger::{cut_after, DurablePoint};
use super::recovery::list_segments;
use super::{fsync_dir, io_error, WalError};

pub(super) const MARKER_FILE: &str = "sync-failed";

/// Writes down that a sync failed with the log durable up to `durable` (written whole or not at
/// all: a temporary file renamed into place).
pub(super) fn mark(dir: &Path, durable: DurablePoint) {
    let path = dir.join(MARKER_FILE);
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&durable.encode())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(io_error("write the failed-sync marker", &path))
        .and_then(|()| fsync_dir(dir));
    match written {
        Ok(()) => tracing::error!(
            dir = %dir.display(),
            seq = durable.seq,
            len_bytes = durable.len_bytes,
            "a log sync failed: the next open cuts the log back to where it was durable"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "a log sync failed, and so did writing down where the log was durable: before \
             restarting on this boot, check the disk"
        ),
    }
}

/// Cuts the log in `dir` back to where a failed sync's marker says it was durable, and removes
/// the marker; nothing when there is none.
pub(super) fn recover(dir: &Path) -> Result<(), WalError> {
    let path = dir.join(MARKER_FILE);
    let line = match fs::read_to_string(&path) {
        Ok(line) => line,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("read the failed-sync marker", &path)(e)),
    };
    let durable = DurablePoint::decode(&line).ok_or_else(|| WalError::InvalidRequest {
        reason: format!("unreadable failed-sync marker {}: {line:?}", path.display()),
    })?;
    // The segment the marker names was durable when it was written: gone, the log was damaged
    // since (or the marker belongs to another log), and cutting after it could remove it all.
    if !list_segments(dir)?.contains(&durable.seq) {
        return Err(WalError::InvalidRequest {
            reason: format!(
                "the failed-sync marker {} names segment {}, which is not there",
                path.display(),
                durable.seq
            ),
        });
    }
    let cut = cut_after(dir, durable, true)?;
    tracing::warn!(
        dir = %dir.display(),
        segments_removed = cut.segments_removed,
        bytes_dropped = cut.bytes_dropped,
        "log recovery: cut back to where the log was durable before a failed sync"
    );
    fsync_dir(dir)?;
    fs::remove_file(&path).map_err(io_error("remove the failed-sync marker", &path))?;
    fsync_dir(dir)
}
