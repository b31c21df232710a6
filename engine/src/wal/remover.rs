//! Compacted segments are removed on a thread of their own.
//!
//! Removing a 64 MiB segment (the unlink frees its blocks and cached pages, the directory sync
//! commits that) took 6 to 25 ms on the project's VM. In the log writer's thread every write
//! waited for it: a leader's compaction held the whole cluster's writes that long, and these
//! pauses were the largest steps of the open-loop tail. Recovery does not need the removal to be
//! prompt: a segment the snapshot covers is only dead weight until it goes.
//!
//! Removals stay in order, oldest first, each segment renamed out of the log and the rename made
//! durable before its blocks are freed (gradually: see [`crate::background::remove_gradually`]),
//! so a crash leaves a contiguous run of whole segments, never a gap or a torn segment recovery
//! would have to call corruption.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::{fsync_dir, io_error, SyncMode, WalError};
use crate::background::{dead_path, remove_gradually, DEAD_EXTENSION};

#[derive(Debug)]
pub(super) struct Remover {
    /// Segment files to remove, oldest first (closed when the log is dropped).
    queue: Option<crossbeam_channel::Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
    /// The removal that failed; the thread removes nothing after it.
    failure: Arc<Mutex<Option<WalError>>>,
}

impl Remover {
    pub(super) fn start(dir: &Path, sync: SyncMode) -> Result<Self, WalError> {
        let (queue, paths) = crossbeam_channel::unbounded::<PathBuf>();
        let failure = Arc::new(Mutex::new(None));
        let (thread_dir, failed) = (dir.to_path_buf(), failure.clone());
        let thread = std::thread::Builder::new()
            .name("keel-wal-remover".into())
            .spawn(move || {
                crate::background::lower_this_threads_priority();
                remove_leftovers(&thread_dir);
                for path in paths {
                    let removed = retire(&path, &thread_dir, sync);
                    if let Err(e) = removed {
                        // Removing a newer segment now could leave a gap: stop here.
                        tracing::error!(error = %e, "a compacted log segment was not removed");
                        *failed.lock() = Some(e);
                        return;
                    }
                }
            })
            .map_err(io_error("start the segment remover thread", dir))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            failure,
        })
    }

    /// Queues `path` for removal after every segment queued before it; reports a removal that
    /// failed since the last call.
    pub(super) fn remove(&self, path: PathBuf) -> Result<(), WalError> {
        if let Some(e) = self.failure.lock().take() {
            return Err(e);
        }
        if let Some(queue) = &self.queue {
            // The thread only stops early after a failure, which the next call reports.
            let _ = queue.send(path);
        }
        Ok(())
    }
}

/// Takes the segment at `path` out of the log, then removes it gradually: renamed first (and
/// the rename made durable), so that a crash while it is being cut leaves no torn segment for
/// recovery, only a file it does not read, which the next start removes.
fn retire(path: &Path, dir: &Path, sync: SyncMode) -> Result<(), WalError> {
    let dead = dead_path(path);
    std::fs::rename(path, &dead).map_err(io_error("rename a compacted segment", path))?;
    if sync == SyncMode::Fdatasync {
        fsync_dir(dir)?;
    }
    remove_gradually(&dead).map_err(io_error("remove a compacted segment", &dead))
}

/// Removes the segments a crash left part way through [`retire`].
fn remove_leftovers(dir: &Path) {
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    for path in items.filter_map(|item| item.ok().map(|item| item.path())) {
        if path.extension().is_some_and(|x| x == DEAD_EXTENSION) {
            if let Err(e) = remove_gradually(&path) {
                tracing::warn!(path = %path.display(), error = %e, "a retired segment was not removed");
            }
        }
    }
}

impl Drop for Remover {
    /// Finishes the queued removals: a log reopened in the same directory must not race them.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
