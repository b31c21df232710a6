//! keel-bench: starts a local cluster, runs a load against it, and reports latency and throughput
//! next to the machine's raw fdatasync latency measured in the same run. For clusters across
//! machines: `node` runs one node from a config file, `load` drives a running cluster, `merge`
//! adds up the histograms of several loaders, `certs` writes dev certificates.

mod fsync;
mod histograms;
mod ledger;
mod load;
mod local;
mod memory;
mod node;
mod remote;
mod report;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use keel_engine::node::NodeMetrics;

use crate::histograms::LoadHistograms;
use crate::ledger::{Ledger, Verification};
use crate::load::{LoadSpec, Target};
use crate::report::{LatencySummary, Report, Settings};

/// The nodes allocate per entry as they apply (a key-value entry, the value it replaces freed)
/// and per batch (buffers of kilobytes). Under glibc's malloc each large request first
/// consolidates every small chunk freed since: with 1,024 clients that consolidation and its
/// list unlinking were ~10% of the machine (perf). jemalloc has no such step: peak committed
/// writes/s rose 12-17% with QUIC and fsync, 20-25% in memory, in A/B runs the same hour.
/// Keel, a library, leaves the allocator to the program; this is the bench program's choice.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Run one node of a cluster from a config file, serving the key-value store.
    Node(NodeArgs),
    /// Run a load against a running cluster, as a client over QUIC with mutual TLS.
    Load(LoadArgs),
    /// Add up the histograms that several `load` runs wrote (--histogram) into one report.
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// The node's TOML config: data_dir, listen, [tls], [peers], [node] (see the README).
    #[arg(long)]
    config: std::path::PathBuf,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The cluster's nodes as ID=HOST:PORT, comma-separated (the certificate of node ID names
    /// it; the load follows leader hints from there).
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_target)]
    targets: Vec<(u64, std::net::SocketAddr)>,
    /// The directory `keel-bench certs` wrote: ca.pem, client.pem, client-key.pem.
    #[arg(long)]
    certs: std::path::PathBuf,
    /// QUIC connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[command(flatten)]
    load: LoadFlags,
}

#[derive(clap::Args, Debug)]
struct MergeArgs {
    /// Histogram files written by `keel-bench load --histogram`.
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Directory to write ca.pem and the node certificates into.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Node ids, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<u64>,
    /// Host names or IP addresses the nodes run on, comma-separated, in the order of --nodes:
    /// added to each node's certificate (beside the node-<id>.keel name keel checks).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
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
    #[arg(long, value_enum, default_value_t = TransportKind::Quic)]
    transport: TransportKind,
    /// UNSAFE: skip fsync. Acknowledged writes can be lost on power failure.
    #[arg(long)]
    no_fsync: bool,
    /// Serve node N's /metrics on port BASE+N (default: any free port).
    #[arg(long)]
    metrics_port: Option<u16>,
    #[command(flatten)]
    load: LoadFlags,
}

/// The shape of a load, shared by `local` and `load`.
#[derive(clap::Args, Debug)]
struct LoadFlags {
    /// Concurrent logical clients (default 64; 1024 with --rate, where they bound the requests
    /// in flight: an open loop short of clients sends late).
    #[arg(long)]
    clients: Option<usize>,
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
    /// Worker threads issuing the clients' requests. Few: on one machine they take cores from
    /// the nodes (on the 2-core VM, 1 or 2 workers gave 132,000-133,000 writes/s where 4 gave
    /// 124,000, and a lower open-loop latency).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Keys are PREFIX-NUMBER (default: a random prefix per run, so that loaders running at
    /// once never write each other's keys and each can read its acknowledged writes back).
    #[arg(long)]
    key_prefix: Option<String>,
    /// Write the latency histograms in a form `keel-bench merge` adds up.
    #[arg(long)]
    histogram: Option<std::path::PathBuf>,
    /// Write latency over time as CSV: per 100 ms of the run, the requests that completed and
    /// their p50, p99 and max.
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
    /// Before the measured run, write every key once (not measured), so that the run starts
    /// with the whole key space stored, like YCSB's load phase.
    #[arg(long)]
    prefill: bool,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(clap::Args, Debug)]
