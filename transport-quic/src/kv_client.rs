//! A small key-value client over QUIC with mutual TLS: it sends each request to the node it
//! believes leads, follows `NotLeader` hints (id and address), and falls back to its seed nodes.
//! A node that leaves an attempt unanswered for `attempt_timeout` (stopped, cut off, its host
//! gone, while its connection still looks open) is left for the other nodes.
//! Blocking calls, safe to share between threads; it runs on a runtime of its own.
//!
//! Retries never apply a command twice: a write is sent again only after an answer proving it
//! was not proposed (`NotLeader`) or a failure before it was sent. Once a write's request may
//! have reached a node, losing the answer is [`ClientError::Indeterminate`]: a retry could apply
//! it a second time, and a compare-and-swap retried after it took effect would report a
//! compare failure for its own write. Reads have no effect and are retried freely.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_engine::core::{Index, NodeId};
use keel_engine::kv::{decode_response, Consistency, KvCommand, KvError};
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;

use crate::certs::Identity;
use crate::frame::{self, FrameError, FrameKind};
use crate::kv_server::consistency_code;
use crate::metrics::TransportMetrics;
use crate::tls::{self, KV_ALPN};
use crate::wire::{ArchivedWireKvResponse, WireKvRequest};

/// Where and how a [`KvClient`] connects.
#[derive(Clone, Debug)]
pub struct KvClientConfig {
    /// Nodes to try first, by id (their certificates must name it) and address.
    pub seeds: Vec<(NodeId, SocketAddr)>,
    /// A certificate from the cluster CA (`DevCa::issue_client` makes one).
    pub identity: Identity,
    pub ca: Vec<CertificateDer<'static>>,
    /// The whole call, retries included, must finish within this.
    pub request_timeout: Duration,
    /// How long one node has to answer before the call moves on to another (a read, or a write
    /// not yet sent) and the client stops sending to it. A write that may have reached the node
    /// waits for its answer up to `request_timeout`, since it cannot go elsewhere.
    pub attempt_timeout: Duration,
    /// Whether `NotLeader` hints are followed (the default). A client that does not follow them
    /// talks to its seeds alone: one seed pins it to a node, to read from that node (a
    /// follower serves linearizable reads through the leader's ReadIndex); a node's refusal is
    /// returned as its `NotLeader` error.
    pub follow_leader: bool,
    /// The local address to bind (port 0 picks one).
    pub bind: SocketAddr,
    /// The largest request body the nodes take: their `QuicConfig::frame_bytes_max`. A larger
    /// one is refused here as `TooLarge` (certainly not applied); sent, the node could only stop
    /// the stream, and the client could not tell whether it took effect.
    pub max_request_bytes: usize,
}

