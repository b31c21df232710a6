//! Protocol rules of the Raft core that read best as code: properties over many seeds, the exact
//! shape of an [`Output`], and bad input. One rule per test, named for the rule. The scenarios in
//! `scenarios/` cover the rest; both drive the core through its public API only.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use common::{cmd, msg, restore_with_log, warm_core, Cluster, Link, Options};
use keel_engine::core::{
    AppendResult, Body, Config, Core, CoreError, Entry, HardState, Index, Membership, Message,
    NodeId, Payload, ProgressState, ReadMode, Restore, Role, SnapshotMeta, Term, Write,
};

fn voters(ids: &[NodeId]) -> Membership {
    Membership::new(ids.iter().copied(), [])
}

/// Node `id` of a fresh three-voter cluster, out of its initial lease and not campaigning.
fn follower(id: NodeId) -> Core {
    warm_core(Config::new(id), Restore::bootstrap(voters(&[1, 2, 3])))
}

/// Node `id` of a three-voter cluster, restarted at `term` with a log of entries of these terms.
fn follower_with_log(id: NodeId, term: Term, terms: &[Term], commit: Index) -> Core {
    let restore = restore_with_log(voters(&[1, 2, 3]), term, None, commit, terms);
    warm_core(Config::new(id), restore)
}

/// A three-node cluster in which node 1 leads term 1 and everyone holds its no-op.
fn cluster_led_by_1() -> Cluster {
    let mut c = Cluster::new(Options::voters(&[1, 2, 3]));
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    c.tick(1);
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    c.take_trace();
    c
}

fn vote(from: NodeId, to: NodeId, term: Term, last: (Index, Term)) -> Message {
    msg(
        from,
        to,
        term,
        Body::Vote {
            last_index: last.0,
            last_term: last.1,
            transfer: false,
        },
    )
}

fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (Index, Term),
    entries: Vec<Entry>,
) -> Message {
    msg(
        from,
        to,
        term,
        Body::Append {
            prev_index: prev.0,
            prev_term: prev.1,
            entries,
            commit: 0,
            lease_tick: 0,
            read_seq: 0,
        },
    )
}

fn accepted(from: NodeId, to: NodeId, term: Term, index: Index) -> Message {
    msg(
        from,
        to,
        term,
        Body::AppendResponse {
            result: AppendResult::Accepted { index },
            lease_tick: 0,
            read_seq: 0,
        },
    )
}

// ---------------------------------------------------------------- elections

#[test]
fn election_timeouts_are_drawn_at_random_in_one_to_two_election_timeouts() {
    let mut first = BTreeSet::new();
    for seed in 0..300 {
        let mut core =
            Core::new(Config::new(1), Restore::bootstrap(voters(&[1, 2, 3])), seed).expect("core");
        let mut ticks = 0;
        while core.role() == Role::Follower {
            core.tick();
            ticks += 1;
            assert!(ticks < 100, "seed {seed}: never campaigned");
        }
        assert!(
            (10..20).contains(&ticks),
            "seed {seed}: first timeout {ticks}"
        );
        first.insert(ticks);
        // Unanswered, the pre-candidate campaigns again after a freshly drawn timeout.
        let started = core.stats().pre_elections_started;
        let mut again = 0;
        while core.stats().pre_elections_started == started {
            core.tick();
            again += 1;
            assert!(again < 100, "seed {seed}: never campaigned again");
        }
        assert!(
            (10..20).contains(&again),
            "seed {seed}: second timeout {again}"
        );
    }
    assert_eq!(
        first.len(),
        10,
        "every timeout in [10, 20) occurs: {first:?}"
    );
}

#[test]
fn nodes_given_the_same_seed_draw_different_timeouts() {
    let timeouts: BTreeSet<u32> = (1..=5)
        .map(|id| {
            let restore = Restore::bootstrap(voters(&[1, 2, 3, 4, 5]));
            let mut core = Core::new(Config::new(id), restore, 7).expect("core");
            let mut ticks = 0;
            while core.role() == Role::Follower {
                core.tick();
                ticks += 1;
            }
            ticks
        })
        .collect();
    assert!(timeouts.len() > 1, "all five nodes drew {timeouts:?}");
}

#[test]
fn a_vote_is_granted_at_most_once_per_term() {
    let mut core = follower(1);
    core.step(vote(2, 1, 1, (0, 0)));
    let out = core.take_output();
    let w = out.write.expect("the vote is written");
    assert_eq!(
        w.then_send,
        vec![msg(1, 2, 1, Body::VoteResponse { granted: true })]
    );

    core.step(vote(3, 1, 1, (0, 0)));
    let out = core.take_output();
    assert_eq!(
        out.messages,
        vec![msg(1, 3, 1, Body::VoteResponse { granted: false })]
    );
    assert!(out.write.is_none());
    assert_eq!(core.vote(), Some(2));

    // The same candidate asking again (its message duplicated) gets the same vote again.
    core.step(vote(2, 1, 1, (0, 0)));
    let out = core.take_output();
    let w = out.write.expect("behind every earlier write");
    assert_eq!(w.hard_state, None, "nothing new to persist");
    assert_eq!(
        w.then_send,
        vec![msg(1, 2, 1, Body::VoteResponse { granted: true })]
    );
}

#[test]
fn a_vote_grant_is_sent_only_after_the_vote_is_durable() {
    let mut core = follower(1);
    core.step(vote(2, 1, 1, (0, 0)));
    let out = core.take_output();
    assert!(
        out.messages.is_empty(),
        "nothing may go out before the vote is durable: {:?}",
        out.messages
    );
    let w = out.write.expect("the vote is written");
    assert_eq!(
        w.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(2),
            commit: 0
        })
    );
    assert_eq!(
        w.then_send,
        vec![msg(1, 2, 1, Body::VoteResponse { granted: true })]
    );
}

#[test]
fn a_candidate_asks_for_votes_only_after_its_own_vote_is_durable() {
    let mut cfg = Config::new(1);
    cfg.pre_vote = false;
    let mut core = warm_core(cfg, Restore::bootstrap(voters(&[1, 2, 3])));
    core.campaign().expect("a voter");
    let out = core.take_output();
    assert!(out.messages.is_empty(), "{:?}", out.messages);
    let w = out.write.expect("the self-vote is written");
    assert_eq!(w.hard_state.map(|h| (h.term, h.vote)), Some((1, Some(1))));
    let to: Vec<NodeId> = w.then_send.iter().map(|m| m.to).collect();
    assert_eq!(to, vec![2, 3]);
}

