//! What the node pays for its metrics on the hot path: per proposal batch, a handful of relaxed
//! atomics and one histogram flush, whatever the batch's size.
//!
//! `cargo bench -p keel-metrics --bench hot_path`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_engine::node::{Histogram, LocalHistogram, NodeMetrics, DURATION_BOUNDS_NANOS};

fn per_batch(c: &mut Criterion) {
    let metrics = NodeMetrics::default();
    let mut local = LocalHistogram::new(DURATION_BOUNDS_NANOS);
    let mut group = c.benchmark_group("metrics_per_batch");
    for entries in [1u64, 64, 1024] {
        group.throughput(Throughput::Elements(entries));
        group.bench_with_input(
            BenchmarkId::new("entries", entries),
            &entries,
            |b, &entries| {
                b.iter(|| {
                    // What the driver does for one committed batch: its proposals share an
                    // arrival time, so their latencies are tallied once.
                    local.record_n(black_box(40_000), entries);
                    local.flush(&metrics.commit_duration);
                    metrics.proposal_batch_entries.observe(entries);
                    metrics
                        .proposals_committed
                        .fetch_add(entries, Ordering::Relaxed);
                    metrics
                        .commit_index
                        .store(black_box(entries), Ordering::Relaxed);
                    metrics
                        .last_log_index
                        .store(black_box(entries), Ordering::Relaxed);
                });
            },
        );
    }
    group.finish();

    let shared = Histogram::new(DURATION_BOUNDS_NANOS);
    let counter = AtomicU64::new(0);
    c.bench_function("atomic_histogram_observe", |b| {
        b.iter(|| {
            shared.observe(black_box(123_456));
            counter.fetch_add(1, Ordering::Relaxed);
        });
    });
}

criterion_group!(benches, per_batch);
criterion_main!(benches);
