//! The linearizability checker on generated histories.
//!
//! - From executions: clients invoke operations on their own clocks, each operation takes
//!   effect at a random instant inside its interval (or, for an unknown outcome, at any later
//!   instant or never), and the results come from applying the operations to a map in the order
//!   of those instants. Such a history is linearizable by construction, so the checker must
//!   accept it; then one corruption that no order can explain is injected, and the checker must
//!   find it on the right key, with an excerpt that fails on its own.
//! - Against brute force: small random histories (most not linearizable, values not unique)
//!   must get the verdict that trying every order gives.
//! - Performance: large histories over many keys and over two hot keys, timed.
//!
//! `KEEL_LIN_SEEDS=N` runs N seeds (default 300; the brute-force test runs 20 N); a failure
//! prints its seed.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use keel_tests::linearizability::{check, CasResult, Op, Operation, Outcome, Verdict};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape of a generated history.
#[derive(Clone, Copy, Debug)]
struct Workload {
    operations: usize,
    keys: usize,
    clients: u64,
    /// An operation takes 1..=this many nanoseconds.
    latency_ns_max: u64,
    /// A client pauses 0..=this many nanoseconds between operations.
    think_ns_max: u64,
    failed_percent: u32,
    unknown_percent: u32,
    /// Whether operations may remove keys (deletes, compare-and-swaps to absent).
    removals: bool,
}

impl Workload {
    fn small(rng: &mut ChaCha8Rng) -> Self {
        Self {
            operations: rng.random_range(20..400),
            keys: rng.random_range(1..6),
            clients: rng.random_range(1..7),
            latency_ns_max: rng.random_range(1..200),
            think_ns_max: rng.random_range(1..100),
            failed_percent: rng.random_range(0..10),
            unknown_percent: rng.random_range(0..10),
            removals: rng.random_bool(0.7),
        }
    }
}

/// What really happened to an operation, before its result is known.
struct Planned {
    operation: Operation,
    /// When it took effect; `None`: never.
    effect_ns: Option<u64>,
}

/// Generates a linearizable history: see the module documentation.
fn generate(workload: Workload, rng: &mut ChaCha8Rng) -> Vec<Operation> {
    let keys: Vec<Bytes> = (0..workload.keys)
        .map(|k| Bytes::from(format!("key{k}")))
        .collect();
    let mut clock_ns: Vec<u64> = (0..workload.clients)
        .map(|_| rng.random_range(0..100))
        .collect();
    // The last value generated for each key: compare-and-swaps expect it, so that some succeed.
    let mut recent: Vec<Option<Bytes>> = vec![None; workload.keys];
    let mut planned = Vec::with_capacity(workload.operations);
    for sequence in 0..workload.operations {
        let client = (0..workload.clients)
            .min_by_key(|&c| clock_ns[c as usize])
            .expect("at least one client");
        let invoked_ns = clock_ns[client as usize];
        let latency_ns = rng.random_range(1..=workload.latency_ns_max);
        let k = rng.random_range(0..keys.len());
        let key = keys[k].clone();
        let fresh = Bytes::from(format!("c{client}.{sequence}"));
        // Outcomes are placeholders until the operation's fate is drawn below.
        let op = match rng.random_range(0..100) {
            0..35 => {
                recent[k] = Some(fresh.clone());
                Op::Put {
                    key,
                    value: fresh,
                    outcome: Outcome::Unknown,
                }
            }
            35..70 => Op::Get {
                key,
                outcome: Outcome::Unknown,
            },
            70..80 if workload.removals => Op::Delete {
                key,
                outcome: Outcome::Unknown,
            },
            70..80 => Op::Get {
                key,
                outcome: Outcome::Unknown,
            },
            _ => {
                let expected = if rng.random_bool(0.8) {
                    recent[k].clone()
                } else {
                    None
                };
                let new = (!workload.removals || rng.random_bool(0.9)).then_some(fresh);
                recent[k].clone_from(&new);
                Op::CompareAndSwap {
                    key,
                    expected,
                    new,
                    outcome: Outcome::Unknown,
                }
            }
        };
        let roll = rng.random_range(0..100);
        let completed_ns = invoked_ns + latency_ns;
        let (fate, effect_ns) = if roll < workload.failed_percent {
            (Fate::Failed, None)
        } else if roll < workload.failed_percent + workload.unknown_percent {
            // The client gives up at `completed_ns`; the operation may still happen much later.
            let effect = rng
                .random_bool(0.5)
                .then(|| invoked_ns + rng.random_range(0..=4 * workload.latency_ns_max));
            (Fate::Unknown, effect)
        } else {
            (
                Fate::Ok,
                Some(invoked_ns + rng.random_range(0..=latency_ns)),
            )
        };
        let mut operation = Operation {
            client,
            invoked_ns,
            completed_ns,
            op,
        };
        set_fate(&mut operation.op, fate);
        planned.push(Planned {
            operation,
            effect_ns,
        });
        clock_ns[client as usize] = completed_ns + rng.random_range(0..=workload.think_ns_max);
    }
    execute(&mut planned);
    planned.into_iter().map(|p| p.operation).collect()
}

