//! Snapshot streaming over real QUIC: a snapshot hundreds of chunks long reaches a lagging
//! follower with only a few chunks in memory at either end, and a transfer broken mid-stream (or
//! refused) leaves no file behind while a later one succeeds.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, localhost, node_config, quic_config, Cluster, Rogue, WAIT};
use keel_engine::core::{Body, Membership, Message, SnapshotMeta};
use keel_engine::kv::{KvCommand, KvStore};
use keel_engine::node::{Command, Node, StateMachine};
use keel_transport_quic::certs::DevCa;
use keel_transport_quic::frame::{self, encode_contiguous, FrameKind, StreamKind};
use keel_transport_quic::wire::WireSnapshotOffer;
use keel_transport_quic::{FrameRejection, QuicTransport};

const CHUNK_BYTES: usize = 64 << 10;
/// What one transfer may hold in memory: the chunk being read, the queue between disk and
/// network (two chunks), and the chunk being written.
const HELD_BYTES_MAX: u64 = 4 * CHUNK_BYTES as u64;

/// The files in a node's snapshot directory.
fn snapshot_files(node_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node_dir.join("snapshots"))
        .map(|dir| {
            dir.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_snapshot_of_hundreds_of_chunks_streams_with_a_few_in_memory() {
    let mut cluster = Cluster::with(
        &[1, 2, 3],
        &[],
        |n| n.snapshot_threshold_entries = 16,
        |q| q.snapshot_chunk_bytes = CHUNK_BYTES,
    );
    let leader = cluster.leader();
    let follower = cluster.follower();
    cluster.stop(follower);
    // 48 values of 512 KiB: a snapshot of about 24 MiB, 384 chunks.
    let keys = 48;
    let value = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; 512 << 10]);
    let mut last = 0;
    for i in 0..keys {
        last = cluster
            .node(leader)
            .put(format!("key-{i:03}"), value(i), WAIT)
            .expect("put");
    }
    // Snapshots come at 85-100% of 16 entries, then once the entries since the last one are
    // about as large as it was: by the 48th put the leader has taken its second, at index 24
    // or later, whatever its id.
    eventually("the leader snapshots half of the keys", || {
        cluster
            .node(leader)
            .status()
            .expect("status")
            .snapshot_index
            >= 24
    });
    cluster.restart(follower);
    cluster.converge(last);

    let status = cluster.node(follower).status().expect("status");
    assert!(
        status.snapshot_index >= 24,
        "the follower installed the leader's snapshot: {status:?}"
    );
    {
        let state = cluster.node(follower).state_machine();
        assert_eq!(state.len(), keys);
        for i in 0..keys {
            assert_eq!(state.get(format!("key-{i:03}").as_bytes()), Some(value(i)));
        }
    }
    let received = cluster.transport(follower).metrics().snapshot();
    assert!(
        // At least 24 entries' worth (the snapshot at index 24 or later): 12 MiB in 64 KiB chunks,
        // less the leader's few entries that are not puts.
        received.peers[&leader].snapshot_chunks_received >= 160,
        "the snapshot came in many chunks: {:?}",
        received.peers[&leader]
    );
    // Neither end ever held more than a few chunks of it.
    let sent = cluster.transport(leader).metrics().snapshot();
    for (side, metrics) in [("receiver", &received), ("sender", &sent)] {
        assert!(
            metrics.snapshot_bytes_held_peak > 0
                && metrics.snapshot_bytes_held_peak <= HELD_BYTES_MAX,
            "the {side} held at most {HELD_BYTES_MAX} bytes: {metrics:?}"
        );
        assert_eq!(
            metrics.snapshot_bytes_held, 0,
            "the {side} released them all"
        );
    }
    let follower_dir = cluster.dir.path().join(format!("node-{follower}"));
    let files = snapshot_files(&follower_dir);
    // A snapshot the follower retired may still be on its way out (`.snap.dead`).
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".snap") || f.ends_with(".snap.dead")),
        "only complete snapshots remain: {files:?}"
    );
}

