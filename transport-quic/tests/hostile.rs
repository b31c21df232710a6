//! Hostile peers on real connections (foreign CAs, expired or misnamed certificates, malformed
//! frames, frames claiming another node's id, a flood of streams) and a fuzz-style run of the
//! frame decoder. Each refusal is asserted by its counted reason, and the cluster keeps serving,
//! also while a client's read waits for the state machine.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, Cluster, Rogue, WAIT};
use keel_engine::core::{Body, Entry, Membership, Message, Payload, SnapshotMeta};
use keel_engine::kv::KvCommand;
use keel_transport_quic::certs::{node_dns_name, DevCa, Validity};
use keel_transport_quic::codec::{encode_batch, validate_frame};
use keel_transport_quic::frame::{
    archive, encode_contiguous, expect_frame, FrameKind, StreamKind, FORMAT_VERSION,
};
use keel_transport_quic::wire::{ArchivedWireKvResponse, WireKvRequest};
use keel_transport_quic::{FrameRejection, HandshakeRefusal};
use rand::{Rng, RngCore, SeedableRng};

/// Dials and expects to be refused, during or right after the handshake; returns why.
fn dial_refused(rogue: &Rogue, id: u64, addr: std::net::SocketAddr) -> String {
    match rogue.dial(id, addr) {
        Err(e) => e,
        Ok(conn) => rogue.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), conn.closed())
                .await
                .expect("a refused connection is closed promptly")
                .to_string()
        }),
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused_both_ways() {
    let cluster = Cluster::new(&[1, 2, 3]);
    cluster.leader();
    let other = DevCa::generate("another CA").expect("CA");

    // Dialling in with a certificate another CA signed (the rogue trusts the cluster CA, so the
    // handshake gets as far as presenting its certificate).
    let rogue = Rogue::new(&other.issue_node(1).expect("cert").identity, &cluster.ca);
    let why = dial_refused(&rogue, 3, cluster.addrs[&3]);
    assert!(
        why.contains("certificate") || why.contains("alert"),
        "{why}"
    );
    eventually("node 3 refuses an unknown CA", || {
        cluster
            .transport(3)
            .metrics()
            .handshakes_refused(HandshakeRefusal::UnknownCa)
            >= 1
    });

    // Being dialled by a member and answering with a foreign certificate.
    let impostor = Rogue::new(&other.issue_node(4).expect("cert").identity, &cluster.ca);
    impostor.serve();
    cluster.transport(1).set_peer(4, impostor.addr());
    eventually("node 1 refuses an unknown CA", || {
        cluster
            .transport(1)
            .metrics()
            .handshakes_refused(HandshakeRefusal::UnknownCa)
            >= 1
    });
    assert!(!cluster.transport(1).connected_peers().contains(&4));
    cluster.transport(1).remove_peer(4);

    // The right CA, but expired.
    let expired = cluster
        .ca
        .issue(&node_dns_name(1), Validity::expired())
        .expect("cert");
    let rogue = Rogue::new(&expired.identity, &cluster.ca);
    dial_refused(&rogue, 2, cluster.addrs[&2]);
    eventually("node 2 refuses an expired certificate", || {
        cluster
            .transport(2)
            .metrics()
            .handshakes_refused(HandshakeRefusal::Expired)
            >= 1
    });

    // Nothing the rogues sent reached a node, and the cluster goes on.
    let leader = cluster.leader();
    cluster
        .node(leader)
        .put("still", "serving", WAIT)
        .expect("put");
}

#[test]
fn a_valid_certificate_for_another_id_is_refused() {
    let cluster = Cluster::new(&[1, 2, 3]);
    cluster.leader();

    // Node 1 dials "node 4", but what answers holds a (valid) certificate for node 5.
    let impostor = Rogue::new(
        &cluster.ca.issue_node(5).expect("cert").identity,
        &cluster.ca,
    );
    impostor.serve();
    cluster.transport(1).set_peer(4, impostor.addr());
    eventually("node 1 refuses a certificate for another id", || {
        cluster
            .transport(1)
            .metrics()
            .handshakes_refused(HandshakeRefusal::WrongId)
            >= 1
    });
    assert!(!cluster.transport(1).connected_peers().contains(&4));
    cluster.transport(1).remove_peer(4);

    // A dialler whose certificate names a node nobody knows.
    let before = cluster
        .transport(3)
        .metrics()
        .handshakes_refused(HandshakeRefusal::UnknownPeer);
    let stranger = Rogue::new(
        &cluster.ca.issue_node(9).expect("cert").identity,
        &cluster.ca,
    );
    let why = dial_refused(&stranger, 3, cluster.addrs[&3]);
    assert!(why.contains("unknown_peer"), "{why}");
    eventually("node 3 refuses an unknown node id", || {
        cluster
            .transport(3)
            .metrics()
            .handshakes_refused(HandshakeRefusal::UnknownPeer)
            > before
    });

    // A dialler claiming a higher id than the node it dials (the lower id of a pair dials).
    let higher = Rogue::new(
        &cluster.ca.issue_node(3).expect("cert").identity,
        &cluster.ca,
    );
    let why = dial_refused(&higher, 2, cluster.addrs[&2]);
    assert!(why.contains("not_dialer"), "{why}");
    assert!(
        cluster
            .transport(2)
            .metrics()
            .handshakes_refused(HandshakeRefusal::NotDialer)
            >= 1
    );

    let leader = cluster.leader();
    cluster
        .node(leader)
        .put("still", "serving", WAIT)
        .expect("put");
}

