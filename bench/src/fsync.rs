//! The physical limit: the latency of a small write plus fdatasync on the directory the nodes
//! use, measured in the same run so every figure can be read as a ratio to it.
//!
//! The write goes into a file zero-filled and synced beforehand, as the log writes into its
//! segments: an append would also commit the file's new size at each sync, which is slower,
//! and a ratio to it would flatter keel.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;

const BLOCK_BYTES: u64 = 4096;

/// How the probe writes before each fdatasync.
#[derive(Clone, Copy, Debug)]
pub enum Method {
    /// Into a file zero-filled beforehand: the log's way, and the limit its ratios use.
    IntoZeroFilled,
    /// At the end of the file, growing it: for comparison.
    Append,
}

/// Microseconds per 4 KiB write + fdatasync, over `rounds` rounds.
pub fn probe(dir: &Path, rounds: u32, method: Method) -> std::io::Result<Histogram<u64>> {
    let path = dir.join("fdatasync-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    if let Method::IntoZeroFilled = method {
        let len = BLOCK_BYTES * u64::from(rounds);
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        file.write_all_at(&zeros, 0)?;
        file.sync_all()?;
    }
    let block = vec![0x5au8; BLOCK_BYTES as usize];
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
    for round in 0..u64::from(rounds) {
        let start = Instant::now();
        file.write_all_at(&block, round * BLOCK_BYTES)?;
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
