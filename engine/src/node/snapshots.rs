//! Snapshot files: `snapshots/<index>.snap` in the node's directory, written to a temporary
//! file, fsynced, renamed into place and the directory fsynced, so a snapshot file either exists
//! whole or not at all. The WAL records which snapshot the log starts after; older files are
//! pruned once a newer one is safely in place.
//!
//! A snapshot received from a leader streams into a `.part` file of its own (see
//! [`super::snapshot_transfer`]) and is adopted under its final name only once the core installs
//! it. Leftover temporary files (a crash mid-save, mid-transfer or mid-removal) are removed at
//! open.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::background;
use crate::core::Index;

use super::snapshot_transfer::SnapshotReader;
use super::SnapshotSource;

/// How many snapshot files to keep: the newest may not be recorded in the WAL yet.
const SNAPSHOTS_KEPT: usize = 2;

/// A snapshot being written (saved here, or received from a leader) is made durable every this
/// many bytes. It shares the disk with the log: one fsync of a whole snapshot (150 MB for 1 M
/// keys) made the log's fsyncs queue behind it for hundreds of milliseconds; in small steps the
/// log waits for one step at most, and the final sync has little left to flush.
pub(crate) const SYNC_INTERVAL_BYTES: u64 = 1 << 20;

/// What a snapshot being saved is buffered in before each write to its file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Writes through to a file, syncing its data every [`SYNC_INTERVAL_BYTES`] when `sync`, and
/// after each sync pausing as long as it took: a snapshot being saved has at most half of the
/// disk's time, and the log's fdatasyncs find it idle the other half. Written as fast as the
/// disk took it (in 4 MiB steps, without pauses), a 150 MB snapshot held the log's syncs at
/// 3-6 ms for its whole save; at 125,000 writes/s the open-loop p99 over 5 runs of 20 s was
/// 6.2-10.9 ms (median 8.2), with 1 MiB steps and pauses 4.9-7.5 ms (median 5.7).
struct SyncingWriter {
    file: fs::File,
    sync: bool,
    unsynced_bytes: u64,
}

impl io::Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced_bytes += n as u64;
        if self.sync && self.unsynced_bytes >= SYNC_INTERVAL_BYTES {
            let started = std::time::Instant::now();
            self.file.sync_data()?;
            self.unsynced_bytes = 0;
            std::thread::sleep(started.elapsed());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Extensions of files that are not (or no longer) snapshots: a save or a transfer in progress,
/// an old snapshot being removed.
const TEMPORARY_EXTENSIONS: [&str; 3] = ["tmp", "part", background::DEAD_EXTENSION];

/// Tells apart the temporary files of transfers that overlap (a leader re-sending the same
/// index while the first attempt is still draining to disk).
static TRANSFERS_STARTED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    sync: bool,
}

impl SnapshotStore {
    pub(crate) fn open(dir: &Path, sync: bool) -> io::Result<Self> {
        let dir = dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        let store = Self { dir, sync };
        store.remove_temporary_files()?;
        Ok(store)
    }

    fn path(&self, index: Index) -> PathBuf {
        self.dir.join(format!("{index:020}.snap"))
    }

    pub(crate) fn sync(&self) -> bool {
        self.sync
    }

    pub(crate) fn save(&self, index: Index, source: &mut dyn SnapshotSource) -> io::Result<()> {
        let tmp = self.dir.join(format!("{index:020}.snap.tmp"));
        {
            // Large writes: a state machine writes its entries a few bytes at a time, and with
            // the default 8 KiB buffer 150 MB took some 19,000 system calls.
            let mut file = io::BufWriter::with_capacity(
                WRITE_BUFFER_BYTES,
                SyncingWriter {
                    file: fs::File::create(&tmp)?,
                    sync: self.sync,
                    unsynced_bytes: 0,
                },
            );
            source.write_to(&mut file)?;
            file.flush()?;
            let file = file.into_inner().map_err(|e| e.into_error())?.file;
            if self.sync {
                file.sync_all()?;
            }
        }
        self.rename_into_place(&tmp, index)
    }