struct OutputFlags {
    /// Write the whole report as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm format.
    #[arg(long)]
    hgrm: Option<std::path::PathBuf>,
    /// Write an SVG latency-by-percentile plot.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

fn parse_target(s: &str) -> Result<(u64, std::net::SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let id = id
        .parse()
        .map_err(|_| format!("{id:?}: a node id is a number"))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?}: no address"))?;
    Ok((id, addr))
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Local(args) => local(args),
        Command::Certs(args) => certs(&args),
        Command::Node(args) => match node::run(&args.config) {
            Ok(reason) => {
                eprintln!("keel-bench: the node stopped: {reason}");
                std::process::exit(node::EXIT_NODE_STOPPED);
            }
            Err(e) => Err(e),
        },
        Command::Load(args) => load_remote(args),
        Command::Merge(args) => merge(&args),
    };
    if let Err(e) = outcome {
        eprintln!("keel-bench: {e}");
        std::process::exit(1);
    }
}

/// The nodes' logs on stderr at `default` level; RUST_LOG overrides.
fn log_to_stderr(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn local(args: LocalArgs) -> Result<(), String> {
    // Warnings only: slow heartbeats and refused peers, not every role change of a long run.
    log_to_stderr("warn");
    let dir = tempfile::Builder::new()
        .prefix("keel-bench-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let probe =
        |method| fsync::probe(dir.path(), 200, method).map_err(|e| format!("fdatasync probe: {e}"));
    let filesystem = fsync::filesystem_of(dir.path());
    if let Some(fs) = filesystem.as_deref().filter(|fs| fsync::is_volatile(fs)) {
        eprintln!(
            "keel-bench: warning: {} is on {fs}: fdatasync reaches no disk (set TMPDIR to a \
             directory on one)",
            dir.path().display()
        );
    }
    let fdatasync = probe(fsync::Method::IntoZeroFilled)?;
    let fdatasync_append = probe(fsync::Method::Append)?;
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
    let target: Arc<dyn Target> = cluster.clone();
    // Counted from the measured run's start: a prefill's batches are not the run's.
    let mut batching_before = Vec::new();
    let Run {
        result,
        ledger,
        rss,
    } = run_load(target.clone(), &args.load, || {
        batching_before = cluster
            .nodes
            .iter()
            .map(|n| Batching::of(n.metrics()))
            .collect();
    });
    // Every acknowledged write must be read back: the key holds that write or a later one.
    let Verification {
        keys: verified_keys,
        failures: verification_failures,
    } = ledger.verify(target.as_ref());

    let leader = cluster.leader();
    let at = cluster.nodes.iter().position(|n| Arc::ptr_eq(n, leader));
    let before = at.and_then(|i| batching_before.get(i).copied());
    let batching = Batching::of(leader.metrics()).since(before.unwrap_or_default());
    let histograms = LoadHistograms::of(&result, args.load.settings());
    let mut report = Report::of(&histograms);
    report.nodes = args.nodes;
    report.transport = format!("{:?}", args.transport).to_lowercase();
    report.fsync = Some(!args.no_fsync);
    report.fdatasync = Some(LatencySummary::of(&fdatasync));
    report.fdatasync_append = Some(LatencySummary::of(&fdatasync_append));
    report.filesystem = filesystem;
    report.entries_per_fsync = Some(batching.synced_entries as f64 / batching.syncs.max(1) as f64);
    report.mean_batch_entries =
        Some(batching.batched_entries as f64 / batching.batches.max(1) as f64);
    report.verified_keys = verified_keys;
    report.verification_failures = verification_failures;
    report.memory = memory::summarize(&rss, result.elapsed.as_secs_f64());
    let written = add_timeline(&mut report, &result, &args.load)
        .and_then(|()| finish(&report, &histograms, &args.load));
    cluster.stop();
    written?;
    if verification_failures > 0 {
        return Err(format!(
            "{verification_failures} acknowledged writes were not read back"
        ));
    }
    Ok(())
}

fn load_remote(args: LoadArgs) -> Result<(), String> {
    let cluster = remote::RemoteCluster::connect(
        &args.targets,
        &args.certs,
        args.connections,
        REQUEST_TIMEOUT,
    )?;
    let target: Arc<dyn Target> = Arc::new(cluster);
    let Run { result, ledger, .. } = run_load(target.clone(), &args.load, || {});
    let Verification {
        keys: verified_keys,
        failures: verification_failures,
    } = ledger.verify(target.as_ref());
    let histograms = LoadHistograms::of(&result, args.load.settings());
    let mut report = Report::of(&histograms);
    report.nodes = args.targets.len() as u64;
    report.verified_keys = verified_keys;
    report.verification_failures = verification_failures;
    add_timeline(&mut report, &result, &args.load)?;
    finish(&report, &histograms, &args.load)?;
    if verification_failures > 0 {
        return Err(format!(
            "{verification_failures} acknowledged writes were not read back"
        ));
    }
    Ok(())
}

fn merge(args: &MergeArgs) -> Result<(), String> {
    let mut merged: Option<LoadHistograms> = None;
    for path in &args.files {
        let h = LoadHistograms::load(path)?;
        match &mut merged {
            None => merged = Some(h),
            Some(m) => m.add(&h).map_err(|e| format!("{}: {e}", path.display()))?,
        }
    }
    let merged = merged.expect("clap requires at least one file");
    let report = Report::of(&merged);
    write_outputs(
        &report,
        &merged,
        &args.output,
        &format!("keel: {} loaders merged", args.files.len()),
    )
}

/// Every request gets this long before it counts as timed out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl LoadFlags {
    fn clients(&self) -> usize {
        let default = if self.rate.is_some() { 1024 } else { 64 };
        self.clients.unwrap_or(default).max(1)
    }

    fn spec(&self) -> LoadSpec {
        LoadSpec {
            clients: self.clients(),
            workers: self.workers,
            duration: if self.total.is_some() {
                None
            } else {
                Some(self.duration)
            },
            total: self.total,
            value_size: self.value_size,
            key_space: self.key_space.max(1),
            read_ratio: self.read_ratio,
            rate: self.rate,
            lease_reads: self.read_mode == ReadMode::Lease,
            request_timeout: REQUEST_TIMEOUT,
            key_prefix: self
                .key_prefix
                .clone()
                .unwrap_or_else(|| format!("key-{:08x}", rand::random::<u32>())),
            seed: rand::random(),
            sequential_keys: false,
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            clients: self.clients(),
            value_size: self.value_size,
            read_ratio: self.read_ratio,
            rate_target: self.rate,
        }
    }
}

/// What a load run measured, and what its writes' clients were told.
struct Run {
    result: load::LoadResult,
    ledger: Ledger,
    /// This process's resident size once a second, as `(seconds into the run, bytes)`.
    rss: Vec<(f64, u64)>,
}

/// Runs the load (after the prefill, with `--prefill`) with a progress bar on a terminal.
/// A prefill (if asked for), then the measured run; `measured_start` runs between them.
fn run_load(target: Arc<dyn Target>, flags: &LoadFlags, measured_start: impl FnOnce()) -> Run {
    let spec = flags.spec();
    let ledger = Ledger::new(&spec.key_prefix, spec.key_space);
    if flags.prefill {
        prefill(&target, &spec, &ledger);
    }
    measured_start();
    let (result, rss) = run_measured(target, flags, &spec, &ledger);
    Run {
        result,
        ledger,
        rss,
    }
}

/// A node's counters of log writes and proposal batches.
#[derive(Clone, Copy, Debug, Default)]
struct Batching {
    syncs: u64,
    synced_entries: u64,
    batches: u64,
    batched_entries: u64,
}

impl Batching {
    fn of(m: &NodeMetrics) -> Self {
        let batches = m.proposal_batch_entries.snapshot();
        Self {
            syncs: NodeMetrics::get(&m.wal_syncs),
            synced_entries: NodeMetrics::get(&m.wal_synced_entries),
            batches: batches.count,
            batched_entries: batches.sum,
        }
    }

    /// What was counted after `earlier`.
    fn since(self, earlier: Self) -> Self {
        Self {
            syncs: self.syncs.saturating_sub(earlier.syncs),
            synced_entries: self.synced_entries.saturating_sub(earlier.synced_entries),
            batches: self.batches.saturating_sub(earlier.batches),
            batched_entries: self.batched_entries.saturating_sub(earlier.batched_entries),
        }
    }
}

/// Writes every key of the key space once, in order, at full speed.
fn prefill(target: &Arc<dyn Target>, spec: &LoadSpec, ledger: &Ledger) {
    let prefill = LoadSpec {
        total: Some(spec.key_space),
        duration: None,
        rate: None,
        read_ratio: 0.0,
        sequential_keys: true,
        ..spec.clone()
    };
    let result = load::run(target.clone(), &prefill, ledger, &AtomicU64::new(0));
    let errors: u64 = result.errors.values().sum();
    eprintln!(
        "keel-bench: prefilled {} keys in {:.1} s ({:.0} writes/s, {errors} errors)",
        result.ok,
        result.elapsed.as_secs_f64(),
        result.ok as f64 / result.elapsed.as_secs_f64().max(1e-9),
    );
}

/// The measured run; samples this process's resident size once a second.
fn run_measured(
    target: Arc<dyn Target>,
    flags: &LoadFlags,
    spec: &LoadSpec,
    ledger: &Ledger,
) -> (load::LoadResult, Vec<(f64, u64)>) {
    let mut rss = Vec::new();
    let progress = AtomicU64::new(0);
    std::thread::scope(|s| {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match flags.total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new(flags.duration.as_secs()),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                    .expect("a valid template"),
            );
            bar
        });
        let runner = s.spawn(|| load::run(target.clone(), spec, ledger, &progress));
        let started = Instant::now();
        let mut next_sample = started;
        while !runner.is_finished() {
            if Instant::now() >= next_sample {
                rss.extend(memory::rss_bytes().map(|b| (started.elapsed().as_secs_f64(), b)));
                next_sample += Duration::from_secs(1);
            }
            if let Some(bar) = &bar {
                let done = progress.load(Ordering::Relaxed);
                match flags.total {
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
        (runner.join().expect("the load thread"), rss)
    })
}

/// Adds what the run's timeline tells to the report (late sends, worst steps), and writes it
/// out with `--timeline`.
fn add_timeline(
    report: &mut Report,
    result: &load::LoadResult,
    flags: &LoadFlags,
) -> Result<(), String> {
    report.late_sends = flags.rate.map(|_| result.late_sends);
    report.worst_steps = report::Step::worst(result, 3);
    match &flags.timeline {
        Some(path) => std::fs::write(path, report::timeline_csv(result))
            .map_err(|e| format!("{}: {e}", path.display())),
        None => Ok(()),
    }
}

/// Prints the report and writes the files the flags ask for.
fn finish(report: &Report, h: &LoadHistograms, flags: &LoadFlags) -> Result<(), String> {
    if let Some(path) = &flags.histogram {
        h.save(path)?;
    }
    let title = format!(
        "keel: {} nodes, {} clients, {} B",
        report.nodes, report.clients, report.value_size
    );
    write_outputs(report, h, &flags.output, &title)
}

fn write_outputs(
    report: &Report,
    h: &LoadHistograms,
    output: &OutputFlags,
    title: &str,
) -> Result<(), String> {
    println!("{}", report.text(&h.latency));
    let write = |path: &std::path::Path, contents: String| {
        std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(path) = &output.json {
        write(
            path,
            serde_json::to_string_pretty(report).map_err(|e| e.to_string())?,
        )?;
    }
    if let Some(path) = &output.hgrm {
        write(path, report::hgrm(&h.latency))?;
    }
    if let Some(path) = &output.plot {
        write(path, report::svg_plot(&h.latency, title))?;
    }
    Ok(())
}

fn certs(args: &CertsArgs) -> Result<(), String> {
    if !args.hosts.is_empty() && args.hosts.len() != args.nodes.len() {
        return Err(format!(
            "--hosts names {} hosts for {} nodes: give one per node, in the order of --nodes",
            args.hosts.len(),
            args.nodes.len()
        ));
    }
    let nodes: Vec<(u64, Vec<String>)> = args
        .nodes
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, args.hosts.get(i).cloned().into_iter().collect()))
        .collect();
    let paths = keel_transport_quic::certs::write_dev_certs_for(&args.out, &nodes)
        .map_err(|e| format!("writing certificates to {}: {e}", args.out.display()))?;
    println!(
        "wrote a dev CA ({}) and certificates for nodes {:?} in {}",
        paths.ca_cert.display(),
        args.nodes,
        args.out.display()
    );
    Ok(())
}
