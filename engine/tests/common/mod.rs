//! A small in-memory cluster driver for the core's protocol tests.
//!
//! It carries out every [`Output`] exactly as the core's contract says: immediate messages go on
//! the network, writes go to a per-node disk in order, and only once a write is durable are its
//! `then_send` messages sent and its last entry reported with `Core::persisted`; committed entries
//! are applied to a state machine (the list of applied entries). A node can be *held*: its writes
//! then wait, unpersisted, until the test makes them durable (or crashes the node, losing them).
//!
//! The network is a FIFO queue of messages in flight. Partitions drop messages at delivery time.
//! Everything the cluster does is recorded as one line of trace per event; the scenario runner
//! compares that trace with the expected output.
//!
//! After every call the driver checks what Raft promises and records any breach as a violation:
//! at most one leader per term, the contract's "durable-only messages travel in a write", writes
//! that continue the disk log, applied entries that agree across nodes, log matching, and leader
//! completeness.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use keel_engine::core::{
    AppendResult, Body, Config, Core, CoreError, Entry, HardState, Index, Membership, Message,
    NodeId, Output, Payload, ProgressState, ReadMode, ReadResult, Restore, Role, SnapshotMeta,
    Term, Write,
};

/// How a cluster is set up. Defaults are [`Config::new`]'s.
#[derive(Clone, Debug)]
pub struct Options {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_reads: bool,
    pub heartbeat_ticks: u32,
    pub election_ticks: u32,
    pub lease_drift_ticks: u32,
    pub max_inflight_appends: usize,
    pub max_inflight_bytes: usize,
    pub max_append_bytes: usize,
    pub max_apply_entries: usize,
    /// Seeds are searched from here (see [`Cluster::add_node`]).
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        let c = Config::new(1);
        Self {
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            pre_vote: c.pre_vote,
            check_quorum: c.check_quorum,
            lease_reads: c.lease_reads,
            heartbeat_ticks: c.heartbeat_ticks,
            election_ticks: c.election_ticks,
            lease_drift_ticks: c.lease_drift_ticks,
            max_inflight_appends: c.max_inflight_appends,
            max_inflight_bytes: c.max_inflight_bytes,
            max_append_bytes: c.max_append_bytes,
            max_apply_entries: c.max_apply_entries,
            seed: 0,
        }
    }
}

impl Options {
    pub fn voters(ids: &[NodeId]) -> Self {
        Self {
            voters: ids.to_vec(),
            ..Self::default()
        }
    }

    pub fn config(&self, id: NodeId) -> Config {
        Config {
            id,
            heartbeat_ticks: self.heartbeat_ticks,
            election_ticks: self.election_ticks,
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            lease_reads: self.lease_reads,
            lease_drift_ticks: self.lease_drift_ticks,
            max_inflight_appends: self.max_inflight_appends,
            max_inflight_bytes: self.max_inflight_bytes,
            max_append_bytes: self.max_append_bytes,
            max_apply_entries: self.max_apply_entries,
        }
    }

    pub fn membership(&self) -> Membership {
        Membership::new(self.voters.iter().copied(), self.learners.iter().copied())
    }
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    /// The state machine at `snapshot.index`: the entries applied up to it.
    pub snapshot_data: Vec<Entry>,
    /// Durable entries after the snapshot.
    pub entries: Vec<Entry>,
}

impl Disk {
    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    pub fn restore(&self) -> Restore {
        Restore {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied: self.snapshot.index,
        }
    }
}

/// One member: its core (None while crashed), its disk, and its state machine.
#[derive(Debug)]
pub struct Node {
    pub id: NodeId,
    pub cfg: Config,
    pub seed: u64,
    pub core: Option<Core>,
    pub disk: Disk,
    /// Writes taken from the core but not yet durable, oldest first.
    pub pending: VecDeque<Write>,
    /// While held, writes wait in `pending` until [`Cluster::persist`].
    pub hold: bool,
    /// The state machine: every applied entry, `sm[k].index == k + 1`.
    pub sm: Vec<Entry>,
    /// Every read result this node's core reported, in order.
    pub reads: Vec<ReadResult>,
    /// Snapshots received from leaders, waiting for the writes that install them.
    pub incoming_snapshots: Vec<(SnapshotMeta, Vec<Entry>)>,
    pub starts: u64,
}

