//! A scenario: a cluster under a recorded load while a schedule of faults runs, then every
//! fault undone and the verdict.
//!
//! The verdict has three parts: the nodes agree on their applied state (same applied index,
//! same digest, after a barrier); a fresh client reads back every key with a linearizable read,
//! recorded in the history, so an acknowledged write that went missing shows up as a stale read;
//! and the whole history is linearizable. A failure prints the seed, the schedule, the minimal
//! failing history, the command that replays it and the tail of every node's log.

use std::fmt;
use std::time::{Duration, Instant};

use keel_engine::core::NodeId;
use keel_engine::kv::Consistency;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cluster::{Agreement, Cluster, ClusterOptions};
use super::proxy::{LinkFaults, ProxyStats};
use super::schedule::{Fault, Schedule};
use super::workload::{key, read, Clock, Workload, WorkloadOptions};
use super::HarnessError;
use crate::linearizability::{check, Op, Operation, Outcome, Status, Verdict};

/// Client id of the read-back after the faults.
const READ_BACK_CLIENT: u64 = 0;
/// Time to heal the cluster and for the nodes to agree.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that defines a run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub cluster: ClusterOptions,
    pub workload: WorkloadOptions,
    /// Load before the first fault.
    pub warmup: Duration,
    pub schedule: Schedule,
    /// Load after the last fault is undone.
    pub cooldown: Duration,
    /// The command that runs this scenario again.
    pub replay: String,
    /// Whether a fault may find nothing to act on (no leader, say) and be skipped. A schedule
    /// written for what it tests may not: skipped, it would pass without testing it.
    pub faults_may_skip: bool,
}

