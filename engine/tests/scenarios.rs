//! Protocol scenarios of the Raft core, one rule per file, in the spirit of etcd-raft's
//! datadriven tests.
//!
//! Each `scenarios/<rule>.txt` is a list of blocks:
//!
//! ```text
//! # comments explain why the output is right
//! command args...
//! ----
//! expected output, one event per line
//! (a blank line ends the block)
//! ```
//!
//! The runner executes the commands on a [`common::Cluster`] and compares the trace exactly.
//! `KEEL_REWRITE=1 cargo test -p keel-engine --test scenarios` rewrites the expected output from
//! what the core does now; every rewritten expectation must then be read and checked against
//! what Raft requires, because the expectations are the test.
//!
//! Trace lines:
//! - `1->2 App t2 prev=3@1 commit=3 [4@2:x]`: a message leaves node 1 (for the network);
//! - `2 write hs(term=2 vote=1 commit=0) entries=[..]`: a write taken from node 2's core, followed
//!   by `  then <message>` for each message that goes out only once the write is durable;
//! - `2 write durable, reports 4@2`: a held write made durable (`persist`);
//! - `2 becomes Follower t2 leader=1`: role, term or leader changed;
//! - `2 applies [..]`: committed entries handed to the state machine;
//! - `2 read 7 ready at index 5`: a read may be served once applied reaches the index;
//! - `<message> dropped (partition|down)`: a message lost on the way;
//! - `VIOLATION: ...`: a safety check of the driver failed (never expected in a passing file).
//!
//! Commands:
//! - `cluster voters=1,2,3 [learners=4] [prevote=false] [checkquorum=false] [lease=false]
//!   [heartbeat=N] [election=N] [drift=N] [inflight=N] [maxbytes=N] [seed=N]`
//! - `restore <id> term=T [vote=V] [commit=C] log=<terms,...>`: restart a node with this disk
//! - `join <id>`: start a standby node that knows no membership yet
//! - `tick [<id>,...] [xN]`: tick the nodes (default: every live node), N times, in id order
//! - `run [xN]`: N rounds of: tick every live node, then deliver until nothing is in flight
//!   (each round that did something is headed `-- tick k`)
//! - `campaign <id>`, `transfer <id> <to>`, `step-down <id>`
//! - `propose <id> <cmd>...`, `barrier <id>`, `conf <id> voters=.. [learners=..]`
//! - `read <id> <read-id>[,<read-id>...] [lease|quorum]`: several ids are issued together
//! - `deliver [a->b | a->* | *->b]`: without a link, deliver until nothing is in flight; with
//!   one, deliver once the messages now in flight on it
//! - `drop [a->b | a->* | *->b]`, `net`: drop / list messages in flight
//! - `partition 1 | 2 3`, `heal`
//! - `crash <id>`, `restart <id>`: a crash loses the node's unpersisted writes
//! - `hold <id>`, `persist <id> [N]`, `release <id>`: stop / resume persisting writes at once
//! - `compact <id> <index>`
//! - `status [<id>...]`, `progress <id>`, `log [<id>...]`, `sm [<id>...]` (the state machine:
//!   applied entries), `stats <id>`

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{fmt_entries, log_entries, progress_lines, status_line, Cluster, Link, Options};
use keel_engine::core::{Membership, NodeId, ReadMode};

// ---------------------------------------------------------------- the file format

#[derive(Debug)]
struct Block {
    /// Comment and blank lines before the command, kept verbatim for rewriting.
    prefix: Vec<String>,
    cmd: String,
    expected: Vec<String>,
    line: usize,
}

fn parse(text: &str, path: &Path) -> (Vec<Block>, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut prefix = Vec::new();
    let mut k = 0;
    while k < lines.len() {
        let line = lines[k];
        if line.trim().is_empty() || line.starts_with('#') {
            prefix.push(line.to_string());
            k += 1;
            continue;
        }
        let start = k + 1;
        assert!(
            lines.get(k + 1).is_some_and(|l| *l == "----"),
            "{}:{start}: expected `----` after the command",
            path.display()
        );
        k += 2;
        let mut expected = Vec::new();
        while k < lines.len() && !lines[k].is_empty() {
            expected.push(lines[k].to_string());
            k += 1;
        }
        while prefix.first().is_some_and(|l: &String| l.trim().is_empty()) {
            prefix.remove(0);
        }
        while prefix.last().is_some_and(|l: &String| l.trim().is_empty()) {
            prefix.pop();
        }
        blocks.push(Block {
            prefix: std::mem::take(&mut prefix),
            cmd: line.to_string(),
            expected,
            line: start,
        });
    }
    (blocks, prefix)
}

