//! The applier thread: applies committed entries to the state machine in order, completes the
//! waiters that wait on application, serves reads once their index is applied, installs
//! snapshots received from the leader, and takes snapshots (serialized on a thread of their own,
//! so a large state never stalls the apply path).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;

use crate::core::{Entry, Index, Payload, SnapshotMeta, Term};

use super::error::Error;
use super::events::{Event, Subscribers};
use super::metrics::NodeMetrics;
use super::pending::Completer;
use super::proposal::{Applied, AppliedReply};
use super::snapshot_transfer::ReceivedSnapshot;
use super::snapshots::SnapshotStore;
use super::state_machine::{Command, SnapshotSource, StateMachine};

#[derive(Debug)]
pub(crate) enum ApplyTask {
    /// Committed entries in order, with the replies of the proposals among them.
    Entries {
        entries: Vec<Entry>,
        replies: Vec<(Index, Term, AppliedReply)>,
    },
    /// Complete `reply` once everything up to `index` is applied, or with `Timeout` at
    /// `deadline`: a read whose index this node never reaches (it was removed, or cut off from
    /// the leader with the entries still to come) fails in time instead of waiting for good.
    WaitApplied {
        index: Index,
        reply: Completer<Index>,
        deadline: Option<Instant>,
    },
    /// Store the leader's snapshot and replace the state with it.
    Install {
        meta: SnapshotMeta,
        data: ReceivedSnapshot,
    },
    /// The snapshot at this index was found damaged: take a new one now, whatever the
    /// thresholds say, unless one is being saved.
    ReplaceSnapshot { damaged: Index },
}

#[derive(Debug)]
pub(crate) enum ApplierEvent {
    /// A snapshot at this index is safely on disk: the log can be compacted up to it.
    SnapshotSaved(Index),
    Installed(Index),
    /// The state machine failed: the node must stop, applying nothing more.
    Failed(String),
}

pub(crate) struct Applier<S> {
    pub(crate) sm: Arc<RwLock<S>>,
    pub(crate) tasks: Receiver<ApplyTask>,
    pub(crate) events: Sender<ApplierEvent>,
    pub(crate) store: SnapshotStore,
    pub(crate) snapshot_threshold_entries: u64,
    /// Scales this node's snapshot due dates (see [`snapshot_spacing_percent`]).
    pub(crate) snapshot_spacing_percent: u64,
    pub(crate) applied: Index,
    /// `applied`, shared with the driver.
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) last_snapshot: Index,
    /// Command bytes applied since the last snapshot was taken.
    pub(crate) applied_bytes_since_snapshot: u64,
    /// The size of the last snapshot written (0 before the first), set by the snapshot thread.
    pub(crate) last_snapshot_bytes: Arc<AtomicU64>,
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) subscribers: Arc<Subscribers>,
}

