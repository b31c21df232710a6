//! Group commit through the log writer: durable appends per second and `fdatasync`s per second
//! with 1, 8 and 64 concurrent proposers and 128-byte and 4 KiB entries, next to the raw
//! `fdatasync` rate of the same directory, measured in the same run.
//!
//! In `wal_group_commit` each proposer appends one entry at a time and waits until it is durable
//! (a closed loop, as a client waiting for its commit does), so a group holds at most one entry
//! per proposer. In `wal_pipelined` proposers wait only while more than
//! `PIPELINED_IN_FLIGHT_MAX` entries are not yet durable (a leader serving many clients), which
//! shows what one `fdatasync` can carry. Indexes are assigned in submission order, as the driver
//! does. Run with `cargo bench -p keel-engine --bench wal`; set `KEEL_BENCH_DIR` to measure a
//! disk other than the default (`target/keel-bench-wal`, same filesystem as the build).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_engine::core::{Entry, Index, Payload, Write};
use keel_engine::wal::{LogWriter, Wal, WalOptions, WriterEvent};

const PROPOSERS: [usize; 3] = [1, 8, 64];
const ENTRY_BYTES: [usize; 2] = [128, 4096];
/// Entries in flight in the pipelined runs: a busy leader batching many clients' proposals.
const PIPELINED_IN_FLIGHT_MAX: u64 = 8192;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("KEEL_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/keel-bench-wal"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&base).expect("create the bench directory");
    tempfile::tempdir_in(&base).expect("create a temporary directory")
}

/// What the writer reported over a run.
#[derive(Default)]
struct Totals {
    entries: AtomicU64,
    fdatasyncs: AtomicU64,
    measured_nanos: AtomicU64,
}

/// A log writer with proposers that each wait for their own entry to be durable.
struct Harness {
    /// The next index, held while submitting so indexes reach the writer in order.
    submit: Mutex<(Index, LogWriter)>,
    /// How many entries may be waiting for durability before a proposer waits (0: its own).
    in_flight_max: u64,
    durable: Arc<(Mutex<Index>, Condvar)>,
    totals: Arc<Totals>,
    payload: Bytes,
}

impl Harness {
    fn start(
        dir: &std::path::Path,
        entry_bytes: usize,
        in_flight_max: u64,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (wal, _) = Wal::open(dir, WalOptions::default()).expect("open the log");
        let (writer, events) = LogWriter::spawn(wal);
        let durable = Arc::new((Mutex::new(0), Condvar::new()));
        let totals = Arc::new(Totals::default());
        let dispatcher = {
            let durable = Arc::clone(&durable);
            let totals = Arc::clone(&totals);
            std::thread::spawn(move || {
                for event in events {
                    let WriterEvent::Durable { writes, stats } = event else {
                        panic!("the log writer failed: {event:?}");
                    };
                    totals.entries.fetch_add(stats.entries, Ordering::Relaxed);
                    totals
                        .fdatasyncs
                        .fetch_add(u64::from(stats.fdatasyncs), Ordering::Relaxed);
                    if let Some((index, _)) = writes.iter().rev().find_map(Write::last_entry) {
                        let (lock, wake) = &*durable;
                        *lock.lock().expect("no proposer panics holding it") = index;
                        wake.notify_all();
                    }
                }
            })
        };
        let harness = Harness {
            submit: Mutex::new((1, writer)),
            in_flight_max,
            durable,
            totals,
            payload: Bytes::from(vec![0x5a; entry_bytes]),
        };
        (harness, dispatcher)
    }

    /// Appends one entry and waits until it is durable (or, pipelined, until few enough are not).
    fn propose(&self) {
        let index = {
            let mut submit = self.submit.lock().expect("no proposer panics holding it");
            let index = submit.0;
            submit.0 += 1;
            let write = Write {
                entries: vec![Entry {
                    index,
                    term: 1,
                    payload: Payload::Command(self.payload.clone()),
                }],
                ..Write::default()
            };
            submit.1.submit(write).expect("the log writer runs");
            index
        };
        if self.in_flight_max > 0 && index % 64 != 0 {
            return; // Pipelined: check the window now and then, not on every entry.
        }
        self.wait_durable(index.saturating_sub(self.in_flight_max));
    }