#[test]
fn a_voter_refuses_a_candidate_whose_log_is_less_up_to_date() {
    // Last entry 3@2 here. A candidate with last term 1 loses however long its log; one with
    // last term 2 needs at least index 3; a higher last term wins.
    for (last, granted) in [
        ((9, 1), false),
        ((2, 2), false),
        ((3, 2), true),
        ((1, 3), true),
    ] {
        let mut core = follower_with_log(1, 3, &[1, 2, 2], 0);
        core.step(vote(2, 1, 4, last));
        let out = core.take_output();
        let answer = out
            .messages
            .iter()
            .chain(out.write.iter().flat_map(|w| w.then_send.iter()))
            .find(|m| m.to == 2)
            .map(|m| m.body.clone());
        assert_eq!(
            answer,
            Some(Body::VoteResponse { granted }),
            "last {last:?}"
        );
    }
}

#[test]
fn a_prevote_changes_no_term_on_either_side() {
    let mut core = follower(1);
    core.step(msg(
        2,
        1,
        5,
        Body::PreVote {
            last_index: 0,
            last_term: 0,
        },
    ));
    let out = core.take_output();
    assert_eq!(
        out.messages,
        vec![msg(1, 2, 5, Body::PreVoteResponse { granted: true })]
    );
    assert!(out.write.is_none(), "a pre-vote grant promises nothing");
    assert_eq!((core.term(), core.vote()), (0, None));

    let mut pre = follower(2);
    pre.campaign().expect("a voter");
    let out = pre.take_output();
    assert_eq!(pre.role(), Role::PreCandidate);
    assert_eq!(pre.term(), 0);
    assert!(out.write.is_none());
    assert!(out.messages.iter().all(|m| m.term == 1));
}

#[test]
fn a_stale_durability_report_for_overwritten_entries_is_ignored() {
    let mut core = follower(2);
    core.step(append(
        1,
        2,
        1,
        (0, 0),
        vec![cmd(1, 1, "a"), cmd(2, 1, "b")],
    ));
    let first = core.take_output().write.expect("entries to persist");
    // A new leader of term 2 overwrites index 2 before the first write is durable.
    core.step(append(3, 2, 2, (1, 1), vec![cmd(2, 2, "c")]));
    let second = core.take_output().write.expect("entries to persist");
    assert_eq!(first.last_entry(), Some((2, 1)));
    core.persisted(2, 1);
    assert_eq!(
        core.persisted_index(),
        1,
        "2@1 is no longer in the log; 1@1, written with it, is durable"
    );
    assert_eq!(second.last_entry(), Some((2, 2)));
    core.persisted(2, 2);
    assert_eq!(core.persisted_index(), 2);
}

#[test]
fn a_durability_report_for_entries_overwritten_and_written_again_waits_for_the_rewrite() {
    // Entries 1@1 and 2@1 are written (W1), overwritten by a leader of term 2 (W2: 1@2), then
    // written again, committed, by node 1 leading term 3 (W3). W1's report then matches the log,
    // but W2 is still to reach the disk, and a crash after it would leave 1@2 there: until W3
    // is durable, nothing of it counts as durable, nor is applied.
    let mut core = follower(2);
    let mut step = |m: Message| {
        core.step(m);
        core.take_output().write.expect("a write")
    };
    let w1 = step(append(
        1,
        2,
        1,
        (0, 0),
        vec![cmd(1, 1, "a"), cmd(2, 1, "b")],
    ));
    let w2 = step(append(3, 2, 2, (0, 0), vec![cmd(1, 2, "c")]));
    let again = vec![cmd(1, 1, "a"), cmd(2, 1, "b"), cmd(3, 3, "d")];
    let w3 = step(msg(
        1,
        2,
        3,
        Body::Append {
            prev_index: 0,
            prev_term: 0,
            entries: again.clone(),
            commit: 3,
            lease_tick: 0,
            read_seq: 0,
        },
    ));
    assert_eq!(w2.truncate_from, Some(1));
    assert_eq!(w3.truncate_from, Some(1));
    let mut persisted = |w: &Write| {
        let (index, term) = w.last_entry().expect("entries");
        core.persisted(index, term);
        (core.persisted_index(), core.take_output().committed)
    };
    assert_eq!(persisted(&w1), (0, vec![]));
    assert_eq!(persisted(&w2), (0, vec![]), "1@2 is no longer in the log");
    assert_eq!(persisted(&w3), (3, again));
}

// ---------------------------------------------------------------- replication

#[test]
fn a_probe_is_small_and_resent_only_when_the_follower_answers() {
    let mut c = cluster_led_by_1();
    c.partition(vec![BTreeSet::from([1, 2]), BTreeSet::from([3])]);
    let big = "x".repeat(8 * 1024);
    for _ in 0..40 {
        c.propose(1, &[big.as_str()]).expect("the leader proposes");
    }
    c.deliver_all();
    // Node 3 answers nothing: its pipeline stalls and the leader falls back to probing.
    let probing = |c: &Cluster| {
        c.core(1)
            .progress()
            .any(|(id, p)| id == 3 && p.state == ProgressState::Probe)
    };
    for _ in 0..100 {
        if probing(&c) {
            break;
        }
        c.tick_all();
        c.deliver_all();
    }
    assert!(probing(&c), "the leader probes node 3");
    c.take_trace();
    // A follower that answers no heartbeat gets no more appends, however long that lasts.
    for _ in 0..100 {
        c.tick_all();
        c.deliver_all();
    }
    assert_eq!(c.core(1).role(), Role::Leader);
    let appends = c
        .take_trace()
        .iter()
        .filter(|l| l.starts_with("1->3 App") && !l.ends_with("dropped (partition)"))
        .count();
    assert_eq!(appends, 0, "appends to a silent follower in 100 ticks");
    // Once it answers a heartbeat, one probe goes, of at most 64 KiB of entries.
    c.heal();
    let mut probe = None;
    for _ in 0..20 {
        c.tick(1);
        c.deliver(common::Link::new(1, 3));
        c.deliver(common::Link::new(3, 1));
        probe = c
            .in_flight()
            .into_iter()
            .find(|m| m.to == 3 && entry_bytes(m) > 0);
        if probe.is_some() {
            break;
        }
    }
    let probe = probe.expect("a probe after the follower answered");
    let bytes = entry_bytes(&probe);
    assert!(
        bytes <= 64 * 1024 + big.len() + 24,
        "a probe of {bytes} bytes"
    );
    c.deliver_all();
    assert_caught_up(&c, 3);
}

