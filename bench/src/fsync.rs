//! The physical limit: the latency of a small write plus fdatasync on the directory the nodes
//! use, measured in the same run so every figure can be read as a ratio to it.
//!
//! The write goes into a file zero-filled and synced beforehand, as the log writes into its
//! segments: an append would also commit the file's new size at each sync, which is slower,
//! and a ratio to it would flatter keel.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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

/// The type of the filesystem `dir` is on (`ext4`, `tmpfs`...), from the longest mount point
/// containing it in `/proc/self/mountinfo`; `None` where that cannot be read.
pub fn filesystem_of(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    filesystem_in(&mounts, &dir)
}

/// Filesystems whose fdatasync reaches no disk: a run on one measures memory, not durability.
pub fn is_volatile(filesystem: &str) -> bool {
    matches!(filesystem, "tmpfs" | "ramfs")
}

fn filesystem_in(mountinfo: &str, dir: &Path) -> Option<String> {
    // Fields: id, parent, major:minor, root, mount point, options, optional fields, "-",
    // filesystem type, source, super options.
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = PathBuf::from(unescape(fields.get(4)?));
            let dash = fields.iter().position(|&f| f == "-")?;
            let fs_type = fields.get(dash + 1)?;
            dir.starts_with(&mount_point)
                .then(|| (mount_point.components().count(), fs_type.to_string()))
        })
        // The last of equally long mount points is the one mounted over the others.
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, fs_type)| fs_type)
}

/// Mount points escape spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:20 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
24 23 8:2 / /tmp/on\\040disk rw - xfs /dev/sdb1 rw
25 22 0:21 / /dev/shm rw - tmpfs tmpfs rw
";

    #[test]
    fn a_directory_is_on_the_filesystem_of_its_longest_mount_point() {
        let fs = |dir: &str| filesystem_in(MOUNTINFO, Path::new(dir));
        assert_eq!(fs("/var/lib/keel").as_deref(), Some("ext4"));
        assert_eq!(fs("/tmp/keel-bench-x").as_deref(), Some("tmpfs"));
        assert_eq!(fs("/tmp/on disk/keel").as_deref(), Some("xfs"));
        assert_eq!(
            fs("/tmpfoo").as_deref(),
            Some("ext4"),
            "a prefix is not a parent"
        );
        assert!(is_volatile("tmpfs") && !is_volatile("ext4"));
    }

    #[test]
    fn this_machines_temporary_directory_has_a_filesystem() {
        assert!(filesystem_of(&std::env::temp_dir()).is_some());
    }
}
