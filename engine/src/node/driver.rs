//! The driver thread: owns the Raft core, feeds it ticks, messages, proposal batches and
//! durability reports, and routes what it asks for to the transport, the log writer and the
//! applier.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, tick, Receiver, Sender};

use crate::core::{
    Body, Core, CoreError, Index, Membership, Message, NodeId, ReadId, ReadMode, ReleasedEntries,
    Role, SnapshotMeta, SoftState, Write,
};
use crate::wal::{LogWriter, WriterEvent};

use super::applier::{ApplierEvent, ApplyTask};
use super::batcher::{self, Batch};
use super::error::Halt;
use super::events::{Event, FollowerStatus, Status, Subscribers};
use super::histogram::{LocalHistogram, DURATION_BOUNDS_NANOS};
use super::metrics::{NodeMetrics, PeerMetrics};
use super::pending::Completer;
use super::proposal::Committed;
use super::snapshot_transfer::ReceivedSnapshot;
use super::snapshots::SnapshotStore;
use super::transport::{Inbound, ProposalRequest, SnapshotReport, Transport};
use super::waiting::{replaced_outcome, Waiting, WaitingChanges, WaitingProposal};
use super::{Error, NodeConfig};

/// Requests from the node handle to the driver.
#[derive(Debug)]
pub(crate) enum Control {
    /// Manual clock mode: advance the core by this many ticks.
    Tick(u32),
    Read {
        mode: ReadMode,
        reply: Completer<Index>,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: Completer<Index>,
    },
    Transfer {
        to: NodeId,
        reply: Completer<()>,
    },
    StepDown {
        reply: Completer<NodeId>,
    },
    Campaign {
        reply: Completer<()>,
    },
    Status {
        reply: Completer<Status>,
    },
    WaitApplied {
        index: Index,
        reply: Completer<Index>,
    },
    Stop,
}

/// A membership change, relative to the current membership or absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner(NodeId),
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
    /// Move to exactly these voters and learners (joint consensus when several voters change).
    Set {
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
}

pub(crate) struct Driver {
    pub(crate) core: Core,
    pub(crate) cfg: NodeConfig,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) writer: Option<LogWriter>,
    pub(crate) writer_events: Receiver<WriterEvent>,
    pub(crate) inbound: Receiver<Inbound>,
    pub(crate) snapshot_reports: Receiver<SnapshotReport>,
    pub(crate) proposals: Receiver<ProposalRequest>,
    pub(crate) control: Receiver<Control>,
    pub(crate) applier_events: Receiver<ApplierEvent>,
    /// How far the applier got (it does not send an event for every batch).
    pub(crate) applied: Arc<AtomicU64>,
    pub(crate) apply: Sender<ApplyTask>,
    pub(crate) store: SnapshotStore,
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) subscribers: Arc<Subscribers>,
    pub(crate) state: DriverState,
    /// Set when the driver stops, so the node handle refuses new work at once, saying why.
    pub(crate) halted: Arc<Halt>,
}

/// What the driver tracks besides the core.
pub(crate) struct DriverState {
    /// Proposals waiting to commit, with the term they were appended in.
    proposals: Waiting,
    changes: WaitingChanges,
    reads: HashMap<ReadId, (Instant, Completer<Index>)>,
    next_read_id: ReadId,
    /// Snapshot files received from the leader, until the core installs one (the others'
    /// files go when they are dropped).
    incoming_snapshots: BTreeMap<Index, ReceivedSnapshot>,
    /// While a snapshot is installed, later writes wait here to keep their order.
    held_writes: VecDeque<Write>,
    installing: Option<Index>,
    /// Writes handed to the log writer and not yet reported durable.
    writes_in_flight: usize,
    ticks_delivered: u64,
    /// When recent core clock values were reached, to time heartbeat round trips.
    tick_instants: VecDeque<(u64, Instant)>,
    slow_warned: HashMap<NodeId, Instant>,
    slow_turn_warned: Option<Instant>,
    elections_seen: u64,
    soft: Option<SoftState>,
    /// Propose-to-commit latencies, flushed into the shared histogram once per commit batch.
    commit_latency: LocalHistogram,
}

impl Default for DriverState {
    fn default() -> Self {
        Self {
            proposals: Waiting::default(),
            changes: WaitingChanges::default(),
            reads: HashMap::new(),
            next_read_id: first_read_id(),
            incoming_snapshots: BTreeMap::new(),
            held_writes: VecDeque::new(),
            installing: None,
            writes_in_flight: 0,
            ticks_delivered: 0,
            tick_instants: VecDeque::new(),
            slow_warned: HashMap::new(),
            slow_turn_warned: None,
            elections_seen: 0,
            soft: None,
            commit_latency: LocalHistogram::new(DURATION_BOUNDS_NANOS),
        }
    }
}

