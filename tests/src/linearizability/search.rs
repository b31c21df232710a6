//! The search for a linearization of one key's history: Wing & Gong's algorithm with Lowe's
//! memoization (the algorithm of porcupine and of Knossos' `wgl` checker).
//!
//! The search builds a linearization front to back. At each point it tries the candidates in
//! turn (see `candidates`: the calls before the first return still pending, which is exactly
//! what real-time order allows next): a candidate is linearized if its recorded result follows
//! from the current state and the resulting configuration is new to the [`Memo`]. When no
//! candidate is left, the path is wrong and the search backtracks to its last choice and tries
//! the next candidate there.
//!
//! An operation with an unknown outcome may take effect at any point after its invocation, or
//! never, so nothing forces it to be linearized: the search succeeds as soon as every operation
//! with a known outcome is. Unknown operations are tried only after every candidate with a
//! known outcome, so that the search reaches a configuration with as few of them as possible
//! first, and the memo's dominance rule then prunes the same configuration with more of them.
//! An unknown operation that would change nothing is not tried at all: the configuration it
//! leads to is dominated by the current one.
//!
//! Reads are taken greedily (a partial-order reduction): when a read-only candidate (a get, a
//! failed compare-and-swap, a delete that found nothing) explains its result from the current
//! state, the search linearizes it now and tries nothing else at that point. If any
//! linearization exists from here, one takes that read first: moving a read-only operation
//! earlier changes no state, and it breaks no real-time order since it is a candidate already.
//! Without this, every read in flight doubles the orders a failing search must rule out.
//!
//! States are kept canonical (see [`Compiled::canonical`]): a value nobody left will look for
//! is forgotten, so configurations that differ only in such values are one.
//!
//! The worst case is exponential, so every run is bounded by a step budget; a step is one look
//! at a candidate or a return.

use super::candidates::{KnownEvents, Mode, Position, UnknownClasses};
use super::memo::{LinearizedSet, Memo};
use super::register::{compile, Compiled, Entry, State, ABSENT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    Linearizable,
    NotLinearizable,
    /// The step budget ran out first.
    Exhausted,
}

/// How one search ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// It found a linearization; `exact`: one that takes no unknown operation more often than
    /// the history holds it (always, in the exact mode).
    Linearized {
        exact: bool,
    },
    NoLinearization,
    Exhausted,
}

/// Searches for a linearization of a compiled history from an absent key, in at most
/// `steps_max` steps. Returns how it ended and the steps it took.
fn search(history: &Compiled, mode: Mode, steps_max: u64) -> (End, u64) {
    let mut search = Search::new(history, mode);
    let mut cursor = Cursor::Enter;
    let mut steps = 0u64;
    loop {
        if search.unexplained == 0 {
            return (search.end_linearized(), steps);
        }
        if steps == steps_max {
            return (End::Exhausted, steps);
        }
        steps += 1;
        let choice = match cursor {
            Cursor::Enter => match search.known.pending_read(&history.calls, search.state) {
                Some(call) => Choice::Read(call),
                None => {
                    cursor = Cursor::Known(search.known.first());
                    continue;
                }
            },
            Cursor::Known(Some(event)) => match search.known.call_at(event) {
                Some(call) => Choice::Known(call),
                // The first pending return closes the window; the unknown operations invoked
                // by then come next.
                None => {
                    let window_end_ns = search.known.time_ns(event);
                    cursor = Cursor::Unknown(search.unknown.first(search.state, window_end_ns));
                    continue;
                }
            },
            Cursor::Known(None) => {
                cursor = Cursor::Unknown(search.unknown.first(search.state, u64::MAX));
                continue;
            }
            Cursor::Unknown(Some(position)) => {
                match search.unknown.candidate(&history.calls, position) {
                    Some(call) => Choice::Unknown(call, position),
                    None => {
                        cursor = Cursor::Unknown(search.unknown.next(position, search.state));
                        continue;
                    }
                }
            }
            // No candidate left: undo the last choice and try the one after it.
            Cursor::Unknown(None) => match search.backtrack() {
                Some(choice) => {
                    cursor = search.after(choice);
                    continue;
                }
                None => return (End::NoLinearization, steps),
            },
        };
        cursor = if search.linearize(choice) {
            Cursor::Enter
        } else {
            search.after(choice)
        };
    }
}

/// Where the search looks for its next candidate.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    /// At a configuration just reached: first look for a read to take (see `pending_read`).
    Enter,
    /// On the events of operations with known outcomes.
    Known(Option<u32>),
    /// On the classes of operations with unknown outcomes.
    Unknown(Option<Position>),
}

/// A candidate, and where it was found.
#[derive(Clone, Copy, Debug)]
enum Choice {
    /// A read-only operation that explains its result now: the only choice tried.
    Read(usize),
    Known(usize),
    Unknown(usize, Position),
}

impl Choice {
    fn call(self) -> usize {
        match self {
            Choice::Read(call) | Choice::Known(call) | Choice::Unknown(call, _) => call,
        }
    }
}

/// A choice the search made when the register held `state`.
#[derive(Clone, Copy, Debug)]
struct Frame {
    choice: Choice,
    state: State,
}

