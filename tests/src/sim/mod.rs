//! A seeded, deterministic simulator for the Raft core.
//!
//! Several [`Core`]s run in one discrete-event world: a network that delays, drops, duplicates,
//! reorders and partitions (both ways and one way); per-node tick rates that drift apart; disks
//! that sync writes in groups after a delay and lose (or tear) whatever was not synced when their
//! node crashes; and a workload of proposals, ReadIndex and lease reads, membership changes and
//! leadership transfers. The [`checker`] verifies Raft's safety properties after every step, and
//! each run ends with the faults healed and a liveness check: a leader must be elected and commit
//! a proposal within a bounded number of ticks.
//!
//! Everything derives from one seed, so a failing seed replays exactly.

mod checker;
mod disk;
mod network;
mod state_machine;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use keel_engine::core::{
    Body, Config, Core, Index, Membership, Message, NodeId, Payload, ReadId, ReadMode, Restore,
    Role, SnapshotMeta, Term,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use self::checker::{Checker, Violation};
use self::disk::{Disk, PendingWrite};
use self::network::{NetworkProfile, Partitions};
use self::state_machine::StateMachine;

/// Simulated time units in one nominal tick.
const TICK: u64 = 100;
/// A node snapshots and compacts its log every this many applied entries.
const SNAPSHOT_EVERY_ENTRIES: u64 = 24;

/// Deliberate bugs, to prove the checker catches them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Send acknowledgements and vote grants before the write they depend on is durable.
    pub ack_before_durable: bool,
    /// The disk persists the term but loses the vote.
    pub forget_vote: bool,
}

/// What one simulation run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub bugs: Bugs,
    /// How long faults and load run, in nominal ticks.
    pub fault_ticks: u64,
    /// After healing, a leader must commit a proposal within this many ticks.
    pub liveness_ticks: u64,
    /// Each node's tick period differs from nominal by up to this percentage.
    pub tick_skew_percent: u64,
    pub lease_drift_ticks: u32,
    /// Percent chances that a fault event crashes a node, partitions the network, changes the
    /// membership or transfers leadership (the rest do nothing).
    pub fault_mix: FaultMix,
    /// Print every event to stderr.
    pub trace: bool,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            bugs: Bugs::default(),
            fault_ticks: 300,
            liveness_ticks: 200,
            tick_skew_percent: 5,
            lease_drift_ticks: 2,
            fault_mix: FaultMix::default(),
            trace: false,
        }
    }
}

/// How fault events are distributed, in percent (the sum must not exceed 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultMix {
    pub crash: u32,
    pub partition: u32,
    pub membership: u32,
    pub transfer: u32,
}

impl Default for FaultMix {
    fn default() -> Self {
        Self {
            crash: 15,
            partition: 20,
            membership: 15,
            transfer: 10,
        }
    }
}

/// What a passing run did, for reports and for checking that runs exercise the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub nodes: usize,
    pub leaders_elected: u64,
    pub entries_committed: Index,
    pub writes_acknowledged: u64,
    pub reads_served: u64,
    pub lease_reads: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub transfers: u64,
    pub snapshots_installed: u64,
}

/// A run that broke a property.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub time: u64,
    pub violation: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at time {} (tick {}): {}\n  replay: KEEL_SIM_SEED={} cargo test --release -p keel-tests --test simulator replay_seed -- --nocapture\n  (add KEEL_SIM_TRACE=1 for every event)",
            self.seed,
            self.time,
            self.time / TICK,
            self.violation,
            self.seed
        )
    }
}

/// Runs one simulation.
pub fn run(opts: &Options) -> Result<Summary, Failure> {
    let mut world = World::new(opts.clone());
    world.run().map_err(|violation| Failure {
        seed: opts.seed,
        time: world.now,
        violation,
    })?;
    Ok(world.summary)
}

#[derive(Debug)]
struct Envelope {
    msg: Message,
    /// A snapshot message carries the sender's snapshot data.
    snapshot_data: Option<StateMachine>,
}