impl Driver {
    /// Runs until stopped; returns why it stopped.
    pub(crate) fn run(mut self) -> String {
        let started = Instant::now();
        let ticker = if self.cfg.manual_ticks {
            never()
        } else {
            tick(self.cfg.tick_interval)
        };
        let paused = never();
        let reason = loop {
            // Back-pressure: while the applier is far behind, proposals stay queued (callers
            // block on the bounded proposal queue) instead of this thread blocking on the apply
            // queue: the driver must keep heart-beating and acknowledging however slow the state
            // machine is.
            //
            // Batching: while a write is being synced, proposals also wait, and go as one batch
            // once it is durable. They could not join that sync anyway; taken one wake at a
            // time they cost an append to each follower, a follower write and an
            // acknowledgement each. At 40,000 writes/s that was 7,600 batches a second of about
            // five; one per sync made them ~30, and halved the latency on a busy machine.
            //
            // And on a leader while `max_uncommitted_entries` of its log wait to commit: with
            // followers that store entries slower than it takes them (or a quorum gone that
            // check-quorum has not noticed yet) its log would grow without bound.
            let lag = self.apply_lag();
            let uncommitted = self
                .core
                .last_index()
                .saturating_sub(self.core.commit_index());
            let flooded =
                self.core.role() == Role::Leader && uncommitted >= self.cfg.max_uncommitted_entries;
            let proposals = if lag < self.cfg.max_apply_lag_entries
                && !flooded
                && self.state.writes_in_flight == 0
            {
                &self.proposals
            } else {
                &paused
            };
            let wake = select! {
                recv(self.control) -> c => Wake::Control(c.ok()),
                recv(self.writer_events) -> e => Wake::Writer(e.ok()),
                recv(self.inbound) -> m => Wake::Inbound(m.ok()),
                recv(self.snapshot_reports) -> r => Wake::SnapshotReport(r.ok()),
                recv(proposals) -> p => Wake::Proposal(p.ok()),
                recv(self.applier_events) -> e => Wake::Applier(e.ok()),
                recv(ticker) -> _ => Wake::Tick,
            };
            // The thread may have slept in `select!` far longer than any timeout (SIGSTOP, a
            // stalled VM): the core learns what time it is before it acts on what woke the
            // thread, so that a lease read queued during the pause is judged by today's clock.
            if !self.cfg.manual_ticks {
                self.catch_up_ticks(started);
            }
            // Before acting on the wake: a snapshot saved at an index must find it applied.
            // (The throttle above sees it on the next turn; ticks keep turns coming.)
            self.core.applied(self.applied.load(Ordering::Acquire));
            let turn_started = Instant::now();
            let kind = wake.kind();
            let outcome = match wake {
                Wake::Control(Some(Control::Stop) | None) => {
                    Err("stopped by its owner".to_string())
                }
                Wake::Control(Some(c)) => {
                    self.handle_control(c);
                    Ok(())
                }
                Wake::Writer(Some(e)) => self.handle_writer(e),
                Wake::Writer(None) => Err("the log writer stopped".to_string()),
                Wake::Inbound(None) => {
                    // Every inbox is gone (the transport shut down first): nothing can arrive
                    // any more, and waiting on a disconnected channel returns at once, so the
                    // driver would spin on it.
                    tracing::warn!("the transport let go of this node's inbox: no messages arrive");
                    self.inbound = never();
                    Ok(())
                }
                Wake::Inbound(Some(m)) => {
                    self.handle_inbound(m);
                    // Take what else arrived meanwhile: one output for the lot.
                    for _ in 0..1024 {
                        let Ok(m) = self.inbound.try_recv() else {
                            break;
                        };
                        // Each message is judged by the clock when it is handled: the thread
                        // may have stalled since the turn began, and a lease read judged by the
                        // turn's clock could outlive the lease.
                        if !self.cfg.manual_ticks {
                            self.catch_up_ticks(started);
                        }
                        self.handle_inbound(m);
                    }
                    Ok(())
                }
                Wake::SnapshotReport(Some(report)) => {
                    self.handle_snapshot_report(report);
                    Ok(())
                }
                Wake::SnapshotReport(None) => {
                    // Gone with every inbox (see `Wake::Inbound(None)`).
                    self.snapshot_reports = never();
                    Ok(())
                }
                Wake::Proposal(p) => {
                    if let Some(first) = p {
                        let (bytes, entries) =
                            (self.cfg.max_batch_bytes, self.cfg.max_batch_entries);
                        let batch = batcher::gather(first, &self.proposals, bytes, entries);
                        self.handle_batch(batch);
                    }
                    Ok(())
                }
                Wake::Applier(Some(e)) => self.handle_applier(e),
                Wake::Applier(None) => Err("the applier stopped".to_string()),
                Wake::Tick => Ok(()),
            };
            if let Err(reason) = outcome.and_then(|()| self.process_output()) {
                break reason;
            }
            let took = turn_started.elapsed();
            self.metrics
                .driver_turn_duration
                .observe(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            self.warn_if_slow(kind, took);
        };
        self.shutdown(&reason);
        reason
    }

    /// A turn of the loop long enough to delay heartbeats toward an election is worth a
    /// warning (at most one a second): it names what the thread was doing.
    fn warn_if_slow(&mut self, kind: &'static str, took: Duration) {
        if took < self.cfg.election_timeout / 4 {
            return;
        }
        let now = Instant::now();
        if self
            .state
            .slow_turn_warned
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.state.slow_turn_warned = Some(now);
        tracing::warn!(
            node = self.cfg.id,
            handling = kind,
            ?took,
            "a driver turn was slow"
        );
    }

    /// Delivers every tick due by the monotonic clock, so that after a pause (GC, SIGSTOP, a
    /// slow disk) the core learns how much time really passed before it serves a lease read.
    fn catch_up_ticks(&mut self, started: Instant) {
        let due = (started.elapsed().as_nanos() / self.cfg.tick_interval.as_nanos()) as u64;
        while self.state.ticks_delivered < due {
            self.tick_once();
        }
    }

    fn tick_once(&mut self) {
        self.core.tick();
        self.state.ticks_delivered += 1;
        // The core's clock starts at 1 and counts ticks.
        let clock = self.state.ticks_delivered + 1;
        self.state.tick_instants.push_back((clock, Instant::now()));
        if self.state.tick_instants.len() > 4096 {
            self.state.tick_instants.pop_front();
        }
        let stats = self.core.stats();
        let elections = stats.elections_started + stats.pre_elections_started;
        if elections > self.state.elections_seen {
            self.state.elections_seen = elections;
            NodeMetrics::set(&self.metrics.elections_started, elections);
            self.subscribers.publish(Event::ElectionStarted {
                term: self.core.term(),
            });
        }
        if self.state.ticks_delivered % 64 == 0 {
            self.expire_reads();
        }
        if self.state.ticks_delivered % 8 == 0 {
            self.publish_peer_progress();
        }
    }

    fn handle_control(&mut self, c: Control) {
        match c {
            Control::Tick(n) => (0..n).for_each(|_| self.tick_once()),
            Control::Read { mode, reply } => {
                let id = self.state.next_read_id;
                self.state.next_read_id += 1;
                self.state.reads.insert(id, (Instant::now(), reply));
                self.core.read_index(id, mode);
            }
            Control::ChangeMembership { change, reply } => {
                let current = self.core.membership();
                let target = target_membership(current, &change);
                // However the change is put (a promotion, or a whole new set), each node it
                // makes a voter must have caught up.
                let joining: Vec<NodeId> = target
                    .voters
                    .iter()
                    .copied()
                    .filter(|&id| !current.is_voter(id))
                    .collect();
                if let Some(e) = joining.into_iter().find_map(|id| self.caught_up(id).err()) {
                    return reply.complete(Err(e));
                }
                match self.core.propose_membership(&target) {
                    Ok(index) => {
                        let term = self.core.term();
                        self.state.changes.push(index, term, reply);
                    }
                    Err(e) => reply.complete(Err(self.core_error(e))),
                }
            }
            Control::Transfer { to, reply } => {
                let result = self.core.transfer_leadership(to);
                reply.complete(result.map_err(|e| self.core_error(e)));
            }
            Control::StepDown { reply } => {
                let result = self.core.step_down();
                reply.complete(result.map_err(|e| self.core_error(e)));
            }
            Control::Campaign { reply } => {
                let result = self.core.campaign();
                reply.complete(result.map_err(|e| self.core_error(e)));
            }
            Control::Status { reply } => reply.complete(Ok(self.status())),
            Control::WaitApplied { index, reply } => {
                let _ = self.apply.send(ApplyTask::WaitApplied {
                    index,
                    reply,
                    deadline: None,
                });
            }
            Control::Stop => {}
        }
    }

    /// A learner votes only once it holds nearly the whole log: promoting one that is far
    /// behind would add a voter that cannot help commit, and could cost the cluster its quorum.
    fn caught_up(&self, id: NodeId) -> Result<(), Error> {
        const PROMOTE_LAG_ENTRIES_MAX: u64 = 1024;
        if self.core.role() != Role::Leader {
            return Ok(()); // The core refuses with the leader hint.
        }
        let Some((_, progress)) = self.core.progress().find(|(peer, _)| *peer == id) else {
            return Err(Error::Membership(format!("node {id} is not a learner")));
        };
        let lag = self.core.last_index().saturating_sub(progress.match_index);
        if lag > PROMOTE_LAG_ENTRIES_MAX {
            return Err(Error::Membership(format!(
                "node {id} is {lag} entries behind; promote it once it has caught up"
            )));
        }
        // On a short log a learner never heard from is "close": it must have answered.
        if progress.match_index == 0 {
            return Err(Error::Membership(format!(
                "node {id} has not acknowledged any entry yet; promote it once it has caught up"
            )));
        }
        Ok(())
    }

    fn core_error(&self, e: CoreError) -> Error {
        match e {
            CoreError::NotLeader { leader, term } => Error::NotLeader { leader, term },
            CoreError::TransferInProgress => Error::TransferInProgress,
            // A campaign refused inside a leader's lease: that leader is the one to talk to.
            CoreError::LeaseHeld => Error::NotLeader {
                leader: self.core.leader(),
                term: self.core.term(),
            },
            CoreError::MembershipChangePending
            | CoreError::NotCommittedInTerm
            | CoreError::Membership(_) => Error::Membership(e.to_string()),
            other => Error::Config(other.to_string()),
        }
    }

    /// Committed entries the state machine has yet to apply.
    fn apply_lag(&self) -> u64 {
        self.core
            .commit_index()
            .saturating_sub(self.core.applied_index())
    }

    fn handle_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(m) => {
                match m.body {
                    // A follower whose state machine lags by the limit takes no more entries:
                    // the leader sends them again once this follower's replication has stalled
                    // for an election timeout (heartbeats still count, so no election starts).
                    // Its log, and the applier's queue, stay bounded however slow the state
                    // machine.
                    Body::Append { ref entries, .. }
                        if !entries.is_empty()
                            && self.core.role() != Role::Leader
                            && self.apply_lag() >= self.cfg.max_apply_lag_entries =>
                    {
                        NodeMetrics::add(&self.metrics.appends_dropped_apply_lag, 1);
                        return;
                    }
                    Body::HeartbeatResponse { lease_tick, .. } => {
                        self.time_round_trip(m.from, lease_tick);
                    }
                    // A snapshot comes only with its data (`Inbound::Snapshot`): stepped without
                    // it, the core would install a snapshot this node cannot read, and stop.
                    Body::Snapshot { .. } => {
                        tracing::warn!(
                            from = m.from,
                            "a snapshot message without its data ignored"
                        );
                        return;
                    }
                    _ => {}
                }
                self.core.step(m);
            }
            Inbound::Snapshot(m, data) => {
                // One this node holds (or is installing) already is only acknowledged: its
                // data goes at once. Kept, a copy of the snapshot being installed would stay
                // on disk until the next snapshot message, however long that takes.
                if let Body::Snapshot { snapshot } = &m.body {
                    if snapshot.index > self.core.snapshot().index {
                        self.state.incoming_snapshots.insert(snapshot.index, data);
                    }
                }
                self.core.step(m);
                // The core installs a snapshot as it steps it, or never: what is kept is the
                // data of the one it holds now (its install write may not have gone out yet:
                // several snapshots can arrive in one turn) and of installs held behind the
                // one in progress. The rest, refused or only acknowledged, goes at once.
                let installed = self.core.snapshot().index;
                let held = &self.state.held_writes;
                self.state.incoming_snapshots.retain(|&i, _| {
                    i == installed
                        || held
                            .iter()
                            .any(|w| w.snapshot.as_ref().is_some_and(|s| s.index == i))
                });
            }
        }
    }

    fn handle_snapshot_report(&mut self, report: SnapshotReport) {
        self.core
            .report_snapshot(report.to, report.index, report.delivered);
        if !report.delivered {
            self.replace_damaged_snapshot();
        }
    }

    fn time_round_trip(&mut self, peer: NodeId, lease_tick: u64) {
        // One entry per tick, in clock order: the echoed clock indexes it directly.
        let instants = &self.state.tick_instants;
        let Some(&(clock, sent)) = instants
            .front()
            .and_then(|&(first, _)| lease_tick.checked_sub(first))
            .and_then(|offset| instants.get(usize::try_from(offset).ok()?))
        else {
            return;
        };
        debug_assert_eq!(clock, lease_tick, "tick instants are contiguous");
        let round_trip = sent.elapsed();
        let nanos = u64::try_from(round_trip.as_nanos()).unwrap_or(u64::MAX);
        self.metrics
            .peers
            .lock()
            .entry(peer)
            .or_insert_with(PeerMetrics::new)
            .round_trip
            .observe(nanos);
        let limit = self
            .cfg
            .election_timeout
            .mul_f64(self.cfg.rtt_warning_fraction);
        if round_trip < limit {
            return;
        }
        let now = Instant::now();
        let recently = self
            .state
            .slow_warned
            .get(&peer)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1));
        if !recently {
            self.state.slow_warned.insert(peer, now);
            tracing::warn!(
                node = self.cfg.id,
                peer,
                ?round_trip,
                "heartbeat round trip nears the election timeout"
            );
            self.subscribers
                .publish(Event::SlowHeartbeat { peer, round_trip });
        }
    }

    fn handle_batch(&mut self, batch: Batch) {
        let received = Instant::now();
        self.metrics
            .proposal_batch_entries
            .observe(batch.requests.len() as u64);
        let mut requests = batch.requests.into_iter().peekable();
        while requests.peek().is_some() {
            // Consecutive commands go to the core as one call; a barrier is its own entry.
            let mut run = Vec::new();
            while let Some(r) = requests.next_if(|r| r.command.is_some()) {
                run.push(r);
            }
            if run.is_empty() {
                let barrier = requests.next().expect("peeked");
                match self.core.propose_barrier() {
                    Ok((index, term)) => self.state.proposals.push(WaitingProposal {
                        index,
                        term,
                        reply: barrier.reply,
                        proposed_at: Instant::now(),
                    }),
                    Err(e) => barrier.reply.fail(self.core_error(e)),
                }
                continue;
            }
            let commands = run
                .iter()
                .map(|r| r.command.clone().expect("a command run"));
            match self.core.propose(commands) {
                Ok((first, term)) => {
                    for (k, r) in run.into_iter().enumerate() {
                        self.state.proposals.push(WaitingProposal {
                            index: first + k as u64,
                            term,
                            reply: r.reply,
                            proposed_at: received,
                        });
                    }
                }
                Err(e) => {
                    let error = self.core_error(e);
                    self.metrics.failed(&error, run.len() as u64);
                    for r in run {
                        r.reply.fail(error.clone());
                    }
                }
            }
        }
        NodeMetrics::set(
            &self.metrics.proposals_pending,
            self.state.proposals.len() as u64,
        );
    }

    fn handle_writer(&mut self, event: WriterEvent) -> Result<(), String> {
        match event {
            WriterEvent::Durable { writes, stats } => {
                NodeMetrics::add(&self.metrics.wal_syncs, u64::from(stats.fdatasyncs));
                NodeMetrics::add(&self.metrics.wal_synced_entries, stats.entries);
                let io_nanos = u64::try_from(stats.io_time.as_nanos()).unwrap_or(u64::MAX);
                self.metrics.wal_fsync_duration.observe(io_nanos);
                self.metrics.wal_fsync_batch_entries.observe(stats.entries);
                self.state.writes_in_flight -= writes.len();
                for w in writes {
                    let durable = w.last_entry();
                    // The writer sent the rest: what is left streams a snapshot file.
                    self.send(w.then_send);
                    if let Some((index, term)) = durable {
                        self.core.persisted(index, term);
                    }
                }
                Ok(())
            }
            // Never continue past a failed fsync: what the disk holds is unknown.
            WriterEvent::Failed(e) => Err(format!("storage failed: {e}")),
        }
    }

    fn handle_applier(&mut self, event: ApplierEvent) -> Result<(), String> {
        match event {
            ApplierEvent::SnapshotSaved(index) => match self.core.compact(index) {
                // Saved while a newer snapshot was installed: the core starts after that one
                // already, and the log learns of it from the install's own write, which may
                // still wait for the state machine. Compacting the log to it now would come
                // before that write.
                Ok(compaction) if compaction.snapshot.index != index => {
                    tracing::debug!(index, "a snapshot older than the installed one is not used");
                }
                Ok(compaction) => {
                    release_elsewhere(self.cfg.id, compaction.released);
                    if let Some(writer) = &self.writer {
                        writer
                            .compact(compaction.snapshot)
                            .map_err(|e| format!("storage failed: {e}"))?;
                    }
                }
                Err(e) => tracing::warn!(index, error = %e, "cannot compact to the snapshot"),
            },
            ApplierEvent::Installed(index) => {
                debug_assert_eq!(self.state.installing, Some(index));
                self.state.installing = None;
                // The first held write is the one that installs this snapshot: its data is
                // stored and applied, so it goes to the log now. The rest follow in order (a
                // later snapshot write starts its own install and holds what comes after it).
                let mut held = std::mem::take(&mut self.state.held_writes).into_iter();
                if let Some(installed) = held.next() {
                    debug_assert_eq!(installed.snapshot.as_ref().map(|s| s.index), Some(index));
                    self.append_to_log(installed)?;
                }
                for w in held {
                    self.submit(w)?;
                }
            }
            ApplierEvent::Failed(reason) => {
                return Err(format!("the state machine failed: {reason}"))
            }
        }
        Ok(())
    }

    fn submit(&mut self, write: Write) -> Result<(), String> {
        if let Some(meta) = &write.snapshot {
            if self.state.installing.is_none() {
                let Some(data) = self.state.incoming_snapshots.remove(&meta.index) else {
                    return Err(format!(
                        "snapshot {} was installed without its data",
                        meta.index
                    ));
                };
                self.state.installing = Some(meta.index);
                let task = ApplyTask::Install {
                    meta: meta.clone(),
                    data,
                };
                self.apply
                    .send(task)
                    .map_err(|_| "the applier stopped".to_string())?;
                // The write (and all after it) waits until the snapshot is stored and applied.
                self.state.held_writes.push_back(write);
                return Ok(());
            }
        }
        if self.state.installing.is_some() {
            self.state.held_writes.push_back(write);
            return Ok(());
        }
        self.append_to_log(write)
    }

    fn append_to_log(&mut self, write: Write) -> Result<(), String> {
        let writer = self
            .writer
            .as_ref()
            .expect("the writer runs until shutdown");
        self.state.writes_in_flight += 1;
        writer
            .submit(write)
            .map_err(|e| format!("storage failed: {e}"))
    }

    /// Carries out the core's output, in the order its contract requires. An error means the
    /// node cannot go on (its log or applier is gone) and must stop.
    fn process_output(&mut self) -> Result<(), String> {
        let out = self.core.take_output();
        if out.is_empty() {
            return Ok(());
        }
        self.send(out.messages);
        if let Some(write) = out.write {
            if let Some(snapshot) = &write.snapshot {
                self.settle_replaced(snapshot);
            }
            self.submit(write)?;
        }
        if !out.committed.is_empty() {
            self.commit(out.committed)?;
        }
        for read in out.reads {
            let Some((asked, reply)) = self.state.reads.remove(&read.id) else {
                continue; // It timed out.
            };
            match read.index {
                Ok(index) => {
                    // Its deadline goes with it: the entries through `index` may never come.
                    // (None when `command_timeout` is too long for the clock.)
                    let deadline = asked.checked_add(self.cfg.command_timeout);
                    let _ = self.apply.send(ApplyTask::WaitApplied {
                        index,
                        reply,
                        deadline,
                    });
                }
                Err(leader) => reply.complete(Err(Error::NotLeader {
                    leader,
                    term: self.core.term(),
                })),
            }
        }
        if let Some(soft) = out.soft_state {
            self.soft_state_changed(soft);
        }
        let waiting = !self.state.proposals.is_empty() || !self.state.changes.is_empty();
        if waiting
            && self.core.role() != Role::Leader
            && !self.core.membership().contains(self.cfg.id)
        {
            self.settle_removed();
        }
        NodeMetrics::set(&self.metrics.commit_index, self.core.commit_index());
        NodeMetrics::set(&self.metrics.last_log_index, self.core.last_index());
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let (snapshots, others): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| matches!(m.body, Body::Snapshot { .. }));
        if !others.is_empty() {
            self.transport.send(others);
        }
        for m in snapshots {
            let Body::Snapshot { snapshot } = &m.body else {
                continue;
            };
            // Opening the file is all the driver does: the transport streams it.
            match self.store.reader(snapshot.index) {
                Ok(data) => {
                    NodeMetrics::add(&self.metrics.snapshots_sent, 1);
                    self.transport.send_snapshot(m, data);
                }
                Err(e) => {
                    tracing::warn!(index = snapshot.index, error = %e, "snapshot file unreadable");
                    self.core.report_snapshot(m.to, snapshot.index, false);
                    self.replace_damaged_snapshot();
                }
            }
        }
    }

    /// A snapshot found damaged as it streamed to a peer is never sent again: the followers
    /// that need one wait for a new one, which the applier takes now (the state it holds in
    /// memory is whole; only the file is not). Without this, the leader resent the damaged
    /// file to each of them for good, and each refused it.
    fn replace_damaged_snapshot(&mut self) {
        if let Some(damaged) = self.store.damaged() {
            let _ = self.apply.send(ApplyTask::ReplaceSnapshot { damaged });
        }
    }

    /// This node led, and no longer leads nor belongs to the latest membership in its log: it
    /// stepped down once its own removal committed, or was deposed with the removal appended.
    /// The proposals and changes waiting after the commit index may still be committed by the
    /// next leader, but this node no longer receives the log and would never learn: they are
    /// answered now, outcome unknown (left waiting, a caller awaiting one without a timeout
    /// waited for good). Those at or below it committed; they are answered once this node's own
    /// write of them is done.
    fn settle_removed(&mut self) {
        let error = Error::OutcomeUnknown;
        let commit = self.core.commit_index();
        let after = self.state.proposals.take_after(commit);
        self.fail_proposals(after, &error);
        self.state.changes.fail_after(commit, &error);
        if self.core.membership_index() > commit {
            // The entry leaving a joint configuration, not known committed.
            self.state.changes.fail_joint(&error);
        }
        NodeMetrics::set(
            &self.metrics.proposals_pending,
            self.state.proposals.len() as u64,
        );
    }

    /// Answers `waiting` with `error`, counted.
    fn fail_proposals(&self, waiting: Vec<WaitingProposal>, error: &Error) {
        self.metrics.failed(error, waiting.len() as u64);
        for w in waiting {
            w.reply.fail(error.clone());
        }
    }

    /// A leader's snapshot replaced this node's log through `snapshot.index`: the proposals
    /// waiting there will never see their entries commit here, so they are answered now.
    fn settle_replaced(&mut self, snapshot: &SnapshotMeta) {
        while let Some(waiting) = self.state.proposals.pop_through(snapshot.index) {
            let error = replaced_outcome(waiting.term, snapshot);
            self.metrics.failed(&error, 1);
            waiting.reply.fail(error);
        }
        self.state.changes.replaced(snapshot);
        NodeMetrics::set(
            &self.metrics.proposals_pending,
            self.state.proposals.len() as u64,
        );
    }

    /// Entries are committed (and durable here): complete commit waiters, hand them to the
    /// applier with the waiters of their application.
    fn commit(&mut self, entries: Vec<crate::core::Entry>) -> Result<(), String> {
        let last = entries.last().map_or(0, |e| e.index);
        let mut replies = Vec::new();
        let mut committed = 0;
        let now = Instant::now();
        // Proposals of one batch share their arrival time: tally each run of them once.
        let mut run: Option<(Instant, u64)> = None;
        for e in &entries {
            while let Some(waiting) = self.state.proposals.pop_through(e.index) {
                let WaitingProposal {
                    index,
                    term,
                    reply,
                    proposed_at,
                } = waiting;
                if index == e.index && term == e.term {
                    committed += 1;
                    run = match run {
                        Some((at, n)) if at == proposed_at => Some((at, n + 1)),
                        other => {
                            self.tally_commit_latency(now, other);
                            Some((proposed_at, 1))
                        }
                    };
                    replies.push((index, term, reply.commit(Committed { index, term })));
                } else {
                    self.metrics.failed(&Error::Dropped, 1);
                    reply.fail(Error::Dropped);
                }
            }
            self.state.changes.committed(e);
        }
        self.tally_commit_latency(now, run);
        NodeMetrics::add(&self.metrics.proposals_committed, committed);
        self.state
            .commit_latency
            .flush(&self.metrics.commit_duration);
        NodeMetrics::set(
            &self.metrics.proposals_pending,
            self.state.proposals.len() as u64,
        );
        self.subscribers
            .publish(Event::CommitAdvanced { index: last });
        self.apply
            .send(ApplyTask::Entries { entries, replies })
            .map_err(|_| "the applier stopped".to_string())
    }

    /// Records `count` proposals that arrived at `at` and committed `now`.
    fn tally_commit_latency(&mut self, now: Instant, run: Option<(Instant, u64)>) {
        if let Some((at, count)) = run {
            let nanos =
                u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
            self.state.commit_latency.record_n(nanos, count);
        }
    }

    fn soft_state_changed(&mut self, soft: SoftState) {
        let previous = self.state.soft.replace(soft);
        NodeMetrics::set(&self.metrics.term, soft.term);
        NodeMetrics::set(&self.metrics.leader, soft.leader.unwrap_or(0));
        let role_code = match soft.role {
            Role::Follower => 0,
            Role::PreCandidate => 1,
            Role::Candidate => 2,
            Role::Leader => 3,
        };
        NodeMetrics::set(&self.metrics.role, role_code);
        if previous.map(|p| p.role) != Some(soft.role) {
            tracing::info!(role = ?soft.role, term = soft.term, "role changed");
            self.subscribers.publish(Event::RoleChanged {
                role: soft.role,
                term: soft.term,
            });
        }
        if previous.map(|p| p.leader) != Some(soft.leader) {
            if soft.leader.is_some() {
                NodeMetrics::add(&self.metrics.leader_changes_seen, 1);
            }
            self.subscribers.publish(Event::LeaderChanged {
                leader: soft.leader,
                term: soft.term,
            });
        }
    }

    /// Copies the leader's view of each follower into the metrics (a few times a heartbeat
    /// interval, never per message).
    fn publish_peer_progress(&self) {
        let mut peers = self.metrics.peers.lock();
        // A removed member's series end with it, not frozen at their last values.
        let membership = self.core.membership();
        peers.retain(|&id, _| membership.contains(id));
        if self.core.role() != Role::Leader {
            for p in peers.values_mut() {
                p.match_index = 0;
                p.commit_lag_entries = 0;
            }
            return;
        }
        let commit = self.core.commit_index();
        for (id, progress) in self.core.progress() {
            if !membership.contains(id) {
                continue; // removed, and sent the removal until it commits
            }
            let p = peers.entry(id).or_insert_with(PeerMetrics::new);
            p.match_index = progress.match_index;
            p.commit_lag_entries = commit.saturating_sub(progress.match_index);
        }
    }

    /// Reads that never got an answer (a forwarded request lost with its leader) time out. One
    /// answered goes to the applier with what is left of its time (see `ApplyTask::WaitApplied`).
    fn expire_reads(&mut self) {
        let timeout = self.cfg.command_timeout;
        let expired: Vec<ReadId> = self
            .state
            .reads
            .iter()
            .filter(|(_, (at, _))| at.elapsed() > timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some((_, reply)) = self.state.reads.remove(&id) {
                reply.complete(Err(Error::Timeout));
            }
        }
    }

    fn status(&self) -> Status {
        let core = &self.core;
        let last = core.last_index();
        Status {
            id: core.id(),
            role: core.role(),
            term: core.term(),
            leader: core.leader(),
            commit_index: core.commit_index(),
            applied_index: NodeMetrics::get(&self.metrics.applied_index),
            first_index: core.first_index(),
            last_index: last,
            snapshot_index: core.snapshot().index,
            membership: core.membership().clone(),
            // Members an uncommitted change removes are still sent entries, but not followers.
            followers: core
                .progress()
                .filter(|(id, _)| core.membership().contains(*id))
                .map(|(id, p)| FollowerStatus {
                    id,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    lag_entries: last.saturating_sub(p.match_index),
                    state: p.state,
                })
                .collect(),
        }
    }

    /// Fails everything still waiting and stops the other threads.
    fn shutdown(&mut self, reason: &str) {
        tracing::info!(reason, "node stopping");
        self.halted.halt(reason);
        // What every later call hears too: the first reason (`stop()`'s, if that came first).
        let error = self.halted.error();
        // Appended here and not known committed: the rest of the cluster may still commit
        // them, so their outcome is unknown, not failed (a caller told `Stopped` could retry
        // what gets applied). Proposals still queued were never appended: those did fail.
        let unknown = Error::OutcomeUnknown;
        let appended = self.state.proposals.take_all();
        self.fail_proposals(appended, &unknown);
        // A change whose joint entry committed is known to have taken effect that far.
        self.state.changes.fail_all(&unknown, &error);
        for (_, (_, reply)) in std::mem::take(&mut self.state.reads) {
            reply.complete(Err(error.clone()));
        }
        self.transport.detach();
        if let Some(writer) = self.writer.take() {
            writer.stop();
        }
        // Proposals and requests still queued, or that came in as the node stopped (a caller
        // can pass the halted check just before it is set), last: left queued, they would wait
        // for as long as the node is kept, since a bounded channel keeps its messages after its
        // receiver is gone. The receivers go at once, so that a later send fails and its
        // caller hears `Stopped`.
        for r in self.proposals.try_iter() {
            r.reply.fail(error.clone());
        }
        self.proposals = never();
        for c in self.control.try_iter() {
            refuse(c, &error);
        }
        self.control = never();
        NodeMetrics::set(&self.metrics.role, 0);
        NodeMetrics::set(&self.metrics.leader, 0);
        self.subscribers.publish(Event::Stopped {
            reason: reason.to_string(),
        });
    }
}

