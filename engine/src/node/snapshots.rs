//! Snapshot files: `snapshots/<index>.snap` in the node's directory, written to a temporary
//! file, fsynced, renamed into place and the directory fsynced, so a snapshot file either exists
//! whole or not at all. The WAL records which snapshot the log starts after
//! ([`RecordedSnapshot`]); files older than that one are removed whenever a snapshot is put in
//! place. The recorded one and any newer stay: a newer one may not be recorded yet, and a save
//! and an install can finish in either order.
//!
//! A snapshot received from a leader streams into a `.part` file of its own (see
//! [`super::snapshot_transfer`]) and is adopted under its final name only once the core installs
//! it. Leftover temporary files (a crash mid-save, mid-transfer or mid-removal) are removed at
//! open.
//!
//! A snapshot stands for the log entries it replaced and is held to the same standard: every
//! file ends with a trailer (the CRC32C and length of the data before it, and a magic number),
//! checked before a node restores from the file or accepts one received. A damaged snapshot is
//! refused with an error, never restored. One this node sends is checked as it streams: found
//! damaged, it is never offered again, and the node takes a new one (see
//! [`SnapshotStore::damaged`]).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::background;
use crate::core::Index;
use crate::wal::RecordedSnapshot;

use super::snapshot_transfer::SnapshotReader;
use super::SnapshotSource;

/// A snapshot being written (saved here, or received from a leader) is made durable every this
/// many bytes. It shares the disk with the log: one fsync of a whole snapshot (150 MB for 1 M
/// keys) made the log's fsyncs queue behind it for hundreds of milliseconds; in small steps the
/// log waits for one step at most, and the final sync has little left to flush.
pub(crate) const SYNC_INTERVAL_BYTES: u64 = 4 << 20;

/// A snapshot this node saves is synced in smaller steps than one it receives, with a pause
/// after each (see [`SyncingWriter`]); receiving is rare and has its own pace, the network's.
const SAVE_SYNC_INTERVAL_BYTES: u64 = 1 << 20;

/// The longest pause after one of a save's syncs: a sync stalled for long says the disk is
/// busy, but the save must still end.
const SAVE_SYNC_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// What a snapshot being saved is buffered in before each write to its file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Writes through to a file, syncing its data every [`SAVE_SYNC_INTERVAL_BYTES`] when `sync`, and
/// after each sync pausing as long as it took (up to [`SAVE_SYNC_PAUSE_MAX`]): a snapshot being
/// saved has at most half of the disk's time, and the log's fdatasyncs find it idle the other half.
/// Written as fast as the disk took it (in 4 MiB steps, without pauses), a 150 MB snapshot held the
/// log's syncs at 3-6 ms for its whole save; at 125,000 writes/s the open-loop p99 over 5 runs of
/// 20 s was 6.2-10.9 ms (median 8.2), with 1 MiB steps and pauses 4.9-7.5 ms (median 5.7).
struct SyncingWriter {
    file: fs::File,
    sync: bool,
    unsynced_bytes: u64,
}

impl io::Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced_bytes += n as u64;
        if self.sync && self.unsynced_bytes >= SAVE_SYNC_INTERVAL_BYTES {
            let started = std::time::Instant::now();
            self.file.sync_data()?;
            self.unsynced_bytes = 0;
            std::thread::sleep(started.elapsed().min(SAVE_SYNC_PAUSE_MAX));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Ends every snapshot file, after the data: the data's CRC32C (u32), this magic (u32) and the
/// data's length (u64), little-endian.
const TRAILER_MAGIC: [u8; 4] = *b"KSNP";
pub(crate) const TRAILER_BYTES: usize = 16;

fn trailer(crc: u32, len_bytes: u64) -> [u8; TRAILER_BYTES] {
    let mut out = [0; TRAILER_BYTES];
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out[4..8].copy_from_slice(&TRAILER_MAGIC);
    out[8..].copy_from_slice(&len_bytes.to_le_bytes());
    out
}

/// Writes through to `inner`, keeping the CRC32C and length of what passed.
struct Checksummed<W> {
    inner: W,
    crc: u32,
    len_bytes: u64,
}

impl<W: io::Write> io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A snapshot file's whole contents for `data`, as a save writes them.
#[cfg(test)]
pub(crate) fn file_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.extend_from_slice(&trailer(crc32c::crc32c(data), data.len() as u64));
    out
}