/// The bytes of entries `m` carries (none unless it is an append).
fn entry_bytes(m: &Message) -> usize {
    match &m.body {
        Body::Append { entries, .. } => entries.iter().map(Entry::size_bytes).sum(),
        _ => 0,
    }
}

fn assert_caught_up(c: &Cluster, id: NodeId) {
    let leader = c.leader().expect("a leader");
    assert_eq!(
        c.core(id).last_index(),
        c.core(leader).last_index(),
        "{id} caught up"
    );
}

#[test]
fn a_follower_is_sent_at_most_the_inflight_bytes_before_it_answers() {
    let mut c = Cluster::new(Options {
        max_inflight_bytes: 32 * 1024,
        ..Options::voters(&[1, 2, 3])
    });
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    c.tick(1);
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    let big = "x".repeat(8 * 1024);
    for _ in 0..40 {
        c.propose(1, &[big.as_str()]).expect("the leader proposes");
    }
    let in_flight_to_3: usize = c
        .in_flight()
        .iter()
        .filter(|m| m.to == 3)
        .map(entry_bytes)
        .sum();
    // The window closes once 32 KiB are out; the append that crossed the line still went.
    assert!(
        in_flight_to_3 <= 32 * 1024 + big.len() + 64,
        "{in_flight_to_3} bytes in flight to a follower that has not answered"
    );
    c.deliver_all();
    assert_caught_up(&c, 3);
}

// ---------------------------------------------------------------- leases

#[test]
fn a_lease_read_is_never_stale_even_after_a_forced_campaign() {
    // Node 1 leads term 1; nodes 2 and 3 acknowledged it, so its lease holds for the next
    // election_ticks - lease_drift_ticks ticks of its clock.
    let mut c = Cluster::new(Options::voters(&[1, 2, 3]));
    c.campaign(1).expect("a voter");
    c.deliver_all();
    assert!(c.core(1).lease_valid());
    // Node 3 stops hearing from the leader for an election timeout (only its clock runs), so it
    // no longer honours the lease. Node 2 heard from the leader just now and still does.
    c.partition(vec![BTreeSet::from([1])]);
    for _ in 0..10 {
        c.tick(3);
    }
    c.drop_messages(common::Link::ANY);
    // An operator forces node 2 to campaign. Whatever the core does with that call, node 2 must
    // not help elect anyone while it honours node 1's lease: node 1 may serve reads on it.
    let _ = c.campaign(2);
    c.deliver_all();
    if c.core(2).role() == Role::Leader {
        c.propose(2, &["y"]).expect("node 2 leads");
        c.deliver_all();
    }
    let known_commit = c.core(2).commit_index().max(c.core(3).commit_index());
    c.read(1, 9, ReadMode::Lease);
    let read = c.node(1).reads.last().copied();
    if let Some(Ok(index)) = read.map(|r| r.index) {
        assert!(
            index >= known_commit,
            "node 1 served a lease read at index {index} while node {:?} leads term {} and \
             commit index {known_commit} is known: the read misses committed writes",
            c.leader(),
            c.core(2).term()
        );
    }
}

#[test]
fn a_read_a_deposed_leader_held_fails_naming_the_new_leader() {
    let mut c = cluster_led_by_1();
    // Node 1 is cut off with a read it cannot confirm; nodes 2 and 3 elect one of them.
    c.partition(vec![BTreeSet::from([1])]);
    c.read(1, 7, ReadMode::Quorum);
    c.deliver_all();
    let mut elected = None;
    for _ in 0..100 {
        c.tick(2);
        c.tick(3);
        c.deliver_all();
        elected = [2, 3]
            .into_iter()
            .find(|&id| c.core(id).role() == Role::Leader);
        if elected.is_some() {
            break;
        }
    }
    let elected = elected.expect("nodes 2 and 3 elect a leader");
    // The new leader's first message to node 1 deposes it: the read fails naming the new leader.
    c.heal();
    c.tick(elected);
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Follower);
    let read = c.node(1).reads.iter().find(|r| r.id == 7).copied();
    assert_eq!(read.map(|r| r.index), Some(Err(Some(elected))));
}

/// Without a margin, a follower whose first tick came right after the heartbeat that renewed
/// the lease counts a tick less than the leader and may vote while the leader still serves on
/// its lease (the simulator's checker shows it with drifting clocks).
#[test]
fn lease_reads_need_a_drift_margin_of_at_least_one_tick() {
    let mut cfg = Config::new(1);
    cfg.lease_drift_ticks = 0;
    assert_eq!(
        cfg.validate(),
        Err(keel_engine::core::ConfigError::LeaseDrift)
    );
    cfg.lease_reads = false;
    assert_eq!(cfg.validate(), Ok(()), "no lease, no margin needed");
    cfg.lease_reads = true;
    cfg.lease_drift_ticks = 1;
    assert_eq!(cfg.validate(), Ok(()));
    cfg.lease_drift_ticks = cfg.election_ticks;
    assert_eq!(
        cfg.validate(),
        Err(keel_engine::core::ConfigError::LeaseDrift)
    );
    cfg.lease_reads = false;
    assert_eq!(cfg.validate(), Ok(()), "no lease, no room for one needed");
}

// ---------------------------------------------------------------- bad input

#[test]
fn misaddressed_messages_are_counted_and_have_no_effect() {
    let mut core = follower(1);
    let heartbeat = Body::Heartbeat {
        commit: 0,
        lease_tick: 0,
        read_seq: 0,
    };
    core.step(msg(2, 3, 9, heartbeat.clone())); // for another node
    core.step(msg(1, 1, 9, heartbeat.clone())); // claiming to be this node
    core.step(msg(0, 1, 9, heartbeat)); // from the reserved id
    assert_eq!(core.stats().misaddressed, 3);
    assert!(core.take_output().is_empty());
    assert_eq!(core.term(), 0);
}

#[test]
fn stale_term_messages_are_counted_and_answered_with_the_newer_term() {
    let mut core = follower_with_log(2, 3, &[1], 0);
    core.step(append(1, 2, 2, (1, 1), vec![cmd(2, 2, "x")]));
    core.step(vote(3, 2, 1, (5, 1)));
    assert_eq!(core.stats().stale_term, 2);
    let out = core.take_output();
    // Both learn the newer term (Figure 2: reply false with the current term): the deposed
    // leader steps down, the stale candidate's next campaign can win.
    assert_eq!(
        out.messages,
        vec![
            msg(
                2,
                1,
                3,
                Body::HeartbeatResponse {
                    lease_tick: 0,
                    read_seq: 0
                }
            ),
            msg(2, 3, 3, Body::VoteResponse { granted: false }),
        ]
    );
    assert!(out.write.is_none());
    assert_eq!((core.term(), core.last_index()), (3, 1));
}