impl<S: StateMachine> Applier<S> {
    pub(crate) fn run(mut self) {
        let mut waiting = Waiting::default();
        let mut snapshotting = Saves::default();
        loop {
            // While a save runs, a snapshot that fell due meanwhile is taken when it ends, not
            // when the next entries come (after a burst, that could be never); one that failed
            // is tried again in time; while a read waits, it must fail at its deadline even if
            // nothing more comes.
            let task = if snapshotting.running.is_some()
                || snapshotting.retry_at.is_some()
                || waiting.with_deadline > 0
            {
                match self.tasks.recv_timeout(POLL) {
                    Ok(task) => Some(task),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.tasks.recv() {
                    Ok(task) => Some(task),
                    Err(_) => break,
                }
            };
            match task {
                None => self.maybe_snapshot(&mut snapshotting, false),
                Some(ApplyTask::Entries { entries, replies }) => {
                    if let Err(reason) = self.apply(entries, replies) {
                        tracing::error!(%reason, "state machine failed; the node stops");
                        let _ = self.events.send(ApplierEvent::Failed(reason));
                        break;
                    }
                    self.maybe_snapshot(&mut snapshotting, false);
                }
                Some(ApplyTask::WaitApplied {
                    index,
                    reply,
                    deadline,
                }) => {
                    if index <= self.applied {
                        reply.complete(Ok(self.applied));
                    } else {
                        waiting.push(index, reply, deadline);
                    }
                }
                Some(ApplyTask::Install { meta, data }) => {
                    if let Err(reason) = self.install(&meta, data) {
                        tracing::error!(%reason, "installing a snapshot failed; the node stops");
                        let _ = self.events.send(ApplierEvent::Failed(reason));
                        break;
                    }
                }
                Some(ApplyTask::ReplaceSnapshot { damaged }) => {
                    // Asked again after each refused send until a save replaces it (one that
                    // failed, or a later one still running, leaves it damaged meanwhile).
                    if self.store.damaged() == Some(damaged) {
                        self.maybe_snapshot(&mut snapshotting, true);
                    }
                }
            }
            waiting.complete_through(self.applied);
            waiting.expire();
        }
        // Also when the state machine failed: a save still writing its file must end before the
        // node says it stopped, or a node started again in the directory would race it.
        if let Some(save) = snapshotting.running {
            let _ = save.thread.join();
        }
    }

    fn apply(
        &mut self,
        entries: Vec<Entry>,
        replies: Vec<(Index, Term, AppliedReply)>,
    ) -> Result<(), String> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut sm = self.sm.write();
        // After a restart the state may already hold some of these: applying again is a no-op.
        let skip_through = sm.applied_index();
        let commands: Vec<Command<'_>> = entries
            .iter()
            .filter(|e| e.index > skip_through)
            .filter_map(|e| match &e.payload {
                Payload::Command(data) => Some(Command {
                    index: e.index,
                    term: e.term,
                    data,
                }),
                _ => None,
            })
            .collect();
        self.applied_bytes_since_snapshot += commands
            .iter()
            .map(|c| c.data.len() as u64 + ENTRY_BYTES_OVERHEAD)
            .sum::<u64>();
        let started = std::time::Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| sm.apply(&commands)));
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.metrics.apply_duration.observe(nanos);
        let responses = match outcome {
            Ok(Ok(responses)) if responses.len() == commands.len() => responses,
            Ok(Ok(responses)) => {
                return Err(format!(
                    "apply returned {} responses for {} commands",
                    responses.len(),
                    commands.len()
                ))
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "apply failed at or after index {}: {e}",
                    commands.first().map_or(last, |c| c.index)
                ))
            }
            Err(_) => return Err("the state machine panicked in apply".to_string()),
        };
        drop(sm);
        self.applied = last;
        NodeMetrics::set(&self.metrics.applied_index, last);
        // Replies and commands are both in log order: walk the responses alongside.
        debug_assert!(
            replies.windows(2).all(|w| w[0].0 < w[1].0),
            "replies in log order"
        );
        let mut responses = commands.iter().map(|c| c.index).zip(responses).peekable();
        for (index, term, reply) in replies {
            while responses.next_if(|(i, _)| *i < index).is_some() {}
            let response = responses
                .next_if(|(i, _)| *i == index)
                .map(|(_, r)| r)
                .unwrap_or_default();
            reply.complete(Ok(Applied {
                index,
                term,
                response,
            }));
        }
        // The driver reads this on its next turn: waking it for every batch applied cost a
        // context switch each, for a figure it only needs when it compacts or throttles.
        self.progress.store(last, Ordering::Release);
        self.subscribers.publish(Event::Applied { index: last });
        Ok(())
    }

    /// Adopts the received file as this node's snapshot and restores the state from it, read
    /// through a buffer (never loaded whole).
    fn install(&mut self, meta: &SnapshotMeta, data: ReceivedSnapshot) -> Result<(), String> {
        data.adopt(&self.store, meta.index)
            .map_err(|e| format!("saving snapshot {}: {e}", meta.index))?;
        let mut data = self
            .store
            .open_data_unchecked(meta.index)
            .map_err(|e| format!("opening snapshot {}: {e}", meta.index))?;
        let snapshot_bytes = data.limit();
        self.sm
            .write()
            .restore(meta.index, &mut data)
            .map_err(|e| format!("restoring snapshot {}: {e}", meta.index))?;
        self.applied = meta.index;
        // The installed snapshot is the one the next must be paid for against.
        self.last_snapshot = meta.index;
        self.applied_bytes_since_snapshot = 0;
        self.last_snapshot_bytes
            .store(snapshot_bytes, Ordering::Relaxed);
        self.progress.store(meta.index, Ordering::Release);
        NodeMetrics::set(&self.metrics.applied_index, meta.index);
        NodeMetrics::add(&self.metrics.snapshots_installed, 1);
        self.subscribers
            .publish(Event::SnapshotInstalled { index: meta.index });
        let _ = self.events.send(ApplierEvent::Installed(meta.index));
        Ok(())
    }

    /// Takes a frozen view of the state and writes it out on a thread of its own (one at a time)
    /// once `snapshot_threshold_entries` were applied since the last snapshot and the commands
    /// applied since then add up to `SNAPSHOT_PAYBACK` times that snapshot's size: the work of
    /// snapshotting then stays a fixed share of the work of writing the log, however large the
    /// state. Past `SNAPSHOT_ENTRIES_CAP` thresholds a snapshot is taken whatever the sizes,
    /// which bounds the log kept in memory. `force` takes one whatever the thresholds say, though
    /// not in the pause after a failed save.
    fn maybe_snapshot(&mut self, saves: &mut Saves, force: bool) {
        // A save that ended is reaped first: `running` then says whether one is.
        if saves
            .running
            .as_ref()
            .is_some_and(|save| save.thread.is_finished())
        {
            if let Some(done) = saves.running.take() {
                let saved = done.thread.join().unwrap_or(false);
                self.reaped(saves, saved, done.index, done.before);
            }
        }
        if saves.retry_at.is_some_and(|at| Instant::now() >= at) {
            saves.retry_at = None;
        }
        // Forced too: a damaged snapshot asks again after each refused send.
        let waiting_to_retry = saves.retry_at.is_some();
        let due = force
            || snapshot_due(
                self.applied.saturating_sub(self.last_snapshot),
                self.applied_bytes_since_snapshot,
                self.last_snapshot_bytes.load(Ordering::Relaxed),
                self.snapshot_threshold_entries,
                self.snapshot_spacing_percent,
            );
        if !due || saves.running.is_some() || waiting_to_retry {
            return;
        }
        let sm = self.sm.read();
        // After a restart a durable state can be ahead of the entries this node knows committed
        // (see `Node::start`): a snapshot of it labelled `applied` would, restored, have the
        // entries after that applied twice. It waits until the entries reach the state.
        if sm.applied_index() > self.applied {
            return;
        }
        let index = self.applied;
        let mut source = CountingSource {
            inner: sm.snapshot(),
            bytes: 0,
        };
        drop(sm);
        let before = (self.last_snapshot, self.applied_bytes_since_snapshot);
        self.last_snapshot = index;
        self.applied_bytes_since_snapshot = 0;
        let last_snapshot_bytes = self.last_snapshot_bytes.clone();
        let (store, events, metrics, subscribers) = (
            self.store.clone(),
            self.events.clone(),
            self.metrics.clone(),
            self.subscribers.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("keel-snapshot".into())
            .spawn(move || {
                crate::background::lower_this_threads_priority();
                let started = std::time::Instant::now();
                match store.save(index, &mut source) {
                    Ok(()) => {
                        tracing::info!(index, bytes = source.bytes, took = ?started.elapsed(), "snapshot saved");
                        last_snapshot_bytes.store(source.bytes, Ordering::Relaxed);
                        NodeMetrics::add(&metrics.snapshots_taken, 1);
                        subscribers.publish(Event::SnapshotTaken { index });
                        let _ = events.send(ApplierEvent::SnapshotSaved(index));
                        true
                    }
                    Err(e) => {
                        tracing::warn!(index, error = %e, "snapshot not saved; will retry");
                        false
                    }
                }
            });
        match spawned {
            Ok(thread) => {
                saves.running = Some(Running {
                    thread,
                    index,
                    before,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start the snapshot thread");
                self.reaped(saves, false, index, before);
            }
        }
    }

    /// A save at `index` ended. One that failed leaves the snapshot due as it was (its log is
    /// not compacted, so the next must not wait for a threshold counted from it), to be tried
    /// again after a pause that doubles while saves keep failing.
    fn reaped(&mut self, saves: &mut Saves, saved: bool, index: Index, before: (Index, u64)) {
        if saved {
            saves.retry_at = None;
            saves.backoff = Duration::ZERO;
            return;
        }
        // Unless an installed snapshot took its place meanwhile.
        if self.last_snapshot == index {
            self.last_snapshot = before.0;
            self.applied_bytes_since_snapshot += before.1;
        }
        saves.backoff = (saves.backoff * 2).clamp(RETRY_MIN, RETRY_MAX);
        saves.retry_at = Instant::now().checked_add(saves.backoff);
    }
}

/// The snapshot save under way, and when to try again after one failed.
#[derive(Default)]
struct Saves {
    running: Option<Running>,
    /// Not before then: a save failed (a full disk, say), and each try serializes the whole state.
    retry_at: Option<Instant>,
    backoff: Duration,
}

struct Running {
    /// Whether the save succeeded.
    thread: std::thread::JoinHandle<bool>,
    index: Index,
    /// The due-date counters (last snapshot, bytes since) before this save reset them.
    before: (Index, u64),
}

/// The pause before a failed save is tried again, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How often the applier looks whether a snapshot being saved has ended, or a read waiting has
/// reached its deadline, while no task comes.
const POLL: Duration = Duration::from_millis(50);

/// How often the reads waiting are looked over for those past their deadline: a read's deadline
/// is its whole `command_timeout`, so a little late is fine, and a look at each task would cost
/// a walk over every waiting read per batch applied.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// A read or wait, and when it fails if its index is not applied by then.
type WaitingRead = (Completer<Index>, Option<Instant>);

/// Waiters are looked over for abandoned ones once there are this many, and again each time
/// their number has doubled since.
const SWEEP_WAITERS_MIN: usize = 1024;

/// Reads and waits for an index not applied yet, by index.
#[derive(Default)]
struct Waiting {
    by_index: BTreeMap<Index, Vec<WaitingRead>>,
    len: usize,
    /// How many of them have a deadline.
    with_deadline: usize,
    last_expiry: Option<Instant>,
    /// How many were left after the last sweep, or fewer since: the next sweep comes once
    /// twice that many wait.
    swept_to: usize,
}

impl Waiting {
    fn push(&mut self, index: Index, reply: Completer<Index>, deadline: Option<Instant>) {
        self.with_deadline += usize::from(deadline.is_some());
        self.len += 1;
        self.by_index
            .entry(index)
            .or_default()
            .push((reply, deadline));
        if self.len >= SWEEP_WAITERS_MIN.max(2 * self.swept_to) {
            self.sweep();
        }
    }

    /// Drops the waiters whose caller has dropped its handle. A `wait_applied` has no deadline:
    /// on a node that never reaches its index (removed, or cut off for good), callers that gave
    /// up would otherwise each leave a waiter here until the node stops. Amortized by `push`.
    fn sweep(&mut self) {
        for replies in self.by_index.values_mut() {
            replies.retain(|(reply, _)| !reply.is_abandoned());
        }
        self.by_index.retain(|_, replies| !replies.is_empty());
        let kept = self.by_index.values().flatten();
        self.with_deadline = kept.clone().filter(|(_, d)| d.is_some()).count();
        self.len = kept.count();
        self.swept_to = self.len;
    }

    /// Completes those whose index is now applied, in index order.
    fn complete_through(&mut self, applied: Index) {
        while let Some(entry) = self.by_index.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for (reply, deadline) in entry.remove() {
                self.len -= 1;
                self.with_deadline -= usize::from(deadline.is_some());
                reply.complete(Ok(applied));
            }
        }
        self.swept_to = self.swept_to.min(self.len);
    }

    /// Fails with `Timeout` those past their deadline, every [`EXPIRY_INTERVAL`] at most.
    fn expire(&mut self) {
        if self.with_deadline == 0 {
            return;
        }
        let now = Instant::now();
        if self
            .last_expiry
            .is_some_and(|at| now.duration_since(at) < EXPIRY_INTERVAL)
        {
            return;
        }
        self.last_expiry = Some(now);
        // In place, without a vector per index each time: the order within one index does
        // not matter.
        for replies in self.by_index.values_mut() {
            let mut i = 0;
            while i < replies.len() {
                if replies[i].1.is_some_and(|d| d <= now) {
                    let (reply, _) = replies.swap_remove(i);
                    self.len -= 1;
                    self.with_deadline -= 1;
                    reply.complete(Err(Error::Timeout));
                } else {
                    i += 1;
                }
            }
        }
        self.by_index.retain(|_, replies| !replies.is_empty());
        self.swept_to = self.swept_to.min(self.len);
    }
}

/// What an entry costs in the log beside its command, roughly: header, index, term, checksum.
const ENTRY_BYTES_OVERHEAD: u64 = 32;
/// A snapshot has paid for itself once the commands applied since the last one add up to this
/// many times that snapshot's size. Serializing the state costs far more CPU per byte than
/// appending to the log (a random walk over the whole map against a sequential copy): at 1 it
/// took 18% of the machine at peak in memory, 10% with QUIC and fsync. At 2, peak committed
/// writes/s rose ~10% (mem 455k -> 505k, QUIC 214k -> 234k); the log kept between snapshots
/// doubles, within the entry cap below, and so does what a restart replays.
const SNAPSHOT_PAYBACK: u64 = 2;
/// A snapshot is due at this many times `snapshot_threshold_entries`, whatever the sizes.
const SNAPSHOT_ENTRIES_CAP: u64 = 8;

/// Whether a snapshot is due after `entries` applied commands of `bytes` since the last
/// snapshot, which was `last_bytes` long; every threshold scaled by `spacing_percent`.
fn snapshot_due(
    entries: u64,
    bytes: u64,
    last_bytes: u64,
    threshold: u64,
    spacing_percent: u64,
) -> bool {
    let threshold = threshold.saturating_mul(spacing_percent) / 100;
    let paid_for = bytes.saturating_mul(100)
        >= last_bytes
            .saturating_mul(SNAPSHOT_PAYBACK)
            .saturating_mul(spacing_percent);
    entries >= threshold && (paid_for || entries >= threshold.saturating_mul(SNAPSHOT_ENTRIES_CAP))
}

/// How far apart this node spaces its snapshots, in percent of the configured figures: 85 to
/// 100 by node id. Nodes of one cluster apply the same entries at about the same time, so with
/// one policy they all serialized their state at once (a pause on every node together, and on
/// one machine three times the CPU and disk at once); spaced differently they drift apart.
/// Never more than the configuration: the log kept in memory stays within what it allows.
pub(crate) fn snapshot_spacing_percent(id: crate::core::NodeId) -> u64 {
    100 - (id % 4) * 5
}

/// Counts the bytes a snapshot source writes, for the next snapshot's due date.
struct CountingSource {
    inner: Box<dyn SnapshotSource>,
    bytes: u64,
}

impl SnapshotSource for CountingSource {
    fn write_to(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        struct Counter<'a> {
            out: &'a mut dyn std::io::Write,
            bytes: &'a mut u64,
        }
        impl std::io::Write for Counter<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.out.write(buf)?;
                *self.bytes += n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.out.flush()
            }
        }
        self.inner.write_to(&mut Counter {
            out,
            bytes: &mut self.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_once_paid_for_or_at_the_cap() {
        // Not before the threshold, however many bytes.
        assert!(!snapshot_due(99, 1 << 30, 0, 100, 100));
        // At the threshold once the commands add up to twice the last snapshot's size.
        assert!(!snapshot_due(100, 1_999, 1_000, 100, 100));
        assert!(snapshot_due(100, 2_000, 1_000, 100, 100));
        // At eight thresholds whatever the sizes.
        assert!(!snapshot_due(799, 0, 1_000, 100, 100));
        assert!(snapshot_due(800, 0, 1_000, 100, 100));
        // Spacing scales all three.
        assert!(!snapshot_due(149, 1 << 30, 0, 100, 150));
        assert!(!snapshot_due(150, 2_999, 1_000, 100, 150));
        assert!(snapshot_due(150, 3_000, 1_000, 100, 150));
        assert!(!snapshot_due(1_199, 0, 1_000, 100, 150));
        assert!(snapshot_due(1_200, 0, 1_000, 100, 150));
    }

    #[test]
    fn waiters_whose_callers_gave_up_are_dropped_as_more_come() {
        let mut waiting = Waiting::default();
        let mut held = Vec::new();
        for i in 0..10 * SWEEP_WAITERS_MIN {
            let (handle, reply) = super::super::pending::pending();
            waiting.push(1_000, reply, None);
            // One caller in a hundred still waits; the rest gave up and dropped their handle.
            if i % 100 == 0 {
                held.push(handle);
            }
        }
        let left: usize = waiting.by_index.values().map(Vec::len).sum();
        assert!(left < 2 * SWEEP_WAITERS_MIN, "{left} waiters left");
        assert_eq!(waiting.len, left);
        // Those still held are answered.
        waiting.complete_through(1_000);
        assert!(held.iter().all(|h| h.try_get() == Some(Ok(1_000))));
        assert_eq!(waiting.len, 0);
    }

    #[test]
    fn nodes_of_a_cluster_space_their_snapshots_differently() {
        let spacings: std::collections::BTreeSet<u64> =
            (1..=4).map(snapshot_spacing_percent).collect();
        assert_eq!(spacings.len(), 4);
        assert!(spacings.iter().all(|p| (50..=100).contains(p)));
    }
}
