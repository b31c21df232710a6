//! The multi-machine modes end to end on loopback: `certs`, three `node` processes from config
//! files, their admin commands, two concurrent `load` runs against them and a `merge` of what
//! those wrote. And config files that are wrong: the error names the field or the path.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keel-bench");

/// A node process, killed when dropped so a failing test leaves nothing running.
struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    fn start(config: &Path, log: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("keel-bench node starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut node = Self {
            child,
            stdin,
            stdout,
        };
        let ready = node.line();
        assert_eq!(ready["event"], "ready", "{ready}");
        node
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reads stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn admin(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").expect("writes stdin");
        self.line()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Free UDP ports on 127.0.0.1 (taken and released: a tiny race, fine on a test machine).
fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("binds"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("bound").port())
        .collect()
}

fn node_config(dir: &Path, id: u64, ports: &[u16]) -> String {
    let peers: String = (1..=ports.len() as u64)
        .filter(|&p| p != id)
        .map(|p| format!("\"{p}\" = \"127.0.0.1:{}\"\n", ports[p as usize - 1]))
        .collect();
    let certs = dir.join("certs");
    format!(
        r#"data_dir = "{data}"
listen = "127.0.0.1:{port}"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[peers]
{peers}
[node]
id = {id}
voters = [1, 2, 3]
election_timeout = "300ms"
"#,
        data = dir.join(format!("data-{id}")).display(),
        port = ports[id as usize - 1],
        ca = certs.join("ca.pem").display(),
        cert = certs.join(format!("node-{id}.pem")).display(),
        key = certs.join(format!("node-{id}-key.pem")).display(),
    )
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn nodes_from_config_files_serve_remote_loads_whose_histograms_merge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let (ok, _, err) = run(&[
        "certs",
        "--out",
        path(&certs),
        "--nodes",
        "1,2,3",
        "--hosts",
        "127.0.0.1,127.0.0.1,127.0.0.1",
    ]);
    assert!(ok, "{err}");
    let ports = free_ports(3);
    let mut nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| {
            let config = dir.path().join(format!("node-{id}.toml"));
            std::fs::write(&config, node_config(dir.path(), id, &ports)).expect("config");
            NodeProcess::start(&config, &dir.path().join(format!("node-{id}.log")))
        })
        .collect();

    // A leader within a few election timeouts, known to all.
    let mut leader = None;
    for _ in 0..100 {
        let status = nodes[0].admin("status");
        assert_eq!(status["ok"], true, "{status}");
        if let Some(l) = status["leader"].as_u64() {
            leader = Some(l);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let leader = leader.expect("a leader is elected");

    let targets = (1..=3)
        .map(|id| format!("{id}=127.0.0.1:{}", ports[id - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let loader = |name: &str| {
        let histogram = dir.path().join(format!("{name}.hist.json"));
        let json = dir.path().join(format!("{name}.json"));
        let child = Command::new(BIN)
            .args(["load", "--targets", &targets, "--certs", path(&certs)])
            .args(["--duration", "2s", "--clients", "8", "--read-ratio", "0.25"])
            .args(["--histogram", path(&histogram), "--json", path(&json)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("keel-bench load starts");
        (child, histogram, json)
    };
    let loads = [loader("a"), loader("b")];
    let mut histograms: Vec<PathBuf> = Vec::new();
    let mut acknowledged = 0;
    for (child, histogram, json) in loads {
        let out = child.wait_with_output().expect("load finishes");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
        assert!(report["ok"].as_u64().expect("ok") > 0, "{report}");
        assert_eq!(report["verification_failures"], 0, "{report}");
        assert!(
            report["verified_keys"].as_u64().expect("keys") > 0,
            "{report}"
        );
        assert!(
            report["fdatasync"].is_null() && report["fdatasync_append"].is_null(),
            "a remote load cannot see the disk"
        );
        acknowledged += report["ok"].as_u64().expect("ok");
        histograms.push(histogram);
    }

    let merged_json = dir.path().join("merged.json");
    let mut args = vec!["merge"];
    args.extend(histograms.iter().map(|h| path(h)));
    args.extend(["--json", path(&merged_json)]);
    let (ok, stdout, err) = run(&args);
    assert!(ok, "{err}");
    assert!(stdout.contains("Latency distribution"), "{stdout}");
    let merged: Value =
        serde_json::from_str(&std::fs::read_to_string(&merged_json).expect("merged"))
            .expect("json");
    assert_eq!(merged["ok"].as_u64(), Some(acknowledged), "{merged}");
    assert_eq!(merged["latency"]["count"].as_u64(), Some(acknowledged));
    assert_eq!(merged["clients"], 16, "{merged}");

    // Admin: a barrier, a leadership transfer, and every node's state agrees.
    let l = leader as usize - 1;
    let barrier = nodes[l].admin("barrier");
    assert_eq!(barrier["ok"], true, "{barrier}");
    let to = if leader == 1 { 2 } else { 1 };
    let transferred = nodes[l].admin(&format!("transfer {to}"));
    assert_eq!(transferred["ok"], true, "{transferred}");
    let mut new_leader = None;
    for _ in 0..100 {
        if nodes[to as usize - 1].admin("status")["role"] == "leader" {
            new_leader = Some(to);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(new_leader, Some(to), "the transfer completes");
    let barrier = nodes[to as usize - 1].admin("barrier");
    assert_eq!(barrier["ok"], true, "{barrier}");
    let mut digests = Vec::new();
    for _ in 0..100 {
        digests = nodes.iter_mut().map(|n| n.admin("digest")).collect();
        if digests
            .windows(2)
            .all(|w| w[0]["applied"] == w[1]["applied"])
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "every node applied the same state: {digests:?}"
    );
    let refused = nodes[0].admin("transfer");
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused["error"]
        .as_str()
        .expect("error")
        .contains("node id"));
}

#[test]
fn config_errors_name_the_field_or_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    assert!(run(&["certs", "--out", path(&certs), "--nodes", "1,2,3"]).0);
    let good = node_config(dir.path(), 1, &[7001, 7002, 7003]);
    let cases = [
        (
            good.replace(
                "election_timeout = \"300ms\"",
                "election_timeout = \"soon\"",
            ),
            "election_timeout",
        ),
        (good.replace("listen =", "lissen ="), "lissen"),
        (good.replace("listen = \"127.0.0.1:7001\"\n", ""), "listen"),
        (good.replace("\"2\" =", "\"two\" ="), "two"),
        (good.replace("node-1.pem", "missing.pem"), "missing.pem"),
        (good.replace("ca.pem", "nowhere/ca.pem"), "nowhere/ca.pem"),
    ];
    for (i, (config, named)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, config).expect("config");
        let (ok, _, err) = run(&["node", "--config", path(&file)]);
        assert!(!ok, "case {i} starts a node");
        assert!(
            err.contains(named) && err.contains(&format!("bad-{i}.toml")),
            "case {i}: the error names {named:?} and the file: {err}"
        );
    }
}
