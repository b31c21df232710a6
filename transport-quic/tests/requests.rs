//! A key-value client that opens many streams and announces on each a request as large as a
//! frame may be, then sends nothing more. In a binary of its own: it measures the process's
//! peak virtual size, which other tests' clusters starting alongside would move. (Virtual, not
//! resident: a body buffer allocated zero-filled at its announced size is mapped but untouched
//! until bytes arrive, and still counts against the machine's commit limit.)

mod common;

use std::time::Duration;

use common::{eventually, Cluster, Rogue, WAIT};
use keel_transport_quic::frame::{FrameKind, FORMAT_VERSION};
use keel_transport_quic::FrameRejection;

/// This process's peak virtual size so far, in MiB.
fn peak_virtual_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPeak");
    kib / 1024
}

#[test]
fn a_client_that_announces_requests_and_never_sends_them_holds_nothing_for_them() {
    let cluster = Cluster::with(
        &[1, 2, 3],
        &[],
        // Commands as large as a frame, so that the node takes requests of the size announced.
        |n| n.max_proposal_bytes = 16 << 20,
        |q| q.handshake_timeout = Duration::from_secs(1),
    );
    let leader = cluster.leader();
    let (client, conn) = Rogue::kv_client_of(&cluster, leader);
    let metrics = cluster.transport(leader).metrics().clone();
    let idle_before = metrics.frames_rejected(FrameRejection::Idle);
    let peak_before = peak_virtual_mib();
    // A buffer of the announced size per stream was 1 GiB for the 512 bytes sent here.
    const STREAMS: u64 = 64;
    let announced = 16u32 << 20;
    let _streams = client.runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..STREAMS {
            let (mut send, recv) = conn.open_bi().await.expect("a stream");
            let mut header = announced.to_le_bytes().to_vec();
            header.extend_from_slice(&[FORMAT_VERSION, FrameKind::KvRequest as u8, 0, 0]);
            send.write_all(&header).await.expect("written");
            held.push((send, recv));
        }
        held
    });
    // Each is given up on in time, which frees whatever it held.
    eventually("every unsent request is given up on", || {
        metrics.frames_rejected(FrameRejection::Idle) >= idle_before + STREAMS
    });
    let grown = peak_virtual_mib().saturating_sub(peak_before);
    // Room for a few malloc arenas reserved meanwhile (64-128 MiB each), far below the bug's.
    assert!(grown < 512, "the process grew by {grown} MiB at its peak");
    let index = cluster
        .node(leader)
        .put("still", "serving", WAIT)
        .expect("put");
    cluster.converge(index);
}
