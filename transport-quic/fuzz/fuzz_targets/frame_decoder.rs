//! Feeds arbitrary bytes to the receive path of a frame: header, size limit, aligned body,
//! bytecheck validation, and conversion to core messages held to an authenticated sender. It
//! must return an error for anything malformed and never panic, hang or allocate past the limit.
#![no_main]

use keel_transport_quic::codec::validate_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Several frames back to back, as on a stream.
    while let Ok(used) = validate_frame(rest, 2, 1, 1 << 20) {
        rest = &rest[used..];
    }
});