/// How an operation ends, as its client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Failed,
    Unknown,
    /// With a placeholder result that `execute` replaces with the real one.
    Ok,
}

fn set_fate(op: &mut Op, fate: Fate) {
    fn outcome<T>(fate: Fate, placeholder: T) -> Outcome<T> {
        match fate {
            Fate::Failed => Outcome::Failed,
            Fate::Unknown => Outcome::Unknown,
            Fate::Ok => Outcome::Ok(placeholder),
        }
    }
    match op {
        Op::Put { outcome: o, .. } => *o = outcome(fate, ()),
        Op::Get { outcome: o, .. } => *o = outcome(fate, None),
        Op::Delete { outcome: o, .. } => *o = outcome(fate, false),
        Op::CompareAndSwap { outcome: o, .. } => *o = outcome(fate, CasResult::Swapped),
    }
}

/// Applies the operations that took effect, in the order they did, to a map, and records each
/// known outcome's result.
fn execute(planned: &mut [Planned]) {
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].effect_ns.is_some())
        .collect();
    order.sort_by_key(|&i| (planned[i].effect_ns, i));
    let mut store: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    for i in order {
        match &mut planned[i].operation.op {
            Op::Put { key, value, .. } => {
                store.insert(key.clone(), value.clone());
            }
            Op::Get { key, outcome } => {
                if let Outcome::Ok(read) = outcome {
                    *read = store.get(key).cloned();
                }
            }
            Op::Delete { key, outcome } => {
                let existed = store.remove(key).is_some();
                if let Outcome::Ok(result) = outcome {
                    *result = existed;
                }
            }
            Op::CompareAndSwap {
                key,
                expected,
                new,
                outcome,
            } => {
                let current = store.get(key).cloned();
                let result = if current == *expected {
                    match new {
                        Some(new) => store.insert(key.clone(), new.clone()),
                        None => store.remove(key),
                    };
                    CasResult::Swapped
                } else {
                    CasResult::CompareFailed { current }
                };
                if let Outcome::Ok(r) = outcome {
                    *r = result;
                }
            }
        }
    }
}

/// One way to break a history that no order can explain (values are unique per write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Corruption {
    /// A read returns a value overwritten by a put that completed before the read began.
    StaleRead,
    /// A read returns the value of a put invoked after the read completed.
    FutureRead,
    /// A put whose value was read is reported failed.
    FailedWriteVisible,
    /// A read finds absent a key that a completed put created and nothing ever removes.
    LostWrite,
    /// A compare-and-swap that swapped reports a failure that found the expected value.
    CompareFailedOnMatch,
}

const CORRUPTIONS: [Corruption; 5] = [
    Corruption::StaleRead,
    Corruption::FutureRead,
    Corruption::FailedWriteVisible,
    Corruption::LostWrite,
    Corruption::CompareFailedOnMatch,
];

fn is_ok(o: &Operation) -> bool {
    match &o.op {
        Op::Put { outcome, .. } => matches!(outcome, Outcome::Ok(_)),
        Op::Get { outcome, .. } => matches!(outcome, Outcome::Ok(_)),
        Op::Delete { outcome, .. } => matches!(outcome, Outcome::Ok(_)),
        Op::CompareAndSwap { outcome, .. } => matches!(outcome, Outcome::Ok(_)),
    }
}

fn put_value(o: &Operation) -> Option<&Bytes> {
    match &o.op {
        Op::Put { value, .. } => Some(value),
        _ => None,
    }
}

fn removes(o: &Operation) -> bool {
    match &o.op {
        Op::Delete { .. } => true,
        Op::CompareAndSwap { new, .. } => new.is_none(),
        _ => false,
    }
}