/// Reads `file` through and checks its trailer; returns the length of the data before it, with
/// the file back at its start.
fn verify(file: &mut fs::File) -> io::Result<u64> {
    let file_bytes = file.metadata()?.len();
    let Some(len_bytes) = file_bytes.checked_sub(TRAILER_BYTES as u64) else {
        return Err(damaged(format!(
            "a snapshot file of {file_bytes} bytes is shorter than its trailer"
        )));
    };
    file.rewind()?;
    // The data through the same checksumming writer a save wrote it with, into nowhere.
    let mut data = Checksummed {
        inner: io::sink(),
        crc: 0,
        len_bytes: 0,
    };
    io::copy(&mut (&mut *file).take(len_bytes), &mut data)?;
    let mut found = [0; TRAILER_BYTES];
    file.read_exact(&mut found)?;
    file.rewind()?;
    check_trailer(&found, data.crc, len_bytes)?;
    Ok(len_bytes)
}

/// Whether `e` says something about this process or this moment (out of file descriptors or
/// memory, interrupted, not allowed), not about the file: no reason to take a new snapshot.
fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::{Interrupted, OutOfMemory, PermissionDenied, WouldBlock};
    #[cfg(target_os = "linux")]
    let out_of_descriptors = [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()));
    #[cfg(not(target_os = "linux"))]
    let out_of_descriptors = false;
    out_of_descriptors
        || matches!(
            e.kind(),
            Interrupted | OutOfMemory | PermissionDenied | WouldBlock
        )
}

fn damaged(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Whether `found`, the bytes after a snapshot's data, is the trailer of `len_bytes` of data
/// whose CRC32C is `crc`; an error of kind `InvalidData` if not.
pub(crate) fn check_trailer(found: &[u8], crc: u32, len_bytes: u64) -> io::Result<()> {
    if found.get(4..8) != Some(&TRAILER_MAGIC[..]) {
        return Err(damaged("the snapshot file has no trailer".into()));
    }
    if found != trailer(crc, len_bytes) {
        return Err(damaged(format!(
            "the snapshot file's {len_bytes} bytes do not match its checksum"
        )));
    }
    Ok(())
}

/// A snapshot's data, read through a buffer up to its trailer.
pub(crate) type SnapshotData = io::Take<io::BufReader<fs::File>>;

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
    /// The snapshot recovery would start from now: never removed, nor anything newer.
    recorded: RecordedSnapshot,
    /// Readers streaming each snapshot to a peer, shared by every clone of the store: a retired
    /// snapshot someone still reads is unlinked whole (its data lives on for the open file),
    /// never cut under the reader.
    readers: Arc<Mutex<HashMap<Index, usize>>>,
    /// The index of a snapshot found damaged as it streamed to a peer, until a save at that
    /// index or a later one replaces it (0: none). Shared by every clone of the store.
    damaged: Arc<AtomicU64>,
}

/// A snapshot file streaming to a peer, counted among its readers while it lives, and checked
/// against its trailer on the way: the trailer's bytes go out only if the data matched it, so
/// a peer never receives a damaged snapshot whole, and the store learns of the damage.
struct Reading {
    file: fs::File,
    /// Where the file was opened: a save at the same index may have replaced it since.
    path: PathBuf,
    counted: ReaderCount,
    data_bytes: u64,
    /// Data bytes not read yet; the trailer comes after them.
    data_left: u64,
    /// The CRC32C of the data read so far.
    crc: u32,
    /// The trailer, once read and found to match, and how many of its bytes went out.
    trailer: Option<([u8; TRAILER_BYTES], usize)>,
    damaged: Arc<AtomicU64>,
}

impl Reading {
    /// Marks the snapshot damaged, unless a save at its index replaced the file since (and
    /// never lowering a newer mark); the error to return.
    fn found_damaged(&self, e: &io::Error) -> io::Error {
        let index = self.counted.index;
        tracing::error!(index, error = %e, "this node's own snapshot is damaged");
        if self.still_in_place() {
            self.damaged.fetch_max(index, Ordering::AcqRel);
        }
        damaged(format!("snapshot {index}: {e}"))
    }

