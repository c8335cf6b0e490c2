//! A minimal WebSocket client codec (RFC 6455), just what the load
//! generator needs: the upgrade request and its check, masked frames out,
//! unmasked server frames in (7/16/64-bit lengths, several per read).

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Subprotocol of the JSON wire form.
pub const PROTOCOL_JSON: &str = "edu-matrix-v1.json";

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A `Sec-WebSocket-Key` derived from `seed` (16 bytes, base64). Keys only
/// need to be unpredictable against cache poisoning, which a benchmark on
/// loopback does not care about.
pub fn key_for(seed: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&seed.to_le_bytes());
    raw[8..].copy_from_slice(&(seed ^ 0x9E37_79B9_7F4A_7C15).rotate_left(17).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `permessage-deflate` offer (RFC 7692) sent when compression is
/// wanted: no context takeover in either direction, so every compressed
/// message inflates on its own.
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The HTTP/1.1 upgrade request asking for the JSON subprotocol, and for
/// `permessage-deflate` ([`DEFLATE_OFFER`]) when `deflate` is true.
pub fn upgrade_request(host: &str, path: &str, key: &str, deflate: bool) -> Vec<u8> {
    let ext = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {PROTOCOL_JSON}\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// `permessage-deflate` as accepted by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The server resets its compressor after every message, so the
    /// client's inflater must be reset too.
    pub server_no_context_takeover: bool,
}

/// Parses a `Sec-WebSocket-Extensions` response value: `Some` if it
/// accepts `permessage-deflate`.
pub fn parse_extensions(value: &str) -> Result<Option<Deflate>> {
    // A server accepts at most one permessage-deflate offer, and nothing
    // else was offered.
    if let Some(ext) = value.split(',').next() {
        let mut params = ext.split(';').map(str::trim);
        if params.next() != Some("permessage-deflate") {
            bail!("server accepted an extension we did not offer: {ext:?}");
        }
        let mut d = Deflate {
            server_no_context_takeover: false,
        };
        for p in params {
            let name = p.split('=').next().unwrap_or("").trim();
            match name {
                "server_no_context_takeover" => d.server_no_context_takeover = true,
                "client_no_context_takeover" | "client_max_window_bits" => {}
                "server_max_window_bits" => {}
                "" => {}
                other => bail!("unknown permessage-deflate parameter {other:?}"),
            }
        }
        return Ok(Some(d));
    }
    Ok(None)
}

/// Length of the HTTP response head (through the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Checks a complete response head: `101`, the right `Sec-WebSocket-Accept`
/// and the JSON subprotocol. Returns the accepted `permessage-deflate`, if
/// any (an error if it was not offered, `offered_deflate` false).
pub fn check_response(head: &[u8], key: &str, offered_deflate: bool) -> Result<Option<Deflate>> {
    let text = std::str::from_utf8(head).map_err(|_| anyhow!("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status:?}");
    }
    let mut accept_ok = false;
    let mut proto_ok = false;
    let mut deflate = None;
    let want = accept_for(key);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = value == want;
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            proto_ok = value == PROTOCOL_JSON;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            if !offered_deflate {
                bail!("server accepted extensions that were not offered: {value:?}");
            }
            deflate = parse_extensions(value)?;
        }
    }
    if !accept_ok {
        bail!("missing or wrong Sec-WebSocket-Accept");
    }
    if !proto_ok {
        bail!("server did not select subprotocol {PROTOCOL_JSON}");
    }
    Ok(deflate)
}

/// A cheap xorshift source of masking keys (masking exists against proxy
/// cache poisoning, not secrecy; a benchmark needs no CSPRNG).
#[derive(Debug, Clone)]
pub struct MaskGen(u32);

impl MaskGen {
    /// A generator seeded from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self((seed as u32 ^ (seed >> 32) as u32) | 1)
    }

    /// The next masking key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_ne_bytes()
    }
}

/// Appends one complete, final, masked frame to `out`.
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// The header of a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit.
    pub fin: bool,
    /// RSV1 bit: the message is compressed (`permessage-deflate`).
    pub rsv1: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the header of the server frame at the start of `buf`; `Ok(None)`
/// when more bytes are needed for the header. Server frames must be
/// unmasked, with RSV2 and RSV3 clear (RSV1 is `permessage-deflate`, which
/// the caller checks against the negotiation).
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x30 != 0 {
        bail!("server frame with RSV2/RSV3 set");
    }
    if b1 & 0x80 != 0 {
        bail!("masked server frame");
    }
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len > (1 << 40) {
                bail!("absurd frame length {len}");
            }
            (10, len as usize)
        }
        n => (2, n as usize),
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0F,
        header_len,
        payload_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_lengths() {
        assert_eq!(
            parse_header(&[0x81, 5]).unwrap(),
            Some(FrameHeader {
                fin: true,
                rsv1: false,
                opcode: 1,
                header_len: 2,
                payload_len: 5
            })
        );
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(
            parse_header(&[0x81, 126, 1, 0])
                .unwrap()
                .unwrap()
                .payload_len,
            256
        );
        let mut b = vec![0x82, 127];
        b.extend_from_slice(&70_000u64.to_be_bytes());
        let h = parse_header(&b).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len, h.opcode), (10, 70_000, 2));
        assert!(parse_header(&[0x81, 0x85]).is_err());
        assert!(parse_header(&[0xC1, 5]).unwrap().unwrap().rsv1);
        assert!(parse_header(&[0xA1, 5]).is_err());
    }

    #[test]
    fn extensions() {
        let d = parse_extensions(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )
        .unwrap();
        assert_eq!(
            d,
            Some(Deflate {
                server_no_context_takeover: true
            })
        );
        let d = parse_extensions("permessage-deflate; client_max_window_bits=15").unwrap();
        assert_eq!(
            d,
            Some(Deflate {
                server_no_context_takeover: false
            })
        );
        assert!(parse_extensions("x-webkit-deflate-frame").is_err());
    }

    #[test]
    fn masking_roundtrip() {
        let mut out = Vec::new();
        let mask = [1, 2, 3, 4];
        encode_masked(OP_TEXT, b"hello", mask, &mut out);
        assert_eq!(&out[..2], &[0x81, 0x85]);
        assert_eq!(&out[2..6], &mask);
        let un: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(un, b"hello");
        out.clear();
        encode_masked(OP_TEXT, &[b'x'; 300], mask, &mut out);
        assert_eq!(&out[..4], &[0x81, 0xFE, 1, 44]);
    }
}