/// A node that counts peer 1 among its voters, with the test playing peer 1.
struct Target {
    node: Node<KvStore>,
    transport: Arc<QuicTransport>,
    rogue: Rogue,
    /// Last: removed once the node has stopped.
    dir: tempfile::TempDir,
}

impl Target {
    fn start() -> Self {
        common::init_logs();
        let ca = DevCa::generate("snapshot test").expect("CA");
        let rogue = Rogue::new(&ca.issue_node(1).expect("cert").identity, &ca);
        let identity = ca.issue_node(2).expect("cert").identity;
        let mut cfg = quic_config(2, localhost(), identity, &ca);
        cfg.snapshot_chunk_bytes = CHUNK_BYTES;
        cfg.snapshot_bytes_max = 64 << 20;
        let transport = QuicTransport::start(cfg).expect("transport");
        transport.set_peer(1, rogue.addr());
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::start(
            node_config(2, &[1, 2]),
            dir.path(),
            transport.clone(),
            KvStore::default(),
        )
        .expect("node");
        Self {
            node,
            transport,
            rogue,
            dir,
        }
    }

    fn files(&self) -> Vec<String> {
        snapshot_files(self.dir.path())
    }

    /// Opens a snapshot stream on a fresh connection and sends the offer for `total_bytes`.
    fn offer(&self, total_bytes: u64) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
        let conn = self
            .rogue
            .dial(2, self.transport.local_addr())
            .expect("dial");
        let message = Message {
            from: 1,
            to: 2,
            // Far above any term the node reaches campaigning on its own meanwhile.
            term: 1000,
            body: Body::Snapshot {
                snapshot: SnapshotMeta {
                    index: 10,
                    term: 5,
                    membership: Membership::new([1, 2], std::iter::empty()),
                },
            },
        };
        let offer = WireSnapshotOffer {
            message: (&message).into(),
            total_bytes,
        };
        let offer = frame::archive(&offer).expect("archive");
        let (send, recv) = self.rogue.runtime.block_on(async {
            let (mut send, recv) = conn.open_bi().await.expect("stream");
            send.write_all(&[StreamKind::Snapshot as u8])
                .await
                .expect("kind");
            let offer = encode_contiguous(FrameKind::SnapshotOffer, &offer).expect("frame");
            send.write_all(&offer).await.expect("offer");
            (send, recv)
        });
        (conn, send, recv)
    }

    fn send_chunks(&self, send: &mut quinn::SendStream, data: &[u8]) {
        self.rogue.runtime.block_on(async {
            for chunk in data.chunks(CHUNK_BYTES) {
                let chunk = encode_contiguous(FrameKind::SnapshotChunk, chunk).expect("frame");
                send.write_all(&chunk).await.expect("chunk");
            }
        });
    }
}

