//! What the search may linearize next, kept so that finding it costs only what is in flight.
//!
//! Operations with known outcomes sit on one list of calls and returns in time order: the
//! candidates are the calls before the first return still on it. Linearized operations are
//! unlinked (dancing links), so the list holds only what is still pending.
//!
//! Operations with unknown outcomes have no return and stay candidates from their invocation
//! on, possibly to the end of the history, so they are kept apart and grouped into classes of
//! operations that do exactly the same thing (every unknown delete, every unknown put of a
//! value nobody read). Only a class's earliest-invoked remaining member is a candidate: any
//! linearization can hand its uses of a class to the earliest members instead (the i-th use
//! comes after at least i members were invoked), and without this k pending unknown deletes
//! would turn every later absent key into k configurations, then k choose 2. A class is
//! unlinked once all its members are linearized, and classes of compare-and-swaps sit on a list
//! per expected value, consulted only when the register holds that value: a compare-and-swap
//! that cannot swap would change nothing.

use std::collections::HashMap;

use super::register::{Call, State, Step};

/// How many times an unknown-outcome operation may take effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// At most once: the history's meaning.
    Exact,
    /// Any number of times, for operations whose effect nobody can tell apart from another's
    /// (deletes, writes of values nobody reads); the others at most once. This accepts every
    /// history the exact mode accepts and more, so a failure under it is a failure, and it is
    /// far cheaper to prove: the exact mode must explore every way of spending a few dozen
    /// unknown deletes along the history, this one has nothing to count.
    Relaxed,
}

/// A doubly linked list structure over nodes `0..len` whose nodes can be unlinked and relinked
/// in LIFO order (Knuth's dancing links). Some nodes serve as list heads.
#[derive(Debug)]
struct Links {
    next: Vec<u32>,
    prev: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Links {
    fn new(len: usize) -> Self {
        Self {
            next: vec![NONE; len],
            prev: vec![NONE; len],
        }
    }

    fn next(&self, node: u32) -> Option<u32> {
        let next = self.next[node as usize];
        (next != NONE).then_some(next)
    }

    /// Links `node` after `tail` while building.
    fn append(&mut self, tail: u32, node: u32) {
        self.next[tail as usize] = node;
        self.prev[node as usize] = tail;
    }

    fn unlink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        if next != NONE {
            self.prev[next as usize] = prev;
        }
    }

    fn relink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        if next != NONE {
            self.prev[next as usize] = node;
        }
    }
}

fn node(index: usize) -> u32 {
    u32::try_from(index).expect("fewer than 2^32 list nodes per key")
}

/// The calls and returns of operations with known outcomes, in time order.
#[derive(Debug)]
pub(super) struct KnownEvents {
    /// Node 0 is the head; event nodes follow in time order.
    links: Links,
    event_call: Vec<usize>,
    event_is_return: Vec<bool>,
    event_time_ns: Vec<u64>,
    /// Per call: its call event and return event (`NONE` for unknown outcomes).
    call_event: Vec<u32>,
    return_event: Vec<u32>,
    /// Per call: its number among operations with known outcomes.
    index: Vec<usize>,
    pub count: usize,
}

const HEAD: u32 = 0;

