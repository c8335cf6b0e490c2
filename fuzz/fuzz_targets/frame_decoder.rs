//! The frame decoder on arbitrary bytes, split at an arbitrary point: it
//! must never panic, and must report the same events whatever the split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::engine::ws::frame::{DecoderLimits, Event, FrameDecoder, Flow};

fn run(data: &[u8], split: usize) -> (Vec<String>, Option<u16>) {
    let limits = DecoderLimits { max_message_size: 4096, allow_compressed: true };
    let mut dec = FrameDecoder::new();
    let mut events = Vec::new();
    for chunk in [&data[..split], &data[split..]] {
        let mut buf = chunk.to_vec();
        let r = dec.feed(&mut buf, &limits, |e| {
            events.push(match e {
                Event::Message { text, payload, compressed } => format!("m{text}{compressed}{payload:?}"),
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

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let whole = run(&data[1..], 0);
    let split_run = run(&data[1..], split.min(data.len() - 1));
    assert_eq!(whole, split_run);
});