/// Applies `corruption` at a random place where it is certain to break linearizability;
/// returns the key it broke, or `None` when the history has no such place.
fn corrupt(
    history: &mut [Operation],
    corruption: Corruption,
    rng: &mut ChaCha8Rng,
) -> Option<Bytes> {
    let mut by_key: HashMap<Bytes, Vec<usize>> = HashMap::new();
    for (i, o) in history.iter().enumerate() {
        by_key.entry(o.op.key().clone()).or_default().push(i);
    }
    let mut targets: Vec<usize> = (0..history.len())
        .filter(|&i| match (&history[i].op, corruption) {
            (
                Op::Get {
                    outcome: Outcome::Ok(read),
                    ..
                },
                _,
            ) => {
                corruption != Corruption::CompareFailedOnMatch
                    && (corruption != Corruption::FailedWriteVisible || read.is_some())
            }
            (
                Op::CompareAndSwap {
                    outcome: Outcome::Ok(CasResult::Swapped),
                    ..
                },
                Corruption::CompareFailedOnMatch,
            ) => true,
            _ => false,
        })
        .collect();
    targets.shuffle(rng);
    for target in targets {
        let key = history[target].op.key().clone();
        let same_key = &by_key[&key];
        let t = &history[target];
        // Ok puts on the key that completed before the target began.
        let before: Vec<usize> = same_key
            .iter()
            .copied()
            .filter(|&p| {
                let p = &history[p];
                is_ok(p) && put_value(p).is_some() && p.completed_ns < t.invoked_ns
            })
            .collect();
        let partners: Vec<usize> = match corruption {
            Corruption::StaleRead => {
                // A put of v followed by another put, in real time, all before the read.
                let last_invoked = before.iter().map(|&p| history[p].invoked_ns).max();
                before
                    .iter()
                    .copied()
                    .filter(|&p| Some(history[p].completed_ns) < last_invoked)
                    .collect()
            }
            Corruption::FutureRead => same_key
                .iter()
                .copied()
                .filter(|&p| {
                    put_value(&history[p]).is_some() && history[p].invoked_ns > t.completed_ns
                })
                .collect(),
            Corruption::FailedWriteVisible => {
                let Op::Get {
                    outcome: Outcome::Ok(Some(v)),
                    ..
                } = &t.op
                else {
                    continue;
                };
                same_key
                    .iter()
                    .copied()
                    .filter(|&p| put_value(&history[p]) == Some(v))
                    .collect()
            }
            Corruption::LostWrite => {
                if same_key.iter().any(|&r| removes(&history[r])) {
                    continue;
                }
                before
            }
            Corruption::CompareFailedOnMatch => vec![target],
        };
        let Some(&partner) = partners.get(rng.random_range(0..partners.len().max(1))) else {
            continue;
        };
        match corruption {
            Corruption::StaleRead | Corruption::FutureRead => {
                let v = put_value(&history[partner]).cloned();
                if let Op::Get { outcome, .. } = &mut history[target].op {
                    *outcome = Outcome::Ok(v);
                }
            }
            Corruption::FailedWriteVisible => {
                if let Op::Put { outcome, .. } = &mut history[partner].op {
                    *outcome = Outcome::Failed;
                }
            }
            Corruption::LostWrite => {
                if let Op::Get { outcome, .. } = &mut history[target].op {
                    *outcome = Outcome::Ok(None);
                }
            }
            Corruption::CompareFailedOnMatch => {
                if let Op::CompareAndSwap {
                    expected, outcome, ..
                } = &mut history[target].op
                {
                    *outcome = Outcome::Ok(CasResult::CompareFailed {
                        current: expected.clone(),
                    });
                }
            }
        }
        return Some(key);
    }
    None
}

fn seeds() -> u64 {
    match std::env::var("KEEL_LIN_SEEDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("KEEL_LIN_SEEDS must be a number, got {v:?}")),
        Err(_) => 300,
    }
}

#[test]
fn generated_histories_are_linearizable() {
    for seed in 0..seeds() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let workload = Workload::small(&mut rng);
        let history = generate(workload, &mut rng);
        let verdict = check(&history).expect("well-formed");
        assert!(
            verdict.is_linearizable(),
            "seed {seed} ({workload:?}): a history generated from a sequential execution was \
             judged {verdict}"
        );
    }
}

