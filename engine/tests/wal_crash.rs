//! Crash tests with real processes: a child appends through the log writer and reports each
//! durable index over its stdout; the parent SIGKILLs it at random moments and restarts it.
//! Every index the child reported durable must be there after every restart, and recovery must
//! succeed every time.
//!
//! The child is this test binary run again (`std::env::current_exe()`) with `CHILD_DIR_ENV` set:
//! its `crash_child` test then runs the child's loop instead of returning at once.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_engine::core::{Entry, HardState, Index, Membership, Payload, SnapshotMeta, Write};
use keel_engine::wal::{LogWriter, Wal, WalOptions, WriterEvent};

const CHILD_DIR_ENV: &str = "KEEL_WAL_CRASH_CHILD_DIR";
/// Starts every line the child says; the test harness may print before it on the same line.
const MARK: &str = "keel-wal-child: ";
const ROUNDS: u32 = 30;
const TEST_TIME_MAX: Duration = Duration::from_secs(8);
/// A child that is never killed stops by itself.
const CHILD_TIME_MAX: Duration = Duration::from_secs(20);

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes_max: 16 * 1024,
        ..WalOptions::default()
    }
}

/// The payload of entry `index`: derived from the index, so any process can check it.
fn payload(index: Index) -> Bytes {
    let len = (index.wrapping_mul(0x9e37_79b9) % 300) as usize;
    let mut bytes = format!("entry {index}:").into_bytes();
    bytes.resize(bytes.len() + len, (index % 256) as u8);
    Bytes::from(bytes)
}

fn entry(index: Index) -> Entry {
    Entry {
        index,
        term: 1,
        payload: Payload::Command(payload(index)),
    }
}

/// Checks a recovered log against what the child writes. Returns the last index it holds.
fn verify(snapshot: &SnapshotMeta, entries: &[Entry]) -> Result<Index, String> {
    for (expected_index, e) in (snapshot.index + 1..).zip(entries) {
        if *e != entry(expected_index) {
            return Err(format!("entry {expected_index} is wrong: {e:?}"));
        }
    }
    Ok(snapshot.index + entries.len() as u64)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reading this pipe is gone: nothing left to do but stop.
    if out
        .write_all(format!("{MARK}{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(3);
    }
}

/// The child's entry point; does nothing when run as an ordinary test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    run_child(Path::new(&dir));
}

fn run_child(dir: &Path) -> ! {
    let started = Instant::now();
    let (wal, rec) = match Wal::open(dir, opts()) {
        Ok(x) => x,
        Err(e) => {
            say(&format!("ERROR recovery failed: {e}"));
            std::process::exit(1);
        }
    };
    let last = match verify(&rec.snapshot, &rec.entries) {
        Ok(last) => last,
        Err(e) => {
            say(&format!("ERROR {e}"));
            std::process::exit(2);
        }
    };
    if rec.hard_state.commit > last {
        say("ERROR commit beyond the log");
        std::process::exit(2);
    }
    say(&format!(
        "RECOVERED {} {last} {}",
        rec.snapshot.index,
        u8::from(rec.torn_tail.is_some())
    ));
    let (writer, events) = LogWriter::spawn(wal);
    let durable = Arc::new(AtomicU64::new(last));
    let reporter = {
        let durable = Arc::clone(&durable);
        std::thread::spawn(move || {
            for event in events {
                match event {
                    WriterEvent::Durable { writes, .. } => {
                        if let Some((index, _)) = writes.iter().rev().find_map(Write::last_entry) {
                            durable.store(index, Ordering::SeqCst);
                            say(&format!("DURABLE {index}"));
                        }
                    }
                    WriterEvent::Failed(e) => {
                        say(&format!("ERROR writer failed: {e}"));
                        std::process::exit(4);
                    }
                }
            }
        })
    };
    let mut next = last + 1;
    let mut compacted = rec.snapshot.index;
    while started.elapsed() < CHILD_TIME_MAX {
        let count = 1 + next % 4;
        let write = Write {
            entries: (next..next + count).map(entry).collect(),
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
                commit: durable.load(Ordering::SeqCst),
            }),
            ..Write::default()
        };
        next += count;
        if writer.submit(write).is_err() {
            break;
        }
        let durable_now = durable.load(Ordering::SeqCst);
        if durable_now > compacted + 400 {
            compacted = durable_now - 100;
            let snapshot = SnapshotMeta {
                index: compacted,
                term: 1,
                membership: Membership::new([1], []),
            };
            if writer.compact(snapshot).is_err() {
                break;
            }
        }
    }
    drop(writer.stop());
    drop(reporter.join());
    std::process::exit(0);
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