fn render(blocks: &[Block], actual: &[Vec<String>], trailer: &[String]) -> String {
    let mut out = String::new();
    for (k, (b, a)) in blocks.iter().zip(actual).enumerate() {
        if k > 0 {
            out.push('\n');
        }
        for p in &b.prefix {
            out.push_str(p);
            out.push('\n');
        }
        out.push_str(&b.cmd);
        out.push_str("\n----\n");
        for l in a {
            out.push_str(l);
            out.push('\n');
        }
    }
    let trailer: Vec<&String> = trailer.iter().filter(|l| !l.trim().is_empty()).collect();
    if !trailer.is_empty() {
        out.push('\n');
    }
    for l in trailer {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn run(name: &str) {
    let path = scenario_dir().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (blocks, trailer) = parse(&text, &path);
    let mut sc = Scenario::default();
    let mut actual = Vec::new();
    let mut failures = Vec::new();
    for b in &blocks {
        let out = sc.run(&b.cmd).unwrap_or_else(|e| {
            panic!(
                "{}:{}: bad command `{}`: {e}",
                path.display(),
                b.line,
                b.cmd
            )
        });
        if out != b.expected {
            failures.push(format!(
                "{}:{}: `{}`\n--- expected\n{}\n--- actual\n{}\n",
                path.display(),
                b.line - 1,
                b.cmd,
                b.expected.join("\n"),
                out.join("\n")
            ));
        }
        actual.push(out);
    }
    if std::env::var_os("KEEL_REWRITE").is_some() {
        std::fs::write(&path, render(&blocks, &actual, &trailer)).expect("rewrite the scenario");
        return;
    }
    if !failures.is_empty() {
        panic!(
            "{} block(s) differ (the first one is the cause; rerun with KEEL_REWRITE=1 to \
             see the whole new output):\n\n{}",
            failures.len(),
            failures[0]
        );
    }
}

// ---------------------------------------------------------------- the commands

#[derive(Default)]
struct Scenario {
    cluster: Option<Cluster>,
}

fn id(s: &str) -> Result<NodeId, String> {
    s.parse().map_err(|_| format!("not a node id: {s}"))
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn ids(s: &str) -> Result<Vec<NodeId>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',').map(id).collect()
}

fn flag(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("not a bool: {s}")),
    }
}

/// `key=value` arguments.
fn kv(args: &[&str]) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("expected key=value, got {a}"))
        })
        .collect()
}

/// `a->b`, `a->*`, `*->b`.
fn link(s: &str) -> Result<Link, String> {
    let (a, b) = s
        .split_once("->")
        .ok_or_else(|| format!("not a link: {s}"))?;
    let end = |x: &str| -> Result<Option<NodeId>, String> {
        if x == "*" {
            Ok(None)
        } else {
            id(x).map(Some)
        }
    };
    Ok(Link {
        from: end(a)?,
        to: end(b)?,
    })
}