/// Forwards datagrams to `to` and drops every answer, until `stop`: a handshake through it never
/// finishes. Returns where to send.
fn one_way_proxy(
    to: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let front = std::net::UdpSocket::bind("127.0.0.1:0").expect("bound");
    let back = std::net::UdpSocket::bind("127.0.0.1:0").expect("bound");
    front
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let addr = front.local_addr().expect("bound");
    let forwarding = std::thread::spawn(move || {
        let mut datagram = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, _)) = front.recv_from(&mut datagram) {
                let _ = back.send_to(&datagram[..len], to);
                forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, forwarding)
}

#[test]
fn a_connection_beyond_the_handshakes_under_way_is_refused() {
    // Anyone can start a handshake, and each costs a key exchange and a task until it times out.
    let cluster = Cluster::with(&[1, 2, 3], &[], |_| {}, |q| q.handshakes_max = 1);
    cluster.leader();
    // Nodes 1 and 2 dial node 3: their handshakes must be over before the turn is taken.
    eventually("node 3 is connected to both peers", || {
        cluster.transport(3).connected_peers().len() == 2
    });
    let metrics = cluster.transport(3).metrics().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(AtomicU64::new(0));
    let (proxy, forwarding) = one_way_proxy(cluster.addrs[&3], stop.clone(), forwarded.clone());
    let stalled = Rogue::new(
        &cluster.ca.issue_client().expect("cert").identity,
        &cluster.ca,
    );
    let stalling = std::thread::spawn(move || stalled.dial(3, proxy));
    // The stalled handshake holds node 3's one turn until its handshake timeout (2 s).
    eventually("the stalled dial reaches node 3", || {
        forwarded.load(Ordering::Relaxed) > 0
    });
    std::thread::sleep(Duration::from_millis(100));
    let client = || {
        Rogue::new(
            &cluster.ca.issue_client().expect("cert").identity,
            &cluster.ca,
        )
    };
    let Err(why) = client().dial(3, cluster.addrs[&3]) else {
        panic!("a connection beyond handshakes_max was taken");
    };
    assert!(
        metrics.handshakes_refused(HandshakeRefusal::TooManyHandshakes) >= 1,
        "refused, but not counted: {why}"
    );
    let stalled = stalling.join().expect("the stalled dial ends");
    assert!(stalled.is_err(), "a handshake with no answers finished");
    eventually(
        "node 3 takes a connection once the stalled handshake ends",
        || client().dial(3, cluster.addrs[&3]).is_ok(),
    );
    stop.store(true, Ordering::Relaxed);
    forwarding.join().expect("the proxy stops");
}

fn header(len: u32, version: u8, kind: u8) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend_from_slice(&[version, kind, 0, 0]);
    h
}

fn heartbeat(from: u64, to: u64) -> Message {
    Message {
        from,
        to,
        term: 0,
        body: Body::Heartbeat {
            commit: 0,
            lease_tick: 0,
            read_seq: 0,
        },
    }
}

fn messages_frame(messages: &[Message]) -> Vec<u8> {
    encode_contiguous(
        FrameKind::Messages,
        &encode_batch(messages).expect("encodes"),
    )
    .expect("frame")
}