/// A message in flight, with the snapshot data a Snapshot message carries alongside.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub msg: Message,
    pub snapshot_data: Option<Vec<Entry>>,
}

/// Which messages a delivery or drop applies to: `None` matches any node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
}

impl Link {
    pub const ANY: Link = Link {
        from: None,
        to: None,
    };

    pub fn new(from: NodeId, to: NodeId) -> Self {
        Self {
            from: Some(from),
            to: Some(to),
        }
    }

    fn matches(&self, m: &Message) -> bool {
        self.from.is_none_or(|f| f == m.from) && self.to.is_none_or(|t| t == m.to)
    }
}

/// An in-memory cluster of cores.
#[derive(Debug)]
pub struct Cluster {
    pub opts: Options,
    pub nodes: BTreeMap<NodeId, Node>,
    pub net: VecDeque<Envelope>,
    /// Partition groups; nodes in no group form one more group together.
    groups: Vec<BTreeSet<NodeId>>,
    trace: Vec<String>,
    pub violations: Vec<String>,
    leaders: BTreeMap<Term, NodeId>,
    applied_global: BTreeMap<Index, Entry>,
}

/// Deliveries before `deliver_all` gives up: a protocol that never quiesces is a failure.
const DELIVERIES_MAX: usize = 100_000;
/// Seeds tried to find one whose first election timeout is longer than the minimum.
const SEED_TRIES_MAX: u64 = 10_000;

impl Cluster {
    /// A new cluster of `opts.voters` and `opts.learners`, every node started as if it had already
    /// run one minimum election timeout without a leader (see [`Cluster::add_node`]).
    pub fn new(opts: Options) -> Self {
        let mut c = Self {
            opts: opts.clone(),
            nodes: BTreeMap::new(),
            net: VecDeque::new(),
            groups: Vec::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            leaders: BTreeMap::new(),
            applied_global: BTreeMap::new(),
        };
        let membership = opts.membership();
        for id in membership.members() {
            c.add_node(id, Restore::bootstrap(membership.clone()));
        }
        c
    }

    /// Starts node `id` from `restore` (replacing any node of that id, disk included).
    ///
    /// A core starts inside the lease it may have promised before a restart, so for
    /// `election_ticks` it ignores vote requests. A brand-new node has promised nothing, so the
    /// driver ticks it through that window before the test begins ("warm-up"), choosing a seed
    /// whose first election timeout is longer than the window so that it does not campaign on
    /// its own while warming up. It sends nothing while warming up; entries its restored commit
    /// index covers are applied.
    pub fn add_node(&mut self, id: NodeId, restore: Restore) {
        let cfg = self.opts.config(id);
        let seed = pick_seed(&cfg, &restore, self.opts.seed.wrapping_add(id * 1_000_003));
        let mut core = Core::new(cfg.clone(), restore.clone(), seed).expect("valid restore");
        for _ in 0..cfg.election_ticks {
            core.tick();
        }
        let disk = Disk {
            hard_state: restore.hard_state,
            snapshot: restore.snapshot.clone(),
            snapshot_data: Vec::new(),
            entries: restore.entries.clone(),
        };
        self.nodes.insert(
            id,
            Node {
                id,
                cfg,
                seed,
                core: Some(core),
                disk,
                pending: VecDeque::new(),
                hold: false,
                sm: Vec::new(),
                reads: Vec::new(),
                incoming_snapshots: Vec::new(),
                starts: 1,
            },
        );
        self.process(id);
        assert!(self.net.is_empty(), "warm-up is quiet");
    }

    /// Replaces node `id` with one whose disk holds `term`, `vote`, `commit` and a log of
    /// entries with the given terms from index 1 (opaque empty commands), and starts it.
    pub fn restore_log(
        &mut self,
        id: NodeId,
        term: Term,
        vote: Option<NodeId>,
        commit: Index,
        terms: &[Term],
    ) {
        let restore = restore_with_log(self.opts.membership(), term, vote, commit, terms);
        self.add_node(id, restore);
    }

    // ------------------------------------------------------------ access

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The live core of node `id`.
    pub fn core(&self, id: NodeId) -> &Core {
        self.node(id)
            .core
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is down"))
    }

