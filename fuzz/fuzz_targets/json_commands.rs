//! JSON command decoding on arbitrary bytes: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::engine::wire::json::decode_commands;

fuzz_target!(|data: &[u8]| {
    let _ = decode_commands(data, |c| {
        let _ = c.method.map(|m| m.name());
    });
});