/// Where a search stands: the current configuration and the choices that led to it.
#[derive(Debug)]
struct Search<'a> {
    history: &'a Compiled,
    known: KnownEvents,
    unknown: UnknownClasses,
    known_set: LinearizedSet,
    unknown_set: LinearizedSet,
    state: State,
    /// Operations with known outcomes not linearized yet.
    unexplained: usize,
    memo: Memo,
    stack: Vec<Frame>,
}

impl<'a> Search<'a> {
    fn new(history: &'a Compiled, mode: Mode) -> Self {
        let calls = &history.calls;
        debug_assert!(calls.windows(2).all(|w| w[0].invoked_ns <= w[1].invoked_ns));
        let known = KnownEvents::new(calls);
        let unknown = UnknownClasses::new(calls, mode);
        Self {
            history,
            known_set: LinearizedSet::new(known.count),
            unknown_set: LinearizedSet::new(unknown.count),
            unexplained: known.count,
            known,
            unknown,
            state: ABSENT,
            memo: Memo::default(),
            stack: Vec::new(),
        }
    }

    /// The end of a search that linearized everything it had to.
    fn end_linearized(&self) -> End {
        let uses = self.stack.iter().filter_map(|frame| match frame.choice {
            Choice::Unknown(call, position) => Some((call, position)),
            Choice::Read(_) | Choice::Known(_) => None,
        });
        End::Linearized {
            exact: self.unknown.fits_exactly(&self.history.calls, uses),
        }
    }

    /// Linearizes `choice` next if its result follows from the current state and the
    /// configuration it leads to is new; returns whether it did.
    fn linearize(&mut self, choice: Choice) -> bool {
        let Some(next) = self.history.calls[choice.call()].step.apply(self.state) else {
            return false;
        };
        self.take(choice);
        let next = self
            .history
            .canonical(next, self.known.first_pending_return_ns());
        // An unknown operation that changes nothing leads where the current configuration,
        // which dominates it, already leads.
        let useless = matches!(choice, Choice::Unknown(..)) && next == self.state;
        if useless || !self.memo.insert(&self.known_set, &self.unknown_set, next) {
            self.untake(choice);
            return false;
        }
        self.stack.push(Frame {
            choice,
            state: self.state,
        });
        debug_assert!(self.stack.len() <= self.history.calls.len());
        self.state = next;
        true
    }

    /// Undoes the last choice; `None` when there is none left to undo.
    fn backtrack(&mut self) -> Option<Choice> {
        let frame = self.stack.pop()?;
        self.untake(frame.choice);
        self.state = frame.state;
        Some(frame.choice)
    }

    /// Where to look after `choice` was tried (and undone).
    fn after(&self, choice: Choice) -> Cursor {
        match choice {
            // The read was the only choice worth trying here: keep backtracking.
            Choice::Read(_) => Cursor::Unknown(None),
            Choice::Known(call) => Cursor::Known(self.known.after(call)),
            Choice::Unknown(_, position) => {
                Cursor::Unknown(self.unknown.next(position, self.state))
            }
        }
    }

    fn take(&mut self, choice: Choice) {
        match choice {
            Choice::Read(call) | Choice::Known(call) => {
                self.known.lift(call);
                self.known_set.insert(self.known.index(call));
                self.unexplained -= 1;
            }
            Choice::Unknown(call, _) => {
                self.unknown.take(call);
                if let Some(index) = self.unknown.index(call) {
                    self.unknown_set.insert(index);
                }
            }
        }
    }

    fn untake(&mut self, choice: Choice) {
        match choice {
            Choice::Read(call) | Choice::Known(call) => {
                self.known.unlift(call);
                self.known_set.remove(self.known.index(call));
                self.unexplained += 1;
            }
            Choice::Unknown(call, _) => {
                self.unknown.untake(call);
                if let Some(index) = self.unknown.index(call) {
                    self.unknown_set.remove(index);
                }
            }
        }
    }
}

/// A step allowance for a series of searches (explaining a failure runs many): each search
/// stops at `per_search_max` steps, and all of them together at `total_max`.
#[derive(Debug)]
pub(super) struct Budget {
    per_search_max: u64,
    total_left: u64,
}

impl Budget {
    pub(super) fn new(per_search_max: u64, total_max: u64) -> Self {
        Self {
            per_search_max,
            total_left: total_max,
        }
    }

    /// Decides whether `entries` are linearizable within what is left: first under the relaxed
    /// mode, whose failures are cheap to prove and are failures, and whose linearizations are
    /// nearly always exact ones too; then, if it has to, exactly.
    pub(super) fn search(&mut self, entries: &[Entry<'_>]) -> Found {
        let history = compile(entries);
        match self.run(&history, Mode::Relaxed) {
            End::Linearized { exact: true } => Found::Linearizable,
            End::NoLinearization => Found::NotLinearizable,
            End::Linearized { exact: false } | End::Exhausted => {
                match self.run(&history, Mode::Exact) {
                    End::Linearized { .. } => Found::Linearizable,
                    End::NoLinearization => Found::NotLinearizable,
                    End::Exhausted => Found::Exhausted,
                }
            }
        }
    }

    fn run(&mut self, history: &Compiled, mode: Mode) -> End {
        let steps_max = self.per_search_max.min(self.total_left);
        let (end, steps) = search(history, mode, steps_max);
        self.total_left -= steps;
        end
    }

    pub(super) fn exhausted(&self) -> bool {
        self.total_left == 0
    }
}
