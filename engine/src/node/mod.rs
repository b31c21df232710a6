//! The node runtime: a [`Node`] runs the Raft core on dedicated threads and gives callers a
//! small, complete API.
//!
//! Threads, joined by crossbeam channels (see `design.md`, "The data path"):
//! - the **driver** owns the [`Core`](crate::core::Core): ticks, messages, proposals and
//!   durability reports go in, and it routes the output. It takes proposals in batches: each
//!   one it takes off the queue comes with all that wait behind it (bounded by bytes and count;
//!   no timer: an idle node sends a lone proposal at once);
//! - the **log writer** (see [`crate::wal`]) appends and fsyncs in groups;
//! - the **applier** applies committed entries to the [`StateMachine`] and completes waiters;
//!   snapshots are serialized on a thread of their own.
//!
//! ```no_run
//! use std::time::Duration;
//! use keel_engine::kv::KvStore;
//! use keel_engine::node::{MemNetwork, Node, NodeConfig};
//!
//! let net = MemNetwork::new();
//! let node = Node::start(NodeConfig::new(1, [1]), "/tmp/keel-doc-1", net.transport(1), KvStore::default())?;
//! node.wait_for_leader(Duration::from_secs(5))?;
//! let applied = node.propose("hello").wait_applied(Duration::from_secs(5))?;
//! node.read_index().wait(Duration::from_secs(5))?; // now a read of the state is linearizable
//! node.stop();
//! # Ok::<(), keel_engine::node::Error>(())
//! ```

mod applier;
mod batcher;
mod config;
mod driver;
mod error;
mod events;
mod histogram;
mod metrics;
mod pending;
mod proposal;
mod snapshot_transfer;
mod snapshots;
mod state_machine;
mod transport;
mod waiting;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender, TrySendError};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::core::{
    Core, HardState, Index, Membership, NodeId, ReadMode, Restore, SnapshotMeta, Write,
};
use crate::wal::{LogWriter, SyncMode, Wal, WalOptions, WriterOptions};

pub use self::config::NodeConfig;
pub use self::driver::MembershipChange;
pub use self::error::Error;
pub use self::events::{Event, FollowerStatus, Status};
pub use self::histogram::LocalHistogram;
pub use self::metrics::{
    Histogram, HistogramSnapshot, NodeMetrics, PeerMetrics, COUNT_BOUNDS, DURATION_BOUNDS_NANOS,
};
pub use self::pending::Pending;
pub use self::proposal::{Applied, AppliedReply, Committed, Proposal, ProposalReply};
pub use self::snapshot_transfer::{SnapshotReader, SnapshotSink, SnapshotTransferError};
pub use self::state_machine::{Command, SnapshotSource, StateMachine, StateMachineError};
pub use self::transport::{
    Inbox, MemNetwork, MemTransport, PeerTraffic, Transport, TransportStats,
};

use self::applier::Applier;
use self::driver::{Control, Driver, DriverState};
use self::error::Halt;
use self::events::Subscribers;
use self::snapshots::SnapshotStore;
use self::transport::{send_when_durable, ProposalRequest};

