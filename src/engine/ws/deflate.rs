//! permessage-deflate (RFC 7692): negotiation, a bounded inflater and the
//! deflater that compresses a message once into a complete frame.
//!
//! wsedge always answers with `server_no_context_takeover` (each message it
//! sends is compressed on its own, so one compressed publication can be
//! shared by every subscriber) and `client_no_context_takeover` (each
//! message a client sends decompresses on its own, so a connection keeps no
//! 32 KiB window between messages and one inflater per shard serves all).

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::engine::codes::CloseReason;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";
/// The tail every sync-flushed deflate block ends with (removed on send,
/// restored on receive, RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// LZ77 window the server may use (`server_max_window_bits`, 8–15).
    /// The shared, compress-once publications use 15; a connection that
    /// asked for less gets them uncompressed (always allowed).
    pub server_window_bits: u8,
}

/// Server settings for negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Whether to accept the extension at all.
    pub enabled: bool,
}

/// Parses the client's offers and picks the first acceptable one.
/// Returns the agreement and the response header value, or `None` to not
/// use the extension.
pub fn negotiate<'a>(
    offers: impl Iterator<Item = &'a str>,
    cfg: &DeflateConfig,
) -> Option<(Deflate, String)> {
    if !cfg.enabled {
        return None;
    }
    offers.filter_map(parse_offer).next().map(|d| {
        let mut resp = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if d.server_window_bits < 15 {
            resp.push_str(&format!(
                "; server_max_window_bits={}",
                d.server_window_bits
            ));
        }
        (d, resp)
    })
}

/// One offer (`permessage-deflate; p1; p2=v`), or `None` if it is not
/// permessage-deflate or its parameters are invalid (RFC 7692 §7.1).
fn parse_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits = 15u8;
    for p in parts {
        if p.is_empty() {
            return None;
        }
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return None; // a parameter may appear once
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_bits = window_bits(v)?,
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(Deflate {
        server_window_bits: server_bits,
    })
}

fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 2 {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// Decompresses whole client messages, one at a time (one per shard).
pub struct Inflater {
    d: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            d: Decompress::new_with_window_bits(false, 15),
            out: Vec::new(),
        }
    }
}

/// Output buffers above this are released after use.
const KEEP_BUFFER: usize = 256 * 1024;

impl Inflater {
    /// Decompresses one message. Never produces more than `max` bytes:
    /// beyond that the message is refused (1009), however small its
    /// compressed form (a decompression bomb costs at most `max`).
    pub fn inflate(&mut self, input: &[u8], max: usize) -> Result<&[u8], CloseReason> {
        self.d.reset(false);
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::new();
        }
        self.out.clear();
        for (i, chunk) in [input, &TAIL[..]].into_iter().enumerate() {
            let last = i == 1;
            let mut consumed = 0;
            loop {
                if self.out.len() == self.out.capacity() {
                    if self.out.len() > max {
                        return Err(CloseReason::MessageTooBig);
                    }
                    // Grow by doubling, but never past max + 1 bytes.
                    let target = (self.out.capacity() * 2).clamp(4096, max + 1);
                    self.out
                        .reserve_exact(target.saturating_sub(self.out.len()).max(1));
                }
                let before_in = self.d.total_in();
                let before_out = self.out.len();
                let status = self
                    .d
                    .decompress_vec(&chunk[consumed..], &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| CloseReason::InvalidPayload)?;
                consumed += (self.d.total_in() - before_in) as usize;
                if self.out.len() > max {
                    return Err(CloseReason::MessageTooBig);
                }
                let progress = consumed < chunk.len() || self.out.len() > before_out;
                match status {
                    Status::StreamEnd => break,
                    _ if consumed >= chunk.len() && self.out.len() < self.out.capacity() => break,
                    Status::BufError if !progress => break,
                    _ => {}
                }
            }
            if last {
                break;
            }
        }
        Ok(&self.out)
    }
}

/// Compresses messages into complete frames (one per shard).
pub struct Deflater {
    c: Compress,
    bits: u8,
    level: u32,
    buf: Vec<u8>,
}

impl Deflater {
    /// A deflater at `level` (1 fastest … 9 smallest) with a 15-bit window.
    pub fn new(level: u32) -> Self {
        Self {
            c: Compress::new_with_window_bits(Compression::new(level), false, 15),
            bits: 15,
            level,
            buf: Vec::new(),
        }
    }

    /// Compresses `payload` alone (no context from earlier messages) with a
    /// window of `bits` and returns a complete final frame with RSV1 set.
    /// Windows below 9 are not supported by zlib for raw deflate; callers
    /// send those connections uncompressed frames instead.
    pub fn frame(&mut self, text: bool, payload: &[u8], bits: u8) -> Bytes {
        debug_assert!((9..=15).contains(&bits));
        if bits != self.bits {
            self.c = Compress::new_with_window_bits(Compression::new(self.level), false, bits);
            self.bits = bits;
        } else {
            self.c.reset();
        }
        self.buf.clear();
        self.buf.reserve(payload.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve(self.buf.capacity().max(64));
            }
            let before = self.c.total_in();
            self.c
                .compress_vec(&payload[consumed..], &mut self.buf, FlushCompress::Sync)
                .expect("deflate on memory cannot fail");
            consumed += (self.c.total_in() - before) as usize;
            if consumed == payload.len() && self.buf.len() < self.buf.capacity() {
                break;
            }
        }
        let body = match self.buf.strip_suffix(&TAIL) {
            Some(b) => b,
            None => &self.buf[..],
        };
        let mut out = Vec::with_capacity(body.len() + 10);
        let op = if text {
            crate::engine::ws::frame::Opcode::Text
        } else {
            crate::engine::ws::frame::Opcode::Binary
        };
        crate::engine::ws::frame::encode_frame(op, body, &mut out);
        out[0] |= 0x40; // RSV1: compressed
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        Bytes::from(out)
    }
}

