//! Snapshots between nodes as streams, so that no node ever holds a whole snapshot in memory.
//!
//! The sender's driver hands its transport a [`SnapshotReader`]: the open snapshot file and its
//! length. The receiving transport asks the node's [`Inbox`] for a [`SnapshotSink`]
//! ([`Inbox::begin_snapshot`]) and writes the data through it, chunk by chunk, into a file of its
//! own in the node's snapshot directory. Only a complete, undamaged transfer reaches the node:
//! the sink checksums the data as it arrives, and `finish` checks it against the file's trailer
//! (see [`super::snapshots`]), syncs the file and hands it to the driver; the applier later
//! restores the state machine from it through a buffered reader. A sink dropped before `finish`
//! (a refused or broken transfer) removes its file, as does a received snapshot the core never
//! installs.

use std::fs;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

use crate::core::{Body, Index, Message};

use super::snapshots::{check_trailer, SnapshotStore, SYNC_INTERVAL_BYTES, TRAILER_BYTES};
use super::transport::{Inbound, Inbox};

/// Why a snapshot could not be received.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotTransferError {
    #[error("the message does not carry a snapshot")]
    NotASnapshot,
    #[error("{received_bytes} bytes arrived for a snapshot announced as {expected_bytes}")]
    TooLong {
        expected_bytes: u64,
        received_bytes: u64,
    },
    #[error("the transfer ended after {received_bytes} of {expected_bytes} bytes")]
    Incomplete {
        expected_bytes: u64,
        received_bytes: u64,
    },
    #[error("the node is not taking snapshots now (stopped or overloaded)")]
    NotAccepted,
    #[error("the snapshot is damaged: {0}")]
    Damaged(io::Error),
    #[error("snapshot file: {0}")]
    Io(#[from] io::Error),
}

/// A snapshot's data to send: read it incrementally, `len_bytes` bytes in all. Reads may block
/// on disk, so a transport reads it off its async runtime's threads.
pub struct SnapshotReader {
    data: io::Take<Box<dyn Read + Send>>,
    len_bytes: u64,
}

impl SnapshotReader {
    /// `data` yields at least `len_bytes` bytes; reading stops there.
    pub fn new(data: impl Read + Send + 'static, len_bytes: u64) -> Self {
        let data: Box<dyn Read + Send> = Box::new(data);
        Self {
            data: data.take(len_bytes),
            len_bytes,
        }
    }

    /// The snapshot's whole length, known before any byte is read.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("len_bytes", &self.len_bytes)
            .field("left_bytes", &self.data.limit())
            .finish()
    }
}

/// Where a transport writes a snapshot as it arrives: straight into a file in the node's
/// snapshot directory, nothing buffered in memory. [`SnapshotSink::finish`] hands the complete
/// snapshot to the node; dropping the sink instead abandons the transfer and removes the file.
#[must_use = "a sink dropped unfinished abandons the transfer"]
#[derive(Debug)]
pub struct SnapshotSink {
    inbox: Inbox,
    index: Index,
    expected_bytes: u64,
    written_bytes: u64,
    /// The CRC32C of the data received so far, and the trailer's bytes once they come.
    crc: u32,
    trailer: Vec<u8>,
    /// `None` once `finish` took it.
    open: Option<OpenTransfer>,
}

#[derive(Debug)]
struct OpenTransfer {
    message: Message,
    path: PathBuf,
    file: fs::File,
}

impl SnapshotSink {
    pub(crate) fn create(
        inbox: Inbox,
        message: Message,
        expected_bytes: u64,
    ) -> Result<Self, SnapshotTransferError> {
        let Body::Snapshot { snapshot } = &message.body else {
            return Err(SnapshotTransferError::NotASnapshot);
        };
        let index = snapshot.index;
        let (path, file) = inbox.store.create_partial(index)?;
        Ok(Self {
            inbox,
            index,
            expected_bytes,
            written_bytes: 0,
            crc: 0,
            trailer: Vec::with_capacity(TRAILER_BYTES),
            open: Some(OpenTransfer {
                message,
                path,
                file,
            }),
        })
    }

    /// The snapshot's index.
    pub fn index(&self) -> Index {
        self.index
    }

