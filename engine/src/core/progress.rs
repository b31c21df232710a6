//! The leader's view of one follower: how much of the log it holds and how to send it more.

use std::collections::VecDeque;

use super::Index;

/// How the leader is currently replicating to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The match point is unknown: one append at a time until the follower accepts one.
    Probe,
    /// The follower is known to match: appends stream optimistically, up to a window in flight.
    Replicate,
    /// The follower needs the snapshot at `index`; nothing else is sent until it is reported.
    Snapshot { index: Index },
}

/// Replication progress of one member, kept by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The highest index known to be durable on the follower and to match the leader's log.
    pub match_index: Index,
    /// The next index to send.
    pub next_index: Index,
    pub state: ProgressState,
    /// Probe: an append is outstanding; wait for its answer or the next heartbeat.
    pub(crate) probe_sent: bool,
    /// Replicate: the last index and the entry bytes of each append in flight, oldest first.
    pub(crate) inflight: VecDeque<(Index, usize)>,
    /// Replicate: the sum of the bytes in `inflight`.
    pub(crate) inflight_bytes: usize,
    /// Heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// Ticks since the follower last acknowledged new entries while some were in flight.
    pub(crate) stalled_ticks: u32,
    /// The latest leader send tick this follower echoed (lease).
    pub(crate) lease_tick_acked: u64,
    /// The latest read sequence this follower echoed (ReadIndex).
    pub(crate) read_seq_acked: u64,
}

impl Progress {
    pub(crate) fn new(next_index: Index) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            stalled_ticks: 0,
            lease_tick_acked: 0,
            read_seq_acked: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.next_index = match self.state {
            // After a snapshot the follower should hold everything up to it.
            ProgressState::Snapshot { index } => (self.match_index + 1).max(index + 1),
            _ => self.match_index + 1,
        };
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_ticks = 0;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_ticks = 0;
    }

    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_ticks = 0;
    }

    /// Whether the leader must hold further appends for now: the window is full in messages
    /// or in bytes.
    pub(crate) fn is_paused(&self, max_inflight: usize, max_inflight_bytes: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflight.len() >= max_inflight || self.inflight_bytes >= max_inflight_bytes
            }
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records that an append ending at `last_index`, with `bytes` of entries, was sent.
    pub(crate) fn sent(&mut self, last_index: Index, bytes: usize) {
        match self.state {
            ProgressState::Replicate => {
                if last_index >= self.next_index {
                    self.next_index = last_index + 1;
                    self.inflight.push_back((last_index, bytes));
                    self.inflight_bytes += bytes;
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The follower holds the log up to `index`. Returns whether this was news.
    pub(crate) fn on_accepted(&mut self, index: Index) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.stalled_ticks = 0;
        }
        self.next_index = self.next_index.max(index + 1);
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        self.probe_sent = false;
        news
    }

    /// The follower's log lacks the entry at `rejected`; `hint_next` is where the leader thinks
    /// the logs may agree plus one. Returns false for a stale rejection.
    pub(crate) fn on_rejected(&mut self, rejected: Index, hint_next: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = hint_next.min(rejected).max(self.match_index + 1);
                true
            }
            ProgressState::Probe => {
                if self.next_index.saturating_sub(1) != rejected {
                    return false;
                }
                self.next_index = hint_next.min(rejected).max(self.match_index + 1);
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_when_full_and_frees_on_ack() {
        let mut p = Progress::new(1);
        p.become_replicate();
        p.sent(5, 10);
        p.sent(9, 10);
        assert!(p.is_paused(2, usize::MAX));
        assert!(p.on_accepted(5));
        assert!(!p.is_paused(2, usize::MAX));
        assert_eq!(p.next_index, 10);
    }

    #[test]
    fn replicate_window_pauses_when_its_bytes_are_in_flight() {
        let mut p = Progress::new(1);
        p.become_replicate();
        assert!(!p.is_paused(64, 100), "an empty window always sends");
        p.sent(5, 150);
        assert!(p.is_paused(64, 100), "one append over the limit fills it");
        assert!(p.on_accepted(5));
        p.sent(6, 60);
        assert!(!p.is_paused(64, 100));
        p.sent(7, 40);
        assert!(p.is_paused(64, 100));
        assert!(p.on_accepted(6));
        assert!(!p.is_paused(64, 100));
        p.become_probe();
        assert_eq!(p.inflight_bytes, 0);
    }

    #[test]
    fn probe_sends_one_append_at_a_time() {
        let mut p = Progress::new(10);
        p.sent(12, 0);
        assert!(p.is_paused(64, usize::MAX));
        assert_eq!(
            p.next_index, 10,
            "probe does not advance next optimistically"
        );
        assert!(p.on_rejected(9, 4));
        assert_eq!(p.next_index, 4);
        assert!(!p.is_paused(64, usize::MAX));
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10);
        assert!(!p.on_rejected(5, 1), "probe at 9, rejection of 5 is stale");
        p.on_accepted(7);
        p.become_replicate();
        assert!(!p.on_rejected(7, 1), "at or below match");
    }
}
