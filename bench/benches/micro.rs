//! Micro-benchmarks of the steps every committed entry goes through, per entry, so that a
//! change to one of them shows up here before it shows up in `keel-bench local`:
//!
//! - `core_step`: the leader's core appends a batch, hands it out for persistence and
//!   replication, takes both followers' acknowledgements and commits it (no I/O);
//! - `log_append`: the write-ahead log appends a batch and makes it durable, with `fdatasync`
//!   and without (the record encoding and write path alone);
//! - `frame`: an AppendEntries batch encoded into a frame, then validated and read in place;
//! - `apply`: the key-value store applies a batch of puts.
//!
//! Batches are 64 entries of 128 bytes. `cargo bench -p keel-bench --bench micro`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_engine::core::{
    AppendResult, Body, Config, Core, Entry, Index, Membership, Message, Payload, Restore, Role,
    Write,
};
use keel_engine::kv::{KvCommand, KvStore};
use keel_engine::node::{Command, StateMachine as _};
use keel_engine::wal::{SyncMode, Wal, WalOptions};
use keel_transport_quic::codec::{decode_batch, encode_batch};
use keel_transport_quic::frame::{Frame, FrameKind};

const BATCH: u64 = 64;
const ENTRY_BYTES: usize = 128;

fn payloads() -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| Bytes::from(vec![i as u8; ENTRY_BYTES]))
        .collect()
}

/// Node 1 leading a three-voter cluster, its first entries committed.
fn leader() -> Core {
    let mut cfg = Config::new(1);
    cfg.pre_vote = false;
    let restore = Restore::bootstrap(Membership::new([1, 2, 3], []));
    let mut core = Core::new(cfg, restore, 7).expect("a valid core");
    // A starting node honours any lease it may have granted: it campaigns once its election
    // timeout runs out.
    for _ in 0..1_000 {
        if core.role() == Role::Candidate {
            break;
        }
        core.tick();
    }
    let out = core.take_output();
    if let Some((index, term)) = out.write.as_ref().and_then(Write::last_entry) {
        core.persisted(index, term);
    }
    from_followers(&mut core, Body::VoteResponse { granted: true });
    commit_round(&mut core);
    assert!(core.leader() == Some(1), "node 1 leads");
    core
}

/// Steps `body` from both followers, in the core's current term.
fn from_followers(core: &mut Core, body: Body) {
    let term = core.term();
    for from in [2, 3] {
        core.step(Message {
            from,
            to: 1,
            term,
            body: body.clone(),
        });
    }
}

/// Persists what the leader wrote and acknowledges it from both followers.
fn commit_round(core: &mut Core) -> Index {
    let out = core.take_output();
    let Some((index, term)) = out.write.as_ref().and_then(Write::last_entry) else {
        return core.commit_index();
    };
    core.persisted(index, term);
    from_followers(
        core,
        Body::AppendResponse {
            result: AppendResult::Accepted { index },
            lease_tick: 0,
            read_seq: 0,
        },
    );
    let _ = core.take_output();
    core.applied(core.commit_index());
    core.commit_index()
}

fn core_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_step");
    g.throughput(Throughput::Elements(BATCH));
    let mut core = leader();
    let batch = payloads();
    g.bench_function("propose_replicate_commit_64x128B", |b| {
        b.iter(|| {
            core.propose(batch.iter().cloned())
                .expect("the leader accepts");
            let committed = commit_round(&mut core);
            // Keep the in-memory log short, as the runtime's snapshots do.
            if committed % 65_536 < BATCH {
                let _ = core.compact(committed);
            }
            committed
        })
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(5));
    for (name, sync) in [
        ("fdatasync", SyncMode::Fdatasync),
        ("no_fsync", SyncMode::UnsafeNoFsync),
    ] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let opts = WalOptions {
            sync,
            ..WalOptions::default()
        };
        let (mut wal, _) = Wal::open(dir.path(), opts).expect("a new log");
        let batch = payloads();
        let mut next: Index = 1;
        g.bench_function(BenchmarkId::new("64x128B", name), |b| {
            b.iter(|| {
                let write = Write {
                    entries: batch
                        .iter()
                        .enumerate()
                        .map(|(i, p)| Entry {
                            index: next + i as u64,
                            term: 1,
                            payload: Payload::Command(p.clone()),
                        })
                        .collect(),
                    ..Write::default()
                };
                next += BATCH;
                wal.append(&write).expect("appends");
                wal.sync().expect("syncs")
            })
        });
    }
    g.finish();
}

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(BATCH));
    let append = Message {
        from: 1,
        to: 2,
        term: 7,
        body: Body::Append {
            prev_index: 1000,
            prev_term: 7,
            entries: payloads()
                .into_iter()
                .zip(1001..)
                .map(|(p, index)| Entry {
                    index,
                    term: 7,
                    payload: Payload::Command(p),
                })
                .collect(),
            commit: 990,
            lease_tick: 42,
            read_seq: 9,
        },
    };
    let messages = vec![append];
    g.bench_function("encode_64x128B", |b| {
        b.iter(|| encode_batch(&messages).expect("encodes"))
    });
    let frame = Frame {
        kind: FrameKind::Messages,
        body: encode_batch(&messages).expect("encodes"),
    };
    g.bench_function("validate_and_read_64x128B", |b| {
        b.iter(|| decode_batch(&frame, 1, 2).expect("decodes"))
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(BATCH));
    let mut store = KvStore::default();
    let value = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let mut next: Index = 1;
    g.bench_function("kv_put_64x128B_1M_keys", |b| {
        b.iter_batched(
            || {
                let commands: Vec<Bytes> = (0..BATCH)
                    .map(|i| {
                        let key = format!(
                            "key-{:012}",
                            (next + i).wrapping_mul(2_654_435_761) % 1_000_000
                        );
                        KvCommand::Put {
                            key: Bytes::from(key),
                            value: value.clone(),
                        }
                        .encode()
                    })
                    .collect();
                let first = next;
                next += BATCH;
                (first, commands)
            },
            |(first, commands)| {
                let batch: Vec<Command<'_>> = commands
                    .iter()
                    .zip(first..)
                    .map(|(data, index)| Command {
                        index,
                        term: 1,
                        data,
                    })
                    .collect();
                store.apply(&batch).expect("applies")
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, core_step, log_append, frame, apply);
criterion_main!(benches);
