//! The writes handed out and not yet reported durable, kept so that a durability report is read
//! against the log as it was when its write was made.
//!
//! [`super::Core::persisted`] names the last entry of the write that became durable. That entry
//! may since have been overwritten and written again by a later write still in flight (the same
//! index and term, from a leader of a later term that sent it again): the report then matches
//! the log, but the disk still has the overwriting write to come, and a crash after it would
//! leave the entry gone. Reports come in write order, so every write before the reported one is
//! durable, with its truncation; a truncation in a write after it is not (nor a snapshot install,
//! which replaces the whole log), and nothing the reported write holds at or past that truncation
//! counts as durable yet.

use std::collections::VecDeque;

use super::{Index, Term, Write};

/// One write handed out: what its report will name, and where it truncated the log.
#[derive(Debug)]
struct Unsynced {
    reports: Option<(Index, Term)>,
    truncate_from: Option<Index>,
}

/// Where `write` cuts the log: a snapshot it installs replaces all of it.
pub(crate) fn truncation(write: &Write) -> Option<Index> {
    if write.snapshot.is_some() {
        Some(1)
    } else {
        write.truncate_from
    }
}

#[derive(Debug, Default)]
pub(crate) struct UnsyncedWrites {
    writes: VecDeque<Unsynced>,
}

impl UnsyncedWrites {
    /// A write was handed out. Only those that change the log matter: the rest are never
    /// reported, and change nothing a report could be read against.
    pub(crate) fn handed_out(&mut self, write: &Write) {
        let reports = write.last_entry();
        let truncate_from = truncation(write);
        if reports.is_some() || truncate_from.is_some() {
            self.writes.push_back(Unsynced {
                reports,
                truncate_from,
            });
        }
    }

    /// The write reporting `(index, term)` is durable, and so is every write before it. Returns
    /// the highest index of it that is durable as the log stands: below the first truncation
    /// in a write after it. A report that names no write handed out (out of order, or from
    /// before a restart) is taken as it is.
    pub(crate) fn reported(&mut self, index: Index, term: Term) -> Index {
        let Some(at) = self
            .writes
            .iter()
            .position(|w| w.reports == Some((index, term)))
        else {
            return index;
        };
        self.writes.drain(..=at);
        self.writes
            .iter()
            .filter_map(|w| w.truncate_from)
            .map(|from| from - 1)
            .fold(index, Index::min)
    }
}