/// A key-value snapshot holding `keys` keys, as a leader would send it.
fn kv_snapshot(keys: u64) -> Vec<u8> {
    let mut state = KvStore::default();
    let commands: Vec<Bytes> = (0..keys)
        .map(|i| {
            KvCommand::Put {
                key: format!("key-{i}").into(),
                value: Bytes::from(vec![7; 1000]),
            }
            .encode()
        })
        .collect();
    let commands: Vec<Command<'_>> = commands
        .iter()
        .zip(1..)
        .map(|(data, index)| Command {
            index,
            term: 5,
            data,
        })
        .collect();
    state.apply(&commands).expect("apply");
    let mut out = Vec::new();
    state.snapshot().write_to(&mut out).expect("serialize");
    // A snapshot file ends with its trailer: the data's CRC32C, a magic, the data's length.
    let (crc, len) = (crc32c::crc32c(&out), out.len() as u64);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(b"KSNP");
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// Sends `data` as a whole snapshot on a new connection; returns the acknowledgement's byte.
fn send_whole(target: &Target, data: &[u8]) -> u8 {
    let (_conn, mut send, mut recv) = target.offer(data.len() as u64);
    target.send_chunks(&mut send, data);
    let ack = target.rogue.runtime.block_on(async {
        send.finish().expect("finish");
        let ack = tokio::time::timeout(WAIT, frame::read_frame(&mut recv, 1)).await;
        ack.expect("an acknowledgement in time")
            .expect("a valid frame")
            .expect("a frame")
    });
    assert_eq!(ack.kind, FrameKind::SnapshotAck);
    ack.body[0]
}

#[test]
fn a_transfer_broken_mid_stream_leaves_no_file_and_a_retry_installs() {
    let target = Target::start();

    // Half of a 4 MiB snapshot, then the connection drops.
    let (conn, mut send, _recv) = target.offer(4 << 20);
    target.send_chunks(&mut send, &vec![1; 2 << 20]);
    eventually("the received half is written to disk as it arrives", || {
        let files = target.files();
        files.len() == 1
            && files[0].ends_with(".part")
            && std::fs::metadata(target.dir.path().join("snapshots").join(&files[0]))
                .is_ok_and(|m| m.len() >= 1 << 20)
    });
    conn.close(0u32.into(), b"gone");
    eventually("the partial file is removed", || target.files().is_empty());

    // More data than announced is refused as too large, and leaves nothing either.
    let refused_before = target
        .transport
        .metrics()
        .frames_rejected(FrameRejection::TooLarge);
    let (_conn, mut send, _recv) = target.offer(100);
    target.send_chunks(&mut send, &[1; 200]);
    eventually("the overlong snapshot is refused", || {
        target
            .transport
            .metrics()
            .frames_rejected(FrameRejection::TooLarge)
            > refused_before
    });
    eventually("its file is removed", || target.files().is_empty());
    assert_eq!(target.node.status().expect("status").snapshot_index, 0);

    // A whole snapshot damaged on the way (or on the sender's disk) fails its checksum: it is
    // refused, and leaves nothing.
    let data = kv_snapshot(3000); // about 3 MiB, 47 chunks
    let mut damaged = data.clone();
    damaged[data.len() / 2] ^= 0x01;
    assert_eq!(
        send_whole(&target, &damaged),
        0,
        "a damaged snapshot is refused"
    );
    eventually("its file is removed", || target.files().is_empty());
    assert_eq!(target.node.status().expect("status").snapshot_index, 0);

    // A whole snapshot on a new connection is taken, installed and kept.
    assert_eq!(send_whole(&target, &data), 1, "the snapshot is taken");
    // The core takes the snapshot at once; the state machine has it once it is applied.
    eventually("the node installs the snapshot", || {
        target.node.status().expect("status").snapshot_index == 10
    });
    target
        .node
        .wait_applied(10)
        .wait(WAIT)
        .expect("the snapshot is restored");
    assert_eq!(target.node.state_machine().len(), 3000);
    assert_eq!(target.files(), vec![format!("{:020}.snap", 10)]);
    assert_eq!(target.transport.metrics().snapshot().snapshot_bytes_held, 0);
}

#[test]
fn empty_chunks_are_refused_as_malformed() {
    let target = Target::start();
    let (_conn, mut send, _recv) = target.offer(1000);
    target.send_chunks(&mut send, &[1; 100]);
    target.rogue.runtime.block_on(async {
        let empty = encode_contiguous(FrameKind::SnapshotChunk, &[]).expect("frame");
        for _ in 0..3 {
            send.write_all(&empty).await.expect("chunk");
        }
    });
    eventually("the empty chunk is refused", || {
        target
            .transport
            .metrics()
            .frames_rejected(FrameRejection::BadHeader)
            >= 1
    });
    eventually("the partial file is removed", || target.files().is_empty());
}

#[test]
fn an_offer_beyond_the_limit_is_refused_before_any_file_exists() {
    let target = Target::start();
    let (_conn, mut send, _recv) = target.offer(65 << 20);
    target.send_chunks(&mut send, &[1; 1000]);
    eventually("the offer is refused", || {
        target
            .transport
            .metrics()
            .frames_rejected(FrameRejection::TooLarge)
            >= 1
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(target.files().is_empty());
}