#[test]
fn malformed_frames_close_only_their_stream_and_the_node_keeps_serving() {
    const STREAMS_UNI_MAX: u32 = 8;
    // Voters 2, 3, 4; node 1 is a known peer (the lowest id, so it dials) that the test plays
    // with node 1's genuine certificate.
    let unused = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let cluster = Cluster::with(
        &[2, 3, 4],
        &[(1, unused)],
        |_| {},
        |q| {
            q.frame_bytes_max = 1 << 20;
            q.batch_bytes_max = 1 << 19;
            q.streams_uni_max = STREAMS_UNI_MAX;
        },
    );
    let leader = cluster.leader();
    let (rogue, conn) = Rogue::peer_of(&cluster, 1, 3);

    // Healthy traffic goes on throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let writer = {
        let (node, stop, puts) = (cluster.node(leader).clone(), stop.clone(), puts.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 10_000 {
                node.put(format!("k{i}"), "v", WAIT)
                    .expect("healthy peers are served");
                puts.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    let replication = StreamKind::Replication as u8;
    let mut garbage = vec![replication];
    garbage.extend_from_slice(&[0x5a, 0x11, 0, 0, 0xEE, 0x42, 7, 7, 1, 2, 3, 4]);
    let mut oversized = vec![replication];
    oversized.extend(header(
        u32::MAX - 8,
        FORMAT_VERSION,
        FrameKind::Messages as u8,
    ));
    let mut truncated = vec![replication];
    let valid = messages_frame(&[heartbeat(1, 3)]);
    truncated.extend_from_slice(&valid[..valid.len() - 10]);
    let mut invalid = vec![replication];
    invalid.extend(header(64, FORMAT_VERSION, FrameKind::Messages as u8));
    invalid.extend([0xFF; 64]);
    let mut bad_version = vec![StreamKind::Control as u8];
    bad_version.extend(header(8, FORMAT_VERSION + 1, FrameKind::Messages as u8));
    bad_version.extend([0; 8]);
    let mut wrong_kind = vec![StreamKind::Control as u8];
    wrong_kind.extend(header(1, FORMAT_VERSION, FrameKind::SnapshotAck as u8));
    wrong_kind.push(1);
    let mut claims_node_2 = vec![StreamKind::Control as u8];
    claims_node_2.extend(messages_frame(&[heartbeat(2, 3)]));
    let mut for_node_4 = vec![StreamKind::Control as u8];
    for_node_4.extend(messages_frame(&[heartbeat(1, 4)]));
    let unknown_stream = vec![0x63, 1, 2, 3];
    // A snapshot travels only as a transfer with its data; announced in a frame of messages, it
    // had the node install a snapshot it had no data for, and stop.
    let mut snapshot_without_data = vec![StreamKind::Control as u8];
    snapshot_without_data.extend(messages_frame(&[Message {
        from: 1,
        to: 3,
        term: 1000,
        body: Body::Snapshot {
            snapshot: SnapshotMeta {
                index: 10,
                term: 1000,
                membership: Membership::new([1, 2, 3, 4], []),
            },
        },
    }]));

    let cases: Vec<(&str, Vec<u8>, FrameRejection)> = vec![
        ("garbage", garbage, FrameRejection::BadHeader),
        ("oversized length", oversized, FrameRejection::TooLarge),
        ("truncated archive", truncated, FrameRejection::Truncated),
        ("invalid archive", invalid, FrameRejection::InvalidArchive),
        ("another version", bad_version, FrameRejection::BadHeader),
        (
            "a frame kind out of place",
            wrong_kind,
            FrameRejection::UnexpectedKind,
        ),
        (
            "claims to be node 2",
            claims_node_2,
            FrameRejection::WrongSender,
        ),
        (
            "addressed to node 4",
            for_node_4,
            FrameRejection::WrongRecipient,
        ),
        (
            "unknown stream kind",
            unknown_stream,
            FrameRejection::UnexpectedKind,
        ),
        (
            "a snapshot without its data",
            snapshot_without_data,
            FrameRejection::UnexpectedKind,
        ),
    ];
    let metrics = cluster.transport(3).metrics().clone();
    for (what, bytes, reason) in cases {
        let before = metrics.frames_rejected(reason);
        rogue.runtime.block_on(async {
            let mut s = conn.open_uni().await.expect("a stream");
            s.write_all(&bytes).await.expect("written");
            let _ = s.finish();
            // Wait for the node to stop the stream: it refused the frame.
            let _ = tokio::time::timeout(Duration::from_secs(5), s.stopped()).await;
        });
        eventually(&format!("{what} is refused as {}", reason.name()), || {
            metrics.frames_rejected(reason) > before
        });
    }

    // A flood of streams, each left open: the node grants a bounded number at a time; the rest
    // wait for credit on the rogue's side, and nobody else notices.
    let flood = rogue.runtime.block_on(async {
        let mut open = Vec::new();
        for _ in 0..64 {
            let opened = tokio::time::timeout(Duration::from_millis(200), conn.open_uni()).await;
            let Ok(Ok(mut s)) = opened else { break };
            let _ = s.write_all(&[replication]).await;
            open.push(s);
        }
        open
    });
    assert!(
        (1..=STREAMS_UNI_MAX as usize).contains(&flood.len()),
        "{} streams opened at once, {STREAMS_UNI_MAX} granted",
        flood.len()
    );
    drop(flood);

    // The connection itself survived its bad streams: a valid frame from node 1 is accepted.
    let received = || metrics.snapshot().peers[&1].frames_received;
    let before = received();
    let rejected_before: u64 = metrics.snapshot().frames_rejected.values().sum();
    rogue.runtime.block_on(async {
        let mut s = conn.open_uni().await.expect("a stream");
        let mut bytes = vec![StreamKind::Control as u8];
        bytes.extend(messages_frame(&[heartbeat(1, 3)]));
        s.write_all(&bytes).await.expect("written");
        let _ = s.finish();
    });
    eventually("a valid frame is received", || received() > before);
    let rejected_after: u64 = metrics.snapshot().frames_rejected.values().sum();
    assert_eq!(
        rejected_before, rejected_after,
        "the valid frame was not refused"
    );

    let progress = puts.load(Ordering::Relaxed);
    eventually("healthy traffic goes on", || {
        puts.load(Ordering::Relaxed) > progress + 10
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer never failed");
    let index = cluster
        .node(leader)
        .put("after", "attack", WAIT)
        .expect("put");
    cluster.converge(index);
}

/// Nodes 2, 3 and 4, whose address books also name node 1; the test plays node 1 with its
/// genuine certificate, connected to node 3.
fn played_peer_1(
    quic_tweak: fn(&mut keel_transport_quic::QuicConfig),
) -> (Cluster, Rogue, quinn::Connection) {
    let unused = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let cluster = Cluster::with(&[2, 3, 4], &[(1, unused)], |_| {}, quic_tweak);
    let (rogue, conn) = Rogue::peer_of(&cluster, 1, 3);
    (cluster, rogue, conn)
}

/// Opens a `stream` and sends only the header of its first frame, a `kind` of `len` bytes.
async fn announce(
    conn: &quinn::Connection,
    stream: StreamKind,
    kind: FrameKind,
    len: u32,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("a stream");
    let mut bytes = vec![stream as u8];
    bytes.extend(header(len, FORMAT_VERSION, kind as u8));
    send.write_all(&bytes).await.expect("written");
    (send, recv)
}

#[test]
fn a_snapshot_offer_announced_larger_than_an_offer_is_refused_from_its_header() {
    let (cluster, rogue, conn) = played_peer_1(|_| {});
    let metrics = cluster.transport(3).metrics().clone();
    let before = metrics.frames_rejected(FrameRejection::TooLarge);
    // 8 MiB announced, under a frame's 16 MiB: the node held what came of it, on each stream.
    let offer = announce(
        &conn,
        StreamKind::Snapshot,
        FrameKind::SnapshotOffer,
        8 << 20,
    );
    let _held = rogue.runtime.block_on(offer);
    eventually("the offer is refused as too large", || {
        metrics.frames_rejected(FrameRejection::TooLarge) > before
    });
}

#[test]
fn a_forwarded_proposal_larger_than_the_node_takes_is_refused_from_its_header() {
    use keel_transport_quic::wire::ArchivedWireForwardReply;
    let (cluster, rogue, conn) = played_peer_1(|_| {});
    let metrics = cluster.transport(3).metrics().clone();
    let before = metrics.frames_rejected(FrameRejection::TooLarge);
    // 2 MiB announced: over the node's largest command (1 MiB), under a frame's 16 MiB.
    let announced: u32 = 2 << 20;
    let answer = rogue.runtime.block_on(async {
        let (_send, mut recv) = announce(
            &conn,
            StreamKind::Forward,
            FrameKind::ForwardRequest,
            announced,
        )
        .await;
        let answer = expect_frame(&mut recv, FrameKind::ForwardReply, 1 << 20);
        tokio::time::timeout(WAIT, answer).await
    });
    let answer = answer
        .expect("answered before the body came")
        .expect("a reply frame");
    let reply = keel_transport_quic::frame::access::<ArchivedWireForwardReply>(&answer.body)
        .expect("a valid reply");
    let ArchivedWireForwardReply::Failed { error } = reply else {
        panic!("a refusal expected");
    };
    let error = error.to_node();
    assert!(
        matches!(error, keel_engine::node::Error::TooLarge { size_bytes, .. }
            if size_bytes == announced as usize),
        "{error}"
    );
    eventually("the request is counted as too large", || {
        metrics.frames_rejected(FrameRejection::TooLarge) > before
    });
}

#[test]
fn a_peer_that_stalls_inside_a_snapshot_offer_or_a_forwarded_proposal_is_given_up_on() {
    let (cluster, rogue, conn) = played_peer_1(|q| q.handshake_timeout = Duration::from_secs(1));
    let metrics = cluster.transport(3).metrics().clone();
    let idle_before = metrics.frames_rejected(FrameRejection::Idle);
    // Each stream announces its first frame and sends half of it.
    let stalled = [
        (StreamKind::Snapshot, FrameKind::SnapshotOffer),
        (StreamKind::Forward, FrameKind::ForwardRequest),
    ];
    let _held = rogue.runtime.block_on(async {
        let mut held = Vec::new();
        for (stream, kind) in stalled {
            let (mut send, recv) = announce(&conn, stream, kind, 1000).await;
            send.write_all(&[0; 500]).await.expect("written");
            held.push((send, recv));
        }
        held
    });
    eventually("both stalled streams are given up on", || {
        metrics.frames_rejected(FrameRejection::Idle) >= idle_before + 2
    });
}

#[test]
fn a_malformed_or_oversized_key_value_request_is_answered_as_refused_and_counted() {
    use keel_engine::node::Error;
    let cluster = Cluster::new(&[1, 2, 3]);
    let leader = cluster.leader();
    let (client, conn) = Rogue::kv_client_of(&cluster, leader);
    let metrics = cluster.transport(leader).metrics().clone();
    let malformed = encode_contiguous(FrameKind::KvRequest, &[0xFF; 64]).expect("frame");
    // Only a header, announcing twice the largest command the node takes (1 MiB) and less than
    // a frame may carry (16 MiB): refused before any of it is read.
    let announced = 2 << 20;
    let oversized =
        keel_transport_quic::frame::FrameHeader::encode(FrameKind::KvRequest, announced)
            .expect("header")
            .to_vec();
    type Check = fn(&Error) -> bool;
    let cases: [(&str, Vec<u8>, FrameRejection, Check); 2] = [
        (
            "malformed",
            malformed,
            FrameRejection::InvalidArchive,
            |e| matches!(e, Error::Config(why) if why.contains("malformed")),
        ),
        (
            "oversized",
            oversized,
            FrameRejection::TooLarge,
            |e| matches!(e, Error::TooLarge { size_bytes, .. } if *size_bytes == 2 << 20),
        ),
    ];
    for (what, request, rejection, expected) in cases {
        let before = metrics.frames_rejected(rejection);
        let answer = client.runtime.block_on(async {
            let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&request).await.expect("written");
            let _ = send.finish();
            tokio::time::timeout(
                WAIT,
                keel_transport_quic::frame::expect_frame(&mut recv, FrameKind::KvResponse, 1 << 20),
            )
            .await
            .expect("answered in time")
            .expect("a response frame")
        });
        // A definite refusal: without it the client could not tell whether a write took effect.
        let response = keel_transport_quic::frame::access::<ArchivedWireKvResponse>(&answer.body)
            .expect("a valid response");
        match response {
            ArchivedWireKvResponse::Failed { error } => {
                let error = error.to_node();
                assert!(expected(&error), "{what}: {error}");
            }
            _ => panic!("{what}: expected a refusal"),
        }
        eventually(&format!("the {what} request is counted"), || {
            metrics.frames_rejected(rejection) > before
        });
    }
}

/// Threads of node `id`'s transport runtime: its workers, and the threads blocking calls hold.
/// (By name: a test that counts them gives its cluster ids no other test uses.)
fn transport_threads(id: u64) -> usize {
    let name = format!("keel-quic-{id}");
    std::fs::read_dir("/proc/self/task")
        .expect("this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn key_value_requests_that_need_not_wait_take_no_thread_of_their_own() {
    let cluster = Cluster::new(&[61, 62, 63]);
    let leader = cluster.leader();
    let (client, conn) = Rogue::kv_client_of(&cluster, leader);
    let put = small_put();
    client.runtime.block_on(async {
        let mut answers = Vec::new();
        for _ in 0..64 {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&put).await.expect("written");
            let _ = send.finish();
            answers.push(recv);
        }
        for mut recv in answers {
            let answer = expect_frame(&mut recv, FrameKind::KvResponse, 1 << 20);
            let answer = tokio::time::timeout(WAIT, answer)
                .await
                .expect("answered in time");
            assert_applied(&answer.expect("a response frame"));
        }
    });
    // Each put handed the runtime's worker to another thread (`block_in_place`) in case the
    // proposal queue was full, and the blocking pool kept those threads: under load, hundreds
    // of them, and a thread hand-off per request.
    assert_eq!(
        transport_threads(leader),
        1,
        "only the runtime's one worker"
    );
}

#[test]
fn reads_waiting_for_the_state_machine_leave_the_node_serving_and_hold_few_threads() {
    const READS: usize = 16;
    let cluster = Cluster::new(&[71, 72, 73]);
    let leader = cluster.leader();
    let node = cluster.node(leader).clone();
    node.put("k", "v", WAIT).expect("put");
    let (client, conn) = Rogue::kv_client_of(&cluster, leader);
    // The applier waits for the state machine this test reads, as it waits for a long restore;
    // a reader that comes after a waiting writer waits too.
    let held = node.state_machine();
    let before = node.status().expect("status").commit_index;
    let _waits = node.propose(
        KvCommand::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"w"),
        }
        .encode(),
    );
    eventually("the write commits", || {
        node.status().expect("status").commit_index > before
    });
    std::thread::sleep(Duration::from_millis(100));
    let read = archive(&WireKvRequest::Read {
        key: Bytes::from_static(b"k"),
        consistency: 2, // Local: read at once, without asking the leader.
    })
    .expect("archived");
    let read = encode_contiguous(FrameKind::KvRequest, &read).expect("frame");
    let malformed = encode_contiguous(FrameKind::KvRequest, &[0xFF; 64]).expect("frame");
    let reads = client.runtime.block_on(async {
        let mut reads = Vec::new();
        for _ in 0..READS {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&read).await.expect("written");
            let _ = send.finish();
            reads.push(recv);
        }
        reads
    });
    // Each waiting read used to hold a thread of its own: one per read behind a long restore.
    let most = 1 + keel_transport_quic::BLOCKING_CALLS_MAX;
    eventually("the reads wait for the state machine", || {
        transport_threads(leader) >= most
    });
    let refused = client.runtime.block_on(async {
        // A request that needs no state machine is answered meanwhile.
        let (mut send, mut other) = conn.open_bi().await.expect("a stream");
        send.write_all(&malformed).await.expect("written");
        let _ = send.finish();
        tokio::time::timeout(
            Duration::from_secs(2),
            expect_frame(&mut other, FrameKind::KvResponse, 1 << 20),
        )
        .await
    });
    assert!(
        matches!(refused, Ok(Ok(_))),
        "the node stopped serving while reads waited: {refused:?}"
    );
    let threads = transport_threads(leader);
    assert!(
        threads <= most,
        "{READS} waiting reads hold {threads} threads"
    );
    drop(held);
    for mut read in reads {
        let answer = client
            .runtime
            .block_on(async {
                let read = expect_frame(&mut read, FrameKind::KvResponse, 1 << 20);
                tokio::time::timeout(WAIT, read).await
            })
            .expect("answered in time")
            .expect("a response frame");
        let response = keel_transport_quic::frame::access::<ArchivedWireKvResponse>(&answer.body)
            .expect("a valid response");
        assert!(
            matches!(response, ArchivedWireKvResponse::Value { .. }),
            "a read is answered once the state machine is free"
        );
    }
}