    /// Creates the file a received snapshot streams into; the caller removes it if the transfer
    /// does not complete.
    pub(crate) fn create_partial(&self, index: Index) -> io::Result<(PathBuf, fs::File)> {
        let transfer = TRANSFERS_STARTED.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{index:020}.{transfer}.part"));
        let file = fs::File::create_new(&path)?;
        Ok((path, file))
    }

    /// Makes a complete, synced received file the snapshot at `index`.
    pub(crate) fn adopt(&self, index: Index, received: &Path) -> io::Result<()> {
        self.rename_into_place(received, index)
    }

    /// The snapshot at `index`, opened for reading from the start.
    pub(crate) fn open_snapshot(&self, index: Index) -> io::Result<fs::File> {
        fs::File::open(self.path(index))
    }

    /// The snapshot at `index`, ready to stream to a peer.
    pub(crate) fn reader(&self, index: Index) -> io::Result<SnapshotReader> {
        let file = self.open_snapshot(index)?;
        let len_bytes = file.metadata()?.len();
        Ok(SnapshotReader::new(file, len_bytes))
    }

    fn rename_into_place(&self, from: &Path, index: Index) -> io::Result<()> {
        fs::rename(from, self.path(index))?;
        if self.sync {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        self.prune()
    }

    /// Removes all but the newest snapshot files.
    fn prune(&self) -> io::Result<()> {
        let mut snaps = self.files_with_extension(&["snap"])?;
        snaps.sort();
        let excess = snaps.len().saturating_sub(SNAPSHOTS_KEPT);
        if excess == 0 {
            return Ok(());
        }
        // Renamed first (durably), so that a crash while one is cut leaves no torn snapshot
        // under a snapshot's name; then taken apart a step at a time, elsewhere: nobody waits.
        let mut dead = Vec::with_capacity(excess);
        for old in &snaps[..excess] {
            dead.push(background::dead_path(old));
            fs::rename(old, dead.last().expect("just pushed"))?;
        }
        if self.sync {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        background::remove_gradually_elsewhere(dead);
        Ok(())
    }

    fn remove_temporary_files(&self) -> io::Result<()> {
        for leftover in self.files_with_extension(&TEMPORARY_EXTENSIONS)? {
            tracing::info!(path = %leftover.display(), "removing an unfinished snapshot file");
            fs::remove_file(leftover)?;
        }
        Ok(())
    }

    fn files_with_extension(&self, extensions: &[&str]) -> io::Result<Vec<PathBuf>> {
        Ok(fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| extensions.iter().any(|e| x == *e))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    impl SnapshotSource for Bytes {
        fn write_to(&mut self, out: &mut dyn io::Write) -> io::Result<()> {
            out.write_all(&self.0)
        }
    }

    fn names(dir: &Path, extension: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == extension))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn older_snapshots_leave_at_once_and_their_files_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), true).unwrap();
        // Large enough to be cut in several steps.
        for index in [5, 9, 12] {
            store.save(index, &mut Bytes(vec![7; 3 << 20])).unwrap();
        }
        let snapshots = dir.path().join("snapshots");
        let kept: Vec<String> = [9, 12].map(|i| format!("{i:020}.snap")).into();
        assert_eq!(names(&snapshots, "snap"), kept);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !names(&snapshots, background::DEAD_EXTENSION).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the retired snapshot is still there"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(names(&snapshots, "snap"), kept);
    }

    #[test]
    fn a_snapshot_left_part_way_through_removal_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        fs::create_dir_all(&snapshots).unwrap();
        let kept = snapshots.join(format!("{:020}.snap", 3));
        fs::write(&kept, b"whole").unwrap();
        let dead = background::dead_path(&snapshots.join(format!("{:020}.snap", 1)));
        fs::write(&dead, b"half").unwrap();
        let store = SnapshotStore::open(dir.path(), true).unwrap();
        assert!(!dead.exists());
        let mut read = String::new();
        io::Read::read_to_string(&mut store.open_snapshot(3).unwrap(), &mut read).unwrap();
        assert_eq!(read, "whole");
    }
}
