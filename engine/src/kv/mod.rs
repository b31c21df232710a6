//! A replicated key-value store: the state machine behind the examples and the benchmark.
//!
//! Commands are `put`, `delete` and `compare_and_swap`, encoded compactly; reads are local to a
//! node and linearizable after [`Node::read_index`](crate::node::Node::read_index) (or the
//! lease). The map is shared copy-on-write in shards ([`map`]), so a snapshot is a frozen copy
//! taken in constant time on the apply path and serialized on the snapshot thread.

mod map;
mod table;

use std::collections::HashMap;
use std::io::{self, Read};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::core::Index;
use crate::node::{Command, Error, Node, SnapshotSource, StateMachine, StateMachineError};

/// A key-value command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Sets `key` to `new` (or deletes it when `None`) only if it currently holds `expected`
    /// (`None`: absent).
    CompareAndSwap {
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    },
}

/// Why a key-value call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key not found")]
    NotFound,
    /// A compare-and-swap found another value (`None`: the key is absent).
    #[error("compare-and-swap failed")]
    CompareFailed { current: Option<Bytes> },
    #[error("malformed command")]
    Malformed,
    #[error(transparent)]
    Node(#[from] Error),
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;

const RESPONSE_OK: u8 = 0;
const RESPONSE_NOT_FOUND: u8 = 1;
const RESPONSE_COMPARE_FAILED: u8 = 2;
const RESPONSE_MALFORMED: u8 = 3;

impl KvCommand {
    pub fn encode(&self) -> Bytes {
        // One allocation of the exact size: grown part by part, a put reallocated twice.
        let mut b = BytesMut::with_capacity(self.encoded_len());
        match self {
            KvCommand::Put { key, value } => {
                b.put_u8(TAG_PUT);
                put_bytes(&mut b, key);
                b.put_slice(value);
            }
            KvCommand::Delete { key } => {
                b.put_u8(TAG_DELETE);
                b.put_slice(key);
            }
            KvCommand::CompareAndSwap { key, expected, new } => {
                b.put_u8(TAG_CAS);
                put_bytes(&mut b, key);
                put_option(&mut b, expected.as_deref());
                put_option(&mut b, new.as_deref());
            }
        }
        b.freeze()
    }

    /// The length of [`Self::encode`]'s bytes.
    fn encoded_len(&self) -> usize {
        let part = |data: &[u8]| 4 + data.len();
        let option = |data: Option<&[u8]>| 1 + data.map_or(0, part);
        1 + match self {
            KvCommand::Put { key, value } => part(key) + value.len(),
            KvCommand::Delete { key } => key.len(),
            KvCommand::CompareAndSwap { key, expected, new } => {
                part(key) + option(expected.as_deref()) + option(new.as_deref())
            }
        }
    }

    /// Decodes a command; `None` when the bytes are not one. Slices share `data`'s buffer.
    pub fn decode(data: &Bytes) -> Option<Self> {
        let some = |part: Option<&[u8]>| part.map(|p| data.slice_ref(p));
        Some(match CommandRef::parse(data)? {
            CommandRef::Put { key, value } => KvCommand::Put {
                key: data.slice_ref(key),
                value: data.slice_ref(value),
            },
            CommandRef::Delete { key } => KvCommand::Delete {
                key: data.slice_ref(key),
            },
            CommandRef::CompareAndSwap { key, expected, new } => KvCommand::CompareAndSwap {
                key: data.slice_ref(key),
                expected: some(expected),
                new: some(new),
            },
        })
    }
}

/// A command read in place: what the store executes, without a reference count per part.
#[derive(Clone, Copy, Debug)]
enum CommandRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    CompareAndSwap {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    },
}

impl<'a> CommandRef<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let (&tag, mut rest) = data.split_first()?;
        Some(match tag {
            TAG_PUT => {
                let key = take_bytes(&mut rest)?;
                CommandRef::Put { key, value: rest }
            }
            TAG_DELETE => CommandRef::Delete { key: rest },
            TAG_CAS => {
                let key = take_bytes(&mut rest)?;
                let expected = take_option(&mut rest)?;
                let new = take_option(&mut rest)?;
                if !rest.is_empty() {
                    return None;
                }
                CommandRef::CompareAndSwap { key, expected, new }
            }
            _ => return None,
        })
    }

    fn key(&self) -> &'a [u8] {
        match *self {
            CommandRef::Put { key, .. }
            | CommandRef::Delete { key }
            | CommandRef::CompareAndSwap { key, .. } => key,
        }
    }
}

