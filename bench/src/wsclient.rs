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

/// The HTTP/1.1 upgrade request asking for the JSON subprotocol.
pub fn upgrade_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {PROTOCOL_JSON}\r\n\r\n"
    )
    .into_bytes()
}

/// Length of the HTTP response head (through the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Checks a complete response head: `101`, the right `Sec-WebSocket-Accept`
/// and the JSON subprotocol.
pub fn check_response(head: &[u8], key: &str) -> Result<()> {
    let text = std::str::from_utf8(head).map_err(|_| anyhow!("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status:?}");
    }
    let mut accept_ok = false;
    let mut proto_ok = false;
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
        }
    }
    if !accept_ok {
        bail!("missing or wrong Sec-WebSocket-Accept");
    }
    if !proto_ok {
        bail!("server did not select subprotocol {PROTOCOL_JSON}");
    }
    Ok(())
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
/// unmasked and use no extensions (RSV bits clear).
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        bail!("server frame with RSV bits set");
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
