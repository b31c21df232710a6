//! A UDP proxy between two peers, with faults the harness sets while it runs.
//!
//! QUIC runs over UDP, and the lower id of a pair dials the higher one; so one proxy in front of
//! the higher id, given to the lower id as that peer's address, carries all of the pair's
//! traffic. The proxy listens on its own address (the front), remembers where the dialler's
//! datagrams come from, and relays them to the target from a socket of its own (the back);
//! answers come back the same way. Each direction has its own [`LinkFaults`]: drop, delay with
//! jitter (so datagrams overtake each other), duplication, or a block. Partitions are built from
//! these by [`super::network::Network`].
//!
//! Three threads per proxy: one per direction reads and decides each datagram's fate, and one
//! sends the delayed ones when they are due. Every wait is bounded, and the threads stop when the
//! proxy is dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How often a blocked read wakes up to see whether the proxy is stopping.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Datagrams held for a delay at once; beyond this, new ones are dropped (a full queue).
const DELAYED_DATAGRAMS_MAX: usize = 20_000;
const DATAGRAM_BYTES_MAX: usize = 65_536;

/// What happens to datagrams in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Nothing gets through.
    pub blocked: bool,
    /// Probability that a datagram is lost.
    pub drop: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Every datagram waits this long...
    pub delay: Duration,
    /// ...plus a uniform random extra up to this, which reorders datagrams.
    pub jitter: Duration,
}

impl LinkFaults {
    pub const NONE: LinkFaults = LinkFaults {
        blocked: false,
        drop: 0.0,
        duplicate: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    pub const BLOCKED: LinkFaults = LinkFaults {
        blocked: true,
        ..LinkFaults::NONE
    };
}

/// Which way a datagram travels through a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the dialler (at the front) to the target.
    Forward,
    /// From the target back to the dialler.
    Backward,
}

/// Datagrams a proxy has seen, by fate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub relayed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    relayed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

/// A datagram waiting for its delay to pass.
#[derive(Debug)]
struct Delayed {
    due: Instant,
    /// Tie-breaker: equal due times leave in arrival order.
    seq: u64,
    direction: Direction,
    payload: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Debug)]
struct Shared {
    front: UdpSocket,
    back: UdpSocket,
    /// Where the dialler's datagrams came from: where answers go.
    dialler: Mutex<Option<SocketAddr>>,
    faults: Mutex<[LinkFaults; 2]>,
    delayed: Mutex<BinaryHeap<Reverse<Delayed>>>,
    delayed_changed: Condvar,
    stopping: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn faults(&self, direction: Direction) -> LinkFaults {
        self.faults
            .lock()
            .expect("fault settings are never poisoned")[direction as usize]
    }