impl Scenario {
    fn c(&mut self) -> Result<&mut Cluster, String> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster yet".to_string())
    }

    fn run(&mut self, line: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (cmd, args) = words.split_first().ok_or("empty command")?;
        let mut out = Vec::new();
        match *cmd {
            "cluster" => self.cluster = Some(Cluster::new(options(args)?)),
            "restore" => {
                let node = id(args.first().ok_or("restore <id> ...")?)?;
                let (mut term, mut vote, mut commit, mut terms) = (0, None, 0, Vec::new());
                for (k, v) in kv(&args[1..])? {
                    match k.as_str() {
                        "term" => term = num(&v)?,
                        "vote" => vote = Some(id(&v)?),
                        "commit" => commit = num(&v)?,
                        "log" => terms = ids(&v)?,
                        _ => return Err(format!("unknown restore key {k}")),
                    }
                }
                let c = self.c()?;
                c.restore_log(node, term, vote, commit, &terms);
                out.push(format!("{node}: {}", status_line(c.core(node))));
            }
            "join" => {
                let node = id(args.first().ok_or("join <id>")?)?;
                self.c()?
                    .add_node(node, keel_engine::core::Restore::joining());
            }
            "tick" => {
                let mut targets = None;
                let mut times = 1;
                for a in args {
                    if let Some(n) = a.strip_prefix('x') {
                        times = num(n)?;
                    } else if *a != "all" {
                        targets = Some(ids(a)?);
                    }
                }
                let c = self.c()?;
                for _ in 0..times {
                    let targets = targets.clone().unwrap_or_else(|| c.live_ids());
                    for t in targets {
                        c.tick(t);
                    }
                }
            }
            "run" => {
                let mut times = 1;
                for a in args {
                    times = num(a.strip_prefix('x').ok_or("run [xN]")?)?;
                }
                let c = self.c()?;
                let mut rounds = Vec::new();
                for k in 1..=times {
                    for t in c.live_ids() {
                        c.tick(t);
                    }
                    c.deliver_all();
                    let lines = c.take_trace();
                    if !lines.is_empty() {
                        rounds.push(format!("-- tick {k}"));
                        rounds.extend(lines);
                    }
                }
                out.extend(rounds);
            }
            "campaign" => {
                let node = id(args.first().ok_or("campaign <id>")?)?;
                let c = self.c()?;
                if let Err(e) = c.campaign(node) {
                    out.push(format!("{node} campaign refused: {e}"));
                }
            }
            "propose" => {
                let node = id(args.first().ok_or("propose <id> <cmd>...")?)?;
                let cmds: Vec<Bytes> = args[1..]
                    .iter()
                    .map(|s| Bytes::copy_from_slice(s.trim_matches('"').as_bytes()))
                    .collect();
                let c = self.c()?;
                let n = cmds.len() as u64;
                let r = c.with_core_quiet(node, |core| core.propose(cmds));
                out.push(match r {
                    Ok((i, t)) if n == 1 => format!("{node} proposed {i}@{t}"),
                    Ok((i, t)) => format!("{node} proposed {i}..{}@{t}", i + n - 1),
                    Err(e) => format!("{node} propose refused: {e}"),
                });
                c.process(node);
            }
            "barrier" => {
                let node = id(args.first().ok_or("barrier <id>")?)?;
                let c = self.c()?;
                let r = c.with_core_quiet(node, |core| core.propose_barrier());
                out.push(match r {
                    Ok((i, t)) => format!("{node} barrier at {i}@{t}"),
                    Err(e) => format!("{node} barrier refused: {e}"),
                });
                c.process(node);
            }
            "conf" => {
                let node = id(args.first().ok_or("conf <id> voters=.. learners=..")?)?;
                let (mut voters, mut learners) = (Vec::new(), Vec::new());
                for (k, v) in kv(&args[1..])? {
                    match k.as_str() {
                        "voters" => voters = ids(&v)?,
                        "learners" => learners = ids(&v)?,
                        _ => return Err(format!("unknown conf key {k}")),
                    }
                }
                let target = Membership::new(voters, learners);
                let c = self.c()?;
                let r = c.with_core_quiet(node, |core| core.propose_membership(&target));
                out.push(match r {
                    Ok(i) => format!("{node} proposed the membership change at {i}"),
                    Err(e) => format!("{node} membership change refused: {e}"),
                });
                c.process(node);
            }
            "read" => {
                let node = id(args.first().ok_or("read <id> <read-id> [mode]")?)?;
                let rids: Vec<u64> = ids(args.get(1).ok_or("read <id> <read-id>,... [mode]")?)?;
                let mode = match args.get(2) {
                    Some(m) => common::read_mode(m).ok_or("mode is lease or quorum")?,
                    None => ReadMode::Quorum,
                };
                // Several ids are issued before the output is taken, as a runtime batches them.
                let c = self.c()?;
                c.with_core_quiet(node, |core| {
                    for rid in rids {
                        core.read_index(rid, mode);
                    }
                });
                c.process(node);
            }
            "transfer" => {
                let node = id(args.first().ok_or("transfer <id> <to>")?)?;
                let to = id(args.get(1).ok_or("transfer <id> <to>")?)?;
                let c = self.c()?;
                let r = c.with_core_quiet(node, |core| core.transfer_leadership(to));
                if let Err(e) = r {
                    out.push(format!("{node} transfer refused: {e}"));
                }
                c.process(node);
            }
            "step-down" => {
                let node = id(args.first().ok_or("step-down <id>")?)?;
                let c = self.c()?;
                let r = c.with_core_quiet(node, |core| core.step_down());
                out.push(match r {
                    Ok(to) => format!("{node} steps down in favour of {to}"),
                    Err(e) => format!("{node} step-down refused: {e}"),
                });
                c.process(node);
            }
            "deliver" => {
                let c = self.c()?;
                match args.first() {
                    None => c.deliver_all(),
                    Some(l) => {
                        c.deliver(link(l)?);
                    }
                }
            }
            "drop" => {
                let l = match args.first() {
                    None => Link::ANY,
                    Some(l) => link(l)?,
                };
                self.c()?.drop_messages(l);
            }
            "net" => {
                for m in self.c()?.in_flight() {
                    out.push(common::fmt_msg(&m));
                }
            }
            "partition" => {
                let mut groups = vec![BTreeSet::new()];
                for a in args {
                    if *a == "|" {
                        groups.push(BTreeSet::new());
                    } else {
                        groups.last_mut().expect("one group").insert(id(a)?);
                    }
                }
                self.c()?.partition(groups);
            }
            "heal" => self.c()?.heal(),
            "crash" => {
                let node = id(args.first().ok_or("crash <id>")?)?;
                self.c()?.crash(node);
            }
            "restart" => {
                let node = id(args.first().ok_or("restart <id>")?)?;
                self.c()?.restart(node);
            }
            "hold" => {
                let node = id(args.first().ok_or("hold <id>")?)?;
                self.c()?.hold(node);
            }
            "persist" => {
                let node = id(args.first().ok_or("persist <id> [n]")?)?;
                let n = args.get(1).map(|s| num(s)).transpose()?;
                self.c()?.persist(node, n);
            }
            "release" => {
                let node = id(args.first().ok_or("release <id>")?)?;
                self.c()?.release(node);
            }
            "compact" => {
                let node = id(args.first().ok_or("compact <id> <index>")?)?;
                let index = num(args.get(1).ok_or("compact <id> <index>")?)?;
                let c = self.c()?;
                match c.compact(node, index) {
                    Ok(m) => out.push(format!(
                        "{node} compacted to snapshot {}@{}",
                        m.index, m.term
                    )),
                    Err(e) => out.push(format!("{node} compact refused: {e}")),
                }
            }
            "status" | "log" => {
                let c = self.c()?;
                let targets = if args.is_empty() {
                    c.live_ids()
                } else {
                    args.iter().map(|a| id(a)).collect::<Result<_, _>>()?
                };
                for t in targets {
                    if !c.is_up(t) {
                        out.push(format!("{t}: down"));
                        continue;
                    }
                    let core = c.core(t);
                    if *cmd == "status" {
                        out.push(format!("{t}: {}", status_line(core)));
                    } else {
                        let snap = core.snapshot();
                        let base = if snap.index > 0 {
                            format!("snap={}@{} ", snap.index, snap.term)
                        } else {
                            String::new()
                        };
                        out.push(format!("{t}: {base}{}", fmt_entries(&log_entries(core))));
                    }
                }
            }
            "sm" => {
                let c = self.c()?;
                let targets = if args.is_empty() {
                    c.live_ids()
                } else {
                    args.iter().map(|a| id(a)).collect::<Result<_, _>>()?
                };
                for t in targets {
                    out.push(format!("{t}: applied {}", fmt_entries(&c.node(t).sm)));
                }
            }
            "progress" => {
                let node = id(args.first().ok_or("progress <id>")?)?;
                let c = self.c()?;
                out.extend(progress_lines(c.core(node)));
            }
            "stats" => {
                let node = id(args.first().ok_or("stats <id>")?)?;
                let c = self.c()?;
                out.push(format!("{node}: {}", fmt_stats(c.core(node).stats())));
            }
            _ => return Err(format!("unknown command {cmd}")),
        }
        let c = self.c()?;
        let mut trace = c.take_trace();
        // Results of the call come first, then what the cluster did because of it.
        let results = std::mem::take(&mut out);
        let (before, after): (Vec<String>, Vec<String>) = match *cmd {
            "status" | "log" | "progress" | "stats" | "net" | "restore" | "sm" => {
                (Vec::new(), results)
            }
            _ => (results, Vec::new()),
        };
        out.extend(before);
        out.append(&mut trace);
        out.extend(after);
        c.check_invariants();
        out.extend(c.violations.drain(..).map(|v| format!("VIOLATION: {v}")));
        Ok(out)
    }
}