fn put_bytes(b: &mut BytesMut, data: &[u8]) {
    b.put_u32_le(u32::try_from(data.len()).expect("keys and values are below 4 GiB"));
    b.put_slice(data);
}

fn put_option(b: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            b.put_u8(1);
            put_bytes(b, d);
        }
        None => b.put_u8(0),
    }
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if tail.len() < len {
        return None;
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Some(part)
}

fn take_option<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (&flag, tail) = rest.split_first()?;
    *rest = tail;
    match flag {
        0 => Some(None),
        1 => take_bytes(rest).map(Some),
        _ => None,
    }
}

/// The key-value state machine.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    map: map::ShardedMap,
    applied: Index,
}

impl KvStore {
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(self.map.key(key)).map(Bytes::copy_from_slice)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Every key and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter()
    }

    /// Executes a command read with [`CommandRef::parse`]; `key` is its key, hashed.
    /// `refusals` holds this batch's compare-failed responses by key, while the key is not
    /// written: each carries the key's whole value, and a batch of thousands of failing
    /// compare-and-swaps on one large value built a copy each (gigabytes, on every replica),
    /// where they can share one.
    fn execute<'a>(
        &mut self,
        command: CommandRef<'a>,
        key: map::Key<'_>,
        refusals: &mut HashMap<&'a [u8], Bytes>,
    ) -> Bytes {
        let map = &mut self.map;
        let mut written = || {
            if !refusals.is_empty() {
                refusals.remove(command.key());
            }
        };
        match command {
            CommandRef::Put { value, .. } => {
                map.insert(key, value);
                written();
                Bytes::from_static(&[RESPONSE_OK])
            }
            CommandRef::Delete { .. } => match map.remove(key) {
                true => {
                    written();
                    Bytes::from_static(&[RESPONSE_OK])
                }
                false => Bytes::from_static(&[RESPONSE_NOT_FOUND]),
            },
            CommandRef::CompareAndSwap { expected, new, .. } => {
                let current = map.get(key);
                if current != expected {
                    return refusals
                        .entry(command.key())
                        .or_insert_with(|| {
                            let mut b = BytesMut::new();
                            b.put_u8(RESPONSE_COMPARE_FAILED);
                            put_option(&mut b, current);
                            b.freeze()
                        })
                        .clone();
                }
                match new {
                    Some(v) => map.insert(key, v),
                    None => {
                        map.remove(key);
                    }
                }
                written();
                Bytes::from_static(&[RESPONSE_OK])
            }
        }
    }
}