    pub fn expected_bytes(&self) -> u64 {
        self.expected_bytes
    }

    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Appends the next chunk to the file (one `write` call, no buffering here). Refuses data
    /// beyond the announced length; the caller then drops the sink.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), SnapshotTransferError> {
        let received_bytes = self.written_bytes + chunk.len() as u64;
        if received_bytes > self.expected_bytes {
            return Err(SnapshotTransferError::TooLong {
                expected_bytes: self.expected_bytes,
                received_bytes,
            });
        }
        let data_left = self.data_bytes().saturating_sub(self.written_bytes);
        let in_data = chunk
            .len()
            .min(usize::try_from(data_left).unwrap_or(usize::MAX));
        let open = self
            .open
            .as_mut()
            .expect("a sink stays open until finish consumes it");
        open.file.write_all(chunk)?;
        self.crc = crc32c::crc32c_append(self.crc, &chunk[..in_data]);
        self.trailer.extend_from_slice(&chunk[in_data..]);
        let sync_due =
            received_bytes / SYNC_INTERVAL_BYTES > self.written_bytes / SYNC_INTERVAL_BYTES;
        if sync_due && self.inbox.store.sync() {
            open.file.sync_data()?;
        }
        self.written_bytes = received_bytes;
        Ok(())
    }

    /// The length of the snapshot's data, before its trailer.
    fn data_bytes(&self) -> u64 {
        self.expected_bytes.saturating_sub(TRAILER_BYTES as u64)
    }

    /// Checks the length and the checksum, makes the file durable and hands the snapshot to the
    /// node. On any error the file is removed.
    pub fn finish(mut self) -> Result<(), SnapshotTransferError> {
        if self.written_bytes != self.expected_bytes {
            return Err(SnapshotTransferError::Incomplete {
                expected_bytes: self.expected_bytes,
                received_bytes: self.written_bytes,
            });
        }
        check_trailer(&self.trailer, self.crc, self.data_bytes())
            .map_err(SnapshotTransferError::Damaged)?;
        let OpenTransfer {
            message,
            path,
            file,
        } = self
            .open
            .take()
            .expect("a sink stays open until finish consumes it");
        // From here the received file owns the path: an early return removes it.
        let received = ReceivedSnapshot { path: Some(path) };
        if self.inbox.store.sync() {
            file.sync_all()?;
        }
        drop(file);
        if !self.inbox.try_push(Inbound::Snapshot(message, received)) {
            return Err(SnapshotTransferError::NotAccepted);
        }
        Ok(())
    }
}

impl Drop for SnapshotSink {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            drop(open.file);
            tracing::debug!(
                index = self.index,
                written_bytes = self.written_bytes,
                expected_bytes = self.expected_bytes,
                "snapshot transfer abandoned"
            );
            remove(&open.path);
        }
    }
}

/// A complete, durable snapshot file from a leader, waiting for the core to install it. Dropped
/// without being adopted (superseded, refused, the node stopped), it removes its file.
#[derive(Debug)]
pub(crate) struct ReceivedSnapshot {
    /// `None` once adopted.
    path: Option<PathBuf>,
}

impl ReceivedSnapshot {
    /// Makes this file the node's snapshot at `index`.
    pub(crate) fn adopt(mut self, store: &SnapshotStore, index: Index) -> io::Result<()> {
        let path = self
            .path
            .take()
            .expect("a received snapshot is adopted once");
        let adopted = store.adopt(index, &path);
        if adopted.is_err() {
            remove(&path);
        }
        adopted
    }
}

impl Drop for ReceivedSnapshot {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            remove(&path);
        }
    }
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a snapshot file")
        }
    }
}

#[cfg(test)]
mod tests {
    use crossbeam_channel::{bounded, Receiver};

    use super::*;
    use crate::core::SnapshotMeta;
    use crate::node::snapshots::file_bytes;
    use crate::wal::RecordedSnapshot;

