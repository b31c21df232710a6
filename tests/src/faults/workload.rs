//! Clients that record a history: each on its own thread with its own [`KvClient`], issuing
//! puts, deletes, compare-and-swaps and reads (through ReadIndex and through the leader lease)
//! on a small set of keys, with values no two writes share.
//!
//! What each answer means for the history (see [`ClientError`]): an answer from the store is
//! `Ok`; an error that proves the command was never proposed (`NotLeader`, `Unavailable`,
//! `Dropped`...) is `Failed`; a lost answer or a node-side timeout is `Unknown`, since the
//! command may still take effect. A failed read is `Failed`: it changed nothing either way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_engine::kv::{Consistency, KvError};
use keel_engine::node::Error as NodeError;
use keel_transport_quic::{ClientError, KvClient};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::linearizability::{CasResult, Op, Operation, Outcome, Status};

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub clients: usize,
    /// Besides them, a reader pinned to each node of the cluster as it starts: clients follow
    /// the leader, so without these no read would reach a deposed leader, or a follower cut
    /// off from the leader, to show what it serves.
    pub pinned_readers: bool,
    /// Besides them, a writer pinned to each node as it starts (it reads too): on a follower
    /// that forwards writes (`ClusterOptions::forward_writes`) its writes go to the leader
    /// through the follower, under the faults.
    pub pinned_writers: bool,
    pub keys: usize,
    /// A client's whole call, retries included; past it the outcome is unknown.
    pub request_timeout: Duration,
    /// How long a client waits on one node before it tries another. Shorter than a partition's
    /// hold, so clients of a leader that was cut off reach the majority's new leader while the
    /// old one is still cut off: without writes there, nothing the old one serves is stale.
    pub attempt_timeout: Duration,
    /// A pinned reader's whole call. Short, so a ReadIndex that a cut-off node cannot confirm
    /// does not hold the reader through the window where its lease reads would show staleness.
    pub reader_timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            clients: 4,
            pinned_readers: true,
            pinned_writers: false,
            keys: 6,
            request_timeout: Duration::from_millis(1500),
            attempt_timeout: Duration::from_millis(400),
            reader_timeout: Duration::from_millis(250),
        }
    }
}

/// The clock every operation's times are read from: nanoseconds since the scenario began.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).expect("a scenario lasts less than 584 years")
    }
}

/// The key names of a workload.
pub fn key(i: usize) -> Bytes {
    Bytes::from(format!("k{i}"))
}

/// Clients running against a cluster until [`Workload::stop`].
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Operation>>>,
    completed: Arc<AtomicU64>,
}

impl Workload {
    /// Starts `clients`, which read and write, `readers`, which only read, and `writers`, which
    /// read and write and, like the readers, stay with one node (already connected, one per
    /// thread).
    pub fn start(
        clients: Vec<KvClient>,
        readers: Vec<KvClient>,
        writers: Vec<KvClient>,
        opts: &WorkloadOptions,
        clock: Clock,
        seed: u64,
    ) -> std::io::Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let roles = (clients.into_iter().map(|c| (c, Role::Roaming)))
            .chain(readers.into_iter().map(|c| (c, Role::PinnedReader)))
            .chain(writers.into_iter().map(|c| (c, Role::PinnedWriter)));
        for (i, (client, role)) in roles.enumerate() {
            let mut actor = Actor {
                role,
                id: i as u64 + 1,
                client,
                clock,
                rng: ChaCha8Rng::seed_from_u64(seed ^ (i as u64 + 1).rotate_left(32)),
                keys: opts.keys,
                written: 0,
                seen: vec![None; opts.keys],
            };
            let stop = stop.clone();
            let completed = completed.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("client-{}", actor.id))
                    .spawn(move || {
                        let mut history = Vec::new();
                        while !stop.load(Ordering::Acquire) {
                            let operation = actor.step();
                            // A client pinned to a node that cannot serve (no leader known, cut
                            // off, down) is refused at once: pause rather than flood it.
                            // (A failed operation changed nothing, and told nothing.)
                            let refused = actor.role != Role::Roaming
                                && operation.op.status() == Status::Failed;
                            history.push(operation);
                            completed.fetch_add(1, Ordering::Relaxed);
                            if refused {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        history
                    })?,
            );
        }
        Ok(Workload {
            stop,
            threads,
            completed,
        })
    }

    /// Operations completed so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes its operation in flight, bounded by its timeout) and
    /// returns everything they did.
    pub fn stop(mut self) -> Vec<Operation> {
        self.stop.store(true, Ordering::Release);
        let mut history = Vec::new();
        for thread in self.threads.drain(..) {
            history.extend(thread.join().expect("a client thread never panics"));
        }
        history
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What a client does, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Reads and writes, following the leader.
    Roaming,
    /// Reads alone (half through ReadIndex, half through the lease), from one node.
    PinnedReader,
    /// Reads and writes through one node.
    PinnedWriter,
}

