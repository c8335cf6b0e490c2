//! Incremental, bounded WebSocket frame decoder for the server side
//! (RFC 6455 §5), and the encoder for server frames.
//!
//! The decoder is fed whatever bytes a read produced — any split point is
//! fine — and reports complete messages and control frames to a callback.
//! It never does I/O and never writes: a ping is reported so the caller can
//! queue the pong, a close so the caller can echo it.
//!
//! Memory: an idle decoder is one pointer (`None`). State is allocated only
//! while a frame or a fragmented message is incomplete, and freed as soon as
//! it completes. A frame that arrives whole is unmasked in place in the
//! caller's (per-shard) read buffer and reported as a slice of it, without
//! copying.
//!
//! Text is validated as it arrives, so invalid UTF-8 fails the connection
//! at the first bad byte rather than at the end of the message.

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};

use crate::engine::codes::{CloseReason, is_valid_received_close_code};

/// Largest frame header: 2 + 8 (length) + 4 (mask).
const MAX_HEAD: usize = 14;
/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Largest message (sum of its frames' payloads) accepted; beyond it the
    /// connection fails with 1009.
    pub max_message_size: usize,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    pub allow_compressed: bool,
}

/// Something the decoder found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message; text messages are valid UTF-8.
    Message {
        /// True for a text message, false for binary.
        text: bool,
        /// The unmasked payload of the whole message.
        payload: &'a [u8],
        /// The payload is deflate-compressed (RSV1, RFC 7692); it is not
        /// UTF-8-checked until inflated.
        compressed: bool,
    },
    /// A ping; the caller must answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame (validated); the caller must echo it and stop reading.
    Close {
        /// The status code, if the frame carried one.
        code: Option<u16>,
        /// The close reason (valid UTF-8).
        reason: &'a str,
    },
}

/// What the callback wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep decoding.
    Continue,
    /// Stop decoding; the rest of the input is not looked at.
    Stop,
}

/// How a `feed` call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// All input was consumed (possibly leaving an incomplete frame inside).
    All,
    /// The callback returned [`Flow::Stop`].
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
}

/// State of an incomplete frame and/or fragmented message.
#[derive(Default)]
struct Partial {
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// The frame whose payload is being received, and how much is left.
    frame: Option<(FrameHead, u64)>,
    /// Mask offset for the payload of `frame` received so far.
    mask_pos: usize,
    /// Payload of an incomplete control frame.
    control: Vec<u8>,
    /// Opcode of the data message in progress (text/binary), if any.
    msg_opcode: Option<u8>,
    /// The message in progress is compressed.
    msg_compressed: bool,
    /// The data message in progress (all fragments so far, unmasked).
    msg: Vec<u8>,
    /// Prefix of `msg` known to be valid UTF-8.
    utf8_checked: usize,
}

impl Partial {
    fn is_idle(&self) -> bool {
        self.head_len == 0 && self.frame.is_none() && self.msg_opcode.is_none()
    }

    /// A data frame that opens a message (not a continuation).
    fn start_message(&mut self, head: &FrameHead) {
        self.msg_opcode = Some(head.opcode);
        self.msg_compressed = head.rsv1;
        self.utf8_checked = 0;
    }

    /// Appends payload of the message in progress; uncompressed text is
    /// validated as it arrives (`complete`: the message ends here).
    fn append(&mut self, bytes: &[u8], complete: bool) -> Result<(), CloseReason> {
        self.msg.extend_from_slice(bytes);
        if self.msg_opcode == Some(OP_TEXT) && !self.msg_compressed {
            check_utf8(&self.msg, &mut self.utf8_checked, complete)?;
        }
        Ok(())
    }

    /// Reports the finished message and forgets it.
    fn finish_message<F: FnMut(Event<'_>) -> Flow>(&mut self, on_event: &mut F) -> Flow {
        let flow = on_event(Event::Message {
            text: self.msg_opcode == Some(OP_TEXT),
            payload: &self.msg,
            compressed: self.msg_compressed,
        });
        self.msg_opcode = None;
        self.msg = Vec::new();
        flow
    }
}

