//! How nodes reach each other: the [`Transport`] trait, the [`Inbox`] through which a transport
//! hands a node what arrived for it, and an in-memory network for tests and examples. Snapshots
//! travel as streams on both sides (see [`super::snapshot_transfer`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read as _;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::core::{Body, Index, Message, NodeId};
use crate::wal::DurableSend;

use super::error::Halt;
use super::metrics::NodeMetrics;
use super::proposal::ProposalReply;
use super::snapshot_transfer::{
    ReceivedSnapshot, SnapshotReader, SnapshotSink, SnapshotTransferError,
};
use super::snapshots::SnapshotStore;

/// Carries a node's messages to its peers. Sends never block on a slow or missing peer: a
/// transport drops what it cannot deliver (Raft retries), and never buffers without bound.
pub trait Transport: Send + Sync + 'static {
    /// Called once at start: deliver what arrives for this node into `inbox`.
    fn attach(&self, inbox: Inbox);
    /// Sends messages, each to its `to`. Called from the node's driver and from its log writer
    /// (acknowledgements, right after their fdatasync), at the same time: it must only queue,
    /// never block, and a peer sees the two callers' messages in whatever order they queued.
    fn send(&self, messages: Vec<Message>);
    /// Sends a snapshot message and streams the snapshot's data after it, reading `data` a
    /// chunk at a time (reads may block on disk). The receiver writes it through the sink of
    /// [`Inbox::begin_snapshot`]. Report the outcome with [`Inbox::snapshot_sent`] on this node's
    /// inbox.
    fn send_snapshot(&self, message: Message, data: SnapshotReader);
    /// Forwards a proposal to `leader`; the outcome completes `reply`.
    fn forward(&self, leader: NodeId, command: Bytes, reply: ProposalReply);
    /// The node stopped: deliver nothing more to it.
    fn detach(&self) {}
    /// Traffic and refusals so far, for metrics.
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
}

/// The log writer's hook: messages that waited for their write go out from the writer thread.
/// Snapshot messages stay for the driver, which opens the snapshot file they stream; once the
/// node is `halted` everything stays (a stopped node sends nothing, as when the driver sent).
pub(crate) fn send_when_durable(transport: Arc<dyn Transport>, halted: Arc<Halt>) -> DurableSend {
    let is_snapshot = |m: &Message| matches!(m.body, Body::Snapshot { .. });
    Box::new(move |waiting: &mut Vec<Message>| {
        if halted.is_halted() {
            return;
        }
        // Splitting allocates: only for the rare write that holds a snapshot message.
        let ready = if waiting.iter().any(is_snapshot) {
            let (stay, ready) = std::mem::take(waiting).into_iter().partition(is_snapshot);
            *waiting = stay;
            ready
        } else {
            std::mem::take(waiting)
        };
        if !ready.is_empty() {
            transport.send(ready);
        }
    })
}

/// What a transport counts, read at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub peers_connected: u64,
    pub peers: BTreeMap<NodeId, PeerTraffic>,
    /// Frames closed as malformed, by reason.
    pub frames_rejected: BTreeMap<String, u64>,
    /// TLS handshakes refused, by reason.
    pub handshakes_refused: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Messages given up on before they reached the wire (a full send queue, a failed write):
    /// Raft resends what matters, but each one can stall that peer's replication for a while.
    pub messages_dropped: u64,
}

/// What arrives at a node from its transport.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message(Message),
    /// A complete snapshot file, received with its message.
    Snapshot(Message, ReceivedSnapshot),
}

/// How sending a snapshot to a peer ended: whether its node took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotReport {
    pub(crate) to: NodeId,
    pub(crate) index: Index,
    pub(crate) delivered: bool,
}

/// A proposal on its way to the driver.
#[derive(Debug)]
pub(crate) struct ProposalRequest {
    /// `None` is a barrier (an empty entry).
    pub(crate) command: Option<Bytes>,
    pub(crate) reply: ProposalReply,
}

/// A node's receiving end, handed to its transport at start. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox {
    pub(crate) id: NodeId,
    pub(crate) inbound: Sender<Inbound>,
    /// Unbounded and apart from `inbound`: a report is sent once, never again like a message,
    /// so it must not be dropped when the node is busy, nor block a transport that reports from
    /// the driver's own thread. One per snapshot sent: few.
    pub(crate) snapshot_reports: Sender<SnapshotReport>,
    pub(crate) proposals: Sender<ProposalRequest>,
    /// The node's `max_proposal_bytes`, which forwarded proposals are held to as well.
    pub(crate) max_proposal_bytes: usize,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// Where received snapshots are written.
    pub(crate) store: SnapshotStore,
}

impl Inbox {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The largest command the node takes (its `max_proposal_bytes`), forwarded ones included.
    pub fn max_proposal_bytes(&self) -> usize {
        self.max_proposal_bytes
    }