fn options(args: &[&str]) -> Result<Options, String> {
    let mut o = Options::default();
    for (k, v) in kv(args)? {
        match k.as_str() {
            "voters" => o.voters = ids(&v)?,
            "learners" => o.learners = ids(&v)?,
            "prevote" => o.pre_vote = flag(&v)?,
            "checkquorum" => o.check_quorum = flag(&v)?,
            "lease" => o.lease_reads = flag(&v)?,
            "heartbeat" => o.heartbeat_ticks = num(&v)?,
            "election" => o.election_ticks = num(&v)?,
            "drift" => o.lease_drift_ticks = num(&v)?,
            "inflight" => o.max_inflight_appends = num(&v)?,
            "maxbytes" => o.max_append_bytes = num(&v)?,
            "seed" => o.seed = num(&v)?,
            _ => return Err(format!("unknown cluster option {k}")),
        }
    }
    Ok(o)
}

fn fmt_stats(s: &keel_engine::core::Stats) -> String {
    let all = [
        ("misaddressed", s.misaddressed),
        ("from_unknown_node", s.from_unknown_node),
        ("stale_term", s.stale_term),
        ("invalid", s.invalid),
        ("votes_ignored_in_lease", s.votes_ignored_in_lease),
        ("appends_rejected", s.appends_rejected),
        ("elections_started", s.elections_started),
        ("pre_elections_started", s.pre_elections_started),
        ("check_quorum_step_downs", s.check_quorum_step_downs),
        ("lease_reads", s.lease_reads),
        ("snapshots_sent", s.snapshots_sent),
        ("snapshots_installed", s.snapshots_installed),
    ];
    let nonzero: Vec<String> = all
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if nonzero.is_empty() {
        "all zero".to_string()
    } else {
        nonzero.join(" ")
    }
}