#[test]
fn an_append_with_non_contiguous_or_impossible_entries_is_invalid() {
    let bad = [
        vec![cmd(2, 1, "a"), cmd(4, 1, "b")], // a gap
        vec![cmd(3, 1, "a")],                 // does not follow prev
        vec![cmd(2, 1, "a"), cmd(3, 0, "b")], // terms go down
        vec![cmd(2, 2, "a")],                 // a term above the sender's
    ];
    for entries in bad {
        let mut core = follower_with_log(2, 1, &[1], 0);
        core.step(append(1, 2, 1, (1, 1), entries.clone()));
        assert_eq!(core.stats().invalid, 1, "{entries:?}");
        let out = core.take_output();
        assert!(
            out.write.is_none() && out.messages.is_empty(),
            "{entries:?}: {out:?}"
        );
        assert_eq!(core.last_index(), 1);
    }
}

#[test]
fn an_ack_past_the_leaders_last_index_is_invalid() {
    let mut c = cluster_led_by_1();
    let last = c.core(1).last_index();
    c.step(accepted(2, 1, 1, last + 50));
    c.step(msg(
        3,
        1,
        1,
        Body::AppendResponse {
            result: AppendResult::Rejected {
                rejected: last + 50,
                hint_index: 0,
                hint_term: 0,
            },
            lease_tick: 0,
            read_seq: 0,
        },
    ));
    let core = c.core(1);
    assert_eq!(core.stats().invalid, 2);
    assert_eq!(core.commit_index(), last);
    let matched: Vec<Index> = core.progress().map(|(_, p)| p.match_index).collect();
    assert_eq!(matched, vec![last, last]);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn a_vote_request_from_an_unknown_node_is_ignored_in_lease_and_judged_on_term_and_log_after() {
    // Within the lease: ignored, like any vote request for a newer term.
    let mut c = cluster_led_by_1();
    c.step(vote(9, 2, 2, (100, 1)));
    assert_eq!(c.core(2).stats().votes_ignored_in_lease, 1);
    assert_eq!(c.core(2).term(), 1);
    assert!(c.in_flight().is_empty());

    // Outside any lease the request is decided on term and log alone (thesis 4.1): the candidate
    // may be a voter this node has not learned about yet. Nothing panics either way.
    let mut core = follower(1);
    core.step(vote(9, 1, 1, (0, 0)));
    let out = core.take_output();
    let w = out.write.expect("a vote is written");
    assert_eq!(
        w.then_send,
        vec![msg(1, 9, 1, Body::VoteResponse { granted: true })]
    );
}

#[test]
fn a_follower_in_lease_grants_no_vote_at_a_term_it_reached_without_a_leader() {
    // Node 2 follows node 1 and is in its lease. A stale answer from node 3 at a newer term
    // raises node 2's term and names no leader. A vote request at that term must still wait for
    // the lease to run out: node 1 serves lease reads counting on node 2 granting none before.
    let mut c = cluster_led_by_1();
    let last = (c.core(2).last_index(), c.core(2).last_term());
    c.step(msg(3, 2, 2, Body::VoteResponse { granted: false }));
    assert_eq!(c.core(2).term(), 2);
    c.step(vote(3, 2, 2, last));
    assert_eq!(c.core(2).vote(), None, "no vote inside the lease");
    assert_eq!(c.core(2).stats().votes_ignored_in_lease, 1);

    // Once the lease has run out, the same request is granted.
    let election_ticks = c.core(2).config().election_ticks;
    for _ in 0..election_ticks {
        c.with_core_quiet(2, |core| core.tick());
    }
    c.step(vote(3, 2, 2, last));
    assert_eq!(c.core(2).vote(), Some(3));
}

#[test]
fn a_voter_added_just_before_a_check_quorum_round_ends_does_not_depose_the_leader() {
    // Node 3 is down; nodes 1 and 2 are a quorum of three. Node 1 adds voter 4 on the last tick
    // of a check-quorum round: four voters need three active, and node 4 has had no chance to
    // answer yet. It counts as active for that round, and is judged from the next one on.
    let mut c = cluster_led_by_1();
    c.crash(3);
    let election_ticks = c.core(1).config().election_ticks;
    // `cluster_led_by_1` ticked the new leader once, in a round node 3 answered in. The round
    // after it, only node 2 answers: to its last tick.
    for _ in 1..2 * election_ticks - 1 {
        c.tick(1);
        c.deliver_all();
    }
    let target = voters(&[1, 2, 3, 4]);
    c.with_core(1, |core| core.propose_membership(&target))
        .expect("one voter added");
    c.tick(1);
    assert_eq!(
        c.core(1).role(),
        Role::Leader,
        "still leading with 1 and 2 active"
    );
    assert_eq!(c.core(1).stats().check_quorum_step_downs, 0);

    // Node 4 never answers: with only 2 of 4 voters active, the next round deposes node 1.
    for _ in 0..election_ticks {
        c.tick(1);
        c.deliver_all();
    }
    assert_eq!(c.core(1).stats().check_quorum_step_downs, 1);
}

#[test]
fn a_removed_voter_is_sent_its_removal_and_its_commit_and_then_stays_quiet() {
    let mut c = cluster_led_by_1();
    let index = c
        .with_core(1, |core| core.propose_membership(&voters(&[1, 2])))
        .expect("one voter removed");
    c.deliver_all();
    assert!(c.core(1).commit_index() >= index);
    let removed = c.core(3);
    assert!(
        removed.commit_index() >= index,
        "node 3 heard the removal commit"
    );
    assert!(
        !removed.membership().contains(3),
        "{:?}",
        removed.membership()
    );
    assert!(
        c.core(1).progress().all(|(id, _)| id != 3),
        "the leader let node 3 go"
    );

    // Out of the cluster, it never campaigns.
    let elections = |c: &Cluster| {
        let s = c.core(3).stats();
        s.elections_started + s.pre_elections_started
    };
    let before = elections(&c);
    for _ in 0..4 * c.core(3).config().election_ticks {
        c.tick(3);
    }
    assert_eq!(elections(&c), before);
    assert!(c.in_flight().is_empty(), "{:?}", c.in_flight());
}

#[test]
fn a_transfer_asked_for_again_keeps_its_deadline_and_one_to_another_target_is_refused() {
    let mut c = Cluster::new(Options::voters(&[1, 2, 3]));
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    // Node 3 is down, so a transfer to it stays under way until it is abandoned.
    c.crash(3);
    c.with_core(1, |core| core.transfer_leadership(3))
        .expect("a transfer to node 3");
    assert_eq!(
        c.with_core(1, |core| core.transfer_leadership(2)),
        Err(CoreError::TransferInProgress)
    );
    let election_ticks = c.core(1).config().election_ticks;
    for _ in 1..election_ticks {
        c.tick(1);
        c.deliver_all();
        c.with_core(1, |core| core.transfer_leadership(3))
            .expect("the same transfer, asked for again");
    }
    assert_eq!(
        c.with_core(1, |core| core.propose([Bytes::from("held")])),
        Err(CoreError::TransferInProgress)
    );
    // One election timeout after it began, however often it was asked for since.
    c.tick(1);
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    c.with_core(1, |core| core.propose([Bytes::from("taken")]))
        .expect("the transfer was abandoned on time");
}

#[test]
fn a_timeout_now_that_arrives_after_its_transfer_was_given_up_deposes_nobody() {
    let mut c = Cluster::new(Options::voters(&[1, 2, 3]));
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    c.propose(1, &["a"]).expect("node 1 leads");
    c.deliver_all();
    // Node 3 holds the whole log: told to campaign at once. The message is held up on the way.
    c.with_core(1, |core| core.transfer_leadership(3))
        .expect("a transfer to node 3");
    let late = (c.in_flight().into_iter())
        .find(|m| matches!(m.body, Body::TimeoutNow { .. }) && m.to == 3)
        .expect("TimeoutNow sent");
    // Node 3 is away until the transfer is given up (else each heartbeat answer would have node
    // 1 send it again).
    c.crash(3);
    for _ in 0..c.core(1).config().election_ticks {
        c.tick(1);
        c.deliver_all();
    }
    c.restart(3);
    let (after, term) = c.propose(1, &["b"]).expect("the transfer was given up");
    c.deliver_all();
    assert_eq!(c.core(3).last_index(), after);

    c.step(late);
    c.deliver_all();
    assert_eq!(c.core(3).role(), Role::Follower, "not deposing node 1");
    assert_eq!(c.core(1).role(), Role::Leader);
    assert_eq!(c.core(1).term(), term);
}

/// Node 1 leads voters 1-4 and appends its own removal; 2, 3 and 4 hold it. Returns its index.
fn leader_removing_itself() -> (Cluster, Index) {
    let mut c = Cluster::new(Options::voters(&[1, 2, 3, 4]));
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    let removal = c
        .with_core(1, |core| core.propose_membership(&voters(&[2, 3, 4])))
        .expect("node 1 removes itself");
    for to in [2, 3, 4] {
        c.deliver(Link::new(1, to));
    }
    (c, removal)
}

fn timeouts_now(c: &Cluster) -> Vec<NodeId> {
    (c.in_flight().iter())
        .filter(|m| matches!(m.body, Body::TimeoutNow { .. }))
        .map(|m| m.to)
        .collect()
}

/// Node 1, removing itself, transfers leadership to node 3, known to hold its whole log or not
/// (its answer lost), and then sees its removal commit. Returns whom it then told to campaign.
fn handover_during_a_transfer_to_3(known_to_hold_all: bool) -> Vec<NodeId> {
    let (mut c, removal) = leader_removing_itself();
    if known_to_hold_all {
        c.deliver(Link::new(3, 1));
    } else {
        c.drop_messages(Link::new(3, 1));
    }
    assert!(
        c.core(1).commit_index() < removal,
        "one of three is no majority"
    );
    c.with_core(1, |core| core.transfer_leadership(3))
        .expect("a transfer to node 3");
    let told = if known_to_hold_all { vec![3] } else { vec![] };
    assert_eq!(
        timeouts_now(&c),
        told,
        "told to campaign at once if caught up"
    );
    c.drop_messages(Link::new(1, 3));
    for from in [2, 4] {
        c.deliver(Link::new(from, 1));
    }
    assert!(c.core(1).commit_index() >= removal, "the removal committed");
    assert_eq!(c.core(1).role(), Role::Follower);
    timeouts_now(&c)
}

#[test]
fn a_leader_that_removes_itself_during_a_transfer_hands_over_to_that_transfer_s_target() {
    // Told again (the first may be lost), and not node 2, the lowest id among the voters that
    // hold everything: two campaigning at once split the vote.
    assert_eq!(handover_during_a_transfer_to_3(true), vec![3]);
}

#[test]
fn a_leader_that_removes_itself_during_a_transfer_to_a_lagging_voter_hands_over_to_the_best() {
    // Not to node 3, never told: to node 2, known to hold the whole log.
    assert_eq!(handover_during_a_transfer_to_3(false), vec![2]);
}

#[test]
fn a_joint_configuration_that_commits_during_a_transfer_is_left_when_the_transfer_ends() {
    let mut opts = Options::voters(&[1, 2, 3]);
    opts.learners = vec![4, 5];
    let mut c = Cluster::new(opts);
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    // Node 4 is down, so a transfer to it stays under way until it is abandoned.
    c.crash(4);
    let joint = c
        .with_core(1, |core| core.propose_membership(&voters(&[1, 4, 5])))
        .expect("two voters replaced: joint");
    c.with_core(1, |core| core.transfer_leadership(4))
        .expect("a transfer to node 4");
    c.deliver_all();
    let leader = c.core(1);
    assert!(
        leader.commit_index() >= joint,
        "the joint configuration committed"
    );
    assert!(
        leader.membership().is_joint(),
        "and is not left during the transfer"
    );
    assert_eq!(leader.last_index(), joint);

    for _ in 0..c.core(1).config().election_ticks {
        c.tick(1);
        c.deliver_all();
    }
    let leader = c.core(1);
    assert_eq!(leader.role(), Role::Leader);
    assert!(
        !leader.membership().is_joint(),
        "left once the transfer was abandoned"
    );
    assert_eq!(leader.membership().voters, voters(&[1, 4, 5]).voters);
}

#[test]
fn leadership_goes_only_to_a_voter_of_the_configuration_being_entered() {
    let mut opts = Options::voters(&[1, 2, 3]);
    opts.learners = vec![4];
    let mut c = Cluster::new(opts);
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    // Node 3 is replaced by node 4, through a joint configuration; node 3, the most
    // up-to-date follower, would lead only until the configuration is left.
    c.drop_messages(Link::new(1, 2));
    c.drop_messages(Link::new(1, 4));
    let joint = c
        .with_core(1, |core| core.propose_membership(&voters(&[1, 2, 4])))
        .expect("a voter replaced: joint");
    c.deliver(Link::new(1, 3));
    c.deliver(Link::new(3, 1));
    let leader = c.core(1);
    assert!(leader.membership().is_joint());
    let match_3 = leader
        .progress()
        .find(|(id, _)| *id == 3)
        .map(|(_, p)| p.match_index);
    assert_eq!(match_3, Some(joint));
    assert_eq!(
        c.with_core(1, |core| core.transfer_leadership(3)),
        Err(CoreError::LeavingVoter(3))
    );
    assert_eq!(c.with_core(1, |core| core.step_down()), Ok(2));
}

#[test]
fn a_removal_that_commits_under_the_next_leader_is_still_sent_to_the_removed_member() {
    let mut c = Cluster::new(Options::voters(&[1, 2, 3, 4]));
    c.campaign(1).expect("node 1 votes");
    c.deliver_all();
    assert_eq!(c.core(1).role(), Role::Leader);
    // Node 1 appends the removal of node 4 and reaches nodes 2 and 3 with it, then dies before
    // anything commits it; node 4 never hears of it.
    let removal = c
        .with_core(1, |core| core.propose_membership(&voters(&[1, 2, 3])))
        .expect("one voter removed");
    c.drop_messages(Link::new(1, 4));
    c.deliver(Link::new(1, 2));
    c.deliver(Link::new(1, 3));
    c.crash(1);
    let election_ticks = c.core(2).config().election_ticks;
    for _ in 0..4 * election_ticks {
        for id in [2, 3, 4] {
            c.tick(id);
        }
        c.deliver_all();
        if c.leader().is_some_and(|l| l != 1) && c.core(4).commit_index() >= removal {
            break;
        }
    }
    let leader = c.leader().expect("a new leader");
    assert!(c.core(leader).commit_index() >= removal);
    let removed = c.core(4);
    assert!(
        removed.commit_index() >= removal,
        "node 4 heard the removal commit"
    );
    assert!(!removed.membership().contains(4));
}

#[test]
fn a_member_added_back_before_it_heard_of_its_removal_is_replicated_to() {
    let mut c = cluster_led_by_1();
    c.crash(3);
    let removal = c
        .with_core(1, |core| core.propose_membership(&voters(&[1, 2])))
        .expect("one voter removed");
    c.deliver_all();
    assert!(
        c.core(1).commit_index() >= removal,
        "removed without node 3's answer"
    );
    let back = Membership::new([1, 2], [3]);
    c.with_core(1, |core| core.propose_membership(&back))
        .expect("node 3 back as a learner");
    c.deliver_all();
    c.restart(3);
    for _ in 0..c.core(1).config().election_ticks {
        c.tick(1);
        c.deliver_all();
    }
    let last = c.core(1).last_index();
    assert!(
        c.core(1).progress().any(|(id, _)| id == 3),
        "the leader replicates to node 3"
    );
    assert_eq!(c.core(3).last_index(), last, "node 3 caught up");
}

#[test]
fn vote_responses_and_acks_from_unknown_nodes_are_counted_and_ignored() {
    let mut cfg = Config::new(1);
    cfg.pre_vote = false;
    let mut core = warm_core(cfg, Restore::bootstrap(voters(&[1, 2, 3])));
    core.campaign().expect("a voter");
    let _ = core.take_output();
    core.step(msg(9, 1, 1, Body::VoteResponse { granted: true }));
    assert_eq!(core.stats().from_unknown_node, 1);
    assert_eq!(core.role(), Role::Candidate, "node 9's vote does not count");

    let mut c = cluster_led_by_1();
    c.step(accepted(9, 1, 1, 1));
    c.step(msg(
        9,
        1,
        1,
        Body::HeartbeatResponse {
            lease_tick: 0,
            read_seq: 0,
        },
    ));
    assert_eq!(c.core(1).stats().from_unknown_node, 2);
}

#[test]
fn a_second_leader_in_the_same_term_is_invalid() {
    let mut c = cluster_led_by_1();
    // Node 3 claims to lead term 1 too: to the leader and to node 2, which follows node 1.
    c.step(append(3, 1, 1, (1, 1), vec![cmd(2, 1, "x")]));
    c.step(append(3, 2, 1, (1, 1), vec![cmd(2, 1, "x")]));
    assert_eq!(c.core(1).stats().invalid, 1);
    assert_eq!(c.core(2).stats().invalid, 1);
    assert_eq!(c.core(1).last_index(), 1);
    assert_eq!(c.core(2).last_index(), 1);
    assert!(c.in_flight().is_empty());
}

#[test]
fn an_append_contradicting_committed_entries_is_invalid() {
    // Node 2 holds 1@1 2@1, both committed. A leader of term 2 claims the log 1@2 2@2 3@2: no
    // correct leader can, since committed entries are in every later leader's log. Accepting 3@2
    // on top of 2@1 would break log matching, and the acknowledgement would claim a match that
    // does not exist.
    let mut core = follower_with_log(2, 2, &[1, 1], 2);
    core.step(append(
        1,
        2,
        2,
        (0, 0),
        vec![cmd(1, 2, "a"), cmd(2, 2, "b"), cmd(3, 2, "c")],
    ));
    assert_eq!(core.stats().invalid, 1, "a conflict below the commit index");
    let out = core.take_output();
    assert!(
        out.write.as_ref().is_none_or(|w| w.entries.is_empty()),
        "nothing appended: {out:?}"
    );
    assert_eq!(core.last_index(), 2);
}

fn progress_state(c: &Cluster, leader: NodeId, of: NodeId) -> ProgressState {
    let (_, pr) = c
        .core(leader)
        .progress()
        .find(|(id, _)| *id == of)
        .expect("a member");
    pr.state
}

#[test]
fn a_report_on_another_snapshot_than_the_one_a_follower_waits_for_changes_nothing() {
    let mut c = cluster_led_by_1();
    c.crash(3);
    c.propose(1, &["a", "b", "c"]).unwrap();
    c.deliver_all();
    let last = c.core(1).last_index();
    c.compact(1, last).unwrap();
    c.restart(3);
    // Heartbeats and probes until the leader finds node 3 needs the snapshot, which it sends
    // as it moves to waiting for it: that message stays in flight.
    for _ in 0..100 {
        if progress_state(&c, 1, 3) == (ProgressState::Snapshot { index: last }) {
            break;
        }
        if c.in_flight().is_empty() {
            c.tick(1);
        } else {
            c.deliver_at(0);
        }
    }
    assert_eq!(
        progress_state(&c, 1, 3),
        ProgressState::Snapshot { index: last }
    );
    // A transfer of an older snapshot, sent in an earlier term of this leader's, ends now.
    for delivered in [true, false] {
        c.with_core(1, |core| core.report_snapshot(3, last - 1, delivered));
        assert_eq!(
            progress_state(&c, 1, 3),
            ProgressState::Snapshot { index: last },
            "a report on snapshot {} (delivered: {delivered}) moved the leader on",
            last - 1
        );
    }
    c.with_core(1, |core| core.report_snapshot(3, last, true));
    assert_eq!(progress_state(&c, 1, 3), ProgressState::Probe);
}

#[test]
fn a_snapshot_with_an_invalid_membership_or_a_future_term_is_invalid() {
    for snapshot in [
        SnapshotMeta {
            index: 5,
            term: 1,
            membership: Membership::default(),
        },
        SnapshotMeta {
            index: 5,
            term: 7,
            membership: voters(&[1, 2, 3]),
        },
    ] {
        let mut core = follower_with_log(2, 1, &[1], 0);
        core.step(msg(1, 2, 1, Body::Snapshot { snapshot }));
        assert_eq!(core.stats().invalid, 1);
        let out = core.take_output();
        assert!(out.write.is_none() && out.messages.is_empty(), "{out:?}");
    }
}

#[test]
fn an_inconsistent_restore_is_refused_not_panicked_on() {
    let bad_entries = Restore {
        entries: vec![cmd(2, 1, "gap")],
        ..Restore::bootstrap(voters(&[1]))
    };
    let bad_applied = Restore {
        applied: 3,
        ..Restore::bootstrap(voters(&[1]))
    };
    for restore in [bad_entries, bad_applied] {
        let r = Core::new(Config::new(1), restore, 0);
        assert!(matches!(r, Err(CoreError::BadRestore(_))), "{r:?}");
    }
}

/// SplitMix64, for tests that need a stream of arbitrary numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn small(&mut self) -> u64 {
        match self.below(4) {
            0 => 0,
            1 => self.below(4),
            2 => self.below(20),
            _ => self.next(),
        }
    }
}

