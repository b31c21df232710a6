//! The load generator: logical clients spread over a few worker threads, closed loop (each client
//! waits for its answer before the next request) or open loop at a constant rate, where latency
//! counts from each request's intended send time so coordinated omission cannot hide the tail.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use keel_engine::core::Index;
use keel_engine::node::Error;
use rand::{Rng, SeedableRng};

use crate::ledger::Ledger;

/// What the load runs against.
pub trait Target: Send + Sync {
    /// Starts a write; it completes with its index once committed.
    fn put(&self, key: Bytes, value: Bytes) -> Box<dyn Request>;
    /// Starts a linearizable read (on the lease when `lease`).
    fn get(&self, key: Bytes, lease: bool) -> Box<dyn Request>;
    /// Reads keys linearizably (each read starts after this call does), for checking the run
    /// afterwards; one result per key, in order.
    fn read_back(&self, keys: &[Bytes]) -> Vec<Result<Option<Bytes>, Error>>;
}

/// A request in flight.
pub trait Request: Send {
    /// Waits up to `timeout`: `None` while pending; a write's index, or `None` for a read.
    fn wait_for(&self, timeout: Duration) -> Option<Result<Option<Index>, Error>>;
}

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub clients: usize,
    pub workers: usize,
    pub duration: Option<Duration>,
    pub total: Option<u64>,
    pub value_size: usize,
    pub key_space: u64,
    pub read_ratio: f64,
    /// Requests per second across all clients (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    pub lease_reads: bool,
    pub request_timeout: Duration,
    /// Keys are `<key_prefix>-<number>`: loaders running at once use prefixes of their own, so
    /// that each can check its own acknowledged writes afterwards.
    pub key_prefix: String,
    /// Seeds the workers' choice of keys and of reads versus writes.
    pub seed: u64,
    /// Keys in order (0, 1, 2...) instead of at random: a prefill writes each key once.
    pub sequential_keys: bool,
}

/// What one run measured.
#[derive(Debug)]
pub struct LoadResult {
    pub elapsed: Duration,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Microseconds, request (or intended send) to completion.
    pub latency_us: Histogram<u64>,
    pub write_latency_us: Histogram<u64>,
    pub read_latency_us: Histogram<u64>,
    /// When the run started, and the latencies of the requests that completed in each
    /// [`TIMELINE_INTERVAL`] of it: where a tail comes from, in time.
    pub started_at: SystemTime,
    pub timeline: Vec<Histogram<u32>>,
    /// Open loop: requests sent more than [`LATE_SEND`] after their scheduled time (every client
    /// busy, or the loader short of CPU). Their latency still counts from the schedule.
    pub late_sends: u64,
}

/// The width of one step of [`LoadResult::timeline`].
pub const TIMELINE_INTERVAL: Duration = Duration::from_millis(100);
/// How late an open-loop send may be before it counts in [`LoadResult::late_sends`].
pub const LATE_SEND: Duration = Duration::from_millis(1);

/// What a request was, to account for its answer.
enum Op {
    /// A write of value `id` to key number `key`.
    Write {
        key: u64,
        id: u64,
    },
    Read,
}

struct Outstanding {
    client: usize,
    start: Instant,
    op: Op,
    request: Box<dyn Request>,
}

/// How late a request that finishes behind a slower, older one may be timed (it was timed when
/// the oldest finished, which could add the oldest's whole delay to every request behind it).
const SWEEP_INTERVAL: Duration = Duration::from_millis(1);

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

/// One step of the timeline: two significant digits, 32-bit counts, to stay small over long runs.
fn new_step_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("static bounds are valid")
}

/// Runs the load and returns what it measured; what each write's client learned goes to
/// `ledger`. `progress` counts completed requests.
pub fn run(
    target: Arc<dyn Target>,
    spec: &LoadSpec,
    ledger: &Ledger,
    progress: &AtomicU64,
) -> LoadResult {
    let stop = AtomicBool::new(false);
    let issued = AtomicU64::new(0);
    let next_id = AtomicU64::new(1);
    let started_at = SystemTime::now();
    let started = Instant::now();
    let workers = spec.workers.clamp(1, spec.clients.max(1));
    let results: Vec<WorkerResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let clients = spec.clients / workers + usize::from(w < spec.clients % workers);
                let ctx = Worker {
                    target: target.as_ref(),
                    spec,
                    clients,
                    seed: spec.seed.wrapping_add(w as u64),
                    rate: spec.rate.map(|r| r / workers as f64),
                    stop: &stop,
                    issued: &issued,
                    next_id: &next_id,
                    ledger,
                    progress,
                    started,
                };
                s.spawn(move || ctx.run())
            })
            .collect();
        if let Some(d) = spec.duration {
            while started.elapsed() < d && !handles.iter().all(|h| h.is_finished()) {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Release);
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut out = LoadResult {
        elapsed,
        ok: 0,
        errors: BTreeMap::new(),
        latency_us: new_histogram(),
        write_latency_us: new_histogram(),
        read_latency_us: new_histogram(),
        started_at,
        timeline: Vec::new(),
        late_sends: 0,
    };
    for r in results {
        out.ok += r.ok;
        out.late_sends += r.late_sends;
        if out.timeline.len() < r.timeline.len() {
            out.timeline
                .resize_with(r.timeline.len(), new_step_histogram);
        }
        for (step, h) in out.timeline.iter_mut().zip(&r.timeline) {
            step.add(h).expect("same bounds");
        }
        for (k, v) in r.errors {
            *out.errors.entry(k).or_default() += v;
        }
        out.latency_us.add(&r.writes_h).expect("same bounds");
        out.latency_us.add(&r.reads_h).expect("same bounds");
        out.write_latency_us.add(&r.writes_h).expect("same bounds");
        out.read_latency_us.add(&r.reads_h).expect("same bounds");
    }
    out
}

