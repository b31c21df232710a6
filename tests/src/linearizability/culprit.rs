//! Where a key's history first goes wrong: the earliest completion no linearization explains.
//!
//! The history cut at time `t` keeps what clients knew at `t`: operations that completed by `t`
//! as they are, operations still running at `t` as pending (unknown outcome), and nothing
//! invoked later. If the whole history is linearizable, so is every cut: an operation completed
//! by `t` is linearized by `t`, so everything linearized before it was invoked by `t`, and
//! pending operations may simply take effect where they did. So cuts fail monotonically in
//! `t`, a binary search over completion times finds the first failing one, and the operations
//! completing there (the culprits) are what no order explains: everything that completed
//! before them is linearizable, and with their results left open the cut is linearizable too.

use super::history::{Operation, Status};
use super::register::Entry;
use super::search::{Budget, Found};

/// The first failing cut of a history.
#[derive(Debug)]
pub(super) struct Culprit<'a> {
    pub completed_ns: u64,
    /// The history cut at `completed_ns`.
    pub cut: Vec<Entry<'a>>,
    /// Every earlier cut was shown linearizable (none ran out of budget).
    pub earliest: bool,
}

/// Finds the first failing cut of `ops` (one key's operations), known not to be linearizable.
/// A cut whose search runs out of budget counts as passing, so the cut returned always fails;
/// it is the first one when every search finished.
pub(super) fn find<'a>(ops: &[&'a Operation], budget: &mut Budget) -> Option<Culprit<'a>> {
    let mut times: Vec<u64> = ops
        .iter()
        .filter(|o| o.op.status() == Status::Ok)
        .map(|o| o.completed_ns)
        .collect();
    times.sort_unstable();
    times.dedup();
    // Invariant: the cut at times[high] fails (the last cut is the whole history, less pending
    // operations invoked after every completion, which cannot explain anything).
    let (mut low, mut high) = (0, times.len().checked_sub(1)?);
    let mut earliest = true;
    while low < high {
        let middle = low + (high - low) / 2;
        match budget.search(&cut(ops, times[middle])) {
            Found::NotLinearizable => high = middle,
            Found::Linearizable => low = middle + 1,
            Found::Exhausted => {
                earliest = false;
                low = middle + 1;
            }
        }
    }
    let completed_ns = times[high];
    Some(Culprit {
        completed_ns,
        cut: cut(ops, completed_ns),
        earliest,
    })
}

/// The history cut at `at_ns`. Operations that cannot constrain it are left out: those invoked
/// after it, reads still running, and failed reads.
pub(super) fn cut<'a>(ops: &[&'a Operation], at_ns: u64) -> Vec<Entry<'a>> {
    ops.iter()
        .filter(|o| o.invoked_ns <= at_ns)
        .filter_map(|&op| {
            let pending = op.op.status() == Status::Ok && op.completed_ns > at_ns;
            let entry = Entry { op, pending };
            let constrains = op.op.writes() || entry.status() == Status::Ok;
            constrains.then_some(entry)
        })
        .collect()
}

/// Whether the search proves `entries` not linearizable within the budget.
pub(super) fn fails(entries: &[Entry<'_>], budget: &mut Budget) -> bool {
    budget.search(entries) == Found::NotLinearizable
}
