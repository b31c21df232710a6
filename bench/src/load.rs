//! The load generator: logical clients spread over a few worker threads, closed loop (each client
//! waits for its answer before the next request) or open loop at a constant rate, where latency
//! counts from each request's intended send time so coordinated omission cannot hide the tail.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use keel_engine::core::Index;
use keel_engine::node::Error;
use rand::{Rng, SeedableRng};

use crate::ledger::{Acknowledged, Ledger};

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
    /// A write's index (`None` for a read) once the request finished; until then `cx`'s waker
    /// is woken when it does.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Index>, Error>>;
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
    /// A timed run's duration (until its stop, the requests then in flight not waited for);
    /// else until the last request finished.
    pub elapsed: Duration,
    pub ok: u64,
    /// Of `ok`, the requests a timed run's stop found in flight and that were answered after
    /// it: their latencies count, but not in a rate over `elapsed`, which ended before them.
    pub answered_after_stop: u64,
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

/// Acknowledged writes a worker gathers before it records them in the ledger.
const ACKS_BATCH: usize = 256;

/// How often a worker looks for requests past their timeout.
const TIMEOUT_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// A worker with at most this many requests in flight waits for an answer spinning briefly
/// before it sleeps: waking a sleeping thread took about 100 us on the project's VM (1 client,
/// in memory: p50 0.20 ms sleeping at once, 0.10 ms spinning first), as long as keel's whole
/// commit, and it would count as keel's latency. With more in flight answers come often, and
/// spinning would take CPU from the nodes.
const SPIN_IN_FLIGHT_MAX: usize = 4;

/// An open-loop worker with nothing due sets its timer no sooner than this (an answer may still
/// wake it earlier), and then sends everything that fell due meanwhile. Waking for each send (every
/// 18 us per worker at 112,000/s) cost the loader 34% of a core on the 2-core VM, CPU taken from
/// the nodes it measures; with this quantum it took 23%, and keel's p50 and p99 at that rate both
/// dropped (1.38-1.64 -> 1.16-1.30 ms, 15.5-18.7 -> 11.8-14.9 ms). The wait is charged to keel: a
/// request's latency still counts from its scheduled time.
const SEND_QUANTUM: Duration = Duration::from_micros(200);

/// When a worker waiting for answers wakes by itself: for the next send, no sooner than a
/// [`SEND_QUANTUM`] from `now`, or for the next timeout check if that comes first.
fn wake_at(now: Instant, next_due: Option<Instant>, next_timeout_check: Instant) -> Instant {
    next_due.map_or(next_timeout_check, |due| {
        due.max(now + SEND_QUANTUM).min(next_timeout_check)
    })
}

/// Wakes a worker for one of its clients: the request finished, or may have.
struct ClientWaker {
    client: usize,
    woken: crossbeam_channel::Sender<usize>,
    worker: std::thread::Thread,
}