    /// Hands the node a message. Dropped when the node is overloaded or stopped: Raft retries.
    /// A snapshot's message comes only through [`Inbox::begin_snapshot`], with its data: the
    /// node ignores one delivered here.
    pub fn deliver(&self, message: Message) {
        self.push(Inbound::Message(message));
    }

    /// Starts receiving the snapshot that `message` announces, `total_bytes` long: write its
    /// data through the sink as it arrives, then `finish` it to hand it to the node. Creates a
    /// file, so call it where blocking is allowed.
    pub fn begin_snapshot(
        &self,
        message: Message,
        total_bytes: u64,
    ) -> Result<SnapshotSink, SnapshotTransferError> {
        SnapshotSink::create(self.clone(), message, total_bytes)
    }

    /// The transport finished sending the snapshot of `message`, the one
    /// [`Transport::send_snapshot`] was given. Never dropped (a report dropped when the node's
    /// queue was full left the leader waiting on that follower's snapshot until leadership
    /// changed), and never blocks.
    pub fn snapshot_sent(&self, message: &Message, delivered: bool) {
        let Body::Snapshot { snapshot } = &message.body else {
            // A transport's bug: the leader waits on that follower's snapshot until it is
            // answered some other way (the follower acknowledges it, or leadership changes).
            tracing::warn!(
                to = message.to,
                kind = message.body.kind(),
                "a snapshot report on a message that carries no snapshot: ignored"
            );
            return;
        };
        // Fails only once the node stopped, when nothing waits for it.
        let _ = self.snapshot_reports.send(SnapshotReport {
            to: message.to,
            index: snapshot.index,
            delivered,
        });
    }

    /// A proposal forwarded by another node. Held to this node's `max_proposal_bytes`: the
    /// node that forwarded it may allow more.
    pub fn propose(&self, command: Bytes, reply: ProposalReply) {
        if let Some(request) = self.prepare(command, reply) {
            if let Err(e) = self.proposals.send(request) {
                e.into_inner().reply.fail(Self::stopped());
            }
        }
    }

    /// Like [`Inbox::propose`], but hands the command and its reply back instead of waiting
    /// while the node's proposal queue is full: for callers that must not block.
    pub fn try_propose(
        &self,
        command: Bytes,
        reply: ProposalReply,
    ) -> Result<(), (Bytes, ProposalReply)> {
        let Some(request) = self.prepare(command, reply) else {
            return Ok(());
        };
        match self.proposals.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(ProposalRequest { command, reply })) => Err((
                command.expect("a forwarded proposal carries its command"),
                reply,
            )),
            Err(TrySendError::Disconnected(request)) => {
                request.reply.fail(Self::stopped());
                Ok(())
            }
        }
    }

    /// The request for the driver, or none when the proposal failed already (too large).
    fn prepare(&self, command: Bytes, reply: ProposalReply) -> Option<ProposalRequest> {
        if let Err(e) = super::check_proposal_size(&command, self.max_proposal_bytes, &self.metrics)
        {
            reply.fail(e);
            return None;
        }
        Some(ProposalRequest {
            command: Some(command),
            reply,
        })
    }

    fn stopped() -> super::Error {
        super::Error::stopped("the leader stopped")
    }

    fn push(&self, inbound: Inbound) {
        // Dropped when full or stopped: Raft retries.
        self.try_push(inbound);
    }

    /// Whether the node took `inbound` (not when its queue is full or it stopped).
    pub(crate) fn try_push(&self, inbound: Inbound) -> bool {
        self.inbound.try_send(inbound).is_ok()
    }
}

/// An in-process network of nodes, with partitions the test controls.
#[derive(Clone, Debug, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<NetState>>,
}

#[derive(Debug, Default)]
struct NetState {
    inboxes: HashMap<NodeId, Inbox>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport for node `id`.
    pub fn transport(&self, id: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            id,
            net: self.clone(),
        })
    }

    /// Cuts every link between `a` and `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut state = self.state.lock();
        for &x in a {
            for &y in b {
                state.cut.insert((x, y));
                state.cut.insert((y, x));
            }
        }
    }

    /// Cuts the link from `from` to `to` only: what `to` sends to `from` still arrives.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.state.lock().cut.insert((from, to));
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self
            .state
            .lock()
            .inboxes
            .keys()
            .copied()
            .filter(|&n| n != id)
            .collect();
        self.partition(&[id], &others);
    }

    pub fn heal(&self) {
        self.state.lock().cut.clear();
    }

    fn route(&self, from: NodeId, to: NodeId) -> Option<Inbox> {
        let state = self.state.lock();
        if state.cut.contains(&(from, to)) {
            return None;
        }
        state.inboxes.get(&to).cloned()
    }
}

/// One node's end of a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    id: NodeId,
    net: MemNetwork,
}

