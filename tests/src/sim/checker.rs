//! The safety properties checked after every step of a simulation.
//!
//! Every check is incremental, so a run costs about as much to check as to simulate:
//! - election safety: at most one leader per term;
//! - log matching: an (index, term) pair names one entry with one predecessor term on every disk,
//!   which by induction makes logs that share an entry identical up to it;
//! - leader completeness: a new leader's log holds every entry known committed;
//! - state machine safety: every node commits the same entry at an index, and every node's
//!   applied sequence is a prefix of one sequence (a hash chain compared per index);
//! - linearizable reads: a read observes every write acknowledged, and every read completed,
//!   before it began.

use std::collections::{BTreeMap, HashMap};

use keel_engine::core::{Core, Entry, Index, NodeId, Term};

use super::state_machine::fingerprint;

pub(crate) type Violation = String;

#[derive(Debug, Default)]
pub(crate) struct Checker {
    leaders: HashMap<Term, NodeId>,
    /// (index, term) -> (fingerprint, term of the entry before it).
    entries_seen: HashMap<(Index, Term), (u64, Option<Term>)>,
    /// Entries known committed: index -> (term, fingerprint).
    committed: BTreeMap<Index, (Term, u64)>,
    /// The state machine hash after applying each index.
    applied_hash: HashMap<Index, u64>,
    /// The largest index a client has seen: acknowledged writes and completed reads.
    observed_floor: Index,
}

impl Checker {
    pub(crate) fn on_leader(&mut self, term: Term, id: NodeId) -> Result<(), Violation> {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => Err(format!(
                "election safety: nodes {other} and {id} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// A node's disk made `entry` durable right after an entry of `prev_term`.
    pub(crate) fn on_entry_durable(
        &mut self,
        node: NodeId,
        entry: &Entry,
        prev_term: Option<Term>,
    ) -> Result<(), Violation> {
        let seen = (fingerprint(entry), prev_term);
        let Some(&(fp, prev)) = self.entries_seen.get(&(entry.index, entry.term)) else {
            self.entries_seen.insert((entry.index, entry.term), seen);
            return Ok(());
        };
        if fp != seen.0 {
            return Err(format!(
                "log matching: node {node} holds a different entry at index {} term {}",
                entry.index, entry.term
            ));
        }
        if let (Some(a), Some(b)) = (prev, prev_term) {
            if a != b {
                return Err(format!(
                    "log matching: node {node} holds ({}, {}) after term {b}, another node after term {a}",
                    entry.index, entry.term
                ));
            }
        }
        Ok(())
    }

    /// `core` commits (lo, hi]: its entries there must be the ones committed everywhere.
    pub(crate) fn on_commit(
        &mut self,
        node: NodeId,
        core: &Core,
        lo: Index,
        hi: Index,
    ) -> Result<(), Violation> {
        for index in lo + 1..=hi {
            let Some(e) = core.entry(index) else { continue };
            let this = (e.term, fingerprint(e));
            match self.committed.get(&index) {
                None => {
                    self.committed.insert(index, this);
                }
                Some(&known) if known != this => {
                    return Err(format!(
                        "state machine safety: node {node} committed term {} at index {index}, \
                         but term {} was committed there before",
                        this.0, known.0
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A node just became leader: it must hold every committed entry it has not compacted.
    pub(crate) fn on_leader_elected(&self, node: NodeId, core: &Core) -> Result<(), Violation> {
        let from = core.first_index();
        for (&index, &(term, fp)) in self.committed.range(from..) {
            match core.entry(index) {
                Some(e) if e.term == term && fingerprint(e) == fp => {}
                other => {
                    return Err(format!(
                        "leader completeness: node {node} leads term {} without committed entry \
                         ({index}, term {term}); it holds {:?}",
                        core.term(),
                        other.map(|e| e.term)
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn on_apply(
        &mut self,
        node: NodeId,
        applied_before: Index,
        entry: &Entry,
        hash: u64,
    ) -> Result<(), Violation> {
        if entry.index != applied_before + 1 {
            return Err(format!(
                "apply order: node {node} applied index {} after {applied_before}",
                entry.index
            ));
        }
        match self.applied_hash.get(&entry.index) {
            None => {
                self.applied_hash.insert(entry.index, hash);
                Ok(())
            }
            Some(&h) if h == hash => Ok(()),
            Some(_) => Err(format!(
                "state machine safety: node {node}'s applied sequence diverges at index {}",
                entry.index
            )),
        }
    }

    /// A client saw its write at `index` acknowledged.
    pub(crate) fn on_write_acknowledged(&mut self, index: Index) {
        self.observed_floor = self.observed_floor.max(index);
    }

    /// What a read beginning now must observe at least.
    pub(crate) fn read_floor(&self) -> Index {
        self.observed_floor
    }

    /// A read that began when the floor was `floor` was served at applied index `served`.
    pub(crate) fn on_read_served(
        &mut self,
        node: NodeId,
        floor: Index,
        served: Index,
    ) -> Result<(), Violation> {
        if served < floor {
            return Err(format!(
                "linearizability: node {node} served a read at index {served}, but index {floor} \
                 was acknowledged before the read began"
            ));
        }
        self.observed_floor = self.observed_floor.max(served);
        Ok(())
    }
}