/// Incremental frame decoder; one per connection.
#[derive(Default)]
pub struct FrameDecoder {
    partial: Option<Box<Partial>>,
}

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn is_control(op: u8) -> bool {
    op & 0x8 != 0
}

/// Bytes the header needs, knowing its first two bytes.
fn head_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Parses and validates a complete header in `b` (exactly `head_len` bytes).
fn parse_head(b: &[u8]) -> Result<FrameHead, CloseReason> {
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x30 != 0 {
        return Err(CloseReason::ProtocolError); // RSV2/RSV3: no extension uses them
    }
    let rsv1 = b[0] & 0x40 != 0;
    let opcode = b[0] & 0x0f;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(CloseReason::ProtocolError);
    }
    if b[1] & 0x80 == 0 {
        return Err(CloseReason::ProtocolError); // client frames must be masked
    }
    let (len, at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            let len = u64::from_be_bytes(l);
            if len >> 63 != 0 {
                return Err(CloseReason::ProtocolError);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if is_control(opcode) && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(CloseReason::ProtocolError);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&b[at..at + 4]);
    Ok(FrameHead {
        fin,
        rsv1,
        opcode,
        mask,
        len,
    })
}

/// Unmasks `buf`, which starts `pos` bytes into the frame's payload.
fn unmask_at(buf: &mut [u8], mask: [u8; 4], pos: usize) {
    let r = pos % 4;
    let rotated = [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ];
    fastwebsockets::unmask(buf, rotated);
}

