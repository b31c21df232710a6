//! keel-bench: starts a local cluster, runs a load against it, and reports latency and throughput
//! next to the machine's raw fdatasync latency measured in the same run.

mod fsync;
mod load;
mod local;
mod report;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use keel_engine::node::NodeMetrics;

use crate::load::{LoadSpec, Target};
use crate::report::{LatencySummary, Report};

#[derive(Parser, Debug)]
#[command(name = "keel-bench", about = "keel's benchmark tool", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster, run a load against it, print the report, clean up.
    Local(LocalArgs),
    /// Write a dev CA and node certificates (the node id in each SAN) for a cluster.
    Certs(CertsArgs),
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Directory to write ca.pem and the node certificates into.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Node ids, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    /// QUIC on 127.0.0.1 with mutual TLS (fresh dev certificates).
    Quic,
    /// In-process channels between the nodes (no network): keel's own overhead.
    Mem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReadMode {
    /// ReadIndex: one heartbeat round per batch of reads.
    Index,
    /// The leader lease: no round trip while it holds.
    Lease,
}

#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent logical clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long the load runs (e.g. 10s, 1m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    total: Option<u64>,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    value_size: usize,
    /// Distinct keys the load writes and reads.
    #[arg(long, default_value_t = 1_000_000)]
    key_space: u64,
    /// Fraction of requests that are linearizable reads.
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    #[arg(long, value_enum, default_value_t = ReadMode::Index)]
    read_mode: ReadMode,
    /// Open loop: requests per second, sent on schedule; latency counts from the scheduled time.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = TransportKind::Quic)]
    transport: TransportKind,
    /// UNSAFE: skip fsync. Acknowledged writes can be lost on power failure.
    #[arg(long)]
    no_fsync: bool,
    /// Serve node N's /metrics on port BASE+N (default: any free port).
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Write the whole report as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm format.
    #[arg(long)]
    hgrm: Option<std::path::PathBuf>,
    /// Write an SVG latency-by-percentile plot.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Worker threads issuing the clients' requests.
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Local(args) => local(args),
        Command::Certs(args) => certs(&args),
    };
    if let Err(e) = outcome {
        eprintln!("keel-bench: {e}");
        std::process::exit(1);
    }
}

fn local(args: LocalArgs) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("keel-bench-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let fdatasync = fsync::probe(dir.path(), 200).map_err(|e| format!("fdatasync probe: {e}"))?;
    let cluster = Arc::new(local::LocalCluster::start(
        dir.path(),
        args.nodes,
        args.transport == TransportKind::Quic,
        args.no_fsync,
        args.metrics_port,
    )?);
    eprintln!(
        "keel-bench: {} nodes up in {}, leader is node {}; metrics at {}",
        args.nodes,
        dir.path().display(),
        cluster.leader().id(),
        cluster
            .metrics
            .iter()
            .map(|m| format!("http://{}/metrics", m.addr()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let spec = LoadSpec {
        clients: args.clients.max(1),
        workers: args.workers,
        duration: if args.total.is_some() {
            None
        } else {
            Some(args.duration)
        },
        total: args.total,
        value_size: args.value_size,
        key_space: args.key_space.max(1),
        read_ratio: args.read_ratio,
        rate: args.rate,
        lease_reads: args.read_mode == ReadMode::Lease,
        request_timeout: Duration::from_secs(10),
    };
    let progress = AtomicU64::new(0);
    let target: Arc<dyn Target> = cluster.clone();
    let result = std::thread::scope(|s| {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match args.total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new(args.duration.as_secs()),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                    .expect("a valid template"),
            );
            bar
        });
        let runner = s.spawn(|| load::run(target.clone(), &spec, &progress));
        let started = Instant::now();
        while !runner.is_finished() {
            if let Some(bar) = &bar {
                let done = progress.load(Ordering::Relaxed);
                match args.total {
                    Some(_) => bar.set_position(done),
                    None => bar.set_position(started.elapsed().as_secs()),
                }
                bar.set_message(format!("{done} requests"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        runner.join().expect("the load thread")
    });

    // Every acknowledged write must be read back: the key holds that write or a later one.
    let (verified_keys, verification_failures) = verify(target.as_ref(), &result.writes);

    let leader = cluster.leader();
    let m = leader.metrics();
    let syncs = NodeMetrics::get(&m.wal_syncs).max(1);
    let batches = m.proposal_batch_entries.snapshot();
    let total = result.ok + result.errors.values().sum::<u64>();
    let report = Report {
        nodes: args.nodes,
        clients: spec.clients,
        transport: format!("{:?}", args.transport).to_lowercase(),
        fsync: !args.no_fsync,
        value_size: args.value_size,
        read_ratio: args.read_ratio,
        rate_target: args.rate,
        duration_seconds: report::seconds(result.elapsed),
        total,
        ok: result.ok,
        errors: result.errors.clone(),
        requests_per_second: result.ok as f64 / result.elapsed.as_secs_f64().max(1e-9),
        latency: LatencySummary::of(&result.latency_us),
        write_latency: LatencySummary::of(&result.write_latency_us),
        read_latency: LatencySummary::of(&result.read_latency_us),
        fdatasync: LatencySummary::of(&fdatasync),
        entries_per_fsync: NodeMetrics::get(&m.wal_synced_entries) as f64 / syncs as f64,
        mean_batch_entries: batches.sum as f64 / batches.count.max(1) as f64,
        verified_keys,
        verification_failures,
    };
    println!("{}", report.text(&result.latency_us));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, report::hgrm(&result.latency_us))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "keel: {} nodes, {} clients, {} B",
            args.nodes, spec.clients, args.value_size
        );
        std::fs::write(path, report::svg_plot(&result.latency_us, &title))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    cluster.stop();
    if verification_failures > 0 {
        return Err(format!(
            "{verification_failures} acknowledged writes were not read back"
        ));
    }
    Ok(())
}

fn certs(args: &CertsArgs) -> Result<(), String> {
    let paths = keel_transport_quic::certs::write_dev_certs(&args.out, &args.nodes)
        .map_err(|e| format!("writing certificates to {}: {e}", args.out.display()))?;
    println!(
        "wrote a dev CA ({}) and certificates for nodes {:?} in {}",
        paths.ca_cert.display(),
        args.nodes,
        args.out.display()
    );
    Ok(())
}

/// Reads back every key with an acknowledged write. The value must come from a write to that
/// key that is not older than the newest acknowledged one (a later write whose acknowledgement
/// was lost to a timeout may have landed too).
fn verify(
    target: &dyn Target,
    writes: &std::collections::HashMap<bytes::Bytes, Vec<(u64, Option<u64>)>>,
) -> (u64, u64) {
    let (mut keys, mut failures) = (0, 0);
    for (key, ws) in writes {
        let Some(newest_acked) = ws.iter().filter_map(|w| w.1).max() else {
            continue;
        };
        keys += 1;
        let ok = match target.read_back(key) {
            Ok(Some(value)) => {
                let mut id = [0u8; 8];
                let n = value.len().min(8);
                id[..n].copy_from_slice(&value[..n]);
                let id = u64::from_le_bytes(id);
                // With values shorter than 8 bytes the id is truncated: presence is all we check.
                n < 8
                    || ws
                        .iter()
                        .any(|w| w.0 == id && w.1.is_none_or(|index| index >= newest_acked))
            }
            Ok(None) | Err(_) => false,
        };
        if !ok {
            failures += 1;
            if failures <= 5 {
                eprintln!(
                    "verification: key {:?} lost its acknowledged write",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }
    (keys, failures)
}
