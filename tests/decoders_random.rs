//! Seeded random input through every decoder that sees client bytes (the
//! same properties as the fuzz targets in fuzz/, in the default suite):
//! nothing panics, and the frame decoder reports the same events however
//! the input is split.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wsedge::engine::wire::{binary, json};
use wsedge::engine::ws::frame::{DecoderLimits, Event, Flow, FrameDecoder};
use wsedge::engine::ws::handshake::{HandshakeConfig, parse_request};

fn frames(data: &[u8], splits: &[usize]) -> (Vec<String>, Option<u16>) {
    let limits = DecoderLimits {
        max_message_size: 4096,
        allow_compressed: true,
    };
    let mut dec = FrameDecoder::new();
    let mut events = Vec::new();
    let mut start = 0;
    for &end in splits.iter().chain([data.len()].iter()) {
        let mut buf = data[start..end].to_vec();
        start = end;
        let r = dec.feed(&mut buf, &limits, |e| {
            events.push(match e {
                Event::Message {
                    text,
                    payload,
                    compressed,
                } => format!("m{text}{compressed}{payload:?}"),
                Event::Ping(p) => format!("i{p:?}"),
                Event::Pong(p) => format!("o{p:?}"),
                Event::Close { code, reason } => format!("c{code:?}{reason}"),
            });
            Flow::Continue
        });
        if let Err(reason) = r {
            return (events, Some(reason.code()));
        }
    }
    (events, None)
}

/// A plausible client frame stream with random corruption.
fn frame_soup(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..6) {
        let opcode = *[0u8, 1, 2, 8, 9, 10, 3, 11]
            .get(rng.random_range(0..8))
            .unwrap();
        let fin = rng.random_bool(0.7);
        let len = rng.random_range(0..300usize);
        let payload: Vec<u8> = if rng.random_bool(0.5) {
            (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
        } else {
            (0..len).map(|_| rng.random()).collect()
        };
        out.push((fin as u8) << 7 | opcode | if rng.random_bool(0.05) { 0x40 } else { 0 });
        if len < 126 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        let mask: [u8; 4] = rng.random();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    for _ in 0..rng.random_range(0..3) {
        if !out.is_empty() {
            let i = rng.random_range(0..out.len());
            out[i] = rng.random();
        }
    }
    out
}

#[test]
fn frame_decoder_is_split_invariant_on_random_input() {
    let mut rng = StdRng::seed_from_u64(0x5eed_f00d);
    for _ in 0..3000 {
        let data = if rng.random_bool(0.8) {
            frame_soup(&mut rng)
        } else {
            (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect()
        };
        let whole = frames(&data, &[]);
        let mut cuts: Vec<usize> = (0..rng.random_range(1..5))
            .map(|_| rng.random_range(0..=data.len()))
            .collect();
        cuts.sort();
        assert_eq!(whole, frames(&data, &cuts), "input {data:?} cuts {cuts:?}");
    }
}

#[test]
fn handshake_and_command_decoders_survive_random_input() {
    let mut rng = StdRng::seed_from_u64(42);
    let cfg = HandshakeConfig {
        client_path: "/ws".into(),
        echo_path: None,
        max_head_bytes: 2048,
        deflate: wsedge::engine::ws::deflate::DeflateConfig { enabled: true },
        sse: true,
        max_post_body: 65536,
    };
    let samples: [&[u8]; 4] = [
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"{\"id\":1,\"publish\":{\"channel\":\"a\",\"data\":{\"x\":[1,2,3]}}}\n{\"id\":2,\"ping\":{}}",
        b"{\"id\":4294967295,\"subscribe\":{\"channel\":\"\\u0000\"}}",
        &[],
    ];
    let bin = binary::client_frame(&[(
        7,
        wsedge::engine::wire::Method::Subscribe {
            channel: "room:1".into(),
            recover: false,
            since: None,
            token: None,
        },
    )]);
    for _ in 0..5000 {
        let mut data = match rng.random_range(0..5) {
            4 => bin.clone(),
            i => samples[i].to_vec(),
        };
        mutate(&mut rng, &mut data);
        let _ = parse_request(&data, &cfg);
        let _ = json::decode_commands(&data, |c| {
            let _ = c.method.map(|m| m.name());
        });
        let _ = binary::decode_commands(&data, |c| {
            let _ = c.method.map(|m| m.name());
        });
    }
}

/// Ticket strings (from clients) and ticket claims (from Redis): nothing
/// panics, an accepted ticket is short printable ASCII, and accepted
/// claims keep `info` as JSON text.
#[test]
fn ticket_parsing_survives_random_input() {
    use wsedge::sidecar::tickets::{MAX_TICKET_LEN, parse_claims, valid_ticket};
    let mut rng = StdRng::seed_from_u64(8);
    let samples: [&[u8]; 3] = [
        br#"{"sub":"42","info":{"n":"\u00e9"},"channels":["a","b:c"],"exp":1900000000}"#,
        b"Zm9vYmFy-ticket_0123456789",
        br#"{"sub":null,"info":[1,{"x":null}],"extra":{"deep":[[]]}}"#,
    ];
    for _ in 0..5000 {
        let mut data = samples[rng.random_range(0..samples.len())].to_vec();
        mutate(&mut rng, &mut data);
        if let Ok(claims) = parse_claims(&data)
            && let Some(info) = claims.info
        {
            serde_json::from_slice::<serde_json::Value>(&info).expect("info is JSON");
        }
        let text = String::from_utf8_lossy(&data);
        if valid_ticket(&text) {
            assert!(text.len() <= MAX_TICKET_LEN);
            assert!(text.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}

/// Up to 7 random edits of `data`: a byte changed, the tail cut, or a byte
/// appended.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
    for _ in 0..rng.random_range(0..8) {
        match rng.random_range(0..3) {
            0 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data[i] = rng.random();
            }
            1 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data.truncate(i);
            }
            _ => data.push(rng.random()),
        }
    }
}
