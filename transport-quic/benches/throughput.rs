//! Loopback throughput over one QUIC connection with mutual TLS: AppendEntries frames (64
//! entries of 128 bytes, archived, written on one stream, validated and read in place into core
//! messages on the other side) against raw quinn bulk transfer of the same number of bytes, in
//! the same run.
//!
//! `cargo bench -p keel-transport-quic --bench throughput`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keel_engine::core::{Body, Entry, Message, Payload};
use keel_transport_quic::certs::DevCa;
use keel_transport_quic::codec::{decode_batch, encode_batch};
use keel_transport_quic::frame::{self, FrameKind, HEADER_BYTES};
use keel_transport_quic::{tls, TransportMetrics};
use tokio::sync::mpsc;

/// Frames per iteration (one stream each iteration).
const FRAMES: u64 = 64;

fn append(i: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 7,
        body: Body::Append {
            prev_index: i * 64,
            prev_term: 7,
            entries: (0..64)
                .map(|j| Entry {
                    index: i * 64 + j + 1,
                    term: 7,
                    payload: Payload::Command(Bytes::from(vec![j as u8; 128])),
                })
                .collect(),
            commit: i * 64,
            lease_tick: 1,
            read_seq: 1,
        },
    }
}

struct Link {
    runtime: tokio::runtime::Runtime,
    client: quinn::Connection,
    server: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

fn link() -> Link {
    let ca = DevCa::generate("bench").expect("CA");
    let roots = vec![ca.cert_der()];
    let metrics = Arc::new(TransportMetrics::default());
    let server_cfg = tls::server_config(
        &ca.issue_node(2).expect("cert").identity,
        &roots,
        metrics.clone(),
        "bench-2".into(),
    )
    .expect("server config");
    let client_cfg = tls::client_config(
        &ca.issue_node(1).expect("cert").identity,
        &roots,
        tls::PEER_ALPN,
        metrics,
        "bench-1".into(),
    )
    .expect("client config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, server, endpoints) = runtime.block_on(async {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let server_ep = quinn::Endpoint::server(server_cfg, localhost).expect("server");
        let client_ep = quinn::Endpoint::client(localhost).expect("client");
        let addr = server_ep.local_addr().expect("bound");
        let connecting = client_ep
            .connect_with(client_cfg, addr, &tls::server_name_of(2))
            .expect("connect");
        let accept = async {
            let incoming = server_ep.accept().await.expect("incoming");
            incoming.await.expect("handshake")
        };
        let (client, server) = tokio::join!(connecting, accept);
        (client.expect("handshake"), server, (server_ep, client_ep))
    });
    Link {
        runtime,
        client,
        server,
        _endpoints: endpoints,
    }
}

fn throughput(c: &mut Criterion) {
    let link = link();
    let messages: Vec<Vec<Message>> = (0..FRAMES).map(|i| vec![append(i)]).collect();
    let frame_bytes = (HEADER_BYTES + encode_batch(&messages[0]).expect("encodes").len()) as u64;
    println!(
        "one AppendEntries frame: {frame_bytes} B (64 entries of 128 B); {FRAMES} frames per iteration"
    );

    // Receivers: one stream per iteration; report what arrived when the stream ends.
    let (frames_tx, mut frames_rx) = mpsc::channel::<u64>(1);
    let server = link.server.clone();
    link.runtime.spawn(async move {
        while let Ok(mut recv) = server.accept_uni().await {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                break;
            }
            let mut count = 0u64;
            if kind[0] == 1 {
                while let Ok(Some(f)) = frame::read_frame(&mut recv, 16 << 20).await {
                    count += decode_batch(&f, 1, 2).expect("valid").len() as u64;
                }
            } else {
                while let Ok(Some(chunk)) = recv.read_chunk(1 << 20, true).await {
                    count += chunk.bytes.len() as u64;
                }
            }
            if frames_tx.send(count).await.is_err() {
                break;
            }
        }
    });

    let mut g = c.benchmark_group("loopback_one_connection");
    g.throughput(Throughput::Bytes(frame_bytes * FRAMES));
    g.bench_function("append_frames_encode_send_validate", |b| {
        b.iter_custom(|iters| {
            link.runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut s = link.client.open_uni().await.expect("stream");
                    s.write_all(&[1]).await.expect("write");
                    for batch in &messages {
                        let body = encode_batch(batch).expect("encodes");
                        frame::write_frame(&mut s, FrameKind::Messages, body)
                            .await
                            .expect("write");
                    }
                    s.finish().expect("finish");
                    assert_eq!(frames_rx.recv().await, Some(FRAMES));
                }
                start.elapsed()
            })
        })
    });
    let raw = Bytes::from(vec![0xA5u8; (frame_bytes * FRAMES) as usize]);
    g.bench_function("raw_quinn_bulk_same_bytes", |b| {
        b.iter_custom(|iters| {
            link.runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut s = link.client.open_uni().await.expect("stream");
                    s.write_all(&[0]).await.expect("write");
                    s.write_chunk(raw.clone()).await.expect("write");
                    s.finish().expect("finish");
                    assert_eq!(frames_rx.recv().await, Some(raw.len() as u64));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = throughput
}
criterion_main!(benches);
