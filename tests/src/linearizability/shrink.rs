//! Shrinking a failing cut to an excerpt a person can read.
//!
//! Dropping operations from a history is not sound on its own: drop the put a read observed and
//! the read becomes "a value nobody wrote", a failure of the excerpt that says nothing about the
//! original. So a smaller excerpt is accepted only while it keeps the original's failure:
//! - it is still not linearizable;
//! - it still fails at the culprits: with their results left open it is linearizable, so the
//!   rest of the excerpt is consistent and the culprits' results are what no order explains;
//! - it is grounded: every value it observes that some operation of the starting cut wrote is
//!   still written by an operation of the excerpt (and a delete that found the key still has a
//!   write that could have created it).
//!
//! Shrinking first focuses on the operations just before the culprits (see `focus`), then runs
//! delta debugging's greedy core on what is left: drop chunks of halving size while the excerpt
//! still fails, down to single operations, until no single operation can go (1-minimal) or the
//! step budget runs out.

use std::collections::{HashMap, HashSet};

use super::culprit::fails;
use super::history::{CasResult, Op, Operation, Outcome, Status};
use super::register::Entry;
use super::search::{Budget, Found};

/// A shrunk excerpt of a failing cut.
#[derive(Debug)]
pub(super) struct Shrunk<'a> {
    pub entries: Vec<Entry<'a>>,
    /// No single entry can be dropped (false: the budget ran out first, or the cut could not be
    /// shown to fail at its culprits and was kept whole).
    pub minimal: bool,
}

/// Shrinks `cut`, a history cut that fails at the operations completing at `culprit_ns`.
pub(super) fn shrink<'a>(cut: Vec<Entry<'a>>, culprit_ns: u64, budget: &mut Budget) -> Shrunk<'a> {
    let written_in_cut: HashSet<&[u8]> = cut.iter().filter_map(|e| written(e.op)).collect();
    let keeps_failure = |entries: &[Entry<'_>], budget: &mut Budget| {
        grounded(entries, &written_in_cut)
            && fails(entries, budget)
            && budget.search(&open_culprits(entries, culprit_ns)) == Found::Linearizable
    };
    match focus(&cut, culprit_ns, &keeps_failure, budget) {
        Some(focused) => minimize(focused, &keeps_failure, budget),
        None => Shrunk {
            entries: cut,
            minimal: false,
        },
    }
}