#[test]
fn one_injected_corruption_is_always_detected() {
    let mut injected = [0u32; CORRUPTIONS.len()];
    for seed in 0..seeds() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let workload = Workload::small(&mut rng);
        let history = generate(workload, &mut rng);
        for (kind, count) in CORRUPTIONS.iter().zip(&mut injected) {
            let mut broken = history.clone();
            let Some(key) = corrupt(&mut broken, *kind, &mut rng) else {
                continue;
            };
            *count += 1;
            let verdict = check(&broken).expect("well-formed");
            let Verdict::NotLinearizable(violation) = &verdict else {
                panic!(
                    "seed {seed} ({workload:?}): {kind:?} on key {key:?} not detected: {verdict}"
                );
            };
            assert_eq!(
                violation.key, key,
                "seed {seed}: {kind:?} found on the wrong key"
            );
            let excerpt = check(&violation.excerpt).expect("well-formed");
            assert!(
                matches!(excerpt, Verdict::NotLinearizable(_)),
                "seed {seed}: {kind:?}: the excerpt passes on its own:\n{violation}"
            );
            assert!(
                violation.earliest,
                "seed {seed}: {kind:?}: not the first failure"
            );
            assert!(
                violation.minimal,
                "seed {seed}: {kind:?}: shrinking ran out of budget on {} operations",
                violation.key_operations
            );
        }
    }
    println!(
        "corruptions injected (and detected): {:?}",
        CORRUPTIONS.iter().zip(injected).collect::<Vec<_>>()
    );
    for (kind, count) in CORRUPTIONS.iter().zip(injected) {
        assert!(
            count * 10 >= seeds() as u32,
            "{kind:?} applied only {count} times"
        );
    }
}

/// Checks a large history, and prints how long it took.
fn check_timed(label: &str, history: &[Operation]) -> Verdict {
    let start = Instant::now();
    let verdict = check(history).expect("well-formed");
    println!(
        "{label}: {} operations checked in {:.1} ms: {}",
        history.len(),
        start.elapsed().as_secs_f64() * 1e3,
        if verdict.is_linearizable() {
            "linearizable"
        } else {
            "not linearizable"
        }
    );
    verdict
}

#[test]
fn large_history_over_many_keys() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let workload = Workload {
        operations: 50_000,
        keys: 1000,
        clients: 8,
        latency_ns_max: 2_000_000,
        think_ns_max: 100_000,
        failed_percent: 2,
        unknown_percent: 2,
        removals: true,
    };
    let history = generate(workload, &mut rng);
    assert!(check_timed("50k ops, 1000 keys, 8 clients", &history).is_linearizable());
    let mut broken = history;
    let key = corrupt(&mut broken, Corruption::StaleRead, &mut rng).expect("a stale read fits");
    let verdict = check_timed("the same with one stale read", &broken);
    assert_eq!(verdict.violation().map(|v| &v.key), Some(&key));
}

#[test]
fn large_history_on_a_few_hot_keys() {
    // Every client on the same two keys, operations slow relative to think time: about eight
    // operations in flight per key at any moment.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let workload = Workload {
        operations: 20_000,
        keys: 2,
        clients: 8,
        latency_ns_max: 1_000_000,
        think_ns_max: 10_000,
        failed_percent: 2,
        unknown_percent: 2,
        removals: true,
    };
    let history = generate(workload, &mut rng);
    assert!(check_timed("20k ops, 2 hot keys, 8 clients", &history).is_linearizable());
    let mut broken = history;
    let key = corrupt(&mut broken, Corruption::StaleRead, &mut rng).expect("a stale read fits");
    let verdict = check_timed("the same with one stale read", &broken);
    let violation = verdict.violation().expect("detected");
    assert_eq!(violation.key, key);
    println!("{violation}");
}

/// A small random history, not generated from an execution: values from a pool of three (so
/// not unique), random intervals, outcomes and results. Most are not linearizable.
fn random_small_history(rng: &mut ChaCha8Rng) -> Vec<Operation> {
    let value = |rng: &mut ChaCha8Rng| Bytes::from(["a", "b", "c"][rng.random_range(0..3)]);
    let maybe = |rng: &mut ChaCha8Rng| rng.random_bool(0.7).then(|| value(rng));
    let keys = rng.random_range(1..=2);
    (0..rng.random_range(1..=7))
        .map(|_| {
            let key = Bytes::from(["x", "y"][rng.random_range(0..keys)]);
            let invoked_ns = rng.random_range(0..20);
            let completed_ns = invoked_ns + rng.random_range(0..10);
            let fate = match rng.random_range(0..10) {
                0 => Fate::Failed,
                1 | 2 => Fate::Unknown,
                _ => Fate::Ok,
            };
            let mut op = match rng.random_range(0..4) {
                0 => Op::Put {
                    key,
                    value: value(rng),
                    outcome: Outcome::Ok(()),
                },
                1 => Op::Get {
                    key,
                    outcome: Outcome::Ok(maybe(rng)),
                },
                2 => Op::Delete {
                    key,
                    outcome: Outcome::Ok(rng.random_bool(0.5)),
                },
                _ => Op::CompareAndSwap {
                    key,
                    expected: maybe(rng),
                    new: maybe(rng),
                    outcome: Outcome::Ok(if rng.random_bool(0.5) {
                        CasResult::Swapped
                    } else {
                        CasResult::CompareFailed {
                            current: maybe(rng),
                        }
                    }),
                },
            };
            if fate != Fate::Ok {
                set_fate(&mut op, fate);
            }
            Operation {
                client: rng.random_range(0..3),
                invoked_ns,
                completed_ns,
                op,
            }
        })
        .collect()
}

