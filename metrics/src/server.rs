//! The sidecar HTTP server: `/metrics` in the Prometheus text format and `/health`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tiny_http::{Header, Response, Server};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct ServerError {
    pub addr: String,
    pub reason: String,
}

/// Serves one registry on its own thread until stopped or dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one) and serves `registry`. `/health` answers 200 while
    /// `healthy()` holds (for a node: it knows a leader) and 503 otherwise.
    pub fn start(
        addr: &str,
        registry: Registry,
        healthy: impl Fn() -> bool + Send + 'static,
    ) -> Result<Self, ServerError> {
        let error = |reason: String| ServerError {
            addr: addr.to_string(),
            reason,
        };
        let server = Server::http(addr).map_err(|e| error(e.to_string()))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| error("not an IP address".into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keel-metrics".into())
            .spawn(move || serve(&server, &registry, &healthy, &stopping))
            .map_err(|e| error(e.to_string()))?;
        Ok(Self {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(server: &Server, registry: &Registry, healthy: &dyn Fn() -> bool, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        // Wake up regularly to notice `stop`.
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics server stopped accepting");
                return;
            }
        };
        let response = match request.url() {
            "/metrics" => {
                let mut body = Vec::new();
                let encoder = TextEncoder::new();
                match encoder.encode(&registry.gather(), &mut body) {
                    Ok(()) => Response::from_data(body).with_header(header(encoder.format_type())),
                    Err(e) => Response::from_string(e.to_string()).with_status_code(500),
                }
            }
            "/health" if healthy() => Response::from_string("ok\n").with_status_code(200),
            "/health" => Response::from_string("no leader\n").with_status_code(503),
            _ => Response::from_string("not found\n").with_status_code(404),
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "metrics client went away");
        }
    }
}

fn header(content_type: &str) -> Header {
    Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a static header is valid")
}