/// Validates the newly appended part of a text message. With `complete`, an
/// incomplete trailing sequence is an error too.
fn check_utf8(msg: &[u8], checked: &mut usize, complete: bool) -> Result<(), CloseReason> {
    match simdutf8::compat::from_utf8(&msg[*checked..]) {
        Ok(_) => {
            *checked = msg.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !complete => {
            *checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(CloseReason::InvalidPayload),
    }
}

/// Validates a close payload and reports it.
fn close_event(payload: &[u8]) -> Result<Event<'_>, CloseReason> {
    match payload.len() {
        0 => Ok(Event::Close {
            code: None,
            reason: "",
        }),
        1 => Err(CloseReason::ProtocolError),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_received_close_code(code) {
                return Err(CloseReason::ProtocolError);
            }
            let reason = simdutf8::basic::from_utf8(&payload[2..])
                .map_err(|_| CloseReason::InvalidPayload)?;
            Ok(Event::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

fn control_event(opcode: u8, payload: &[u8]) -> Result<Event<'_>, CloseReason> {
    match opcode {
        OP_PING => Ok(Event::Ping(payload)),
        OP_PONG => Ok(Event::Pong(payload)),
        _ => close_event(payload),
    }
}

impl FrameDecoder {
    /// A decoder with no state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the decoder holds no partial frame or message (and so no
    /// heap memory).
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Feeds bytes read from the socket. Complete frames are unmasked in
    /// place in `buf`. Returns an error (the close reason to send) when the
    /// peer broke the protocol; the decoder must not be fed again after that.
    pub fn feed<F>(
        &mut self,
        mut buf: &mut [u8],
        limits: &DecoderLimits,
        mut on_event: F,
    ) -> Result<Fed, CloseReason>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        loop {
            // Continue an incomplete header or payload first.
            if let Some(p) = self.partial.as_deref_mut() {
                if p.head_len > 0 {
                    let have = p.head_len as usize;
                    let need = if have < 2 { 2 } else { head_len(p.head[1]) };
                    let take = (need - have).min(buf.len());
                    p.head[have..have + take].copy_from_slice(&buf[..take]);
                    p.head_len += take as u8;
                    buf = &mut buf[take..];
                    let have = p.head_len as usize;
                    if have < 2 || have < head_len(p.head[1]) {
                        if buf.is_empty() {
                            return Ok(Fed::All);
                        }
                        continue; // got the first 2 bytes; now take the rest
                    }
                    let head = parse_head(&p.head[..have])?;
                    p.head_len = 0;
                    Self::check_frame_start(p, &head, limits)?;
                    p.frame = Some((head, head.len));
                    p.mask_pos = 0;
                    if is_control(head.opcode) {
                        p.control.clear();
                    } else if head.opcode != OP_CONT {
                        p.start_message(&head);
                    }
                }
                if let Some((head, remaining)) = p.frame {
                    let take = (remaining.min(buf.len() as u64)) as usize;
                    let (chunk, rest) = std::mem::take(&mut buf).split_at_mut(take);
                    buf = rest;
                    unmask_at(chunk, head.mask, p.mask_pos);
                    p.mask_pos += take;
                    let remaining = remaining - take as u64;
                    p.frame = if remaining == 0 {
                        None
                    } else {
                        Some((head, remaining))
                    };
                    if is_control(head.opcode) {
                        p.control.extend_from_slice(chunk);
                        if remaining > 0 {
                            return Ok(Fed::All);
                        }
                        let flow = on_event(control_event(head.opcode, &p.control)?);
                        p.control = Vec::new();
                        self.release_if_idle();
                        if flow == Flow::Stop {
                            return Ok(Fed::Stopped);
                        }
                    } else {
                        let done = remaining == 0 && head.fin;
                        p.append(chunk, done)?;
                        if remaining > 0 {
                            return Ok(Fed::All);
                        }
                        if done {
                            let flow = p.finish_message(&mut on_event);
                            self.release_if_idle();
                            if flow == Flow::Stop {
                                return Ok(Fed::Stopped);
                            }
                        }
                    }
                    continue;
                }
            }

            // No frame in progress: parse the next header straight from buf.
            if buf.is_empty() {
                return Ok(Fed::All);
            }
            if buf.len() < 2 || buf.len() < head_len(buf[1]) {
                let p = self.partial.get_or_insert_with(Default::default);
                p.head[..buf.len()].copy_from_slice(buf);
                p.head_len = buf.len() as u8;
                return Ok(Fed::All);
            }
            let hl = head_len(buf[1]);
            let head = parse_head(&buf[..hl])?;
            let in_msg = self.partial.as_ref().and_then(|p| p.msg_opcode).is_some();
            Self::check_start_in(in_msg, self.msg_len(), &head, limits)?;
            let total = hl as u64 + head.len;
            if (buf.len() as u64) < total {
                // Incomplete payload: continue it through the partial state.
                let p = self.partial.get_or_insert_with(Default::default);
                p.head_len = 0;
                if is_control(head.opcode) {
                    p.control.clear();
                } else if head.opcode != OP_CONT {
                    p.start_message(&head);
                    p.msg.reserve(head.len as usize);
                }
                p.frame = Some((head, head.len));
                p.mask_pos = 0;
                buf = &mut buf[hl..];
                continue;
            }
            let (frame, rest) = std::mem::take(&mut buf).split_at_mut(total as usize);
            buf = rest;
            let payload = &mut frame[hl..];
            unmask_at(payload, head.mask, 0);
            let flow = if is_control(head.opcode) {
                on_event(control_event(head.opcode, payload)?)
            } else if !in_msg && head.fin {
                // The common case: a whole message in one frame, zero-copy.
                let text = head.opcode == OP_TEXT;
                if text && !head.rsv1 && simdutf8::basic::from_utf8(payload).is_err() {
                    return Err(CloseReason::InvalidPayload);
                }
                on_event(Event::Message {
                    text,
                    payload: &*payload,
                    compressed: head.rsv1,
                })
            } else {
                let p = self.partial.get_or_insert_with(Default::default);
                if head.opcode != OP_CONT {
                    p.start_message(&head);
                }
                p.append(payload, head.fin)?;
                if head.fin {
                    let flow = p.finish_message(&mut on_event);
                    self.release_if_idle();
                    flow
                } else {
                    Flow::Continue
                }
            };
            if flow == Flow::Stop {
                return Ok(Fed::Stopped);
            }
        }
    }

    fn msg_len(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.msg.len())
    }

    fn check_frame_start(
        p: &Partial,
        head: &FrameHead,
        limits: &DecoderLimits,
    ) -> Result<(), CloseReason> {
        Self::check_start_in(p.msg_opcode.is_some(), p.msg.len(), head, limits)
    }

    /// Fragmentation and size rules for a frame starting now.
    fn check_start_in(
        in_msg: bool,
        msg_len: usize,
        head: &FrameHead,
        limits: &DecoderLimits,
    ) -> Result<(), CloseReason> {
        if head.rsv1
            && (!limits.allow_compressed
                || matches!(head.opcode, OP_CONT)
                || is_control(head.opcode))
        {
            // RSV1 only on the first frame of a data message, and only
            // when permessage-deflate was negotiated.
            return Err(CloseReason::ProtocolError);
        }
        if is_control(head.opcode) {
            return Ok(());
        }
        match (head.opcode, in_msg) {
            (OP_CONT, false) => return Err(CloseReason::ProtocolError),
            (OP_TEXT | OP_BINARY, true) => return Err(CloseReason::ProtocolError),
            _ => {}
        }
        if msg_len as u64 + head.len > limits.max_message_size as u64 {
            return Err(CloseReason::MessageTooBig);
        }
        Ok(())
    }

    fn release_if_idle(&mut self) {
        if self.partial.as_ref().is_some_and(|p| p.is_idle()) {
            self.partial = None;
        }
    }
}

/// The opcode of a server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Text data frame.
    Text,
    /// Binary data frame.
    Binary,
    /// Close control frame.
    Close,
    /// Ping control frame.
    Ping,
    /// Pong control frame.
    Pong,
}

