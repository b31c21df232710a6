//! A linearizability checker for histories of the key-value store.
//!
//! Whole-cluster fault tests (issue 9) have clients record what they did and what they saw: for
//! each operation its client, invocation and completion times, and outcome (ok with a result,
//! failed, or unknown after a timeout). [`check`] decides whether some total order of the
//! operations, consistent with real time, explains every result under the store's sequential
//! semantics: whether the cluster behaved like one correct copy of the store.
//!
//! How:
//! - The store is a map of independent registers, and linearizability is local (Herlihy &
//!   Wing): a history is linearizable exactly when each key's sub-history is. So the history is
//!   split by key and each key searched alone, which keeps each search small however many keys
//!   there are (P-compositionality, as porcupine calls it).
//! - A key's search is Wing & Gong's with Lowe's memoization of (linearized set, state), as in
//!   porcupine and Knossos; see `search`. Its worst case is exponential in the number of
//!   operations in flight on one key at once, so it is bounded by a step budget, and a key that
//!   runs out is reported as [`Verdict::Unknown`] rather than guessed.
//! - When a key fails, the report names the first operation to complete that no order explains
//!   (see `culprit`) and shrinks the key's history to a small excerpt that still fails there
//!   (see `shrink`), printed as a table and a timeline.
//!
//! The store starts empty. Operations on different keys never constrain each other, so a
//! client's multi-key invariants are out of scope.

mod candidates;
mod culprit;
mod history;
mod memo;
mod register;
mod render;
mod search;
mod shrink;
mod verdict;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

pub use self::history::{CasResult, HistoryError, Op, Operation, Outcome, Status};
pub use self::verdict::{Verdict, Violation};

use self::register::Entry;
use self::search::{Budget, Found};
use self::shrink::Observed;

/// Limits on the work a check may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps per key (about one per operation per operation in flight with it on that
    /// key, on a linearizable history) before the key is reported unknown.
    pub steps_per_key_max: u64,
    /// Search steps for explaining a failure: finding its culprit and shrinking the excerpt.
    pub explain_steps_max: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            steps_per_key_max: 10_000_000,
            explain_steps_max: 50_000_000,
        }
    }
}

/// Checks a history with the default [`CheckOptions`].
pub fn check(history: &[Operation]) -> Result<Verdict, HistoryError> {
    check_with(history, &CheckOptions::default())
}

/// Checks whether `history` is linearizable, key by key in key order; stops at the first key
/// that is not.
pub fn check_with(history: &[Operation], options: &CheckOptions) -> Result<Verdict, HistoryError> {
    history::validate(history)?;
    let mut keys: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for operation in history {
        keys.entry(operation.op.key()).or_default().push(operation);
    }
    let mut exhausted = Vec::new();
    for (key, ops) in keys {
        let entries: Vec<Entry<'_>> = ops.iter().map(|&o| Entry::new(o)).collect();
        let mut budget = Budget::new(options.steps_per_key_max, options.steps_per_key_max);
        match budget.search(&entries) {
            Found::Linearizable => {}
            Found::Exhausted => exhausted.push(key.clone()),
            Found::NotLinearizable => {
                let violation = explain(key, &ops, options);
                return Ok(Verdict::NotLinearizable(Box::new(violation)));
            }
        }
    }
    Ok(if exhausted.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Unknown { keys: exhausted }
    })
}

/// Builds the report for a key whose operations `ops` are known not to be linearizable.
fn explain(key: &Bytes, ops: &[&Operation], options: &CheckOptions) -> Violation {
    let mut budget = Budget::new(options.steps_per_key_max, options.explain_steps_max);
    let culprit = culprit::find(ops, &mut budget)
        .expect("a history that is not linearizable has a completed operation");
    let (failed_at_ns, earliest) = (culprit.completed_ns, culprit.earliest);
    let shrunk = shrink::shrink(culprit.cut, failed_at_ns, &mut budget);
    let mut excerpt: Vec<Operation> = shrunk.entries.iter().map(|e| e.op.clone()).collect();
    excerpt.extend(later_writers(&excerpt, ops, failed_at_ns));
    excerpt.sort_by_key(|o| (o.invoked_ns, o.completed_ns));
    let culprits = excerpt
        .iter()
        .filter(|o| o.completed_ns == failed_at_ns && o.op.status() == history::Status::Ok)
        .cloned()
        .collect();
    Violation {
        key: key.clone(),
        key_operations: ops.len(),
        culprits,
        failed_at_ns,
        earliest,
        excerpt,
        minimal: shrunk.minimal,
    }
}

/// For context: the first write of each value the excerpt observes but does not write, when it
/// was invoked only after the failure (so the search never saw it), e.g. the put a read saw
/// before the put began.
fn later_writers(excerpt: &[Operation], ops: &[&Operation], failed_at_ns: u64) -> Vec<Operation> {
    let written: HashSet<&[u8]> = excerpt.iter().filter_map(shrink::written).collect();
    let mut missing: HashSet<&[u8]> = excerpt
        .iter()
        .filter_map(|o| match shrink::observed(&o.op) {
            Observed::Value(v) if !written.contains(v) => Some(v),
            _ => None,
        })
        .collect();
    let mut writers = Vec::new();
    for op in ops.iter().filter(|o| o.invoked_ns > failed_at_ns) {
        if let Some(v) = shrink::written(op) {
            if missing.remove(v) {
                writers.push((*op).clone());
            }
        }
    }
    writers
}