    /// Runs `f` on node `id`'s core, then carries out its output.
    pub fn with_core<R>(&mut self, id: NodeId, f: impl FnOnce(&mut Core) -> R) -> R {
        let core = self
            .node_mut(id)
            .core
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is down"));
        let r = f(core);
        self.process(id);
        r
    }

    /// Runs `f` on node `id`'s core without carrying out its output (call [`Cluster::process`]).
    pub fn with_core_quiet<R>(&mut self, id: NodeId, f: impl FnOnce(&mut Core) -> R) -> R {
        let core = self
            .node_mut(id)
            .core
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is down"));
        f(core)
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.core.is_some())
    }

    pub fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The trace recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trace)
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.trace.push(line.into());
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.role() == Role::Leader)
            .max_by_key(|c| c.term())
            .map(|c| c.id())
    }

    /// Messages in flight, oldest first.
    pub fn in_flight(&self) -> Vec<Message> {
        self.net.iter().map(|e| e.msg.clone()).collect()
    }

    // ------------------------------------------------------------ inputs

    pub fn tick(&mut self, id: NodeId) {
        if self.is_up(id) {
            self.with_core(id, |c| c.tick());
        }
    }

    /// Ticks every live node once, in id order.
    pub fn tick_all(&mut self) {
        for id in self.live_ids() {
            self.tick(id);
        }
    }

    pub fn campaign(&mut self, id: NodeId) -> Result<(), CoreError> {
        self.with_core(id, |c| c.campaign())
    }

    pub fn propose(&mut self, id: NodeId, cmds: &[&str]) -> Result<(Index, Term), CoreError> {
        let cmds: Vec<Bytes> = cmds
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        self.with_core(id, |c| c.propose(cmds))
    }

    pub fn read(&mut self, id: NodeId, read_id: u64, mode: ReadMode) {
        self.with_core(id, |c| c.read_index(read_id, mode));
    }

    /// Hands `msg` to its addressee as if it came off the network.
    pub fn step(&mut self, msg: Message) {
        let to = msg.to;
        self.with_core(to, |c| c.step(msg));
    }

    /// Delivers every message in flight, and every message that causes, until none is left.
    pub fn deliver_all(&mut self) {
        let mut delivered = 0;
        while let Some(env) = self.net.pop_front() {
            delivered += 1;
            if delivered > DELIVERIES_MAX {
                self.violations.push(format!(
                    "the cluster did not quiesce after {DELIVERIES_MAX} deliveries"
                ));
                self.net.clear();
                return;
            }
            self.deliver_one(env);
        }
    }

    /// Delivers the messages now in flight on `link` (once: what they cause stays in flight).
    pub fn deliver(&mut self, link: Link) -> usize {
        let (now, rest): (VecDeque<Envelope>, VecDeque<Envelope>) =
            self.net.drain(..).partition(|e| link.matches(&e.msg));
        self.net = rest;
        let n = now.len();
        for env in now {
            self.deliver_one(env);
        }
        n
    }

    /// Delivers the `k`-th message in flight (any order: the network reorders).
    pub fn deliver_at(&mut self, k: usize) {
        if let Some(env) = self.net.remove(k) {
            self.deliver_one(env);
        }
    }

    /// Loses the `k`-th message in flight.
    pub fn drop_at(&mut self, k: usize) {
        if let Some(env) = self.net.remove(k) {
            self.lose(env, "dropped");
        }
    }

    /// Sends a second copy of the `k`-th message in flight (the network duplicates).
    pub fn duplicate_at(&mut self, k: usize) {
        if let Some(env) = self.net.get(k).cloned() {
            self.net.push_back(env);
        }
    }

    /// Drops the messages now in flight on `link`.
    pub fn drop_messages(&mut self, link: Link) -> usize {
        let (now, rest): (VecDeque<Envelope>, VecDeque<Envelope>) =
            self.net.drain(..).partition(|e| link.matches(&e.msg));
        self.net = rest;
        let n = now.len();
        for env in now {
            self.lose(env, "dropped");
        }
        n
    }

    /// From now on, nodes in different groups cannot exchange messages. Nodes in no group form
    /// one more group.
    pub fn partition(&mut self, groups: Vec<BTreeSet<NodeId>>) {
        self.groups = groups;
    }

    pub fn heal(&mut self) {
        self.groups.clear();
    }

    fn group_of(&self, id: NodeId) -> usize {
        self.groups
            .iter()
            .position(|g| g.contains(&id))
            .unwrap_or(usize::MAX)
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.group_of(from) != self.group_of(to)
    }

    /// Stops node `id`: its unpersisted writes and its state machine are lost; its disk stays.
    pub fn crash(&mut self, id: NodeId) {
        let n = self.node_mut(id);
        n.core = None;
        let lost = n.pending.len();
        n.pending.clear();
        n.incoming_snapshots.clear();
        n.sm.clear();
        self.trace
            .push(format!("{id} crashed, losing {lost} unpersisted write(s)"));
    }

    /// Starts node `id` again from its disk (the state machine from its snapshot), with a fresh
    /// seed. No warm-up: a restarted node honours any lease it may have promised.
    pub fn restart(&mut self, id: NodeId) {
        let n = self.node_mut(id);
        assert!(n.core.is_none(), "restart of a live node {id}");
        n.starts += 1;
        let seed = n.seed.wrapping_add(n.starts * 7919);
        let core = Core::new(n.cfg.clone(), n.disk.restore(), seed).expect("the disk is valid");
        n.sm = n.disk.snapshot_data.clone();
        n.core = Some(core);
        n.hold = false;
        let line = format!("{id} restarted: {}", status_line(self.core(id)));
        self.trace.push(line);
        self.process(id);
    }

    /// Holds node `id`'s writes: they stay unpersisted until [`Cluster::persist`].
    pub fn hold(&mut self, id: NodeId) {
        self.node_mut(id).hold = true;
    }

    /// Makes the oldest `count` held writes of node `id` durable (all with `None`).
    pub fn persist(&mut self, id: NodeId, count: Option<usize>) {
        let n = count.unwrap_or(usize::MAX);
        for _ in 0..n {
            if !self.persist_one(id, true) {
                break;
            }
        }
        self.process(id);
    }

    /// Makes every held write of node `id` durable and stops holding.
    pub fn release(&mut self, id: NodeId) {
        self.node_mut(id).hold = false;
        self.persist(id, None);
    }

    /// Takes a snapshot of node `id`'s state machine at `index` and compacts its log.
    pub fn compact(&mut self, id: NodeId, index: Index) -> Result<SnapshotMeta, CoreError> {
        let meta = self.with_core(id, |c| c.compact(index))?.snapshot;
        let n = self.node_mut(id);
        let data: Vec<Entry> =
            n.sm.iter()
                .take_while(|e| e.index <= meta.index)
                .cloned()
                .collect();
        assert_eq!(
            data.len() as u64,
            meta.index,
            "the snapshot covers applied entries"
        );
        n.disk.snapshot = meta.clone();
        n.disk.snapshot_data = data;
        n.disk.entries.retain(|e| e.index > meta.index);
        Ok(meta)
    }

    // ------------------------------------------------------------ carrying out outputs

    /// Takes node `id`'s output until it has nothing more to say, carrying out each.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..10_000 {
            let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) else {
                return;
            };
            let out = core.take_output();
            let busy = !out.is_empty();
            self.handle_output(id, out);
            let persisted = !self.node(id).hold && self.persist_one(id, false);
            if !busy && !persisted {
                self.check_leader(id);
                return;
            }
        }
        self.violations
            .push(format!("node {id} kept producing output"));
    }

    fn handle_output(&mut self, id: NodeId, out: Output) {
        let Output {
            messages,
            write,
            committed,
            reads,
            soft_state,
        } = out;
        if let Some(s) = soft_state {
            let leader = match (s.role, s.leader) {
                (Role::Follower, Some(l)) => format!(" leader={l}"),
                (Role::Follower, None) => " leader=none".to_string(),
                _ => String::new(),
            };
            self.trace
                .push(format!("{id} becomes {:?} t{}{leader}", s.role, s.term));
        }
        for m in messages {
            if needs_durability(&m) {
                self.violations.push(format!(
                    "{id} sent {} in Output.messages: it must wait in a Write",
                    fmt_msg(&m)
                ));
            }
            if m.from != id {
                self.violations.push(format!(
                    "{id} sent a message as {}: {}",
                    m.from,
                    fmt_msg(&m)
                ));
            }
            self.trace.push(fmt_msg(&m));
            self.send(m);
        }
        if let Some(w) = write {
            self.trace.push(format!("{id} {}", fmt_write(&w)));
            for m in &w.then_send {
                self.trace.push(format!("  then {}", fmt_msg(m)));
            }
            self.node_mut(id).pending.push_back(w);
        }
        if !committed.is_empty() {
            self.apply(id, committed);
        }
        for r in reads {
            let line = match r.index {
                Ok(i) => format!("{id} read {} ready at index {i}", r.id),
                Err(Some(l)) => format!("{id} read {} failed (leader hint {l})", r.id),
                Err(None) => format!("{id} read {} failed (no leader known)", r.id),
            };
            self.trace.push(line);
            self.node_mut(id).reads.push(r);
        }
    }

    fn send(&mut self, msg: Message) {
        let snapshot_data = match &msg.body {
            Body::Snapshot { snapshot } => {
                let disk = &self.node(msg.from).disk;
                if disk.snapshot.index == snapshot.index {
                    Some(disk.snapshot_data.clone())
                } else {
                    self.violations.push(format!(
                        "{} sent snapshot {}@{} but its stored snapshot is at {}",
                        msg.from, snapshot.index, snapshot.term, disk.snapshot.index
                    ));
                    None
                }
            }
            _ => None,
        };
        self.net.push_back(Envelope { msg, snapshot_data });
    }

    /// Makes the oldest pending write of `id` durable. Returns whether there was one.
    fn persist_one(&mut self, id: NodeId, announce: bool) -> bool {
        let Cluster {
            nodes,
            applied_global,
            ..
        } = self;
        let n = nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        let Some(w) = n.pending.pop_front() else {
            return false;
        };
        if let Some(hs) = w.hard_state {
            n.disk.hard_state = hs;
        }
        let mut problems = Vec::new();
        if let Some(s) = &w.snapshot {
            let found = n.incoming_snapshots.iter().position(|(meta, _)| meta == s);
            match found.map(|k| n.incoming_snapshots.remove(k)) {
                Some((_, data)) => {
                    for e in &data {
                        if applied_global.get(&e.index).is_some_and(|a| a != e) {
                            problems.push(format!(
                                "{id} installs a snapshot holding {} against applied entries",
                                fmt_entry(e)
                            ));
                        }
                    }
                    n.disk.snapshot = s.clone();
                    n.disk.snapshot_data = data.clone();
                    n.disk.entries.clear();
                    n.sm = data;
                }
                None => problems.push(format!(
                    "{id} installs snapshot {}@{} it never received",
                    s.index, s.term
                )),
            }
        }
        if let Some(t) = w.truncate_from {
            if t <= n.disk.snapshot.index {
                problems.push(format!("{id} truncates at {t}, inside its snapshot"));
            }
            n.disk.entries.retain(|e| e.index < t);
        }
        for e in &w.entries {
            if e.index != n.disk.last_index() + 1 {
                problems.push(format!(
                    "{id} writes entry {}@{} after disk index {}",
                    e.index,
                    e.term,
                    n.disk.last_index()
                ));
                n.disk.entries.retain(|d| d.index < e.index);
            }
            n.disk.entries.push(e.clone());
        }
        self.violations.extend(problems);
        if announce {
            let last = w
                .last_entry()
                .map_or(String::new(), |(i, t)| format!(", reports {i}@{t}"));
            self.trace.push(format!("{id} write durable{last}"));
        }
        for m in w.then_send.iter().cloned() {
            if m.from != id {
                self.violations.push(format!(
                    "{id} sent a message as {}: {}",
                    m.from,
                    fmt_msg(&m)
                ));
            }
            self.send(m);
        }
        if let Some((index, term)) = w.last_entry() {
            if let Some(core) = self.node_mut(id).core.as_mut() {
                core.persisted(index, term);
            }
        }
        true
    }

    fn apply(&mut self, id: NodeId, committed: Vec<Entry>) {
        let last = committed[committed.len() - 1].index;
        self.trace
            .push(format!("{id} applies {}", fmt_entries(&committed)));
        for e in committed {
            let n = self.node_mut(id);
            let applied = n.sm.len() as u64;
            n.sm.push(e.clone());
            if e.index != applied + 1 {
                self.violations.push(format!(
                    "{id} applies {}@{} after applying {applied}",
                    e.index, e.term
                ));
            }
            match self.applied_global.get(&e.index) {
                Some(other) if *other != e => self.violations.push(format!(
                    "{id} applies {} where {} was applied before",
                    fmt_entry(&e),
                    fmt_entry(other)
                )),
                Some(_) => {}
                None => {
                    self.applied_global.insert(e.index, e);
                }
            }
        }
        if let Some(core) = self.node_mut(id).core.as_mut() {
            core.applied(last);
        }
    }

    fn deliver_one(&mut self, env: Envelope) {
        let (from, to) = (env.msg.from, env.msg.to);
        if self.blocked(from, to) {
            self.lose(env, "dropped (partition)");
            return;
        }
        if !self.is_up(to) {
            let why = if self.nodes.contains_key(&to) {
                "dropped (down)"
            } else {
                "dropped (no such node)"
            };
            self.lose(env, why);
            return;
        }
        let snapshot = match (&env.msg.body, env.snapshot_data) {
            (Body::Snapshot { snapshot }, Some(data)) => Some((snapshot.clone(), data)),
            _ => None,
        };
        let snapshot_index = snapshot.as_ref().map(|(meta, _)| meta.index);
        if let Some(s) = snapshot {
            self.node_mut(to).incoming_snapshots.push(s);
        }
        self.step(env.msg);
        if let Some(index) = snapshot_index.filter(|_| self.is_up(from)) {
            self.with_core(from, |c| c.report_snapshot(to, index, true));
        }
    }

    fn lose(&mut self, env: Envelope, why: &str) {
        self.trace.push(format!("{} {why}", fmt_msg(&env.msg)));
        if let Body::Snapshot { snapshot } = &env.msg.body {
            let (from, to, index) = (env.msg.from, env.msg.to, snapshot.index);
            if self.is_up(from) {
                self.with_core(from, |c| c.report_snapshot(to, index, false));
            }
        }
    }

    // ------------------------------------------------------------ safety checks

    fn check_leader(&mut self, id: NodeId) {
        let Some(core) = self.node(id).core.as_ref() else {
            return;
        };
        if core.role() != Role::Leader {
            return;
        }
        let term = core.term();
        match self.leaders.get(&term) {
            Some(&other) if other != id => self
                .violations
                .push(format!("two leaders in term {term}: {other} and {id}")),
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
            }
        }
    }

    /// Log matching among live nodes, and leader completeness of the newest leader.
    pub fn check_invariants(&mut self) {
        let cores: Vec<&Core> = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .collect();
        let mut problems = Vec::new();
        for (k, a) in cores.iter().enumerate() {
            for b in &cores[k + 1..] {
                let lo = a.first_index().max(b.first_index());
                let hi = a.last_index().min(b.last_index());
                // The highest index where both logs hold the same entry term.
                let agree = (lo..=hi)
                    .rev()
                    .find(|&i| a.term_at(i).is_some() && a.term_at(i) == b.term_at(i));
                if let Some(top) = agree {
                    if let Some(i) = (lo..=top).find(|&i| a.entry(i) != b.entry(i)) {
                        problems.push(format!(
                            "log matching: {} and {} agree at {top} but differ at {i}",
                            a.id(),
                            b.id()
                        ));
                    }
                }
            }
        }
        let max_term = self
            .nodes
            .values()
            .map(|n| n.core.as_ref().map_or(n.disk.hard_state.term, |c| c.term()))
            .max()
            .unwrap_or(0);
        for c in &cores {
            if c.role() != Role::Leader || c.term() < max_term {
                continue;
            }
            for (&i, e) in &self.applied_global {
                if i > c.snapshot().index && c.entry(i) != Some(e) {
                    problems.push(format!(
                        "leader completeness: leader {} of t{} lacks committed {}",
                        c.id(),
                        c.term(),
                        fmt_entry(e)
                    ));
                    break;
                }
            }
        }
        self.violations.extend(problems);
    }
}

