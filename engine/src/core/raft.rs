//! The Raft state machine of one node.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::log::RaftLog;
use super::quorum::VoteResult;
use super::read::ReadQueue;
use super::rng::SplitMix64;
use super::unsynced::{self, UnsyncedWrites};
use super::{
    AppendResult, Body, Config, ConfigError, Entry, HardState, Index, Membership, MembershipError,
    Message, NodeId, Output, Payload, Progress, ProgressState, ReadId, ReadResult, ReleasedEntries,
    SnapshotMeta, SoftState, Stats, Term, Write,
};

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: the term has not been raised yet.
    PreCandidate,
    Candidate,
    Leader,
}

/// How a read is confirmed on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// One heartbeat round to a quorum (ReadIndex, thesis 6.4).
    Quorum,
    /// No round trip while the leader lease holds; falls back to a quorum round otherwise.
    Lease,
}

/// The durable state a core starts from.
#[derive(Clone, Debug, Default)]
pub struct Restore {
    pub hard_state: HardState,
    /// The log starts after this snapshot; for a new cluster, index 0 with the initial members.
    pub snapshot: SnapshotMeta,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The index the state machine had applied (at least the snapshot's).
    pub applied: Index,
}

impl Restore {
    /// A brand-new member of a brand-new cluster whose initial membership is `membership`.
    pub fn bootstrap(membership: Membership) -> Self {
        Self {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            },
            ..Self::default()
        }
    }

    /// A node that will join an existing cluster: it knows no members, never campaigns, and waits
    /// for a leader to replicate the membership that includes it (a standby).
    pub fn joining() -> Self {
        Self::default()
    }
}

/// Entries in one probing append, at most (beyond one entry, which always goes): enough to
/// find where the logs agree; the pipeline that follows sends full-sized appends.
const PROBE_APPEND_BYTES_MAX: usize = 64 * 1024;

/// What [`Core::compact`] did.
#[derive(Debug)]
pub struct Compaction {
    /// The snapshot that now stands for the removed entries.
    pub snapshot: SnapshotMeta,
    /// The entries removed. Dropping many at once frees as many buffers, which takes long
    /// enough (hundreds of milliseconds for most of a million) to delay heartbeats: the caller
    /// chooses where that happens.
    pub released: ReleasedEntries,
}

/// Why the core refused a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("not the leader (leader hint {leader:?}, term {term})")]
    NotLeader { leader: Option<NodeId>, term: Term },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("a membership change is still being committed")]
    MembershipChangePending,
    #[error("a new leader changes membership only once an entry of its own term has committed")]
    NotCommittedInTerm,
    #[error("node {0} does not vote in the current membership")]
    NotAVoter(NodeId),
    #[error("node {0} votes only in the configuration being left")]
    LeavingVoter(NodeId),
    #[error("cannot transfer leadership to node {0}")]
    BadTransferTarget(NodeId),
    #[error("nothing to propose")]
    EmptyProposal,
    #[error("this node heard from a leader within the election timeout and honours its lease")]
    LeaseHeld,
    #[error(
        "cannot compact to {index}: only applied entries can be compacted (applied {applied})"
    )]
    CompactBeyondApplied { index: Index, applied: Index },
    #[error("restored state is inconsistent: {0}")]
    BadRestore(&'static str),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    elapsed_ticks: u32,
}

/// A member whose removal committed, still sent entries until it holds the removal, and then
/// its commit, so that it learns it is out (or until `until_tick`, if it never answers).
#[derive(Clone, Copy, Debug)]
struct Farewell {
    removal: Index,
    until_tick: u64,
}

/// One node's Raft state machine. See the [module documentation](crate::core) for the contract.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    id: NodeId,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// The latest membership in the log (it takes effect when appended) and where it was.
    membership: Membership,
    membership_index: Index,
    /// Leader only: every member but this node, and the members an uncommitted change removes
    /// (sent the change and its commit, counted in no quorum).
    progress: BTreeMap<NodeId, Progress>,
    /// Candidate and pre-candidate: the answers so far.
    votes: BTreeMap<NodeId, bool>,
    election_elapsed_ticks: u32,
    election_timeout_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    /// Ticks since a leader (or this node as leader) last showed it was alive. Starts at zero, so
    /// a node that restarts keeps any lease promise it made before the crash.
    leader_contact_elapsed_ticks: u32,
    /// Monotonic tick counter; the leader lease is measured on it. Starts at 1: 0 means "never".
    clock_ticks: u64,
    applied: Index,
    transfer: Option<Transfer>,
    /// Leader only: removed members not yet told of their removal's commit.
    farewells: BTreeMap<NodeId, Farewell>,
    /// False while this node leads a term that may not be durable yet: a sole voter elects
    /// itself before its vote is written, and must not send entries of a term it could lead again,
    /// differently, after a crash. Its messages wait for the write until then.
    leader_term_durable: bool,
    /// Set once this leader sent TimeoutNow: another node may win an election without waiting
    /// for the lease to expire, so no lease read may be served for the rest of this term.
    lease_revoked: bool,
    reads: ReadQueue,
    rng: SplitMix64,
    out: Output,
    /// The last hard state handed out in a write.
    hard_state_written: HardState,
    unsynced: UnsyncedWrites,
    soft_state_reported: SoftState,
    stats: Stats,
}

