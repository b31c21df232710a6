//! Clusters over real QUIC and mutual TLS on 127.0.0.1: elections, replication, restarts,
//! forwarding, the key-value endpoint and snapshot streaming.

mod common;

use bytes::Bytes;
use common::{eventually, Cluster, WAIT};
use keel_engine::kv::{Consistency, KvError};
use keel_transport_quic::{ClientError, KvClient, KvClientConfig};

/// A key-value client with a certificate from `ca`, starting at `seeds`.
fn kv_client(
    seeds: Vec<(u64, std::net::SocketAddr)>,
    ca: &keel_transport_quic::certs::DevCa,
) -> KvClient {
    let client_cert = ca.issue_client().expect("client cert").identity;
    let mut cfg = KvClientConfig::new(seeds, client_cert, vec![ca.cert_der()]);
    cfg.request_timeout = WAIT;
    KvClient::connect(cfg).expect("client")
}

#[test]
fn three_nodes_elect_replicate_and_survive_a_restart() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let leader = cluster.leader();
    let node = cluster.node(leader).clone();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let node = node.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        node.put(format!("k{t}-{i}"), format!("v{i}"), WAIT)
                            .expect("put")
                    })
                    .max()
                    .expect("25 puts")
            })
        })
        .collect();
    let last = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .max()
        .expect("4 writers");
    cluster.converge(last);
    for m in cluster.members.values() {
        assert_eq!(
            m.node.state_machine().len(),
            100,
            "node {} has every key",
            m.node.id()
        );
    }

    // Every pair shares one connection; frames flowed between the leader and each follower and
    // none was refused. (Handshakes may have been refused while the address books were being
    // filled in at start: a node refuses a peer it does not know yet.)
    for m in cluster.members.values() {
        let snap = m.transport.metrics().snapshot();
        assert_eq!(m.transport.connected_peers().len(), 2, "{snap:?}");
        assert!(snap.frames_rejected.values().all(|&n| n == 0), "{snap:?}");
        for reason in [
            "unknown_ca",
            "expired",
            "wrong_id",
            "bad_certificate",
            "not_dialer",
        ] {
            assert_eq!(snap.handshakes_refused[reason], 0, "{snap:?}");
        }
    }
    let leader_view = cluster.transport(leader).metrics().snapshot();
    for (peer, traffic) in &leader_view.peers {
        assert!(
            traffic.bytes_sent > 0 && traffic.bytes_received > 0 && traffic.frames_sent > 0,
            "leader and {peer}: {leader_view:?}"
        );
    }

    // The leader goes away: the others elect a new one and go on; the old leader comes back
    // and catches up. (A new leader starts every follower's progress from scratch, so this
    // holds whether or not the restarted node kept its log.)
    cluster.stop(leader);
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    let during = cluster
        .node(new_leader)
        .put("during", "restart", WAIT)
        .expect("a majority of two commits");
    // Messages for the absent node were dropped (bounded queues), not buffered.
    let dropped = cluster.transport(new_leader).metrics().snapshot().peers[&leader];
    assert!(dropped.messages_dropped > 0, "{dropped:?}");
    let stats = keel_engine::node::Transport::stats(&**cluster.transport(new_leader));
    assert!(
        stats.peers[&leader].messages_dropped > 0,
        "the node's view (and its metrics) count them too: {stats:?}"
    );
    cluster.restart(leader);
    cluster.converge(during);
    let back = cluster.transport(new_leader).metrics().snapshot().peers[&leader];
    assert!(back.connects > dropped.connects, "reconnected: {back:?}");
    let restarted = cluster.node(leader);
    assert_eq!(
        restarted.state_machine().get(b"during"),
        Some(Bytes::from("restart"))
    );
    assert_eq!(restarted.state_machine().len(), 101);
    let after = cluster
        .node(cluster.leader())
        .put("after", "1", WAIT)
        .expect("put after the restart");
    cluster.converge(after);
}

#[test]
fn a_restarted_follower_catches_up_from_its_own_log() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let leader = cluster.leader();
    let follower = cluster.follower();
    let before = cluster.node(leader).put("before", "1", WAIT).expect("put");
    cluster.converge(before);
    cluster.stop(follower);
    let during = cluster
        .node(leader)
        .put("during", "2", WAIT)
        .expect("a majority of two commits");
    // Cut off from its peers until it has been read: what it holds came from its own disk.
    cluster.restart_alone(follower);
    let recovered = cluster.node(follower).status().expect("running");
    assert!(
        recovered.last_index >= before && recovered.last_index < during,
        "its log came back from disk, and only from there: {recovered:?}"
    );
    cluster.introduce(follower);
    cluster.converge(during);
    let restarted = cluster.node(follower);
    assert_eq!(restarted.state_machine().len(), 2);
    assert_eq!(
        restarted.status().expect("running").snapshot_index,
        0,
        "caught up with entries, not a snapshot"
    );
}

