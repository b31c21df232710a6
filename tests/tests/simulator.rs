//! Runs the Raft core through the seeded simulator and checks its safety properties.
//!
//! - `KEEL_SIM_SEEDS=N` runs seeds `0..N` (default 500); `KEEL_SIM_SEED_BASE` shifts the range.
//! - `KEEL_SIM_SEED=S` with the `replay_seed` test replays one seed; `KEEL_SIM_TRACE=1` prints
//!   every event of that replay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use keel_tests::sim::{self, Bugs, Failure, FaultMix, Options, Summary};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

/// Runs `count` seeds from `base` on every core; returns the summaries and the failures.
fn run_seeds(
    base: u64,
    count: u64,
    options: impl Fn(u64) -> Options + Sync,
) -> (Vec<Summary>, Vec<Failure>) {
    let next = AtomicU64::new(base);
    let summaries = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= base + count {
                    break;
                }
                match sim::run(&options(seed)) {
                    Ok(summary) => summaries.lock().expect("not poisoned").push(summary),
                    Err(failure) => failures.lock().expect("not poisoned").push(failure),
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("not poisoned");
    failures.sort_by_key(|f| f.seed);
    (summaries.into_inner().expect("not poisoned"), failures)
}

#[test]
fn raft_safety_holds_over_many_seeds() {
    let count = env_u64("KEEL_SIM_SEEDS", 500);
    let base = env_u64("KEEL_SIM_SEED_BASE", 0);
    let started = std::time::Instant::now();
    let (summaries, failures) = run_seeds(base, count, Options::new);
    for failure in &failures {
        eprintln!("{failure}");
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed (first: seed {})",
        failures.len(),
        failures[0].seed
    );

    let total = summaries.iter().fold(Summary::default(), |mut t, s| {
        t.leaders_elected += s.leaders_elected;
        t.entries_committed += s.entries_committed;
        t.writes_acknowledged += s.writes_acknowledged;
        t.reads_served += s.reads_served;
        t.lease_reads += s.lease_reads;
        t.crashes += s.crashes;
        t.partitions += s.partitions;
        t.membership_changes += s.membership_changes;
        t.transfers += s.transfers;
        t.snapshots_installed += s.snapshots_installed;
        t
    });
    eprintln!(
        "{count} seeds passed in {:.1?}: {total:?}",
        started.elapsed()
    );
    // The runs must exercise what they claim to check; a vacuous simulator proves nothing.
    let per_seed = |n: u64| n as f64 / count as f64;
    assert!(
        per_seed(total.leaders_elected) >= 2.0,
        "too few elections: {total:?}"
    );
    assert!(
        per_seed(total.writes_acknowledged) >= 20.0,
        "too few writes: {total:?}"
    );
    assert!(
        per_seed(total.reads_served) >= 10.0,
        "too few reads: {total:?}"
    );
    assert!(total.lease_reads > 0, "no lease reads: {total:?}");
    assert!(
        total.crashes > 0 && total.partitions > 0,
        "no faults: {total:?}"
    );
    assert!(
        total.membership_changes > 0 && total.transfers > 0,
        "no reconfiguration: {total:?}"
    );
    assert!(
        total.snapshots_installed > 0,
        "no snapshot was ever installed: {total:?}"
    );
}

#[test]
fn replay_seed() {
    let seed = env_u64("KEEL_SIM_SEED", 7);
    let mut opts = Options::new(seed);
    opts.trace = std::env::var_os("KEEL_SIM_TRACE").is_some();
    match sim::run(&opts) {
        Ok(summary) => eprintln!("seed {seed} passed: {summary:?}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn runs_are_deterministic() {
    for seed in [1, 2, 3] {
        let a = sim::run(&Options::new(seed)).expect("seed passes");
        let b = sim::run(&Options::new(seed)).expect("seed passes");
        assert_eq!(a, b, "seed {seed} replayed differently");
    }
}

/// Runs seeds with a bug injected until the checker reports it; the checker must catch it
/// within `max_seeds`.
fn assert_caught(bugs: Bugs, tweak: impl Fn(&mut Options) + Sync, max_seeds: u64) -> Failure {
    let (_, failures) = run_seeds(0, max_seeds, |seed| {
        let mut opts = Options::new(seed);
        opts.bugs = bugs;
        tweak(&mut opts);
        opts
    });
    let first = failures
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("the checker missed {bugs:?} in {max_seeds} seeds"));
    eprintln!("caught as expected: {first}");
    first
}

/// The failure must be one of Raft's safety properties, not liveness or a simulator complaint.
fn assert_is_safety_violation(failure: &Failure) {
    const PROPERTIES: [&str; 6] = [
        "election safety",
        "log matching",
        "leader completeness",
        "state machine safety",
        "linearizability",
        "apply order",
    ];
    assert!(
        PROPERTIES.iter().any(|p| failure.violation.starts_with(p)),
        "expected a safety violation, got: {failure}"
    );
}

/// Crashes and partitions only: the faults that expose durability bugs.
fn crash_heavy(opts: &mut Options) {
    opts.fault_mix = FaultMix {
        crash: 45,
        partition: 45,
        membership: 0,
        transfer: 0,
    };
}

#[test]
fn checker_catches_acknowledging_before_fsync() {
    let failure = assert_caught(
        Bugs {
            ack_before_durable: true,
            ..Bugs::default()
        },
        crash_heavy,
        2000,
    );
    assert_is_safety_violation(&failure);
}

#[test]
fn checker_catches_a_vote_that_is_not_persisted() {
    let failure = assert_caught(
        Bugs {
            forget_vote: true,
            ..Bugs::default()
        },
        crash_heavy,
        2000,
    );
    // A node that forgets its vote votes again in the same term: two leaders of one term.
    assert!(
        failure.violation.starts_with("election safety"),
        "expected two leaders in a term, got: {failure}"
    );
}

/// Lease reads are only as safe as the drift margin: with the smallest the core accepts (one
/// tick), and clocks that drift apart by up to 70%, an old leader serves a read its lease no
/// longer covers.
#[test]
fn checker_catches_lease_reads_with_too_small_a_drift_margin() {
    let failure = assert_caught(
        Bugs::default(),
        |opts| {
            opts.lease_drift_ticks = 1;
            // Tick periods up to 70% off and a partition in 40% of fault events (at 30% and
            // 60% skew with no margin, one seed in 5,000 was caught: the bound below was met
            // by luck, and an unrelated change to the message flow lost it).
            opts.tick_skew_percent = 70;
            opts.fault_mix = FaultMix {
                crash: 0,
                partition: 40,
                membership: 0,
                transfer: 0,
            };
        },
        2000,
    );
    assert!(
        failure.violation.starts_with("linearizability"),
        "{failure}"
    );
}
