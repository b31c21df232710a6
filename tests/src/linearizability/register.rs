//! One key as a register: the sequential specification the search replays.
//!
//! The search applies and hashes states millions of times, so a key's values (arbitrary bytes)
//! are interned first: a state is [`ABSENT`] or a small integer naming a value, and an operation
//! compiles to a [`Call`] of plain integers.
//!
//! Values that no operation ever looks for (no read returned them, no compare-and-swap expected
//! them or found them) all intern to one [`UNSEEN`] value. Every operation behaves the same on
//! any two such values: a read or a failed comparison that reports one is impossible either way,
//! a comparison with anything else fails either way, and a delete finds the key either way. So
//! the merge changes no verdict, and it makes writes nobody read interchangeable. That matters
//! for unknown-outcome writes: their values are rarely read, and the search treats
//! interchangeable ones as one (see `candidates`).

use std::collections::HashMap;

use bytes::Bytes;

use super::history::{CasResult, Op, Operation, Outcome, Status};

/// The register's state: [`ABSENT`], or the number of the value it holds.
pub(super) type State = u32;

/// The key is absent; also the initial state (the store starts empty).
pub(super) const ABSENT: State = 0;

/// The key holds a value that no operation looks for.
pub(super) const UNSEEN: State = 1;

/// One operation of a key's sub-history, as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call {
    pub step: Step,
    pub invoked_ns: u64,
    /// `None`: the outcome is unknown, so the operation may take effect at any time after its
    /// invocation (its completion is at infinity), or never.
    pub completed_ns: Option<u64>,
}

/// An operation with the result it must explain (`None` where the result is unconstrained).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Step {
    Put {
        value: State,
    },
    Read {
        value: State,
    },
    Delete {
        existed: Option<bool>,
    },
    CompareAndSwap {
        expected: State,
        new: State,
        result: Option<CasStep>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum CasStep {
    Swapped,
    Failed { current: State },
}

impl Step {
    /// The values (not absence) whose presence the operation checks.
    fn looks_for(self) -> [Option<State>; 2] {
        let value = |s: State| (s != ABSENT).then_some(s);
        match self {
            Step::Read { value: v } => [value(v), None],
            Step::Put { .. } | Step::Delete { .. } => [None, None],
            Step::CompareAndSwap {
                expected, result, ..
            } => match result {
                Some(CasStep::Failed { current }) => [value(expected), value(current)],
                _ => [value(expected), None],
            },
        }
    }

    /// Whether the operation writes something no operation looks for: absence (also looked
    /// for, but by nothing that can tell one delete from another) or an unseen value.
    pub(super) fn writes_indistinct(self) -> bool {
        match self {
            Step::Put { value } => value == UNSEEN,
            Step::Delete { .. } => true,
            Step::CompareAndSwap { new, .. } => new == UNSEEN || new == ABSENT,
            Step::Read { .. } => false,
        }
    }

    /// The largest state the operation names.
    pub(super) fn max_state(self) -> State {
        match self {
            Step::Put { value } | Step::Read { value } => value,
            Step::Delete { .. } => ABSENT,
            Step::CompareAndSwap {
                expected,
                new,
                result,
            } => match result {
                Some(CasStep::Failed { current }) => expected.max(new).max(current),
                _ => expected.max(new),
            },
        }
    }

    /// Whether the operation never changes the state, whatever it is (when its result is
    /// possible at all).
    pub(super) fn is_read_only(self) -> bool {
        match self {
            Step::Read { .. } => true,
            Step::Put { .. } => false,
            Step::Delete { existed } => existed == Some(false),
            Step::CompareAndSwap {
                expected,
                new,
                result,
            } => match result {
                Some(CasStep::Failed { .. }) => true,
                Some(CasStep::Swapped) => expected == new,
                None => false,
            },
        }
    }

    /// The state after this operation runs on `state`, or `None` when its recorded result could
    /// not have come from `state`.
    pub(super) fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Put { value } => Some(value),
            Step::Read { value } => (value == state).then_some(state),
            Step::Delete { existed } => match existed {
                Some(existed) if existed != (state != ABSENT) => None,
                _ => Some(ABSENT),
            },
            Step::CompareAndSwap {
                expected,
                new,
                result,
            } => {
                let matches = state == expected;
                match result {
                    None => Some(if matches { new } else { state }),
                    Some(CasStep::Swapped) => matches.then_some(new),
                    Some(CasStep::Failed { current }) => {
                        (!matches && current == state).then_some(state)
                    }
                }
            }
        }
    }
}