/// Answers a request the driver will not serve.
fn refuse(request: Control, error: &Error) {
    match request {
        Control::Read { reply, .. }
        | Control::ChangeMembership { reply, .. }
        | Control::WaitApplied { reply, .. } => reply.complete(Err(error.clone())),
        Control::Transfer { reply, .. } | Control::Campaign { reply } => {
            reply.complete(Err(error.clone()));
        }
        Control::StepDown { reply } => reply.complete(Err(error.clone())),
        Control::Status { reply } => reply.complete(Err(error.clone())),
        Control::Tick(_) | Control::Stop => {}
    }
}

/// Where this run's read ids start: the wall clock in microseconds, times 4,096. A leader answers
/// a forwarded read by its id alone, and an answer delayed past a restart of the node that asked
/// must not complete one of its new reads (with an index older than that read needs). Ids of an
/// earlier run stay below, unless it made 4,096 reads per microsecond it ran or the clock went
/// back.
fn first_read_id() -> ReadId {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    u64::try_from(micros).map_or(0, |m| m.wrapping_shl(12))
}

/// What woke the driver; `None` where that channel's other end is gone.
enum Wake {
    Control(Option<Control>),
    Writer(Option<WriterEvent>),
    Inbound(Option<Inbound>),
    SnapshotReport(Option<SnapshotReport>),
    Proposal(Option<ProposalRequest>),
    Applier(Option<ApplierEvent>),
    Tick,
}