#[derive(Debug)]
enum Event {
    Tick(NodeId),
    Deliver(Envelope),
    Sync {
        node: NodeId,
        incarnation: u64,
    },
    SnapshotReport {
        from: NodeId,
        to: NodeId,
        index: Index,
        delivered: bool,
    },
    Restart(NodeId),
    Heal(u64),
    Client,
    Fault,
    EndFaults,
    LivenessProbe,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    period: u64,
    core: Option<Core>,
    disk: Disk,
    sm: StateMachine,
    /// Bumped at each crash, so that a sync scheduled before it is ignored.
    incarnation: u64,
    sync_scheduled: bool,
    /// The commit index up to which the checker has seen this node's log.
    commit_checked: Index,
    /// The term in which leader completeness was last checked for this node.
    leader_checked_term: Term,
    /// A term this node leads whose vote for itself is not durable yet. Election safety counts
    /// a leader once it is: a sole voter elects itself before its vote is written, and if it
    /// crashes first, that leadership never existed (nothing of it left the node).
    leading_unconfirmed: Option<Term>,
    /// Reads whose index is known, waiting for the state machine to reach it.
    waiting_reads: Vec<(ReadId, Index)>,
    /// Snapshot data received, by index, until the core installs it.
    incoming_snapshots: BTreeMap<Index, StateMachine>,
    /// The data of the core's current snapshot (durable or about to be).
    snapshot_data: StateMachine,
}

struct World {
    opts: Options,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    cfg: Config,
    net: NetworkProfile,
    partitions: Partitions,
    checker: Checker,
    /// Proposal id -> (node, index, term) where it was proposed.
    proposals: HashMap<u64, (NodeId, Index, Term)>,
    /// Read id -> (node, floor when it began).
    reads: HashMap<ReadId, (NodeId, Index)>,
    next_id: u64,
    faults_on: bool,
    liveness: Option<(NodeId, Index, Term)>,
    done: bool,
    summary: Summary,
}

impl World {
    fn new(opts: Options) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let voters = if rng.random_bool(0.5) { 3 } else { 5 };
        let learners = rng.random_range(0..=2u64);
        let standby = rng.random_range(0..=2u64);
        let initial = Membership::new(1..=voters, voters + 1..=voters + learners);
        let pool = voters + learners + standby;

        let mut cfg = Config::new(1);
        cfg.pre_vote = rng.random_bool(0.8);
        cfg.check_quorum = rng.random_bool(0.8);
        cfg.lease_reads = cfg.check_quorum;
        cfg.lease_drift_ticks = opts.lease_drift_ticks;
        cfg.max_inflight_appends = rng.random_range(1..=8);
        cfg.max_append_bytes = rng.random_range(256..=2048);
        // A few appends' worth, so that the byte window, not only the count, closes at times.
        cfg.max_inflight_bytes = cfg.max_append_bytes * 3;
        cfg.max_apply_entries = 16;