/// The key-value request budget of [`cluster_with_a_kv_budget`].
const KV_BUDGET: usize = 128 << 10;

/// Three nodes whose key-value requests share [`KV_BUDGET`] bytes, and give up on a request
/// or an answer after 3 s.
fn cluster_with_a_kv_budget() -> Cluster {
    Cluster::with(
        &[1, 2, 3],
        &[],
        |_| {},
        |q| {
            q.kv_request_bytes_max = KV_BUDGET;
            q.handshake_timeout = Duration::from_secs(3);
        },
    )
}

/// A key-value request frame that puts a small value.
fn small_put() -> Vec<u8> {
    let command = KvCommand::Put {
        key: Bytes::from_static(b"small"),
        value: Bytes::from_static(b"put"),
    }
    .encode();
    let body = archive(&WireKvRequest::Propose { command }).expect("archived");
    encode_contiguous(FrameKind::KvRequest, &body).expect("frame")
}

/// Panics unless `answer` says a put was applied.
fn assert_applied(answer: &keel_transport_quic::frame::Frame) {
    let response = keel_transport_quic::frame::access::<ArchivedWireKvResponse>(&answer.body)
        .expect("a valid response");
    match response {
        ArchivedWireKvResponse::Applied { .. } => {}
        ArchivedWireKvResponse::Failed { error } => {
            panic!("the put was refused: {}", error.to_node())
        }
        _ => panic!("a put answered with a value"),
    }
}

