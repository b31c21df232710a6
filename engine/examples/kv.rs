//! A three-node replicated key-value store in one process: start, elect, write through any node,
//! read linearizably from every node, lose a node, keep going.
//!
//! Run with `cargo run --release -p keel-engine --example kv`.

use std::time::Duration;

use keel_engine::kv::{Consistency, KvStore};
use keel_engine::node::{MemNetwork, Node, NodeConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let timeout = Duration::from_secs(5);
    let dir = std::env::temp_dir().join(format!("keel-kv-example-{}", std::process::id()));
    let net = MemNetwork::new();
    let voters = [1, 2, 3];

    // Three nodes, each with its own log directory, talking over an in-memory network.
    let mut nodes = Vec::new();
    for id in voters {
        let config = NodeConfig::new(id, voters);
        let node = Node::start(
            config,
            dir.join(id.to_string()),
            net.transport(id),
            KvStore::default(),
        )?;
        nodes.push(node);
    }
    let leader = nodes[0].wait_for_leader(timeout)?;
    println!("node {leader} leads");

    // Writes go through any node: followers forward them to the leader.
    for (i, node) in nodes.iter().enumerate() {
        let index = node.put(
            format!("key-{i}"),
            format!("written via node {}", node.id()),
            timeout,
        )?;
        println!(
            "put key-{i} through node {} committed at index {index}",
            node.id()
        );
    }

    // Linearizable reads from every node: each sees every write acknowledged before it.
    for node in &nodes {
        let value = node.get(b"key-2", Consistency::Linearizable, timeout)?;
        println!(
            "node {} reads key-2 = {:?}",
            node.id(),
            String::from_utf8_lossy(&value)
        );
    }

    // Stop the leader: the other two elect a new one and keep serving.
    let old = nodes
        .iter()
        .position(|n| n.id() == leader)
        .expect("the leader is one of them");
    nodes.remove(old).stop();
    let survivor = &nodes[0];
    let deadline = std::time::Instant::now() + timeout;
    while survivor.leader().is_none_or(|l| l == leader) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "node {} leads after node {leader} stopped",
        survivor.wait_for_leader(timeout)?
    );
    survivor.put("after-failover", "still here", timeout)?;
    let value = survivor.get(b"after-failover", Consistency::Linearizable, timeout)?;
    println!("after failover: {:?}", String::from_utf8_lossy(&value));

    for node in &nodes {
        node.stop();
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