impl From<Opcode> for OpCode {
    fn from(op: Opcode) -> Self {
        match op {
            Opcode::Text => OpCode::Text,
            Opcode::Binary => OpCode::Binary,
            Opcode::Close => OpCode::Close,
            Opcode::Ping => OpCode::Ping,
            Opcode::Pong => OpCode::Pong,
        }
    }
}

/// Appends one complete, unmasked, final server frame to `out`.
pub fn encode_frame(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    let mut head = [0u8; MAX_HEAD];
    let n = Frame::new(true, opcode.into(), None, Payload::Borrowed(payload)).fmt_head(&mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// One complete server frame as shareable bytes.
pub fn frame_bytes(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    encode_frame(opcode, payload, &mut out);
    Bytes::from(out)
}

/// A close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame_bytes(Opcode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a masked client frame.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(fin as u8) << 7 | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Msg(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn owned(e: Event<'_>) -> Owned {
        match e {
            Event::Message { text, payload, .. } => Owned::Msg(text, payload.to_vec()),
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong(p) => Owned::Pong(p.to_vec()),
            Event::Close { code, reason } => Owned::Close(code, reason.to_string()),
        }
    }

    const LIMITS: DecoderLimits = DecoderLimits {
        max_message_size: 1 << 20,
        allow_compressed: false,
    };

    /// Feeds `input` in chunks split at the given points.
    fn run_split(input: &[u8], splits: &[usize]) -> (Vec<Owned>, Result<(), CloseReason>) {
        let mut dec = FrameDecoder::new();
        let mut events = Vec::new();
        let mut start = 0;
        let mut points: Vec<usize> = splits.to_vec();
        points.push(input.len());
        for &end in &points {
            let mut chunk = input[start..end].to_vec();
            start = end;
            match dec.feed(&mut chunk, &LIMITS, |e| {
                events.push(owned(e));
                Flow::Continue
            }) {
                Ok(_) => {}
                Err(e) => return (events, Err(e)),
            }
        }
        (events, Ok(()))
    }

    fn sample_stream() -> (Vec<u8>, Vec<Owned>) {
        let m = [1, 2, 3, 4];
        let mut s = Vec::new();
        s.extend(client_frame(true, OP_TEXT, b"hello", m));
        s.extend(client_frame(false, OP_TEXT, "héllo ".as_bytes(), m));
        s.extend(client_frame(true, OP_PING, b"p", [9, 8, 7, 6]));
        s.extend(client_frame(false, OP_CONT, "wörld ".as_bytes(), m));
        s.extend(client_frame(true, OP_CONT, "✓".as_bytes(), m));
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        s.extend(client_frame(true, OP_BINARY, &big, [5, 6, 7, 8]));
        s.extend(client_frame(true, OP_BINARY, &[0u8; 300], m));
        s.extend(client_frame(true, OP_PONG, b"", m));
        s.extend(client_frame(
            true,
            OP_CLOSE,
            &[0x03, 0xe8, b'b', b'y', b'e'],
            m,
        ));
        let expected = vec![
            Owned::Msg(true, b"hello".to_vec()),
            Owned::Ping(b"p".to_vec()),
            Owned::Msg(true, "héllo wörld ✓".as_bytes().to_vec()),
            Owned::Msg(false, big),
            Owned::Msg(false, vec![0u8; 300]),
            Owned::Pong(vec![]),
            Owned::Close(Some(1000), "bye".into()),
        ];
        (s, expected)
    }

    #[test]
    fn whole_stream_at_once() {
        let (s, expected) = sample_stream();
        let (events, res) = run_split(&s, &[]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, expected);
    }

    #[test]
    fn every_single_split_point() {
        let (s, expected) = sample_stream();
        for i in 0..=s.len() {
            let (events, res) = run_split(&s, &[i]);
            assert_eq!(res, Ok(()), "split at {i}");
            assert_eq!(events, expected, "split at {i}");
        }
    }

    #[test]
    fn every_pair_of_split_points_in_small_frames() {
        let m = [0xa, 0xb, 0xc, 0xd];
        let mut s = Vec::new();
        s.extend(client_frame(false, OP_TEXT, "añ".as_bytes(), m));
        s.extend(client_frame(true, OP_PING, b"xy", m));
        s.extend(client_frame(true, OP_CONT, "€z".as_bytes(), m));
        s.extend(client_frame(true, OP_BINARY, &[7u8; 130], m));
        let expected = vec![
            Owned::Ping(b"xy".to_vec()),
            Owned::Msg(true, "añ€z".as_bytes().to_vec()),
            Owned::Msg(false, vec![7u8; 130]),
        ];
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let (events, res) = run_split(&s, &[i, j]);
                assert_eq!(res, Ok(()), "splits {i},{j}");
                assert_eq!(events, expected, "splits {i},{j}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let (s, expected) = sample_stream();
        let splits: Vec<usize> = (1..s.len()).collect();
        let (events, res) = run_split(&s, &splits);
        assert_eq!(res, Ok(()));
        assert_eq!(events, expected);
    }

    #[test]
    fn decoder_is_idle_between_whole_frames() {
        let mut dec = FrameDecoder::new();
        let mut f = client_frame(true, OP_TEXT, b"abc", [1, 2, 3, 4]);
        dec.feed(&mut f, &LIMITS, |_| Flow::Continue).unwrap();
        assert!(dec.is_idle());
        let f = client_frame(true, OP_TEXT, b"abcdef", [1, 2, 3, 4]);
        let mut a = f[..5].to_vec();
        dec.feed(&mut a, &LIMITS, |_| Flow::Continue).unwrap();
        assert!(!dec.is_idle());
        let mut b = f[5..].to_vec();
        dec.feed(&mut b, &LIMITS, |_| Flow::Continue).unwrap();
        assert!(dec.is_idle());
    }

    fn expect_err(frames: &[Vec<u8>], reason: CloseReason) {
        let s: Vec<u8> = frames.concat();
        for i in 0..=s.len() {
            let (_, res) = run_split(&s, &[i]);
            assert_eq!(res, Err(reason), "split at {i}");
        }
    }

    #[test]
    fn protocol_errors() {
        let m = [1, 2, 3, 4];
        // Unmasked frame.
        expect_err(&[vec![0x81, 0x01, b'a']], CloseReason::ProtocolError);
        // RSV bits.
        let mut f = client_frame(true, OP_TEXT, b"a", m);
        f[0] |= 0x40;
        expect_err(&[f], CloseReason::ProtocolError);
        // Reserved opcode.
        expect_err(
            &[client_frame(true, 0x3, b"", m)],
            CloseReason::ProtocolError,
        );
        expect_err(
            &[client_frame(true, 0xB, b"", m)],
            CloseReason::ProtocolError,
        );
        // Fragmented control frame.
        expect_err(
            &[client_frame(false, OP_PING, b"", m)],
            CloseReason::ProtocolError,
        );
        // Control frame too long.
        expect_err(
            &[client_frame(true, OP_PING, &[0; 126], m)],
            CloseReason::ProtocolError,
        );
        // Continuation without a message.
        expect_err(
            &[client_frame(true, OP_CONT, b"a", m)],
            CloseReason::ProtocolError,
        );
        // New message inside a fragmented one.
        expect_err(
            &[
                client_frame(false, OP_TEXT, b"a", m),
                client_frame(true, OP_TEXT, b"b", m),
            ],
            CloseReason::ProtocolError,
        );
        // Close with a one-byte payload, and with an invalid code.
        expect_err(
            &[client_frame(true, OP_CLOSE, &[3], m)],
            CloseReason::ProtocolError,
        );
        expect_err(
            &[client_frame(true, OP_CLOSE, &1005u16.to_be_bytes(), m)],
            CloseReason::ProtocolError,
        );
    }

    #[test]
    fn invalid_utf8_fails_fast() {
        let m = [1, 2, 3, 4];
        expect_err(
            &[client_frame(true, OP_TEXT, &[0xff], m)],
            CloseReason::InvalidPayload,
        );
        // Invalid in the first fragment, before the message completes.
        let mut dec = FrameDecoder::new();
        let mut first = client_frame(false, OP_TEXT, &[b'a', 0xc0, 0xaf], m);
        assert_eq!(
            dec.feed(&mut first, &LIMITS, |_| Flow::Continue),
            Err(CloseReason::InvalidPayload)
        );
        // Invalid inside a frame whose payload has not fully arrived.
        let mut dec = FrameDecoder::new();
        let f = client_frame(true, OP_TEXT, &[b'a', 0xff, b'b', b'c', b'd', b'e'], m);
        let mut part = f[..8].to_vec();
        assert_eq!(
            dec.feed(&mut part, &LIMITS, |_| Flow::Continue),
            Err(CloseReason::InvalidPayload)
        );
        // Truncated sequence at the end of a complete message.
        expect_err(
            &[
                client_frame(false, OP_TEXT, "a".as_bytes(), m),
                client_frame(true, OP_CONT, &"€".as_bytes()[..2], m),
            ],
            CloseReason::InvalidPayload,
        );
        // Invalid close reason.
        expect_err(
            &[client_frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff], m)],
            CloseReason::InvalidPayload,
        );
    }

    #[test]
    fn utf8_sequence_split_across_fragments_is_fine() {
        let m = [1, 2, 3, 4];
        let euro = "€".as_bytes();
        let s = [
            client_frame(false, OP_TEXT, &euro[..1], m),
            client_frame(false, OP_CONT, &euro[1..2], m),
            client_frame(true, OP_CONT, &euro[2..], m),
        ]
        .concat();
        let (events, res) = run_split(&s, &[]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Owned::Msg(true, euro.to_vec())]);
    }

    #[test]
    fn message_size_limit() {
        let limits = DecoderLimits {
            max_message_size: 10,
            allow_compressed: false,
        };
        let m = [1, 2, 3, 4];
        let mut dec = FrameDecoder::new();
        let mut ok = client_frame(true, OP_BINARY, &[0; 10], m);
        assert!(dec.feed(&mut ok, &limits, |_| Flow::Continue).is_ok());
        // Rejected from the header alone, before the payload arrives.
        let f = client_frame(true, OP_BINARY, &[0; 11], m);
        let mut head = f[..6].to_vec();
        assert_eq!(
            dec.feed(&mut head, &limits, |_| Flow::Continue),
            Err(CloseReason::MessageTooBig)
        );
        // Fragments adding up past the limit.
        let mut dec = FrameDecoder::new();
        let mut s = [
            client_frame(false, OP_BINARY, &[0; 6], m),
            client_frame(true, OP_CONT, &[0; 5], m),
        ]
        .concat();
        assert_eq!(
            dec.feed(&mut s, &limits, |_| Flow::Continue),
            Err(CloseReason::MessageTooBig)
        );
    }

    #[test]
    fn rsv1_marks_compressed_messages_only_when_negotiated() {
        let m = [1, 2, 3, 4];
        let deflate = DecoderLimits {
            max_message_size: 1 << 20,
            allow_compressed: true,
        };
        // Compressed bytes are not UTF-8-checked before inflating.
        let mut f = client_frame(true, OP_TEXT, &[0xff, 0x00], m);
        f[0] |= 0x40;
        let mut seen = Vec::new();
        FrameDecoder::new()
            .feed(&mut f.clone(), &deflate, |e| {
                if let Event::Message { compressed, .. } = e {
                    seen.push(compressed);
                }
                Flow::Continue
            })
            .unwrap();
        assert_eq!(seen, vec![true]);
        assert_eq!(
            FrameDecoder::new().feed(&mut f, &LIMITS, |_| Flow::Continue),
            Err(CloseReason::ProtocolError)
        );
        // Fragmented: RSV1 on the first frame only.
        let mut first = client_frame(false, OP_TEXT, &[0xff], m);
        first[0] |= 0x40;
        let last = client_frame(true, OP_CONT, &[0xfe], m);
        let mut s = [first.clone(), last].concat();
        let mut got = None;
        FrameDecoder::new()
            .feed(&mut s, &deflate, |e| {
                if let Event::Message {
                    payload,
                    compressed,
                    ..
                } = e
                {
                    got = Some((payload.to_vec(), compressed));
                }
                Flow::Continue
            })
            .unwrap();
        assert_eq!(got, Some((vec![0xff, 0xfe], true)));
        let mut bad_cont = client_frame(true, OP_CONT, &[0xfe], m);
        bad_cont[0] |= 0x40;
        let mut s = [client_frame(false, OP_TEXT, b"a", m), bad_cont].concat();
        assert_eq!(
            FrameDecoder::new().feed(&mut s, &deflate, |_| Flow::Continue),
            Err(CloseReason::ProtocolError)
        );
        let mut ping = client_frame(true, OP_PING, b"", m);
        ping[0] |= 0x40;
        assert_eq!(
            FrameDecoder::new().feed(&mut ping, &deflate, |_| Flow::Continue),
            Err(CloseReason::ProtocolError)
        );
    }

    #[test]
    fn stop_leaves_rest_unread() {
        let m = [1, 2, 3, 4];
        let mut s = [
            client_frame(true, OP_CLOSE, &[0x03, 0xe8], m),
            client_frame(true, OP_TEXT, b"after", m),
        ]
        .concat();
        let mut dec = FrameDecoder::new();
        let mut seen = 0;
        let r = dec.feed(&mut s, &LIMITS, |_| {
            seen += 1;
            Flow::Stop
        });
        assert_eq!(r, Ok(Fed::Stopped));
        assert_eq!(seen, 1);
    }

    #[test]
    fn encoder_round_trips_lengths() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![0x5au8; len];
            let f = frame_bytes(Opcode::Binary, &payload);
            let hl = if len < 126 {
                2
            } else if len < 65536 {
                4
            } else {
                10
            };
            assert_eq!(f.len(), hl + len);
            assert_eq!(f[0], 0x82);
            assert_eq!(&f[hl..], &payload[..]);
        }
        let c = close_frame(1001, "bye");
        assert_eq!(&c[..], &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
    }
}