#[test]
fn key_value_requests_held_at_once_are_bounded_in_bytes_across_streams() {
    let cluster = cluster_with_a_kv_budget();
    let leader = cluster.leader();
    let (client, conn) = Rogue::kv_client_of(&cluster, leader);
    let metrics = cluster.transport(leader).metrics().clone();
    let put = small_put();
    let announced = u32::try_from(KV_BUDGET / 4).expect("small");
    let header = |len: u32| {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[FORMAT_VERSION, FrameKind::KvRequest as u8, 0, 0]);
        bytes
    };
    let put_answered_within = |wait: Duration| {
        client.runtime.block_on(async {
            let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&put).await.expect("written");
            let _ = send.finish();
            let read = expect_frame(&mut recv, FrameKind::KvResponse, 1 << 20);
            tokio::time::timeout(wait, read).await.is_ok()
        })
    };
    // Headers alone, announcing four times the budget, hold none of it.
    let _announced_only = client.runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..16 {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&header(announced)).await.expect("written");
            held.push((send, recv));
        }
        // Time for the node to read every header first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        held
    });
    // Well before those headers' streams are given up on (3 s from their start).
    assert!(
        put_answered_within(Duration::from_secs(2)),
        "a put waited behind requests that were only announced"
    );
    let idle_before = metrics.frames_rejected(FrameRejection::Idle);
    // Four requests of a quarter of the budget each, sent but for their last byte: the budget
    // is full until the node gives up on them.
    let _stalled = client.runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            let mut bytes = header(announced);
            bytes.resize(bytes.len() + KV_BUDGET / 4 - 1, 0);
            send.write_all(&bytes).await.expect("written");
            held.push((send, recv));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        held
    });
    // A small put, whole, on a stream of its own: it waits for room, unread.
    let (answered_early, answer) = client.runtime.block_on(async {
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        send.write_all(&put).await.expect("written");
        let _ = send.finish();
        let read = expect_frame(&mut recv, FrameKind::KvResponse, 1 << 20);
        tokio::pin!(read);
        match tokio::time::timeout(Duration::from_secs(1), &mut read).await {
            Ok(answer) => (true, Ok(answer)),
            Err(_) => (false, tokio::time::timeout(WAIT, read).await),
        }
    });
    assert!(
        !answered_early,
        "a request was served while the budget was full"
    );
    // The stalled requests were given up on, which freed their room for the put.
    assert!(metrics.frames_rejected(FrameRejection::Idle) >= idle_before + 4);
    assert_applied(&answer.expect("answered in time").expect("a response frame"));
}