/// Whether the contract says `m` may only be sent once a write is durable.
fn needs_durability(m: &Message) -> bool {
    matches!(
        m.body,
        Body::Vote { .. }
            | Body::VoteResponse { granted: true }
            | Body::AppendResponse {
                result: AppendResult::Accepted { .. },
                ..
            }
    )
}

/// The first seed from `start` whose core does not campaign during warm-up.
pub fn pick_seed(cfg: &Config, restore: &Restore, start: u64) -> u64 {
    for seed in start..start + SEED_TRIES_MAX {
        let mut core = Core::new(cfg.clone(), restore.clone(), seed).expect("valid restore");
        for _ in 0..cfg.election_ticks {
            core.tick();
        }
        if core.role() == Role::Follower {
            return seed;
        }
    }
    panic!("no quiet seed found");
}

// ---------------------------------------------------------------- formatting

pub fn fmt_ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    ids.into_iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn fmt_membership(m: &Membership) -> String {
    let mut parts = vec![format!("voters={}", fmt_ids(&m.voters))];
    if !m.outgoing.is_empty() {
        parts.push(format!("outgoing={}", fmt_ids(&m.outgoing)));
    }
    if !m.learners.is_empty() {
        parts.push(format!("learners={}", fmt_ids(&m.learners)));
    }
    format!("conf({})", parts.join(" "))
}