#[test]
fn a_forwarded_proposal_whose_leader_stops_before_its_commit_has_an_unknown_outcome() {
    // Without check-quorum the leader stays leader with two of five (with it, it could step
    // down before the forward arrives, and answer it `NotLeader`).
    let mut cluster = Cluster::with(
        &[1, 2, 3, 4, 5],
        &[],
        |n| {
            n.check_quorum = false;
            n.lease_reads = false;
        },
        |_| {},
    );
    let leader = cluster.leader();
    let follower = cluster.follower();
    // Two of five: the leader appends what it is forwarded, and cannot commit it.
    let others: Vec<_> = (1..=5)
        .filter(|&id| id != leader && id != follower)
        .collect();
    for id in others {
        cluster.stop(id);
    }
    let served = || {
        cluster
            .transport(leader)
            .metrics()
            .snapshot()
            .forwards_served
    };
    let before = served();
    let proposal = cluster.node(follower).propose_forwarded("in flight");
    eventually("the leader takes the forwarded proposal", || {
        served() > before
    });
    cluster.stop(leader);
    // It reached the leader, which may have passed it on before stopping: neither node can
    // say it failed (`Stopped` said so before).
    assert_eq!(
        proposal.wait(WAIT).map(|_| ()),
        Err(keel_engine::node::Error::OutcomeUnknown)
    );
}