impl Wake for ClientWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.woken.send(self.client);
        self.worker.unpark();
    }
}

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
    let mut window = None;
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
            window = Some(started.elapsed());
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    // A timed run is measured over its window. The requests in flight at the stop finish after
    // it, and one stuck until its timeout would stretch the time every rate is divided by.
    let elapsed = window.unwrap_or_else(|| started.elapsed());
    let mut out = LoadResult {
        elapsed,
        ok: 0,
        answered_after_stop: 0,
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
        out.answered_after_stop += r.answered_after_stop;
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

/// Each client's request in flight, by client number.
struct InFlight {
    requests: Vec<Option<Outstanding>>,
    count: usize,
}

impl InFlight {
    fn take(&mut self, client: usize) -> Outstanding {
        self.count -= 1;
        self.requests[client]
            .take()
            .expect("the client has a request in flight")
    }
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
    answered_after_stop: u64,
    errors: BTreeMap<String, u64>,
    writes_h: Histogram<u64>,
    reads_h: Histogram<u64>,
    timeline: Vec<Histogram<u32>>,
    late_sends: u64,
    /// Acknowledged writes not yet in the ledger (see [`Ledger::acknowledged_all`]); empty once
    /// `run` returns.
    acks: Vec<Acknowledged>,
}

impl Worker<'_> {
    /// Issues requests and takes their answers as they come: each client's request sends the
    /// worker the client's number when it finishes (and unparks it), so an answer costs the same
    /// however many are in flight (looking over every outstanding request for finished ones took
    /// a fifth of the machine at 87,000 requests/s).
    fn run(self) -> WorkerResult {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.seed);
        let mut result = WorkerResult {
            ok: 0,
            answered_after_stop: 0,
            errors: BTreeMap::new(),
            writes_h: new_histogram(),
            reads_h: new_histogram(),
            timeline: Vec::new(),
            late_sends: 0,
            acks: Vec::with_capacity(ACKS_BATCH),
        };
        let (woken_tx, woken) = crossbeam_channel::unbounded();
        let wakers: Vec<Waker> = (0..self.clients)
            .map(|client| {
                Waker::from(Arc::new(ClientWaker {
                    client,
                    woken: woken_tx.clone(),
                    worker: std::thread::current(),
                }))
            })
            .collect();
        let mut in_flight = InFlight {
            requests: (0..self.clients).map(|_| None).collect(),
            count: 0,
        };
        let mut idle: Vec<usize> = (0..self.clients).rev().collect();
        let mut sent = 0u64;
        let mut next_timeout_check = Instant::now() + TIMEOUT_CHECK_INTERVAL;
        let mut backlog_counted = false;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping && !backlog_counted {
                backlog_counted = true;
                // An open loop that fell behind stops with requests due and never sent: the
                // slowest of the run, had they gone. Counted, not forgotten: those due over
                // `LATE_SEND` before the stop (the last moment's are only waiting their turn).
                let timed = self.spec.duration.filter(|_| !self.exhausted());
                if let (Some(rate), Some(duration)) = (self.rate, timed) {
                    let due_by = duration.saturating_sub(LATE_SEND);
                    let due = (due_by.as_secs_f64() * rate).ceil() as u64;
                    let not_sent = due.saturating_sub(sent);
                    if not_sent > 0 {
                        *result.errors.entry("not_sent".into()).or_default() += not_sent;
                    }
                }
            }
            // Issue: closed loop fills every idle client; open loop sends what is due.
            let mut next_due = None;
            while !stopping && !idle.is_empty() {
                let intended = match self.rate {
                    None => Instant::now(),
                    Some(rate) => {
                        let due = self.started + Duration::from_secs_f64(sent as f64 / rate);
                        if due > Instant::now() {
                            next_due = Some(due);
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
                in_flight.requests[client] = Some(self.issue(&mut rng, client, key_no, intended));
                in_flight.count += 1;
                // The first poll registers the client's waker.
                self.poll(client, &wakers, &mut in_flight, &mut result, &mut idle);
            }
            for client in woken.try_iter() {
                self.poll(client, &wakers, &mut in_flight, &mut result, &mut idle);
            }
            let now = Instant::now();
            if now >= next_timeout_check {
                next_timeout_check = now + TIMEOUT_CHECK_INTERVAL;
                for client in 0..in_flight.requests.len() {
                    let timed_out = in_flight.requests[client]
                        .as_ref()
                        .is_some_and(|o| o.start.elapsed() >= self.spec.request_timeout);
                    if timed_out {
                        let o = in_flight.take(client);
                        self.finish(o, Err(Error::Timeout), &mut result, &mut idle);
                    }
                }
            }
            if in_flight.count == 0
                && (stopping || (self.rate.is_none() && idle.is_empty()) || self.exhausted())
            {
                break;
            }
            // A closed loop gives the clients whose answers just came their next request first
            // (waiting here left them idle until the next answer: 400 of 1,024 clients at peak).
            if self.rate.is_none() && !stopping && !idle.is_empty() && !self.exhausted() {
                continue;
            }
            // Wait for an answer, until the next send is due or timeouts are to be checked.
            let now = Instant::now();
            let wait = wake_at(now, next_due, next_timeout_check).saturating_duration_since(now);
            if in_flight.count <= SPIN_IN_FLIGHT_MAX {
                // The channel's receive spins a little before it sleeps.
                if let Ok(client) = woken.recv_timeout(wait) {
                    self.poll(client, &wakers, &mut in_flight, &mut result, &mut idle);
                }
            } else if woken.is_empty() {
                std::thread::park_timeout(wait);
            }
        }
        self.ledger.acknowledged_all(&mut result.acks);
        result
    }

    /// Polls `client`'s request, if it has one, and accounts for its answer if it came.
    fn poll(
        &self,
        client: usize,
        wakers: &[Waker],
        in_flight: &mut InFlight,
        result: &mut WorkerResult,
        idle: &mut Vec<usize>,
    ) {
        // A wake can outlive its request (a timed-out request finishing later).
        let Some(o) = in_flight.requests[client].as_mut() else {
            return;
        };
        if let Poll::Ready(outcome) = o.request.poll(&mut Context::from_waker(&wakers[client])) {
            let o = in_flight.take(client);
            self.finish(o, outcome, result, idle);
        }
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
                    Error::OutcomeUnknown => "outcome_unknown",
                    Error::Stopped { .. } => "stopped",
                    Error::TooLarge { .. } => "too_large",
                    _ => "other",
                };
                *result.errors.entry(kind.to_string()).or_default() += 1;
                return;
            }
        };
        result.ok += 1;
        if self.stop.load(Ordering::Relaxed) {
            result.answered_after_stop += 1;
        }
        let step = (self.started.elapsed().as_nanos() / TIMELINE_INTERVAL.as_nanos()) as usize;
        if result.timeline.len() <= step {
            result.timeline.resize_with(step + 1, new_step_histogram);
        }
        result.timeline[step].saturating_record(latency_us.max(1));
        match o.op {
            Op::Write { key, id } => {
                result.writes_h.saturating_record(latency_us.max(1));
                match index {
                    Some(index) => {
                        result.acks.push(Acknowledged { key, id, index });
                        if result.acks.len() >= ACKS_BATCH {
                            self.ledger.acknowledged_all(&mut result.acks);
                        }
                    }
                    None => self.ledger.unknown(key, id),
                }
            }
            Op::Read => {
                result.reads_h.saturating_record(latency_us.max(1));
            }
        }
    }
}

