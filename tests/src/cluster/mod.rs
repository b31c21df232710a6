//! Whole-cluster fault tests: real `keel-bench node` processes on loopback, real QUIC with
//! mutual TLS and real fsync, faults injected from outside, and a linearizability verdict on
//! what clients saw (issue 9).
//!
//! - [`proxy`] and [`network`]: a UDP proxy per pair of peers, and partitions built from them.

pub mod network;
pub mod proxy;
