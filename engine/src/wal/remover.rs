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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set when the log closes: what is still queued is retired as ever, but unlinked at once.
    hurry: Arc<AtomicBool>,
}

impl Remover {
    pub(super) fn start(dir: &Path, sync: SyncMode) -> Result<Self, WalError> {
        let (queue, paths) = crossbeam_channel::unbounded::<PathBuf>();
        let failure = Arc::new(Mutex::new(None));
        let hurry = Arc::new(AtomicBool::new(false));
        let (thread_dir, failed, hurried) = (dir.to_path_buf(), failure.clone(), hurry.clone());
        let thread = std::thread::Builder::new()
            .name("keel-wal-remover".into())
            .spawn(move || {
                crate::background::lower_this_threads_priority();
                remove_leftovers(&thread_dir, &hurried);
                for path in paths {
                    let dead = match retire(&path, &thread_dir, sync) {
                        Ok(dead) => dead,
                        Err(e) => {
                            // Retiring a newer segment now could leave a gap: stop here.
                            tracing::error!(error = %e, "a compacted log segment was not removed");
                            *failed.lock() = Some(e);
                            return;
                        }
                    };
                    remove_retired(&dead, &hurried);
                }
            })
            .map_err(io_error("start the segment remover thread", dir))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            failure,
            hurry,
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

/// Takes the segment at `path` out of the log, to be removed gradually: renamed (and the rename
/// made durable) before anything cuts it, so that a crash while it is being cut leaves no torn
/// segment for recovery, only a file it does not read, which the next start removes. Returns
/// the new name.
fn retire(path: &Path, dir: &Path, sync: SyncMode) -> Result<PathBuf, WalError> {
    let dead = dead_path(path);
    std::fs::rename(path, &dead).map_err(io_error("rename a compacted segment", path))?;
    if sync == SyncMode::Fdatasync {
        fsync_dir(dir)?;
    }
    Ok(dead)
}

/// Removes a segment already out of the log. A failure is only logged: the file left behind is
/// only space, and the next start removes it.
fn remove_retired(path: &Path, hurry: &AtomicBool) {
    if let Err(e) = remove_gradually(path, hurry) {
        let path = path.display();
        tracing::warn!(%path, error = %e, "a retired segment was not removed");
    }
}

/// Removes the segments a crash left part way through their removal.
fn remove_leftovers(dir: &Path, hurry: &AtomicBool) {
    let items = match std::fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot look for retired segments");
            return;
        }
    };
    for path in items.filter_map(|item| item.ok().map(|item| item.path())) {
        if path.extension().is_some_and(|x| x == DEAD_EXTENSION) {
            remove_retired(&path, hurry);
        }
    }
}

impl Drop for Remover {
    /// Finishes the queued removals, without the gradual pace: a log reopened in the same
    /// directory must not race them, and closing should not wait on them.
    fn drop(&mut self) {
        self.hurry.store(true, Ordering::Relaxed);
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