    /// Sends `payload` on its way, now.
    fn deliver(&self, direction: Direction, payload: &[u8]) {
        let sent = match direction {
            Direction::Forward => self.back.send(payload),
            Direction::Backward => {
                let to = *self.dialler.lock().expect("never poisoned");
                match to {
                    Some(to) => self.front.send_to(payload, to),
                    None => return,
                }
            }
        };
        // A send fails when the target is down (ICMP unreachable): that is a lost datagram.
        if sent.is_ok() {
            self.counters.relayed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running proxy. Dropping it stops its threads.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    listen: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` and relays to `target`. `seed` drives the random faults.
    pub fn start(listen: SocketAddr, target: SocketAddr, seed: u64) -> std::io::Result<Proxy> {
        let front = UdpSocket::bind(listen)?;
        let back = UdpSocket::bind(SocketAddr::new(listen.ip(), 0))?;
        back.connect(target)?;
        for socket in [&front, &back] {
            socket.set_read_timeout(Some(POLL_INTERVAL))?;
        }
        let listen = front.local_addr()?;
        let shared = Arc::new(Shared {
            front,
            back,
            dialler: Mutex::new(None),
            faults: Mutex::new([LinkFaults::NONE; 2]),
            delayed: Mutex::new(BinaryHeap::new()),
            delayed_changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let mut threads = Vec::new();
        for (direction, salt) in [(Direction::Forward, 1), (Direction::Backward, 2)] {
            let shared = shared.clone();
            let rng = ChaCha8Rng::seed_from_u64(seed ^ salt);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("proxy-{listen}-{direction:?}"))
                    .spawn(move || relay(&shared, direction, rng))?,
            );
        }
        let timer = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("proxy-{listen}-delay"))
                .spawn(move || release_delayed(&timer))?,
        );
        Ok(Proxy {
            shared,
            listen,
            threads,
        })
    }

    /// Where the dialler should send.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn set(&self, direction: Direction, faults: LinkFaults) {
        self.shared.faults.lock().expect("never poisoned")[direction as usize] = faults;
    }

    pub fn set_both(&self, faults: LinkFaults) {
        *self.shared.faults.lock().expect("never poisoned") = [faults; 2];
    }

    pub fn faults(&self, direction: Direction) -> LinkFaults {
        self.shared.faults(direction)
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            relayed: c.relayed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.delayed_changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Reads one direction's datagrams and decides each one's fate.
fn relay(shared: &Shared, direction: Direction, mut rng: ChaCha8Rng) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let mut seq = 0u64;
    while !shared.stopping.load(Ordering::Acquire) {
        let len = match direction {
            Direction::Forward => match shared.front.recv_from(&mut buf) {
                Ok((len, from)) => {
                    *shared.dialler.lock().expect("never poisoned") = Some(from);
                    len
                }
                Err(_) => continue, // a timeout (to look at `stopping`) or a refused send
            },
            Direction::Backward => match shared.back.recv(&mut buf) {
                Ok(len) => len,
                Err(_) => continue,
            },
        };
        let faults = shared.faults(direction);
        if faults.blocked || rng.random_bool(faults.drop.clamp(0.0, 1.0)) {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let copies = if rng.random_bool(faults.duplicate.clamp(0.0, 1.0)) {
            shared.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let wait = faults.delay + faults.jitter.mul_f64(rng.random::<f64>());
            if wait.is_zero() {
                shared.deliver(direction, &buf[..len]);
                continue;
            }
            let mut queue = shared.delayed.lock().expect("never poisoned");
            if queue.len() >= DELAYED_DATAGRAMS_MAX {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            seq += 1;
            queue.push(Reverse(Delayed {
                due: Instant::now() + wait,
                seq: seq * 2 + direction as u64,
                direction,
                payload: buf[..len].to_vec(),
            }));
            shared.counters.delayed.fetch_add(1, Ordering::Relaxed);
            shared.delayed_changed.notify_one();
        }
    }
}

/// Sends delayed datagrams when they are due.
fn release_delayed(shared: &Shared) {
    let mut queue = shared.delayed.lock().expect("never poisoned");
    while !shared.stopping.load(Ordering::Acquire) {
        let now = Instant::now();
        let wait = match queue.peek() {
            Some(Reverse(d)) if d.due <= now => {
                let Reverse(d) = queue.pop().expect("peeked");
                drop(queue);
                shared.deliver(d.direction, &d.payload);
                queue = shared.delayed.lock().expect("never poisoned");
                continue;
            }
            Some(Reverse(d)) => (d.due - now).min(POLL_INTERVAL),
            None => POLL_INTERVAL,
        };
        queue = shared
            .delayed_changed
            .wait_timeout(queue, wait)
            .expect("never poisoned")
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on its own thread, for as long as the test holds it.
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket
                .set_read_timeout(Some(POLL_INTERVAL))
                .expect("timeout");
            let addr = socket.local_addr().expect("addr");
            let stop = Arc::new(AtomicBool::new(false));
            let stopping = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stopping.load(Ordering::Acquire) {
                    if let Ok((len, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..len], from);
                    }
                }
            });
            Echo {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn client() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        socket
    }

    /// Sends `count` numbered datagrams through the proxy and collects the echoes that come
    /// back within the read timeout, in arrival order.
    fn round_trip(proxy: &Proxy, count: u32) -> Vec<u32> {
        let socket = client();
        for i in 0..count {
            socket
                .send_to(&i.to_le_bytes(), proxy.addr())
                .expect("send");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(len) = socket.recv(&mut buf) {
            assert_eq!(len, 4);
            got.push(u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")));
        }
        got
    }

    fn proxy_to(echo: &Echo, seed: u64) -> Proxy {
        Proxy::start("127.0.0.1:0".parse().expect("addr"), echo.addr, seed).expect("proxy")
    }

    #[test]
    fn relays_both_ways_in_order_without_faults() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo, 1);
        assert_eq!(round_trip(&proxy, 50), (0..50).collect::<Vec<_>>());
        assert_eq!(proxy.stats().relayed, 100);
    }

    #[test]
    fn a_block_in_either_direction_stops_the_echo() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo, 2);
        proxy.set(Direction::Backward, LinkFaults::BLOCKED);
        assert!(round_trip(&proxy, 10).is_empty());
        assert_eq!(proxy.stats().relayed, 10, "the requests still went forward");
        proxy.set(Direction::Backward, LinkFaults::NONE);
        proxy.set(Direction::Forward, LinkFaults::BLOCKED);
        assert!(round_trip(&proxy, 10).is_empty());
        proxy.set_both(LinkFaults::NONE);
        assert_eq!(round_trip(&proxy, 10).len(), 10, "healed");
    }

    #[test]
    fn drops_about_the_probability_asked() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo, 3);
        proxy.set(
            Direction::Forward,
            LinkFaults {
                drop: 0.5,
                ..LinkFaults::NONE
            },
        );
        let got = round_trip(&proxy, 400).len();
        assert!((120..=280).contains(&got), "{got} of 400 got through");
    }

    #[test]
    fn duplicates_and_reorders_with_jitter() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo, 4);
        proxy.set(
            Direction::Forward,
            LinkFaults {
                duplicate: 0.5,
                delay: Duration::from_millis(5),
                jitter: Duration::from_millis(30),
                ..LinkFaults::NONE
            },
        );
        let started = Instant::now();
        let got = round_trip(&proxy, 100);
        assert!(got.len() > 120, "about half duplicated: {}", got.len());
        assert!(
            got.windows(2).any(|w| w[1] < w[0]),
            "some datagram overtook another"
        );
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, (0..100).collect::<Vec<_>>(), "none lost");
        assert!(started.elapsed() >= Duration::from_millis(5));
    }
}