impl KnownEvents {
    pub(super) fn new(calls: &[Call]) -> Self {
        // Calls sort before returns at equal times: operations that touch at one instant are
        // concurrent.
        let mut events: Vec<(u64, bool, usize)> = calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.completed_ns
                    .map(|done| [(c.invoked_ns, false, i), (done, true, i)])
            })
            .flatten()
            .collect();
        events.sort_unstable();
        let mut known = Self {
            links: Links::new(events.len() + 1),
            event_call: vec![usize::MAX; events.len() + 1],
            event_is_return: vec![false; events.len() + 1],
            event_time_ns: vec![0; events.len() + 1],
            call_event: vec![NONE; calls.len()],
            return_event: vec![NONE; calls.len()],
            index: vec![usize::MAX; calls.len()],
            count: events.len() / 2,
        };
        let mut count = 0;
        for (position, &(time_ns, is_return, call)) in events.iter().enumerate() {
            let event = node(position + 1);
            known.links.append(event - 1, event);
            known.event_call[event as usize] = call;
            known.event_is_return[event as usize] = is_return;
            known.event_time_ns[event as usize] = time_ns;
            if is_return {
                known.return_event[call] = event;
            } else {
                known.call_event[call] = event;
                known.index[call] = count;
                count += 1;
            }
        }
        known
    }

    pub(super) fn first(&self) -> Option<u32> {
        self.links.next(HEAD)
    }

    /// A read-only candidate whose result follows from `state`, if any.
    pub(super) fn pending_read(&self, calls: &[Call], state: State) -> Option<usize> {
        let mut event = self.first();
        while let Some(e) = event {
            let call = self.call_at(e)?;
            let step = calls[call].step;
            if step.is_read_only() && step.apply(state).is_some() {
                return Some(call);
            }
            event = self.links.next(e);
        }
        None
    }

    /// The time of the first return still pending (`u64::MAX` if none): every operation that
    /// completed before it is linearized.
    pub(super) fn first_pending_return_ns(&self) -> u64 {
        let mut event = self.first();
        while let Some(e) = event {
            if self.event_is_return[e as usize] {
                return self.event_time_ns[e as usize];
            }
            event = self.links.next(e);
        }
        u64::MAX
    }

    /// The event after the call of `call`.
    pub(super) fn after(&self, call: usize) -> Option<u32> {
        self.links.next(self.call_event[call])
    }

    /// The call whose invocation `event` is; `None` for a return.
    pub(super) fn call_at(&self, event: u32) -> Option<usize> {
        (!self.event_is_return[event as usize]).then_some(self.event_call[event as usize])
    }

    pub(super) fn time_ns(&self, event: u32) -> u64 {
        self.event_time_ns[event as usize]
    }

    pub(super) fn index(&self, call: usize) -> usize {
        self.index[call]
    }

    /// Unlinks a linearized call and its return.
    pub(super) fn lift(&mut self, call: usize) {
        self.links.unlink(self.call_event[call]);
        self.links.unlink(self.return_event[call]);
    }

    /// Undoes the matching `lift`; lifts must be undone in reverse order.
    pub(super) fn unlift(&mut self, call: usize) {
        self.links.relink(self.return_event[call]);
        self.links.relink(self.call_event[call]);
    }
}

/// Operations with unknown outcomes, in classes of operations that do the same thing.
#[derive(Debug)]
pub(super) struct UnknownClasses {
    /// Nodes `0..heads` are list heads: list 0 holds the classes of puts and deletes; list
    /// `1 + v` the classes of compare-and-swaps that expect state `v`. Class nodes follow.
    links: Links,
    heads: usize,
    classes: Vec<Class>,
    /// Per call: its class (`usize::MAX` for known outcomes) and its number among unknowns.
    class_of: Vec<usize>,
    index: Vec<usize>,
    pub count: usize,
}

#[derive(Debug)]
struct Class {
    /// Calls in invocation order; the first `taken` are linearized.
    members: Vec<usize>,
    taken: usize,
    first_invoked_ns: u64,
    /// Taking a member uses nothing up (see [`Mode::Relaxed`]).
    unlimited: bool,
}

/// A place on one of the unknown lists, within a window of candidates invoked by a time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Position {
    node: u32,
    list: usize,
    window_end_ns: u64,
}

const ANYWHERE: usize = 0;

