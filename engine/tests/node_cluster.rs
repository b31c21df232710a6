//! Whole-node tests: clusters of `Node`s on the in-memory transport, with real threads, real
//! logs on disk, and a key-value state machine. Every wait is bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_engine::core::{Body, Membership, Message, NodeId, Role, SnapshotMeta};
use keel_engine::kv::{Consistency, KvCommand, KvError, KvStore};
use keel_engine::node::{
    Error, Event, Inbox, MemNetwork, MembershipChange, Node, NodeConfig, NodeMetrics,
    ProposalReply, SnapshotReader, StateMachine, Transport,
};

const WAIT: Duration = Duration::from_secs(10);

struct Cluster {
    net: MemNetwork,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Arc<Node<KvStore>>>>,
    voters: Vec<NodeId>,
}

fn config(id: NodeId, voters: &[NodeId]) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, voters.iter().copied());
    // Fast elections keep the tests short; fsync stays on: these are real logs.
    cfg.tick_interval = Duration::from_millis(5);
    cfg.heartbeat_interval = Duration::from_millis(20);
    cfg.election_timeout = Duration::from_millis(100);
    cfg.lease_drift = Duration::from_millis(10);
    cfg.command_timeout = WAIT;
    cfg
}

impl Cluster {
    fn new(size: u64) -> Self {
        Self::with(size, |_| {})
    }

    fn with(size: u64, tweak: impl Fn(&mut NodeConfig)) -> Self {
        let voters: Vec<NodeId> = (1..=size).collect();
        let mut cluster = Cluster {
            net: MemNetwork::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            voters: voters.clone(),
        };
        for id in 1..=size {
            let mut cfg = config(id, &voters);
            tweak(&mut cfg);
            cluster.start_with(id, cfg);
        }
        cluster
    }

    fn start_with(&mut self, id: NodeId, cfg: NodeConfig) {
        self.start_from(id, cfg, KvStore::default());
    }

    /// Starts a node whose state machine already holds `state` (a durable one, after a restart).
    fn start_from(&mut self, id: NodeId, cfg: NodeConfig, state: KvStore) {
        let dir = self.dir.path().join(format!("node-{id}"));
        let node = Node::start(cfg, dir, self.net.transport(id), state).expect("node starts");
        let slot = usize::try_from(id - 1).expect("small ids");
        if self.nodes.len() <= slot {
            self.nodes.resize_with(slot + 1, || None);
        }
        self.nodes[slot] = Some(Arc::new(node));
    }

    fn restart(&mut self, id: NodeId) {
        self.start_with(id, config(id, &self.voters));
    }

    fn node(&self, id: NodeId) -> &Arc<Node<KvStore>> {
        self.nodes[usize::try_from(id - 1).expect("small ids")]
            .as_ref()
            .expect("node is running")
    }

    fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.nodes[usize::try_from(id - 1).expect("small ids")].take() {
            node.stop();
        }
    }

    fn running(&self) -> impl Iterator<Item = &Arc<Node<KvStore>>> {
        self.nodes.iter().flatten()
    }

    /// Waits until the running nodes agree on one leader among them.
    fn leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<NodeId> = self
                .running()
                .filter(|n| n.is_leader())
                .map(|n| n.id())
                .collect();
            if let [leader] = leaders[..] {
                if self.running().all(|n| n.leader() == Some(leader)) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until a running node other than `old` leads (`old` may still think it does).
    fn leader_other_than(&self, old: NodeId) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(new) = self
                .running()
                .map(|n| n.id())
                .find(|&id| id != old && self.node(id).is_leader())
            {
                return new;
            }
            assert!(Instant::now() < deadline, "no leader other than {old}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every running node applied `index`.
    fn converge(&self, index: u64) {
        for node in self.running() {
            node.wait_applied(index)
                .wait(WAIT)
                .expect("applies in time");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.running() {
            node.stop();
        }
    }
}

fn put(node: &Node<KvStore>, key: &str, value: &str) -> Result<u64, KvError> {
    node.put(key.to_string(), value.to_string(), WAIT)
}

#[test]
fn three_nodes_elect_and_replicate_proposals_from_many_threads() {
    let cluster = Cluster::new(3);
    let leader = cluster.node(cluster.leader()).clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let leader = leader.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..50 {
                    last = put(&leader, &format!("k{t}-{i}"), &format!("v{i}")).expect("put");
                }
                last
            })
        })
        .collect();
    let last = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .max()
        .expect("8 threads");
    cluster.converge(last);
    for node in cluster.running() {
        let sm = node.state_machine();
        assert_eq!(sm.len(), 400, "node {} has every key", node.id());
        assert_eq!(sm.get(b"k3-49"), Some(Bytes::from("v49")));
    }
}

#[test]
fn five_nodes_commit_with_two_down() {
    let mut cluster = Cluster::new(5);
    cluster.leader();
    let down: Vec<NodeId> = (1..=5)
        .filter(|&id| !cluster.node(id).is_leader())
        .take(2)
        .collect();
    for id in &down {
        cluster.stop(*id);
    }
    let leader = cluster.node(cluster.leader()).clone();
    let index = put(&leader, "a", "1").expect("a majority of 3 commits");
    cluster.converge(index);
}

#[test]
fn a_follower_refuses_proposals_with_a_leader_hint_and_forwards_on_request() {
    let cluster = Cluster::new(3);
    let leader = cluster.leader();
    let follower = cluster.node((1..=3).find(|&id| id != leader).expect("a follower"));
    match follower.propose("x").wait(WAIT) {
        Err(Error::NotLeader { leader: hint, .. }) => assert_eq!(hint, Some(leader)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    let applied = follower
        .propose_forwarded("y")
        .wait_applied(WAIT)
        .expect("forwarded");
    follower
        .wait_applied(applied.index)
        .wait(WAIT)
        .expect("reaches the follower");
}

#[test]
fn the_leader_holds_forwarded_proposals_to_its_own_size_limit() {
    let mut cluster = Cluster::with(3, |cfg| cfg.max_proposal_bytes = 1024);
    let leader = cluster.leader();
    // A follower that allows more (a configuration being rolled out) forwards a large command.
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.stop(follower);
    let mut cfg = config(follower, &[1, 2, 3]);
    cfg.max_proposal_bytes = 1 << 20;
    cluster.start_with(follower, cfg);
    assert_eq!(cluster.leader(), leader);
    let forwarded = cluster
        .node(follower)
        .propose_forwarded(vec![7u8; 4096])
        .wait(WAIT);
    assert_eq!(
        forwarded.map(|c| c.index),
        Err(Error::TooLarge {
            size_bytes: 4096,
            max_bytes: 1024
        })
    );
    let index = put(cluster.node(leader), "after", "1").expect("put");
    cluster.converge(index);
}

#[test]
fn a_restarted_node_keeps_its_log_and_catches_up() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    put(cluster.node(leader), "before", "1").expect("put");
    cluster.stop(follower);
    let index = put(cluster.node(leader), "during", "2").expect("put with one down");
    cluster.restart(follower);
    cluster
        .node(follower)
        .wait_applied(index)
        .wait(WAIT)
        .expect("catches up");
    let sm = cluster.node(follower).state_machine();
    assert_eq!(sm.get(b"before"), Some(Bytes::from("1")));
    assert_eq!(sm.get(b"during"), Some(Bytes::from("2")));
}

#[test]
fn the_whole_cluster_restarts_with_every_acknowledged_write() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.leader();
    let mut last = 0;
    for i in 0..20 {
        last = put(cluster.node(leader), &format!("k{i}"), "v").expect("put");
    }
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.leader();
    cluster.converge(last);
    for node in cluster.running() {
        assert_eq!(node.state_machine().len(), 20, "node {}", node.id());
    }
}