    /// A read that failed: the file's damage (a medium error, say: left unmarked, it would
    /// be offered again and again), or the process's moment, which marks nothing. Either way
    /// the stream ends here.
    fn read_failed(&self, e: io::Error) -> io::Error {
        if is_transient(&e) {
            e
        } else {
            self.found_damaged(&e)
        }
    }

    fn still_in_place(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let (Ok(open), Ok(named)) = (self.file.metadata(), fs::metadata(&self.path)) else {
            return false;
        };
        (open.dev(), open.ino()) == (named.dev(), named.ino())
    }
}

impl io::Read for Reading {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.data_left > 0 {
            let want =
                usize::try_from(self.data_left).map_or(buf.len(), |left| left.min(buf.len()));
            let n = match self.file.read(&mut buf[..want]) {
                Ok(0) => {
                    let cut = io::Error::new(io::ErrorKind::UnexpectedEof, "file cut short");
                    return Err(self.found_damaged(&cut));
                }
                Ok(n) => n,
                Err(e) => return Err(self.read_failed(e)),
            };
            self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
            self.data_left -= n as u64;
            return Ok(n);
        }
        if self.trailer.is_none() {
            let mut found = [0; TRAILER_BYTES];
            if let Err(e) = self.file.read_exact(&mut found) {
                return Err(self.read_failed(e));
            }
            if let Err(e) = check_trailer(&found, self.crc, self.data_bytes) {
                return Err(self.found_damaged(&e));
            }
            self.trailer = Some((found, 0));
        }
        let Some((trailer, sent)) = &mut self.trailer else {
            unreachable!("the trailer was read above");
        };
        let n = (TRAILER_BYTES - *sent).min(buf.len());
        buf[..n].copy_from_slice(&trailer[*sent..*sent + n]);
        *sent += n;
        Ok(n)
    }
}

/// One reader of the snapshot at `index`, until dropped.
struct ReaderCount {
    index: Index,
    readers: Arc<Mutex<HashMap<Index, usize>>>,
}

impl Drop for ReaderCount {
    fn drop(&mut self) {
        let mut readers = self.readers.lock();
        if let Some(n) = readers.get_mut(&self.index) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.index);
            }
        }
    }
}

impl SnapshotStore {
    pub(crate) fn open(dir: &Path, sync: bool, recorded: RecordedSnapshot) -> io::Result<Self> {
        let dir = dir.join("snapshots");
        crate::wal::create_dir_durably(&dir, sync)?;
        let store = Self {
            dir,
            sync,
            recorded,
            readers: Arc::default(),
            damaged: Arc::default(),
        };
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
                Checksummed {
                    inner: SyncingWriter {
                        file: fs::File::create(&tmp)?,
                        sync: self.sync,
                        unsynced_bytes: 0,
                    },
                    crc: 0,
                    len_bytes: 0,
                },
            );
            source.write_to(&mut file)?;
            file.flush()?;
            let data = file.into_inner().map_err(|e| e.into_error())?;
            let mut file = data.inner.file;
            file.write_all(&trailer(data.crc, data.len_bytes))?;
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

    /// The data of the snapshot at `index`, checked against its trailer first (an error of
    /// kind `InvalidData` if damaged), to be read through a buffer up to the trailer.
    pub(crate) fn open_data(&self, index: Index) -> io::Result<SnapshotData> {
        let mut file = self.open_snapshot(index)?;
        let len_bytes = verify(&mut file)?;
        Ok(io::BufReader::new(file).take(len_bytes))
    }

    /// Like [`SnapshotStore::open_data`], without reading the file through first: for a file
    /// checked already (a received snapshot, checksummed as it arrived by
    /// [`super::snapshot_transfer::SnapshotSink`]; checked again, a large one was read from disk
    /// three times), or where only its data's length is wanted.
    pub(crate) fn open_data_unchecked(&self, index: Index) -> io::Result<SnapshotData> {
        let file = self.open_snapshot(index)?;
        let len_bytes = file.metadata()?.len().saturating_sub(TRAILER_BYTES as u64);
        Ok(io::BufReader::new(file).take(len_bytes))
    }

