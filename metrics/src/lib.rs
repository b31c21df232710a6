//! keel-metrics: each node's health as Prometheus metrics, on an HTTP `/metrics` endpoint served
//! by a thread of its own.
//!
//! [`NodeCollector`] reads a node's atomics ([`NodeMetrics`]) at scrape time and registers in a
//! `prometheus::Registry` the caller owns (never only a global one); one collector can serve
//! several nodes, told apart by the `node` label. [`MetricsServer`] answers `/metrics` and
//! `/health` (200 when the node knows a leader, 503 otherwise). Scraping never touches the hot
//! path: the node only ever updates atomics, once per batch.
//!
//! Names follow Prometheus conventions (base units, `_seconds`, `_bytes`, `_total` only on
//! counters), modelled on etcd's where operators know them.

mod collector;
mod server;

pub use collector::{NodeCollector, NodeSource};
pub use server::{MetricsServer, ServerError};