#[test]
fn requests_that_together_outgrow_the_budget_all_finish_none_waits_out_the_timeout() {
    let cluster = cluster_with_a_kv_budget();
    let leader = cluster.leader();
    let (client, conn) = Rogue::kv_client_of(&cluster, leader);
    // Eight puts of 3/8 of the budget each, sent at once: their bytes arrive interleaved, so
    // each takes part of the budget before any is whole. Waiting for more room while holding
    // part of it, each would wait for room only the others hold, until given up on (3 s).
    let puts: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let command = KvCommand::Put {
                key: Bytes::from(format!("large-{i}")),
                value: Bytes::from(vec![b'v'; KV_BUDGET * 3 / 8]),
            }
            .encode();
            let body = archive(&WireKvRequest::Propose { command }).expect("archived");
            encode_contiguous(FrameKind::KvRequest, &body).expect("frame")
        })
        .collect();
    let answers = client.runtime.block_on(async {
        let tasks: Vec<_> = puts
            .into_iter()
            .map(|put| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
                    send.write_all(&put).await.expect("written");
                    let _ = send.finish();
                    // Well before a stuck request is given up on (3 s).
                    let read = expect_frame(&mut recv, FrameKind::KvResponse, 1 << 20);
                    tokio::time::timeout(Duration::from_secs(2), read).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.expect("the put's task ran"));
        }
        answers
    });
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap_or_else(|_| panic!("put {i} waited for room for good"));
        assert_applied(&answer.expect("a response frame"));
    }
}