/// Reads a response of [`KvStore`] back into a result.
pub fn decode_response(response: &Bytes) -> Result<(), KvError> {
    let (&tag, mut rest) = response.split_first().ok_or(KvError::Malformed)?;
    match tag {
        RESPONSE_OK => Ok(()),
        RESPONSE_NOT_FOUND => Err(KvError::NotFound),
        RESPONSE_COMPARE_FAILED => Err(KvError::CompareFailed {
            current: take_option(&mut rest)
                .ok_or(KvError::Malformed)?
                .map(|c| response.slice_ref(c)),
        }),
        _ => Err(KvError::Malformed),
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, commands: &[Command<'_>]) -> Result<Vec<Bytes>, StateMachineError> {
        // Each command is read and its key hashed `LOOKAHEAD` commands before it executes, so
        // that the loop can ask the memory for the shard, slot and entry of commands ahead of
        // the one it executes: with a large map nearly each of those is a cache miss, and a
        // miss waited for alone costs as much as executing a command whose data is at hand.
        // The commands read ahead wait in a small ring, not in a list of the whole batch (at
        // thousands of commands per batch that list was a large allocation every time).
        const STAGE_DISTANCE: usize = 4;
        const LOOKAHEAD: usize = 3 * STAGE_DISTANCE;
        const RING: usize = 16;
        const _: () = assert!(RING > LOOKAHEAD);
        type Parsed<'a> = Option<(CommandRef<'a>, map::Key<'a>)>;
        let parse = |map: &map::ShardedMap, i: usize| -> Parsed<'_> {
            let data = commands.get(i)?.data;
            CommandRef::parse(data).map(|cmd| (cmd, map.key(cmd.key())))
        };
        let mut ring: [Parsed<'_>; RING] = [None; RING];
        for (i, slot) in ring.iter_mut().enumerate().take(LOOKAHEAD) {
            *slot = parse(&self.map, i);
        }
        let mut responses = Vec::with_capacity(commands.len());
        let mut refusals = HashMap::new();
        for i in 0..commands.len() {
            ring[(i + LOOKAHEAD) % RING] = parse(&self.map, i + LOOKAHEAD);
            for (ahead, stage) in [
                (LOOKAHEAD, map::Prefetch::Shard),
                (2 * STAGE_DISTANCE, map::Prefetch::Slot),
                (STAGE_DISTANCE, map::Prefetch::Entry),
            ] {
                if let Some((_, key)) = ring[(i + ahead) % RING] {
                    self.map.prefetch(key, stage);
                }
            }
            responses.push(match ring[i % RING] {
                Some((command, key)) => self.execute(command, key, &mut refusals),
                None => Bytes::from_static(&[RESPONSE_MALFORMED]),
            });
        }
        if let Some(last) = commands.last() {
            self.applied = last.index;
        }
        Ok(responses)
    }

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(KvSnapshot {
            map: self.map.freeze(),
        })
    }

    fn restore(&mut self, index: Index, data: &mut dyn Read) -> Result<(), StateMachineError> {
        // Entry by entry from the stream: the state is built once, never the snapshot's bytes.
        let mut data = io::BufReader::new(data);
        let malformed =
            |e: io::Error| StateMachineError(format!("malformed key-value snapshot: {e}"));
        let mut word = [0u8; 8];
        data.read_exact(&mut word).map_err(malformed)?;
        check_snapshot_header(word)?;
        data.read_exact(&mut word).map_err(malformed)?;
        let count = u64::from_le_bytes(word);
        let mut map = map::ShardedMap::default();
        // Read into two buffers reused for every entry; the map copies each entry once.
        let read_part = |data: &mut io::BufReader<&mut dyn Read>, part: &mut Vec<u8>| {
            let mut len = [0u8; 4];
            data.read_exact(&mut len)?;
            let len = u64::from(u32::from_le_bytes(len));
            // Grown as bytes arrive: a damaged length cannot make this allocate gigabytes.
            part.clear();
            data.by_ref().take(len).read_to_end(part)?;
            if part.len() as u64 != len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(())
        };
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for _ in 0..count {
            read_part(&mut data, &mut key).map_err(malformed)?;
            read_part(&mut data, &mut value).map_err(malformed)?;
            map.insert(map.key(&key), &value);
        }
        // A count short of the entries that follow: not a snapshot this format wrote.
        if data.read(&mut [0u8; 1]).map_err(malformed)? != 0 {
            return Err(StateMachineError(
                "malformed key-value snapshot: bytes after its last entry".into(),
            ));
        }
        self.map = map;
        self.applied = index;
        Ok(())
    }
}

/// What a snapshot gathers before writing it out.
const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;

/// A key-value snapshot starts with this magic and its format's version (u16, little-endian),
/// then the entry count (u64) and each key and value as a u32 length and its bytes. The version
/// lets a later keel read an older snapshot, or refuse a newer one by name instead of
/// misreading it.
const SNAPSHOT_MAGIC: [u8; 6] = *b"KEELKV";
const SNAPSHOT_FORMAT_VERSION: u16 = 1;

fn snapshot_header() -> [u8; 8] {
    let mut out = [0; 8];
    out[..6].copy_from_slice(&SNAPSHOT_MAGIC);
    out[6..].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out
}

fn check_snapshot_header(found: [u8; 8]) -> Result<(), StateMachineError> {
    if found[..6] != SNAPSHOT_MAGIC {
        return Err(StateMachineError(
            "not a key-value snapshot (its magic is missing)".into(),
        ));
    }
    match u16::from_le_bytes([found[6], found[7]]) {
        SNAPSHOT_FORMAT_VERSION => Ok(()),
        other => Err(StateMachineError(format!(
            "key-value snapshot format version {other}; this keel reads version \
             {SNAPSHOT_FORMAT_VERSION}"
        ))),
    }
}

