//! The report: a text summary like etcd's benchmark tool, the same as JSON, the latency
//! distribution as an `.hgrm` file and as an SVG percentile plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::histograms::LoadHistograms;
use crate::load::{LoadResult, TIMELINE_INTERVAL};
use crate::memory::MemorySummary;

/// Everything a run measured, machine-readable. What only a local cluster can tell (the disk,
/// the nodes' batching) is absent from the reports of `load` and `merge`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub nodes: u64,
    pub clients: usize,
    pub transport: String,
    pub fsync: Option<bool>,
    pub value_size: usize,
    pub read_ratio: f64,
    pub rate_target: Option<f64>,
    pub duration_seconds: f64,
    pub total: u64,
    pub ok: u64,
    /// Of `ok`, answered after a timed run's stop: in the latency figures, not in the rate.
    pub answered_after_stop: u64,
    pub errors: BTreeMap<String, u64>,
    /// Requests answered within the run's duration, per second of it.
    pub requests_per_second: f64,
    pub latency: LatencySummary,
    pub write_latency: LatencySummary,
    pub read_latency: LatencySummary,
    /// A 4 KiB write into a zero-filled file + fdatasync: the log's way, and what ratios use.
    pub fdatasync: Option<LatencySummary>,
    /// A 4 KiB append + fdatasync, which must also commit the new file size: for comparison.
    pub fdatasync_append: Option<LatencySummary>,
    /// The filesystem the nodes' directory is on.
    pub filesystem: Option<String>,
    pub entries_per_fsync: Option<f64>,
    pub mean_batch_entries: Option<f64>,
    pub verified_keys: u64,
    pub verification_failures: u64,
    /// Resident size of the process running the nodes (`local` only).
    pub memory: Option<MemorySummary>,
    /// Open loop: sends that went out more than 1 ms after their schedule.
    pub late_sends: Option<u64>,
    /// The steps of the run's timeline with the highest p99, worst first.
    pub worst_steps: Vec<Step>,
}

/// One step of a run's timeline (see `load::TIMELINE_INTERVAL`).
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Seconds into the run at which the step starts.
    pub t_s: f64,
    pub completed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Step {
    fn of(i: usize, h: &Histogram<u32>) -> Self {
        Self {
            t_s: i as f64 * TIMELINE_INTERVAL.as_secs_f64(),
            completed: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }

    /// The `n` steps with the highest p99, worst first.
    pub fn worst(result: &LoadResult, n: usize) -> Vec<Step> {
        let mut steps: Vec<Step> = (result.timeline.iter().enumerate())
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| Step::of(i, h))
            .collect();
        steps.sort_by_key(|s| std::cmp::Reverse(s.p99_us));
        steps.truncate(n);
        steps
    }
}

/// The run's timeline as CSV, one row per step; latencies in milliseconds.
pub fn timeline_csv(result: &LoadResult) -> String {
    let started_ms = (result.started_at.duration_since(UNIX_EPOCH))
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut o = format!(
        "# run started {started_ms} ms after the Unix epoch; steps of {} ms\nt_s,completed,p50_ms,p99_ms,max_ms\n",
        TIMELINE_INTERVAL.as_millis()
    );
    for (i, h) in result.timeline.iter().enumerate() {
        let s = Step::of(i, h);
        let _ = match s.completed {
            0 => writeln!(o, "{:.1},0,,,", s.t_s),
            n => writeln!(
                o,
                "{:.1},{n},{:.3},{:.3},{:.3}",
                s.t_s,
                s.p50_us as f64 / 1e3,
                s.p99_us as f64 / 1e3,
                s.max_us as f64 / 1e3
            ),
        };
    }
    o
}

/// How the load was shaped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub clients: usize,
    pub value_size: usize,
    pub read_ratio: f64,
    pub rate_target: Option<f64>,
}

