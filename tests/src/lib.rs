//! keel-tests: the deterministic simulator that checks the Raft core's safety over many seeds,
//! the linearizability checker that whole-cluster tests verify client histories with, and (as
//! later layers land) whole-cluster tests with real processes.

pub mod faults;
pub mod linearizability;
pub mod sim;
