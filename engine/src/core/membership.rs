//! Cluster membership: voters, learners, and the joint configuration used while voters change.

use std::collections::BTreeSet;

use super::NodeId;

/// A membership configuration.
///
/// Outside a change, `outgoing` is empty and decisions need a majority of `voters`. During a joint
/// change (C_old,new), decisions need a majority of `voters` (the incoming set) *and* of `outgoing`
/// (the old set). Learners receive the log but never vote and never count. A node may be an
/// outgoing voter and a learner at once: it is being demoted and keeps voting until the joint
/// configuration is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub outgoing: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// Why a membership change cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("a membership needs at least one voter")]
    NoVoters,
    #[error("node {0} cannot be both voter and learner")]
    VoterAndLearner(NodeId),
    #[error("node id 0 is reserved")]
    ReservedId,
    #[error("the membership is joint; the change in progress must finish first")]
    InJointConsensus,
    #[error("the requested membership equals the current one")]
    Unchanged,
}

impl Membership {
    /// A plain (non-joint) membership.
    pub fn new(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            outgoing: BTreeSet::new(),
            learners: learners.into_iter().collect(),
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every node that receives the log: voters of both halves and learners, sorted, unique.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let all: BTreeSet<NodeId> = self
            .voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect();
        all.into_iter()
    }

    /// Checks a target (non-joint) membership on its own.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if self.members().any(|id| id == 0) {
            return Err(MembershipError::ReservedId);
        }
        if let Some(&id) = self.voters.intersection(&self.learners).next() {
            return Err(MembershipError::VoterAndLearner(id));
        }
        Ok(())
    }

    /// The configuration to append to move from `self` toward `target`.
    ///
    /// A change of at most one voter is safe in a single step (any majority of the old set and
    /// any majority of the new set intersect); anything larger goes through the joint
    /// configuration, which the leader leaves automatically once it is committed.
    pub fn plan_change(&self, target: &Membership) -> Result<Membership, MembershipError> {
        if self.is_joint() {
            return Err(MembershipError::InJointConsensus);
        }
        let target = Membership {
            voters: target.voters.clone(),
            outgoing: BTreeSet::new(),
            learners: target.learners.clone(),
        };
        target.validate()?;
        if target == *self {
            return Err(MembershipError::Unchanged);
        }
        let voters_changed = self.voters.symmetric_difference(&target.voters).count();
        if voters_changed <= 1 {
            return Ok(target);
        }
        Ok(Membership {
            outgoing: self.voters.clone(),
            ..target
        })
    }

    /// The configuration that ends a joint change: the incoming half alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            outgoing: BTreeSet::new(),
            learners: self.learners.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_one_voter_is_a_single_step() {
        let cur = Membership::new([1, 2, 3], []);
        let next = cur.plan_change(&Membership::new([1, 2, 3, 4], [])).unwrap();
        assert!(!next.is_joint());
        assert_eq!(next.voters.len(), 4);
    }

    #[test]
    fn replacing_a_voter_goes_through_joint_consensus() {
        let cur = Membership::new([1, 2, 3], []);
        let next = cur.plan_change(&Membership::new([1, 2, 4], [])).unwrap();
        assert!(next.is_joint());
        assert_eq!(next.outgoing, cur.voters);
        assert_eq!(next.leave_joint(), Membership::new([1, 2, 4], []));
    }

    #[test]
    fn demoting_a_voter_to_learner_keeps_it_voting_while_joint() {
        let cur = Membership::new([1, 2, 3], []);
        let next = cur.plan_change(&Membership::new([1, 4], [3])).unwrap();
        assert!(next.is_joint());
        assert!(next.is_voter(3), "outgoing voter still votes");
        assert!(!next.leave_joint().is_voter(3));
        assert!(next.leave_joint().learners.contains(&3));
    }

    #[test]
    fn invalid_targets_are_refused() {
        let cur = Membership::new([1, 2, 3], []);
        assert_eq!(
            cur.plan_change(&Membership::new([], [1])),
            Err(MembershipError::NoVoters)
        );
        assert_eq!(
            cur.plan_change(&Membership::new([1, 2], [2])),
            Err(MembershipError::VoterAndLearner(2))
        );
        assert_eq!(cur.plan_change(&cur), Err(MembershipError::Unchanged));
        let joint = cur.plan_change(&Membership::new([4, 5, 6], [])).unwrap();
        assert_eq!(
            joint.plan_change(&Membership::new([1], [])),
            Err(MembershipError::InJointConsensus)
        );
    }
}