fn arbitrary_membership(rng: &mut Rng) -> Membership {
    let voters: Vec<NodeId> = (0..rng.below(3)).map(|_| rng.small()).collect();
    let learners: Vec<NodeId> = (0..rng.below(2)).map(|_| rng.small()).collect();
    Membership::new(voters, learners)
}

fn arbitrary_message(rng: &mut Rng, to: NodeId) -> Message {
    let entries = |rng: &mut Rng| -> Vec<Entry> {
        (0..rng.below(4))
            .map(|_| Entry {
                index: rng.small(),
                term: rng.small(),
                payload: match rng.below(3) {
                    0 => Payload::Noop,
                    1 => Payload::Command(Bytes::from_static(b"x")),
                    _ => Payload::Membership(arbitrary_membership(rng)),
                },
            })
            .collect()
    };
    let body = match rng.below(12) {
        0 => Body::PreVote {
            last_index: rng.small(),
            last_term: rng.small(),
        },
        1 => Body::PreVoteResponse {
            granted: rng.below(2) == 0,
        },
        2 => Body::Vote {
            last_index: rng.small(),
            last_term: rng.small(),
            transfer: rng.below(2) == 0,
        },
        3 => Body::VoteResponse {
            granted: rng.below(2) == 0,
        },
        4 => Body::Append {
            prev_index: rng.small(),
            prev_term: rng.small(),
            entries: entries(rng),
            commit: rng.small(),
            lease_tick: rng.small(),
            read_seq: rng.small(),
        },
        5 => Body::AppendResponse {
            result: if rng.below(2) == 0 {
                AppendResult::Accepted { index: rng.small() }
            } else {
                AppendResult::Rejected {
                    rejected: rng.small(),
                    hint_index: rng.small(),
                    hint_term: rng.small(),
                }
            },
            lease_tick: rng.small(),
            read_seq: rng.small(),
        },
        6 => Body::Heartbeat {
            commit: rng.small(),
            lease_tick: rng.small(),
            read_seq: rng.small(),
        },
        7 => Body::HeartbeatResponse {
            lease_tick: rng.small(),
            read_seq: rng.small(),
        },
        8 => Body::Snapshot {
            snapshot: SnapshotMeta {
                index: rng.small(),
                term: rng.small(),
                membership: arbitrary_membership(rng),
            },
        },
        9 => Body::TimeoutNow {
            last_index: rng.small(),
        },
        10 => Body::ReadIndex {
            id: rng.small(),
            lease: rng.below(2) == 0,
        },
        _ => Body::ReadIndexResponse {
            id: rng.small(),
            index: if rng.below(2) == 0 {
                Some(rng.small())
            } else {
                None
            },
        },
    };
    Message {
        from: rng.below(6),
        to: if rng.below(10) == 0 { rng.small() } else { to },
        term: rng.small(),
        body,
    }
}

