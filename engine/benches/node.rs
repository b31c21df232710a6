//! Proposals per second and commit latency of a 3-node cluster on the in-memory transport with
//! durable logs (fsync on), with 1, 16 and 256 concurrent proposers.
//!
//! `cargo bench -p keel-engine --bench node`. Criterion reports the time per proposal (so
//! proposals/s is its inverse); each group also prints p50/p99 commit latency from an
//! HdrHistogram of every proposal it timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use keel_engine::kv::{KvCommand, KvStore};
use keel_engine::node::{MemNetwork, Node, NodeConfig};
use parking_lot::Mutex;

const TIMEOUT: Duration = Duration::from_secs(30);

fn cluster(dir: &std::path::Path) -> Vec<Arc<Node<KvStore>>> {
    let net = MemNetwork::new();
    (1..=3)
        .map(|id| {
            let cfg = NodeConfig::new(id, [1, 2, 3]);
            let node = Node::start(
                cfg,
                dir.join(id.to_string()),
                net.transport(id),
                KvStore::default(),
            )
            .expect("node starts");
            Arc::new(node)
        })
        .collect()
}

fn propose_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = cluster(dir.path());
    let leader_id = nodes[0].wait_for_leader(TIMEOUT).expect("a leader");
    let leader = nodes
        .iter()
        .find(|n| n.id() == leader_id)
        .expect("leader is a member")
        .clone();
    let value = vec![7u8; 128];
    let mut group = c.benchmark_group("propose_commit_3_nodes_fsync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for proposers in [1usize, 16, 256] {
        let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(proposers),
            &proposers,
            |b, &proposers| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(proposers as u64);
                    let started = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..proposers {
                            let (leader, latency, value) = (&leader, &latency, &value);
                            s.spawn(move || {
                                let mut local = Histogram::<u64>::new(3).expect("histogram");
                                for i in 0..per_thread {
                                    let key = format!("{t}-{i}");
                                    let command = KvCommand::Put {
                                        key: key.into(),
                                        value: value.clone().into(),
                                    };
                                    let sent = Instant::now();
                                    leader
                                        .propose(command.encode())
                                        .wait(TIMEOUT)
                                        .expect("commits");
                                    local
                                        .record(sent.elapsed().as_micros() as u64)
                                        .expect("in range");
                                }
                                latency.lock().add(&local).expect("same bounds");
                            });
                        }
                    });
                    // Report per proposal, as criterion expects `iters` of them.
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per_thread * proposers as u64) as f64)
                });
            },
        );
        let h = latency.lock();
        println!(
            "proposers={proposers}: commit latency p50 {} us, p99 {} us over {} proposals",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.len()
        );
    }
    group.finish();
    for node in &nodes {
        node.stop();
    }
}

criterion_group!(benches, propose_commit);
criterion_main!(benches);
