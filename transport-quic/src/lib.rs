//! keel-transport-quic: carries a keel node's Raft messages to its peers over QUIC (quinn) with
//! mutual TLS (rustls on `ring`), in length-prefixed, versioned rkyv frames.
//!
//! This crate owns everything between one node's `Transport` calls and another node's `Inbox`:
//! one QUIC endpoint per node and one connection per peer (the lower id dials), an ordered
//! stream for AppendEntries and their responses (pipelined, batches coalesced into one frame),
//! a separate prioritised stream for votes, heartbeats and TimeoutNow, snapshots streamed from
//! file to file in chunks on streams of their own, forwarded proposals, and a key-value endpoint for remote clients
//! ([`KvClient`]). It owns node identity too: every certificate names its node
//! (`node-<id>.keel`) and is signed by the cluster CA ([`certs`]).
//!
//! It must never: trust a frame before validating it (every archive is checked with bytecheck
//! and every message held to the peer's authenticated id), panic or block other peers on hostile
//! input (a bad frame closes its stream and is counted in [`TransportMetrics`]), buffer without
//! bound for a peer that is slow or gone (queues are bounded; excess is dropped and Raft
//! retries), hold a whole snapshot in memory (it streams between files, a few chunks at a time),
//! accept a peer the cluster CA did not sign for the id it claims, or install a process-wide
//! crypto provider or tracing subscriber. Its tokio runtime runs on threads the
//! transport owns; the engine stays runtime-free.
//!
//! ```no_run
//! use std::sync::Arc;
//! use keel_engine::kv::KvStore;
//! use keel_engine::node::{Node, NodeConfig};
//! use keel_transport_quic::certs::{self, CertPaths, Identity};
//! use keel_transport_quic::{QuicConfig, QuicTransport};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let dir = std::path::Path::new("certs");
//!     let paths = certs::write_dev_certs(dir, &[1, 2, 3])?; // what `keel-bench certs` does
//!     let (cert, key) = CertPaths::node_cert(dir, 1);
//!     let cfg = QuicConfig::new(1, "127.0.0.1:7001".parse()?, Identity::load_pem(&cert, &key)?,
//!         certs::load_ca_pem(&paths.ca_cert)?)
//!         .with_peer(2, "127.0.0.1:7002".parse()?)
//!         .with_peer(3, "127.0.0.1:7003".parse()?);
//!     let transport = QuicTransport::start(cfg)?;
//!     let node = Arc::new(Node::start(NodeConfig::new(1, [1, 2, 3]), "data-1", transport.clone(),
//!         KvStore::default())?);
//!     transport.serve_kv(&node); // remote KvClients can now put and get through this node
//!     println!("{:?}", transport.metrics().snapshot()); // refusals by reason, bytes per peer...
//!     Ok(())
//! }
//! ```

pub mod certs;
pub mod codec;
mod config;
mod forward;
pub mod frame;
mod inbound;
mod kv_client;
mod kv_server;
mod metrics;
mod peer;
mod shared;
mod snapshot;
pub mod tls;
mod transport;
pub mod wire;

pub use config::QuicConfig;
pub use kv_client::{ClientError, KvClient, KvClientConfig};
pub use metrics::{
    FrameRejection, HandshakeRefusal, MetricsSnapshot, PeerCounters, PeerSnapshot, TransportMetrics,
};
pub use shared::BLOCKING_CALLS_MAX;
pub use transport::{QuicTransport, TransportError};