struct KvSnapshot {
    map: map::FrozenMap,
}

impl SnapshotSource for KvSnapshot {
    fn write_to(&mut self, out: &mut dyn io::Write) -> io::Result<()> {
        // Parts are gathered into chunks: written one by one, each of a million keys' four
        // parts was a call through `out` (and the byte counter around it), which cost more than
        // copying its bytes (10% of the machine at peak in memory, with 0-byte values).
        let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
        chunk.extend_from_slice(&snapshot_header());
        chunk.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in self.map.iter() {
            for part in [k, v] {
                let len = u32::try_from(part.len()).map_err(io::Error::other)?;
                chunk.extend_from_slice(&len.to_le_bytes());
                if part.len() < SNAPSHOT_CHUNK_BYTES {
                    chunk.extend_from_slice(part);
                } else {
                    // Written as it is: copied, it would leave the chunk that large.
                    out.write_all(&chunk)?;
                    chunk.clear();
                    out.write_all(part)?;
                }
            }
            if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
                out.write_all(&chunk)?;
                chunk.clear();
            }
        }
        out.write_all(&chunk)
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable: a ReadIndex round (forwarded to the leader from a follower).
    Linearizable,
    /// Linearizable while the leader lease holds, without a round trip.
    Lease,
    /// Whatever this node has applied: may be stale.
    Local,
}

impl Node<KvStore> {
    /// Sets `key` to `value` through the leader; returns once this node... the leader applied it.
    pub fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Index, KvError> {
        let command = KvCommand::Put {
            key: key.into(),
            value: value.into(),
        };
        self.execute(command, timeout)
    }

    /// Deletes `key`; `NotFound` if it was absent.
    pub fn delete(&self, key: impl Into<Bytes>, timeout: Duration) -> Result<Index, KvError> {
        self.execute(KvCommand::Delete { key: key.into() }, timeout)
    }

    /// Replaces `expected` with `new` atomically.
    pub fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Index, KvError> {
        let command = KvCommand::CompareAndSwap {
            key: key.into(),
            expected,
            new,
        };
        self.execute(command, timeout)
    }

    fn execute(&self, command: KvCommand, timeout: Duration) -> Result<Index, KvError> {
        let applied = self
            .propose_forwarded(command.encode())
            .wait_applied(timeout)?;
        decode_response(&applied.response)?;
        Ok(applied.index)
    }

    /// Reads `key` at the given consistency; `NotFound` if absent.
    pub fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<Bytes, KvError> {
        match consistency {
            Consistency::Linearizable => {
                self.read_index().wait(timeout)?;
            }
            Consistency::Lease => {
                self.lease_read().wait(timeout)?;
            }
            Consistency::Local => {}
        }
        self.state_machine().get(key).ok_or(KvError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let commands = [
            KvCommand::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            },
            KvCommand::Delete {
                key: Bytes::from_static(b"k"),
            },
            KvCommand::CompareAndSwap {
                key: Bytes::from_static(b"k"),
                expected: None,
                new: Some(Bytes::from_static(b"x")),
            },
            KvCommand::CompareAndSwap {
                key: Bytes::from_static(b"key"),
                expected: Some(Bytes::from_static(b"old")),
                new: None,
            },
        ];
        for c in commands {
            let bytes = c.encode();
            assert_eq!(bytes.len(), c.encoded_len(), "allocated at its exact size");
            assert_eq!(KvCommand::decode(&bytes), Some(c));
        }
        assert_eq!(KvCommand::decode(&Bytes::from_static(&[9, 1, 2])), None);
        assert_eq!(
            KvCommand::decode(&Bytes::from_static(&[TAG_PUT, 200, 0, 0, 0])),
            None
        );
    }