#[test]
fn a_client_that_never_reads_its_answers_holds_no_request_room() {
    let cluster = cluster_with_a_kv_budget();
    let leader = cluster.leader();
    // A key as large as the whole budget, under a value larger than the client will take.
    let key = Bytes::from(vec![b'k'; KV_BUDGET]);
    let value = Bytes::from(vec![b'v'; 256 << 10]);
    let put = KvCommand::Put {
        key: key.clone(),
        value,
    }
    .encode();
    cluster
        .node(leader)
        .propose(put)
        .wait_applied(WAIT)
        .expect("the large value is stored");
    let (mut sluggish, _) = Rogue::kv_client_of(&cluster, leader);
    let mut transport = quinn::TransportConfig::default();
    // Less than any answer: not even a refusal fits.
    transport.stream_receive_window(quinn::VarInt::from_u32(16));
    sluggish.client.transport_config(Arc::new(transport));
    let conn = sluggish
        .dial(leader, cluster.addrs[&leader])
        .expect("dials");
    let read = archive(&WireKvRequest::Read {
        key,
        consistency: 2, // Local
    })
    .expect("archived");
    let read = encode_contiguous(FrameKind::KvRequest, &read).expect("frame");
    let malformed = encode_contiguous(FrameKind::KvRequest, &vec![0xFF; KV_BUDGET]).expect("frame");
    let (client, small_conn) = Rogue::kv_client_of(&cluster, leader);
    let small = small_put();
    for (what, request) in [("an answer", read), ("a refusal", malformed)] {
        // Read whole (it takes the whole budget), answered, and the answer never taken.
        let (_unread_send, mut unread) = sluggish.runtime.block_on(async {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            send.write_all(&request).await.expect("written");
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(500)).await;
            (send, recv)
        });
        let answer = client.runtime.block_on(async {
            let (mut send, mut recv) = small_conn.open_bi().await.expect("a stream");
            send.write_all(&small).await.expect("written");
            let _ = send.finish();
            // Well before the unread answer's stream is given up on (3 s).
            let read = expect_frame(&mut recv, FrameKind::KvResponse, 1 << 20);
            tokio::time::timeout(Duration::from_secs(2), read).await
        });
        assert_applied(
            &answer
                .unwrap_or_else(|_| panic!("a put waited for room behind {what} never taken"))
                .expect("a response frame"),
        );
        // And what was never taken is given up on (3 s), like a request never sent whole: its
        // stream is reset. Read before that, it would come whole.
        let given_up = sluggish.runtime.block_on(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::time::timeout(WAIT, unread.read_to_end(1 << 20)).await
        });
        assert!(
            matches!(
                given_up,
                Ok(Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_))))
            ),
            "{what} never taken: {:?}",
            given_up.map(|read| read.map(|bytes| bytes.len()))
        );
    }
}

