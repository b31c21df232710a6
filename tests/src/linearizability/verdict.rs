//! What the check concludes, and how a failure reads.

use std::fmt;

use bytes::Bytes;

use super::history::{Operation, Status};
use super::render;

/// Whether a history is linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// A key's sub-history is not linearizable (the first such key in key order).
    NotLinearizable(Box<Violation>),
    /// No key failed, but these keys' searches ran out of step budget: they may or may not be
    /// linearizable.
    Unknown {
        keys: Vec<Bytes>,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Verdict::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

/// A key whose operations no order explains, with the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: Bytes,
    /// How many of the history's operations are on this key.
    pub key_operations: usize,
    /// The first operations to complete that no linearization explains (usually one; several
    /// only when they completed at the same instant). Everything that completed before them is
    /// linearizable (see `earliest`).
    pub culprits: Vec<Operation>,
    /// When the culprits completed. In the excerpt, operations still running then count as
    /// pending: their results play no part in the failure.
    pub failed_at_ns: u64,
    /// Everything that completed before `failed_at_ns` was shown linearizable. False only when
    /// the explaining ran out of budget: then the culprits fail, but an earlier failure may
    /// have gone unproven.
    pub earliest: bool,
    /// A small sub-history of the key, sorted by invocation, that is still not linearizable and
    /// still fails at the culprits. Writes of values it observes that were invoked only after
    /// the failure are included for context.
    pub excerpt: Vec<Operation>,
    /// The excerpt is 1-minimal: dropping any single operation would lose the failure. False
    /// when shrinking stopped at its step budget.
    pub minimal: bool,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable(violation) => write!(f, "{violation}"),
            Verdict::Unknown { keys } => {
                let keys: Vec<String> = keys.iter().map(|k| render::bytes(k)).collect();
                write!(
                    f,
                    "unknown: the search ran out of its step budget on key(s) {}",
                    keys.join(", ")
                )
            }
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable: key {} has no order of its operations that explains",
            render::bytes(&self.key)
        )?;
        for culprit in &self.culprits {
            writeln!(f, "  {}", render::one_line(culprit))?;
        }
        if self.earliest {
            write!(
                f,
                "Everything on the key that completed before {} ns is linearizable. ",
                self.failed_at_ns
            )?;
        }
        writeln!(
            f,
            "An excerpt of {} of its {} operations that still fails there{}:",
            self.excerpt.len(),
            self.key_operations,
            if self.minimal {
                " (1-minimal: no single operation can be dropped)"
            } else {
                " (shrinking stopped at its step budget)"
            }
        )?;
        writeln!(f)?;
        let table = render::table(&self.excerpt, |o| {
            let mark = if self.culprits.contains(o) { ">" } else { "" };
            let note = if o.invoked_ns > self.failed_at_ns {
                "(invoked after the failure)"
            } else if o.completed_ns > self.failed_at_ns && o.op.status() == Status::Ok {
                "(still running at the failure)"
            } else {
                ""
            };
            (mark, note)
        });
        write!(f, "{table}")?;
        if let Some(timeline) = render::timeline(&self.excerpt) {
            writeln!(f)?;
            writeln!(f, "  timeline (distinct instants, left to right):")?;
            write!(f, "{timeline}")?;
        }
        Ok(())
    }
}