/// One client and what it knows.
struct Actor {
    id: u64,
    role: Role,
    client: KvClient,
    clock: Clock,
    rng: ChaCha8Rng,
    keys: usize,
    /// Writes issued, for unique values.
    written: u64,
    /// The last value this client saw on each key: what its compare-and-swaps expect.
    seen: Vec<Option<Bytes>>,
}

impl Actor {
    fn value(&mut self) -> Bytes {
        self.written += 1;
        Bytes::from(format!("c{}.{}", self.id, self.written))
    }

    fn step(&mut self) -> Operation {
        let k = self.rng.random_range(0..self.keys);
        let key = key(k);
        let invoked_ns = self.clock.now_ns();
        let first = if self.role == Role::PinnedReader {
            60
        } else {
            0
        };
        let op = match self.rng.random_range(first..100) {
            0..30 => {
                let value = self.value();
                let outcome = write_outcome(self.client.put(key.clone(), value.clone()));
                if matches!(outcome, Outcome::Ok(())) {
                    self.seen[k] = Some(value.clone());
                }
                Op::Put {
                    key,
                    value,
                    outcome,
                }
            }
            30..40 => {
                let outcome = match self.client.delete(key.clone()) {
                    Err(ClientError::Kv(KvError::NotFound)) => Outcome::Ok(false),
                    other => match write_outcome(other) {
                        Outcome::Ok(()) => Outcome::Ok(true),
                        Outcome::Failed => Outcome::Failed,
                        Outcome::Unknown => Outcome::Unknown,
                    },
                };
                if matches!(outcome, Outcome::Ok(_)) {
                    self.seen[k] = None;
                }
                Op::Delete { key, outcome }
            }
            40..60 => {
                let expected = self.seen[k].clone();
                let new = Some(self.value());
                let result =
                    self.client
                        .compare_and_swap(key.clone(), expected.clone(), new.clone());
                let outcome = match result {
                    Err(ClientError::Kv(KvError::CompareFailed { current })) => {
                        self.seen[k] = current.clone();
                        Outcome::Ok(CasResult::CompareFailed { current })
                    }
                    other => match write_outcome(other) {
                        Outcome::Ok(()) => {
                            self.seen[k] = new.clone();
                            Outcome::Ok(CasResult::Swapped)
                        }
                        Outcome::Failed => Outcome::Failed,
                        Outcome::Unknown => Outcome::Unknown,
                    },
                };
                Op::CompareAndSwap {
                    key,
                    expected,
                    new,
                    outcome,
                }
            }
            roll => {
                let consistency = if roll < 80 {
                    Consistency::Linearizable
                } else {
                    Consistency::Lease
                };
                let outcome = read(&self.client, &key, consistency);
                if let Outcome::Ok(v) = &outcome {
                    self.seen[k] = v.clone();
                }
                Op::Get { key, outcome }
            }
        };
        Operation {
            client: self.id,
            invoked_ns,
            completed_ns: self.clock.now_ns(),
            op,
        }
    }
}

/// A linearizable or lease read as the history records it.
pub fn read(client: &KvClient, key: &Bytes, consistency: Consistency) -> Outcome<Option<Bytes>> {
    match client.get(key.clone(), consistency) {
        Ok(v) => Outcome::Ok(Some(v)),
        Err(ClientError::Kv(KvError::NotFound)) => Outcome::Ok(None),
        Err(_) => Outcome::Failed,
    }
}

/// A write's outcome, when the store's refusals (not found, compare failed) were already taken.
fn write_outcome<T>(result: Result<T, ClientError>) -> Outcome<()> {
    match result {
        Ok(_) => Outcome::Ok(()),
        Err(ClientError::Unavailable(_) | ClientError::Setup(_)) => Outcome::Failed,
        Err(ClientError::Kv(KvError::Node(e))) => match e {
            NodeError::NotLeader { .. }
            | NodeError::Dropped
            | NodeError::TooLarge { .. }
            | NodeError::TransferInProgress
            | NodeError::Config(_) => Outcome::Failed,
            // Timeout and Stopped: proposed, perhaps replicated; the rest: be conservative.
            _ => Outcome::Unknown,
        },
        Err(_) => Outcome::Unknown,
    }
}
