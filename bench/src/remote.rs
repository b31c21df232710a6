//! A cluster on other machines (or other processes), reached as a key-value client would reach
//! it: over QUIC with a client certificate from the cluster CA, following leader hints.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use keel_engine::core::{Index, NodeId};
use keel_engine::kv::{Consistency, KvCommand, KvError};
use keel_engine::node::Error;
use keel_transport_quic::certs::{load_ca_pem, CertPaths, Identity};
use keel_transport_quic::{ClientError, KvClient, KvClientConfig};

use crate::load::{Request, Target};

/// Reads of the final check in flight at once.
const READ_BACK_IN_FLIGHT: usize = 256;

pub struct RemoteCluster {
    /// Runs the requests of every client; the clients' connections run on their own runtimes.
    runtime: tokio::runtime::Runtime,
    clients: Vec<Arc<KvClient>>,
    next: AtomicUsize,
}

impl RemoteCluster {
    /// Connects `connections` clients to the nodes in `targets` with the client certificate in
    /// `certs` (as `keel-bench certs` writes it).
    pub fn connect(
        targets: &[(NodeId, SocketAddr)],
        certs: &Path,
        connections: usize,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let ca = load_ca_pem(&CertPaths::in_dir(certs).ca_cert).map_err(|e| e.to_string())?;
        let (cert, key) = CertPaths::client_cert(certs);
        let clients = (0..connections.max(1))
            .map(|_| {
                let identity = Identity::load_pem(&cert, &key).map_err(|e| e.to_string())?;
                let mut cfg = KvClientConfig::new(targets.to_vec(), identity, ca.clone());
                cfg.request_timeout = request_timeout;
                KvClient::connect(cfg)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keel-bench-load")
            .enable_all()
            .build()
            .map_err(|e| format!("the load runtime: {e}"))?;
        Ok(Self {
            runtime,
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The clients take requests in turn.
    fn client(&self) -> Arc<KvClient> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    fn spawn<F>(&self, request: F) -> Box<dyn Request>
    where
        F: std::future::Future<Output = Result<Option<Index>, Error>> + Send + 'static,
    {
        Box::new(RemoteRequest(self.runtime.spawn(request)))
    }
}

/// A client failure as the load counts it.
fn node_error(e: ClientError) -> Error {
    match e {
        ClientError::Kv(KvError::Node(e)) => e,
        ClientError::Unavailable(_) | ClientError::Indeterminate(_) => Error::Timeout,
        other => Error::Config(other.to_string()),
    }
}

impl Target for RemoteCluster {
    fn put(&self, key: Bytes, value: Bytes) -> Box<dyn Request> {
        let client = self.client();
        self.spawn(async move {
            client
                .execute_async(&KvCommand::Put { key, value })
                .await
                .map(Some)
                .map_err(node_error)
        })
    }

    fn get(&self, key: Bytes, lease: bool) -> Box<dyn Request> {
        let client = self.client();
        let consistency = if lease {
            Consistency::Lease
        } else {
            Consistency::Linearizable
        };
        self.spawn(async move {
            match client.get_async(key, consistency).await {
                Ok(_) | Err(ClientError::Kv(KvError::NotFound)) => Ok(None),
                Err(e) => Err(node_error(e)),
            }
        })
    }

    fn read_back(&self, keys: &[Bytes]) -> Vec<Result<Option<Bytes>, Error>> {
        // Many reads in flight at once, a bounded number.
        let mut results = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_BACK_IN_FLIGHT) {
            let reads: Vec<_> = chunk
                .iter()
                .map(|key| {
                    let (client, key) = (self.client(), key.clone());
                    self.runtime.spawn(async move {
                        match client.get_async(key, Consistency::Linearizable).await {
                            Ok(v) => Ok(Some(v)),
                            Err(ClientError::Kv(KvError::NotFound)) => Ok(None),
                            Err(e) => Err(node_error(e)),
                        }
                    })
                })
                .collect();
            self.runtime.block_on(async {
                for read in reads {
                    results.push(read.await.unwrap_or(Err(Error::Dropped)));
                }
            });
        }
        results
    }
}

/// A request running on the client's runtime; its task handle is polled from the load's worker.
struct RemoteRequest(tokio::task::JoinHandle<Result<Option<Index>, Error>>);

impl Request for RemoteRequest {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Index>, Error>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Dropped)))
    }
}