impl Core {
    /// A core starting from `restore`, drawing election timeouts from `seed`.
    pub fn new(cfg: Config, restore: Restore, seed: u64) -> Result<Self, CoreError> {
        cfg.validate()?;
        let Restore {
            hard_state,
            snapshot,
            entries,
            applied,
        } = restore;
        let mut last_term = snapshot.term;
        for (expected, e) in (snapshot.index + 1..).zip(&entries) {
            if e.index != expected {
                return Err(CoreError::BadRestore(
                    "entries are not contiguous after the snapshot",
                ));
            }
            if e.term < last_term {
                return Err(CoreError::BadRestore("entry terms decrease"));
            }
            last_term = e.term;
        }
        // A write torn after its entries but before its hard state leaves entries of a term the
        // hard state never recorded. Whether this node voted in that term (or led it, if it was
        // the only voter) is lost, so it resumes in that term as if it had voted for itself:
        // refusing to vote once more is always safe.
        let hard_state = if hard_state.term < last_term {
            HardState {
                term: last_term,
                vote: Some(cfg.id),
                ..hard_state
            }
        } else {
            hard_state
        };
        if applied < snapshot.index || applied > snapshot.index + entries.len() as u64 {
            return Err(CoreError::BadRestore(
                "applied index outside the restored log",
            ));
        }
        let commit = hard_state.commit.max(applied);
        let mut log = RaftLog::restore(snapshot, entries, commit);
        log.applying = applied;
        let (membership_index, membership) = log.latest_membership();
        let (membership_index, membership) = (membership_index, membership.clone());
        let mut rng = SplitMix64::new(seed ^ cfg.id.rotate_left(32));
        let election_timeout_ticks = Self::draw_timeout(&mut rng, cfg.election_ticks);
        let soft = SoftState {
            role: Role::Follower,
            leader: None,
            term: hard_state.term,
        };
        Ok(Self {
            id: cfg.id,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            membership,
            membership_index,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed_ticks: 0,
            election_timeout_ticks,
            heartbeat_elapsed_ticks: 0,
            leader_contact_elapsed_ticks: 0,
            clock_ticks: 1,
            applied,
            transfer: None,
            farewells: BTreeMap::new(),
            leader_term_durable: false,
            lease_revoked: false,
            reads: ReadQueue::default(),
            rng,
            out: Output::default(),
            hard_state_written: HardState {
                commit: hard_state.commit,
                ..hard_state
            },
            unsynced: UnsyncedWrites::default(),
            soft_state_reported: soft,
            stats: Stats::default(),
            cfg,
        })
    }

    fn draw_timeout(rng: &mut SplitMix64, election_ticks: u32) -> u32 {
        let ticks = rng.range(u64::from(election_ticks), 2 * u64::from(election_ticks));
        u32::try_from(ticks).expect("below 2 * u32 election ticks")
    }