/// An operation of a key's history; `pending` weakens a completed operation to an unknown
/// outcome (see `culprit`: a history cut at a time treats what was still running as pending).
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry<'a> {
    pub op: &'a Operation,
    pub pending: bool,
}

impl<'a> Entry<'a> {
    pub(super) fn new(op: &'a Operation) -> Self {
        Self { op, pending: false }
    }

    /// The outcome the check must respect: `Unknown` when the entry is pending.
    pub(super) fn status(&self) -> Status {
        match self.op.op.status() {
            Status::Ok if self.pending => Status::Unknown,
            status => status,
        }
    }
}

/// A key's history as the search sees it.
#[derive(Debug)]
pub(super) struct Compiled {
    /// Sorted by invocation.
    pub calls: Vec<Call>,
    /// Per state: the latest completion of an operation that looks for it (`u64::MAX` when an
    /// operation with an unknown outcome does, or for the states that are not values).
    looked_for_until_ns: Vec<u64>,
}

impl Compiled {
    /// `state` as the rest of a search can tell it apart, once every return before
    /// `first_pending_return_ns` is linearized: a value whose every looker has completed (so is
    /// linearized) is now as good as [`UNSEEN`], since no operation left can tell the two apart.
    /// Forgetting values this way keeps the states a search juggles to the few still looked for.
    pub(super) fn canonical(&self, state: State, first_pending_return_ns: u64) -> State {
        match self.looked_for_until_ns.get(state as usize) {
            Some(&until_ns) if until_ns < first_pending_return_ns => UNSEEN,
            _ => state,
        }
    }
}