pub fn key_bytes(prefix: &str, key: u64) -> Bytes {
    use std::fmt::Write as _;
    // Exactly the room needed, so the string's allocation becomes the key's as it is (`format!`
    // grew its string as it went; with spare room `Bytes` would allocate again).
    let digits = key.checked_ilog10().map_or(1, |d| d as usize + 1).max(12);
    let mut s = String::with_capacity(prefix.len() + 1 + digits);
    let _ = write!(s, "{prefix}-{key:012}");
    debug_assert_eq!(s.len(), s.capacity());
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that finish a fixed time after they start: the first slowly, the rest at once.
    struct Delayed {
        started: AtomicU64,
        /// How long each request takes, by its number; `None`: forever.
        delays: fn(u64) -> Option<Duration>,
    }

    impl Delayed {
        fn delays(&self, n: u64) -> Option<Duration> {
            (self.delays)(n)
        }
    }

    /// Finishes after a delay (never, for `None`), on a thread of its own that then wakes
    /// whoever polled it.
    struct DelayedRequest {
        /// Finished yet, and the waker to wake when it does.
        state: Arc<parking_lot::Mutex<(bool, Option<Waker>)>>,
    }

    impl DelayedRequest {
        fn new(delay: Option<Duration>) -> Self {
            let state = Arc::new(parking_lot::Mutex::new((false, None::<Waker>)));
            if let Some(delay) = delay {
                let state = state.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let waker = {
                        let mut s = state.lock();
                        s.0 = true;
                        s.1.take()
                    };
                    waker.into_iter().for_each(Waker::wake);
                });
            }
            Self { state }
        }
    }

    impl Request for DelayedRequest {
        fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Index>, Error>> {
            let mut s = self.state.lock();
            if s.0 {
                return Poll::Ready(Ok(Some(1)));
            }
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl Target for Delayed {
        fn put(&self, _key: Bytes, _value: Bytes) -> Box<dyn Request> {
            let n = self.started.fetch_add(1, Ordering::Relaxed);
            Box::new(DelayedRequest::new(self.delays(n)))
        }

        fn get(&self, _key: Bytes, _lease: bool) -> Box<dyn Request> {
            unreachable!("the test only writes")
        }

        fn read_back(&self, keys: &[Bytes]) -> Vec<Result<Option<Bytes>, Error>> {
            keys.iter().map(|_| Ok(None)).collect()
        }
    }

    fn spec(total: u64, request_timeout: Duration) -> LoadSpec {
        LoadSpec {
            clients: 2,
            workers: 1,
            duration: None,
            total: Some(total),
            value_size: 8,
            key_space: 10,
            read_ratio: 0.0,
            rate: None,
            lease_reads: false,
            request_timeout,
            key_prefix: "t".into(),
            seed: 1,
            sequential_keys: false,
        }
    }

    #[test]
    fn keys_are_the_prefix_and_a_zero_padded_number() {
        assert_eq!(&key_bytes("p", 7)[..], b"p-000000000007");
        assert_eq!(&key_bytes("run", 999_999_999_999)[..], b"run-999999999999");
        assert_eq!(&key_bytes("p", 1_000_000_000_000)[..], b"p-1000000000000");
        assert_eq!(key_bytes("p", u64::MAX), format!("p-{}", u64::MAX));
    }

    #[test]
    fn an_open_loop_worker_sleeps_a_quantum_between_sends_unless_a_timeout_check_is_due() {
        let now = Instant::now();
        let check = now + TIMEOUT_CHECK_INTERVAL;
        let soon = now + SEND_QUANTUM / 10;
        let later = now + SEND_QUANTUM * 3;
        assert_eq!(wake_at(now, Some(soon), check), now + SEND_QUANTUM);
        assert_eq!(wake_at(now, Some(now), check), now + SEND_QUANTUM);
        assert_eq!(wake_at(now, Some(later), check), later);
        assert_eq!(wake_at(now, None, check), check);
        let early_check = now + SEND_QUANTUM / 2;
        assert_eq!(wake_at(now, Some(soon), early_check), early_check);
    }

    #[test]
    fn a_request_behind_a_slow_one_is_timed_when_it_finishes() {
        let target = Arc::new(Delayed {
            started: AtomicU64::new(0),
            delays: |n| Some(Duration::from_millis(if n == 0 { 300 } else { 0 })),
        });
        let spec = spec(2, Duration::from_secs(5));
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

    #[test]
    fn an_open_loop_counts_the_requests_due_but_never_sent_when_it_stops() {
        // One client whose requests take 300 ms, asked for 100 a second over one second: it
        // can send four; the other ninety-odd were due all the same.
        let target = Arc::new(Delayed {
            started: AtomicU64::new(0),
            delays: |_| Some(Duration::from_millis(300)),
        });
        let mut spec = spec(u64::MAX, Duration::from_secs(5));
        spec.clients = 1;
        spec.total = None;
        spec.duration = Some(Duration::from_secs(1));
        spec.rate = Some(100.0);
        let result = run(target, &spec, &Ledger::new("t", 10), &AtomicU64::new(0));
        let not_sent = result.errors.get("not_sent").copied().unwrap_or(0);
        assert!(result.ok <= 5, "{} answered", result.ok);
        assert_eq!(result.ok + not_sent, 100, "{:?}", result.errors);
    }

    #[test]
    fn a_timed_run_is_measured_over_its_window_not_its_drain() {
        // The third request takes 2 s; the run stops after 200 ms, and waits for it.
        let target = Arc::new(Delayed {
            started: AtomicU64::new(0),
            delays: |n| Some(Duration::from_millis(if n == 2 { 2000 } else { 1 })),
        });
        let mut spec = spec(u64::MAX, Duration::from_secs(5));
        spec.total = None;
        spec.duration = Some(Duration::from_millis(200));
        let started = Instant::now();
        let result = run(target, &spec, &Ledger::new("t", 10), &AtomicU64::new(0));
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "the slow request was waited for"
        );
        assert!(
            result.elapsed < Duration::from_secs(1),
            "measured over {:?}",
            result.elapsed
        );
        assert!(result.ok > 2, "{} answered", result.ok);
        // The slow one, and perhaps the other client's, in flight at the stop: out of the rate.
        let after = result.answered_after_stop;
        assert!((1..=2).contains(&after), "{after} answered after the stop");
    }

    #[test]
    fn a_request_that_never_finishes_times_out_and_the_run_ends() {
        // The second request never wakes its worker: only the timeout check can end it.
        let target = Arc::new(Delayed {
            started: AtomicU64::new(0),
            delays: |n| (n == 0).then_some(Duration::ZERO),
        });
        let spec = spec(2, Duration::from_millis(50));
        let result = run(target, &spec, &Ledger::new("t", 10), &AtomicU64::new(0));
        assert_eq!(result.ok, 1);
        assert_eq!(result.errors.get("timeout"), Some(&1));
        assert!(
            result.elapsed < Duration::from_secs(5),
            "{:?}",
            result.elapsed
        );
    }
}