    // ---------------------------------------------------------------- observers

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }
    pub fn persisted_index(&self) -> Index {
        self.log.persisted
    }
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    /// The term of the entry at `index`, if the log still holds it (or it is the snapshot's).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    pub fn snapshot(&self) -> &SnapshotMeta {
        self.log.snapshot()
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// Where [`Core::membership`] comes from: the index of its entry (or of the snapshot that
    /// holds it). It is in force for good once the commit index reaches this.
    pub fn membership_index(&self) -> Index {
        self.membership_index
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Leader only: replication progress of every other member, and of the members an
    /// uncommitted change removes.
    pub fn progress(&self) -> impl Iterator<Item = (NodeId, &Progress)> {
        self.progress.iter().map(|(&id, p)| (id, p))
    }
    /// The node a leadership transfer is heading to, if one is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.to)
    }

    // ---------------------------------------------------------------- inputs

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.clock_ticks += 1;
        self.leader_contact_elapsed_ticks = self.leader_contact_elapsed_ticks.saturating_add(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);
            if self.election_elapsed_ticks >= self.election_timeout_ticks && self.can_campaign() {
                self.start_election(false);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        for pr in self.progress.values_mut() {
            if !pr.inflight.is_empty() {
                pr.stalled_ticks = pr.stalled_ticks.saturating_add(1);
            }
        }
        let clock = self.clock_ticks;
        let silent: Vec<NodeId> = (self.farewells.iter())
            .filter(|(_, f)| clock >= f.until_tick)
            .map(|(&id, _)| id)
            .collect();
        for id in silent {
            // Never answered: let go all the same.
            self.farewells.remove(&id);
            self.progress.remove(&id);
        }
        if let Some(t) = &mut self.transfer {
            t.elapsed_ticks += 1;
            if t.elapsed_ticks >= self.cfg.election_ticks {
                self.transfer = None;
                // A joint configuration that committed during the transfer is left now.
                self.after_membership_commit();
            }
        }
        if self.election_elapsed_ticks >= self.cfg.election_ticks {
            self.election_elapsed_ticks = 0;
            if self.cfg.check_quorum {
                if !self.quorum_recently_active() {
                    self.stats.check_quorum_step_downs += 1;
                    self.become_follower(self.term, None);
                    self.reset_election_timer();
                    return;
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
        }
        if self.heartbeat_elapsed_ticks >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.heartbeat_all();
        }
    }

    /// Handles one message from another node.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id || m.from == 0 {
            self.stats.misaddressed += 1;
            return;
        }
        if let Body::PreVote { .. } | Body::Vote { .. } = m.body {
            // The lease is a promise to grant no vote until it runs out, whatever the term: a
            // node can reach a newer term without a leader (a stale vote answer from a
            // candidate) and keep the promise it made to the leader before. Only the vote
            // already cast in this term may be granted again.
            let transfer = matches!(m.body, Body::Vote { transfer: true, .. });
            let cast = m.term == self.term && self.vote == Some(m.from);
            if m.term >= self.term && self.in_lease() && !transfer && !cast {
                self.stats.votes_ignored_in_lease += 1;
                return;
            }
        }
        if m.term > self.term {
            match m.body {
                // A pre-vote never changes anyone's term; a granted response carries the term
                // the pre-candidate asked about.
                Body::PreVote { .. } | Body::PreVoteResponse { granted: true } => {}
                _ => {
                    let leader = m.body.is_from_leader().then_some(m.from);
                    self.become_follower(m.term, leader);
                }
            }
        } else if m.term < self.term {
            self.stats.stale_term += 1;
            match m.body {
                // A read asked at an older term is served all the same: the leader confirms
                // its leadership after the read arrived, whatever term the asker knew.
                Body::ReadIndex { .. } => return self.dispatch(m),
                // An answer from a leader of an older term fails the read at once (the asker
                // retries where its hint says), where dropping it left the read to time out.
                Body::ReadIndexResponse { id, .. } => self.out.reads.push(ReadResult {
                    id,
                    index: Err(self.leader),
                }),
                // Tell a deposed leader (or a pre-candidate) about the newer term.
                Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => self.send(
                    m.from,
                    Body::HeartbeatResponse {
                        lease_tick: 0,
                        read_seq: 0,
                    },
                ),
                // Figure 2: reply false with the current term, so a candidate stuck in an old
                // term learns of the newer one and its next campaign can win.
                Body::PreVote { .. } => self.send(m.from, Body::PreVoteResponse { granted: false }),
                Body::Vote { .. } => self.send(m.from, Body::VoteResponse { granted: false }),
                _ => {}
            }
            return;
        }
        self.dispatch(m);
    }

    fn dispatch(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            Body::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(from, m.term, last_index, last_term, true),
            Body::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(from, m.term, last_index, last_term, false),
            Body::PreVoteResponse { granted } => {
                let current = if granted { self.term + 1 } else { self.term };
                if self.role == Role::PreCandidate && m.term == current {
                    self.tally(from, granted);
                }
            }
            Body::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.tally(from, granted);
                }
            }
            Body::Append { .. }
            | Body::Heartbeat { .. }
            | Body::Snapshot { .. }
            | Body::TimeoutNow { .. } => {
                if !self.accept_leader(from) {
                    return;
                }
                match m.body {
                    Body::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                        lease_tick,
                        read_seq,
                    } => self.handle_append(
                        from, prev_index, prev_term, entries, commit, lease_tick, read_seq,
                    ),
                    Body::Heartbeat {
                        commit,
                        lease_tick,
                        read_seq,
                    } => {
                        let commit = commit.min(self.log.last_index());
                        self.commit_to(commit);
                        self.send(
                            from,
                            Body::HeartbeatResponse {
                                lease_tick,
                                read_seq,
                            },
                        );
                    }
                    Body::Snapshot { snapshot } => self.handle_snapshot(from, snapshot),
                    Body::TimeoutNow { last_index } => {
                        if self.can_campaign() && !self.outlived_its_transfer(last_index, m.term) {
                            self.start_election(true);
                        }
                    }
                    _ => unreachable!("the outer match lets only leader messages in"),
                }
            }
            Body::AppendResponse {
                result,
                lease_tick,
                read_seq,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, result, lease_tick, read_seq);
                }
            }
            Body::HeartbeatResponse {
                lease_tick,
                read_seq,
            } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, lease_tick, read_seq);
                }
            }
            Body::ReadIndex { id, lease } => {
                if self.role == Role::Leader {
                    let mode = if lease {
                        ReadMode::Lease
                    } else {
                        ReadMode::Quorum
                    };
                    self.leader_read(id, from, mode);
                } else {
                    self.send(from, Body::ReadIndexResponse { id, index: None });
                }
            }
            Body::ReadIndexResponse { id, index } => {
                let index = index.ok_or(self.leader);
                self.out.reads.push(ReadResult { id, index });
            }
        }
    }

    /// Proposes commands; they occupy consecutive indexes from the returned one, in `term`.
    pub fn propose(
        &mut self,
        commands: impl IntoIterator<Item = Bytes>,
    ) -> Result<(Index, Term), CoreError> {
        self.ensure_leader_accepting()?;
        let payloads: Vec<Payload> = commands.into_iter().map(Payload::Command).collect();
        if payloads.is_empty() {
            return Err(CoreError::EmptyProposal);
        }
        Ok((self.append_as_leader(payloads), self.term))
    }

    /// Proposes an empty entry: once it commits, everything proposed before it has committed.
    pub fn propose_barrier(&mut self) -> Result<(Index, Term), CoreError> {
        self.ensure_leader_accepting()?;
        Ok((self.append_as_leader(vec![Payload::Noop]), self.term))
    }

    /// Proposes moving to `target` (its `outgoing` is ignored): one step when at most one voter
    /// changes, joint consensus otherwise (left automatically once committed).
    pub fn propose_membership(&mut self, target: &Membership) -> Result<Index, CoreError> {
        self.ensure_leader_accepting()?;
        if self.membership_index > self.log.committed {
            return Err(CoreError::MembershipChangePending);
        }
        // Until its no-op commits, a new leader cannot tell whether a change appended in an
        // earlier term (on a log its own replaced) was in force somewhere: a one-step change
        // proposed now could commit under one configuration while a leader of that other one
        // commits something else at the same index (Ongaro, raft-dev, 2015).
        if !self.committed_in_term() {
            return Err(CoreError::NotCommittedInTerm);
        }
        let next = self.membership.plan_change(target)?;
        Ok(self.append_as_leader(vec![Payload::Membership(next)]))
    }

    /// Starts a read: its index arrives in a later [`Output::reads`]. On a follower the request
    /// is forwarded to the leader.
    pub fn read_index(&mut self, id: ReadId, mode: ReadMode) {
        match (self.role, self.leader) {
            (Role::Leader, _) => self.leader_read(id, self.id, mode),
            (_, Some(leader)) => self.send(
                leader,
                Body::ReadIndex {
                    id,
                    lease: mode == ReadMode::Lease,
                },
            ),
            (_, None) => self.out.reads.push(ReadResult {
                id,
                index: Err(None),
            }),
        }
    }

    /// Hands leadership to `to`: catch it up, then tell it to campaign at once. Proposals are
    /// refused until the transfer ends; it is abandoned after an election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), CoreError> {
        self.ensure_leader()?;
        if to == self.id {
            return Err(CoreError::BadTransferTarget(to));
        }
        // A voter only of the half a joint configuration is leaving would lead just until the
        // configuration is left, then hand over again: two leader changes for one.
        if !self.membership.is_voter(to) {
            return Err(CoreError::NotAVoter(to));
        }
        if !self.membership.voters.contains(&to) {
            return Err(CoreError::LeavingVoter(to));
        }
        if let Some(under_way) = &self.transfer {
            // Asked again, a transfer keeps its deadline: a caller retrying in a loop held
            // proposals off (and a joint configuration unleft) for as long as it went on. To
            // another target it is refused: the first may have been told to campaign already,
            // and two campaigning at once split the vote.
            return if under_way.to == to {
                Ok(())
            } else {
                Err(CoreError::TransferInProgress)
            };
        }
        self.transfer = Some(Transfer {
            to,
            elapsed_ticks: 0,
        });
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, false);
        }
        Ok(())
    }

    /// Leader: hand leadership to the most up-to-date voter (of the configuration being
    /// entered, in a joint one).
    pub fn step_down(&mut self) -> Result<NodeId, CoreError> {
        self.ensure_leader()?;
        let best = self
            .progress
            .iter()
            .filter(|(id, _)| self.membership.voters.contains(id))
            .max_by_key(|(id, p)| (p.match_index, std::cmp::Reverse(**id)))
            .map(|(&id, _)| id)
            .ok_or(CoreError::BadTransferTarget(self.id))?;
        self.transfer_leadership(best)?;
        Ok(best)
    }

    /// Starts an election now (with a pre-vote round when configured).
    pub fn campaign(&mut self) -> Result<(), CoreError> {
        if !self.can_campaign() {
            return Err(CoreError::NotAVoter(self.id));
        }
        if self.role != Role::Leader && self.in_lease() {
            // Voting for itself now would break the lease this node promised its leader.
            return Err(CoreError::LeaseHeld);
        }
        if self.role != Role::Leader {
            self.start_election(false);
        }
        Ok(())
    }

    /// The log writer made the write whose [`Write::last_entry`] is (`index`, `term`) durable,
    /// with every write before it. Reported in the order the writes were handed out: a write
    /// still to come may overwrite these entries and write them again (see `unsynced`).
    pub fn persisted(&mut self, index: Index, term: Term) {
        let mut durable = self.unsynced.reported(index, term);
        // A truncation not handed out yet is no more durable.
        if let Some(from) = self.out.write.as_ref().and_then(unsynced::truncation) {
            durable = durable.min(from - 1);
        }
        if durable < index {
            // A later write, not durable yet, truncates this one's entries from `durable + 1`;
            // those before it are as this write left them.
            self.log.persisted = self.log.persisted.max(durable);
            return;
        }
        if index <= self.log.persisted || !self.log.matches(index, term) {
            return; // Stale: the entries were since overwritten or already reported.
        }
        self.log.persisted = index;
        if term == self.term {
            // The write holding this term's first entry also held the term and the vote.
            self.leader_term_durable = true;
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_commit();
        }
    }

    /// The state machine applied everything up to `index`.
    pub fn applied(&mut self, index: Index) {
        self.applied = self.applied.max(index.min(self.log.applying));
    }

    /// The caller made a snapshot of the state machine at `index` (applied): the log drops the
    /// entries it covers. Returns the snapshot's metadata, which the caller stores with its
    /// data, and the entries removed.
    pub fn compact(&mut self, index: Index) -> Result<Compaction, CoreError> {
        if index > self.applied {
            return Err(CoreError::CompactBeyondApplied {
                index,
                applied: self.applied,
            });
        }
        let (snapshot, released) = self.log.compact(index);
        Ok(Compaction { snapshot, released })
    }

    /// The transport finished (or failed) sending the snapshot at `index` to `to`. A report on
    /// another snapshot than the one `to` waits for changes nothing: one sent before this node
    /// lost and regained leadership can finish while a newer one streams, and taken for it, would
    /// have the leader probe, and send a snapshot again, before the newer one arrived.
    pub fn report_snapshot(&mut self, to: NodeId, index: Index, delivered: bool) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == (ProgressState::Snapshot { index }) {
                if !delivered {
                    pr.state = ProgressState::Probe;
                }
                pr.become_probe();
            }
        }
    }

    /// Takes what the caller must do now. Flushes a pending read round first.
    pub fn take_output(&mut self) -> Output {
        if self.role == Role::Leader && self.reads.round_needed {
            self.reads.start_round();
            let ids: Vec<NodeId> = self.progress.keys().copied().collect();
            for id in ids {
                self.send_heartbeat(id);
            }
            self.advance_reads();
        }
        let hs = self.hard_state();
        let wrote_log = self.out.write.as_ref().is_some_and(|w| {
            !w.entries.is_empty() || w.snapshot.is_some() || w.truncate_from.is_some()
        });
        let term_or_vote_changed =
            hs.term != self.hard_state_written.term || hs.vote != self.hard_state_written.vote;
        // The commit index rides along with writes that happen anyway: it need not be durable.
        if term_or_vote_changed || (wrote_log && hs.commit != self.hard_state_written.commit) {
            self.write_mut().hard_state = Some(hs);
            self.hard_state_written = hs;
        }
        if let Some(write) = &self.out.write {
            self.unsynced.handed_out(write);
        }
        self.out.committed = self.log.take_committed(self.cfg.max_apply_entries);
        let soft = self.soft_state();
        if soft != self.soft_state_reported {
            self.soft_state_reported = soft;
            self.out.soft_state = Some(soft);
        }
        std::mem::take(&mut self.out)
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// Whether a lease read would be served without a round trip right now.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || !self.cfg.lease_reads
            || self.transfer.is_some()
            || self.lease_revoked
            || !self.committed_in_term()
        {
            return false;
        }
        let acked = self.membership.quorum_value(|id| {
            if id == self.id {
                self.clock_ticks
            } else {
                self.progress.get(&id).map_or(0, |p| p.lease_tick_acked)
            }
        });
        let lease_ticks = u64::from(self.cfg.election_ticks - self.cfg.lease_drift_ticks);
        acked > 0 && self.clock_ticks < acked + lease_ticks
    }

    // ---------------------------------------------------------------- elections

    /// Whether a quorum answered since the last check-quorum round.
    fn quorum_recently_active(&self) -> bool {
        let active = |id| id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active);
        self.membership.quorum_value(|id| u64::from(active(id))) == 1
    }

    /// A voter of the latest membership may campaign; so may a voter of the one before it while
    /// the latest is uncommitted. Without the second rule, a leader that appended its own removal
    /// and then lost its quorum could hold the only log able to win while refusing to campaign.
    fn can_campaign(&self) -> bool {
        if self.membership.is_voter(self.id) {
            return true;
        }
        self.membership_index > self.log.committed
            && self
                .log
                .membership_before(self.membership_index - 1)
                .1
                .is_voter(self.id)
    }

    /// Whether this node still honours a leader: it then ignores vote requests (check-quorum).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.role == Role::Leader
                || self.leader_contact_elapsed_ticks < self.cfg.election_ticks)
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = Self::draw_timeout(&mut self.rng, self.cfg.election_ticks);
    }

    fn start_election(&mut self, transfer: bool) {
        self.reset_election_timer();
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.leave_leadership();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = BTreeMap::from([(self.id, true)]);
        self.stats.pre_elections_started += 1;
        let body = Body::PreVote {
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
        };
        for to in self.other_voters() {
            self.out.messages.push(Message {
                from: self.id,
                to,
                term: self.term + 1,
                body: body.clone(),
            });
        }
        self.check_votes();
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.leave_leadership();
        self.term += 1;
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = BTreeMap::from([(self.id, true)]);
        self.stats.elections_started += 1;
        let body = Body::Vote {
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        // The self-vote must be durable before it can help elect this node.
        for to in self.other_voters() {
            self.send_after_durable(to, body.clone());
        }
        self.check_votes();
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.membership
            .members()
            .filter(|&id| id != self.id && self.membership.is_voter(id))
            .collect()
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: Index,
        last_term: Term,
        pre: bool,
    ) {
        // A candidate this node does not know may come from a membership it has not seen yet:
        // Raft decides on term and log alone (removed nodes are kept quiet by the lease).
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        match (pre, granted) {
            (true, true) => self.out.messages.push(Message {
                from: self.id,
                to: from,
                term,
                body: Body::PreVoteResponse { granted: true },
            }),
            (true, false) => self.send(from, Body::PreVoteResponse { granted: false }),
            (false, true) => {
                self.vote = Some(from);
                self.reset_election_timer();
                self.send_after_durable(from, Body::VoteResponse { granted: true });
            }
            (false, false) => self.send(from, Body::VoteResponse { granted: false }),
        }
    }

    fn tally(&mut self, from: NodeId, granted: bool) {
        if !self.membership.is_voter(from) {
            self.stats.from_unknown_node += 1;
            return;
        }
        self.votes.insert(from, granted);
        self.check_votes();
    }

    fn check_votes(&mut self) {
        match self.membership.vote_result(&self.votes) {
            VoteResult::Pending => {}
            VoteResult::Lost => {
                self.become_follower(self.term, None);
                self.reset_election_timer();
            }
            VoteResult::Won if self.role == Role::PreCandidate => self.become_candidate(false),
            VoteResult::Won => self.become_leader(),
        }
    }

    /// A message only a leader sends arrived at our term: follow its sender.
    fn accept_leader(&mut self, from: NodeId) -> bool {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                self.stats.invalid += 1; // Two leaders in one term: the sender is broken.
                return false;
            }
            (Role::Follower, Some(l)) if l != from => {
                self.stats.invalid += 1;
                return false;
            }
            (Role::Follower, _) => self.leader = Some(from),
            _ => self.become_follower(self.term, Some(from)),
        }
        self.election_elapsed_ticks = 0;
        self.leader_contact_elapsed_ticks = 0;
        true
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        // Known before leaving: the reads that leadership fails carry it as their hint.
        self.leader = leader;
        self.leave_leadership();
        self.role = Role::Follower;
        self.votes.clear();
        self.heartbeat_elapsed_ticks = 0;
        // The election timer is left alone: only hearing from a leader or granting a vote resets
        // it (Figure 2). Otherwise a candidate with a stale log, whose requests only raise terms,
        // could keep resetting the timers of the nodes able to win, forever.
    }

    /// Leaves the leader role (if held): pending reads fail, progress is forgotten.
    fn leave_leadership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        // The lease this node granted itself as leader is a promise like any follower's; the
        // election timer restarts with it, so no tick-driven campaign fires inside the lease.
        self.leader_contact_elapsed_ticks = 0;
        self.reset_election_timer();
        self.progress.clear();
        self.farewells.clear();
        self.transfer = None;
        self.lease_revoked = false;
        for (id, origin) in self.reads.drain_all() {
            self.complete_read(id, origin, None);
        }
        self.reads = ReadQueue::default();
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        // With other voters, winning took their votes, which were requested only after this
        // node's own vote was durable.
        self.leader_term_durable = !self.other_voters().is_empty();
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.heartbeat_elapsed_ticks = 0;
        self.election_elapsed_ticks = 0;
        let next = self.log.last_index() + 1;
        // A removal appended in an earlier term is still sent to the members it removes.
        let removing = (self.membership_index > self.log.committed)
            .then(|| self.log.membership_before(self.membership_index - 1).1);
        self.progress = (self.membership.members())
            .chain(removing.into_iter().flat_map(Membership::members))
            .filter(|&id| id != self.id)
            .map(|id| (id, Progress::new(next)))
            .collect();
        self.append_as_leader(vec![Payload::Noop]);
    }

    // ---------------------------------------------------------------- replication (leader)

    fn ensure_leader(&self) -> Result<(), CoreError> {
        if self.role == Role::Leader {
            Ok(())
        } else {
            Err(CoreError::NotLeader {
                leader: self.leader,
                term: self.term,
            })
        }
    }

    fn ensure_leader_accepting(&self) -> Result<(), CoreError> {
        self.ensure_leader()?;
        if self.transfer.is_some() {
            return Err(CoreError::TransferInProgress);
        }
        Ok(())
    }

    /// Appends entries in the current term and starts replicating them. Returns the first index.
    fn append_as_leader(&mut self, payloads: Vec<Payload>) -> Index {
        let first = self.log.last_index() + 1;
        self.write_mut().entries.reserve(payloads.len());
        for (k, payload) in payloads.into_iter().enumerate() {
            self.append_local(Entry {
                index: first + k as u64,
                term: self.term,
                payload,
            });
        }
        self.broadcast_append();
        // A single voter commits as soon as its own write is durable; nothing else to wait for.
        first
    }

    fn broadcast_append(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            self.send_append(id, false);
        }
    }

    /// Tells followers about a new commit index: through the next append where one is due,
    /// otherwise with a heartbeat.
    fn broadcast_commit(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            if !self.send_append(id, false) {
                self.send_heartbeat(id);
            }
        }
    }

    /// Sends the next append to `to` if its progress allows. Returns whether one was sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused(self.cfg.max_inflight_appends, self.cfg.max_inflight_bytes) {
            return false;
        }
        let prev_index = pr.next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            // The entries it needs were compacted away: send the snapshot instead.
            let snapshot = self.log.snapshot().clone();
            pr.become_snapshot(snapshot.index);
            self.stats.snapshots_sent += 1;
            self.send(to, Body::Snapshot { snapshot });
            return true;
        };
        // A probe may be refused, and then its entries were sent for nothing: keep it small.
        let max_bytes = match pr.state {
            ProgressState::Probe => self.cfg.max_append_bytes.min(PROBE_APPEND_BYTES_MAX),
            _ => self.cfg.max_append_bytes,
        };
        let entries = self.log.slice(pr.next_index, max_bytes);
        if entries.is_empty() && !allow_empty && pr.state != ProgressState::Probe {
            return false;
        }
        let last = entries.last().map_or(prev_index, |e| e.index);
        pr.sent(last, entries.iter().map(Entry::size_bytes).sum());
        let body = Body::Append {
            prev_index,
            prev_term,
            entries,
            commit: self.log.committed,
            lease_tick: self.clock_ticks,
            read_seq: self.reads.sent_seq,
        };
        self.send(to, body);
        true
    }

    fn send_heartbeat(&mut self, to: NodeId) {
        let match_index = self.progress.get(&to).map_or(0, |p| p.match_index);
        let body = Body::Heartbeat {
            commit: match_index.min(self.log.committed),
            lease_tick: self.clock_ticks,
            read_seq: self.reads.sent_seq,
        };
        self.send(to, body);
    }

    /// The periodic heartbeat; also falls back to probing where a pipeline stalled. A probe is
    /// not resent here: the follower's answer to this heartbeat resends it (see
    /// `handle_heartbeat_response`), so a follower too busy to answer is not sent another
    /// append every heartbeat on top of the ones it has not read yet.
    fn heartbeat_all(&mut self) {
        if self.reads.round_needed {
            self.reads.start_round();
        }
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            let pr = self.progress.get_mut(&id).expect("id taken from the map");
            match pr.state {
                // Everything in flight may have been lost: fall back to probing from the match.
                ProgressState::Replicate if pr.stalled_ticks >= self.cfg.election_ticks => {
                    pr.become_probe();
                    self.send_append(id, true);
                }
                _ => {}
            }
            self.send_heartbeat(id);
        }
    }

    fn record_ack(&mut self, from: NodeId, lease_tick: u64, read_seq: u64) -> bool {
        let Some(pr) = self.progress.get_mut(&from) else {
            self.stats.from_unknown_node += 1;
            return false;
        };
        pr.recent_active = true;
        // Echoes may arrive out of order: only ever move forward, and never past what was sent.
        if lease_tick <= self.clock_ticks {
            pr.lease_tick_acked = pr.lease_tick_acked.max(lease_tick);
        }
        if read_seq <= self.reads.sent_seq {
            pr.read_seq_acked = pr.read_seq_acked.max(read_seq);
        }
        true
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, lease_tick: u64, read_seq: u64) {
        if !self.record_ack(from, lease_tick, read_seq) {
            return;
        }
        let pr = self.progress.get_mut(&from).expect("record_ack found it");
        if pr.match_index < self.log.last_index() {
            if pr.state == ProgressState::Probe {
                pr.probe_sent = false;
            }
            self.send_append(from, false);
        } else if self.transfer.is_some_and(|t| t.to == from) {
            // The target holds the whole log and still follows: its TimeoutNow was lost (a
            // transfer takes no proposals, so no append answer would send it again).
            self.send_timeout_now(from);
        }
        self.advance_reads();
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        result: AppendResult,
        lease_tick: u64,
        read_seq: u64,
    ) {
        if !self.record_ack(from, lease_tick, read_seq) {
            return;
        }
        let last_index = self.log.last_index();
        match result {
            AppendResult::Accepted { index } => {
                if index > last_index {
                    self.stats.invalid += 1;
                    return;
                }
                let pr = self.progress.get_mut(&from).expect("record_ack found it");
                let news = pr.on_accepted(index);
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot { index: snap } if pr.match_index >= snap => {
                        pr.become_replicate();
                    }
                    _ => {}
                }
                let caught_up = pr.match_index == last_index;
                if news && self.maybe_commit() {
                    self.broadcast_commit();
                }
                if caught_up && self.transfer.is_some_and(|t| t.to == from) {
                    self.send_timeout_now(from);
                }
                if self.farewells.contains_key(&from) {
                    self.bid_farewell(from);
                }
                // Fill the pipeline window (bounded by it).
                while self.send_append(from, false) {}
            }
            AppendResult::Rejected {
                rejected,
                hint_index,
                hint_term,
            } => {
                if rejected > last_index {
                    self.stats.invalid += 1;
                    return;
                }
                let hint_next = if hint_term > 0 {
                    self.log.find_conflict_by_term(hint_index, hint_term) + 1
                } else {
                    hint_index + 1
                };
                let pr = self.progress.get_mut(&from).expect("record_ack found it");
                if pr.on_rejected(rejected, hint_next) {
                    self.send_append(from, true);
                }
            }
        }
        self.advance_reads();
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_revoked = true;
        let last_index = self.log.last_index();
        self.send(to, Body::TimeoutNow { last_index });
    }

    /// Whether a TimeoutNow the leader of `term` sent with its log ending at `last_index` is
    /// known to come after its transfer ended: this log holds an entry of `term` after that
    /// index, or has compacted past it (committed entries, all in that leader's log). A leader
    /// appends nothing while it transfers (no proposals, barriers or membership changes; a joint
    /// configuration is left only after), so such an entry was appended once the transfer was
    /// given up. Campaigning on it would depose a leader nobody asks to go any more.
    fn outlived_its_transfer(&self, last_index: Index, term: Term) -> bool {
        let Some(next) = last_index.checked_add(1) else {
            return false;
        };
        self.log.snapshot().index > last_index || self.log.term(next) == Some(term)
    }

    /// Advances the commit index to what a quorum holds durably, for entries of this term only
    /// (Raft §5.4.2: counting replicas never commits an entry of an earlier term).
    fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.membership.quorum_value(|id| {
            if id == self.id {
                self.log.persisted
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if quorum_index <= self.log.committed || self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        let first_in_term = !self.committed_in_term();
        self.log.committed = quorum_index;
        if first_in_term {
            for (id, origin) in self.reads.take_waiting_for_commit() {
                self.leader_read(id, origin, ReadMode::Quorum);
            }
        }
        self.after_membership_commit();
        true
    }

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    /// Once the latest membership is committed: leave a joint configuration, or step down if
    /// this leader no longer votes.
    fn after_membership_commit(&mut self) {
        if self.role != Role::Leader || self.membership_index > self.log.committed {
            return;
        }
        let removed: Vec<NodeId> = (self.progress.keys().copied())
            .filter(|&id| !self.membership.contains(id) && !self.farewells.contains_key(&id))
            .collect();
        for id in removed {
            let farewell = Farewell {
                removal: self.membership_index,
                until_tick: self.clock_ticks + 2 * u64::from(self.cfg.election_ticks),
            };
            self.farewells.insert(id, farewell);
            self.bid_farewell(id);
        }
        if self.membership.is_joint() {
            if self.transfer.is_some() {
                // Not while a transfer runs: its target, told to campaign, may lack the entry,
                // and the nodes that hold it would refuse it their votes. Its election, or the
                // transfer's end, leaves the joint configuration.
                return;
            }
            let next = self.membership.leave_joint();
            self.append_as_leader(vec![Payload::Membership(next)]);
        } else if !self.membership.is_voter(self.id) {
            // Hand over so the cluster need not wait out a timeout: to the target of a transfer
            // under way if it holds the whole log (it may have been told to campaign already,
            // and two campaigning at once split the vote), else to the most up-to-date voter.
            // That one may lack the tail and lose, but no voter is known to hold more, and
            // without it the cluster waits for certain.
            let last = self.log.last_index();
            let transferring_to = (self.transfer.as_ref().map(|t| t.to)).filter(|to| {
                self.membership.is_voter(*to)
                    && self.progress.get(to).is_some_and(|p| p.match_index == last)
            });
            let to = transferring_to.or_else(|| {
                (self.progress.iter())
                    .filter(|(id, _)| self.membership.is_voter(**id))
                    .max_by_key(|(id, p)| (p.match_index, std::cmp::Reverse(**id)))
                    .map(|(&id, _)| id)
            });
            if let Some(to) = to {
                self.send_timeout_now(to);
            }
            self.become_follower(self.term, None);
            self.reset_election_timer();
        }
    }

    /// Tells a removed member its removal committed once it holds the removal, and lets it
    /// go; until then, sends it what it lacks.
    fn bid_farewell(&mut self, id: NodeId) {
        let Some(&Farewell { removal, .. }) = self.farewells.get(&id) else {
            return;
        };
        let holds_removal = self
            .progress
            .get(&id)
            .is_some_and(|p| p.match_index >= removal);
        if holds_removal {
            // Its commit, at least the removal's (`min(match, commit)`): it stops campaigning.
            self.send_heartbeat(id);
            self.progress.remove(&id);
            self.farewells.remove(&id);
        } else {
            self.send_append(id, true);
        }
    }

    // ---------------------------------------------------------------- replication (follower)

    #[allow(clippy::too_many_arguments)]
    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        mut entries: Vec<Entry>,
        commit: Index,
        lease_tick: u64,
        read_seq: u64,
    ) {
        if !self.append_is_well_formed(prev_index, prev_term, &entries) {
            self.stats.invalid += 1;
            return;
        }
        let (mut prev_index, mut prev_term) = (prev_index, prev_term);
        let rejected = prev_index;
        // Entries at or below our commit index are already here (committed entries are in every
        // later leader's log): skip them, so that a stale duplicate never looks like a conflict.
        if prev_index < self.log.committed {
            let skip = usize::try_from(self.log.committed - prev_index)
                .unwrap_or(usize::MAX)
                .min(entries.len());
            // Where the log still holds them, the skipped entries must be ours: a leader that
            // contradicts committed entries is broken, and acknowledging it would lie.
            let contradicts = entries[..skip]
                .iter()
                .chain(std::iter::once(&Entry {
                    index: prev_index,
                    term: prev_term,
                    payload: Payload::Noop,
                }))
                .any(|e| self.log.term(e.index).is_some_and(|t| t != e.term));
            if contradicts {
                self.stats.invalid += 1;
                return;
            }
            entries.drain(..skip);
            prev_index += skip as u64;
            prev_term = self.log.term(prev_index).unwrap_or(prev_term);
            if prev_index < self.log.committed && entries.is_empty() {
                // Everything in the message is committed here already.
                self.send_after_durable(
                    from,
                    Body::AppendResponse {
                        result: AppendResult::Accepted { index: prev_index },
                        lease_tick,
                        read_seq,
                    },
                );
                return;
            }
        }
        if !self.log.matches(prev_index, prev_term) {
            self.stats.appends_rejected += 1;
            let hint_index = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            let hint_term = self.log.term(hint_index).unwrap_or(0);
            let result = AppendResult::Rejected {
                rejected,
                hint_index,
                hint_term,
            };
            self.send(
                from,
                Body::AppendResponse {
                    result,
                    lease_tick,
                    read_seq,
                },
            );
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        if let Some(conflict) = self.log.find_conflict(&entries) {
            if conflict <= self.log.committed {
                self.stats.invalid += 1; // A leader contradicting committed entries: refuse.
                return;
            }
            if conflict <= self.log.last_index() {
                self.truncate_local(conflict);
            }
            let start = usize::try_from(conflict - prev_index - 1).expect("within the message");
            self.write_mut().entries.reserve(entries.len() - start);
            for entry in entries.drain(start..) {
                self.append_local(entry);
            }
        }
        self.commit_to(commit.min(last_new));
        self.send_after_durable(
            from,
            Body::AppendResponse {
                result: AppendResult::Accepted { index: last_new },
                lease_tick,
                read_seq,
            },
        );
    }

    /// Entries must continue `prev_index` one by one, with terms that never decrease and never
    /// exceed the sender's (our current) term.
    fn append_is_well_formed(&self, prev_index: Index, prev_term: Term, entries: &[Entry]) -> bool {
        let mut term = prev_term;
        for (k, e) in entries.iter().enumerate() {
            if e.index != prev_index + 1 + k as u64 || e.term < term || e.term > self.term {
                return false;
            }
            term = e.term;
        }
        prev_term <= self.term
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: SnapshotMeta) {
        let accepted = |index| Body::AppendResponse {
            result: AppendResult::Accepted { index },
            lease_tick: 0,
            read_seq: 0,
        };
        if snapshot.index <= self.log.committed {
            let committed = self.log.committed;
            self.send_after_durable(from, accepted(committed));
            return;
        }
        if snapshot.term > self.term || snapshot.membership.validate().is_err() {
            self.stats.invalid += 1;
            return;
        }
        if self.log.matches(snapshot.index, snapshot.term) {
            // We already hold the entries it covers: just learn that they are committed.
            self.commit_to(snapshot.index);
            self.send_after_durable(from, accepted(snapshot.index));
            return;
        }
        self.stats.snapshots_installed += 1;
        let index = snapshot.index;
        self.log.install(snapshot.clone());
        self.applied = index;
        self.membership = snapshot.membership.clone();
        self.membership_index = index;
        let w = self.write_mut();
        w.snapshot = Some(snapshot);
        w.truncate_from = None;
        w.entries.clear();
        self.send_after_durable(from, accepted(index));
    }

    fn commit_to(&mut self, index: Index) {
        if index > self.log.committed {
            debug_assert!(index <= self.log.last_index());
            self.log.committed = index;
        }
    }

    // ---------------------------------------------------------------- log changes

    /// Appends an entry to the log and the pending write; a membership takes effect at once.
    fn append_local(&mut self, entry: Entry) {
        if let Payload::Membership(m) = &entry.payload {
            self.set_membership(m.clone(), entry.index);
        }
        self.log.push(entry.clone());
        self.write_mut().entries.push(entry);
    }

    /// Removes entries from `index` on, in memory and (through the write) on disk.
    fn truncate_local(&mut self, index: Index) {
        self.log.truncate_from(index);
        let w = self.write_mut();
        let first_pending = w.entries.first().map(|e| e.index);
        w.entries.retain(|e| e.index < index);
        if first_pending.is_none_or(|first| index < first) {
            w.truncate_from = Some(w.truncate_from.map_or(index, |t| t.min(index)));
        }
        if self.membership_index >= index {
            let (at, m) = self.log.latest_membership();
            let m = m.clone();
            self.set_membership(m, at);
        }
    }

    fn set_membership(&mut self, membership: Membership, index: Index) {
        self.membership = membership;
        self.membership_index = index;
        if self.role == Role::Leader {
            // Members this change removes keep their progress until it commits: they are sent
            // the change and then its commit (see `after_membership_commit`), and so learn they
            // are out. Dropped at once, they never heard, and campaigned for good.
            let next = self.log.last_index() + 1;
            let members: Vec<NodeId> = self.membership.members().collect();
            // A member added back is no longer leaving.
            self.farewells.retain(|id, _| !members.contains(id));
            for id in members {
                if id != self.id {
                    self.progress.entry(id).or_insert_with(|| {
                        // Counted active in the check-quorum round under way, as etcd does: a
                        // member added near its end has had no time to answer, and a leader that
                        // added voters then found too few of them active and stepped down.
                        let mut added = Progress::new(next);
                        added.recent_active = true;
                        added
                    });
                }
            }
        }
    }

    // ---------------------------------------------------------------- reads

    fn leader_read(&mut self, id: ReadId, origin: NodeId, mode: ReadMode) {
        if !self.committed_in_term() {
            // The commit index is not known to be current until an entry of this term commits.
            self.reads.wait_for_commit(id, origin);
            return;
        }
        if mode == ReadMode::Lease && self.lease_valid() {
            self.stats.lease_reads += 1;
            self.complete_read(id, origin, Some(self.log.committed));
            return;
        }
        self.reads.push(id, origin, self.log.committed);
    }

    fn advance_reads(&mut self) {
        let confirmed = self.membership.quorum_value(|id| {
            if id == self.id {
                self.reads.sent_seq
            } else {
                self.progress.get(&id).map_or(0, |p| p.read_seq_acked)
            }
        });
        for read in self.reads.confirm(confirmed) {
            self.complete_read(read.id, read.origin, Some(read.index));
        }
    }

    fn complete_read(&mut self, id: ReadId, origin: NodeId, index: Option<Index>) {
        if origin == self.id {
            let index = index.ok_or(self.leader.filter(|&l| l != self.id));
            self.out.reads.push(ReadResult { id, index });
        } else {
            self.send(origin, Body::ReadIndexResponse { id, index });
        }
    }

    // ---------------------------------------------------------------- output helpers

    fn write_mut(&mut self) -> &mut Write {
        self.out.write.get_or_insert_with(Write::default)
    }

    fn send(&mut self, to: NodeId, body: Body) {
        if self.role == Role::Leader && !self.leader_term_durable {
            return self.send_after_durable(to, body);
        }
        self.out.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Queues a message that may only go out once every write so far is durable.
    fn send_after_durable(&mut self, to: NodeId, body: Body) {
        let m = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.write_mut().then_send.push(m);
    }
}