#[test]
fn sigkill_at_random_moments_never_loses_a_durable_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let seed = std::env::var("KEEL_WAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("KEEL_WAL_CRASH_SEED={seed}");
    let mut rng = SplitMix(seed);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut durable_max: Index = 0;
    let (mut rounds, mut torn_tails, mut recovered_rounds) = (0, 0, 0);
    while rounds < ROUNDS && started.elapsed() < TEST_TIME_MAX {
        rounds += 1;
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = crossbeam_channel::unbounded::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Sometimes kill during start-up and recovery; usually while appending.
        let early = rng.below(4) == 0;
        let kill_after = if early {
            Duration::from_micros(rng.below(4_000))
        } else {
            Duration::from_millis(5 + rng.below(120))
        };
        let spawned = Instant::now();
        let mut recovered_at: Option<Instant> = None;
        let mut handle = |line: &str, recovered_at: &mut Option<Instant>| {
            let Some((_, said)) = line.split_once(MARK) else {
                return; // The test harness's own output.
            };
            let mut words = said.split_whitespace();
            match words.next() {
                Some("DURABLE") => {
                    let index: Index = words.next().unwrap().parse().unwrap();
                    durable_max = durable_max.max(index);
                }
                Some("RECOVERED") => {
                    let snapshot: Index = words.next().unwrap().parse().unwrap();
                    let last: Index = words.next().unwrap().parse().unwrap();
                    let torn = words.next() == Some("1");
                    assert!(
                        last >= durable_max,
                        "round {rounds}: recovered up to {last} (snapshot {snapshot}) but {durable_max} \
                         was reported durable (seed {seed})"
                    );
                    torn_tails += u32::from(torn);
                    *recovered_at = Some(Instant::now());
                }
                Some("ERROR") => panic!("round {rounds}: child: {said} (seed {seed})"),
                _ => panic!("round {rounds}: the child said {said:?}"),
            }
        };
        loop {
            let deadline = if early {
                spawned + kill_after
            } else {
                match recovered_at {
                    Some(at) => at + kill_after,
                    None => spawned + Duration::from_secs(10),
                }
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match lines.recv_timeout(deadline - now) {
                Ok(line) => handle(&line, &mut recovered_at),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "round {rounds}: the child exited by itself: {:?}",
                        child.wait()
                    )
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        // Lines the child wrote before it died still count: it said them only once durable.
        for line in lines.try_iter() {
            handle(&line, &mut recovered_at);
        }
        recovered_rounds += u32::from(recovered_at.is_some());
    }
    // The last word: recover in this process and check every entry.
    let (_, rec) = Wal::open(&dir, opts()).expect("recovery after the last kill");
    let last = verify(&rec.snapshot, &rec.entries).unwrap();
    assert!(
        last >= durable_max,
        "recovered {last} < durable {durable_max}"
    );
    println!(
        "{rounds} rounds ({recovered_rounds} recovered before the kill), {torn_tails} torn tails, \
         {durable_max} entries durable, snapshot at {}, {:?}",
        rec.snapshot.index,
        started.elapsed()
    );
    assert!(durable_max > 0, "the children made progress");
    assert!(recovered_rounds >= rounds / 2);
}