#[test]
fn arbitrary_messages_never_panic_a_core_in_any_role() {
    for seed in 0..300 {
        let mut rng = Rng(seed);
        let mut c = cluster_led_by_1();
        c.propose(1, &["a", "b"]).expect("the leader");
        c.deliver_all();
        for _ in 0..40 {
            let to = 1 + rng.below(3);
            let m = arbitrary_message(&mut rng, to);
            let misaddressed = m.to != to || m.from == to || m.from == 0;
            let before = c.core(to).stats().misaddressed;
            c.with_core(to, |core| core.step(m));
            if misaddressed {
                assert_eq!(c.core(to).stats().misaddressed, before + 1);
            }
            if rng.below(4) == 0 {
                c.tick_all();
            }
            if rng.below(3) == 0 {
                c.deliver_all();
            }
        }
        // Arbitrary input may break safety for everyone (it can forge a leader), so only the
        // absence of panics is checked here.
        c.take_trace();
    }
}

// ---------------------------------------------------------------- random faults

/// Runs a five-node cluster through random ticks, deliveries in any order, losses, duplicates,
/// partitions, crashes (losing unpersisted writes), slow disks, proposals, reads, transfers,
/// step-downs, forced campaigns, membership changes and compactions, with random settings
/// (pre-vote, check-quorum, leases, heartbeat, window, append size). After every step it runs the
/// driver's safety checks, plus linearizability of reads: a read may not return an index below
/// any commit index some node knew when the read was issued.
fn random_run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let check_quorum = rng.below(4) > 0;
    let mut c = Cluster::new(Options {
        voters: vec![1, 2, 3],
        learners: vec![4, 5],
        pre_vote: rng.below(4) > 0,
        check_quorum,
        lease_reads: check_quorum && rng.below(3) > 0,
        heartbeat_ticks: 1 + rng.below(3) as u32,
        max_inflight_appends: 1 + rng.below(4) as usize,
        max_append_bytes: [1, 60, 1 << 20][rng.below(3) as usize],
        seed,
        ..Options::default()
    });
    let ids: Vec<NodeId> = vec![1, 2, 3, 4, 5];
    let mut read_floor: BTreeMap<(NodeId, u64), Index> = BTreeMap::new();
    let mut seen_reads: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut next_read = 1;
    let mut commands = 0;
    let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
    for step in 0..steps {
        let action = rng.below(100);
        match action {
            0..=29 => c.tick_all(),
            30..=59 if !c.net.is_empty() => {
                let k = rng.below(c.net.len() as u64) as usize;
                c.deliver_at(k);
            }
            60..=63 if !c.net.is_empty() => {
                let k = rng.below(c.net.len() as u64) as usize;
                c.drop_at(k);
            }
            64..=65 if !c.net.is_empty() => {
                let k = rng.below(c.net.len() as u64) as usize;
                c.duplicate_at(k);
            }
            66..=72 => {
                let n = match c.leader() {
                    Some(l) if rng.below(2) == 0 => l,
                    _ => pick(&mut rng),
                };
                if c.is_up(n) {
                    commands += 1;
                    let _ = c.propose(n, &[&format!("c{commands}")]);
                }
            }
            73..=76 => {
                let n = pick(&mut rng);
                if c.is_up(n) {
                    let floor = c
                        .live_ids()
                        .iter()
                        .map(|&i| c.core(i).commit_index())
                        .max()
                        .unwrap_or(0);
                    read_floor.insert((n, next_read), floor);
                    let mode = if rng.below(2) == 0 {
                        ReadMode::Lease
                    } else {
                        ReadMode::Quorum
                    };
                    c.read(n, next_read, mode);
                    next_read += 1;
                }
            }
            77 => {
                let n = pick(&mut rng);
                let down = ids.iter().filter(|&&i| !c.is_up(i)).count();
                if c.is_up(n) && down < 2 {
                    c.crash(n);
                }
            }
            78..=79 => {
                let n = pick(&mut rng);
                if !c.is_up(n) {
                    c.restart(n);
                }
            }
            80 => {
                let mut a = BTreeSet::new();
                for &i in &ids {
                    if rng.below(2) == 0 {
                        a.insert(i);
                    }
                }
                c.partition(vec![a]);
            }
            81..=82 => c.heal(),
            83 => {
                let n = pick(&mut rng);
                let to = pick(&mut rng);
                if c.is_up(n) {
                    let _ = c.with_core(n, |core| core.transfer_leadership(to));
                }
            }
            84 => {
                let n = pick(&mut rng);
                if c.is_up(n) {
                    c.hold(n);
                }
            }
            85..=86 => {
                let n = pick(&mut rng);
                if c.is_up(n) {
                    c.release(n);
                }
            }
            87 => {
                let n = pick(&mut rng);
                if c.is_up(n) {
                    let mut voters = BTreeSet::new();
                    for &i in &ids {
                        if rng.below(3) > 0 {
                            voters.insert(i);
                        }
                    }
                    if voters.len() >= 2 {
                        let learners: Vec<NodeId> = ids
                            .iter()
                            .copied()
                            .filter(|i| !voters.contains(i))
                            .collect();
                        let target = Membership::new(voters, learners);
                        let _ = c.with_core(n, |core| core.propose_membership(&target));
                    }
                }
            }
            88 => {
                let n = pick(&mut rng);
                if c.is_up(n) && !c.node(n).hold {
                    let applied = c.core(n).applied_index();
                    if applied > 0 {
                        let at = 1 + rng.below(applied);
                        c.compact(n, at).expect("applied entries can be compacted");
                    }
                }
            }
            // Forced campaigns too while lease reads are on: a node that honours a leader's
            // lease refuses them (see a_lease_read_is_never_stale_even_after_a_forced_campaign).
            89..=90 => {
                let n = pick(&mut rng);
                if c.is_up(n) {
                    let _ = c.campaign(n);
                }
            }
            91 => {
                let n = pick(&mut rng);
                if c.is_up(n) {
                    let _ = c.with_core(n, |core| core.step_down());
                }
            }
            _ => c.deliver_all(),
        }
        c.check_invariants();
        for &n in &ids {
            let reads = c.node(n).reads.clone();
            let seen = seen_reads.entry(n).or_insert(0);
            for r in &reads[*seen..] {
                if let (Ok(index), Some(&floor)) = (r.index, read_floor.get(&(n, r.id))) {
                    if index < floor {
                        c.violations.push(format!(
                            "read {} on {n} returned index {index}, below commit index {floor} \
                             known when it was issued",
                            r.id
                        ));
                    }
                }
            }
            *seen = reads.len();
        }
        if !c.violations.is_empty() {
            let trace = c.take_trace();
            let tail = trace[trace.len().saturating_sub(60)..].join("\n");
            panic!(
                "seed {seed}, step {step} (action {action}): {:#?}\nlast trace lines:\n{tail}",
                c.violations
            );
        }
        c.take_trace();
    }
    // Liveness once the faults stop: a leader emerges and commits a new command.
    c.heal();
    for &n in &ids {
        if !c.is_up(n) {
            c.restart(n);
        }
        c.release(n);
    }
    let mut done = false;
    for _ in 0..300 {
        c.tick_all();
        c.deliver_all();
        if let Some(l) = c.leader() {
            if let Ok((index, _)) = c.propose(l, &["final"]) {
                for _ in 0..50 {
                    c.tick_all();
                    c.deliver_all();
                }
                done = c.core(l).applied_index() >= index;
                break;
            }
        }
    }
    c.check_invariants();
    assert!(c.violations.is_empty(), "seed {seed}: {:#?}", c.violations);
    assert!(
        done,
        "seed {seed}: no leader committed a command after the faults stopped"
    );
}

#[test]
fn raft_safety_holds_under_random_faults() {
    let seeds: u64 = std::env::var("KEEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 0..seeds {
        random_run(seed, 2000);
    }
}