/// Linearizability by brute force: tries every order of every choice of unknown operations.
fn brute_force_linearizable(history: &[Operation]) -> bool {
    let ops: Vec<&Operation> = history.iter().filter(|o| !is_failed(o)).collect();
    let optional: Vec<usize> = (0..ops.len()).filter(|&i| !is_ok(ops[i])).collect();
    (0u32..1 << optional.len()).any(|mask| {
        let chosen: Vec<usize> = (0..ops.len())
            .filter(|i| match optional.iter().position(|o| o == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        orders_exist(&ops, &chosen, &BTreeMap::new())
    })
}

fn is_failed(o: &Operation) -> bool {
    match &o.op {
        Op::Put { outcome, .. } => matches!(outcome, Outcome::Failed),
        Op::Get { outcome, .. } => matches!(outcome, Outcome::Failed),
        Op::Delete { outcome, .. } => matches!(outcome, Outcome::Failed),
        Op::CompareAndSwap { outcome, .. } => matches!(outcome, Outcome::Failed),
    }
}

/// Whether the `remaining` operations can follow in some real-time order from `store`.
fn orders_exist(ops: &[&Operation], remaining: &[usize], store: &BTreeMap<Bytes, Bytes>) -> bool {
    if remaining.is_empty() {
        return true;
    }
    remaining.iter().any(|&next| {
        // Nothing left may have completed (with a known outcome) before `next` was invoked.
        let first = remaining
            .iter()
            .all(|&r| !(is_ok(ops[r]) && ops[r].completed_ns < ops[next].invoked_ns));
        let mut store = store.clone();
        let rest: Vec<usize> = remaining.iter().copied().filter(|&r| r != next).collect();
        first && apply(ops[next], &mut store) && orders_exist(ops, &rest, &store)
    })
}

/// Applies an operation to the store; false if its known result could not come from it.
fn apply(o: &Operation, store: &mut BTreeMap<Bytes, Bytes>) -> bool {
    match &o.op {
        Op::Put { key, value, .. } => {
            store.insert(key.clone(), value.clone());
            true
        }
        Op::Get { key, outcome } => match outcome {
            Outcome::Ok(read) => store.get(key) == read.as_ref(),
            _ => true,
        },
        Op::Delete { key, outcome } => {
            let existed = store.remove(key).is_some();
            !matches!(outcome, Outcome::Ok(e) if *e != existed)
        }
        Op::CompareAndSwap {
            key,
            expected,
            new,
            outcome,
        } => {
            let current = store.get(key).cloned();
            let swapped = current == *expected;
            if swapped {
                match new {
                    Some(new) => store.insert(key.clone(), new.clone()),
                    None => store.remove(key),
                };
            }
            match outcome {
                Outcome::Ok(CasResult::Swapped) => swapped,
                Outcome::Ok(CasResult::CompareFailed { current: found }) => {
                    !swapped && *found == current
                }
                _ => true,
            }
        }
    }
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let (mut linearizable, mut not) = (0, 0);
    for seed in 0..seeds() * 20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let history = random_small_history(&mut rng);
        let expected = brute_force_linearizable(&history);
        let verdict = check(&history).expect("well-formed");
        assert_eq!(
            verdict.is_linearizable(),
            expected,
            "seed {seed}: brute force says {expected}, the checker {verdict}\n{history:#?}"
        );
        if let Verdict::NotLinearizable(violation) = &verdict {
            assert!(
                !brute_force_linearizable(&violation.excerpt),
                "seed {seed}: the excerpt passes on its own:\n{violation}"
            );
            not += 1;
        } else {
            linearizable += 1;
        }
    }
    println!("{linearizable} linearizable and {not} not, all as brute force decides");
    assert!(linearizable > seeds() && not > seeds());
}
