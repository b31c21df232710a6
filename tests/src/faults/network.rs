//! The peers' network: a [`Proxy`] for every pair of nodes, and partitions composed from them.
//!
//! Raft traffic between nodes `a < b` flows only through the proxy of `{a, b}` (the lower id
//! dials); key-value clients reach nodes directly, so a client can still talk to a leader that its
//! peers cannot: which is what makes an isolated leader dangerous.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use keel_engine::core::NodeId;

use super::proxy::{Direction, LinkFaults, Proxy, ProxyStats};

/// Every pair's proxy, by `(low, high)`.
#[derive(Debug)]
pub struct Network {
    proxies: BTreeMap<(NodeId, NodeId), Proxy>,
}

impl Network {
    /// Proxies for every pair of `nodes` (id to real address), listening on `ip`.
    pub fn start(
        nodes: &BTreeMap<NodeId, SocketAddr>,
        ip: IpAddr,
        seed: u64,
    ) -> std::io::Result<Network> {
        let mut proxies = BTreeMap::new();
        for &a in nodes.keys() {
            for (&b, &target) in nodes.range(a + 1..) {
                let port = 7000 + u16::try_from(a * 32 + b).expect("node ids below 32");
                let listen = SocketAddr::new(ip, port);
                let proxy = Proxy::start(listen, target, seed ^ (a << 8) ^ b)?;
                proxies.insert((a, b), proxy);
            }
        }
        Ok(Network { proxies })
    }

    /// Where `from` sends to reach `to`: the pair's proxy when `from` dials, else `to` itself
    /// (then the address is only ever given to clients in leader hints).
    pub fn peer_addr(&self, from: NodeId, to: NodeId) -> Option<SocketAddr> {
        (from < to).then(|| self.proxies.get(&(from, to)).map(Proxy::addr))?
    }

    /// Sets what happens to datagrams from `from` to `to`.
    pub fn set_link(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        let (key, direction) = if from < to {
            ((from, to), Direction::Forward)
        } else {
            ((to, from), Direction::Backward)
        };
        if let Some(proxy) = self.proxies.get(&key) {
            proxy.set(direction, faults);
        }
    }

    /// The same faults on every link, both ways.
    pub fn set_all(&self, faults: LinkFaults) {
        for proxy in self.proxies.values() {
            proxy.set_both(faults);
        }
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        self.set_all(LinkFaults::NONE);
    }

    /// Nodes in different groups cannot reach each other; links within a group are untouched.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.set_link(x, y, LinkFaults::BLOCKED);
                        self.set_link(y, x, LinkFaults::BLOCKED);
                    }
                }
            }
        }
    }

    /// `node` can neither reach nor be reached by any peer.
    pub fn isolate(&self, node: NodeId, all: &[NodeId]) {
        let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != node).collect();
        self.partition(&[&[node], &others]);
    }

    /// Two sides that cannot reach each other, and `bridge` that reaches both: it sees (and can
    /// win) both sides' elections.
    pub fn bridge(&self, left: &[NodeId], bridge: NodeId, right: &[NodeId]) {
        self.partition(&[left, right]);
        for &n in left.iter().chain(right) {
            self.set_link(n, bridge, LinkFaults::NONE);
            self.set_link(bridge, n, LinkFaults::NONE);
        }
    }

    /// `from` can no longer reach any of `to`, which still reach it.
    pub fn cut_one_way(&self, from: NodeId, to: &[NodeId]) {
        for &t in to {
            self.set_link(from, t, LinkFaults::BLOCKED);
        }
    }

    /// Datagrams relayed, dropped, duplicated and delayed, summed over every proxy.
    pub fn stats(&self) -> ProxyStats {
        self.proxies
            .values()
            .map(Proxy::stats)
            .fold(ProxyStats::default(), |a, s| ProxyStats {
                relayed: a.relayed + s.relayed,
                dropped: a.dropped + s.dropped,
                duplicated: a.duplicated + s.duplicated,
                delayed: a.delayed + s.delayed,
            })
    }

    /// Each blocked link as `from->to`, for reports.
    pub fn describe_blocks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (&(a, b), proxy) in &self.proxies {
            if proxy.faults(Direction::Forward).blocked {
                out.push(format!("{a}->{b}"));
            }
            if proxy.faults(Direction::Backward).blocked {
                out.push(format!("{b}->{a}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test its own address: the proxies' ports are fixed.
    fn three(test: u8) -> Network {
        let nodes: BTreeMap<NodeId, SocketAddr> = (1..=3)
            .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 9))))
            .collect();
        let pid = (std::process::id() % 250) as u8;
        Network::start(&nodes, IpAddr::from([127, 254, pid, test]), 7).expect("proxies")
    }

    #[test]
    fn only_the_lower_id_dials_through_a_proxy() {
        let net = three(1);
        assert!(net.peer_addr(1, 2).is_some());
        assert_eq!(net.peer_addr(2, 1), None);
        assert_ne!(net.peer_addr(1, 3), net.peer_addr(2, 3));
    }

    #[test]
    fn partitions_compose_from_blocked_links() {
        let net = three(2);
        net.isolate(2, &[1, 2, 3]);
        assert_eq!(net.describe_blocks(), ["1->2", "2->1", "2->3", "3->2"]);
        net.heal();
        net.bridge(&[1], 2, &[3]);
        assert_eq!(net.describe_blocks(), ["1->3", "3->1"]);
        net.heal();
        net.cut_one_way(3, &[1, 2]);
        assert_eq!(net.describe_blocks(), ["3->1", "3->2"]);
    }
}
