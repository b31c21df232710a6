//! keel-tests: the deterministic simulator that checks the Raft core's safety over many seeds,
//! and (as later layers land) whole-cluster tests with real processes.

pub mod sim;