impl Wake {
    fn kind(&self) -> &'static str {
        match self {
            Wake::Control(_) => "control",
            Wake::Writer(_) => "log writer event",
            Wake::Inbound(_) => "messages",
            Wake::SnapshotReport(_) => "snapshot report",
            Wake::Proposal(_) => "proposals",
            Wake::Applier(_) => "applier event",
            Wake::Tick => "tick",
        }
    }
}

/// Frees a compaction's entries on a thread of their own: up to 8 x the snapshot threshold of
/// them, each holding a buffer, took the driver up to half a second to drop, long enough for
/// its followers to call an election.
fn release_elsewhere(node: NodeId, entries: ReleasedEntries) {
    if entries.len() < 1024 {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(format!("keel-release-{node}"))
        .spawn(move || {
            // Freeing up to a million buffers is seconds of CPU nobody waits for.
            crate::background::lower_this_threads_priority();
            drop(entries);
        });
    if let Err(e) = spawned {
        // The entries went with the failed closure; they were dropped here, just slower.
        tracing::warn!(node, error = %e, "cannot start a thread to free compacted entries");
    }
}

/// The membership a change asks for, from the current one.
fn target_membership(current: &Membership, change: &MembershipChange) -> Membership {
    let mut target = current.leave_joint();
    match change {
        MembershipChange::AddLearner(id) => {
            if !target.voters.contains(id) {
                target.learners.insert(*id);
            }
        }
        MembershipChange::Promote(id) => {
            target.learners.remove(id);
            target.voters.insert(*id);
        }
        MembershipChange::Remove(id) => {
            target.voters.remove(id);
            target.learners.remove(id);
        }
        MembershipChange::Set { voters, learners } => {
            target = Membership::new(voters.iter().copied(), learners.iter().copied());
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_driver_starts_its_read_ids_above_the_earlier_runs() {
        let earlier = DriverState::default().next_read_id;
        std::thread::sleep(Duration::from_millis(2));
        let later = DriverState::default().next_read_id;
        // The earlier run could have made millions of reads in those 2 ms without a repeat.
        assert!(later > earlier + 4_000_000, "{earlier} then {later}");
    }
}