impl Scenario {
    pub fn new(name: &str, seed: u64, schedule: Schedule) -> Self {
        Self {
            name: name.to_string(),
            seed,
            cluster: ClusterOptions::default(),
            workload: WorkloadOptions::default(),
            warmup: Duration::from_millis(500),
            schedule,
            // Long enough for clients stuck on a killed node's connection to time out and
            // show that the healed cluster serves again.
            cooldown: Duration::from_secs(2),
            replay: format!(
                "KEEL_FAULT_SEED={seed} cargo test --release -p keel-tests --test faults {name} \
                 -- --nocapture"
            ),
            faults_may_skip: false,
        }
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Report {
    pub verdict: Verdict,
    pub history: Vec<Operation>,
    pub agreement: Agreement,
    /// What the faults did, in order (including faults that could not be applied and why).
    pub log: Vec<String>,
    /// Wrong behaviour the harness saw outside the history (e.g. a node that kept running
    /// after its fsync failed).
    pub problems: Vec<String>,
    /// Faults that found nothing to act on, or did not take.
    pub skipped: Vec<String>,
    /// Writes acknowledged among those invoked after the last fault was undone: the healed
    /// cluster must serve.
    pub writes_after_faults: usize,
    pub network: ProxyStats,
    pub elapsed: Duration,
    /// The end of every node's stderr.
    pub node_logs: String,
}

impl Report {
    /// (ok, failed, unknown) operations.
    pub fn outcomes(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for o in &self.history {
            match o.op.status() {
                Status::Ok => counts.0 += 1,
                Status::Failed => counts.1 += 1,
                Status::Unknown => counts.2 += 1,
            }
        }
        counts
    }

    /// What fails the run besides its verdict: wrong behaviour seen, faults that did not take
    /// (unless the scenario allows it, and then at most two thirds of them: a run where none
    /// took tested nothing; up to a third skipped in random runs seen), and a healed cluster
    /// that served no write.
    pub fn failures(&self, scenario: &Scenario) -> Vec<String> {
        let mut failures = self.problems.clone();
        let faults = scenario.schedule.faults.len();
        let too_many = if scenario.faults_may_skip {
            3 * self.skipped.len() > 2 * faults
        } else {
            !self.skipped.is_empty()
        };
        if too_many {
            failures.push(format!(
                "faults that did not take, so the run did not test them: {:?}",
                self.skipped
            ));
        }
        if self.writes_after_faults == 0 {
            failures.push("no write was acknowledged after the last fault was undone".into());
        }
        failures
    }

    pub fn summary(&self, scenario: &Scenario) -> String {
        let (ok, failed, unknown) = self.outcomes();
        let verdict = match &self.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable(v) => format!("NOT linearizable on key {:?}", v.key),
            Verdict::Unknown { keys } => format!("undecided on {} key(s)", keys.len()),
        };
        format!(
            "{} (seed {}): {} ops ({ok} ok, {failed} failed, {unknown} unknown), {verdict}; \
             {} nodes agree at applied {} (snapshots at {:?}, forwards served {:?}); {} faults \
             ({} skipped); {} datagrams relayed, {} dropped; {:.1} s",
            scenario.name,
            scenario.seed,
            self.history.len(),
            self.agreement.nodes.len(),
            self.agreement.applied,
            self.agreement.snapshots,
            self.agreement.forwards_served,
            scenario.schedule.faults.len(),
            self.skipped.len(),
            self.network.relayed,
            self.network.dropped,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A run that could not be completed or judged: the harness failed, or keel did (a node that
/// would not restart, diverged state).
#[derive(Debug)]
pub struct Aborted {
    pub error: HarnessError,
    pub log: Vec<String>,
    pub node_logs: String,
    pub kept_dir: Option<std::path::PathBuf>,
}

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the scenario could not finish: {}", self.error)?;
        writeln!(f, "faults applied:")?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        if let Some(dir) = &self.kept_dir {
            writeln!(f, "the cluster's files are kept in {}", dir.display())?;
        }
        write!(f, "{}", self.node_logs)
    }
}

/// Runs `scenario` and returns what it saw; the caller judges the verdict.
pub fn run(scenario: &Scenario) -> Result<Report, Box<Aborted>> {
    let started = Instant::now();
    let mut log = Vec::new();
    let mut cluster = Cluster::start(scenario.cluster.clone(), scenario.seed).map_err(|error| {
        Box::new(Aborted {
            error,
            log: Vec::new(),
            node_logs: String::new(),
            kept_dir: None,
        })
    })?;
    match drive(scenario, &mut cluster, &mut log) {
        Ok(Driven {
            history,
            agreement,
            problems,
            skipped,
            faults_over_ns,
        }) => {
            let verdict = check(&history).expect("recorded times never run backwards");
            let writes_after_faults = history
                .iter()
                .filter(|o| o.invoked_ns >= faults_over_ns && o.client != READ_BACK_CLIENT)
                .filter(|o| !matches!(o.op, Op::Get { .. }) && o.op.status() == Status::Ok)
                .count();
            Ok(Report {
                verdict,
                history,
                agreement,
                log,
                problems,
                skipped,
                writes_after_faults,
                network: cluster.net().stats(),
                elapsed: started.elapsed(),
                node_logs: cluster.log_tails(20),
            })
        }
        Err(error) => {
            let node_logs = cluster.log_tails(30);
            Err(Box::new(Aborted {
                error,
                log,
                node_logs,
                kept_dir: Some(cluster.keep_dir()),
            }))
        }
    }
}

struct Driven {
    history: Vec<Operation>,
    agreement: Agreement,
    problems: Vec<String>,
    skipped: Vec<String>,
    /// When the last fault was undone, on the history's clock.
    faults_over_ns: u64,
}

fn drive(
    scenario: &Scenario,
    cluster: &mut Cluster,
    log: &mut Vec<String>,
) -> Result<Driven, HarnessError> {
    cluster.wait_for_leader(Duration::from_secs(15))?;
    let clock = Clock::start();
    let w = &scenario.workload;
    let clients = (0..w.clients)
        .map(|_| cluster.client(w.request_timeout, w.attempt_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    // One client pinned to each member, if `wanted`.
    let pinned = |wanted: bool, timeout: Duration| -> Result<Vec<_>, HarnessError> {
        let members = if wanted {
            cluster.members()
        } else {
            Vec::new()
        };
        (members.into_iter())
            .map(|id| cluster.pinned_client(id, timeout))
            .collect()
    };
    let readers = pinned(w.pinned_readers, w.reader_timeout)?;
    let writers = pinned(w.pinned_writers, w.request_timeout)?;
    let workload = Workload::start(clients, readers, writers, w, clock, scenario.seed)
        .map_err(|e| HarnessError::Setup(format!("client threads: {e}")))?;
    std::thread::sleep(scenario.warmup);
    let mut injector = Injector {
        rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5eed),
        targets: vec![Vec::new(); scenario.schedule.faults.len()],
        log,
        problems: Vec::new(),
        skipped: Vec::new(),
        faults_began: Instant::now(),
    };
    injector.run(cluster, &scenario.schedule)?;
    let faults_over_ns = clock.now_ns();
    std::thread::sleep(scenario.cooldown);
    let mut history = workload.stop();
    injector.note(format!("healing ({} operations recorded)", history.len()));
    cluster.heal(SETTLE_TIMEOUT)?;
    let agreement = cluster.check_agreement(SETTLE_TIMEOUT)?;
    history.extend(read_back(cluster, scenario, clock)?);
    Ok(Driven {
        history,
        agreement,
        problems: injector.problems,
        skipped: injector.skipped,
        faults_over_ns,
    })
}

/// Every key read once more, linearizably, through a fresh client.
fn read_back(
    cluster: &Cluster,
    scenario: &Scenario,
    clock: Clock,
) -> Result<Vec<Operation>, HarnessError> {
    let client = cluster.client(Duration::from_secs(10), Duration::from_secs(3))?;
    let mut ops = Vec::new();
    for k in 0..scenario.workload.keys {
        let key = key(k);
        let invoked_ns = clock.now_ns();
        let outcome = read(&client, &key, Consistency::Linearizable);
        if outcome == Outcome::Failed {
            return Err(HarnessError::Timeout {
                what: format!("the read-back of {key:?} on the healed cluster"),
            });
        }
        ops.push(Operation {
            client: READ_BACK_CLIENT,
            invoked_ns,
            completed_ns: clock.now_ns(),
            op: Op::Get { key, outcome },
        });
    }
    Ok(ops)
}

/// How long a membership step the schedule undoes is retried while refused.
const MEMBERSHIP_RETRY: Duration = Duration::from_secs(5);

/// How long a transfer's target has to become leader.
const TRANSFER_TAKES: Duration = Duration::from_secs(5);

/// Applies and undoes a schedule's faults at their times.
struct Injector<'a> {
    rng: ChaCha8Rng,
    /// The nodes each fault acted on, for its undoing.
    targets: Vec<Vec<NodeId>>,
    log: &'a mut Vec<String>,
    problems: Vec<String>,
    skipped: Vec<String>,
    faults_began: Instant,
}

impl Injector<'_> {
    fn note(&mut self, line: String) {
        let at = self.faults_began.elapsed().as_millis();
        let line = format!("{at:>6} ms: {line}");
        println!("  {line}");
        self.log.push(line);
    }

    /// Notes a fault that found nothing to act on, or did not take.
    fn skip(&mut self, line: String) {
        self.skipped.push(line.clone());
        self.note(line);
    }

    fn run(&mut self, cluster: &mut Cluster, schedule: &Schedule) -> Result<(), HarnessError> {
        // (time, undo?, fault index): at equal times an undo goes first.
        let mut events: Vec<(Duration, bool, usize)> = Vec::new();
        for (i, t) in schedule.faults.iter().enumerate() {
            events.push((t.at, false, i));
            events.push((t.at + t.hold, true, i));
        }
        events.sort_by_key(|&(at, undo, i)| (at, !undo, i));
        // When each fault took effect: one applied late (waiting for a leader, or for a slow
        // admin command) still holds its whole hold, or a pause meant to outlast the lease
        // might not.
        let mut took_effect = vec![None; schedule.faults.len()];
        for (at, undo, i) in events {
            let timed = &schedule.faults[i];
            let mut due = self.faults_began + at;
            if undo {
                due = due.max(took_effect[i].map_or(due, |t: Instant| t + timed.hold));
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if undo {
                self.undo(cluster, i, &timed.fault)?;
            } else {
                self.apply(cluster, i, &timed.fault)?;
                took_effect[i] = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Runs a membership command on the leader, retrying for [`MEMBERSHIP_RETRY`] while it is
    /// refused (a learner still catching up is refused promotion); whether it took.
    fn membership(&mut self, cluster: &mut Cluster, command: &str) -> bool {
        let deadline = Instant::now() + MEMBERSHIP_RETRY;
        loop {
            match cluster.membership_command(command) {
                Ok(()) => return true,
                Err(e) if Instant::now() >= deadline => {
                    self.skip(format!("{command}: {e}"));
                    return false;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A running, unpaused member other than `not`.
    fn other(&mut self, cluster: &mut Cluster, not: &[NodeId]) -> Option<NodeId> {
        let candidates: Vec<NodeId> = cluster
            .members()
            .into_iter()
            .filter(|id| !not.contains(id))
            .filter(|&id| {
                let node = cluster.node(id);
                node.is_running() && !node.is_paused()
            })
            .collect();
        candidates.choose(&mut self.rng).copied()
    }

    fn apply(
        &mut self,
        cluster: &mut Cluster,
        i: usize,
        fault: &Fault,
    ) -> Result<(), HarnessError> {
        let members = cluster.members();
        // Right after a fault there may be no leader yet: give an election a moment.
        let leader = cluster.wait_for_leader(Duration::from_secs(1)).ok();
        // A follower is a voter: a member removed and not yet added back (a learner, or not
        // in the cluster at all) is no follower to break or to hand leadership to.
        let voters = leader
            .and_then(|l| cluster.status(l).ok())
            .map(|s| s.voters);
        let not_followers: Vec<NodeId> = (members.iter().copied())
            .filter(|&id| Some(id) == leader || voters.as_ref().is_some_and(|v| !v.contains(&id)))
            .collect();
        let follower = self.other(cluster, &not_followers);
        let needs_leader = matches!(
            fault,
            Fault::KillLeader
                | Fault::PauseLeader
                | Fault::PowerLossLeader
                | Fault::TransferLeadership
                | Fault::IsolateLeader
                | Fault::LeaderCannotSend
                | Fault::LeaderCannotHear
                | Fault::Bridge
                | Fault::RemoveFollower
        );
        if needs_leader && leader.is_none() {
            let seen: Vec<String> = cluster
                .statuses()
                .iter()
                .map(|s| format!("{}:{}@{}->{:?}", s.id, s.role, s.term, s.leader))
                .collect();
            self.skip(format!(
                "{fault:?}: skipped, no leader ({})",
                seen.join(" ")
            ));
            return Ok(());
        }
        let l = leader.unwrap_or(0);
        let needs_follower = matches!(
            fault,
            Fault::KillFollower
                | Fault::PauseFollower
                | Fault::PowerLossFollower
                | Fault::FsyncFailure { .. }
                | Fault::RemoveFollower
                | Fault::TransferLeadership
                | Fault::IsolateFollower
                | Fault::Bridge
        );
        // 0 (no node) where the fault does not use one.
        let f = match follower {
            Some(f) => f,
            None if needs_follower => {
                self.skip(format!("{fault:?}: skipped, no follower up"));
                return Ok(());
            }
            None => 0,
        };
        let targets = match fault {
            Fault::KillLeader => {
                cluster.kill(l);
                vec![l]
            }
            Fault::KillFollower => {
                cluster.kill(f);
                vec![f]
            }
            Fault::PauseLeader => {
                cluster.node(l).pause()?;
                vec![l]
            }
            Fault::PauseFollower => {
                cluster.node(f).pause()?;
                vec![f]
            }
            Fault::PowerLossLeader | Fault::PowerLossFollower => {
                let n = if *fault == Fault::PowerLossLeader {
                    l
                } else {
                    f
                };
                let loss = cluster.power_loss(n, self.rng.random())?;
                self.note(format!(
                    "node {n}: power loss dropped {} bytes",
                    loss.bytes_dropped
                ));
                vec![n]
            }
            Fault::PowerLossAll => {
                for &n in &members {
                    let loss = cluster.power_loss(n, self.rng.random())?;
                    self.note(format!(
                        "node {n}: power loss dropped {} bytes",
                        loss.bytes_dropped
                    ));
                }
                members.clone()
            }
            Fault::FsyncFailure { syncs } => {
                cluster.set_fail_sync_after(f, Some(*syncs))?;
                cluster.restart(f)?;
                vec![f]
            }
            Fault::RemoveFollower => {
                let command = format!("remove {f}");
                match cluster.admin(l, &command) {
                    Ok(_) => vec![f],
                    Err(e) => {
                        self.skip(format!("{command}: {e}"));
                        Vec::new()
                    }
                }
            }
            Fault::AddSpare => match cluster.idle_spare() {
                Some(n) => {
                    if let Err(e) = cluster.add_spare(n) {
                        self.skip(format!("add-learner {n}: {e} (healing retries)"));
                    }
                    vec![n]
                }
                None => {
                    self.skip(format!("{fault:?}: skipped, no idle spare"));
                    Vec::new()
                }
            },
            Fault::TransferLeadership => {
                // To the follower: a voter other than the leader.
                let to = f;
                match cluster.admin(l, &format!("transfer {to}")) {
                    Err(e) => self.skip(format!("transfer {to}: {e}")),
                    // The command only starts it: see that it took.
                    Ok(_) => {
                        let deadline = Instant::now() + TRANSFER_TAKES;
                        let mut now = cluster.leader();
                        while now != Some(to) && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(50));
                            now = cluster.leader();
                        }
                        if now != Some(to) {
                            self.skip(format!("transfer {to}: did not take (leader {now:?})"));
                        }
                    }
                }
                vec![to]
            }
            Fault::Lossy {
                drop,
                duplicate,
                delay,
                jitter,
            } => {
                cluster.net().set_all(LinkFaults {
                    blocked: false,
                    drop: *drop,
                    duplicate: *duplicate,
                    delay: *delay,
                    jitter: *jitter,
                });
                members.clone()
            }
            Fault::IsolateLeader => {
                cluster.net().isolate(l, &members);
                vec![l]
            }
            Fault::IsolateFollower => {
                cluster.net().isolate(f, &members);
                vec![f]
            }
            Fault::LeaderCannotSend => {
                let others: Vec<NodeId> = members.iter().copied().filter(|&n| n != l).collect();
                cluster.net().cut_one_way(l, &others);
                vec![l]
            }
            Fault::LeaderCannotHear => {
                for &n in members.iter().filter(|&&n| n != l) {
                    cluster.net().set_link(n, l, LinkFaults::BLOCKED);
                }
                vec![l]
            }
            Fault::Bridge => {
                // The leader and `f` cannot talk; the third node (the bridge) talks to both.
                match self.other(cluster, &[l, f]) {
                    Some(bridge) => {
                        cluster.net().bridge(&[l], bridge, &[f]);
                        vec![l, bridge, f]
                    }
                    None => {
                        self.skip(format!("{fault:?}: skipped, no third node up"));
                        Vec::new()
                    }
                }
            }
        };
        self.note(format!("{fault:?} on {targets:?}"));
        self.targets[i] = targets;
        Ok(())
    }

    fn undo(&mut self, cluster: &mut Cluster, i: usize, fault: &Fault) -> Result<(), HarnessError> {
        let targets = std::mem::take(&mut self.targets[i]);
        if targets.is_empty() {
            return Ok(());
        }
        match fault {
            Fault::KillLeader
            | Fault::KillFollower
            | Fault::PowerLossLeader
            | Fault::PowerLossFollower
            | Fault::PowerLossAll => {
                for n in targets {
                    if !cluster.node(n).is_running() {
                        cluster.node(n).start()?;
                    }
                }
            }
            Fault::PauseLeader | Fault::PauseFollower => {
                for n in targets {
                    if cluster.node(n).is_paused() {
                        cluster.node(n).resume()?;
                    }
                }
            }
            Fault::FsyncFailure { syncs } => {
                let n = targets[0];
                match cluster.node(n).wait_exit(Duration::from_millis(500)) {
                    Some(status) if status.code() == Some(3) => {
                        self.note(format!("node {n} stopped on its failed fsync, as it must"));
                    }
                    Some(status) => self.problems.push(format!(
                        "node {n} with a failing fsync (after {syncs} syncs) exited with \
                         {status}, not code 3"
                    )),
                    None => self.skip(format!(
                        "node {n}: the fsync failpoint (after {syncs} syncs) did not fire"
                    )),
                }
                cluster.set_fail_sync_after(n, None)?;
                cluster.restart(n)?;
            }
            Fault::AddSpare => {
                // Healing finishes what does not happen now, but without load: a skip.
                let command = format!("promote {}", targets[0]);
                self.membership(cluster, &command);
            }
            Fault::RemoveFollower => {
                // Put it back; whatever does not happen now, healing finishes.
                let n = targets[0];
                for command in [format!("add-learner {n}"), format!("promote {n}")] {
                    if !self.membership(cluster, &command) {
                        break;
                    }
                }
            }
            Fault::TransferLeadership => {}
            Fault::Lossy { .. }
            | Fault::IsolateLeader
            | Fault::IsolateFollower
            | Fault::LeaderCannotSend
            | Fault::LeaderCannotHear
            | Fault::Bridge => cluster.net().heal(),
        }
        self.note(format!("undone: {fault:?}"));
        Ok(())
    }
}

/// Runs `scenario` and panics, with everything needed to understand and replay it, unless the
/// history is linearizable, the nodes agree and nothing else went wrong.
pub fn assert_passes(scenario: &Scenario) -> Report {
    let report = match run(scenario) {
        Ok(report) => report,
        Err(aborted) => panic!(
            "fault scenario {} (seed {}) failed:\n{aborted}\nschedule:\n{}replay: {}",
            scenario.name, scenario.seed, scenario.schedule, scenario.replay
        ),
    };
    println!("{}", report.summary(scenario));
    let problems = report.failures(scenario);
    if !report.verdict.is_linearizable() || !problems.is_empty() {
        panic!(
            "fault scenario {} (seed {}) failed: {}\nproblems: {:?}\nschedule:\n{}faults \
             applied:\n  {}\n{}replay: {}",
            scenario.name,
            scenario.seed,
            report.verdict,
            problems,
            scenario.schedule,
            report.log.join("\n  "),
            report.node_logs,
            scenario.replay
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::super::schedule::Timed;
    use super::*;

    fn report(skipped: &[&str], writes_after_faults: usize) -> Report {
        Report {
            verdict: Verdict::Linearizable,
            history: Vec::new(),
            agreement: Agreement {
                applied: 0,
                digest: String::new(),
                nodes: Vec::new(),
                snapshots: std::collections::BTreeMap::new(),
                forwards_served: std::collections::BTreeMap::new(),
            },
            log: Vec::new(),
            problems: Vec::new(),
            skipped: skipped.iter().map(|s| s.to_string()).collect(),
            writes_after_faults,
            network: ProxyStats::default(),
            elapsed: Duration::ZERO,
            node_logs: String::new(),
        }
    }

    #[test]
    fn a_run_fails_when_a_fault_did_not_take_or_the_healed_cluster_served_no_write() {
        let scenario = Scenario::new("test", 1, Schedule::default());
        assert!(report(&[], 10).failures(&scenario).is_empty());
        assert_eq!(
            report(&["KillLeader: skipped, no leader"], 10)
                .failures(&scenario)
                .len(),
            1
        );
        assert_eq!(report(&[], 0).failures(&scenario).len(), 1);
        // A run that may skip faults: one of three is fine, all three are not.
        let mut random = scenario.clone();
        random.faults_may_skip = true;
        let kill = |at| Timed {
            at: Duration::from_millis(at),
            hold: Duration::from_millis(100),
            fault: Fault::KillLeader,
        };
        random.schedule.faults = vec![kill(0), kill(200), kill(400)];
        let skipped = "KillLeader: skipped, no leader";
        assert!(report(&[skipped], 10).failures(&random).is_empty());
        assert_eq!(report(&[skipped; 3], 10).failures(&random).len(), 1);
    }
}