impl Transport for MemTransport {
    fn attach(&self, inbox: Inbox) {
        self.net.state.lock().inboxes.insert(self.id, inbox);
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            if let Some(inbox) = self.net.route(self.id, m.to) {
                inbox.deliver(m);
            }
        }
    }

    /// Copies the snapshot into the peer's sink on the caller's thread: fine for tests, where
    /// snapshots are small.
    fn send_snapshot(&self, message: Message, data: SnapshotReader) {
        let to = message.to;
        let delivered = match self.net.route(self.id, to) {
            Some(inbox) => match copy_snapshot(&inbox, message.clone(), data) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(from = self.id, to, error = %e, "snapshot not delivered");
                    false
                }
            },
            None => false,
        };
        if let Some(own) = self.net.state.lock().inboxes.get(&self.id) {
            own.snapshot_sent(&message, delivered);
        }
    }

    fn forward(&self, leader: NodeId, command: Bytes, reply: ProposalReply) {
        match self.net.route(self.id, leader) {
            Some(inbox) => inbox.propose(command, reply),
            None => reply.fail(super::Error::NotLeader {
                leader: Some(leader),
                term: 0,
            }),
        }
    }

    fn detach(&self) {
        self.net.state.lock().inboxes.remove(&self.id);
    }
}

fn copy_snapshot(
    inbox: &Inbox,
    message: Message,
    mut data: SnapshotReader,
) -> Result<(), SnapshotTransferError> {
    const CHUNK_BYTES: usize = 64 << 10;
    let mut sink = inbox.begin_snapshot(message, data.len_bytes())?;
    let mut chunk = vec![0; CHUNK_BYTES];
    loop {
        let n = data.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        sink.write_chunk(&chunk[..n])?;
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SnapshotMeta;
    use crate::wal::RecordedSnapshot;

    /// Records what it is asked to send.
    #[derive(Default)]
    struct Recording(Mutex<Vec<NodeId>>);

    impl Transport for Recording {
        fn attach(&self, _: Inbox) {}
        fn send(&self, messages: Vec<Message>) {
            self.0.lock().extend(messages.iter().map(|m| m.to));
        }
        fn send_snapshot(&self, _: Message, _: SnapshotReader) {
            unreachable!("the hook never streams a snapshot")
        }
        fn forward(&self, _: NodeId, _: Bytes, _: ProposalReply) {}
    }

    fn message(to: NodeId, body: Body) -> Message {
        Message {
            from: 1,
            to,
            term: 1,
            body,
        }
    }

    #[test]
    fn the_writer_hook_sends_all_but_snapshots_and_nothing_once_halted() {
        let transport = Arc::new(Recording::default());
        let halted = Arc::new(Halt::default());
        let mut send = send_when_durable(transport.clone(), halted.clone());
        let vote = || Body::VoteResponse { granted: true };
        let snapshot = || Body::Snapshot {
            snapshot: SnapshotMeta::default(),
        };

        let mut waiting = vec![message(2, vote()), message(3, vote())];
        send(&mut waiting);
        assert!(waiting.is_empty());
        let mut waiting = vec![message(4, snapshot()), message(5, vote())];
        send(&mut waiting);
        assert_eq!(waiting.len(), 1, "the snapshot stays for the driver");
        assert_eq!(waiting[0].to, 4);
        assert_eq!(*transport.0.lock(), [2, 3, 5]);

        halted.halt("stopped by the test");
        let mut waiting = vec![message(6, vote())];
        send(&mut waiting);
        assert_eq!(waiting.len(), 1, "a stopped node sends nothing");
        assert_eq!(*transport.0.lock(), [2, 3, 5]);
    }

    #[test]
    fn a_snapshot_report_is_kept_when_the_queue_drops_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (inbound, queue) = crossbeam_channel::bounded(1);
        let (snapshot_reports, reports) = crossbeam_channel::unbounded();
        let (proposals, _proposals) = crossbeam_channel::bounded(1);
        let inbox = Inbox {
            id: 1,
            inbound,
            snapshot_reports,
            proposals,
            max_proposal_bytes: 1024,
            metrics: Arc::default(),
            store: SnapshotStore::open(dir.path(), false, RecordedSnapshot::default()).unwrap(),
        };
        let vote = || Body::VoteResponse { granted: true };
        inbox.deliver(message(1, vote()));
        inbox.deliver(message(1, vote())); // The queue is full: dropped, Raft resends it.
        let snapshot = SnapshotMeta {
            index: 9,
            ..SnapshotMeta::default()
        };
        inbox.snapshot_sent(&message(2, Body::Snapshot { snapshot }), false);
        assert_eq!(queue.len(), 1);
        let report = SnapshotReport {
            to: 2,
            index: 9,
            delivered: false,
        };
        assert_eq!(reports.try_recv(), Ok(report));
    }
}