    /// The index of this node's snapshot if it was found damaged as it streamed to a peer and
    /// no save replaced it yet: the node should take a new one, and sends none meanwhile.
    pub(crate) fn damaged(&self) -> Option<Index> {
        Some(self.damaged.load(Ordering::Acquire)).filter(|&index| index > 0)
    }

    /// The snapshot at `index`, ready to stream to a peer (checked as it streams).
    pub(crate) fn reader(&self, index: Index) -> io::Result<SnapshotReader> {
        if self.damaged() == Some(index) {
            return Err(damaged(format!(
                "snapshot {index} was found damaged and is not sent again"
            )));
        }
        // Counted before the file is opened: a prune that retires the snapshot after this
        // either sees the count or, having renamed the file first, makes the open fail.
        *self.readers.lock().entry(index).or_default() += 1;
        let counted = ReaderCount {
            index,
            readers: self.readers.clone(),
        };
        // Gone is no damage (a prune retired it); a file that is there and cannot be opened is.
        let opened = self
            .open_snapshot(index)
            .and_then(|file| Ok((file.metadata()?.len(), file)));
        let (len_bytes, file) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound || is_transient(&e) => return Err(e),
            Err(e) => {
                tracing::error!(index, error = %e, "this node's own snapshot cannot be opened");
                self.damaged.fetch_max(index, Ordering::AcqRel);
                return Err(damaged(format!("snapshot {index}: {e}")));
            }
        };
        let data_bytes = len_bytes.saturating_sub(TRAILER_BYTES as u64);
        Ok(SnapshotReader::new(
            Reading {
                file,
                path: self.path(index),
                counted,
                data_bytes,
                data_left: data_bytes,
                crc: 0,
                trailer: None,
                damaged: self.damaged.clone(),
            },
            len_bytes,
        ))
    }

    /// Puts `from` in place as the snapshot at `index` and retires those older than the recorded
    /// one, under one directory sync.
    fn rename_into_place(&self, from: &Path, index: Index) -> io::Result<()> {
        fs::rename(from, self.path(index))?;
        // A damaged snapshot at this index or before is replaced or superseded now.
        let _ = self
            .damaged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d <= index).then_some(0)
            });
        // The snapshot is in place: failing to retire older ones must not undo that.
        let retired = self.retire_old().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "older snapshots were not removed; will retry later");
            Vec::new()
        });
        if self.sync {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        self.remove_retired(retired);
        Ok(())
    }

    /// Renames the snapshot files older than the recorded one out of the way (a crash while one
    /// is cut then leaves no torn snapshot under a snapshot's name); returns them, by index,
    /// under their new names. The caller syncs the directory before anything cuts them.
    fn retire_old(&self) -> io::Result<Vec<(Index, PathBuf)>> {
        // Read once: the record only grows, so whatever is older than it now stays unneeded.
        let recorded = self.recorded.index();
        let mut retired = Vec::new();
        for old in self.files_with_extension(&["snap"])? {
            let Some(index) = index_of(&old).filter(|&i| i < recorded) else {
                continue;
            };
            let dead = background::dead_path(&old);
            match fs::rename(&old, &dead) {
                Ok(()) => retired.push((index, dead)),
                // Another prune (an install's beside a save's) took it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(retired)
    }

    /// Removes retired snapshots, gradually and elsewhere (nobody waits), except one a peer is
    /// still reading: cut, the file would end under its reader; unlinked, it lives on for it.
    fn remove_retired(&self, retired: Vec<(Index, PathBuf)>) {
        let mut gradually = Vec::with_capacity(retired.len());
        for (index, dead) in retired {
            // Renamed, a snapshot gains no reader: `reader` counts itself before it opens.
            let read = self.readers.lock().contains_key(&index);
            if !read {
                gradually.push(dead);
            } else if let Err(e) = remove_file_if_there(&dead) {
                let path = dead.display();
                tracing::warn!(%path, error = %e, "a retired snapshot was not removed");
            }
        }
        if !gradually.is_empty() {
            background::remove_gradually_elsewhere(gradually);
        }
    }

    fn remove_temporary_files(&self) -> io::Result<()> {
        for leftover in self.files_with_extension(&TEMPORARY_EXTENSIONS)? {
            tracing::info!(path = %leftover.display(), "removing a leftover snapshot file");
            // A store of an earlier run in this process may be removing it too.
            remove_file_if_there(&leftover)?;
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

/// The index a snapshot file's name gives.
fn index_of(path: &Path) -> Option<Index> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn remove_file_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<u8>);

    impl SnapshotSource for Fixed {
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

    /// A store in `dir` that syncs, with the log's record of its snapshot at `recorded`.
    fn store_recording(dir: &Path, recorded: Index) -> (SnapshotStore, RecordedSnapshot) {
        let record = RecordedSnapshot::default();
        record.publish(recorded);
        (
            SnapshotStore::open(dir, true, record.clone()).unwrap(),
            record,
        )
    }

    #[test]
    fn snapshots_older_than_the_recorded_one_leave_at_once_and_their_files_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_recording(dir.path(), 9);
        // Large enough to be cut in several steps.
        for index in [5, 9, 12] {
            store.save(index, &mut Fixed(vec![7; 3 << 20])).unwrap();
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
    fn a_saved_snapshot_reads_back_whole_and_any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _record) = store_recording(dir.path(), 0);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store.save(5, &mut Fixed(data.clone())).unwrap();
        let mut read = Vec::new();
        store.open_data(5).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, data);
        let path = store.path(5);
        let whole = fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        flipped[50_000] ^= 0x10;
        let cut = whole[..whole.len() - 1].to_vec();
        let mut longer = whole.clone();
        longer.extend_from_slice(b"more");
        for (what, bytes) in [
            ("a flipped bit", flipped),
            ("a cut trailer", cut),
            ("bytes after the trailer", longer),
            ("no trailer at all", data.clone()),
        ] {
            fs::write(&path, &bytes).unwrap();
            let refused = store.open_data(5).map(|_| ());
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::InvalidData),
                "{what}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_snapshot_that_cannot_be_read_through_as_it_streams_is_marked_damaged_too() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _record) = store_recording(dir.path(), 0);
        let data = vec![3; 100_000];
        // Cut short under a reader that opened it whole (an empty read is no sign of it).
        store.save(5, &mut Fixed(data.clone())).unwrap();
        let mut reader = store.reader(5).unwrap();
        assert_eq!(io::Read::read(&mut reader, &mut []).unwrap(), 0);
        assert_eq!(store.damaged(), None);
        let file = fs::OpenOptions::new().write(true).open(store.path(5));
        file.unwrap().set_len(50_000).unwrap();
        let streamed = io::Read::read_to_end(&mut reader, &mut Vec::new());
        assert!(streamed.is_err_and(|e| e.kind() == io::ErrorKind::InvalidData));
        assert_eq!(store.damaged(), Some(5));
        // A read that fails: a directory in the file's place opens, and reads fail (EISDIR), as
        // reads from a bad sector would.
        store.save(7, &mut Fixed(data)).unwrap();
        assert_eq!(store.damaged(), None);
        fs::remove_file(store.path(7)).unwrap();
        fs::create_dir(store.path(7)).unwrap();
        let streamed = io::Read::read_to_end(&mut store.reader(7).unwrap(), &mut Vec::new());
        assert!(streamed.is_err_and(|e| e.kind() == io::ErrorKind::InvalidData));
        assert_eq!(store.damaged(), Some(7), "not offered again");
        // One that cannot even be opened (a link to itself: ELOOP), but is there.
        store.save(9, &mut Fixed(vec![3; 1000])).unwrap();
        fs::remove_file(store.path(9)).unwrap();
        std::os::unix::fs::symlink(store.path(9), store.path(9)).unwrap();
        assert!(store.reader(9).is_err());
        assert_eq!(store.damaged(), Some(9));
        // Cut inside the trailer, after the data streamed whole.
        store.save(11, &mut Fixed(vec![3; 1000])).unwrap();
        let mut reader = store.reader(11).unwrap();
        let len = fs::metadata(store.path(11)).unwrap().len();
        let file = fs::OpenOptions::new().write(true).open(store.path(11));
        file.unwrap().set_len(len - 4).unwrap();
        let streamed = io::Read::read_to_end(&mut reader, &mut Vec::new());
        assert!(streamed.is_err_and(|e| e.kind() == io::ErrorKind::InvalidData));
        assert_eq!(store.damaged(), Some(11));
    }

    #[test]
    fn a_snapshot_found_damaged_as_it_streams_is_not_sent_whole_nor_again_until_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _record) = store_recording(dir.path(), 0);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store.save(5, &mut Fixed(data.clone())).unwrap();
        let mut whole = Vec::new();
        io::Read::read_to_end(&mut store.reader(5).unwrap(), &mut whole).unwrap();
        assert_eq!(
            whole,
            file_bytes(&data),
            "an undamaged snapshot streams whole"
        );
        assert_eq!(store.damaged(), None);

        let mut flipped = whole.clone();
        flipped[50_000] ^= 0x10;
        fs::write(store.path(5), &flipped).unwrap();
        let mut sent = Vec::new();
        let streamed = io::Read::read_to_end(&mut store.reader(5).unwrap(), &mut sent);
        assert!(
            streamed.is_err_and(|e| e.kind() == io::ErrorKind::InvalidData),
            "the damage is found"
        );
        assert_eq!(
            sent.len(),
            data.len(),
            "everything but the trailer went out"
        );
        assert_eq!(store.damaged(), Some(5));
        assert!(store.reader(5).is_err(), "not offered again");

        store.save(5, &mut Fixed(data.clone())).unwrap();
        assert_eq!(
            store.damaged(),
            None,
            "a save at the same index replaces it"
        );
        let mut again = Vec::new();
        io::Read::read_to_end(&mut store.reader(5).unwrap(), &mut again).unwrap();
        assert_eq!(again, file_bytes(&data));
    }

    #[test]
    fn the_recorded_snapshot_stays_however_many_newer_ones_arrive_before_the_log_records_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, record) = store_recording(dir.path(), 5);
        store.save(5, &mut Fixed(vec![5; 16])).unwrap();
        // An install of 20 puts its file in place while a save of 12 runs; the save ends after
        // it. Until the log records 20, a crash recovers from 5.
        store.adopt(20, &write_received(&store, 20)).unwrap();
        store.save(12, &mut Fixed(vec![12; 16])).unwrap();
        let snapshots = dir.path().join("snapshots");
        let all: Vec<String> = [5, 12, 20].map(|i| format!("{i:020}.snap")).into();
        assert_eq!(names(&snapshots, "snap"), all);
        let mut read = Vec::new();
        store.open_data(5).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, vec![5; 16]);
        // Once the log records 20, the next snapshot put in place retires 5 and 12.
        record.publish(20);
        store.save(25, &mut Fixed(vec![25; 16])).unwrap();
        let kept: Vec<String> = [20, 25].map(|i| format!("{i:020}.snap")).into();
        assert_eq!(names(&snapshots, "snap"), kept);
    }

    /// A received snapshot at `index`, complete and ready for [`SnapshotStore::adopt`].
    fn write_received(store: &SnapshotStore, index: Index) -> PathBuf {
        let (path, mut file) = store.create_partial(index).unwrap();
        file.write_all(&file_bytes(&[20; 16])).unwrap();
        file.sync_all().unwrap();
        path
    }

    #[test]
    fn a_snapshot_retired_while_it_streams_to_a_peer_streams_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, record) = store_recording(dir.path(), 0);
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        store.save(5, &mut Fixed(data.clone())).unwrap();
        let mut reader = store.reader(5).unwrap();
        record.publish(9);
        for index in [9, 12] {
            store.save(index, &mut Fixed(vec![1; 16])).unwrap();
        }
        // Cut gradually, the file would have lost most of itself by now.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut read = Vec::new();
        io::Read::read_to_end(&mut reader, &mut read).unwrap();
        assert!(
            read == file_bytes(&data),
            "{} of {} bytes",
            read.len(),
            data.len()
        );
        assert!(store.reader(5).is_err(), "retired, it is no longer offered");
        drop(reader);
        assert!(store.readers.lock().is_empty());
        // Unread now, the next retired snapshot goes gradually.
        record.publish(12);
        store.save(15, &mut Fixed(vec![1; 16])).unwrap();
        assert!(!store.path(9).exists());
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
        let (store, _) = store_recording(dir.path(), 3);
        assert!(!dead.exists());
        let mut read = String::new();
        io::Read::read_to_string(&mut store.open_snapshot(3).unwrap(), &mut read).unwrap();
        assert_eq!(read, "whole");
    }
}