pub fn fmt_entry(e: &Entry) -> String {
    match &e.payload {
        Payload::Noop => format!("{}@{}:noop", e.index, e.term),
        Payload::Command(b) if b.is_empty() => format!("{}@{}", e.index, e.term),
        Payload::Command(b) => format!("{}@{}:{}", e.index, e.term, String::from_utf8_lossy(b)),
        Payload::Membership(m) => format!("{}@{}:{}", e.index, e.term, fmt_membership(m)),
    }
}

pub fn fmt_entries(entries: &[Entry]) -> String {
    let items: Vec<String> = entries.iter().map(fmt_entry).collect();
    format!("[{}]", items.join(" "))
}

fn seq(read_seq: u64) -> String {
    if read_seq == 0 {
        String::new()
    } else {
        format!(" seq={read_seq}")
    }
}

pub fn fmt_msg(m: &Message) -> String {
    let body = match &m.body {
        Body::PreVote {
            last_index,
            last_term,
        } => format!("PreVote t{} last={last_index}@{last_term}", m.term),
        Body::PreVoteResponse { granted } => {
            format!("PreVoteResp t{} {}", m.term, granted_str(*granted))
        }
        Body::Vote {
            last_index,
            last_term,
            transfer,
        } => format!(
            "Vote t{} last={last_index}@{last_term}{}",
            m.term,
            if *transfer { " transfer" } else { "" }
        ),
        Body::VoteResponse { granted } => {
            format!("VoteResp t{} {}", m.term, granted_str(*granted))
        }
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
            read_seq,
            ..
        } => format!(
            "App t{} prev={prev_index}@{prev_term} commit={commit} {}{}",
            m.term,
            fmt_entries(entries),
            seq(*read_seq)
        ),
        Body::AppendResponse {
            result, read_seq, ..
        } => match result {
            AppendResult::Accepted { index } => {
                format!("AppResp t{} ok={index}{}", m.term, seq(*read_seq))
            }
            AppendResult::Rejected {
                rejected,
                hint_index,
                hint_term,
            } => format!(
                "AppResp t{} reject={rejected} hint={hint_index}@{hint_term}{}",
                m.term,
                seq(*read_seq)
            ),
        },
        Body::Heartbeat {
            commit, read_seq, ..
        } => format!("Heartbeat t{} commit={commit}{}", m.term, seq(*read_seq)),
        Body::HeartbeatResponse { read_seq, .. } => {
            format!("HeartbeatResp t{}{}", m.term, seq(*read_seq))
        }
        Body::Snapshot { snapshot } => format!(
            "Snapshot t{} snap={}@{} {}",
            m.term,
            snapshot.index,
            snapshot.term,
            fmt_membership(&snapshot.membership)
        ),
        Body::TimeoutNow { last_index } => format!("TimeoutNow t{} last={last_index}", m.term),
        Body::ReadIndex { id, lease } => format!(
            "ReadIndex t{} id={id} {}",
            m.term,
            if *lease { "lease" } else { "quorum" }
        ),
        Body::ReadIndexResponse { id, index } => format!(
            "ReadIndexResp t{} id={id} index={}",
            m.term,
            index.map_or("none".to_string(), |i| i.to_string())
        ),
    };
    format!("{}->{} {body}", m.from, m.to)
}