#[test]
fn an_isolated_leader_is_replaced_and_rejoins() {
    let cluster = Cluster::new(3);
    let old = cluster.leader();
    cluster.net.isolate(old);
    let new = cluster.leader_other_than(old);
    let index = put(cluster.node(new), "after", "1").expect("the majority side commits");
    // The isolated leader cannot commit: its write times out or fails.
    let stale = cluster
        .node(old)
        .propose("lost?")
        .wait(Duration::from_millis(300));
    assert!(stale.is_err(), "the minority side committed: {stale:?}");
    cluster.net.heal();
    cluster
        .node(old)
        .wait_applied(index)
        .wait(WAIT)
        .expect("rejoins and catches up");
    assert_eq!(
        cluster.leader(),
        new,
        "the old leader follows after healing"
    );
}

#[test]
fn a_proposal_a_snapshot_replaced_is_not_called_dropped_when_it_may_have_committed() {
    let cluster = Cluster::with(3, |cfg| cfg.snapshot_threshold_entries = 20);
    let old = cluster.leader();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != old).collect();
    // Once the leader has heard from both followers it streams entries to them unasked.
    let first = put(cluster.node(old), "first", "1").expect("put");
    cluster.converge(first);
    // The old leader's appends reach the others; their answers never come back.
    for &id in &others {
        cluster.net.cut(id, old);
    }
    let command = KvCommand::Put {
        key: Bytes::from_static(b"replicated"),
        value: Bytes::from_static(b"unseen"),
    };
    let proposal = cluster.node(old).propose(command.encode());
    // It steps down for want of a quorum; the others elect one of them, whose first entry
    // commits the proposal's, and compact their logs far past it.
    let new = cluster.leader_other_than(old);
    let mut last = 0;
    for i in 0..100 {
        last = put(cluster.node(new), &format!("k{i}"), "v").expect("the majority commits");
    }
    assert_eq!(
        cluster
            .node(new)
            .state_machine()
            .get(b"replicated")
            .as_deref(),
        Some(&b"unseen"[..]),
        "the old leader's proposal committed"
    );
    let deadline = Instant::now() + WAIT;
    while cluster.node(new).status().expect("status").snapshot_index < 60 {
        assert!(
            Instant::now() < deadline,
            "the new leader never snapshotted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Healed, the old leader can only catch up from a snapshot, which replaces its entry. It
    // cannot tell whether that entry committed, and must not say it was dropped.
    cluster.net.heal();
    let outcome = proposal.wait(WAIT);
    assert_eq!(outcome, Err(Error::OutcomeUnknown));
    cluster
        .node(old)
        .wait_applied(last)
        .wait(WAIT)
        .expect("the old leader catches up");
    let installed = cluster
        .node(old)
        .metrics()
        .snapshots_installed
        .load(Ordering::Relaxed);
    assert!(installed > 0, "the old leader installed a snapshot");
}

#[test]
fn a_state_machine_ahead_of_the_log_does_not_commit_the_logs_own_entries() {
    let mut cluster = Cluster::new(3);
    let old = cluster.leader();
    let first = put(cluster.node(old), "first", "1").expect("put");
    cluster.converge(first);
    // Cut off, the leader appends entries no one else will ever hold.
    cluster.net.isolate(old);
    let stranded: Vec<_> = (0..20)
        .map(|i| cluster.node(old).propose(format!("stranded {i}")))
        .collect();
    let deadline = Instant::now() + WAIT;
    while cluster.node(old).status().expect("status").last_index < first + 20 {
        assert!(Instant::now() < deadline, "the isolated leader appended");
        std::thread::sleep(Duration::from_millis(5));
    }
    let new = cluster.leader_other_than(old);
    for i in 0..5 {
        put(cluster.node(new), &format!("k{i}"), "v").expect("the majority commits");
    }
    // The old leader's durable state machine restored the new leader's state (a snapshot
    // received), and it crashed before its log recorded that snapshot: its state is ahead of
    // its log, whose entries up to the state's index are the stranded ones.
    let mut state = KvStore::default();
    {
        let sm = cluster.node(new).state_machine();
        let mut bytes = Vec::new();
        sm.snapshot().write_to(&mut bytes).expect("serializes");
        state
            .restore(sm.applied_index(), &mut &bytes[..])
            .expect("restores");
    }
    assert!(
        state.applied_index() < first + 20,
        "the stranded entries reach past it"
    );
    cluster.stop(old);
    drop(stranded);
    cluster.start_from(old, config(old, &[1, 2, 3]), state);
    cluster.net.heal();
    // Those entries were never committed: the leader replaces them and the node goes on.
    let after = put(cluster.node(new), "after", "1").expect("put");
    cluster
        .node(old)
        .wait_applied(after)
        .wait(WAIT)
        .expect("the restarted node catches up");
    let sm = cluster.node(old).state_machine();
    assert_eq!(sm.get(b"k4").as_deref(), Some(&b"v"[..]));
    assert_eq!(sm.get(b"after").as_deref(), Some(&b"1"[..]));
}

#[test]
fn a_snapshot_message_without_its_data_is_ignored() {
    let cluster = Cluster::new(3);
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let term = cluster.node(follower).status().expect("status").term;
    // A transport that hands over a snapshot's message but not its data (a bug, or a hostile
    // peer): stepped, it had the node install a snapshot it could not read, and stop.
    let bogus = Message {
        from: leader,
        to: follower,
        term: term + 10,
        body: Body::Snapshot {
            snapshot: SnapshotMeta {
                index: 1_000,
                term: term + 10,
                membership: Membership::new([1, 2, 3], []),
            },
        },
    };
    cluster.net.transport(leader).send(vec![bogus]);
    let index = put(cluster.node(leader), "after", "1").expect("put");
    cluster.converge(index);
    let status = cluster
        .node(follower)
        .status()
        .expect("the follower is running");
    assert_eq!(status.term, term, "{status:?}");
    assert!(status.snapshot_index < 1_000, "{status:?}");
}

#[test]
fn a_node_refuses_to_start_from_a_damaged_snapshot() {
    let mut cluster = Cluster::with(3, |cfg| cfg.snapshot_threshold_entries = 20);
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let value = "v".repeat(1000);
    let mut last = 0;
    for i in 0..100 {
        last = put(cluster.node(leader), &format!("k{i}"), &value).expect("put");
    }
    cluster.converge(last);
    let deadline = Instant::now() + WAIT;
    while cluster
        .node(follower)
        .status()
        .expect("status")
        .snapshot_index
        == 0
    {
        assert!(Instant::now() < deadline, "the follower never snapshotted");
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.stop(follower);
    // One bit of one value flipped on disk, in every snapshot the node keeps.
    assert!(
        damage_snapshot_files(&cluster, follower) > 0,
        "no snapshot file"
    );
    let started = Node::start(
        config(follower, &[1, 2, 3]),
        cluster.dir.path().join(format!("node-{follower}")),
        cluster.net.transport(follower),
        KvStore::default(),
    );
    match started {
        Err(Error::Storage(why)) => assert!(why.contains("checksum"), "{why}"),
        Err(other) => panic!("expected a storage error, got {other}"),
        Ok(_) => panic!("the node started from a damaged snapshot"),
    }
}

#[test]
fn a_leader_takes_no_more_proposals_while_too_many_wait_to_commit() {
    let cluster = Cluster::with(3, |cfg| {
        cfg.max_uncommitted_entries = 50;
        cfg.max_batch_entries = 10;
        // Without check-quorum the leader keeps leading with no answers at all.
        cfg.check_quorum = false;
        cfg.lease_reads = false;
    });
    let leader_id = cluster.leader();
    let leader = cluster.node(leader_id).clone();
    // Entries reach the followers; their acknowledgements never come back.
    for id in (1..=3).filter(|&id| id != leader_id) {
        cluster.net.cut(id, leader_id);
    }
    let proposals: Vec<_> = (0..200).map(|i| leader.propose(format!("p{i}"))).collect();
    // The log grows to the bound and stops there.
    let uncommitted = || {
        let status = leader.status().expect("status");
        status.last_index - status.commit_index
    };
    let deadline = Instant::now() + WAIT;
    while uncommitted() < 50 {
        assert!(Instant::now() < deadline, "the log never reached the bound");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let held = uncommitted();
    assert!(
        held < 50 + 10,
        "{held} entries uncommitted, the bound is 50"
    );
    // Once answers come back the rest go through.
    cluster.net.heal();
    for p in &proposals {
        p.wait(WAIT).expect("commits after healing");
    }
}

#[test]
fn reads_are_linearizable_from_every_node() {
    let cluster = Cluster::new(3);
    let leader = cluster.leader();
    put(cluster.node(leader), "key", "fresh").expect("put");
    for node in cluster.running() {
        for consistency in [Consistency::Linearizable, Consistency::Lease] {
            let value = node.get(b"key", consistency, WAIT);
            assert_eq!(
                value,
                Ok(Bytes::from("fresh")),
                "node {} {consistency:?}",
                node.id()
            );
        }
        assert_eq!(
            node.get(b"missing", Consistency::Linearizable, WAIT),
            Err(KvError::NotFound)
        );
    }
}

/// What a test transport does to each batch of messages before the network takes it.
trait SendHook: Send + Sync + 'static {
    fn before_send(&self, messages: &mut Vec<Message>);
}

/// The in-memory transport with a hook on its sends; keeps the inbox its node gave it.
struct Hooked<H> {
    inner: Arc<keel_engine::node::MemTransport>,
    hook: H,
    inbox: std::sync::Mutex<Option<Inbox>>,
}

impl<H: SendHook> Transport for Hooked<H> {
    fn attach(&self, inbox: Inbox) {
        *self.inbox.lock().expect("inbox") = Some(inbox.clone());
        self.inner.attach(inbox);
    }
    fn send(&self, mut messages: Vec<Message>) {
        self.hook.before_send(&mut messages);
        self.inner.send(messages);
    }
    fn send_snapshot(&self, message: Message, data: SnapshotReader) {
        self.inner.send_snapshot(message, data);
    }
    fn forward(&self, leader: NodeId, command: Bytes, reply: ProposalReply) {
        self.inner.forward(leader, command, reply);
    }
    fn detach(&self) {
        self.inner.detach();
    }
}

/// Three nodes configured by `tweak`, each on a transport with the hook `hook` makes for it.
fn hooked_cluster<H: SendHook>(
    tweak: fn(&mut NodeConfig),
    hook: impl Fn(NodeId) -> H,
) -> (Cluster, Vec<Arc<Hooked<H>>>) {
    let mut cluster = Cluster {
        net: MemNetwork::new(),
        dir: tempfile::tempdir().expect("temp dir"),
        nodes: Vec::new(),
        voters: vec![1, 2, 3],
    };
    let mut transports = Vec::new();
    for id in 1..=3 {
        let mut cfg = config(id, &cluster.voters);
        tweak(&mut cfg);
        let transport = Arc::new(Hooked {
            inner: cluster.net.transport(id),
            hook: hook(id),
            inbox: std::sync::Mutex::new(None),
        });
        transports.push(transport.clone());
        let dir = cluster.dir.path().join(format!("node-{id}"));
        let node = Node::start(cfg, dir, transport, KvStore::default()).expect("node starts");
        cluster.nodes.push(Some(Arc::new(node)));
    }
    (cluster, transports)
}

/// Drops the appends sent to one node (0 for none) and nothing else: that node hears
/// heartbeats, so it follows and its reads are answered, but it gets no entries.
struct Starve(Arc<AtomicU64>);

impl SendHook for Starve {
    fn before_send(&self, messages: &mut Vec<Message>) {
        let starved = self.0.load(Ordering::Relaxed);
        messages.retain(|m| !(m.to == starved && matches!(m.body, Body::Append { .. })));
    }
}

#[test]
fn a_read_whose_entries_never_come_fails_at_its_deadline() {
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    let starved = Arc::new(AtomicU64::new(0));
    let (cluster, _) = hooked_cluster(
        |cfg| cfg.command_timeout = READ_TIMEOUT,
        |_| Starve(starved.clone()),
    );
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.converge(put(cluster.node(leader), "a", "1").expect("put"));

    starved.store(follower, Ordering::Relaxed);
    let written = put(cluster.node(leader), "b", "2").expect("the other two commit it");
    // The leader answers the read with an index the follower's log does not reach. Before, the
    // read then waited for those entries for good, and a caller without a timeout of its own
    // hung (a follower removed from the cluster never gets them).
    let read = cluster.node(follower).read_index();
    assert_eq!(read.wait_for(WAIT), Some(Err(Error::Timeout)));

    starved.store(0, Ordering::Relaxed);
    let index = cluster
        .node(follower)
        .read_index()
        .wait(WAIT)
        .expect("reads once the entries come");
    assert!(
        index >= written,
        "read at {index}, below the write at {written}"
    );
}

/// Sends wait while the gate is closed, holding the sending thread (the driver) still.
#[derive(Default)]
struct Gate {
    /// Closed while true; `stalled` says a send waits at it.
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    stalled: AtomicBool,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().expect("gate") = closed;
        self.opened.notify_all();
    }
}

impl SendHook for Gate {
    fn before_send(&self, _: &mut Vec<Message>) {
        let mut closed = self.closed.lock().expect("gate");
        while *closed {
            self.stalled.store(true, Ordering::Relaxed);
            closed = self.opened.wait(closed).expect("gate");
        }
    }
}

#[test]
fn a_proposal_into_a_full_queue_is_handed_back_instead_of_waiting() {
    let (cluster, transports) = hooked_cluster(
        |cfg| {
            cfg.proposal_queue_depth = 1;
            // The leader's driver stands still for a while: no follower may campaign meanwhile.
            cfg.election_timeout = Duration::from_secs(2);
        },
        |_| Gate::default(),
    );
    let leader = cluster.leader();
    let node = cluster.node(leader);
    let transport = &transports[leader as usize - 1];
    let gate = &transport.hook;
    let command = |value: &'static str| {
        KvCommand::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(value.as_bytes()),
        }
        .encode()
    };
    // The leader's driver stops at its next send (a heartbeat), and one proposal fills the
    // queue behind it. (Opened again whatever happens: a driver left waiting would hang the
    // test's end, which stops the node.)
    struct Reopen<'a>(&'a Gate);
    impl Drop for Reopen<'_> {
        fn drop(&mut self) {
            self.0.set_closed(false);
        }
    }
    let reopen = Reopen(gate);
    gate.set_closed(true);
    let stalled = Instant::now() + WAIT;
    while !gate.stalled.load(Ordering::Relaxed) {
        assert!(Instant::now() < stalled, "the driver never sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    let queued = node.propose(command("1"));
    let handed_back = node
        .try_propose(command("2"))
        .expect_err("the queue is full");
    assert_eq!(handed_back, command("2"), "the command comes back whole");
    let inbox = transport
        .inbox
        .lock()
        .expect("inbox")
        .clone()
        .expect("attached");
    let (_, reply) = ProposalReply::new();
    let (forwarded, _) = inbox
        .try_propose(command("3"), reply)
        .expect_err("a forwarded proposal finds the queue full too");
    assert_eq!(forwarded, command("3"));

    drop(reopen);
    queued.wait(WAIT).expect("the queued proposal commits");
    let deadline = Instant::now() + WAIT;
    let taken = loop {
        match node.try_propose(handed_back.clone()) {
            Ok(proposal) => break proposal,
            Err(_) => assert!(Instant::now() < deadline, "the queue never had room"),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    taken
        .wait(WAIT)
        .expect("taken once the queue has room, it commits");
}

/// Sends from the driver panic once armed: a bug in the driver, on demand.
#[derive(Default)]
struct DriverPanic(AtomicBool);

impl SendHook for DriverPanic {
    fn before_send(&self, _: &mut Vec<Message>) {
        let on_driver = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("keel-driver"));
        assert!(!(on_driver && self.0.load(Ordering::Relaxed)), "armed");
    }
}

#[test]
fn a_leader_whose_driver_panics_no_longer_says_it_leads() {
    let (cluster, transports) = hooked_cluster(|_| {}, |_| DriverPanic::default());
    let leader = cluster.leader();
    let node = cluster.node(leader);
    let events = node.subscribe();
    transports[leader as usize - 1]
        .hook
        .0
        .store(true, Ordering::Relaxed);
    let deadline = Instant::now() + WAIT;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Stopped { reason }) => {
                break assert!(reason.contains("panicked"), "{reason}")
            }
            Ok(_) => {}
            Err(e) => panic!("the driver never stopped: {e}"),
        }
    }
    // Status, routing and metrics read these: a dead leader kept saying it led.
    assert!(!node.is_leader());
    assert_eq!(node.leader(), None);
    assert!(matches!(
        node.wait_for_leader(Duration::from_millis(50)),
        Err(Error::Stopped { .. })
    ));
    assert_eq!(NodeMetrics::get(&node.metrics().role), 0);
}

