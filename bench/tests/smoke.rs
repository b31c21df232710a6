//! `keel-bench local` end to end: a short run whose JSON report shows no errors and every
//! acknowledged write read back. No timing is asserted: speed is measured, not tested.

use std::process::Command;

#[test]
fn local_run_reports_no_errors_and_reads_back_every_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let hgrm = dir.path().join("latency.hgrm");
    let plot = dir.path().join("latency.svg");
    let timeline = dir.path().join("timeline.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args([
            "local",
            "--duration",
            "2s",
            "--clients",
            "16",
            "--read-ratio",
            "0.2",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--hgrm")
        .arg(&hgrm)
        .arg("--plot")
        .arg(&plot)
        .arg("--timeline")
        .arg(&timeline)
        .output()
        .expect("keel-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keel-bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Latency distribution"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("json parses");
    assert!(report["ok"].as_u64().expect("ok") > 0, "{report}");
    assert_eq!(
        report["errors"].as_object().expect("errors").len(),
        0,
        "{report}"
    );
    assert!(
        report["verified_keys"].as_u64().expect("verified") > 0,
        "{report}"
    );
    assert_eq!(
        report["verification_failures"].as_u64(),
        Some(0),
        "{report}"
    );
    assert!(
        report["read_latency"]["count"].as_u64().expect("reads") > 0,
        "{report}"
    );
    for probe in ["fdatasync", "fdatasync_append"] {
        assert!(
            report[probe]["p50_us"].as_u64().expect("a probe") > 0,
            "{report}"
        );
    }
    assert!(
        report["memory"]["samples"]
            .as_u64()
            .expect("memory sampled")
            >= 1
            && report["memory"]["rss_max_mib"].as_f64().expect("rss") > 0.0,
        "{report}"
    );
    // The timeline accounts for every successful request, step by step.
    let timeline = std::fs::read_to_string(&timeline).expect("timeline written");
    let completed: u64 = timeline
        .lines()
        .skip_while(|l| !l.starts_with("t_s,"))
        .skip(1)
        .map(|l| l.split(',').nth(1).expect("a completed column"))
        .map(|n| n.parse::<u64>().expect("a count"))
        .sum();
    assert_eq!(Some(completed), report["ok"].as_u64(), "{timeline}");
    assert!(
        !report["worst_steps"]
            .as_array()
            .expect("worst steps")
            .is_empty(),
        "{report}"
    );
    let hgrm = std::fs::read_to_string(&hgrm).expect("hgrm written");
    assert!(hgrm.contains("Percentile"), "{hgrm}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}

#[test]
fn prefill_writes_every_key_before_the_measured_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args([
            "local",
            "--transport",
            "mem",
            "--total",
            "100",
            "--clients",
            "16",
            "--key-space",
            "3000",
            "--prefill",
            "--rate",
            "200",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("keel-bench runs");
    assert!(
        out.status.success(),
        "keel-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("json parses");
    // The measured run is its 100 requests; every key was written before it, and is checked.
    assert_eq!(report["ok"].as_u64(), Some(100), "{report}");
    assert_eq!(report["verified_keys"].as_u64(), Some(3000), "{report}");
    assert!(report["filesystem"].as_str().is_some(), "{report}");
    assert_eq!(
        report["verification_failures"].as_u64(),
        Some(0),
        "{report}"
    );
    // Batching is the measured run's: at 200 writes/s each write goes alone, where the prefill
    // (16 clients at full speed) batched several.
    for figure in ["entries_per_fsync", "mean_batch_entries"] {
        let value = report[figure].as_f64().expect("reported");
        assert!((1.0..2.0).contains(&value), "{figure} {value}: {report}");
    }
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args(["local", "--duration", "soon"])
        .output()
        .expect("keel-bench runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--duration"), "{stderr}");
}