#[test]
fn followers_forward_proposals_and_clients_follow_leader_hints() {
    let cluster = Cluster::new(&[1, 2, 3]);
    let leader = cluster.leader();
    let follower = cluster.follower();

    // A proposal made on a follower travels to the leader on a forward stream.
    let applied = cluster
        .node(follower)
        .propose_forwarded("forwarded")
        .wait_applied(WAIT)
        .expect("forwarded and applied");
    cluster.converge(applied.index);
    let served: u64 = cluster
        .transport(leader)
        .metrics()
        .snapshot()
        .forwards_served;
    assert!(served >= 1);

    // A remote client that starts at a follower is sent to the leader.
    let client = kv_client(vec![(follower, cluster.addrs[&follower])], &cluster.ca);
    let index = client
        .put("colour", "blue")
        .expect("put through the client");
    assert_eq!(client.leader(), Some(leader), "followed the hint");
    cluster.converge(index);
    // A request larger than a node's frames is refused before it is sent: certainly not
    // applied (sent, the node could only stop the stream, and the outcome was unknown).
    match client.put("large", vec![0u8; 17 << 20]) {
        Err(ClientError::Kv(KvError::Node(keel_engine::node::Error::TooLarge { .. }))) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Within a frame but over the node's largest command (1 MiB): the node refuses it from its
    // header and answers before it stops reading, so the refusal is definite too.
    match client.put("large", vec![0u8; 2 << 20]) {
        Err(ClientError::Kv(KvError::Node(keel_engine::node::Error::TooLarge { .. }))) => {}
        other => panic!("expected TooLarge from the node, got {other:?}"),
    }
    for consistency in [
        Consistency::Linearizable,
        Consistency::Lease,
        Consistency::Local,
    ] {
        assert_eq!(
            client.get("colour", consistency).expect("get"),
            Bytes::from("blue")
        );
    }
    assert!(matches!(
        client.compare_and_swap(
            "colour",
            Some(Bytes::from("red")),
            Some(Bytes::from("green"))
        ),
        Err(ClientError::Kv(KvError::CompareFailed { current: Some(_) }))
    ));
    client
        .compare_and_swap(
            "colour",
            Some(Bytes::from("blue")),
            Some(Bytes::from("green")),
        )
        .expect("cas");
    client.delete("colour").expect("delete");
    assert!(matches!(
        client.get("colour", Consistency::Linearizable),
        Err(ClientError::Kv(KvError::NotFound))
    ));
    assert!(cluster.transport(leader).metrics().snapshot().kv_requests >= 5);
}

/// A client of `cluster`'s follower alone, that does not follow leader hints.
fn follower_s_own_client(cluster: &Cluster) -> KvClient {
    let follower = cluster.follower();
    let client_cert = cluster.ca.issue_client().expect("client cert").identity;
    let seeds = vec![(follower, cluster.addrs[&follower])];
    let mut cfg = KvClientConfig::new(seeds, client_cert, vec![cluster.ca.cert_der()]);
    cfg.request_timeout = WAIT;
    cfg.follow_leader = false;
    KvClient::connect(cfg).expect("client")
}

#[test]
fn a_follower_that_forwards_writes_serves_a_client_that_stays_with_it() {
    let cluster = Cluster::with(&[1, 2, 3], &[], |_| {}, |q| q.kv_forward_writes = true);
    let leader = cluster.leader();
    let client = follower_s_own_client(&cluster);
    let served = || {
        cluster
            .transport(leader)
            .metrics()
            .snapshot()
            .forwards_served
    };
    let index = client.put("colour", "blue").expect("a forwarded put");
    assert_eq!(served(), 1, "the follower forwarded it");
    client
        .compare_and_swap(
            "colour",
            Some(Bytes::from("blue")),
            Some(Bytes::from("green")),
        )
        .expect("a forwarded compare-and-swap");
    assert!(matches!(
        client.compare_and_swap("colour", Some(Bytes::from("blue")), None),
        Err(ClientError::Kv(KvError::CompareFailed { current: Some(_) }))
    ));
    client.delete("colour").expect("a forwarded delete");
    assert_eq!(served(), 4);
    assert!(index > 0);
    // Reads are served where the client is (through the leader's read index).
    assert!(matches!(
        client.get("colour", Consistency::Linearizable),
        Err(ClientError::Kv(KvError::NotFound))
    ));
    // Without forwarding the same client is refused with a hint it does not follow.
    let plain = Cluster::new(&[1, 2, 3]);
    let client = follower_s_own_client(&plain);
    assert!(matches!(
        client.put("colour", "blue"),
        Err(ClientError::Kv(KvError::Node(
            keel_engine::node::Error::NotLeader { .. }
        )))
    ));
}

#[test]
fn snapshots_stream_in_chunks_to_a_lagging_follower() {
    let mut cluster = Cluster::with(
        &[1, 2, 3],
        &[],
        |n| n.snapshot_threshold_entries = 20,
        |q| q.snapshot_chunk_bytes = 512,
    );
    let leader = cluster.leader();
    let follower = cluster.follower();
    cluster.stop(follower);
    let value = "x".repeat(200);
    let mut last = 0;
    for i in 0..100 {
        last = cluster
            .node(leader)
            .put(format!("key-{i:03}"), value.clone(), WAIT)
            .expect("put");
    }
    // Wait until the leader compacted past what the follower has.
    eventually("the leader snapshots", || {
        cluster
            .node(leader)
            .status()
            .expect("status")
            .snapshot_index
            >= 40
    });
    cluster.restart(follower);
    cluster.converge(last);
    assert_eq!(cluster.node(follower).state_machine().len(), 100);
    let status = cluster.node(follower).status().expect("status");
    assert!(
        status.snapshot_index >= 40,
        "the follower installed the leader's snapshot: {status:?}"
    );
    let received = cluster.transport(follower).metrics().snapshot().peers[&leader];
    // A snapshot at index 40 or later holds at least 38 puts (the rest of the entries are the
    // leaders' no-ops) of ~215 bytes: at least 15 chunks of 512 bytes, never one frame.
    assert!(
        received.snapshot_chunks_received >= 15,
        "the snapshot came in chunks: {received:?}"
    );
}

#[test]
fn a_node_without_a_proposal_size_limit_takes_large_requests() {
    let cluster = Cluster::with(&[1], &[], |cfg| cfg.max_proposal_bytes = usize::MAX, |_| {});
    let leader = cluster.leader();
    let client = kv_client(vec![(leader, cluster.addrs[&leader])], &cluster.ca);
    // The limit on a request's body is the largest command and some: that sum overflowed.
    client
        .put("large", vec![7u8; 64 << 10])
        .expect("a 64 KiB put");
    assert_eq!(
        client.get("large", Consistency::Linearizable).expect("get"),
        Bytes::from(vec![7u8; 64 << 10])
    );
}

#[test]
fn a_node_that_serves_no_store_refuses_a_write_definitely() {
    let ca = keel_transport_quic::certs::DevCa::generate("no store").expect("CA");
    let identity = ca.issue_node(1).expect("node cert").identity;
    let transport = keel_transport_quic::QuicTransport::start(common::quic_config(
        1,
        common::localhost(),
        identity,
        &ca,
    ))
    .expect("transport starts");
    let client = kv_client(vec![(1, transport.local_addr())], &ca);
    match client.put("k", "v") {
        Err(ClientError::Kv(KvError::Node(keel_engine::node::Error::Config(why)))) => {
            assert!(why.contains("no key-value store"), "{why}");
        }
        other => panic!("expected a definite refusal, got {other:?}"),
    }
    transport.shutdown();
}

#[test]
fn a_removed_peer_s_traffic_counters_go_with_it() {
    let cluster = Cluster::new(&[1, 2, 3]);
    cluster.leader();
    let counted = |peer| {
        cluster
            .transport(1)
            .metrics()
            .snapshot()
            .peers
            .iter()
            .any(|(&id, _)| id == peer)
    };
    eventually("node 1 counts its traffic with node 3", || counted(3));
    cluster.transport(1).remove_peer(3);
    // Each scrape went on exporting the removed peer's series, frozen, for good.
    assert!(
        !counted(3),
        "the removed peer's counters are still exported"
    );
    assert!(counted(2), "the other peer's are kept");
}