/// A running Raft node. Share it between threads by reference or `Arc`; [`Node::stop`] (or
/// dropping it) stops every thread it started.
pub struct Node<S: StateMachine> {
    id: NodeId,
    cfg: NodeConfig,
    proposals: Sender<ProposalRequest>,
    control: Sender<Control>,
    sm: Arc<RwLock<S>>,
    transport: Arc<dyn Transport>,
    metrics: Arc<NodeMetrics>,
    subscribers: Arc<Subscribers>,
    /// Set by `stop` or by the driver when it stops on its own (a failed disk or state machine).
    stopped: Arc<Halt>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<S: StateMachine> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Node<S> {
    /// Opens (or creates) the node's state in `dir` and starts its threads.
    ///
    /// A node whose directory is empty bootstraps from `config.voters` and `config.learners`; if
    /// both are empty it is a standby that waits for a leader to add it. A node with state in
    /// `dir` resumes from it and ignores the initial members.
    pub fn start(
        config: NodeConfig,
        dir: impl AsRef<Path>,
        transport: Arc<dyn Transport>,
        state_machine: S,
    ) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let core_cfg = config.core_config()?;
        let wal_options = WalOptions {
            sync: if config.unsafe_no_fsync {
                SyncMode::UnsafeNoFsync
            } else {
                SyncMode::Fdatasync
            },
            fail_sync_after: config.fail_sync_after,
            sync_ledger: config.sync_ledger,
            slow_sync: config.slow_sync,
            ..WalOptions::default()
        };
        let storage = |e: &dyn std::fmt::Display| Error::Storage(e.to_string());
        let (mut wal, recovered) =
            Wal::open(&dir.join("wal"), wal_options).map_err(|e| storage(&e))?;
        if let Some(torn) = &recovered.torn_tail {
            tracing::warn!(?torn, "recovery truncated a torn, unacknowledged tail");
        }
        let store = SnapshotStore::open(dir, !config.unsafe_no_fsync, wal.recorded_snapshot())
            .map_err(|e| storage(&e))?;

        let fresh = recovered.hard_state == HardState::default()
            && recovered.snapshot == SnapshotMeta::default()
            && recovered.entries.is_empty();
        let mut sm = state_machine;
        let restore = if fresh {
            let membership = Membership::new(
                config.voters.iter().copied(),
                config.learners.iter().copied(),
            );
            let restore = if membership.voters.is_empty() && membership.learners.is_empty() {
                Restore::joining()
            } else {
                membership
                    .validate()
                    .map_err(|e| Error::Config(e.to_string()))?;
                Restore::bootstrap(membership)
            };
            // Record the initial membership, so a restart before any entry knows it.
            let write = Write {
                snapshot: Some(restore.snapshot.clone()),
                ..Write::default()
            };
            wal.append(&write).map_err(|e| storage(&e))?;
            wal.sync().map_err(|e| storage(&e))?;
            restore
        } else {
            let snapshot_index = recovered.snapshot.index;
            if snapshot_index > 0 && sm.applied_index() < snapshot_index {
                let mut data = store.open_data(snapshot_index).map_err(|e| {
                    Error::Storage(format!("snapshot {snapshot_index} cannot be used: {e}"))
                })?;
                sm.restore(snapshot_index, &mut data)
                    .map_err(|e| Error::StateMachine(e.to_string()))?;
            }
            let last = snapshot_index + recovered.entries.len() as u64;
            // A durable state machine can be ahead of what this log knows committed: it restored
            // a received snapshot whose record the log had not yet synced when the node crashed.
            // Taken as applied, that index would count as committed the log's own entries up to
            // it, which may be ones no one else holds. The core starts from what the log knows;
            // the entries up to the state's index are skipped as they commit again.
            let known_committed = recovered.hard_state.commit.max(snapshot_index);
            Restore {
                hard_state: recovered.hard_state,
                applied: sm
                    .applied_index()
                    .min(known_committed)
                    .clamp(snapshot_index, last),
                snapshot: recovered.snapshot,
                entries: recovered.entries,
            }
        };
        let applied = restore.applied;
        let snapshot_index = restore.snapshot.index;
        let seed = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ) ^ config.id.rotate_left(17);
        let core = Core::new(core_cfg, restore, seed).map_err(|e| Error::Storage(e.to_string()))?;

        let metrics = Arc::new(NodeMetrics::default());
        NodeMetrics::set(&metrics.applied_index, applied);
        let subscribers = Arc::new(Subscribers::default());
        let sm = Arc::new(RwLock::new(sm));
        let stopped = Arc::new(Halt::default());
        let (writer, writer_events) = LogWriter::spawn_sending(
            wal,
            WriterOptions::default(),
            send_when_durable(transport.clone(), stopped.clone()),
        );
        let (proposals_tx, proposals_rx) = bounded(config.proposal_queue_depth);
        let (inbound_tx, inbound_rx) = bounded(65_536);
        let (snapshot_reports_tx, snapshot_reports_rx) = crossbeam_channel::unbounded();
        let (control_tx, control_rx) = bounded(4096);
        // Unbounded: the driver must never block on the applier. What bounds it is the driver
        // taking no entries while the applier lags (`NodeConfig::max_apply_lag_entries`).
        let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
        let (applier_events_tx, applier_events_rx) = crossbeam_channel::unbounded();
        let applied_progress = Arc::new(AtomicU64::new(applied));