impl KvClientConfig {
    pub fn new(
        seeds: Vec<(NodeId, SocketAddr)>,
        identity: Identity,
        ca: Vec<CertificateDer<'static>>,
    ) -> Self {
        let bind = match seeds.first() {
            Some((_, a)) if a.is_ipv6() => SocketAddr::from(([0u16; 8], 0)),
            Some((_, a)) if a.ip().is_loopback() => SocketAddr::from(([127, 0, 0, 1], 0)),
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        Self {
            seeds,
            identity,
            ca,
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            follow_leader: true,
            bind,
            max_request_bytes: crate::config::FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// Why a client call failed.
///
/// Whether a failed write took effect: `Unavailable` and `Setup` mean it did not; so do the
/// node's `NotLeader`, `Dropped`, `TooLarge` and `TransferInProgress`. `Indeterminate` and the
/// node's `Timeout`, `OutcomeUnknown` and `Stopped` mean it may have, or may still.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store's answer: not found, compare failed, or the node's error.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// No node took the request before the deadline: a write was never proposed.
    #[error("no node could serve the request in time: {0}")]
    Unavailable(String),
    /// A write reached a node but its answer did not come back (the connection failed, or the
    /// deadline passed while waiting): it may or may not take effect. Not retried, since a retry
    /// could apply it twice.
    #[error("the request was sent but its outcome is unknown: {0}")]
    Indeterminate(String),
    #[error("the client could not start: {0}")]
    Setup(String),
}

/// What a request came back with.
enum Outcome {
    Applied { index: Index, response: Bytes },
    Value(Option<Bytes>),
}

/// A key-value client. See the module docs.
pub struct KvClient {
    /// Taken when the client drops: shut down without blocking, which may be inside another
    /// runtime's task (dropping a runtime there panics).
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    cfg: KvClientConfig,
    conns: Mutex<BTreeMap<NodeId, quinn::Connection>>,
    /// The node believed to lead, with its address.
    leader: Mutex<Option<(NodeId, SocketAddr)>>,
    /// The seed to try next when no leader is known, kept across calls so that calls spread
    /// over the seeds rather than each starting at the same one.
    next_seed: AtomicUsize,
    metrics: Arc<TransportMetrics>,
}

impl std::fmt::Debug for KvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvClient")
            .field("seeds", &self.cfg.seeds)
            .finish_non_exhaustive()
    }
}

impl KvClient {
    pub fn connect(cfg: KvClientConfig) -> Result<Self, ClientError> {
        if cfg.seeds.is_empty() {
            return Err(ClientError::Setup("no seed nodes".into()));
        }
        let metrics = Arc::new(TransportMetrics::default());
        let tls = tls::client_config(
            &cfg.identity,
            &cfg.ca,
            KV_ALPN,
            metrics.clone(),
            "kv-client".into(),
        )
        .map_err(|e| ClientError::Setup(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keel-kv-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::client(cfg.bind).map_err(|e| ClientError::Setup(e.to_string()))?
        };
        Ok(Self {
            runtime: Some(runtime),
            endpoint,
            tls,
            cfg,
            conns: Mutex::new(BTreeMap::new()),
            leader: Mutex::new(None),
            next_seed: AtomicUsize::new(0),
            metrics,
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime is taken only on drop")
    }

    /// The node the client currently sends to, if it learned one.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.lock().map(|(id, _)| id)
    }

    /// Refusals of server certificates this client saw, by reason.
    pub fn metrics(&self) -> &TransportMetrics {
        &self.metrics
    }

    pub fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<Index, ClientError> {
        self.execute(&KvCommand::Put {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delete(&self, key: impl Into<Bytes>) -> Result<Index, ClientError> {
        self.execute(&KvCommand::Delete { key: key.into() })
    }

    pub fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Index, ClientError> {
        self.execute(&KvCommand::CompareAndSwap {
            key: key.into(),
            expected,
            new,
        })
    }

    /// Proposes a command on the leader; returns the index it was applied at, or the store's
    /// refusal (`NotFound`, `CompareFailed`).
    pub fn execute(&self, command: &KvCommand) -> Result<Index, ClientError> {
        self.runtime().block_on(self.execute_async(command))
    }

    /// [`KvClient::execute`] for callers on a tokio runtime of their own.
    pub async fn execute_async(&self, command: &KvCommand) -> Result<Index, ClientError> {
        let request = WireKvRequest::Propose {
            command: command.encode(),
        };
        let body = archive(&request)?;
        match self.request_async(body, Resend::OnlyIfUnsent).await? {
            Outcome::Applied { index, response } => {
                decode_response(&response)?;
                Ok(index)
            }
            Outcome::Value(_) => Err(ClientError::Unavailable("a read answered a write".into())),
        }
    }

    /// Reads `key` at `consistency`; `Kv(NotFound)` if absent.
    pub fn get(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<Bytes, ClientError> {
        self.runtime()
            .block_on(self.get_async(key.into(), consistency))
    }

    /// [`KvClient::get`] for callers on a tokio runtime of their own.
    pub async fn get_async(
        &self,
        key: Bytes,
        consistency: Consistency,
    ) -> Result<Bytes, ClientError> {
        let request = WireKvRequest::Read {
            key,
            consistency: consistency_code(consistency),
        };
        match self
            .request_async(archive(&request)?, Resend::Always)
            .await?
        {
            Outcome::Value(Some(v)) => Ok(v),
            Outcome::Value(None) => Err(KvError::NotFound.into()),
            Outcome::Applied { .. } => {
                Err(ClientError::Unavailable("a write answered a read".into()))
            }
        }
    }

    async fn request_async(&self, body: Bytes, resend: Resend) -> Result<Outcome, ClientError> {
        if body.len() > self.cfg.max_request_bytes {
            return Err(KvError::Node(keel_engine::node::Error::TooLarge {
                size_bytes: body.len(),
                max_bytes: self.cfg.max_request_bytes,
            })
            .into());
        }
        // A timeout too long for the clock (`Duration::MAX`) is as good as forever.
        let forever = || Instant::now() + Duration::from_secs(u64::from(u32::MAX));
        let deadline = Instant::now()
            .checked_add(self.cfg.request_timeout)
            .unwrap_or_else(forever);
        let mut redirects = Redirects::default();
        // Nodes that let an attempt of this call time out: seeds pass over them while another
        // is left to try.
        let mut unresponsive = Vec::new();
        let mut last_error = String::from("no attempt");
        let lost = |sent: bool, error: String| match (sent, resend) {
            (true, Resend::OnlyIfUnsent) => Err(ClientError::Indeterminate(error)),
            _ => Ok(error),
        };
        while Instant::now() < deadline {
            let leader = *self.leader.lock();
            let target = leader.unwrap_or_else(|| self.next_seed(&unresponsive));
            redirects.tried(target.0);
            // Whether this attempt began sending the request.
            let sent = AtomicBool::new(false);
            let attempt = self.attempt(target, body.clone(), &sent);
            tokio::pin!(attempt);
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let mut answer =
                tokio::time::timeout(left.min(self.cfg.attempt_timeout), &mut attempt).await;
            if answer.is_err() && resend == Resend::OnlyIfUnsent && sent.load(Ordering::Relaxed) {
                // It may have reached the node: only its answer can say whether it took effect.
                let left = deadline.saturating_duration_since(Instant::now());
                answer = tokio::time::timeout(left, attempt).await;
            }
            match answer {
                Err(_) => {
                    // A node that does not answer (stopped, cut off, or its host gone) keeps a
                    // connection that looks open until it idles out: leave it, so that this
                    // call, or the next if this one cannot go elsewhere, tries another node.
                    self.forget(target);
                    unresponsive.push(target.0);
                    let error = format!("node {}: no answer in time", target.0);
                    last_error = lost(sent.load(Ordering::Relaxed), error)?;
                }
                Ok(Ok(Reply::Done(outcome))) => {
                    *self.leader.lock() = Some(target);
                    return Ok(outcome);
                }
                Ok(Ok(Reply::Failed(e))) => return Err(KvError::Node(e).into()),
                Ok(Ok(Reply::NotLeader(_, refusal))) if !self.cfg.follow_leader => {
                    return Err(KvError::Node(refusal).into());
                }
                Ok(Ok(Reply::NotLeader(hint, _))) => {
                    last_error = format!("node {} is not the leader", target.0);
                    *self.leader.lock() = hint;
                    let pause = match hint {
                        Some((leader, _)) => redirects.pause_before(leader),
                        // No leader known there: an election may be running; give it a moment.
                        None => Duration::from_millis(20),
                    };
                    let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                Ok(Err(e)) => {
                    self.conns.lock().remove(&target.0);
                    *self.leader.lock() = None;
                    last_error = lost(
                        sent.load(Ordering::Relaxed),
                        format!("node {}: {e}", target.0),
                    )?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(ClientError::Unavailable(last_error))
    }

    /// The next seed in turn, passing over those in `unresponsive` unless every seed is.
    fn next_seed(&self, unresponsive: &[NodeId]) -> (NodeId, SocketAddr) {
        let seeds = &self.cfg.seeds;
        let pick = || seeds[self.next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len()];
        let first = pick();
        if !unresponsive.contains(&first.0) {
            return first;
        }
        (1..seeds.len())
            .map(|_| pick())
            .find(|s| !unresponsive.contains(&s.0))
            .unwrap_or(first)
    }

    /// Stops sending to `target`: forgets its connection (left to idle out, not closed: other
    /// calls may be waiting on it) and that it led.
    fn forget(&self, target: (NodeId, SocketAddr)) {
        self.conns.lock().remove(&target.0);
        let mut leader = self.leader.lock();
        if leader.is_some_and(|(id, _)| id == target.0) {
            *leader = None;
        }
    }

    async fn connection(
        &self,
        (id, addr): (NodeId, SocketAddr),
    ) -> Result<quinn::Connection, FrameError> {
        let existing = self.conns.lock().get(&id).cloned();
        if let Some(c) = existing.filter(|c| c.close_reason().is_none()) {
            return Ok(c);
        }
        let conn = self
            .endpoint
            .connect_with(self.tls.clone(), addr, &tls::server_name_of(id))
            .map_err(|e| FrameError::Io(e.to_string()))?
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        self.conns.lock().insert(id, conn.clone());
        Ok(conn)
    }

    /// One try at `target`; sets `sent` once any of the request may have left.
    async fn attempt(
        &self,
        target: (NodeId, SocketAddr),
        body: Bytes,
        sent: &AtomicBool,
    ) -> Result<Reply, FrameError> {
        let conn = self.connection(target).await?;
        let io = |e: &dyn std::fmt::Display| FrameError::Io(e.to_string());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
        sent.store(true, Ordering::Relaxed);
        let written = frame::write_frame(&mut send, FrameKind::KvRequest, body).await;
        if written.is_ok() {
            send.finish().map_err(|e| io(&e))?;
        }
        // A node that refuses a request from its header (too large) answers, then stops reading
        // it: the write fails, and the answer says whether it was refused.
        let f = match frame::expect_frame(&mut recv, FrameKind::KvResponse, 64 << 20).await {
            Ok(f) => f,
            Err(e) => return Err(written.err().unwrap_or(e)),
        };
        Ok(match frame::access::<ArchivedWireKvResponse>(&f.body)? {
            ArchivedWireKvResponse::Applied { index, response } => Reply::Done(Outcome::Applied {
                index: index.to_native(),
                response: crate::wire::slice_in_frame(&f.body, response)?,
            }),
            ArchivedWireKvResponse::Value { value } => {
                Reply::Done(Outcome::Value(match value.as_ref() {
                    Some(v) => Some(crate::wire::slice_in_frame(&f.body, v)?),
                    None => None,
                }))
            }
            ArchivedWireKvResponse::Failed { error } => match error.leader_hint() {
                Some((leader, addr)) => Reply::NotLeader(
                    leader
                        .zip(addr.and_then(|a| a.parse().ok()))
                        .filter(|&(l, _)| l != target.0),
                    error.to_node(),
                ),
                None => Reply::Failed(error.to_node()),
            },
        })
    }
}

fn archive(request: &WireKvRequest) -> Result<Bytes, ClientError> {
    frame::archive(request).map_err(|e| ClientError::Setup(e.to_string()))
}

/// Whether a request may be sent again after it may have reached a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Reads: sending twice changes nothing.
    Always,
    /// Writes: only a request that never left may go again.
    OnlyIfUnsent,
}

/// The pause before following a first bounce back to a node already tried; each later one
/// doubles it, up to [`BOUNCE_PAUSE_MAX`].
const BOUNCE_PAUSE: Duration = Duration::from_millis(10);
const BOUNCE_PAUSE_MAX: Duration = Duration::from_millis(160);

/// The nodes one request tried, and how it paces the `NotLeader` hints it follows. A hint to a
/// node not tried yet goes at once. One back to a node tried already means the nodes disagree
/// on who leads (an election in progress, or stale news on both sides): followed at once, the
/// client bounced between them as fast as a round trip, for as long as that lasted, and so did
/// every other client at the same moment.
#[derive(Debug, Default)]
struct Redirects {
    tried: Vec<NodeId>,
    bounces: u32,
}

impl Redirects {
    fn tried(&mut self, node: NodeId) {
        if !self.tried.contains(&node) {
            self.tried.push(node);
        }
    }

    fn pause_before(&mut self, node: NodeId) -> Duration {
        if !self.tried.contains(&node) {
            return Duration::ZERO;
        }
        let pause = BOUNCE_PAUSE.saturating_mul(1 << self.bounces.min(16));
        self.bounces += 1;
        pause.min(BOUNCE_PAUSE_MAX)
    }
}

enum Reply {
    Done(Outcome),
    /// The leader's id and address if the node knew them, and the node's refusal.
    NotLeader(Option<(NodeId, SocketAddr)>, keel_engine::node::Error),
    Failed(keel_engine::node::Error),
}

impl Drop for KvClient {
    fn drop(&mut self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"client closed");
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::certs::DevCa;

    /// A node that counts every request it takes, then answers what `answer` holds or, if it
    /// holds nothing, closes the connection without answering (the client cannot know whether
    /// a write it sent took effect). While `silent`, it takes requests and never answers, and
    /// its connections stay open (a node stopped, or cut off after the handshake).
    struct Fake {
        addr: SocketAddr,
        requests: Arc<AtomicU64>,
        answer: Arc<Mutex<Option<Bytes>>>,
        silent: Arc<AtomicBool>,
        _runtime: tokio::runtime::Runtime,
    }

    fn fake_node(ca: &DevCa, id: NodeId) -> Fake {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = ca.issue_node(id).expect("node cert").identity;
        let metrics = Arc::new(TransportMetrics::default());
        let server = tls::server_config(&identity, &[ca.cert_der()], metrics, "fake".into())
            .expect("server config");
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::server(server, SocketAddr::from(([127, 0, 0, 1], 0)))
                .expect("endpoint")
        };
        let addr = endpoint.local_addr().expect("bound");
        let requests = Arc::new(AtomicU64::new(0));
        let answer: Arc<Mutex<Option<Bytes>>> = Arc::default();
        let silent = Arc::new(AtomicBool::new(false));
        let (counted, answering, mute) = (requests.clone(), answer.clone(), silent.clone());
        runtime.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let (counted, answering, mute) = (counted.clone(), answering.clone(), mute.clone());
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        if frame::expect_frame(&mut recv, FrameKind::KvRequest, 1 << 20)
                            .await
                            .is_ok()
                        {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        if mute.load(Ordering::SeqCst) {
                            // Holds this stream and takes no other on the connection.
                            std::future::pending::<()>().await;
                        }
                        let answer = answering.lock().clone();
                        let Some(body) = answer else {
                            conn.close(quinn::VarInt::from_u32(1), b"gone");
                            return;
                        };
                        let _ = frame::write_frame(&mut send, FrameKind::KvResponse, body).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        Fake {
            addr,
            requests,
            answer,
            silent,
            _runtime: runtime,
        }
    }

    /// `NotLeader`, naming `leader` at `addr`.
    fn not_leader(leader: NodeId, addr: SocketAddr) -> Bytes {
        let response = crate::wire::WireKvResponse::Failed {
            error: crate::wire::WireError::NotLeader {
                leader: Some(leader),
                term: 1,
                leader_addr: Some(addr.to_string()),
            },
        };
        frame::archive(&response).expect("archived")
    }

    /// The answer to a read that found `value`.
    fn value(value: &'static str) -> Bytes {
        let response = crate::wire::WireKvResponse::Value {
            value: Some(Bytes::from(value)),
        };
        frame::archive(&response).expect("archived")
    }

    /// A client's configuration for `seeds`, with a certificate from `ca`.
    fn config(ca: &DevCa, seeds: Vec<(NodeId, SocketAddr)>) -> KvClientConfig {
        let identity = ca.issue_client().expect("client cert").identity;
        KvClientConfig::new(seeds, identity, vec![ca.cert_der()])
    }

    fn client_of(ca: &DevCa, node: &Fake) -> KvClient {
        let mut cfg = config(ca, vec![(1, node.addr)]);
        cfg.request_timeout = Duration::from_secs(2);
        KvClient::connect(cfg).expect("client")
    }

    #[test]
    fn a_write_whose_answer_is_lost_is_indeterminate_and_sent_once() {
        let ca = DevCa::generate("test").expect("ca");
        let node = fake_node(&ca, 1);
        let client = client_of(&ca, &node);
        let result = client.compare_and_swap("k", None, Some(Bytes::from("v")));
        assert!(
            matches!(result, Err(ClientError::Indeterminate(_))),
            "{result:?}"
        );
        assert_eq!(node.requests.load(Ordering::SeqCst), 1, "never resent");
    }

    #[test]
    fn a_read_whose_answer_is_lost_is_retried() {
        let ca = DevCa::generate("test").expect("ca");
        let node = fake_node(&ca, 1);
        let client = client_of(&ca, &node);
        let result = client.get("k", Consistency::Linearizable);
        assert!(
            matches!(result, Err(ClientError::Unavailable(_))),
            "{result:?}"
        );
        assert!(node.requests.load(Ordering::SeqCst) > 1, "read again");
    }

    #[test]
    fn two_nodes_that_name_each_other_leader_are_bounced_between_at_a_growing_pace() {
        let ca = DevCa::generate("test").expect("ca");
        let (one, two) = (fake_node(&ca, 1), fake_node(&ca, 2));
        *one.answer.lock() = Some(not_leader(2, two.addr));
        *two.answer.lock() = Some(not_leader(1, one.addr));
        let client = client_of(&ca, &one);
        let result = client.get("k", Consistency::Linearizable);
        assert!(
            matches!(result, Err(ClientError::Unavailable(_))),
            "{result:?}"
        );
        // Within the 2 s request timeout, pauses of 10, 20, 40, 80, then 160 ms allow some 15
        // bounces; followed at once, it was thousands.
        let requests = one.requests.load(Ordering::SeqCst) + two.requests.load(Ordering::SeqCst);
        assert!((3..=40).contains(&requests), "{requests} requests");
    }

    /// A client of `seeds` that gives each node 300 ms to answer, and a call 3 s.
    fn client_of_seeds(ca: &DevCa, seeds: Vec<(NodeId, SocketAddr)>) -> KvClient {
        let mut cfg = config(ca, seeds);
        cfg.request_timeout = Duration::from_secs(3);
        cfg.attempt_timeout = Duration::from_millis(300);
        KvClient::connect(cfg).expect("client")
    }

    #[test]
    fn a_call_moves_on_from_a_seed_that_never_answers() {
        let ca = DevCa::generate("test").expect("ca");
        let node = fake_node(&ca, 2);
        *node.answer.lock() = Some(value("v"));
        // Bound and never read: the handshake to it gets no answer.
        let hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("bound");
        let hole_addr = hole.local_addr().expect("bound");
        let client = client_of_seeds(&ca, vec![(1, hole_addr), (2, node.addr)]);
        for _ in 0..3 {
            let started = Instant::now();
            let got = client.get("k", Consistency::Linearizable);
            assert_eq!(got.expect("served by the seed that answers"), "v");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "within one attempt's wait"
            );
        }
    }

    #[test]
    fn a_leader_that_stops_answering_is_left_for_the_other_nodes() {
        let ca = DevCa::generate("test").expect("ca");
        let (one, two) = (fake_node(&ca, 1), fake_node(&ca, 2));
        *one.answer.lock() = Some(value("from one"));
        *two.answer.lock() = Some(not_leader(1, one.addr));
        let client = client_of_seeds(&ca, vec![(1, one.addr), (2, two.addr)]);
        assert_eq!(
            client.get("k", Consistency::Linearizable).expect("read"),
            "from one"
        );
        assert_eq!(client.leader(), Some(1));

        // Node 1 stops answering with its connection open; node 2 now serves.
        one.silent.store(true, Ordering::SeqCst);
        *two.answer.lock() = Some(value("from two"));
        let got = client.get("k", Consistency::Linearizable);
        assert_eq!(got.expect("read again at node 2"), "from two");

        // A write sent to a silent leader cannot be retried, but the next call goes elsewhere.
        *two.answer.lock() = Some(not_leader(1, one.addr));
        one.silent.store(false, Ordering::SeqCst);
        assert_eq!(
            client.get("k", Consistency::Linearizable).expect("read"),
            "from one"
        );
        one.silent.store(true, Ordering::SeqCst);
        let write = client.compare_and_swap("k", None, Some(Bytes::from("v")));
        assert!(
            matches!(write, Err(ClientError::Indeterminate(_))),
            "{write:?}"
        );
        assert_eq!(
            client.leader(),
            None,
            "the silent node is no longer taken to lead"
        );
        *two.answer.lock() = Some(value("from two"));
        assert_eq!(
            client.get("k", Consistency::Linearizable).expect("read"),
            "from two"
        );
    }

    #[test]
    fn a_client_that_does_not_follow_the_leader_keeps_to_its_seed() {
        let ca = DevCa::generate("test").expect("ca");
        let (one, two) = (fake_node(&ca, 1), fake_node(&ca, 2));
        *one.answer.lock() = Some(not_leader(2, two.addr));
        *two.answer.lock() = Some(value("from two"));
        let mut cfg = config(&ca, vec![(1, one.addr)]);
        cfg.follow_leader = false;
        let client = KvClient::connect(cfg).expect("client");
        let got = client.get("k", Consistency::Lease);
        assert!(
            matches!(
                got,
                Err(ClientError::Kv(KvError::Node(
                    keel_engine::node::Error::NotLeader {
                        leader: Some(2),
                        ..
                    }
                )))
            ),
            "{got:?}"
        );
        assert_eq!(
            two.requests.load(Ordering::SeqCst),
            0,
            "never sent to node 2"
        );
    }

    #[test]
    fn a_client_dropped_inside_another_runtime_shuts_down_without_panicking() {
        let ca = DevCa::generate("test").expect("ca");
        let node = fake_node(&ca, 1);
        *node.answer.lock() = Some(value("v"));
        let client = client_of(&ca, &node);
        let outer = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        outer.block_on(async move {
            let got = client
                .get_async(Bytes::from("k"), Consistency::Linearizable)
                .await;
            assert_eq!(got.expect("read"), "v");
            drop(client);
        });
    }

    #[test]
    fn a_hint_is_followed_at_once_the_first_time_and_after_a_growing_pause_on_a_bounce() {
        let mut redirects = Redirects::default();
        redirects.tried(1);
        assert_eq!(redirects.pause_before(2), Duration::ZERO, "a new node");
        redirects.tried(2);
        let pauses: Vec<u64> = (0..7)
            .map(|_| redirects.pause_before(1).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 160, 160]);
        assert_eq!(
            redirects.pause_before(3),
            Duration::ZERO,
            "a node not tried yet"
        );
    }
}