/// Compiles a key's entries, leaving out what cannot constrain the search: failed operations
/// (they never took effect) and reads with an unknown answer.
pub(super) fn compile(entries: &[Entry<'_>]) -> Compiled {
    let calls = compile_calls(entries);
    let states = calls
        .iter()
        .map(|c| c.step.max_state())
        .fold(UNSEEN, State::max) as usize
        + 1;
    let mut looked_for_until_ns = vec![0; states];
    looked_for_until_ns[ABSENT as usize] = u64::MAX;
    looked_for_until_ns[UNSEEN as usize] = u64::MAX;
    for call in &calls {
        for state in call.step.looks_for().into_iter().flatten() {
            let until_ns = &mut looked_for_until_ns[state as usize];
            *until_ns = (*until_ns).max(call.completed_ns.unwrap_or(u64::MAX));
        }
    }
    Compiled {
        calls,
        looked_for_until_ns,
    }
}

fn compile_calls(entries: &[Entry<'_>]) -> Vec<Call> {
    let values = Interner::new(entries);
    let mut calls: Vec<Call> = Vec::with_capacity(entries.len());
    for entry in entries {
        let known = match entry.status() {
            Status::Failed => continue,
            Status::Unknown => false,
            Status::Ok => true,
        };
        let step = match &entry.op.op {
            Op::Put { value, .. } => Step::Put {
                value: values.value(value),
            },
            Op::Get { outcome, .. } => match result(outcome, known) {
                Some(read) => Step::Read {
                    value: values.state(read.as_ref()),
                },
                None => continue,
            },
            Op::Delete { outcome, .. } => Step::Delete {
                existed: result(outcome, known).copied(),
            },
            Op::CompareAndSwap {
                expected,
                new,
                outcome,
                ..
            } => Step::CompareAndSwap {
                expected: values.state(expected.as_ref()),
                new: values.state(new.as_ref()),
                result: result(outcome, known).map(|r| match r {
                    CasResult::Swapped => CasStep::Swapped,
                    CasResult::CompareFailed { current } => CasStep::Failed {
                        current: values.state(current.as_ref()),
                    },
                }),
            },
        };
        calls.push(Call {
            step,
            invoked_ns: entry.op.invoked_ns,
            completed_ns: known.then_some(entry.op.completed_ns),
        });
    }
    calls.sort_by_key(|c| c.invoked_ns);
    calls
}

fn result<T>(outcome: &Outcome<T>, known: bool) -> Option<&T> {
    match outcome {
        Outcome::Ok(r) if known => Some(r),
        _ => None,
    }
}

/// Numbers the values operations look for from 2 (0 is [`ABSENT`], 1 is [`UNSEEN`]).
struct Interner<'a> {
    numbers: HashMap<&'a [u8], State>,
}

impl<'a> Interner<'a> {
    /// Numbers every value some entry looks for: a read's result, a comparison's expected
    /// value, and the value a failed comparison found.
    fn new(entries: &[Entry<'a>]) -> Self {
        let mut interner = Self {
            numbers: HashMap::new(),
        };
        for entry in entries {
            let known = entry.status() == Status::Ok;
            let sought = match &entry.op.op {
                Op::Get {
                    outcome: Outcome::Ok(Some(v)),
                    ..
                } if known => [Some(v), None],
                Op::CompareAndSwap {
                    expected, outcome, ..
                } if entry.status() != Status::Failed => {
                    let found = match outcome {
                        Outcome::Ok(CasResult::CompareFailed { current }) if known => {
                            current.as_ref()
                        }
                        _ => None,
                    };
                    [expected.as_ref(), found]
                }
                _ => [None, None],
            };
            for v in sought.into_iter().flatten() {
                let next = State::try_from(interner.numbers.len() + 2)
                    .expect("a key's history has fewer than 2^32 distinct values");
                interner.numbers.entry(v).or_insert(next);
            }
        }
        interner
    }

    fn value(&self, value: &[u8]) -> State {
        self.numbers.get(value).copied().unwrap_or(UNSEEN)
    }

    fn state(&self, value: Option<&Bytes>) -> State {
        value.map_or(ABSENT, |v| self.value(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_step_follows_the_store() {
        let cas = |expected, new, result| Step::CompareAndSwap {
            expected,
            new,
            result,
        };
        assert_eq!(cas(1, 2, Some(CasStep::Swapped)).apply(1), Some(2));
        assert_eq!(cas(1, 2, Some(CasStep::Swapped)).apply(3), None);
        assert_eq!(
            cas(1, 2, Some(CasStep::Failed { current: 3 })).apply(3),
            Some(3)
        );
        // A failure that reports the expected value contradicts itself.
        assert_eq!(
            cas(1, 2, Some(CasStep::Failed { current: 1 })).apply(1),
            None
        );
        assert_eq!(cas(ABSENT, 2, None).apply(ABSENT), Some(2));
        assert_eq!(cas(ABSENT, 2, None).apply(5), Some(5));
        assert_eq!(cas(5, ABSENT, None).apply(5), Some(ABSENT));
    }

    #[test]
    fn delete_step_checks_existence_only_when_known() {
        let delete = |existed| Step::Delete { existed };
        assert_eq!(delete(Some(true)).apply(4), Some(ABSENT));
        assert_eq!(delete(Some(true)).apply(ABSENT), None);
        assert_eq!(delete(Some(false)).apply(ABSENT), Some(ABSENT));
        assert_eq!(delete(Some(false)).apply(4), None);
        assert_eq!(delete(None).apply(4), Some(ABSENT));
    }
}
