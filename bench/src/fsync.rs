//! The physical limit: the latency of a small append plus fdatasync on the directory the nodes
//! use, measured in the same run so every figure can be read as a ratio to it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Microseconds per 4 KiB append + fdatasync, over `rounds` rounds.
pub fn probe(dir: &Path, rounds: u32) -> std::io::Result<Histogram<u64>> {
    let path = dir.join("fdatasync-probe");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
    for _ in 0..rounds {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let _ = h.record(
            u64::try_from(start.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(h)
}