    fn wait_durable(&self, index: Index) {
        let (lock, wake) = &*self.durable;
        let mut durable = lock.lock().expect("the dispatcher never panics holding it");
        while *durable < index {
            durable = wake
                .wait(durable)
                .expect("the dispatcher never panics holding it");
        }
    }

    /// `appends` proposals spread over `proposers` threads; returns the wall time.
    fn run(&self, proposers: usize, appends: u64) -> Duration {
        let per_thread = appends.div_ceil(proposers as u64);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..proposers {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        self.propose();
                    }
                });
            }
        });
        // Pipelined proposers leave entries in flight: the run ends when they are durable.
        let last = self.submit.lock().expect("no proposer panicked").0 - 1;
        self.wait_durable(last);
        let elapsed = started.elapsed();
        self.totals
            .measured_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        elapsed
    }

    fn stop(self, dispatcher: std::thread::JoinHandle<()>) -> Arc<Totals> {
        let (_, writer) = self.submit.into_inner().expect("no proposer panicked");
        drop(writer.stop());
        dispatcher.join().expect("the dispatcher never panics");
        self.totals
    }
}

fn group_commit(c: &mut Criterion) {
    run_group(c, "wal_group_commit", &PROPOSERS, 0);
}

fn pipelined(c: &mut Criterion) {
    run_group(c, "wal_pipelined", &[8], PIPELINED_IN_FLIGHT_MAX);
}

fn run_group(c: &mut Criterion, name: &str, proposer_counts: &[usize], in_flight_max: u64) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    let mut summary = Vec::new();
    for entry_bytes in ENTRY_BYTES {
        for &proposers in proposer_counts {
            let dir = bench_dir();
            let (harness, dispatcher) = Harness::start(dir.path(), entry_bytes, in_flight_max);
            let id = BenchmarkId::new(format!("{entry_bytes}B"), format!("{proposers}p"));
            group.bench_function(id, |b| {
                b.iter_custom(|appends| harness.run(proposers, appends));
            });
            let totals = harness.stop(dispatcher);
            summary.push((entry_bytes, proposers, totals));
        }
    }
    group.finish();
    let raw = raw_fdatasync_rate();
    println!(
        "\n{name} (whole run incl. warm-up; raw fdatasync of the same directory right after: \
         {raw:.0}/s)"
    );
    println!(
        "{:>8} {:>10} {:>14} {:>14} {:>18}",
        "entry", "proposers", "appends/s", "fdatasyncs/s", "entries/fdatasync"
    );
    for (entry_bytes, proposers, t) in summary {
        let secs = t.measured_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let entries = t.entries.load(Ordering::Relaxed) as f64;
        let syncs = t.fdatasyncs.load(Ordering::Relaxed) as f64;
        println!(
            "{:>7}B {proposers:>10} {:>14.0} {:>14.0} {:>18.1}",
            entry_bytes,
            entries / secs,
            syncs / secs,
            entries / syncs.max(1.0)
        );
    }
}

/// Appends 128 bytes and `fdatasync`s, one at a time: the disk's own limit.
fn raw_fdatasync(c: &mut Criterion) {
    let dir = bench_dir();
    let file = raw_file(&dir);
    let mut offset = 0;
    let mut group = c.benchmark_group("raw_fdatasync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    group.bench_function("128B_append", |b| {
        b.iter(|| {
            file.write_all_at(&[0x5a; 128], offset).expect("write");
            offset += 128;
            file.sync_data().expect("fdatasync");
        });
    });
    group.finish();
}

fn raw_file(dir: &tempfile::TempDir) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw"))
        .expect("create the raw file")
}

/// The raw rate over one second, for the summary table.
fn raw_fdatasync_rate() -> f64 {
    let dir = bench_dir();
    let file = raw_file(&dir);
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all_at(&[0x5a; 128], syncs * 128).expect("write");
        file.sync_data().expect("fdatasync");
        syncs += 1;
    }
    syncs as f64 / started.elapsed().as_secs_f64()
}

criterion_group!(benches, raw_fdatasync, group_commit, pipelined);
criterion_main!(benches);