#[test]
fn the_frame_decoder_survives_random_and_mutated_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b65656c);
    let payload = Bytes::from(vec![7u8; 128]);
    let append = Message {
        from: 2,
        to: 1,
        term: 3,
        body: Body::Append {
            prev_index: 9,
            prev_term: 2,
            entries: (10..14)
                .map(|index| Entry {
                    index,
                    term: 3,
                    payload: Payload::Command(payload.clone()),
                })
                .collect(),
            commit: 9,
            lease_tick: 1,
            read_seq: 1,
        },
    };
    let seeds = [
        messages_frame(&[append, heartbeat(2, 1)]),
        messages_frame(&[heartbeat(2, 1)]),
    ];
    assert!(seeds
        .iter()
        .all(|s| validate_frame(s, 2, 1, 1 << 20).is_ok()));
    let (mut accepted, mut refused) = (0u32, 0u32);
    let mut record = |r: Result<usize, _>| match r {
        Ok(_) => accepted += 1,
        Err(_) => refused += 1,
    };
    // Random bytes, with a well-formed header half of the time so the archive check is reached.
    for _ in 0..20_000 {
        let len = rng.random_range(0..512usize);
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        if rng.random_bool(0.5) && len >= 8 {
            let kind = rng.random_range(1..=8u8);
            buf[..8].copy_from_slice(&header((len - 8) as u32, FORMAT_VERSION, kind));
        }
        record(validate_frame(&buf, 2, 1, 1 << 20));
    }
    // Valid frames with bytes flipped, truncated, extended, or their length field edited.
    for i in 0..20_000 {
        let mut buf = seeds[i % seeds.len()].clone();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..buf.len());
                    buf[at] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => buf.truncate(rng.random_range(0..buf.len())),
            2 => buf.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            _ => {
                let len: u32 = rng.random();
                buf[..4].copy_from_slice(&len.to_le_bytes());
            }
        }
        record(validate_frame(&buf, 2, 1, 1 << 20));
    }
    assert!(
        refused > 20_000,
        "most hostile input is refused ({accepted} accepted)"
    );
}