#[test]
fn leadership_transfers_on_request() {
    let cluster = Cluster::new(3);
    let leader = cluster.leader();
    let target = (1..=3).find(|&id| id != leader).expect("a follower");
    put(cluster.node(leader), "a", "1").expect("put");
    cluster
        .node(leader)
        .transfer_leadership(target)
        .expect("transfer starts");
    let deadline = Instant::now() + WAIT;
    while !cluster.node(target).is_leader() {
        assert!(Instant::now() < deadline, "the target never took over");
        std::thread::sleep(Duration::from_millis(5));
    }
    put(cluster.node(target), "b", "2").expect("the new leader commits");
}

#[test]
fn membership_changes_under_load() {
    let mut cluster = Cluster::new(3);
    let leader_id = cluster.leader();
    // A standby node: no initial members, it waits to be added.
    let mut standby = config(4, &[]);
    standby.voters.clear();
    cluster.start_with(4, standby);
    let leader = cluster.node(leader_id).clone();
    let writer = {
        let leader = leader.clone();
        std::thread::spawn(move || {
            (0..100)
                .filter(|i| put(&leader, &format!("load{i}"), "v").is_ok())
                .count()
        })
    };
    leader.add_learner(4).wait(WAIT).expect("learner added");
    // Promoted once it has answered the leader: until then the leader refuses.
    let deadline = Instant::now() + WAIT;
    loop {
        match leader.promote(4).wait(WAIT) {
            Ok(_) => break,
            Err(Error::Membership(r)) if r.contains("not acknowledged") => {
                assert!(Instant::now() < deadline, "node 4 never answered: {r}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("promoting node 4: {e:?}"),
        }
    }
    let removed = (1..=3).find(|&id| id != leader_id).expect("a follower");
    leader.remove(removed).wait(WAIT).expect("removed");
    let ok = writer.join().expect("writer");
    assert!(ok > 0, "writes kept committing during the changes");
    let status = leader.status().expect("status");
    assert!(status.membership.voters.contains(&4));
    assert!(!status.membership.voters.contains(&removed));
    // Its per-peer metrics (commit lag, round trips) go with it, not frozen at their last values.
    let deadline = Instant::now() + WAIT;
    while leader.metrics().peers.lock().contains_key(&removed) {
        assert!(
            Instant::now() < deadline,
            "node {removed}'s metrics outlived its removal"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let index = put(&leader, "final", "1").expect("put");
    cluster
        .node(4)
        .wait_applied(index)
        .wait(WAIT)
        .expect("the new voter applies");
}

#[test]
fn a_leader_that_removes_itself_answers_every_proposal_still_waiting() {
    // Proposals right behind the removal: those still uncommitted when it commits and the
    // leader steps down may be committed by the next leader, but this node, out of the cluster,
    // never hears. Before, they were never answered. Whether any is left uncommitted depends on
    // timing (usually all of them are): a few clusters make sure one run has some.
    let mut unknown = 0;
    for _ in 0..5 {
        let cluster = Cluster::new(3);
        let old = cluster.leader();
        let leader = cluster.node(old).clone();
        // A leader changes the membership once it committed an entry of its term.
        put(&leader, "before", "1").expect("put");
        let last_index = || NodeMetrics::get(&leader.metrics().last_log_index);
        let before = last_index();
        let removal = leader.remove(old);
        let deadline = Instant::now() + WAIT;
        while last_index() == before {
            assert!(Instant::now() < deadline, "the removal is never appended");
            std::thread::yield_now();
        }
        let proposals: Vec<_> = (0..100)
            .map(|i| {
                let command = KvCommand::Put {
                    key: Bytes::from(format!("after{i}")),
                    value: Bytes::from_static(b"v"),
                };
                leader.propose(command.encode())
            })
            .collect();
        removal.wait(WAIT).expect("the removal commits");
        for (i, p) in proposals.into_iter().enumerate() {
            match p.wait(WAIT) {
                Ok(_) | Err(Error::NotLeader { .. }) => {}
                Err(Error::OutcomeUnknown) => unknown += 1,
                Err(e) => panic!("proposal {i}: {e:?}"),
            }
        }
        let next = cluster.leader_other_than(old);
        put(cluster.node(next), "after-removal", "1").expect("the others go on");
        if unknown > 0 {
            break;
        }
    }
    assert!(
        unknown > 0,
        "no proposal was left uncommitted at the removal"
    );
}

#[test]
fn a_leader_deposed_with_its_removal_appended_answers_what_it_waits_for() {
    let cluster = Cluster::new(3);
    let old = cluster.leader();
    let leader = cluster.node(old).clone();
    put(&leader, "before", "1").expect("a leader changes the membership once it committed");
    // The followers store what it sends; their answers never come back. Check-quorum deposes
    // it, its removal and a proposal after it appended and uncommitted. The others, whose
    // membership leaves it out, never send it the log again.
    for id in (1..=3).filter(|&id| id != old) {
        cluster.net.cut(id, old);
    }
    let removal = leader.remove(old);
    let last_index = || NodeMetrics::get(&leader.metrics().last_log_index);
    let deadline = Instant::now() + WAIT;
    while leader.status().expect("running").membership.contains(old) {
        assert!(Instant::now() < deadline, "the removal is never appended");
        std::thread::yield_now();
    }
    let before = last_index();
    let proposal = leader.propose(Bytes::from_static(b"after the removal"));
    while last_index() == before {
        assert!(Instant::now() < deadline, "the proposal is never appended");
        std::thread::yield_now();
    }
    // Before, both waited until the node stopped.
    assert_eq!(proposal.wait(WAIT).map(|_| ()), Err(Error::OutcomeUnknown));
    assert_eq!(removal.wait(WAIT), Err(Error::OutcomeUnknown));
}

#[test]
fn a_proposal_appended_when_its_node_stops_has_an_unknown_outcome() {
    let mut cluster = Cluster::new(3);
    let leader_id = cluster.leader();
    let leader = cluster.node(leader_id).clone();
    // The followers store what the leader sends, but their answers never come back.
    for id in (1..=3).filter(|&id| id != leader_id) {
        cluster.net.cut(id, leader_id);
    }
    let last_index = || NodeMetrics::get(&leader.metrics().last_log_index);
    let before = last_index();
    let proposal = leader.propose(Bytes::from_static(b"in flight"));
    let deadline = Instant::now() + WAIT;
    while last_index() == before {
        assert!(Instant::now() < deadline, "the proposal is never appended");
        std::thread::yield_now();
    }
    cluster.stop(leader_id);
    // The others may yet commit it: `Stopped` would tell a caller it failed.
    assert_eq!(proposal.wait(WAIT).map(|_| ()), Err(Error::OutcomeUnknown));
    assert!(matches!(
        leader.propose(Bytes::from_static(b"after")).wait(WAIT),
        Err(Error::Stopped { .. })
    ));
}

#[test]
fn a_follower_whose_state_machine_lags_takes_no_more_entries_until_it_catches_up() {
    let cluster = Cluster::with(3, |cfg| cfg.max_apply_lag_entries = 20);
    let leader = cluster.leader();
    let slow = (1..=3).find(|&id| id != leader).expect("a follower");
    let metrics = |id: NodeId| cluster.node(id).metrics();
    let last_index = |id: NodeId| NodeMetrics::get(&metrics(id).last_log_index);
    let applied = |id: NodeId| NodeMetrics::get(&metrics(id).applied_index);
    let mut last = 0;
    {
        // Held, the read lock stops the follower's applier at its next batch.
        let _held = cluster.node(slow).state_machine();
        for i in 0..200 {
            last = put(cluster.node(leader), &format!("k{i}"), "v").expect("the others commit");
        }
        let dropped = NodeMetrics::get(&metrics(slow).appends_dropped_apply_lag);
        assert!(dropped > 0, "the slow follower dropped appends");
        // Its log stops about the limit past what it applied (plus the append that crossed it),
        // far short of the leader's.
        assert!(
            last_index(slow) < applied(slow) + 20 + 100 && last_index(slow) < last,
            "log {} applied {} leader {last}",
            last_index(slow),
            applied(slow)
        );
    }
    cluster
        .node(slow)
        .wait_applied(last)
        .wait(WAIT)
        .expect("released, it catches up");
}

/// A cluster snapshotting every 20 entries, one of whose followers was stopped and the leader
/// then wrote 100 keys and compacted its log past what that follower holds. Returns the
/// cluster, the leader, the stopped follower and the last index written.
fn leader_compacted_past_a_stopped_follower() -> (Cluster, NodeId, NodeId, u64) {
    let mut cluster = Cluster::with(3, |cfg| cfg.snapshot_threshold_entries = 20);
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.stop(follower);
    let mut last = 0;
    for i in 0..100 {
        last = put(cluster.node(leader), &format!("k{i}"), "v").expect("put");
    }
    let deadline = Instant::now() + WAIT;
    while cluster
        .node(leader)
        .status()
        .expect("status")
        .snapshot_index
        < 40
    {
        assert!(Instant::now() < deadline, "the leader never snapshotted");
        std::thread::sleep(Duration::from_millis(5));
    }
    (cluster, leader, follower, last)
}

/// Flips one bit in the middle of every snapshot file node `id` keeps; returns how many.
fn damage_snapshot_files(cluster: &Cluster, id: NodeId) -> usize {
    let snapshots = cluster.dir.path().join(format!("node-{id}/snapshots"));
    let mut damaged = 0;
    for file in std::fs::read_dir(&snapshots).expect("snapshot dir") {
        let path = file.expect("entry").path();
        if path.extension().is_some_and(|x| x == "snap") {
            let mut bytes = std::fs::read(&path).expect("read");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            std::fs::write(&path, bytes).expect("write");
            damaged += 1;
        }
    }
    damaged
}

#[test]
fn a_lagging_follower_catches_up_from_a_snapshot() {
    let (mut cluster, _, follower, last) = leader_compacted_past_a_stopped_follower();
    let events = {
        let mut cfg = config(follower, &cluster.voters);
        cfg.snapshot_threshold_entries = 20;
        cluster.start_with(follower, cfg);
        cluster.node(follower).subscribe()
    };
    let caught_up = cluster.node(follower).wait_applied(last).wait(WAIT);
    let seen: Vec<Event> = events.try_iter().collect();
    assert!(
        caught_up.is_ok(),
        "catches up: {caught_up:?}; events: {seen:?}"
    );
    assert_eq!(cluster.node(follower).state_machine().len(), 100);
    let installed = seen
        .iter()
        .any(|e| matches!(e, Event::SnapshotInstalled { .. }));
    assert!(installed, "the follower installed a snapshot");
}

#[test]
fn a_snapshot_sent_again_after_its_install_leaves_no_file_behind() {
    let (mut cluster, leader, follower, last) = leader_compacted_past_a_stopped_follower();
    let mut cfg = config(follower, &cluster.voters);
    cfg.snapshot_threshold_entries = 20;
    cluster.start_with(follower, cfg);
    cluster
        .node(follower)
        .wait_applied(last)
        .wait(WAIT)
        .expect("caught up");
    let status = cluster.node(follower).status().expect("status");
    assert!(status.snapshot_index > 0, "caught up from a snapshot");
    // The leader's snapshot again, as a leader resends one whose answer was late.
    let again = Message {
        from: leader,
        to: follower,
        term: status.term,
        body: Body::Snapshot {
            snapshot: SnapshotMeta {
                index: status.snapshot_index,
                term: status.term,
                membership: Membership::new([1, 2, 3], []),
            },
        },
    };
    // Whole and checked (a trailer of CRC32C, magic and length), so that it reaches the driver.
    let mut data = vec![7u8; 4096];
    let crc = crc32c::crc32c(&data);
    let data_len = data.len() as u64;
    data.extend_from_slice(&crc.to_le_bytes());
    data.extend_from_slice(b"KSNP");
    data.extend_from_slice(&data_len.to_le_bytes());
    let len = data.len() as u64;
    (cluster.net.transport(leader))
        .send_snapshot(again, SnapshotReader::new(std::io::Cursor::new(data), len));
    // The send copies the data on this thread; the driver steps it soon after.
    let index = put(cluster.node(leader), "after", "1").expect("put");
    cluster.converge(index);
    let snapshots = cluster
        .dir
        .path()
        .join(format!("node-{follower}/snapshots"));
    let kept: Vec<_> = std::fs::read_dir(&snapshots)
        .expect("snapshot dir")
        .map(|f| f.expect("entry").file_name())
        .filter(|name| !name.to_string_lossy().ends_with(".snap"))
        .collect();
    assert!(kept.is_empty(), "left behind: {kept:?}");
}

#[test]
fn a_leader_whose_snapshot_is_damaged_takes_a_new_one_for_a_lagging_follower() {
    let (mut cluster, leader, follower, last) = leader_compacted_past_a_stopped_follower();
    // Counted before the damage: a save still running then may end after it, and counts.
    let taken_before = NodeMetrics::get(&cluster.node(leader).metrics().snapshots_taken);
    // Its state in memory is whole; only the files are damaged.
    assert!(
        damage_snapshot_files(&cluster, leader) > 0,
        "no snapshot file"
    );
    let mut cfg = config(follower, &cluster.voters);
    cfg.snapshot_threshold_entries = 20;
    cluster.start_with(follower, cfg);
    // The follower refuses the damaged file; the leader, having found the damage as it sent it,
    // takes a new snapshot and sends that.
    let caught_up = cluster.node(follower).wait_applied(last).wait(WAIT);
    assert!(caught_up.is_ok(), "the follower catches up: {caught_up:?}");
    assert_eq!(cluster.node(follower).state_machine().len(), 100);
    assert!(
        NodeMetrics::get(&cluster.node(leader).metrics().snapshots_taken) > taken_before,
        "the leader took a new snapshot"
    );
}

/// A transport that sends nothing and can let go of its node's inbox, as one shut down before
/// its node would.
#[derive(Default)]
struct Unplugged {
    inbox: parking_lot::Mutex<Option<keel_engine::node::Inbox>>,
}

impl Transport for Unplugged {
    fn attach(&self, inbox: keel_engine::node::Inbox) {
        *self.inbox.lock() = Some(inbox);
    }
    fn send(&self, _: Vec<Message>) {}
    fn send_snapshot(&self, _: Message, _: keel_engine::node::SnapshotReader) {}
    fn forward(&self, _: NodeId, _: Bytes, _: keel_engine::node::ProposalReply) {}
}

#[test]
fn a_node_whose_transport_let_go_of_its_inbox_keeps_serving_without_spinning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let transport = Arc::new(Unplugged::default());
    let node = Node::start(
        config(1, &[1]),
        dir.path().join("node-1"),
        transport.clone(),
        KvStore::default(),
    )
    .expect("starts");
    node.wait_for_leader(WAIT).expect("a single voter leads");
    transport.inbox.lock().take();
    let turns = || node.metrics().driver_turn_duration.snapshot().count;
    let before = turns();
    std::thread::sleep(Duration::from_millis(200));
    // Ticks every 5 ms come to some 40 turns; spinning on the closed channel, millions.
    let taken = turns() - before;
    assert!(taken < 1_000, "{taken} driver turns in 200 ms");
    put(&node, "still", "serving").expect("a single voter needs no messages");
    node.stop();
}

#[test]
fn bad_input_is_refused_and_calls_after_stop_fail() {
    let cluster = Cluster::with(1, |cfg| cfg.max_proposal_bytes = 16);
    cluster.leader();
    let node = cluster.node(1);
    let too_large = node.propose(vec![0u8; 17]).wait(WAIT);
    assert_eq!(
        too_large,
        Err(Error::TooLarge {
            size_bytes: 17,
            max_bytes: 16
        })
    );
    node.stop();
    let late = node.propose("x").wait(WAIT);
    assert!(matches!(late, Err(Error::Stopped { .. })), "{late:?}");
    assert!(matches!(
        node.propose("x").wait(WAIT),
        Err(Error::Stopped { .. })
    ));
    assert!(matches!(
        node.read_index().wait(WAIT),
        Err(Error::Stopped { .. })
    ));
    assert!(matches!(node.status(), Err(Error::Stopped { .. })));
}

#[test]
fn timeouts_too_long_for_the_clock_wait_without_a_deadline() {
    // `Duration::MAX` for "no timeout": adding it to the clock panicked, in the caller's wait
    // and in the driver, which a read's deadline stopped.
    let cluster = Cluster::with(1, |cfg| cfg.command_timeout = Duration::MAX);
    let node = cluster.node(1);
    assert_eq!(node.wait_for_leader(Duration::MAX), Ok(1));
    let written = node
        .propose(
            KvCommand::Put {
                key: "k".into(),
                value: "v".into(),
            }
            .encode(),
        )
        .wait(Duration::MAX)
        .expect("commits")
        .index;
    let read = node.read_index().wait(Duration::MAX).expect("reads");
    assert!(
        read >= written,
        "read at {read}, below the write at {written}"
    );
    assert_eq!(node.status().expect("the node runs").role, Role::Leader);
}

#[test]
fn manual_ticks_make_elections_deterministic() {
    let cluster = Cluster::with(1, |cfg| cfg.manual_ticks = true);
    let node = cluster.node(1);
    // Past the longest election timeout a lone voter could draw (two of them), with room.
    let election_timeout = config(1, &[1]).election_timeout;
    assert_eq!(
        node.wait_for_leader(3 * election_timeout),
        Err(Error::Timeout),
        "no time passes without ticks"
    );
    node.tick(100);
    assert_eq!(node.wait_for_leader(WAIT), Ok(1));
    assert_eq!(node.status().expect("status").role, Role::Leader);
}

/// A state machine that fails (or panics) on the command "boom" and records what it applied.
#[derive(Default)]
struct Fragile {
    applied: Vec<Bytes>,
    index: u64,
    panic: bool,
}

impl keel_engine::node::StateMachine for Fragile {
    fn apply(
        &mut self,
        commands: &[keel_engine::node::Command<'_>],
    ) -> Result<Vec<Bytes>, keel_engine::node::StateMachineError> {
        let mut out = Vec::new();
        for c in commands {
            if c.data.as_ref() == b"boom" {
                if self.panic {
                    panic!("the state machine panics on purpose");
                }
                return Err(keel_engine::node::StateMachineError(
                    "boom is not allowed".into(),
                ));
            }
            self.applied.push(c.data.clone());
            self.index = c.index;
            out.push(Bytes::new());
        }
        Ok(out)
    }
    fn applied_index(&self) -> u64 {
        self.index
    }
    fn snapshot(&self) -> Box<dyn keel_engine::node::SnapshotSource> {
        struct Empty;
        impl keel_engine::node::SnapshotSource for Empty {
            fn write_to(&mut self, _: &mut dyn std::io::Write) -> std::io::Result<()> {
                Ok(())
            }
        }
        Box::new(Empty)
    }
    fn restore(
        &mut self,
        index: u64,
        _: &mut dyn std::io::Read,
    ) -> Result<(), keel_engine::node::StateMachineError> {
        self.index = index;
        Ok(())
    }
}

fn fragile_node_stops_and_says_why(panic: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemNetwork::new();
    let sm = Fragile {
        panic,
        ..Fragile::default()
    };
    let node = Node::start(config(1, &[1]), dir.path(), net.transport(1), sm).expect("starts");
    let events = node.subscribe();
    node.wait_for_leader(WAIT).expect("leader");
    node.propose("a").wait_applied(WAIT).expect("a applies");
    let boom = node.propose("boom");
    let after = node.propose("after");
    assert!(matches!(
        boom.wait_applied(WAIT),
        Err(Error::Stopped { .. })
    ));
    assert!(
        after.wait_applied(WAIT).is_err(),
        "nothing applies past the failed entry"
    );
    assert_eq!(node.state_machine().applied, vec![Bytes::from("a")]);
    let reason = events
        .iter()
        .find_map(|e| match e {
            Event::Stopped { reason } => Some(reason),
            _ => None,
        })
        .expect("a Stopped event");
    assert!(
        reason.contains("state machine"),
        "the reason names the state machine: {reason}"
    );
    // Every later call says why the node stopped.
    match node.propose("x").wait(WAIT) {
        Err(Error::Stopped { reason }) => assert!(reason.contains("state machine"), "{reason}"),
        other => panic!("a call after the failure: {other:?}"),
    }
    assert!(matches!(
        node.propose("x").wait(WAIT),
        Err(Error::Stopped { .. })
    ));
}

#[test]
fn a_failing_state_machine_stops_the_node_cleanly() {
    fragile_node_stops_and_says_why(false);
}

#[test]
fn a_panicking_state_machine_stops_the_node_cleanly() {
    fragile_node_stops_and_says_why(true);
}

#[test]
fn a_joint_change_is_answered_once_the_membership_asked_for_is_in_force() {
    let mut cluster = Cluster::new(3);
    let leader_id = cluster.leader();
    let leader = cluster.node(leader_id).clone();
    for id in [4, 5] {
        let mut standby = config(id, &[]);
        standby.voters.clear();
        cluster.start_with(id, standby);
        leader.add_learner(id).wait(WAIT).expect("learner added");
    }
    // Two voters replaced at once: through a joint configuration, which the leader then leaves.
    let voters = vec![leader_id, 4, 5];
    let deadline = Instant::now() + WAIT;
    let index = loop {
        let change = MembershipChange::Set {
            voters: voters.clone(),
            learners: Vec::new(),
        };
        match leader.change_membership(change).wait(WAIT) {
            Ok(index) => break index,
            Err(Error::Membership(r)) if r.contains("not acknowledged") => {
                assert!(
                    Instant::now() < deadline,
                    "the learners never answered: {r}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("replacing two voters: {e:?}"),
        }
    };
    let status = leader.status().expect("status");
    assert!(status.commit_index >= index);
    assert!(!status.membership.is_joint(), "{:?}", status.membership);
    assert_eq!(status.membership.voters, voters.iter().copied().collect());
    // The change is over: the next one can start at once.
    leader
        .add_learner(6)
        .wait(WAIT)
        .expect("the next change starts");
}

#[test]
fn a_learner_is_promoted_only_once_it_has_caught_up() {
    let cluster = Cluster::new(3);
    let leader = cluster.node(cluster.leader()).clone();
    let proposals: Vec<_> = (0..1100).map(|i| leader.propose(format!("x{i}"))).collect();
    for p in &proposals {
        p.wait(WAIT).expect("commits");
    }
    // Node 4 is added but never started: it cannot catch up.
    leader.add_learner(4).wait(WAIT).expect("learner added");
    match leader.promote(4).wait(WAIT) {
        Err(Error::Membership(reason)) => assert!(reason.contains("behind"), "{reason}"),
        other => panic!("promoting a learner 1100 entries behind: {other:?}"),
    }
    // Nor through a whole new set, nor as a voter never added as a learner.
    for voters in [vec![1, 2, 3, 4], vec![1, 2, 3, 5]] {
        let change = MembershipChange::Set {
            voters: voters.clone(),
            learners: Vec::new(),
        };
        match leader.change_membership(change).wait(WAIT) {
            Err(Error::Membership(reason)) => {
                assert!(
                    reason.contains("behind") || reason.contains("not a learner"),
                    "{reason}"
                )
            }
            other => panic!("setting voters {voters:?}: {other:?}"),
        }
    }
    assert!(!leader
        .status()
        .expect("status")
        .membership
        .voters
        .contains(&4));
}

#[test]
fn a_learner_never_heard_from_is_not_promoted_even_on_a_short_log() {
    let cluster = Cluster::new(3);
    let leader = cluster.node(cluster.leader()).clone();
    leader.propose("x").wait(WAIT).expect("commits");
    // Node 4 is added but never started: a few entries behind, yet it never answered.
    leader.add_learner(4).wait(WAIT).expect("learner added");
    match leader.promote(4).wait(WAIT) {
        Err(Error::Membership(reason)) => assert!(reason.contains("not acknowledged"), "{reason}"),
        other => panic!("promoting a learner that never answered: {other:?}"),
    }
}

/// Snapshots taken while `count` puts of `value_bytes` go to keys `key(i)`, one node, threshold 10.
fn snapshots_taken(count: usize, value_bytes: usize, key: impl Fn(usize) -> String) -> u64 {
    let cluster = Cluster::with(1, |cfg| {
        cfg.snapshot_threshold_entries = 10;
        cfg.unsafe_no_fsync = true;
    });
    let node = cluster.node(cluster.leader());
    let value = "v".repeat(value_bytes);
    for i in 0..count {
        put(node, &key(i), &value).expect("put");
        // One snapshot is written at a time: give each (a few KiB, no fsync) time to finish, so
        // none is skipped for being busy.
        std::thread::sleep(Duration::from_millis(3));
    }
    NodeMetrics::get(&node.metrics().snapshots_taken)
}

#[test]
fn snapshots_of_a_growing_state_are_paid_for_by_the_log() {
    // Every put adds a key: the state grows as fast as the log, so each snapshot waits until
    // the log since the last one is as large as it (about doubling), not every 10 entries.
    let growing = snapshots_taken(320, 100, |i| format!("key-{i}"));
    assert!(
        (3..=8).contains(&growing),
        "{growing} snapshots of a growing state in 320 puts (every 10 entries would be 32)"
    );
    // Overwrites of one key: the state stays small, a snapshot is due every 10 entries.
    let small = snapshots_taken(100, 100, |_| "key".to_string());
    assert!(
        small >= 7,
        "{small} snapshots of a small state in 100 puts, threshold 10"
    );
}

/// Records the name of the thread that frees a command's bytes.
struct FreedOn {
    command: Bytes,
    threads: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl AsRef<[u8]> for FreedOn {
    fn as_ref(&self) -> &[u8] {
        &self.command
    }
}

impl Drop for FreedOn {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().push(name);
    }
}

#[test]
fn compacted_entries_are_freed_off_the_driver_thread() {
    // Freeing most of a million entries at once took the driver long enough to miss heartbeats.
    let cluster = Cluster::with(1, |cfg| cfg.snapshot_threshold_entries = 2_000);
    let leader = cluster.node(cluster.leader());
    let threads = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let proposals: Vec<_> = (0..5_000)
        .map(|i| {
            let command = keel_engine::kv::KvCommand::Put {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from_static(b"v"),
            }
            .encode();
            leader.propose(Bytes::from_owner(FreedOn {
                command,
                threads: threads.clone(),
            }))
        })
        .collect();
    for p in &proposals {
        p.wait_applied(WAIT).expect("applied");
    }
    drop(proposals);
    let deadline = Instant::now() + WAIT;
    while threads.lock().len() < 2_000 {
        assert!(Instant::now() < deadline, "no compaction within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let threads = threads.lock().clone();
    let on_release = threads
        .iter()
        .filter(|t| t.starts_with("keel-release"))
        .count();
    assert!(
        on_release >= 2_000,
        "{on_release} of {} freed on a release thread: {:?}",
        threads.len(),
        threads.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        !threads.iter().any(|t| t.starts_with("keel-driver")),
        "the driver freed compacted entries"
    );
}

#[test]
fn the_leader_takes_proposals_once_per_log_sync() {
    // While its last write is being synced the leader leaves proposals queued, then takes them
    // all as one batch: one append to each follower per sync, not one per arrival.
    let cluster = Cluster::new(3);
    let leader = cluster.node(cluster.leader()).clone();
    let metrics = leader.metrics();
    let syncs_before = NodeMetrics::get(&metrics.wal_syncs);
    let batches_before = metrics.proposal_batch_entries.snapshot().count;
    // Closed-loop clients: proposals arrive one by one, spread over each sync.
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let leader = leader.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let command = keel_engine::kv::KvCommand::Put {
                        key: Bytes::from(format!("k{t}-{i}")),
                        value: Bytes::from_static(b"v"),
                    };
                    leader
                        .propose(command.encode())
                        .wait(WAIT)
                        .expect("committed");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("proposer");
    }
    let syncs = NodeMetrics::get(&metrics.wal_syncs) - syncs_before;
    let batches = metrics.proposal_batch_entries.snapshot();
    let batch_count = batches.count - batches_before;
    assert!(
        batch_count <= syncs,
        "{batch_count} proposal batches in {syncs} log syncs"
    );
}

/// Proposes `count` commands on `node` and waits until it applied them all; the last index.
fn propose_and_apply(node: &Node<Gated>, count: usize) -> u64 {
    let proposals: Vec<_> = (0..count).map(|i| node.propose(format!("c{i}"))).collect();
    proposals
        .into_iter()
        .map(|p| p.wait_applied(WAIT).expect("applies").index)
        .max()
        .expect("some")
}

/// What the test tells a [`Gated`] state machine, and what it hears back.
#[derive(Default)]
struct Gates {
    /// The first snapshot save announces itself here and waits for `release_save`.
    save_waiting: Signal,
    release_save: Signal,
    /// A restore (an install) announces itself here and waits for `release_restore`.
    restoring: Signal,
    release_restore: Signal,
    /// Whether a save was held already: only the first is.
    held_one: std::sync::atomic::AtomicBool,
    /// Saves still to fail (as on a full disk), before any is held.
    failing_saves: AtomicU64,
    /// Whether `apply` fails, as a broken state machine would.
    failing_apply: AtomicBool,
}

/// A one-shot flag a thread can wait on, bounded.
#[derive(Default)]
struct Signal {
    raised: parking_lot::Mutex<bool>,
    changed: parking_lot::Condvar,
}

impl Signal {
    fn raise(&self) {
        *self.raised.lock() = true;
        self.changed.notify_all();
    }

    fn wait(&self, what: &str) {
        let mut raised = self.raised.lock();
        let deadline = Instant::now() + WAIT;
        while !*raised {
            let timed_out = self.changed.wait_until(&mut raised, deadline).timed_out();
            assert!(!timed_out, "{what} within {WAIT:?}");
        }
    }
}

/// Keeps the commands it applied; with gates, holds its first save and every restore until the
/// test lets them go.
#[derive(Default)]
struct Gated {
    applied: Vec<Bytes>,
    index: u64,
    gates: Option<Arc<Gates>>,
}

impl keel_engine::node::StateMachine for Gated {
    fn apply(
        &mut self,
        commands: &[keel_engine::node::Command<'_>],
    ) -> Result<Vec<Bytes>, keel_engine::node::StateMachineError> {
        if self
            .gates
            .as_ref()
            .is_some_and(|g| g.failing_apply.load(Ordering::SeqCst))
        {
            return Err(keel_engine::node::StateMachineError(
                "broken (the test's)".into(),
            ));
        }
        for c in commands {
            self.applied.push(c.data.clone());
            self.index = c.index;
        }
        Ok(vec![Bytes::new(); commands.len()])
    }

    fn applied_index(&self) -> u64 {
        self.index
    }

    fn snapshot(&self) -> Box<dyn keel_engine::node::SnapshotSource> {
        struct Held {
            count: u64,
            gates: Option<Arc<Gates>>,
        }
        impl keel_engine::node::SnapshotSource for Held {
            fn write_to(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
                if let Some(g) = &self.gates {
                    let failing = g.failing_saves.load(Ordering::SeqCst);
                    if failing > 0 {
                        g.failing_saves.store(failing - 1, Ordering::SeqCst);
                        return Err(std::io::Error::other("no space left (the test's)"));
                    }
                    if !g.held_one.swap(true, Ordering::SeqCst) {
                        g.save_waiting.raise();
                        g.release_save.wait("the test releases the save");
                    }
                }
                out.write_all(&self.count.to_le_bytes())
            }
        }
        Box::new(Held {
            count: self.applied.len() as u64,
            gates: self.gates.clone(),
        })
    }

    fn restore(
        &mut self,
        index: u64,
        _: &mut dyn std::io::Read,
    ) -> Result<(), keel_engine::node::StateMachineError> {
        if let Some(g) = &self.gates {
            g.restoring.raise();
            g.release_restore.wait("the test releases the restore");
        }
        self.applied.clear();
        self.index = index;
        Ok(())
    }
}

#[test]
fn a_save_that_ends_while_a_newer_snapshot_installs_leaves_the_node_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemNetwork::new();
    let gates = Arc::new(Gates::default());
    // Node 3 is a learner: it never leads, so it is the one that installs.
    let start = |id: NodeId, gates: Option<Arc<Gates>>| {
        let mut cfg = config(id, &[1, 2]);
        cfg.learners = vec![3];
        cfg.snapshot_threshold_entries = 20;
        let sm = Gated {
            gates,
            ..Gated::default()
        };
        Node::start(
            cfg,
            dir.path().join(format!("node-{id}")),
            net.transport(id),
            sm,
        )
        .expect("node starts")
    };
    let (n1, n2, n3) = (
        start(1, None),
        start(2, None),
        start(3, Some(gates.clone())),
    );
    n1.wait_for_leader(WAIT).expect("a leader");
    let leader = [&n1, &n2]
        .into_iter()
        .find(|n| n.is_leader())
        .expect("leader");
    let propose = |count: usize| propose_and_apply(leader, count);
    // The learner applies past its threshold and starts a save, which the gate holds.
    let first = propose(30);
    gates
        .save_waiting
        .wait("the learner starts saving a snapshot");
    // Cut off, it falls behind the leader's next snapshot.
    net.isolate(3);
    let mut last = propose(200);
    // A snapshot is considered as entries apply (one already being saved is let finish first):
    // a few more keep it coming.
    let deadline = Instant::now() + WAIT;
    while leader.status().expect("status").snapshot_index <= first {
        let status = leader.status();
        assert!(
            Instant::now() < deadline,
            "the leader never snapshotted: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
        last = propose(1);
    }
    let events = n3.subscribe();
    net.heal();
    // The install is under way (the core has the new snapshot, its log write waits for the
    // state machine): the old save ends now, and its node hears of it mid-install.
    gates
        .restoring
        .wait("the learner installs the leader's snapshot");
    gates.release_save.raise();
    let deadline = Instant::now() + WAIT;
    let taken = loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::SnapshotTaken { index }) => break index,
            Ok(_) => {}
            Err(e) => panic!("the held save did not end: {e}"),
        }
    };
    assert!(taken <= first, "the held save was the old one: {taken}");
    // Time for the driver to act on it before the install completes.
    std::thread::sleep(Duration::from_millis(100));
    gates.release_restore.raise();
    let caught_up = n3.wait_applied(last).wait(WAIT);
    let seen: Vec<Event> = events.try_iter().collect();
    assert!(
        caught_up.is_ok(),
        "the learner catches up and keeps running: {caught_up:?}; events: {seen:?}"
    );
    let more = leader.propose("after").wait(WAIT).expect("commits").index;
    n3.wait_applied(more)
        .wait(WAIT)
        .expect("and keeps applying");
    let status = n3.status().expect("the learner is running");
    assert!(status.snapshot_index > first, "{status:?}");
}

/// A lone node over a [`Gated`] state machine, a snapshot due every 20 entries, once it leads.
fn lone_gated_leader(gates: &Arc<Gates>, dir: &std::path::Path) -> Node<Gated> {
    let mut cfg = config(1, &[1]);
    cfg.snapshot_threshold_entries = 20;
    let sm = Gated {
        gates: Some(gates.clone()),
        ..Gated::default()
    };
    let node = Node::start(cfg, dir, MemNetwork::new().transport(1), sm).expect("node starts");
    node.wait_for_leader(WAIT).expect("a leader");
    node
}

#[test]
fn a_node_whose_state_machine_failed_stops_only_once_its_snapshot_save_has_ended() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gates = Arc::new(Gates::default());
    let node = lone_gated_leader(&gates, dir.path());
    propose_and_apply(&node, 25);
    gates.save_waiting.wait("a save starts");
    gates.failing_apply.store(true, Ordering::SeqCst);
    assert!(node.propose("boom").wait_applied(WAIT).is_err());
    // The save, still writing into the node's directory, ends a moment later: a node stopped
    // before then could be started again in the directory while the save wrote there.
    let released = Arc::new(AtomicBool::new(false));
    let release = {
        let (gates, released) = (gates.clone(), released.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            released.store(true, Ordering::SeqCst);
            gates.release_save.raise();
        })
    };
    node.stop();
    assert!(
        released.load(Ordering::SeqCst),
        "stop() returned while the save still ran"
    );
    release.join().expect("releases");
}

#[test]
fn a_snapshot_whose_save_failed_is_tried_again_without_new_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gates = Arc::new(Gates {
        failing_saves: AtomicU64::new(1),
        held_one: AtomicBool::new(true),
        ..Gates::default()
    });
    let node = lone_gated_leader(&gates, dir.path());
    let last = propose_and_apply(&node, 25);
    // The first save fails; the failed one counted as taken, so the next waited for another
    // threshold of entries, and the log went uncompacted for as long.
    let deadline = Instant::now() + WAIT;
    while node.status().expect("status").snapshot_index == 0 {
        assert!(
            Instant::now() < deadline,
            "no snapshot after the failed save"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        gates.failing_saves.load(Ordering::SeqCst),
        0,
        "the save failed first"
    );
    assert!(node.status().expect("status").snapshot_index <= last);
}

#[test]
fn a_snapshot_due_while_another_is_saved_is_taken_when_that_one_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gates = Arc::new(Gates::default());
    let node = lone_gated_leader(&gates, dir.path());
    let propose = |count: usize| propose_and_apply(&node, count);
    propose(25);
    gates.save_waiting.wait("the first save starts");
    // Another snapshot falls due while the first is held; then nothing more comes.
    let last = propose(50);
    gates.release_save.raise();
    let deadline = Instant::now() + WAIT;
    while node.status().expect("status").snapshot_index < last {
        let status = node.status();
        assert!(
            Instant::now() < deadline,
            "no snapshot of the later entries: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