fn granted_str(granted: bool) -> &'static str {
    if granted {
        "granted"
    } else {
        "rejected"
    }
}

pub fn fmt_write(w: &Write) -> String {
    let mut parts = Vec::new();
    if let Some(hs) = &w.hard_state {
        let vote = hs.vote.map_or("-".to_string(), |v| v.to_string());
        parts.push(format!(
            "hs(term={} vote={vote} commit={})",
            hs.term, hs.commit
        ));
    }
    if let Some(s) = &w.snapshot {
        parts.push(format!("snapshot={}@{}", s.index, s.term));
    }
    if let Some(t) = w.truncate_from {
        parts.push(format!("truncate={t}"));
    }
    if !w.entries.is_empty() {
        parts.push(format!("entries={}", fmt_entries(&w.entries)));
    }
    if parts.is_empty() {
        parts.push("barrier".to_string());
    }
    format!("write {}", parts.join(" "))
}

/// `2: Follower t3 leader=1 vote=1 commit=5 applied=5 last=5@3 conf(voters=1,2,3)`.
pub fn status_line(c: &Core) -> String {
    let mut s = format!("{:?} t{}", c.role(), c.term());
    if c.role() != Role::Leader {
        let _ = write!(
            s,
            " leader={}",
            c.leader().map_or("none".to_string(), |l| l.to_string())
        );
    }
    let _ = write!(
        s,
        " vote={} commit={} applied={} last={}@{}",
        c.vote().map_or("-".to_string(), |v| v.to_string()),
        c.commit_index(),
        c.applied_index(),
        c.last_index(),
        c.last_term()
    );
    if c.snapshot().index > 0 {
        let _ = write!(s, " snap={}@{}", c.snapshot().index, c.snapshot().term);
    }
    if let Some(t) = c.transfer_target() {
        let _ = write!(s, " transfer_to={t}");
    }
    let _ = write!(s, " {}", fmt_membership(c.membership()));
    s
}

