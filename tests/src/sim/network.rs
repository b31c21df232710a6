//! A seeded network that delays, drops, duplicates, reorders and partitions messages.

use std::collections::BTreeSet;

use keel_engine::core::NodeId;
use rand::Rng;

/// Network behaviour for one run, drawn from its seed.
#[derive(Clone, Debug)]
pub(crate) struct NetworkProfile {
    pub(crate) drop_probability: f64,
    pub(crate) duplicate_probability: f64,
    /// A message is held back this long with `long_delay_probability` (reordering it).
    pub(crate) long_delay_probability: f64,
    pub(crate) delay_min: u64,
    pub(crate) delay_max: u64,
    pub(crate) long_delay_max: u64,
}

impl NetworkProfile {
    pub(crate) fn random(rng: &mut impl Rng) -> Self {
        Self {
            drop_probability: [0.0, 0.01, 0.05, 0.15][rng.random_range(0..4)],
            duplicate_probability: [0.0, 0.02][rng.random_range(0..2)],
            long_delay_probability: [0.0, 0.03, 0.1][rng.random_range(0..3)],
            delay_min: 1,
            delay_max: rng.random_range(5..60),
            long_delay_max: 400,
        }
    }

    /// A healed, reliable network for the liveness phase.
    pub(crate) fn reliable() -> Self {
        Self {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            long_delay_probability: 0.0,
            delay_min: 1,
            delay_max: 20,
            long_delay_max: 20,
        }
    }

    /// The delivery delays for one message: empty if dropped, two if duplicated.
    pub(crate) fn delays(&self, rng: &mut impl Rng) -> Vec<u64> {
        if rng.random_bool(self.drop_probability) {
            return Vec::new();
        }
        let copies = if rng.random_bool(self.duplicate_probability) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                if rng.random_bool(self.long_delay_probability) {
                    rng.random_range(self.delay_max..=self.long_delay_max)
                } else {
                    rng.random_range(self.delay_min..=self.delay_max)
                }
            })
            .collect()
    }
}

/// Directed links currently cut. Several partitions may overlap; each heals on its own.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    active: Vec<(u64, BTreeSet<(NodeId, NodeId)>)>,
    next_id: u64,
}

impl Partitions {
    /// Cuts every link from a node in `from` to a node in `to`; returns an id to heal it by.
    pub(crate) fn cut(&mut self, from: &[NodeId], to: &[NodeId], both_ways: bool) -> u64 {
        let mut links = BTreeSet::new();
        for &a in from {
            for &b in to {
                if a != b {
                    links.insert((a, b));
                    if both_ways {
                        links.insert((b, a));
                    }
                }
            }
        }
        self.next_id += 1;
        self.active.push((self.next_id, links));
        self.next_id
    }

    pub(crate) fn heal(&mut self, id: u64) {
        self.active.retain(|(i, _)| *i != id);
    }

    pub(crate) fn heal_all(&mut self) {
        self.active.clear();
    }

    pub(crate) fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.active
            .iter()
            .any(|(_, links)| links.contains(&(from, to)))
    }
}
