//! What a load measured, in a form that adds up: several loaders on several machines each write
//! theirs, and `keel-bench merge` adds the histograms' counts (never averaging percentiles).
//!
//! On disk it is JSON; each histogram is HdrHistogram's V2 compressed encoding in base64, the
//! format other HdrHistogram tools read too.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::LoadResult;
use crate::report::Settings;

/// The file format's version, bumped on any incompatible change.
const VERSION: u32 = 1;

#[derive(Debug)]
pub struct LoadHistograms {
    pub settings: Settings,
    pub duration_seconds: f64,
    pub ok: u64,
    /// Of `ok`, answered after the run's stop (see `LoadResult::answered_after_stop`).
    pub answered_after_stop: u64,
    pub errors: BTreeMap<String, u64>,
    /// Microseconds, every request; then writes and reads apart.
    pub latency: Histogram<u64>,
    pub write_latency: Histogram<u64>,
    pub read_latency: Histogram<u64>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    settings: Settings,
    duration_seconds: f64,
    ok: u64,
    /// Absent from files of keel-bench before it counted them: none then.
    #[serde(default)]
    answered_after_stop: u64,
    errors: BTreeMap<String, u64>,
    latency_us: String,
    write_latency_us: String,
    read_latency_us: String,
}

impl LoadHistograms {
    pub fn of(r: &LoadResult, settings: Settings) -> Self {
        Self {
            settings,
            duration_seconds: r.elapsed.as_secs_f64(),
            ok: r.ok,
            answered_after_stop: r.answered_after_stop,
            errors: r.errors.clone(),
            latency: r.latency_us.clone(),
            write_latency: r.write_latency_us.clone(),
            read_latency: r.read_latency_us.clone(),
        }
    }

    /// Adds another loader's run, which ran at the same time as this one.
    pub fn add(&mut self, other: &Self) -> Result<(), String> {
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b)
                .map_err(|e| format!("histograms do not add up: {e:?}"))
        };
        add(&mut self.latency, &other.latency)?;
        add(&mut self.write_latency, &other.write_latency)?;
        add(&mut self.read_latency, &other.read_latency)?;
        self.ok += other.ok;
        self.answered_after_stop += other.answered_after_stop;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        // Concurrent loaders: the run lasted as long as the longest of them.
        self.duration_seconds = self.duration_seconds.max(other.duration_seconds);
        self.settings.clients += other.settings.clients;
        if self.settings.rate_target.is_some() || other.settings.rate_target.is_some() {
            self.settings.rate_target = Some(
                self.settings.rate_target.unwrap_or(0.0)
                    + other.settings.rate_target.unwrap_or(0.0),
            );
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let file = File {
            version: VERSION,
            settings: self.settings.clone(),
            duration_seconds: self.duration_seconds,
            ok: self.ok,
            answered_after_stop: self.answered_after_stop,
            errors: self.errors.clone(),
            latency_us: encode(&self.latency)?,
            write_latency_us: encode(&self.write_latency)?,
            read_latency_us: encode(&self.read_latency)?,
        };
        let json = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
        let file: File = serde_json::from_str(&text).map_err(|e| at(&e))?;
        if file.version != VERSION {
            return Err(at(&format!(
                "format version {}, this keel-bench reads {VERSION}",
                file.version
            )));
        }
        Ok(Self {
            settings: file.settings,
            duration_seconds: file.duration_seconds,
            ok: file.ok,
            answered_after_stop: file.answered_after_stop,
            errors: file.errors,
            latency: decode(&file.latency_us).map_err(|e| at(&e))?,
            write_latency: decode(&file.write_latency_us).map_err(|e| at(&e))?,
            read_latency: decode(&file.read_latency_us).map_err(|e| at(&e))?,
        })
    }
}

fn encode(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("encoding a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("a histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("a histogram does not decode: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histograms(values: &[u64], clients: usize) -> LoadHistograms {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        for &v in values {
            h.record(v).expect("in range");
        }
        LoadHistograms {
            settings: Settings {
                clients,
                value_size: 128,
                read_ratio: 0.0,
                rate_target: None,
            },
            duration_seconds: 1.0,
            ok: values.len() as u64,
            answered_after_stop: 1,
            errors: BTreeMap::from([("timeout".to_string(), 1)]),
            latency: h.clone(),
            write_latency: h,
            read_latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    #[test]
    fn merged_percentiles_come_from_added_counts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        // One loader saw 90 fast requests, the other 10 slow ones: the merged p95 is slow,
        // which averaging the two loaders' p95s (100 and 10,000) would not give.
        histograms(&[100; 90], 8).save(&a).expect("saved");
        histograms(&[10_000; 10], 8).save(&b).expect("saved");
        let mut merged = LoadHistograms::load(&a).expect("loads");
        merged
            .add(&LoadHistograms::load(&b).expect("loads"))
            .expect("adds");
        assert_eq!(merged.latency.len(), 100);
        assert_eq!(merged.ok, 100);
        assert_eq!(merged.answered_after_stop, 2);
        // The rate is over what was answered within the run.
        let report = crate::report::Report::of(&merged);
        assert_eq!(report.requests_per_second, 98.0);
        assert_eq!(merged.errors["timeout"], 2);
        assert_eq!(merged.settings.clients, 16);
        assert!(merged.latency.value_at_quantile(0.95) >= 9_990);
        assert!(merged.latency.value_at_quantile(0.5) <= 101);
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("h.json");
        histograms(&[5], 1).save(&path).expect("saved");
        let text = std::fs::read_to_string(&path).expect("reads");
        std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 9")).expect("writes");
        let e = LoadHistograms::load(&path).expect_err("wrong version");
        assert!(e.contains("h.json") && e.contains("version 9"), "{e}");
    }
}