/// One line per follower of a leader: `  2: Replicate match=5 next=6`.
pub fn progress_lines(c: &Core) -> Vec<String> {
    c.progress()
        .map(|(id, p)| {
            let state = match p.state {
                ProgressState::Probe => "Probe".to_string(),
                ProgressState::Replicate => "Replicate".to_string(),
                ProgressState::Snapshot { index } => format!("Snapshot({index})"),
            };
            format!(
                "  {id}: {state} match={} next={}",
                p.match_index, p.next_index
            )
        })
        .collect()
}

/// The entries of a core's log, from its first index.
pub fn log_entries(c: &Core) -> Vec<Entry> {
    (c.first_index()..=c.last_index())
        .filter_map(|i| c.entry(i).cloned())
        .collect()
}

/// The terms of a core's log, space separated (for comparing whole logs at a glance).
pub fn log_terms(c: &Core) -> String {
    log_entries(c)
        .iter()
        .map(|e| e.term.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A convenience for tests: a message from `from` to `to` at `term`.
pub fn msg(from: NodeId, to: NodeId, term: Term, body: Body) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// A command entry for hand-built messages.
pub fn cmd(index: Index, term: Term, data: &'static str) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Command(Bytes::from_static(data.as_bytes())),
    }
}

/// A core started from `restore` and warmed up like [`Cluster::add_node`]'s: out of its initial
/// lease, not campaigning yet, its output taken and dropped.
pub fn warm_core(cfg: Config, restore: Restore) -> Core {
    let seed = pick_seed(&cfg, &restore, cfg.id * 1_000_003);
    let mut core = Core::new(cfg.clone(), restore, seed).expect("valid restore");
    for _ in 0..cfg.election_ticks {
        core.tick();
    }
    let _ = core.take_output();
    core
}

/// Mode names used by scenarios.
pub fn read_mode(s: &str) -> Option<ReadMode> {
    match s {
        "lease" => Some(ReadMode::Lease),
        "quorum" => Some(ReadMode::Quorum),
        _ => None,
    }
}

/// A disk holding `term`, `vote`, `commit` and a log of entries with the given terms from index 1
/// (opaque empty commands), in a cluster that bootstrapped with `membership`.
pub fn restore_with_log(
    membership: Membership,
    term: Term,
    vote: Option<NodeId>,
    commit: Index,
    terms: &[Term],
) -> Restore {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(k, &t)| Entry {
            index: k as u64 + 1,
            term: t,
            payload: Payload::Command(Bytes::new()),
        })
        .collect();
    Restore {
        hard_state: HardState { term, vote, commit },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            membership,
        },
        entries,
        applied: 0,
    }
}