    #[test]
    fn a_batch_answers_each_command_as_if_applied_alone() {
        // Longer than the read-ahead ring many times over; few keys, so commands depend on the
        // ones just before them; malformed commands among them.
        let data: Vec<Bytes> = (0..200u32)
            .map(|i| {
                let key = Bytes::from(format!("k{}", i % 7));
                match i % 5 {
                    0 => KvCommand::Put {
                        key,
                        value: Bytes::from(format!("v{i}")),
                    }
                    .encode(),
                    1 => KvCommand::Delete { key }.encode(),
                    2 => KvCommand::CompareAndSwap {
                        key,
                        expected: None,
                        new: Some(Bytes::from(format!("c{i}"))),
                    }
                    .encode(),
                    3 => KvCommand::CompareAndSwap {
                        key,
                        expected: Some(Bytes::from(format!("v{}", i - 3))),
                        new: None,
                    }
                    .encode(),
                    _ => Bytes::from(vec![9, 9, (i % 256) as u8]),
                }
            })
            .collect();
        let commands: Vec<Command<'_>> = (1..)
            .zip(&data)
            .map(|(index, data)| Command {
                index,
                term: 1,
                data,
            })
            .collect();
        let mut batched = KvStore::default();
        let answers = batched.apply(&commands).expect("applies");
        let mut alone = KvStore::default();
        let one_by_one: Vec<Bytes> = commands
            .chunks(1)
            .flat_map(|c| alone.apply(c).expect("applies"))
            .collect();
        assert_eq!(answers, one_by_one);
        assert_eq!(batched.map.sorted(), alone.map.sorted());
        assert_eq!(batched.applied_index(), 200);
    }

    /// Applies a put of `value(i)` to `key-{i}` for i in 0..5,000, from log index `first`.
    fn put_all(kv: &mut KvStore, first: Index, value: impl Fn(u32) -> Bytes) {
        let puts: Vec<Bytes> = (0..5_000u32)
            .map(|i| {
                KvCommand::Put {
                    key: Bytes::from(format!("key-{i}")),
                    value: value(i),
                }
                .encode()
            })
            .collect();
        let commands: Vec<Command<'_>> = (first..)
            .zip(&puts)
            .map(|(index, data)| Command {
                index,
                term: 1,
                data,
            })
            .collect();
        kv.apply(&commands).expect("applies");
    }

    #[test]
    fn a_snapshot_of_another_format_or_version_or_malformed_is_refused_by_name() {
        let mut kv = KvStore::default();
        put_all(&mut kv, 1, |_| Bytes::from_static(b"v"));
        let mut good = Vec::new();
        kv.snapshot().write_to(&mut good).expect("writes");
        let refused = |bytes: &[u8]| {
            let mut restored = KvStore::default();
            let error = restored.restore(7, &mut &bytes[..]).expect_err("refused");
            assert_eq!(restored.len(), 0, "nothing restored");
            error.0
        };
        let mut foreign = good.clone();
        foreign[0] ^= 0xFF;
        assert!(refused(&foreign).contains("not a key-value snapshot"));
        let mut newer = good.clone();
        newer[6..8].copy_from_slice(&2u16.to_le_bytes());
        assert!(refused(&newer).contains("format version 2"));
        // The format before versions began with the entry count.
        assert!(refused(&good[8..]).contains("not a key-value snapshot"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(refused(&longer).contains("bytes after its last entry"));
    }

    #[test]
    fn snapshot_restores_the_same_map() {
        let mut kv = KvStore::default();
        // Enough for several of the snapshot's chunks, and one value larger than a chunk.
        let value = |i: u32| {
            let size = if i == 42 {
                3 * SNAPSHOT_CHUNK_BYTES
            } else {
                40
            };
            Bytes::from(vec![i as u8; size])
        };
        put_all(&mut kv, 1, value);
        let mut out = Vec::new();
        kv.snapshot().write_to(&mut out).expect("writes");
        assert!(out.len() > 4 * SNAPSHOT_CHUNK_BYTES);
        let mut restored = KvStore::default();
        restored.restore(5_000, &mut &out[..]).expect("restores");
        assert_eq!(restored.applied_index(), 5_000);
        assert_eq!(restored.len(), 5_000);
        for i in [0u32, 41, 42, 43, 4_999] {
            let key = format!("key-{i}");
            assert_eq!(restored.get(key.as_bytes()), Some(value(i)));
        }
        // A snapshot being written on its own thread while the store it froze is overwritten,
        // then replaced whole (an installed snapshot): it still writes the state it froze.
        // The copy is frozen here and read only once the store has moved on.
        let mut source = restored.snapshot();
        let (moved_on, wait) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            wait.recv().expect("the store moves on first");
            let mut again = Vec::new();
            source.write_to(&mut again).expect("writes");
            again
        });
        put_all(&mut restored, 5_001, |_| Bytes::from_static(b"later"));
        restored.restore(5_000, &mut &out[..]).expect("restores");
        moved_on.send(()).expect("the writer waits");
        let again = writer.join().expect("the snapshot thread finishes");
        let mut from_again = KvStore::default();
        from_again
            .restore(5_000, &mut &again[..])
            .expect("restores");
        assert_eq!(from_again.len(), 5_000);
        for i in [0u32, 42, 4_999] {
            let key = format!("key-{i}");
            assert_eq!(from_again.get(key.as_bytes()), Some(value(i)));
        }
    }

