//! Encode + validate + access of one AppendEntries with 64 entries of 128 bytes: rkyv read in
//! place (keel's wire format) side by side with postcard (serde), owned and borrowed.
//!
//! `cargo bench -p keel-transport-quic --bench frames`

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keel_engine::core::{Body, Entry, Message, Payload};
use keel_transport_quic::codec::{decode_batch, encode_batch};
use keel_transport_quic::frame::{self, Frame, FrameKind};
use keel_transport_quic::wire::{ArchivedWireBatch, ArchivedWireBody, ArchivedWirePayload};
use serde::{Deserialize, Serialize};

const ENTRIES: u64 = 64;
const PAYLOAD_BYTES: usize = 128;

fn append() -> Message {
    Message {
        from: 1,
        to: 2,
        term: 7,
        body: Body::Append {
            prev_index: 1000,
            prev_term: 7,
            entries: (0..ENTRIES)
                .map(|i| Entry {
                    index: 1001 + i,
                    term: 7,
                    payload: Payload::Command(Bytes::from(vec![i as u8; PAYLOAD_BYTES])),
                })
                .collect(),
            commit: 990,
            lease_tick: 42,
            read_seq: 9,
        },
    }
}

/// The serde mirror of an append: payloads borrowed when encoding (no copy) and, in one variant,
/// when decoding.
#[derive(Serialize, Deserialize)]
struct SerdeAppend<'a> {
    from: u64,
    to: u64,
    term: u64,
    prev_index: u64,
    prev_term: u64,
    #[serde(borrow)]
    entries: Vec<SerdeEntry<'a>>,
    commit: u64,
    lease_tick: u64,
    read_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct SerdeEntry<'a> {
    index: u64,
    term: u64,
    #[serde(with = "serde_bytes", borrow)]
    payload: &'a [u8],
}

/// The same, owning its payloads: what a follower that keeps the entries after the receive
/// buffer is gone must decode into.
#[derive(Deserialize)]
struct SerdeAppendOwned {
    #[allow(dead_code)]
    from: u64,
    #[allow(dead_code)]
    to: u64,
    #[allow(dead_code)]
    term: u64,
    #[allow(dead_code)]
    prev_index: u64,
    #[allow(dead_code)]
    prev_term: u64,
    entries: Vec<SerdeEntryOwned>,
    #[allow(dead_code)]
    commit: u64,
    #[allow(dead_code)]
    lease_tick: u64,
    #[allow(dead_code)]
    read_seq: u64,
}

#[derive(Deserialize)]
struct SerdeEntryOwned {
    index: u64,
    #[allow(dead_code)]
    term: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

fn serde_of(m: &Message) -> SerdeAppend<'_> {
    let Body::Append {
        prev_index,
        prev_term,
        entries,
        commit,
        lease_tick,
        read_seq,
    } = &m.body
    else {
        unreachable!("an append")
    };
    SerdeAppend {
        from: m.from,
        to: m.to,
        term: m.term,
        prev_index: *prev_index,
        prev_term: *prev_term,
        entries: entries
            .iter()
            .map(|e| SerdeEntry {
                index: e.index,
                term: e.term,
                payload: match &e.payload {
                    Payload::Command(b) => b,
                    _ => &[],
                },
            })
            .collect(),
        commit: *commit,
        lease_tick: *lease_tick,
        read_seq: *read_seq,
    }
}

/// Reads what a follower reads: every entry's index and payload.
fn touch_archived(frame: &Frame) -> u64 {
    let batch = frame::access::<ArchivedWireBatch>(&frame.body).expect("valid");
    let mut sum = 0u64;
    for m in batch.messages.iter() {
        if let ArchivedWireBody::Append { entries, .. } = &m.body {
            for e in entries.iter() {
                if let ArchivedWirePayload::Command(p) = &e.payload {
                    sum += e.index.to_native() + p.len() as u64 + u64::from(p[0]);
                }
            }
        }
    }
    sum
}

fn codecs(c: &mut Criterion) {
    let message = append();
    let messages = vec![message.clone()];
    let rkyv_bytes = encode_batch(&messages).expect("encodes").len();
    let postcard_bytes = postcard::to_allocvec(&serde_of(&message))
        .expect("encodes")
        .len();
    println!("encoded size: rkyv {rkyv_bytes} B, postcard {postcard_bytes} B");

    let mut g = c.benchmark_group("append_64x128");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rkyv_encode_validate_access", |b| {
        b.iter(|| {
            let body = encode_batch(&messages).expect("encodes");
            let frame = Frame {
                kind: FrameKind::Messages,
                body,
            };
            touch_archived(&frame)
        })
    });
    g.bench_function("rkyv_encode_validate_to_core_in_place", |b| {
        b.iter(|| {
            let body = encode_batch(&messages).expect("encodes");
            let frame = Frame {
                kind: FrameKind::Messages,
                body,
            };
            decode_batch(&frame, 1, 2).expect("valid").len()
        })
    });
    g.bench_function("postcard_encode_decode_borrowed", |b| {
        b.iter(|| {
            let buf = postcard::to_allocvec(&serde_of(&message)).expect("encodes");
            let m: SerdeAppend<'_> = postcard::from_bytes(&buf).expect("decodes");
            m.entries
                .iter()
                .map(|e| e.index + e.payload.len() as u64 + u64::from(e.payload[0]))
                .sum::<u64>()
        })
    });
    g.bench_function("postcard_encode_decode_owned", |b| {
        b.iter(|| {
            let buf = postcard::to_allocvec(&serde_of(&message)).expect("encodes");
            let m: SerdeAppendOwned = postcard::from_bytes(&buf).expect("decodes");
            m.entries
                .iter()
                .map(|e| e.index + e.payload.len() as u64 + u64::from(e.payload[0]))
                .sum::<u64>()
        })
    });
    g.finish();

    // The receive side alone: validation and access of an archive already in the buffer.
    let frame = Frame {
        kind: FrameKind::Messages,
        body: encode_batch(&messages).expect("encodes"),
    };
    let buf = postcard::to_allocvec(&serde_of(&message)).expect("encodes");
    let mut g = c.benchmark_group("append_64x128_receive");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rkyv_validate_access", |b| {
        b.iter(|| touch_archived(&frame))
    });
    g.bench_function("postcard_decode_borrowed", |b| {
        b.iter(|| {
            let m: SerdeAppend<'_> = postcard::from_bytes(&buf).expect("decodes");
            m.entries.len()
        })
    });
    g.bench_function("postcard_decode_owned", |b| {
        b.iter(|| {
            let m: SerdeAppendOwned = postcard::from_bytes(&buf).expect("decodes");
            m.entries.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codecs
}
criterion_main!(benches);
