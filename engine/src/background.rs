//! Background threads — saving snapshots, freeing compacted entries, zero-filling and removing
//! log segments — run at the lowest priority: nobody waits for their work, while a driver, log
//! writer or transport thread that waits for a core delays every write behind it. On the 2-core
//! VM at 80,000 writes/s a thread woken from an fdatasync waited up to 16 ms for a core beside
//! four busy ones, and serializing a 150 MB state at normal priority held drivers and log writers
//! for hundreds of milliseconds. Large files they remove are taken apart gradually, for the same
//! reason ([`remove_gradually`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Lowers this thread's scheduling priority to the least (nice 19). On Linux a nice value is per
/// thread; elsewhere this does nothing.
pub(crate) fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        // Not being allowed to is no reason to skip the work.
        tracing::debug!(error = %e, "a background thread keeps its priority");
    }
}

/// A file removed gradually loses this much from its end at a time.
const REMOVAL_STEP_BYTES: u64 = 1 << 20;
/// And waits this long between steps.
const REMOVAL_PAUSE: Duration = Duration::from_millis(4);

/// The name a file is renamed to before [`remove_gradually`] takes it apart: not a segment's or
/// a snapshot's, so a crash part way leaves nothing recovery would read; each store removes
/// leftovers of this extension when it opens.
pub(crate) const DEAD_EXTENSION: &str = "dead";

/// `path` with [`DEAD_EXTENSION`] added to its name.
pub(crate) fn dead_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(DEAD_EXTENSION);
    PathBuf::from(name)
}

/// Removes `path` by cutting it from the end a step at a time, pausing between steps, then
/// unlinking what is left.
///
/// Freeing a large file's blocks at once can stall the disk for everyone: on a file system
/// mounted with online discard (the project's VM mounts its root with `discard`, as many cloud
/// images do), the unlink sends the device a discard for the whole file, and the log's
/// fdatasyncs wait behind it. Unlinking a 140 MB snapshot held all three nodes' log syncs for
/// 11-14 ms, a 64 MiB log segment held them 3-13 ms for 20-55 ms; those were the largest steps
/// of the open-loop tail. A step at a time, the discards come small and spaced out, and the
/// log's syncs pass between them.
///
/// Once `hurry` is set the rest goes at once (a log closing does not wait for its removals).
pub(crate) fn remove_gradually(path: &Path, hurry: &AtomicBool) -> io::Result<()> {
    let file = fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > REMOVAL_STEP_BYTES && !hurry.load(Ordering::Relaxed) {
        len = (len - 1) / REMOVAL_STEP_BYTES * REMOVAL_STEP_BYTES;
        file.set_len(len)?;
        std::thread::sleep(REMOVAL_PAUSE);
    }
    drop(file);
    match fs::remove_file(path) {
        // Removed meanwhile by a later run's clean-up of leftovers: gone either way.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        done => done,
    }
}

/// Removes `paths` with [`remove_gradually`] on a thread of its own, at the lowest priority.
pub(crate) fn remove_gradually_elsewhere(paths: Vec<PathBuf>) {
    let spawned = std::thread::Builder::new()
        .name("keel-remove".into())
        .spawn(move || {
            lower_this_threads_priority();
            let never = AtomicBool::new(false);
            for path in paths {
                if let Err(e) = remove_gradually(&path, &never) {
                    tracing::warn!(path = %path.display(), error = %e, "a file was not removed");
                }
            }
        });
    if let Err(e) = spawned {
        // Left for the next start's clean-up.
        tracing::warn!(error = %e, "cannot start a thread to remove files");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_removed_gradually_is_gone_whatever_its_size() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, REMOVAL_STEP_BYTES, 3 * REMOVAL_STEP_BYTES + 5] {
            let path = dir.path().join(format!("f{len}"));
            fs::File::create(&path).unwrap().set_len(len).unwrap();
            remove_gradually(&path, &AtomicBool::new(false)).unwrap();
            assert!(!path.exists(), "{len} bytes");
        }
        let missing =
            remove_gradually(&dir.path().join("missing"), &AtomicBool::new(false)).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_dead_file_keeps_its_name_and_gains_the_extension() {
        let dead = dead_path(Path::new("/log/00000000000000000007.wal"));
        assert_eq!(dead, Path::new("/log/00000000000000000007.wal.dead"));
        assert_eq!(dead.extension().unwrap(), DEAD_EXTENSION);
    }
}