        let mut nodes = BTreeMap::new();
        for id in 1..=pool {
            let skew = opts.tick_skew_percent;
            let period = TICK * rng.random_range(100 - skew..=100 + skew) / 100;
            let snapshot = if initial.contains(id) {
                Restore::bootstrap(initial.clone()).snapshot
            } else {
                SnapshotMeta::default()
            };
            nodes.insert(
                id,
                SimNode {
                    id,
                    period,
                    core: None,
                    disk: Disk::new(snapshot, opts.bugs.forget_vote),
                    sm: StateMachine::default(),
                    incarnation: 0,
                    sync_scheduled: false,
                    commit_checked: 0,
                    leader_checked_term: 0,
                    leading_unconfirmed: None,
                    waiting_reads: Vec::new(),
                    incoming_snapshots: BTreeMap::new(),
                    snapshot_data: StateMachine::default(),
                },
            );
        }
        let net = NetworkProfile::random(&mut rng);
        let summary = Summary {
            nodes: nodes.len(),
            ..Summary::default()
        };
        Self {
            opts,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            cfg,
            net,
            partitions: Partitions::default(),
            checker: Checker::default(),
            proposals: HashMap::new(),
            reads: HashMap::new(),
            next_id: 1,
            faults_on: true,
            liveness: None,
            done: false,
            summary,
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            eprintln!("[t={:>7}] {}", self.now, what());
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.start_node(id)?;
            let offset = self.rng.random_range(1..=TICK);
            self.schedule(offset, Event::Tick(id));
        }
        self.schedule(10, Event::Client);
        self.schedule(TICK, Event::Fault);
        self.schedule(self.opts.fault_ticks * TICK, Event::EndFaults);
        let deadline = (self.opts.fault_ticks + self.opts.liveness_ticks) * TICK;
        while let Some(((time, _), event)) = self.queue.pop_first() {
            self.now = time;
            if self.now > deadline {
                return Err(format!(
                    "liveness: no leader committed a proposal within {} ticks after the faults \
                     healed; nodes:\n{}",
                    self.opts.liveness_ticks,
                    self.describe_nodes()
                ));
            }
            self.handle(event)?;
            if self.done {
                return Ok(());
            }
        }
        Err("the event queue ran dry".to_string())
    }

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            if let Some(c) = &n.core {
                out += &format!(
                    "    node {}: {:?} term {} leader {:?} vote {:?} commit {} last ({}, {}) membership {:?}\n",
                    n.id,
                    c.role(),
                    c.term(),
                    c.leader(),
                    c.vote(),
                    c.commit_index(),
                    c.last_index(),
                    c.last_term(),
                    c.membership()
                );
            }
        }
        out
    }

    fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.role() == Role::Leader)
            .map(|c| (c.id(), c.term()))
            .collect()
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick(id) => {
                let node = self.nodes.get_mut(&id).expect("known node");
                let period = node.period;
                if let Some(core) = node.core.as_mut() {
                    core.tick();
                    self.drive(id)?;
                }
                self.schedule(period, Event::Tick(id));
            }
            Event::Deliver(env) => self.deliver(env)?,
            Event::Sync { node, incarnation } => self.sync(node, incarnation)?,
            Event::SnapshotReport {
                from,
                to,
                index,
                delivered,
            } => {
                if let Some(core) = self.nodes.get_mut(&from).and_then(|n| n.core.as_mut()) {
                    core.report_snapshot(to, index, delivered);
                    self.drive(from)?;
                }
            }
            Event::Restart(id) => {
                if self.nodes[&id].core.is_none() {
                    self.start_node(id)?;
                }
            }
            Event::Heal(partition) => {
                self.trace(|| format!("heal partition {partition}"));
                self.partitions.heal(partition);
            }
            Event::Client => {
                if self.faults_on {
                    self.client_action()?;
                    let next = self.rng.random_range(5..=60);
                    self.schedule(next, Event::Client);
                }
            }
            Event::Fault => {
                if self.faults_on {
                    self.fault_action()?;
                    let next = self.rng.random_range(TICK..=8 * TICK);
                    self.schedule(next, Event::Fault);
                }
            }
            Event::EndFaults => {
                self.trace(|| "faults end: heal, restart everyone, reliable network".to_string());
                self.faults_on = false;
                self.partitions.heal_all();
                self.net = NetworkProfile::reliable();
                let down: Vec<NodeId> = self
                    .nodes
                    .values()
                    .filter(|n| n.core.is_none())
                    .map(|n| n.id)
                    .collect();
                for id in down {
                    self.start_node(id)?;
                }
                self.schedule(TICK, Event::LivenessProbe);
            }
            Event::LivenessProbe => {
                self.liveness_probe()?;
                self.schedule(TICK, Event::LivenessProbe);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ nodes

    fn start_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let seed = self.opts.seed ^ (self.rng.random::<u64>());
        let mut cfg = self.cfg.clone();
        cfg.id = id;
        let node = self.nodes.get_mut(&id).expect("known node");
        let (restore, sm) = node.disk.restore();
        let core =
            Core::new(cfg, restore, seed).map_err(|e| format!("node {id} cannot restart: {e}"))?;
        node.commit_checked = core.snapshot().index;
        node.snapshot_data = sm.clone();
        node.sm = sm;
        node.core = Some(core);
        self.trace(|| format!("node {id} starts"));
        self.drive(id)
    }

    fn crash(&mut self, id: NodeId) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.core = None;
        node.disk.crash(&mut self.rng);
        for (entry, prev_term) in std::mem::take(&mut node.disk.newly_durable) {
            self.checker.on_entry_durable(id, &entry, prev_term)?;
        }
        // What the crash kept may include the leader's vote; what it lost, the leadership.
        self.confirm_leadership(id)?;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.leading_unconfirmed = None;
        node.sm = StateMachine::default();
        node.incarnation += 1;
        node.sync_scheduled = false;
        node.incoming_snapshots.clear();
        for (read, _) in node.waiting_reads.drain(..) {
            self.reads.remove(&read);
        }
        self.summary.crashes += 1;
        self.trace(|| format!("node {id} crashes"));
        Ok(())
    }

    /// Takes and carries out the core's output until it has nothing more to say.
    fn drive(&mut self, id: NodeId) -> Result<(), Violation> {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let Some(core) = node.core.as_mut() else {
                return Ok(());
            };
            let out = core.take_output();
            if out.is_empty() {
                return Ok(());
            }
            if core.role() == Role::Leader && node.leader_checked_term != core.term() {
                node.leader_checked_term = core.term();
                self.summary.leaders_elected += 1;
                self.checker.on_leader_elected(id, core)?;
                // With other voters, the votes that elected it were asked for only once its own
                // was durable: it led this term, and is counted now. A sole voter elects itself
                // before writing its vote, and is counted once that is durable (if it crashes
                // first, nothing of that leadership existed).
                let m = core.membership();
                let others = m.voters.iter().chain(&m.outgoing).any(|&v| v != id);
                if others {
                    self.checker.on_leader(core.term(), id)?;
                } else {
                    node.leading_unconfirmed = Some(core.term());
                }
            }
            if self.opts.trace {
                if let Some(ss) = out.soft_state {
                    eprintln!("[t={:>7}] node {id} is now {ss:?}", self.now);
                }
                if let Some(w) = &out.write {
                    eprintln!(
                        "[t={:>7}] node {id} writes hs {:?} snapshot {:?} truncate {:?} entries {:?}",
                        self.now,
                        w.hard_state,
                        w.snapshot.as_ref().map(|s| (s.index, s.term)),
                        w.truncate_from,
                        w.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()
                    );
                }
            }
            let mut to_send = out.messages;
            if let Some(mut write) = out.write {
                let snapshot_data = match &write.snapshot {
                    Some(meta) => {
                        let data =
                            node.incoming_snapshots.remove(&meta.index).ok_or_else(|| {
                                format!("node {id} installs a snapshot it never received")
                            })?;
                        node.snapshot_data = data.clone();
                        Some(data)
                    }
                    None => None,
                };
                if self.opts.bugs.ack_before_durable {
                    to_send.append(&mut write.then_send);
                }
                node.disk.pending.push_back(PendingWrite {
                    write,
                    snapshot_data,
                });
                if !node.sync_scheduled {
                    node.sync_scheduled = true;
                    let (node_id, incarnation) = (id, node.incarnation);
                    let delay = self.rng.random_range(5..=80);
                    self.schedule(
                        delay,
                        Event::Sync {
                            node: node_id,
                            incarnation,
                        },
                    );
                }
            }
            let node = self.nodes.get_mut(&id).expect("known node");
            let core = node.core.as_mut().expect("checked above");
            let commit = core.commit_index();
            if commit > node.commit_checked {
                self.checker
                    .on_commit(id, core, node.commit_checked, commit)?;
                node.commit_checked = commit;
                self.summary.entries_committed = self.summary.entries_committed.max(commit);
            }
            for entry in &out.committed {
                let before = node.sm.applied;
                let hash = node.sm.apply(entry);
                self.checker.on_apply(id, before, entry, hash)?;
                if self.liveness == Some((id, entry.index, entry.term)) {
                    self.done = true;
                }
                if let Payload::Command(data) = &entry.payload {
                    let pid = u64::from_le_bytes(data[..8].try_into().expect("8-byte ids"));
                    if self.proposals.get(&pid) == Some(&(id, entry.index, entry.term)) {
                        self.proposals.remove(&pid);
                        self.checker.on_write_acknowledged(entry.index);
                        self.summary.writes_acknowledged += 1;
                    }
                }
            }
            core.applied(node.sm.applied);
            for read in out.reads {
                match (self.reads.get(&read.id), read.index) {
                    (Some(&(origin, _)), Ok(index)) if origin == id => {
                        node.waiting_reads.push((read.id, index));
                    }
                    _ => {
                        self.reads.remove(&read.id);
                    }
                }
            }
            self.serve_reads(id)?;
            self.confirm_leadership(id)?;
            // Send before compacting: a snapshot message names the snapshot held right now.
            for m in to_send {
                self.send(m)?;
            }
            self.maybe_compact(id);
        }
    }

    /// Counts a sole voter's leadership for election safety once its term and vote are durable.
    fn confirm_leadership(&mut self, id: NodeId) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(term) = node.leading_unconfirmed else {
            return Ok(());
        };
        let hs = node.disk.hard_state();
        if hs.term == term && hs.vote == Some(id) {
            node.leading_unconfirmed = None;
            self.checker.on_leader(term, id)?;
        } else if hs.term > term {
            node.leading_unconfirmed = None;
        }
        Ok(())
    }

    fn serve_reads(&mut self, id: NodeId) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let applied = node.sm.applied;
        let mut ready = Vec::new();
        node.waiting_reads.retain(|&(read, index)| {
            if index <= applied {
                ready.push(read);
                false
            } else {
                true
            }
        });
        for read in ready {
            if let Some((_, floor)) = self.reads.remove(&read) {
                self.checker.on_read_served(id, floor, applied)?;
                self.summary.reads_served += 1;
            }
        }
        Ok(())
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let applied = node.sm.applied;
        if applied < core.snapshot().index + SNAPSHOT_EVERY_ENTRIES
            || applied > core.applied_index()
        {
            return;
        }
        let meta = core
            .compact(applied)
            .expect("applied entries can be compacted")
            .snapshot;
        debug_assert_eq!(meta.index, applied);
        node.snapshot_data = node.sm.clone();
        node.disk.compact(meta, node.sm.clone());
    }

    fn sync(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.incarnation != incarnation || node.core.is_none() {
            return Ok(());
        }
        node.sync_scheduled = false;
        // Group commit: one sync makes several queued writes durable.
        let group = self.rng.random_range(1..=node.disk.pending.len().max(1));
        let mut to_send = Vec::new();
        for _ in 0..group {
            let Some(pw) = node.disk.sync_one() else {
                break;
            };
            let core = node.core.as_mut().expect("checked above");
            if let Some(data) = pw.snapshot_data {
                node.sm = data;
                self.summary.snapshots_installed += 1;
            }
            if let Some((index, term)) = pw.write.last_entry() {
                core.persisted(index, term);
            }
            to_send.extend(pw.write.then_send);
        }
        for (entry, prev_term) in std::mem::take(&mut node.disk.newly_durable) {
            self.checker.on_entry_durable(id, &entry, prev_term)?;
        }
        self.confirm_leadership(id)?;
        let node = self.nodes.get_mut(&id).expect("known node");
        let more = !node.disk.pending.is_empty();
        for m in to_send {
            self.send(m)?;
        }
        self.drive(id)?;
        let node = self.nodes.get_mut(&id).expect("known node");
        if more && !node.sync_scheduled && node.incarnation == incarnation {
            node.sync_scheduled = true;
            let delay = self.rng.random_range(5..=80);
            self.schedule(
                delay,
                Event::Sync {
                    node: id,
                    incarnation,
                },
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------ network

    fn send(&mut self, msg: Message) -> Result<(), Violation> {
        let snapshot_data = match &msg.body {
            Body::Snapshot { snapshot } => {
                let data = self.nodes[&msg.from].snapshot_data.clone();
                if data.applied != snapshot.index {
                    return Err(format!(
                        "node {} sends snapshot {} but holds snapshot {}",
                        msg.from, snapshot.index, data.applied
                    ));
                }
                Some(data)
            }
            _ => None,
        };
        let delays = self.net.delays(&mut self.rng);
        if let Some(data) = snapshot_data.as_ref().filter(|_| delays.is_empty()) {
            self.schedule(
                1,
                Event::SnapshotReport {
                    from: msg.from,
                    to: msg.to,
                    index: data.applied,
                    delivered: false,
                },
            );
        }
        for delay in delays {
            let env = Envelope {
                msg: msg.clone(),
                snapshot_data: snapshot_data.clone(),
            };
            self.schedule(delay, Event::Deliver(env));
        }
        Ok(())
    }

    fn deliver(&mut self, env: Envelope) -> Result<(), Violation> {
        let (from, to) = (env.msg.from, env.msg.to);
        let snapshot_index = env.snapshot_data.as_ref().map(|data| data.applied);
        let up = self.nodes.get(&to).is_some_and(|n| n.core.is_some());
        if !up || self.partitions.is_cut(from, to) {
            if let Some(index) = snapshot_index {
                self.schedule(
                    1,
                    Event::SnapshotReport {
                        from,
                        to,
                        index,
                        delivered: false,
                    },
                );
            }
            return Ok(());
        }
        self.trace(|| {
            format!(
                "deliver {} -> {} t{} {:?}",
                from, to, env.msg.term, env.msg.body
            )
        });
        let node = self.nodes.get_mut(&to).expect("checked above");
        if let Some(data) = env.snapshot_data {
            node.incoming_snapshots.insert(data.applied, data);
        }
        node.core.as_mut().expect("checked above").step(env.msg);
        self.drive(to)?;
        if let Some(index) = snapshot_index {
            self.schedule(
                1,
                Event::SnapshotReport {
                    from,
                    to,
                    index,
                    delivered: true,
                },
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------ workload and faults

    fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.core.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.random_range(0..items.len())])
        }
    }

    fn client_action(&mut self) -> Result<(), Violation> {
        if self.rng.random_bool(0.6) {
            let leaders: Vec<NodeId> = self.leaders().into_iter().map(|(id, _)| id).collect();
            let Some(id) = self.pick(&leaders) else {
                return Ok(());
            };
            let count = self.rng.random_range(1..=3u64);
            let first_id = self.next_id;
            self.next_id += count;
            let commands =
                (first_id..first_id + count).map(|p| Bytes::copy_from_slice(&p.to_le_bytes()));
            let core = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.core.as_mut())
                .expect("a leader is up");
            if let Ok((first, term)) = core.propose(commands) {
                for k in 0..count {
                    self.proposals.insert(first_id + k, (id, first + k, term));
                }
            }
            self.drive(id)
        } else {
            let up = self.up_nodes();
            let Some(id) = self.pick(&up) else {
                return Ok(());
            };
            let read = self.next_id;
            self.next_id += 1;
            let mode = if self.rng.random_bool(0.5) {
                ReadMode::Lease
            } else {
                ReadMode::Quorum
            };
            self.reads.insert(read, (id, self.checker.read_floor()));
            let core = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.core.as_mut())
                .expect("up");
            let lease_before = core.stats().lease_reads;
            core.read_index(read, mode);
            self.summary.lease_reads += core.stats().lease_reads - lease_before;
            self.drive(id)
        }
    }

    fn fault_action(&mut self) -> Result<(), Violation> {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mix = self.opts.fault_mix;
        let mut roll = self.rng.random_range(0..100);
        if roll < mix.crash {
            return self.crash_random_node();
        }
        roll -= mix.crash;
        if roll < mix.partition {
            let id = self.partition(&all);
            self.summary.partitions += 1;
            let duration = self.rng.random_range(2 * TICK..=40 * TICK);
            self.schedule(duration, Event::Heal(id));
            return Ok(());
        }
        roll -= mix.partition;
        if roll < mix.membership {
            return self.change_membership(&all);
        }
        roll -= mix.membership;
        if roll < mix.transfer {
            return self.transfer_leadership(&all);
        }
        Ok(())
    }

    fn crash_random_node(&mut self) -> Result<(), Violation> {
        let up = self.up_nodes();
        if let Some(id) = self.pick(&up) {
            self.crash(id)?;
            let downtime = self.rng.random_range(TICK / 2..=30 * TICK);
            self.schedule(downtime, Event::Restart(id));
        }
        Ok(())
    }

    fn transfer_leadership(&mut self, all: &[NodeId]) -> Result<(), Violation> {
        let leaders: Vec<NodeId> = self.leaders().into_iter().map(|(id, _)| id).collect();
        let Some(id) = self.pick(&leaders) else {
            return Ok(());
        };
        let to = self.pick(all).expect("nodes exist");
        let core = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.core.as_mut())
            .expect("up");
        if core.transfer_leadership(to).is_ok() {
            self.summary.transfers += 1;
            self.trace(|| format!("transfer leadership {id} -> {to}"));
        }
        self.drive(id)
    }

    fn partition(&mut self, all: &[NodeId]) -> u64 {
        let kind = self.rng.random_range(0..3);
        let victim = self.pick(all).expect("nodes exist");
        let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != victim).collect();
        let id = match kind {
            // Isolate one node (often the leader, the interesting case).
            0 => {
                let leaders: Vec<NodeId> = self.leaders().into_iter().map(|(id, _)| id).collect();
                let victim = self.pick(&leaders).unwrap_or(victim);
                let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != victim).collect();
                self.partitions.cut(&[victim], &others, true)
            }
            // Split into two random sides.
            1 => {
                let (a, b): (Vec<NodeId>, Vec<NodeId>) =
                    all.iter().partition(|_| self.rng.random_bool(0.5));
                self.partitions.cut(&a, &b, true)
            }
            // One way: the victim can send but not receive (or the reverse).
            _ => {
                if self.rng.random_bool(0.5) {
                    self.partitions.cut(&others, &[victim], false)
                } else {
                    self.partitions.cut(&[victim], &others, false)
                }
            }
        };
        self.trace(|| format!("partition {id} (kind {kind}, node {victim})"));
        id
    }

    fn change_membership(&mut self, all: &[NodeId]) -> Result<(), Violation> {
        let leaders: Vec<NodeId> = self.leaders().into_iter().map(|(id, _)| id).collect();
        let Some(id) = self.pick(&leaders) else {
            return Ok(());
        };
        let voter_count =
            self.rng
                .random_range(1..=all.len().min(5))
                .max(if self.rng.random_bool(0.8) {
                    3.min(all.len())
                } else {
                    1
                });
        let mut shuffled = all.to_vec();
        for i in (1..shuffled.len()).rev() {
            let j = self.rng.random_range(0..=i);
            shuffled.swap(i, j);
        }
        let voters: Vec<NodeId> = shuffled[..voter_count].to_vec();
        let learners: Vec<NodeId> = shuffled[voter_count..]
            .iter()
            .copied()
            .filter(|_| self.rng.random_bool(0.4))
            .collect();
        let target = Membership::new(voters, learners);
        let core = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.core.as_mut())
            .expect("up");
        if core.propose_membership(&target).is_ok() {
            self.summary.membership_changes += 1;
            self.trace(|| format!("membership change at {id} -> {target:?}"));
        }
        self.drive(id)
    }

    fn liveness_probe(&mut self) -> Result<(), Violation> {
        if let Some((id, index, term)) = self.liveness {
            // Success is noticed when the leader applies the probe (see `drive`).
            let core = self.nodes[&id].core.as_ref().expect("all nodes are up");
            if core.role() == Role::Leader && core.term() == term && core.commit_index() < index {
                return Ok(());
            }
            self.liveness = None;
        }
        let mut leaders = self.leaders();
        leaders.sort_by_key(|&(_, term)| std::cmp::Reverse(term));
        if let Some(&(id, _)) = leaders.first() {
            let core = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.core.as_mut())
                .expect("up");
            if let Ok((index, term)) = core.propose_barrier() {
                self.liveness = Some((id, index, term));
            }
            self.drive(id)?;
        }
        Ok(())
    }
}
