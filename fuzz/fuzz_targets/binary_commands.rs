//! FlatBuffers command decoding (verifier first) on arbitrary bytes:
//! never panics, never reads out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::engine::wire::binary::decode_commands;

fuzz_target!(|data: &[u8]| {
    let _ = decode_commands(data, |c| {
        let _ = c.method.map(|m| m.name());
    });
});