impl Report {
    /// The client side of a report; the caller fills in what it knows of the cluster.
    pub fn of(h: &LoadHistograms) -> Self {
        let total = h.ok + h.errors.values().sum::<u64>();
        Self {
            nodes: 0,
            clients: h.settings.clients,
            transport: "quic".into(),
            fsync: None,
            value_size: h.settings.value_size,
            read_ratio: h.settings.read_ratio,
            rate_target: h.settings.rate_target,
            duration_seconds: h.duration_seconds,
            total,
            ok: h.ok,
            answered_after_stop: h.answered_after_stop,
            errors: h.errors.clone(),
            requests_per_second: h.ok.saturating_sub(h.answered_after_stop) as f64
                / h.duration_seconds.max(1e-9),
            latency: LatencySummary::of(&h.latency),
            write_latency: LatencySummary::of(&h.write_latency),
            read_latency: LatencySummary::of(&h.read_latency),
            fdatasync: None,
            fdatasync_append: None,
            filesystem: None,
            entries_per_fsync: None,
            mean_batch_entries: None,
            verified_keys: 0,
            verification_failures: 0,
            memory: None,
            late_sends: None,
            worst_steps: Vec::new(),
        }
    }
}

/// Latencies in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub stddev_us: f64,
    pub max_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            stddev_us: h.stdev(),
            max_us: h.max(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
        }
    }
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

impl Report {
    pub fn text(&self, latency: &Histogram<u64>) -> String {
        let mut o = String::new();
        let l = &self.latency;
        let _ = writeln!(o, "\nSummary ({} nodes, {} transport, fsync {}, {} clients, {} B values, read ratio {}{})",
            self.nodes, self.transport, match self.fsync { Some(true) => "on", Some(false) => "OFF (unsafe)", None => "as the nodes run" }, self.clients, self.value_size,
            self.read_ratio, self.rate_target.map(|r| format!(", open loop at {r:.0}/s")).unwrap_or_default());
        let _ = writeln!(
            o,
            "  Total:        {} requests in {:.2} s",
            self.total, self.duration_seconds
        );
        let _ = writeln!(o, "  Requests/s:   {:.0}", self.requests_per_second);
        if self.answered_after_stop > 0 {
            let _ = writeln!(
                o,
                "                (not counting the {} answered after the stop; their latencies \
                 count)",
                self.answered_after_stop
            );
        }
        let _ = writeln!(
            o,
            "  Errors:       {}",
            if self.errors.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", self.errors)
            }
        );
        if let Some(late) = self.late_sends.filter(|&n| n > 0) {
            let _ = writeln!(
                o,
                "  Late sends:   {late} sent over 1 ms after schedule (all clients busy or the loader short of CPU; raise --clients); timed from the schedule"
            );
        }
        let _ = writeln!(
            o,
            "  Latency:      min {}  mean {}  stddev {}  max {}",
            ms(l.min_us as f64),
            ms(l.mean_us),
            ms(l.stddev_us),
            ms(l.max_us as f64)
        );
        let failed = self.total - self.ok;
        if failed > 0 {
            let _ = writeln!(
                o,
                "                (of the {} requests that succeeded: the {failed} that failed or were \
                 never sent are not in the latency figures)",
                self.ok
            );
        }
        let _ = writeln!(o, "\nLatency distribution:");
        for (p, v) in [
            ("50", l.p50_us),
            ("90", l.p90_us),
            ("99", l.p99_us),
            ("99.9", l.p999_us),
            ("99.99", l.p9999_us),
        ] {
            let _ = writeln!(o, "  {p:>6}% in {}", ms(v as f64));
        }
        o += &histogram_bars(latency);
        if !self.worst_steps.is_empty() {
            let _ = writeln!(
                o,
                "\nWorst {} ms of the run, by p99 (--timeline writes them all):",
                TIMELINE_INTERVAL.as_millis()
            );
            for s in &self.worst_steps {
                let _ = writeln!(
                    o,
                    "  at {:6.1} s: {:6} done, p50 {}  p99 {}  max {}",
                    s.t_s,
                    s.completed,
                    ms(s.p50_us as f64),
                    ms(s.p99_us as f64),
                    ms(s.max_us as f64)
                );
            }
        }
        if let Some(f) = &self.fdatasync {
            let _ = writeln!(o, "\nStorage:");
            if let Some(fs) = &self.filesystem {
                let volatile = if crate::fsync::is_volatile(fs) {
                    " (in memory: fdatasync reaches no disk, and no figure here measures one)"
                } else {
                    ""
                };
                let _ = writeln!(o, "  filesystem: {fs}{volatile}");
            }
            let _ = writeln!(
                o,
                "  raw fdatasync (4 KiB write into a zero-filled file, same directory): p50 {}  p99 {}",
                ms(f.p50_us as f64),
                ms(f.p99_us as f64)
            );
            if let Some(a) = &self.fdatasync_append {
                let _ = writeln!(
                    o,
                    "  (a 4 KiB append instead, which also commits the file size: p50 {}  p99 {})",
                    ms(a.p50_us as f64),
                    ms(a.p99_us as f64)
                );
            }
            if f.p50_us > 0 && l.count > 0 {
                let _ = writeln!(
                    o,
                    "  request p50 / fdatasync p50 = {:.2}x, p99 / fdatasync p50 = {:.2}x",
                    l.p50_us as f64 / f.p50_us as f64,
                    l.p99_us as f64 / f.p50_us as f64
                );
            }
        }
        if let (Some(per_fsync), Some(batch)) = (self.entries_per_fsync, self.mean_batch_entries) {
            let _ = writeln!(
                o,
                "  entries per fsync (leader): {per_fsync:.1}   mean proposal batch: {batch:.1}"
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                o,
                "\nMemory (resident, all nodes): {:.0} MiB after warm-up, {:.0} MiB at the end ({:+.1}%), {:.0} MiB at most",
                m.rss_after_warmup_mib, m.rss_end_mib, m.growth_percent, m.rss_max_mib
            );
        }
        let _ = writeln!(
            o,
            "\nVerification: {} keys read back, {} failures",
            self.verified_keys, self.verification_failures
        );
        o
    }
}

