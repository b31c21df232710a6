//! Fault schedules: what to break, when, and for how long.
//!
//! A schedule is a list of faults, each applied at a time (from the end of the warm-up) and
//! undone after its hold. Faults on the nodes (kills, pauses, power loss, fsync failure,
//! membership changes, transfers) and on the network (loss, delay, partitions) live in two
//! lanes: within a lane one fault at a time, across lanes they overlap, so membership changes
//! and transfers run while the network misbehaves. [`Schedule::random`] draws one from a seed.

use std::fmt;
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Something the harness does to the cluster, undone when its hold ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// kill -9 of the leader; restarted from its data directory when the hold ends.
    KillLeader,
    KillFollower,
    /// SIGSTOP of the leader; SIGCONT when the hold ends (make it longer than the election
    /// timeout: the old leader must not serve stale lease reads when it wakes).
    PauseLeader,
    PauseFollower,
    /// kill -9, then every unsynced log write thrown away (a power loss); restarted at the end.
    PowerLossLeader,
    PowerLossFollower,
    /// Every node at once.
    PowerLossAll,
    /// A follower restarts with an fsync failpoint that fires after `syncs` syncs: it must
    /// exit (code 3); at the end of the hold it restarts without the failpoint.
    FsyncFailure {
        syncs: u64,
    },
    /// Remove a follower from the voters; at the end, add it back as a learner and promote it.
    RemoveFollower,
    /// Start a spare node and add it as a learner; promote it when the hold ends.
    AddSpare,
    /// Hand leadership to a follower (nothing to undo).
    TransferLeadership,
    /// Every link loses, duplicates and delays datagrams (with jitter: reordering).
    Lossy {
        drop: f64,
        duplicate: f64,
        delay: Duration,
        jitter: Duration,
    },
    /// The leader can reach no peer and no peer can reach it.
    IsolateLeader,
    /// A follower alone on one side.
    IsolateFollower,
    /// The leader's datagrams to its peers are lost; theirs still reach it.
    LeaderCannotSend,
    /// The peers' datagrams to the leader are lost; its own still reach them.
    LeaderCannotHear,
    /// The leader and one follower cannot talk; the other follower talks to both.
    Bridge,
}

impl Fault {
    /// Whether this fault acts on the network (else on nodes or membership).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Fault::Lossy { .. }
                | Fault::IsolateLeader
                | Fault::IsolateFollower
                | Fault::LeaderCannotSend
                | Fault::LeaderCannotHear
                | Fault::Bridge
        )
    }
}

/// A fault, when it starts (after the warm-up) and how long it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timed {
    pub at: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Sorted by start time.
    pub faults: Vec<Timed>,
}

impl Schedule {
    /// Faults one after another, each starting `gap` after the previous one ended.
    pub fn sequence(gap: Duration, faults: impl IntoIterator<Item = (Fault, Duration)>) -> Self {
        let mut at = gap;
        let mut out = Vec::new();
        for (fault, hold) in faults {
            out.push(Timed { at, hold, fault });
            at += hold + gap;
        }
        Schedule { faults: out }
    }

    /// When the last fault is undone.
    pub fn end(&self) -> Duration {
        self.faults
            .iter()
            .map(|t| t.at + t.hold)
            .max()
            .unwrap_or_default()
    }

    /// A random schedule of about `length`: node faults and network faults drawn from `seed`,
    /// each lane's faults one after another with short gaps.
    pub fn random(seed: u64, length: Duration) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut faults = Vec::new();
        for network in [false, true] {
            let mut at = ms(&mut rng, 100, 600);
            while at < length {
                let fault = if network {
                    network_fault(&mut rng)
                } else {
                    node_fault(&mut rng)
                };
                let hold = match fault {
                    Fault::TransferLeadership => Duration::ZERO,
                    // Longer than the election timeout, so the cluster moves on without it.
                    Fault::PauseLeader | Fault::PauseFollower => ms(&mut rng, 700, 1500),
                    _ => ms(&mut rng, 300, 1500),
                };
                faults.push(Timed { at, hold, fault });
                at += hold + ms(&mut rng, 200, 800);
            }
        }
        faults.sort_by_key(|t| t.at);
        Schedule { faults }
    }
}

fn ms(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..hi))
}

fn node_fault(rng: &mut ChaCha8Rng) -> Fault {
    const MENU: [Fault; 9] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::PowerLossLeader,
        Fault::PowerLossFollower,
        Fault::RemoveFollower,
        Fault::TransferLeadership,
        Fault::FsyncFailure { syncs: 20 },
    ];
    // A power loss of every node is rarer: it costs a full re-election.
    if rng.random_bool(0.05) {
        return Fault::PowerLossAll;
    }
    MENU.choose(rng).expect("a non-empty menu").clone()
}

fn network_fault(rng: &mut ChaCha8Rng) -> Fault {
    match rng.random_range(0..6) {
        0 => Fault::Lossy {
            drop: rng.random_range(0.0..0.3),
            duplicate: rng.random_range(0.0..0.2),
            delay: ms(rng, 0, 20),
            jitter: ms(rng, 0, 40),
        },
        1 => Fault::IsolateLeader,
        2 => Fault::IsolateFollower,
        3 => Fault::LeaderCannotSend,
        4 => Fault::LeaderCannotHear,
        _ => Fault::Bridge,
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.faults {
            writeln!(
                f,
                "  at {:>6} ms for {:>5} ms: {:?}",
                t.at.as_millis(),
                t.hold.as_millis(),
                t.fault
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let a = Schedule::random(42, Duration::from_secs(6));
        assert_eq!(a, Schedule::random(42, Duration::from_secs(6)));
        assert_ne!(a, Schedule::random(43, Duration::from_secs(6)));
    }

    #[test]
    fn within_a_lane_faults_never_overlap() {
        for seed in 0..50 {
            let s = Schedule::random(seed, Duration::from_secs(6));
            for network in [false, true] {
                let lane: Vec<&Timed> = s
                    .faults
                    .iter()
                    .filter(|t| t.fault.is_network() == network)
                    .collect();
                assert!(!lane.is_empty(), "seed {seed}: an empty lane");
                for w in lane.windows(2) {
                    assert!(w[0].at + w[0].hold < w[1].at, "seed {seed}: {s}");
                }
            }
        }
    }
}