impl UnknownClasses {
    pub(super) fn new(calls: &[Call], mode: Mode) -> Self {
        let states = calls.iter().map(|c| c.step.max_state()).max().unwrap_or(0) as usize + 1;
        let heads = 1 + states;
        let mut by_step: HashMap<Step, usize> = HashMap::new();
        let mut classes: Vec<Class> = Vec::new();
        let mut list_of: Vec<usize> = Vec::new();
        let mut class_of = vec![usize::MAX; calls.len()];
        let mut index = vec![usize::MAX; calls.len()];
        let mut count = 0;
        for (call, c) in calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.completed_ns.is_none())
        {
            let class = *by_step.entry(c.step).or_insert_with(|| {
                classes.push(Class {
                    members: Vec::new(),
                    taken: 0,
                    first_invoked_ns: c.invoked_ns,
                    unlimited: mode == Mode::Relaxed && c.step.writes_indistinct(),
                });
                list_of.push(match c.step {
                    Step::CompareAndSwap { expected, .. } => 1 + expected as usize,
                    _ => ANYWHERE,
                });
                classes.len() - 1
            });
            classes[class].members.push(call);
            class_of[call] = class;
            index[call] = count;
            count += 1;
        }
        // Classes join their list in order of first invocation, which lets a scan stop at the
        // first class invoked after its window.
        let mut links = Links::new(heads + classes.len());
        let mut tails: Vec<u32> = (0..heads).map(node).collect();
        for (class, &list) in list_of.iter().enumerate() {
            let class_node = node(heads + class);
            links.append(tails[list], class_node);
            tails[list] = class_node;
        }
        Self {
            links,
            heads,
            classes,
            class_of,
            index,
            count,
        }
    }

    /// The first place to look for candidates when the register holds `state`.
    pub(super) fn first(&self, state: State, window_end_ns: u64) -> Option<Position> {
        self.start(ANYWHERE, window_end_ns)
            .or_else(|| self.start(expecting(state), window_end_ns))
    }

    /// The place after `position` when the register holds `state`.
    pub(super) fn next(&self, position: Position, state: State) -> Option<Position> {
        self.in_window(
            position.list,
            self.links.next(position.node),
            position.window_end_ns,
        )
        .or_else(|| match position.list {
            ANYWHERE => self.start(expecting(state), position.window_end_ns),
            _ => None,
        })
    }

    fn start(&self, list: usize, window_end_ns: u64) -> Option<Position> {
        // A state beyond the lists has no compare-and-swap expecting it.
        if list >= self.heads {
            return None;
        }
        self.in_window(list, self.links.next(node(list)), window_end_ns)
    }

    fn in_window(
        &self,
        list: usize,
        class_node: Option<u32>,
        window_end_ns: u64,
    ) -> Option<Position> {
        let class_node = class_node?;
        let class = &self.classes[class_node as usize - self.heads];
        (class.first_invoked_ns <= window_end_ns).then_some(Position {
            node: class_node,
            list,
            window_end_ns,
        })
    }

    /// The candidate at `position`: its class's earliest member not yet linearized, if that
    /// was invoked within the window.
    pub(super) fn candidate(&self, calls: &[Call], position: Position) -> Option<usize> {
        let class = &self.classes[position.node as usize - self.heads];
        let call = *class.members.get(class.taken)?;
        (calls[call].invoked_ns <= position.window_end_ns).then_some(call)
    }

    /// The call's number in the linearized set; `None` when taking it uses nothing up.
    pub(super) fn index(&self, call: usize) -> Option<usize> {
        (!self.classes[self.class_of[call]].unlimited).then_some(self.index[call])
    }

    /// Whether a relaxed linearization, whose unknown choices are `uses` in order, is also an
    /// exact one: whether the i-th use of every unlimited class can be given to its i-th member
    /// (it must have been invoked within the window it was used in). Giving the i-th use to the
    /// i-th member is as good as any assignment, since windows only grow along a linearization.
    pub(super) fn fits_exactly(
        &self,
        calls: &[Call],
        uses: impl Iterator<Item = (usize, Position)>,
    ) -> bool {
        let mut used = vec![0usize; self.classes.len()];
        uses.filter(|&(call, _)| self.classes[self.class_of[call]].unlimited)
            .all(|(call, position)| {
                let class = self.class_of[call];
                let member = self.classes[class].members.get(used[class]);
                used[class] += 1;
                member.is_some_and(|&m| calls[m].invoked_ns <= position.window_end_ns)
            })
    }

    /// Records `call`, its class's earliest remaining member, as linearized.
    pub(super) fn take(&mut self, call: usize) {
        let class = self.class_of[call];
        let c = &mut self.classes[class];
        debug_assert_eq!(
            c.members.get(c.taken),
            Some(&call),
            "only the earliest is taken"
        );
        if c.unlimited {
            return;
        }
        c.taken += 1;
        if c.taken == c.members.len() {
            self.links.unlink(node(self.heads + class));
        }
    }

    /// Undoes the matching `take`; takes must be undone in reverse order.
    pub(super) fn untake(&mut self, call: usize) {
        let class = self.class_of[call];
        let c = &mut self.classes[class];
        if c.unlimited {
            return;
        }
        if c.taken == c.members.len() {
            self.links.relink(node(self.heads + class));
        }
        c.taken -= 1;
        debug_assert_eq!(c.members[c.taken], call);
    }
}

fn expecting(state: State) -> usize {
    1 + state as usize
}