/// A small text histogram of latencies, etcd-style.
fn histogram_bars(h: &Histogram<u64>) -> String {
    let mut o = String::from("\nResponse time histogram:\n");
    if h.is_empty() {
        return o;
    }
    let (lo, hi) = (h.min().max(1) as f64, h.max().max(2) as f64);
    let steps = 10;
    let ratio = (hi / lo).powf(1.0 / steps as f64);
    let mut bounds = Vec::new();
    let mut b = lo;
    for _ in 0..steps {
        b *= ratio;
        bounds.push(b as u64);
    }
    let mut prev = 0u64;
    let counts: Vec<u64> = bounds
        .iter()
        .map(|&bound| {
            let below = h.count_between(0, bound);
            let c = below - prev;
            prev = below;
            c
        })
        .collect();
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    for (bound, count) in bounds.iter().zip(&counts) {
        let bar = "∎".repeat(((count * 40) / max) as usize);
        let _ = writeln!(o, "  {:>12} [{:>8}]\t|{}", ms(*bound as f64), count, bar);
    }
    o
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format (values in ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut o = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(1) {
        let p = v.quantile_iterated_to();
        let inv = if p < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - p))
        } else {
            "inf".into()
        };
        let _ = writeln!(
            o,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            p,
            v.count_since_last_iteration(),
            inv
        );
    }
    let _ = writeln!(
        o,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        o,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    o
}

/// An SVG plot of latency by percentile (log scale of 1/(1-p)).
pub fn svg_plot(h: &Histogram<u64>, title: &str) -> String {
    let (w, hgt, pad) = (800.0, 480.0, 60.0);
    let points: Vec<(f64, f64)> = [
        0.0f64, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999,
    ]
    .iter()
    .map(|&q| {
        (
            (1.0 / (1.0 - q)).log10(),
            h.value_at_quantile(q) as f64 / 1000.0,
        )
    })
    .collect();
    let x_max = 5.0;
    let y_max = points.iter().map(|p| p.1).fold(0.001, f64::max) * 1.1;
    let px = |x: f64| pad + x / x_max * (w - 2.0 * pad);
    let py = |y: f64| hgt - pad - y / y_max * (hgt - 2.0 * pad);
    let mut o = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="16">{title}</text>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
"#,
        w / 2.0,
        hgt - pad,
        w - pad,
        hgt - pad,
        hgt - pad
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = px(i as f64);
        let _ = writeln!(
            o,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            hgt - pad + 18.0
        );
    }
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="end">{y:.2} ms</text>"#,
            pad - 6.0,
            py(y) + 4.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        o,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
        path.join(" ")
    );
    o += "</svg>\n";
    o
}