/// Builds outgoing frames for connections: compressed when the
/// connection negotiated permessage-deflate with a window zlib supports
/// and the payload is at least `min_size` bytes; plain otherwise.
pub struct Compressor {
    deflater: Deflater,
    min_size: usize,
}

impl Compressor {
    /// A compressor at `level` for payloads of at least `min_size` bytes.
    pub fn new(level: u32, min_size: usize) -> Self {
        Self {
            deflater: Deflater::new(level),
            min_size,
        }
    }

    /// The shared (compress-once) form of a payload: 15-bit window, or
    /// `None` when the payload is too small to be worth it.
    pub fn shared(&mut self, text: bool, payload: &[u8]) -> Option<Bytes> {
        (payload.len() >= self.min_size).then(|| self.deflater.frame(text, payload, 15))
    }

    /// A frame for one connection.
    pub fn frame(&mut self, deflate: Option<Deflate>, text: bool, payload: &[u8]) -> Bytes {
        match deflate {
            Some(d) if d.server_window_bits >= 9 && payload.len() >= self.min_size => {
                self.deflater.frame(text, payload, d.server_window_bits)
            }
            _ => plain_frame(text, payload),
        }
    }
}

/// An uncompressed final frame.
pub fn plain_frame(text: bool, payload: &[u8]) -> Bytes {
    use crate::engine::ws::frame::{Opcode, frame_bytes};
    frame_bytes(if text { Opcode::Text } else { Opcode::Binary }, payload)
}

/// A frame for a connection: through the compressor when there is one.
pub fn frame_for(
    c: &mut Option<Compressor>,
    deflate: Option<Deflate>,
    text: bool,
    payload: &[u8],
) -> Bytes {
    match c {
        Some(c) => c.frame(deflate, text, payload),
        None => plain_frame(text, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(h: &str) -> Option<(Deflate, String)> {
        negotiate(h.split(','), &DeflateConfig { enabled: true })
    }

    #[test]
    fn negotiation() {
        let (d, r) = neg("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(d.server_window_bits, 15);
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (d, r) = neg("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(d.server_window_bits, 10);
        assert!(r.ends_with("; server_max_window_bits=10"));
        // First acceptable offer wins; bad ones are skipped.
        let (d, _) = neg("permessage-deflate; server_max_window_bits=20, permessage-deflate; server_max_window_bits=9").unwrap();
        assert_eq!(d.server_window_bits, 9);
        assert!(neg("permessage-deflate; foo").is_none());
        assert!(
            neg("permessage-deflate; server_no_context_takeover; server_no_context_takeover")
                .is_none()
        );
        assert!(neg("permessage-deflate; server_max_window_bits").is_none());
        assert!(neg("x-webkit-deflate-frame").is_none());
        assert!(
            negotiate(
                "permessage-deflate".split(','),
                &DeflateConfig { enabled: false }
            )
            .is_none()
        );
    }

    #[test]
    fn round_trip_and_frames_are_self_contained() {
        let mut def = Deflater::new(6);
        let mut inf = Inflater::default();
        let msg = "hello hello hello hello compressed world ✓".repeat(20);
        for bits in [15u8, 9, 12] {
            for _ in 0..3 {
                let f = def.frame(true, msg.as_bytes(), bits);
                assert_eq!(f[0], 0xC1, "FIN + RSV1 + text");
                let hl = if f[1] < 126 { 2 } else { 4 };
                assert!(f.len() < msg.len());
                // Each frame inflates alone (no context takeover).
                let out = inf.inflate(&f[hl..], 1 << 20).unwrap();
                assert_eq!(out, msg.as_bytes());
            }
        }
        // Empty message.
        let f = def.frame(false, b"", 15);
        assert_eq!(inf.inflate(&f[2..], 10).unwrap(), b"");
    }

    #[test]
    fn bombs_are_bounded() {
        let mut def = Deflater::new(9);
        let zeros = vec![0u8; 10 << 20];
        let f = def.frame(false, &zeros, 15);
        assert!(
            f.len() < 20_000,
            "10 MiB of zeros compresses to {} bytes",
            f.len()
        );
        let hl = if f[1] == 126 { 4 } else { 2 };
        let mut inf = Inflater::default();
        assert_eq!(
            inf.inflate(&f[hl..], 64 * 1024),
            Err(CloseReason::MessageTooBig)
        );
        assert!(
            inf.out.capacity() <= 64 * 1024 + 8192,
            "never allocated past the limit"
        );
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], 100),
            Err(CloseReason::InvalidPayload)
        );
    }
}
