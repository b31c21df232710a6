//! keel-sim: runs the Raft core through the seeded simulator and prints what happened.
//!
//! Usage: `keel-sim [--seeds N] [--base S] [--seed S --trace]`. With `--seed`, one run is
//! replayed (with `--trace`, every event is printed to stderr).

use std::time::Instant;

use keel_tests::sim::{self, Options, Summary};

fn main() {
    let mut seeds = 200u64;
    let mut base = 0u64;
    let mut single: Option<u64> = None;
    let mut trace = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args
                .next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")));
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name} takes a number, got {v:?}")))
        };
        match arg.as_str() {
            "--seeds" => seeds = value("--seeds"),
            "--base" => base = value("--base"),
            "--seed" => single = Some(value("--seed")),
            "--trace" => trace = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(seed) = single {
        let mut opts = Options::new(seed);
        opts.trace = trace;
        match sim::run(&opts) {
            Ok(summary) => println!("seed {seed} passed\n{}", report(&summary, 1)),
            Err(failure) => {
                eprintln!("{failure}");
                std::process::exit(1);
            }
        }
        return;
    }
    let started = Instant::now();
    let mut total = Summary::default();
    let mut failed = 0;
    for seed in base..base + seeds {
        match sim::run(&Options::new(seed)) {
            Ok(s) => add(&mut total, &s),
            Err(failure) => {
                failed += 1;
                eprintln!("{failure}");
            }
        }
    }
    println!(
        "{} seeds in {:.2?}: {} passed, {failed} failed\n{}",
        seeds,
        started.elapsed(),
        seeds - failed,
        report(&total, seeds)
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

fn add(total: &mut Summary, s: &Summary) {
    total.nodes += s.nodes;
    total.leaders_elected += s.leaders_elected;
    total.entries_committed += s.entries_committed;
    total.writes_acknowledged += s.writes_acknowledged;
    total.reads_served += s.reads_served;
    total.lease_reads += s.lease_reads;
    total.crashes += s.crashes;
    total.partitions += s.partitions;
    total.membership_changes += s.membership_changes;
    total.transfers += s.transfers;
    total.snapshots_installed += s.snapshots_installed;
}

fn report(t: &Summary, runs: u64) -> String {
    let rows = [
        ("nodes", t.nodes as u64),
        ("leaders elected", t.leaders_elected),
        ("entries committed", t.entries_committed),
        ("writes acknowledged", t.writes_acknowledged),
        ("linearizable reads served", t.reads_served),
        ("  of which on the lease", t.lease_reads),
        ("crashes (unsynced writes lost)", t.crashes),
        ("partitions", t.partitions),
        ("membership changes", t.membership_changes),
        ("leadership transfers", t.transfers),
        ("snapshots installed", t.snapshots_installed),
    ];
    let mut out = format!("{:<32}{:>12}{:>12}\n", "", "total", "per run");
    for (name, value) in rows {
        out += &format!(
            "{name:<32}{value:>12}{:>12.1}\n",
            value as f64 / runs.max(1) as f64
        );
    }
    out
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("keel-sim: {problem}");
    }
    eprintln!("usage: keel-sim [--seeds N] [--base S] | --seed S [--trace]");
    std::process::exit(2);
}