// ---------------------------------------------------------------- the scenarios

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
        const REGISTERED: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios! {
    election_with_prevote_elects_one_leader,
    election_split_vote_resolved_by_randomized_timeouts,
    vote_candidate_with_stale_log_loses,
    vote_granted_only_after_it_is_durable,
    vote_at_most_once_per_term,
    prevote_partitioned_node_does_not_raise_terms_or_disrupt,
    check_quorum_isolated_leader_steps_down,
    votes_ignored_while_in_lease,
    replication_commits_and_applies_in_order,
    replication_fast_backtracking_repairs_a_long_divergent_tail,
    replication_pipelining_window_pauses_when_full,
    commit_only_from_durable_acks,
    figure7_new_leader_brings_every_follower_log_to_its_own,
    figure8_previous_term_entry_commits_only_with_an_entry_of_the_current_term,
    learners_receive_entries_but_never_vote_or_count,
    membership_joint_consensus_replaces_two_voters,
    membership_single_step_adds_a_voter,
    membership_removed_leader_steps_down,
    membership_waits_for_the_new_leaders_first_commit,
    transfer_leadership_catches_up_target_then_timeout_now,
    transfer_aborts_after_an_election_timeout,
    transfer_timeout_now_is_sent_again_when_lost,
    read_index_needs_a_quorum_heartbeat_round,
    read_index_new_leader_waits_for_its_noop,
    read_index_follower_forwards_to_leader,
    read_index_across_a_term_change,
    lease_reads_served_only_while_the_lease_holds,
    snapshot_catches_up_a_follower_behind_the_compacted_log,
}

#[test]
fn every_scenario_file_is_registered() {
    let mut files: Vec<String> = std::fs::read_dir(scenario_dir())
        .expect("the scenario directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".txt").map(str::to_string)
        })
        .collect();
    files.sort();
    let mut registered: Vec<String> = REGISTERED.iter().map(|s| s.to_string()).collect();
    registered.sort();
    assert_eq!(
        files, registered,
        "every scenario file runs as its own test"
    );
}