struct Worker<'a> {
    target: &'a dyn Target,
    spec: &'a LoadSpec,
    clients: usize,
    seed: u64,
    rate: Option<f64>,
    stop: &'a AtomicBool,
    issued: &'a AtomicU64,
    next_id: &'a AtomicU64,
    ledger: &'a Ledger,
    progress: &'a AtomicU64,
    started: Instant,
}

struct WorkerResult {
    ok: u64,
    errors: BTreeMap<String, u64>,
    writes_h: Histogram<u64>,
    reads_h: Histogram<u64>,
    timeline: Vec<Histogram<u32>>,
    late_sends: u64,
}

impl Worker<'_> {
    fn run(self) -> WorkerResult {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.seed);
        let mut result = WorkerResult {
            ok: 0,
            errors: BTreeMap::new(),
            writes_h: new_histogram(),
            reads_h: new_histogram(),
            timeline: Vec::new(),
            late_sends: 0,
        };
        let mut idle: Vec<usize> = (0..self.clients).collect();
        let mut outstanding: VecDeque<Outstanding> = VecDeque::new();
        let mut sent = 0u64;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            // Issue: closed loop fills every idle client; open loop sends what is due.
            while !stopping && !idle.is_empty() {
                let intended = match self.rate {
                    None => Instant::now(),
                    Some(rate) => {
                        let due = self.started + Duration::from_secs_f64(sent as f64 / rate);
                        if due > Instant::now() {
                            break;
                        }
                        due
                    }
                };
                let Some(seq) = self.claim() else {
                    break;
                };
                sent += 1;
                if self.rate.is_some() && intended.elapsed() > LATE_SEND {
                    result.late_sends += 1;
                }
                let client = idle.pop().expect("checked non-empty");
                let key_no = if self.spec.sequential_keys {
                    seq % self.spec.key_space.max(1)
                } else {
                    rng.random_range(0..self.spec.key_space.max(1))
                };
                outstanding.push_back(self.issue(&mut rng, client, key_no, intended));
            }
            let Some(front) = outstanding.front() else {
                if stopping || (self.rate.is_none() && idle.is_empty()) || self.exhausted() {
                    break;
                }
                // Open loop and nothing in flight: sleep until the next send is due.
                if let Some(rate) = self.rate {
                    let due = self.started + Duration::from_secs_f64(sent as f64 / rate);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                continue;
            };
            // Wait for the oldest request, but not past the next scheduled send, and not past
            // a sweep interval: newer requests may finish first, and each is timed when it does.
            let mut wait = SWEEP_INTERVAL;
            if let Some(rate) = self.rate {
                let due = self.started + Duration::from_secs_f64(sent as f64 / rate);
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            if let Some(outcome) = front.request.wait_for(wait) {
                let o = outstanding.pop_front().expect("front exists");
                self.finish(o, outcome, &mut result, &mut idle);
                continue;
            }
            // The oldest is still pending: take whatever else finished, and what timed out.
            let mut i = 0;
            while i < outstanding.len() {
                let o = &outstanding[i];
                let outcome = o.request.wait_for(Duration::ZERO).or_else(|| {
                    (o.start.elapsed() >= self.spec.request_timeout).then_some(Err(Error::Timeout))
                });
                match outcome {
                    Some(outcome) => {
                        let o = outstanding.remove(i).expect("index in range");
                        self.finish(o, outcome, &mut result, &mut idle);
                    }
                    None => i += 1,
                }
            }
        }
        result
    }

    fn finish(
        &self,
        o: Outstanding,
        outcome: Result<Option<Index>, Error>,
        result: &mut WorkerResult,
        idle: &mut Vec<usize>,
    ) {
        let latency_us = u64::try_from(o.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.record(o, outcome, latency_us, result, idle);
    }

    /// Takes one request from the total budget, if there is one; its number across all workers.
    fn claim(&self) -> Option<u64> {
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        self.spec
            .total
            .is_none_or(|total| seq < total)
            .then_some(seq)
    }

    fn exhausted(&self) -> bool {
        self.spec
            .total
            .is_some_and(|t| self.issued.load(Ordering::Relaxed) >= t)
    }

    fn issue(&self, rng: &mut impl Rng, client: usize, key_no: u64, start: Instant) -> Outstanding {
        let key = key_bytes(&self.spec.key_prefix, key_no);
        if rng.random_bool(self.spec.read_ratio.clamp(0.0, 1.0)) {
            return Outstanding {
                client,
                start,
                op: Op::Read,
                request: self.target.get(key, self.spec.lease_reads),
            };
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut value = vec![0u8; self.spec.value_size];
        let id_bytes = id.to_le_bytes();
        let n = id_bytes.len().min(value.len());
        value[..n].copy_from_slice(&id_bytes[..n]);
        let request = self.target.put(key, Bytes::from(value));
        Outstanding {
            client,
            start,
            op: Op::Write { key: key_no, id },
            request,
        }
    }

    fn record(
        &self,
        o: Outstanding,
        outcome: Result<Option<Index>, Error>,
        latency_us: u64,
        result: &mut WorkerResult,
        idle: &mut Vec<usize>,
    ) {
        idle.push(o.client);
        self.progress.fetch_add(1, Ordering::Relaxed);
        let index = match &outcome {
            Ok(index) => *index,
            Err(e) => {
                if let Op::Write { key, id } = o.op {
                    self.ledger.unknown(key, id);
                }
                let kind = match e {
                    Error::NotLeader { .. } => "not_leader",
                    Error::Timeout => "timeout",
                    Error::Dropped => "dropped",
                    Error::Stopped { .. } => "stopped",
                    Error::TooLarge { .. } => "too_large",
                    _ => "other",
                };
                *result.errors.entry(kind.to_string()).or_default() += 1;
                return;
            }
        };
        result.ok += 1;
        let step = (self.started.elapsed().as_nanos() / TIMELINE_INTERVAL.as_nanos()) as usize;
        if result.timeline.len() <= step {
            result.timeline.resize_with(step + 1, new_step_histogram);
        }
        let _ = result.timeline[step].record(latency_us.max(1));
        match o.op {
            Op::Write { key, id } => {
                let _ = result.writes_h.record(latency_us.max(1));
                match index {
                    Some(index) => self.ledger.acknowledged(key, id, index),
                    None => self.ledger.unknown(key, id),
                }
            }
            Op::Read => {
                let _ = result.reads_h.record(latency_us.max(1));
            }
        }
    }
}

pub fn key_bytes(prefix: &str, key: u64) -> Bytes {
    Bytes::from(format!("{prefix}-{key:012}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that finish a fixed time after they start: the first slowly, the rest at once.
    struct Delayed {
        started: AtomicU64,
    }

    struct DelayedRequest {
        ready: Instant,
    }

    impl Request for DelayedRequest {
        fn wait_for(&self, timeout: Duration) -> Option<Result<Option<Index>, Error>> {
            let left = self.ready.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(timeout));
            (Instant::now() >= self.ready).then_some(Ok(Some(1)))
        }
    }

    impl Target for Delayed {
        fn put(&self, _key: Bytes, _value: Bytes) -> Box<dyn Request> {
            let n = self.started.fetch_add(1, Ordering::Relaxed);
            let delay = if n == 0 { 300 } else { 0 };
            Box::new(DelayedRequest {
                ready: Instant::now() + Duration::from_millis(delay),
            })
        }

        fn get(&self, _key: Bytes, _lease: bool) -> Box<dyn Request> {
            unreachable!("the test only writes")
        }

        fn read_back(&self, keys: &[Bytes]) -> Vec<Result<Option<Bytes>, Error>> {
            keys.iter().map(|_| Ok(None)).collect()
        }
    }

    #[test]
    fn a_request_behind_a_slow_one_is_timed_when_it_finishes() {
        let spec = LoadSpec {
            clients: 2,
            workers: 1,
            duration: None,
            total: Some(2),
            value_size: 8,
            key_space: 10,
            read_ratio: 0.0,
            rate: None,
            lease_reads: false,
            request_timeout: Duration::from_secs(5),
            key_prefix: "t".into(),
            seed: 1,
            sequential_keys: false,
        };
        let target = Arc::new(Delayed {
            started: AtomicU64::new(0),
        });
        let result = run(target, &spec, &Ledger::new("t", 10), &AtomicU64::new(0));
        let h = &result.write_latency_us;
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 300_000, "the slow write: {} us", h.max());
        assert!(
            h.min() < 100_000,
            "the fast write was timed at {} us",
            h.min()
        );
    }
}