    fn snapshot_message(index: Index) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 3,
            body: Body::Snapshot {
                snapshot: SnapshotMeta {
                    index,
                    ..SnapshotMeta::default()
                },
            },
        }
    }

    fn inbox(dir: &Path, queue: usize) -> (Inbox, Receiver<Inbound>) {
        let (inbound, received) = bounded(queue);
        let (proposals, _) = bounded(1);
        let (snapshot_reports, _) = bounded(1);
        let inbox = Inbox {
            id: 2,
            inbound,
            snapshot_reports,
            proposals,
            max_proposal_bytes: 1 << 20,
            metrics: Default::default(),
            store: SnapshotStore::open(dir, false, RecordedSnapshot::default()).expect("store"),
        };
        (inbox, received)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("snapshots"))
            .expect("snapshot dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chunks_go_straight_to_the_file_and_finish_hands_it_to_the_node() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, received) = inbox(dir.path(), 4);
        let data = file_bytes(&(0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let mut sink = inbox
            .begin_snapshot(snapshot_message(7), data.len() as u64)
            .expect("sink");
        let partial = dir.path().join("snapshots").join(&files(dir.path())[0]);
        for chunk in data.chunks(1000) {
            sink.write_chunk(chunk).expect("chunk");
            // Written through: the file holds every byte the sink was given.
            let on_disk = fs::metadata(&partial).expect("partial file").len();
            assert_eq!(on_disk, sink.written_bytes());
        }
        sink.finish().expect("finish");
        let Ok(Inbound::Snapshot(message, snapshot)) = received.try_recv() else {
            panic!("the node was handed the snapshot");
        };
        assert_eq!(message, snapshot_message(7));
        snapshot.adopt(&inbox.store, 7).expect("adopt");
        assert_eq!(files(dir.path()), vec![format!("{:020}.snap", 7)]);
        let mut back = Vec::new();
        inbox
            .store
            .reader(7)
            .expect("reader")
            .read_to_end(&mut back)
            .expect("read");
        assert_eq!(back, data);
    }

    #[test]
    fn a_refused_or_broken_transfer_leaves_no_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, received) = inbox(dir.path(), 4);

        let mut too_long = inbox.begin_snapshot(snapshot_message(5), 10).expect("sink");
        too_long.write_chunk(&[1; 8]).expect("within the length");
        assert!(matches!(
            too_long.write_chunk(&[1; 8]),
            Err(SnapshotTransferError::TooLong {
                expected_bytes: 10,
                received_bytes: 16
            })
        ));
        drop(too_long);
        assert!(files(dir.path()).is_empty());

        let mut short = inbox.begin_snapshot(snapshot_message(5), 10).expect("sink");
        short.write_chunk(&[1; 4]).expect("chunk");
        assert!(matches!(
            short.finish(),
            Err(SnapshotTransferError::Incomplete {
                received_bytes: 4,
                ..
            })
        ));
        assert!(files(dir.path()).is_empty());
        assert!(received.try_recv().is_err(), "the node saw nothing");

        let not_a_snapshot = Message {
            body: Body::TimeoutNow { last_index: 5 },
            ..snapshot_message(5)
        };
        assert!(matches!(
            inbox.begin_snapshot(not_a_snapshot, 10),
            Err(SnapshotTransferError::NotASnapshot)
        ));
    }

    /// A sink for snapshot 5 that was sent all of `bytes`, ready to finish.
    fn sink_with(inbox: &Inbox, bytes: &[u8]) -> SnapshotSink {
        let mut sink = inbox
            .begin_snapshot(snapshot_message(5), bytes.len() as u64)
            .expect("sink");
        sink.write_chunk(bytes).expect("chunk");
        sink
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, received) = inbox(dir.path(), 4);
        let mut damaged = file_bytes(&[7; 5000]);
        damaged[2500] ^= 1;
        let sink = sink_with(&inbox, &damaged);
        assert!(matches!(
            sink.finish(),
            Err(SnapshotTransferError::Damaged(_))
        ));
        assert!(files(dir.path()).is_empty());
        assert!(received.try_recv().is_err(), "the node saw nothing");
    }

    #[test]
    fn a_node_that_does_not_take_the_snapshot_leaves_no_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, received) = inbox(dir.path(), 4);
        drop(received); // The node stopped.
        let sink = sink_with(&inbox, &file_bytes(b"abc"));
        assert!(matches!(
            sink.finish(),
            Err(SnapshotTransferError::NotAccepted)
        ));
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_received_snapshot_never_installed_is_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, received) = inbox(dir.path(), 4);
        let sink = sink_with(&inbox, &file_bytes(b"abc"));
        sink.finish().expect("finish");
        assert_eq!(files(dir.path()).len(), 1);
        drop(received.try_recv().expect("delivered")); // Superseded by a newer one.
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn opening_the_store_removes_unfinished_files() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, _received) = inbox(dir.path(), 4);
        let sink = inbox.begin_snapshot(snapshot_message(5), 3).expect("sink");
        std::mem::forget(sink); // As if the process died mid-transfer.
        fs::write(dir.path().join("snapshots").join("9.snap.tmp"), b"half").expect("write");
        assert_eq!(files(dir.path()).len(), 2);
        SnapshotStore::open(dir.path(), false, RecordedSnapshot::default()).expect("reopen");
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_reader_stops_at_its_length() {
        let mut reader = SnapshotReader::new(io::repeat(7), 5);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("read");
        assert_eq!(out, vec![7; 5]);
        assert_eq!(reader.len_bytes(), 5);
    }
}
