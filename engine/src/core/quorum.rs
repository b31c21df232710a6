//! Quorum arithmetic over a membership, joint or not.
//!
//! Every quorum decision in the core is one of two shapes: "the largest value a majority has
//! reached" (commit index, lease acknowledgement tick, read confirmation sequence) or "has a
//! majority said yes / no" (elections). Joint configurations need both halves to agree.

use std::collections::{BTreeMap, BTreeSet};

use super::{Membership, NodeId};

/// Outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Pending,
    Won,
    Lost,
}

/// The largest `v` such that a majority of `voters` has `value(id) >= v`. An empty set places no
/// constraint (`u64::MAX`), which is what the outgoing half of a non-joint membership needs.
fn majority_value(voters: &BTreeSet<NodeId>, value: &impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut values: Vec<u64> = voters.iter().map(|&id| value(id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

fn majority_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match votes.get(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let majority = voters.len() / 2 + 1;
    if granted >= majority {
        VoteResult::Won
    } else if granted + missing >= majority {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

impl Membership {
    /// The largest value reached by a quorum (both halves when joint).
    pub(crate) fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        majority_value(&self.voters, &value).min(majority_value(&self.outgoing, &value))
    }

    pub(crate) fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        match (
            majority_vote(&self.voters, votes),
            majority_vote(&self.outgoing, votes),
        ) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(NodeId, u64)]) -> impl Fn(NodeId) -> u64 + '_ {
        move |id| pairs.iter().find(|p| p.0 == id).map_or(0, |p| p.1)
    }

    #[test]
    fn majority_value_is_the_median_from_the_top() {
        let m = Membership::new([1, 2, 3], []);
        assert_eq!(m.quorum_value(values(&[(1, 5), (2, 3), (3, 1)])), 3);
        let m = Membership::new([1, 2, 3, 4], []);
        assert_eq!(m.quorum_value(values(&[(1, 5), (2, 3), (3, 1), (4, 9)])), 3);
    }

    #[test]
    fn learners_never_count() {
        let m = Membership::new([1, 2, 3], [4, 5]);
        assert_eq!(m.quorum_value(values(&[(1, 1), (4, 9), (5, 9)])), 0);
    }

    #[test]
    fn joint_needs_both_halves() {
        let m = Membership {
            voters: [4, 5, 6].into(),
            outgoing: [1, 2, 3].into(),
            learners: BTreeSet::new(),
        };
        // The old half is at 7 but the new half only reached 2.
        let v = values(&[(1, 7), (2, 7), (3, 7), (4, 2), (5, 2)]);
        assert_eq!(m.quorum_value(v), 2);
        let votes: BTreeMap<NodeId, bool> = [(1, true), (2, true), (4, true)].into();
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
        let votes: BTreeMap<NodeId, bool> = [(1, true), (2, true), (4, true), (5, true)].into();
        assert_eq!(m.vote_result(&votes), VoteResult::Won);
        let votes: BTreeMap<NodeId, bool> = [(1, true), (2, true), (4, false), (5, false)].into();
        assert_eq!(m.vote_result(&votes), VoteResult::Lost);
    }
}