        let applier = Applier {
            sm: sm.clone(),
            tasks: apply_rx,
            events: applier_events_tx,
            store: store.clone(),
            snapshot_threshold_entries: config.snapshot_threshold_entries,
            snapshot_spacing_percent: applier::snapshot_spacing_percent(config.id),
            applied_bytes_since_snapshot: 0,
            // After a restart the snapshot on disk is the one the next must be paid for against.
            last_snapshot_bytes: Arc::new(AtomicU64::new(
                store
                    .open_data_unchecked(snapshot_index)
                    .map_or(0, |data| data.limit()),
            )),
            applied,
            progress: applied_progress.clone(),
            last_snapshot: snapshot_index,
            metrics: metrics.clone(),
            subscribers: subscribers.clone(),
        };
        let driver = Driver {
            core,
            cfg: config.clone(),
            transport: transport.clone(),
            writer: Some(writer),
            writer_events,
            inbound: inbound_rx,
            snapshot_reports: snapshot_reports_rx,
            proposals: proposals_rx,
            control: control_rx,
            applier_events: applier_events_rx,
            applied: applied_progress,
            apply: apply_tx,
            store: store.clone(),
            metrics: metrics.clone(),
            subscribers: subscribers.clone(),
            state: DriverState::default(),
            halted: stopped.clone(),
        };
        let (driver_subscribers, driver_halt) = (subscribers.clone(), stopped.clone());
        let driver_metrics = metrics.clone();
        let id = config.id;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("keel-{name}-{id}"))
                .spawn(f)
                .map_err(|e| Error::Storage(format!("cannot start a thread: {e}")))
        };
        let threads = vec![
            spawn("applier", Box::new(move || applier.run()))?,
            spawn(
                "driver",
                Box::new(move || {
                    // A bug in the driver must not leave callers waiting: every waiter it held
                    // is dropped with it and reports Stopped; subscribers learn why.
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| driver.run()));
                    if outcome.is_err() {
                        let reason = "the driver thread panicked";
                        tracing::error!("{reason}; the node stopped");
                        driver_halt.halt(reason);
                        // As a stopping driver does: a node that led must not go on saying so.
                        NodeMetrics::set(&driver_metrics.role, 0);
                        NodeMetrics::set(&driver_metrics.leader, 0);
                        driver_subscribers.publish(Event::Stopped {
                            reason: reason.into(),
                        });
                    }
                }),
            )?,
        ];
        transport.attach(Inbox {
            id,
            inbound: inbound_tx,
            snapshot_reports: snapshot_reports_tx,
            proposals: proposals_tx.clone(),
            max_proposal_bytes: config.max_proposal_bytes,
            metrics: metrics.clone(),
            store,
        });
        Ok(Self {
            id,
            cfg: config,
            proposals: proposals_tx,
            control: control_tx,
            sm,
            transport,
            metrics,
            subscribers,
            stopped,
            threads: Mutex::new(threads),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Proposes a command. Fails with `NotLeader` (with a leader hint) unless this node leads.
    pub fn propose(&self, command: impl Into<Bytes>) -> Proposal {
        self.submit(Some(command.into()))
    }

    /// Proposes through the leader: here if this node leads, forwarded over the transport if it
    /// knows who does.
    pub fn propose_forwarded(&self, command: impl Into<Bytes>) -> Proposal {
        self.forward_or(command.into(), |command| Ok(self.propose(command)))
            .expect("proposing here never hands the command back")
    }

    /// Like [`Node::propose_forwarded`], but hands the command back instead of waiting while it
    /// would be proposed here and the node's proposal queue is full (see [`Node::try_propose`]).
    pub fn try_propose_forwarded(&self, command: impl Into<Bytes>) -> Result<Proposal, Bytes> {
        self.forward_or(command.into(), |command| self.try_propose(command))
    }

    /// Forwards `command` to the leader if another node leads; else `here` proposes it.
    fn forward_or(
        &self,
        command: Bytes,
        here: impl FnOnce(Bytes) -> Result<Proposal, Bytes>,
    ) -> Result<Proposal, Bytes> {
        let leader = NodeMetrics::get(&self.metrics.leader);
        if leader == 0 || leader == self.id {
            return here(command);
        }
        if let Err(e) = self.check_size(&command) {
            return Ok(Proposal::failed(e));
        }
        let (proposal, reply) = ProposalReply::new();
        self.transport.forward(leader, command, reply);
        Ok(proposal)
    }

    /// An empty entry: once it commits, everything proposed before it has committed; once it is
    /// applied here, this node's state reflects all of it.
    pub fn barrier(&self) -> Proposal {
        self.submit(None)
    }

    fn check_size(&self, command: &Bytes) -> Result<(), Error> {
        check_proposal_size(command, self.cfg.max_proposal_bytes, &self.metrics)
    }

    /// Like [`Node::propose`], but hands the command back instead of waiting while the node's
    /// proposal queue is full: for callers that must not block, such as an async task.
    pub fn try_propose(&self, command: impl Into<Bytes>) -> Result<Proposal, Bytes> {
        let (proposal, request) = match self.prepare(Some(command.into())) {
            Ok(request) => request,
            Err(failed) => return Ok(failed),
        };
        match self.proposals.try_send(request) {
            Ok(()) => Ok(proposal),
            Err(TrySendError::Full(request)) => {
                Err(request.command.expect("a proposal carries its command"))
            }
            Err(TrySendError::Disconnected(request)) => {
                request.reply.fail(self.stopped.error());
                Ok(proposal)
            }
        }
    }

    fn submit(&self, command: Option<Bytes>) -> Proposal {
        let (proposal, request) = match self.prepare(command) {
            Ok(request) => request,
            Err(failed) => return failed,
        };
        if let Err(e) = self.proposals.send(request) {
            e.into_inner().reply.fail(self.stopped.error());
        }
        proposal
    }

    /// A proposal and its request for the driver, or the proposal already failed.
    fn prepare(&self, command: Option<Bytes>) -> Result<(Proposal, ProposalRequest), Proposal> {
        if self.stopped.is_halted() {
            return Err(Proposal::failed(self.stopped.error()));
        }
        if let Some(c) = &command {
            if let Err(e) = self.check_size(c) {
                return Err(Proposal::failed(e));
            }
        }
        let (proposal, reply) = ProposalReply::new();
        Ok((proposal, ProposalRequest { command, reply }))
    }

    /// Completes with an index once reading this node's state is linearizable: the state
    /// machine has applied everything committed before the call (one heartbeat round on the
    /// leader; followers ask the leader). Fails with `Timeout` after `command_timeout`: the
    /// leader never answered, or the entries through the index it answered never reached this
    /// node (it was cut off, or removed from the cluster).
    pub fn read_index(&self) -> Pending<Index> {
        self.read(ReadMode::Quorum)
    }

    /// Like [`Node::read_index`], but without a round trip while the leader lease holds.
    pub fn lease_read(&self) -> Pending<Index> {
        self.read(ReadMode::Lease)
    }

    fn read(&self, mode: ReadMode) -> Pending<Index> {
        self.request(|reply| Control::Read { mode, reply })
    }

    /// Completes once this node has applied `index` (read-your-writes through any node).
    pub fn wait_applied(&self, index: Index) -> Pending<Index> {
        self.request(|reply| Control::WaitApplied { index, reply })
    }

    /// Starts a membership change; completes once the membership asked for is in force, with
    /// the index of its entry (for a change through a joint configuration, of the entry that
    /// leaves it), so that the next change can start.
    pub fn change_membership(&self, change: MembershipChange) -> Pending<Index> {
        self.request(|reply| Control::ChangeMembership { change, reply })
    }

    pub fn add_learner(&self, id: NodeId) -> Pending<Index> {
        self.change_membership(MembershipChange::AddLearner(id))
    }

    pub fn promote(&self, id: NodeId) -> Pending<Index> {
        self.change_membership(MembershipChange::Promote(id))
    }

    pub fn remove(&self, id: NodeId) -> Pending<Index> {
        self.change_membership(MembershipChange::Remove(id))
    }

    /// Hands leadership to `to` (catches it up, then tells it to campaign).
    pub fn transfer_leadership(&self, to: NodeId) -> Result<(), Error> {
        self.request(|reply| Control::Transfer { to, reply })
            .wait(self.cfg.command_timeout)
    }

    /// Hands leadership to the most up-to-date voter; returns which.
    pub fn step_down(&self) -> Result<NodeId, Error> {
        self.request(|reply| Control::StepDown { reply })
            .wait(self.cfg.command_timeout)
    }

    /// Starts an election now.
    pub fn campaign(&self) -> Result<(), Error> {
        self.request(|reply| Control::Campaign { reply })
            .wait(self.cfg.command_timeout)
    }

    pub fn status(&self) -> Result<Status, Error> {
        self.request(|reply| Control::Status { reply })
            .wait(self.cfg.command_timeout)
    }

    /// Manual clock mode: advance the core by `ticks`.
    pub fn tick(&self, ticks: u32) {
        let _ = self.control.send(Control::Tick(ticks));
    }

    /// Events from now on. A subscriber that falls behind misses events.
    pub fn subscribe(&self) -> crossbeam_channel::Receiver<Event> {
        self.subscribers.subscribe()
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        Some(NodeMetrics::get(&self.metrics.leader)).filter(|&l| l != 0)
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Blocks until this node knows a leader.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.stopped.is_halted() {
                return Err(self.stopped.error());
            }
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(Error::Timeout);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// A shared handle on the metrics, for collectors that outlive a borrow.
    pub fn metrics_handle(&self) -> Arc<NodeMetrics> {
        self.metrics.clone()
    }

    /// The transport this node sends through.
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// The state machine, for reading (after `read_index` for a linearizable read). Blocks
    /// while the applier holds it or waits for it: for a batch of entries, briefly; for a
    /// snapshot being restored, as long as that takes.
    pub fn state_machine(&self) -> RwLockReadGuard<'_, S> {
        self.sm.read()
    }

    /// The state machine, if it can be read without waiting: for callers that must not block,
    /// such as an async task on a runtime's only worker.
    pub fn try_state_machine(&self) -> Option<RwLockReadGuard<'_, S>> {
        self.sm.try_read()
    }

    /// Stops every thread; pending calls fail with `Stopped`. Idempotent.
    pub fn stop(&self) {
        self.stopped.halt("stop() was called");
        let _ = self.control.send(Control::Stop);
        for handle in self.threads.lock().drain(..) {
            let _ = handle.join();
        }
    }

    fn request<T>(&self, make: impl FnOnce(pending::Completer<T>) -> Control) -> Pending<T> {
        let (pending, reply) = pending::pending();
        if self.stopped.is_halted() {
            reply.complete(Err(self.stopped.error()));
            return pending;
        }
        // A send error drops the request, whose completer then reports Stopped.
        let _ = self.control.send(make(reply));
        pending
    }
}

impl<S: StateMachine> Drop for Node<S> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Refuses a command over `max_bytes`, counting it. Checked where a proposal enters a node, its
/// own callers' and forwarded ones alike: an entry too large for a frame could never reach the
/// followers, and the leader would resend it forever while nothing after it commits.
pub(crate) fn check_proposal_size(
    command: &Bytes,
    max_bytes: usize,
    metrics: &NodeMetrics,
) -> Result<(), Error> {
    if command.len() > max_bytes {
        NodeMetrics::add(&metrics.proposals_failed_too_large, 1);
        return Err(Error::TooLarge {
            size_bytes: command.len(),
            max_bytes,
        });
    }
    Ok(())
}