    #[test]
    fn compare_and_swap_reports_the_current_value() {
        let mut kv = KvStore::default();
        let cas = KvCommand::CompareAndSwap {
            key: Bytes::from_static(b"k"),
            expected: Some(Bytes::from_static(b"old")),
            new: None,
        }
        .encode();
        let r = kv
            .apply(&[Command {
                index: 1,
                term: 1,
                data: &cas,
            }])
            .expect("applies")
            .remove(0);
        assert_eq!(
            decode_response(&r),
            Err(KvError::CompareFailed { current: None })
        );
    }

    #[test]
    fn failed_compare_and_swaps_on_one_value_share_one_response_until_it_changes() {
        let mut kv = KvStore::default();
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let commands: Vec<Bytes> = [
            KvCommand::Put {
                key: Bytes::from_static(b"k"),
                value: big.clone(),
            },
            KvCommand::CompareAndSwap {
                key: Bytes::from_static(b"k"),
                expected: None,
                new: None,
            },
        ]
        .into_iter()
        .chain((0..100).map(|_| KvCommand::CompareAndSwap {
            key: Bytes::from_static(b"k"),
            expected: None,
            new: None,
        }))
        .chain([KvCommand::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"small"),
        }])
        .chain([KvCommand::CompareAndSwap {
            key: Bytes::from_static(b"k"),
            expected: None,
            new: None,
        }])
        .map(|c| c.encode())
        .collect();
        let batch: Vec<Command<'_>> = commands
            .iter()
            .enumerate()
            .map(|(i, data)| Command {
                index: i as u64 + 1,
                term: 1,
                data,
            })
            .collect();
        let responses = kv.apply(&batch).expect("applies");
        let refused = &responses[1..102];
        for r in refused {
            assert_eq!(
                decode_response(r),
                Err(KvError::CompareFailed {
                    current: Some(big.clone())
                })
            );
            assert_eq!(
                r.as_ptr(),
                refused[0].as_ptr(),
                "one copy of the value, shared"
            );
        }
        // Once the value changes, a refusal carries the new one.
        assert_eq!(
            decode_response(&responses[103]),
            Err(KvError::CompareFailed {
                current: Some(Bytes::from_static(b"small"))
            })
        );
    }

    #[test]
    fn stored_values_do_not_keep_the_buffer_commands_arrived_in() {
        // Followers receive many entries in one frame and apply slices of it; the store must
        // keep copies, or one live key pins the whole frame.
        let put = |k: &[u8], v: &[u8]| {
            KvCommand::Put {
                key: Bytes::copy_from_slice(k),
                value: Bytes::copy_from_slice(v),
            }
            .encode()
        };
        let (a, b) = (put(b"a", &[1; 100]), put(b"b", &[2; 100]));
        let mut frame = BytesMut::new();
        frame.put_slice(&a);
        frame.put_slice(&b);
        frame.put_bytes(0, 64 * 1024);
        let frame = frame.freeze();
        let data = [
            frame.slice(..a.len()),
            frame.slice(a.len()..a.len() + b.len()),
        ];
        let mut kv = KvStore::default();
        let commands: Vec<_> = (0..2)
            .map(|i| Command {
                index: i as Index + 1,
                term: 1,
                data: &data[i],
            })
            .collect();
        kv.apply(&commands).expect("applies");
        drop(commands);
        drop(data);
        assert!(frame.is_unique(), "the store still refers to the frame");
        assert_eq!(kv.get(b"b").as_deref(), Some(&[2; 100][..]));
    }
}
