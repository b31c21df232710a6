//! The log-writer thread: group commit.
//!
//! The thread blocks for one request, then drains whatever else is already waiting (up to
//! [`WriterOptions::group_writes_max`] writes and [`WriterOptions::group_bytes_max`] bytes),
//! appends it all, and syncs once. No timer is involved: while one `fdatasync` runs, new writes
//! queue up, and the next group takes them all, so under load one `fdatasync` covers every write
//! that arrived during the previous one. When idle, a single write goes at once.
//!
//! Writes complete in submission order and only after the `fdatasync` covering them returned. An
//! empty write (only `then_send`) is a barrier: it needs no bytes and completes with its group.
//! A compaction is ordered with the writes around it: the group before it completes first.
//!
//! With a [`DurableSend`], the thread sends each write's `then_send` messages itself, right after
//! the `fdatasync`: a follower's acknowledgement then leaves without first waking the node's
//! driver, one thread hand-off fewer on every commit's path.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::{SyncStats, Wal, WalError};
use crate::core::{Message, SnapshotMeta, Write};

/// Sends messages that were waiting for their write to be durable, called on the writer thread
/// once they may go. It takes from the vector what it sends; what it leaves stays in the write
/// and is reported with it in [`WriterEvent::Durable`].
pub type DurableSend = Box<dyn FnMut(&mut Vec<Message>) + Send>;

/// Limits of the writer thread.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Requests that may wait in the queue; `submit` blocks beyond that (backpressure).
    pub queue_requests_max: usize,
    /// Writes in one group (one `fdatasync`).
    pub group_writes_max: usize,
    /// Approximate entry bytes in one group.
    pub group_bytes_max: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            queue_requests_max: 4096,
            group_writes_max: 4096,
            group_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// What the writer reports, in order.
#[derive(Debug)]
pub enum WriterEvent {
    /// These writes, in submission order, are durable: send their `then_send` messages (those
    /// a [`DurableSend`] left) and report `persisted` with the last entry among them.
    Durable {
        writes: Vec<Write>,
        stats: SyncStats,
    },
    /// The log failed. The writer has stopped and nothing submitted after the last `Durable` is
    /// durable: the node must stop, never continue.
    Failed(WalError),
}

/// The writer has stopped (after a failure, or because it was stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the log writer has stopped")]
pub struct WriterStopped;

enum Request {
    Write(Write),
    Compact(SnapshotMeta),
    Stop,
}

/// Handle to the log-writer thread. Dropping it without [`LogWriter::stop`] lets the thread
/// finish what was submitted and exit on its own.
#[must_use = "the writer thread runs until stopped"]
#[derive(Debug)]
pub struct LogWriter {
    requests: Sender<Request>,
    thread: JoinHandle<Wal>,
}

impl LogWriter {
    /// Starts the writer thread, which owns `wal` until [`LogWriter::stop`].
    pub fn spawn(wal: Wal) -> (LogWriter, Receiver<WriterEvent>) {
        Self::spawn_with(wal, WriterOptions::default())
    }

    pub fn spawn_with(wal: Wal, opts: WriterOptions) -> (LogWriter, Receiver<WriterEvent>) {
        Self::start(wal, opts, None)
    }

    /// Starts the writer thread, which sends durable writes' messages itself (see
    /// [`DurableSend`]).
    pub fn spawn_sending(
        wal: Wal,
        opts: WriterOptions,
        send: DurableSend,
    ) -> (LogWriter, Receiver<WriterEvent>) {
        Self::start(wal, opts, Some(send))
    }

    fn start(
        wal: Wal,
        opts: WriterOptions,
        send: Option<DurableSend>,
    ) -> (LogWriter, Receiver<WriterEvent>) {
        assert!(opts.queue_requests_max > 0 && opts.group_writes_max > 0);
        let (requests, requests_rx) = crossbeam_channel::bounded(opts.queue_requests_max);
        // Events are bounded by the requests: at most one per request.
        let (events, events_rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("keel-log-writer".into())
            .spawn(move || run(wal, opts, send, &requests_rx, &events))
            .expect("the OS can start the log writer thread");
        (LogWriter { requests, thread }, events_rx)
    }

    /// Queues `write` behind every earlier one. Blocks while the queue is full.
    pub fn submit(&self, write: Write) -> Result<(), WriterStopped> {
        self.requests
            .send(Request::Write(write))
            .map_err(|_| WriterStopped)
    }

    /// Queues a compaction (see [`Wal::compact`]) behind every earlier write.
    pub fn compact(&self, snapshot: SnapshotMeta) -> Result<(), WriterStopped> {
        self.requests
            .send(Request::Compact(snapshot))
            .map_err(|_| WriterStopped)
    }

    /// Completes everything submitted, stops the thread and returns the log.
    pub fn stop(self) -> Wal {
        // The thread may already have stopped after a failure; then there is no one to tell.
        let _ = self.requests.send(Request::Stop);
        match self.thread.join() {
            Ok(wal) => wal,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn run(
    mut wal: Wal,
    opts: WriterOptions,
    mut send: Option<DurableSend>,
    requests: &Receiver<Request>,
    events: &Sender<WriterEvent>,
) -> Wal {
    // A request drained from the queue that belongs after the current group.
    let mut carried: Option<Request> = None;
    loop {
        let request = match carried.take() {
            Some(r) => r,
            None => match requests.recv() {
                Ok(r) => r,
                Err(_) => return wal, // Every handle is gone.
            },
        };
        let result = match request {
            Request::Stop => return wal,
            Request::Compact(snapshot) => wal.compact(&snapshot),
            Request::Write(first) => commit_group(
                &mut wal,
                &opts,
                first,
                requests,
                &mut carried,
                send.as_mut(),
                events,
            ),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "the log failed; the log writer stops");
            // The receiver may be gone if the node is shutting down; nothing more to tell then.
            let _ = events.send(WriterEvent::Failed(e));
            return wal;
        }
    }
}

/// Appends `first` and every write already waiting behind it, syncs once, reports them.
fn commit_group(
    wal: &mut Wal,
    opts: &WriterOptions,
    first: Write,
    requests: &Receiver<Request>,
    carried: &mut Option<Request>,
    send: Option<&mut DurableSend>,
    events: &Sender<WriterEvent>,
) -> Result<(), WalError> {
    let mut group_bytes = write_bytes(&first);
    wal.append(&first)?;
    let mut writes = vec![first];
    while writes.len() < opts.group_writes_max && group_bytes < opts.group_bytes_max {
        match requests.try_recv() {
            Ok(Request::Write(w)) => {
                group_bytes += write_bytes(&w);
                wal.append(&w)?;
                writes.push(w);
            }
            Ok(other) => {
                *carried = Some(other);
                break;
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    let stats = wal.sync()?;
    if let Some(send) = send {
        for w in writes.iter_mut().filter(|w| !w.then_send.is_empty()) {
            send(&mut w.then_send);
        }
    }
    let _ = events.send(WriterEvent::Durable { writes, stats });
    Ok(())
}

fn write_bytes(w: &Write) -> usize {
    w.entries.iter().map(|e| e.size_bytes()).sum()
}
