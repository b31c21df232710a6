//! Replays the fuzz corpus of the log's record decoder (`engine/fuzz/corpus/wal_record/`) on
//! stable Rust, plus every single-byte mutation of each seed, so CI exercises the decoder on the
//! same inputs the fuzzer starts from.
//!
//! The seeds are written by `KEEL_WRITE_FUZZ_CORPUS=1 cargo test -p keel-engine --test
//! wal_fuzz_corpus write_seed_corpus`; files the fuzzer finds can be added to the folder as well.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use bytes::Bytes;
use keel_engine::core::{Entry, HardState, Membership, Payload, SnapshotMeta};
use keel_engine::wal::fuzz::decode_everything;
use keel_engine::wal::record::{self, Record};
use keel_engine::wal::segment::SegmentHeader;

/// The seed segment's salt, as a log of format 3 has in every header.
const SEGMENT_SALT: u32 = 0x5a17_c0de;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/wal_record")
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let joint = Membership {
        voters: [1, 2, 4].into(),
        outgoing: [1, 2, 3].into(),
        learners: [5].into(),
    };
    let records = [
        (
            "entry-command",
            Record::Entry(Entry {
                index: 7,
                term: 2,
                payload: Payload::Command(Bytes::from_static(b"put key value")),
            }),
        ),
        (
            "entry-noop",
            Record::Entry(Entry {
                index: 1,
                term: 1,
                payload: Payload::Noop,
            }),
        ),
        (
            "entry-membership",
            Record::Entry(Entry {
                index: 9,
                term: 3,
                payload: Payload::Membership(joint.clone()),
            }),
        ),
        (
            "hard-state",
            Record::HardState(HardState {
                term: 4,
                vote: Some(2),
                commit: 8,
            }),
        ),
        (
            "snapshot",
            Record::Snapshot(SnapshotMeta {
                index: 100,
                term: 4,
                membership: joint,
            }),
        ),
        ("truncate", Record::Truncate { from: 5 }),
        ("compact", Record::Compact(SnapshotMeta::default())),
        ("group-start", Record::GroupStart { group_bytes: 80 }),
    ];
    let mut out = Vec::new();
    let mut all = Vec::new();
    for (name, r) in &records {
        let mut buf = Vec::new();
        // Salt 0: the fuzz entry point decodes records outside a segment under it.
        record::encode(r, &mut buf, 0).unwrap();
        all.extend_from_slice(&buf);
        out.push((*name, buf));
    }
    let mut segment = SegmentHeader {
        seq: 1,
        first_index: 1,
        marks_groups: true,
        salt: SEGMENT_SALT,
    }
    .encode()
    .to_vec();
    for index in 1..=4 {
        let e = Entry {
            index,
            term: 1,
            payload: Payload::Command(Bytes::from(vec![index as u8; 20])),
        };
        record::encode(&Record::Entry(e), &mut segment, SEGMENT_SALT).unwrap();
    }
    let mut torn = segment.clone();
    torn.truncate(torn.len() - 7);
    let mut damaged = segment.clone();
    damaged[60] ^= 0x20;
    out.push(("records-back-to-back", all));
    out.push(("segment", segment));
    out.push(("segment-torn-tail", torn));
    out.push(("segment-damaged-middle", damaged));
    out
}

#[test]
fn write_seed_corpus() {
    if std::env::var_os("KEEL_WRITE_FUZZ_CORPUS").is_none() {
        return;
    }
    fs::create_dir_all(corpus_dir()).unwrap();
    for (name, bytes) in seeds() {
        fs::write(corpus_dir().join(name), bytes).unwrap();
    }
}

#[test]
fn the_decoder_survives_every_corpus_file_and_its_mutations() {
    let mut files = 0;
    for item in fs::read_dir(corpus_dir()).expect("the corpus is committed") {
        let bytes = fs::read(item.unwrap().path()).unwrap();
        decode_everything(&bytes);
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[at] ^= flip;
                decode_everything(&mutated);
            }
            decode_everything(&bytes[..at]);
        }
        files += 1;
    }
    assert!(files >= seeds().len(), "{files} corpus files");
}

#[test]
fn the_committed_seeds_match_the_current_format() {
    for (name, bytes) in seeds() {
        let committed = fs::read(corpus_dir().join(name)).expect("seed committed");
        assert!(
            committed == bytes,
            "seed {name} is stale: rewrite with KEEL_WRITE_FUZZ_CORPUS=1"
        );
    }
}
