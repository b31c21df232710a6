//! The log's record decoder and segment scanner over arbitrary bytes: no panic, no decode that
//! does not re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_engine::wal::fuzz::decode_everything(data);
});