/// A part of the cut that keeps its failure, found cheaply: the culprits and the last 8, 16,
/// 32, ... operations invoked before them, with the writes of every value these observe. A
/// failure is nearly always about recent operations and a few old writes, and searching a
/// small part costs little, where every delta-debugging step on a cut of thousands of
/// operations would cost a failing search of it. `None` when not even the whole cut is shown
/// to keep the failure within the budget.
fn focus<'a>(
    cut: &[Entry<'a>],
    culprit_ns: u64,
    keeps_failure: &impl Fn(&[Entry<'_>], &mut Budget) -> bool,
    budget: &mut Budget,
) -> Option<Vec<Entry<'a>>> {
    let mut by_invocation: Vec<usize> = (0..cut.len()).collect();
    by_invocation.sort_by_key(|&i| cut[i].op.invoked_ns);
    let mut recent = 8;
    loop {
        let whole = recent >= cut.len();
        let mut chosen = vec![whole; cut.len()];
        if !whole {
            for &i in &by_invocation[cut.len() - recent..] {
                chosen[i] = true;
            }
            for (i, entry) in cut.iter().enumerate() {
                chosen[i] |= is_culprit(entry, culprit_ns);
            }
            ground(cut, &mut chosen);
        }
        let part: Vec<Entry<'a>> = cut
            .iter()
            .zip(&chosen)
            .filter_map(|(entry, &chosen)| chosen.then_some(*entry))
            .collect();
        if keeps_failure(&part, budget) {
            return Some(part);
        }
        if whole || budget.exhausted() {
            return None;
        }
        recent *= 2;
    }
}

/// Adds to `chosen` the writes of every value a chosen operation observes (and, for a delete
/// that found the key with no write chosen, the latest write before it), until none is missing.
fn ground(cut: &[Entry<'_>], chosen: &mut [bool]) {
    let mut writers: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, entry) in cut.iter().enumerate() {
        if let Some(v) = written(entry.op) {
            writers.entry(v).or_default().push(i);
        }
    }
    loop {
        let written_here: HashSet<&[u8]> = (0..cut.len())
            .filter(|&i| chosen[i])
            .filter_map(|i| written(cut[i].op))
            .collect();
        let mut missing = Vec::new();
        for (i, entry) in cut.iter().enumerate() {
            if !chosen[i] || entry.status() != Status::Ok {
                continue;
            }
            match observed(&entry.op.op) {
                Observed::Value(v) if !written_here.contains(v) => {
                    missing.extend(writers.get(v).into_iter().flatten().copied());
                }
                Observed::SomeValue if written_here.is_empty() => {
                    let latest = (0..cut.len())
                        .filter(|&j| {
                            written(cut[j].op).is_some()
                                && cut[j].op.invoked_ns <= entry.op.completed_ns
                        })
                        .max_by_key(|&j| cut[j].op.invoked_ns);
                    missing.extend(latest);
                }
                _ => {}
            }
        }
        missing.retain(|&i| !chosen[i]);
        if missing.is_empty() {
            return;
        }
        for i in missing {
            chosen[i] = true;
        }
    }
}

/// Delta debugging's greedy core: drops chunks of halving size while the failure is kept, down
/// to single entries, until no single entry can go (1-minimal) or the budget runs out.
fn minimize<'a>(
    mut current: Vec<Entry<'a>>,
    keeps_failure: &impl Fn(&[Entry<'_>], &mut Budget) -> bool,
    budget: &mut Budget,
) -> Shrunk<'a> {
    let mut chunk = current.len().div_ceil(2).max(1);
    loop {
        let mut dropped_any = false;
        let mut start = 0;
        while start < current.len() {
            if budget.exhausted() {
                return Shrunk {
                    entries: current,
                    minimal: false,
                };
            }
            let end = (start + chunk).min(current.len());
            let candidate: Vec<Entry<'a>> = current[..start]
                .iter()
                .chain(&current[end..])
                .copied()
                .collect();
            if keeps_failure(&candidate, budget) {
                current = candidate;
                dropped_any = true;
            } else {
                start = end;
            }
        }
        if chunk == 1 && !dropped_any {
            return Shrunk {
                entries: current,
                minimal: true,
            };
        }
        chunk = (chunk / 2).max(1);
    }
}

fn is_culprit(entry: &Entry<'_>, culprit_ns: u64) -> bool {
    entry.status() == Status::Ok && entry.op.completed_ns == culprit_ns
}

/// The entries with the culprits' results left open.
fn open_culprits<'a>(entries: &[Entry<'a>], culprit_ns: u64) -> Vec<Entry<'a>> {
    entries
        .iter()
        .map(|&e| Entry {
            pending: e.pending || is_culprit(&e, culprit_ns),
            ..e
        })
        .collect()
}

/// Whether every value the entries observe, if the cut wrote it, is written by one of them.
fn grounded(entries: &[Entry<'_>], written_in_cut: &HashSet<&[u8]>) -> bool {
    let written_here: HashSet<&[u8]> = entries.iter().filter_map(|e| written(e.op)).collect();
    entries
        .iter()
        .filter(|e| e.status() == Status::Ok)
        .all(|e| match observed(&e.op.op) {
            Observed::Nothing => true,
            Observed::Value(v) => !written_in_cut.contains(v) || written_here.contains(v),
            Observed::SomeValue => written_in_cut.is_empty() || !written_here.is_empty(),
        })
}

/// The value an operation writes if it takes effect (a put, or a swap to a value).
pub(super) fn written(op: &Operation) -> Option<&[u8]> {
    match &op.op {
        Op::Put { value, .. } => Some(value),
        Op::CompareAndSwap { new: Some(new), .. } => Some(new),
        _ => None,
    }
}

/// What a completed operation's result says the key held.
pub(super) enum Observed<'a> {
    Nothing,
    Value(&'a [u8]),
    /// Some value, no matter which (a delete that found the key).
    SomeValue,
}

pub(super) fn observed(op: &Op) -> Observed<'_> {
    match op {
        Op::Get {
            outcome: Outcome::Ok(Some(v)),
            ..
        }
        | Op::CompareAndSwap {
            expected: Some(v),
            outcome: Outcome::Ok(CasResult::Swapped),
            ..
        }
        | Op::CompareAndSwap {
            outcome: Outcome::Ok(CasResult::CompareFailed { current: Some(v) }),
            ..
        } => Observed::Value(v),
        Op::Delete {
            outcome: Outcome::Ok(true),
            ..
        } => Observed::SomeValue,
        _ => Observed::Nothing,
    }
}
