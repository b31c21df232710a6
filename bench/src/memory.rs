//! Resident memory while the load runs. The nodes of `keel-bench local` live in this process,
//! so its growth is theirs: a leak, or a queue or log that is never trimmed, shows up here.

use serde::Serialize;

/// This process's resident set size, from /proc (Linux); `None` where that is unavailable.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident size over the run, after a warm-up of its first tenth (the state machine and the
/// nodes' buffers fill up then).
#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    pub samples: usize,
    pub rss_after_warmup_mib: f64,
    pub rss_end_mib: f64,
    pub rss_max_mib: f64,
    /// End over after-warm-up, in percent: flat is near 0.
    pub growth_percent: f64,
}

/// Summarizes `(seconds into the run, bytes)` samples of a run of `run_seconds`.
pub fn summarize(samples: &[(f64, u64)], run_seconds: f64) -> Option<MemorySummary> {
    let warm = samples
        .iter()
        .find(|(at, _)| *at >= run_seconds / 10.0)
        .or(samples.first())?;
    let end = samples.last()?;
    let max = samples.iter().map(|s| s.1).max()?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Some(MemorySummary {
        samples: samples.len(),
        rss_after_warmup_mib: mib(warm.1),
        rss_end_mib: mib(end.1),
        rss_max_mib: mib(max),
        growth_percent: (end.1 as f64 / warm.1.max(1) as f64 - 1.0) * 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_measured_after_the_warm_up() {
        let samples: Vec<(f64, u64)> = (0..=60)
            .map(|s| (f64::from(s), if s < 6 { 100 } else { 200 + s as u64 }))
            .collect();
        let m = summarize(&samples, 60.0).expect("samples");
        assert_eq!(m.samples, 61);
        assert!((m.growth_percent - (260.0 / 206.0 - 1.0) * 100.0).abs() < 1e-9);
        assert!(summarize(&[], 1.0).is_none());
        assert!(
            rss_bytes().is_some_and(|b| b > 0),
            "this process has a resident set"
        );
    }
}
