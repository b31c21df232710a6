//! Entry points for the fuzz target (`engine/fuzz`) and the test that replays its corpus on
//! stable Rust. Not part of the API.

use super::record::{checksum, decode, encode, may_start_record, Record};
use super::segment::scan;

/// Runs everything that reads log bytes from disk over `data`: the record decoder (records back
/// to back, as in a segment body), the body parser behind the checksum (`data` sealed with a
/// correct length and CRC, so that mutations reach it), and the segment scanner (header, records,
/// and the search for a valid record after damage). Records are checked under salt 0: a salt
/// changes only the checksum's starting value, and the sealing reaches the parser either way.
///
/// Panics only on a decoder bug: a record that decodes must re-encode to exactly the bytes it
/// was decoded from (the decoder accepts nothing the encoder would not write), and pass the
/// layout check recovery searches for valid records with (or recovery would call damage before
/// it a torn tail, and cut acknowledged entries).
pub fn decode_everything(data: &[u8]) {
    let mut at = 0;
    while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
        let Ok((record, record_bytes)) = decode(rest, 0) else {
            break;
        };
        assert_reencodes(&record, &rest[..record_bytes]);
        at += record_bytes;
    }

    if let Ok(body_bytes) = u32::try_from(data.len()) {
        let len = body_bytes.to_le_bytes();
        let crc = checksum(0, &len, data);
        let mut sealed = Vec::with_capacity(8 + data.len());
        sealed.extend_from_slice(&len);
        sealed.extend_from_slice(&crc.to_le_bytes());
        sealed.extend_from_slice(data);
        if let Ok((record, record_bytes)) = decode(&sealed, 0) {
            assert_eq!(record_bytes, sealed.len());
            assert_reencodes(&record, &sealed);
        }
    }

    let scanned = scan(data, 0);
    if let Some(damage) = &scanned.damage {
        assert!(damage.offset as usize <= data.len());
    }
}

fn assert_reencodes(record: &Record, bytes: &[u8]) {
    assert!(
        may_start_record(bytes),
        "a decoded record fails the layout check: {record:?}"
    );
    let mut again = Vec::new();
    let encoded = encode(record, &mut again, 0).expect("a decoded record is within limits");
    assert_eq!(encoded, bytes.len(), "re-encoded size differs: {record:?}");
    assert_eq!(again[..], bytes[..], "re-encoding differs: {record:?}");
}
