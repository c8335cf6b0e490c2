//! One client connection: the upgrade, `connect` (+ `subscribe`), and a
//! buffered frame reader/writer pair over the split TCP stream.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::tls::{ReadIo, WriteIo};

use crate::collab::proto::{JoinReply, JoinRole, build_join, parse_join_reply};
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::wsclient::{
    Deflate, FrameHeader, MaskGen, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, check_response,
    encode_masked, head_end, key_for, parse_header, upgrade_request,
};

/// Initial size of each connection's read buffer; it grows only for a frame
/// larger than itself.
pub const READ_BUF: usize = 8 * 1024;

/// WebSocket path of the client endpoint (wsedge's default; the baseline
/// accepts any path).
pub const WS_PATH: &str = "/ws";

/// Inflates `permessage-deflate` messages (RSV1 frames).
struct Inflater {
    d: flate2::Decompress,
    /// Reset before every message (the server uses no context takeover).
    reset: bool,
    /// Compressed payload plus the `00 00 ff ff` tail.
    input: Vec<u8>,
    /// The inflated payload of the current frame.
    out: Vec<u8>,
    /// `start` of the buffered frame that `out` belongs to.
    at: Option<usize>,
}

impl Inflater {
    fn new(deflate: Deflate) -> Self {
        Self {
            d: flate2::Decompress::new(false),
            reset: deflate.server_no_context_takeover,
            input: Vec::new(),
            out: Vec::with_capacity(4096),
            at: None,
        }
    }

    /// Inflates one complete compressed message (RFC 7692 §7.2.2: append
    /// `00 00 ff ff`, raw inflate with a sync flush).
    fn inflate(&mut self, payload: &[u8]) -> Result<()> {
        use flate2::{FlushDecompress, Status};
        if self.reset {
            self.d.reset(false);
        }
        self.input.clear();
        self.input.extend_from_slice(payload);
        self.input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        self.out.clear();
        let mut pos = 0;
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(self.out.capacity().max(4096));
            }
            let before = self.d.total_in();
            let status = self
                .d
                .decompress_vec(&self.input[pos..], &mut self.out, FlushDecompress::Sync)
                .context("inflating a permessage-deflate message")?;
            let used = (self.d.total_in() - before) as usize;
            pos += used;
            let room_left = self.out.len() < self.out.capacity();
            if status == Status::StreamEnd || (pos == self.input.len() && room_left) {
                return Ok(());
            }
            if used == 0 && room_left {
                bail!("inflate made no progress");
            }
        }
    }
}

/// Reads server frames into one reusable buffer (and inflates compressed
/// ones into a second).
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    reads: u64,
    bytes: u64,
    inflater: Option<Inflater>,
    /// Inflate compressed frames (false: leave them compressed).
    verify: bool,
    inflated: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with a [`READ_BUF`]-byte buffer.
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            reads: 0,
            bytes: 0,
            inflater: None,
            verify: true,
            inflated: 0,
        }
    }

    /// Enables inflating RSV1 (compressed) frames.
    pub fn set_deflate(&mut self, deflate: Deflate) {
        self.inflater = Some(Inflater::new(deflate));
    }

    /// Whether compressed frames are accepted.
    pub fn deflate(&self) -> bool {
        self.inflater.is_some()
    }

    /// Bytes read from the socket so far (what came over the wire).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Stops inflating compressed frames: [`payload`](Self::payload) then
    /// returns them as they came. A generator connection that only counts
    /// what it receives uses this so the generator's inflate cost does not
    /// bound a compression run.
    pub fn skip_inflate(&mut self) {
        self.verify = false;
    }

    /// Compressed messages inflated so far.
    pub fn inflated(&self) -> u64 {
        self.inflated
    }

    async fn read_more(&mut self, want_total: usize) -> Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if want_total > self.buf.len() {
            self.buf.resize(want_total.next_power_of_two(), 0);
        } else if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self
            .io
            .read(&mut self.buf[self.end..])
            .await
            .context("read")?;
        if n == 0 {
            bail!("connection closed by the server (EOF)");
        }
        self.end += n;
        self.reads += 1;
        self.bytes += n as u64;
        Ok(())
    }

    /// Waits until a complete frame is buffered and returns its header; the
    /// frame stays buffered until [`consume`](Self::consume). A compressed
    /// (RSV1) frame is inflated here, once. Cancel-safe.
    pub async fn next_frame(&mut self) -> Result<FrameHeader> {
        loop {
            let want = match parse_header(&self.buf[self.start..self.end])? {
                Some(h) if self.end - self.start >= h.total_len() => {
                    if h.rsv1 && self.verify {
                        self.inflate_current(&h)?;
                    }
                    return Ok(h);
                }
                Some(h) => h.total_len(),
                None => 14,
            };
            self.read_more(want).await?;
        }
    }

    fn inflate_current(&mut self, h: &FrameHeader) -> Result<()> {
        let Some(inf) = self.inflater.as_mut() else {
            bail!("compressed (RSV1) frame without permessage-deflate");
        };
        if h.opcode >= 0x8 || !h.fin {
            bail!(
                "RSV1 on a control or fragmented frame (opcode {}, fin {})",
                h.opcode,
                h.fin
            );
        }
        if inf.at == Some(self.start) {
            return Ok(());
        }
        let p = self.start + h.header_len;
        inf.inflate(&self.buf[p..p + h.payload_len])?;
        inf.at = Some(self.start);
        self.inflated += 1;
        Ok(())
    }

    /// Successful reads so far: frames obtained without a read in between
    /// arrived together, so they can share one receive timestamp.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// The payload of the frame `h` returned by [`next_frame`](Self::next_frame)
    /// (inflated if it was compressed).
    pub fn payload(&self, h: &FrameHeader) -> &[u8] {
        if h.rsv1
            && self.verify
            && let Some(inf) = &self.inflater
        {
            return &inf.out;
        }
        let p = self.start + h.header_len;
        &self.buf[p..p + h.payload_len]
    }

    /// Whether a complete frame is already buffered (no read needed).
    pub fn has_frame(&self) -> bool {
        matches!(parse_header(&self.buf[self.start..self.end]),
            Ok(Some(h)) if self.end - self.start >= h.total_len())
    }

    /// Drops the frame `h` from the buffer.
    pub fn consume(&mut self, h: &FrameHeader) {
        if let Some(inf) = self.inflater.as_mut() {
            inf.at = None;
        }
        self.start += h.total_len();
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads an HTTP response head; returns it (the bytes after it stay
    /// buffered as frames).
    async fn read_head(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(n) = head_end(&self.buf[self.start..self.end]) {
                let head = self.buf[self.start..self.start + n].to_vec();
                self.start += n;
                return Ok(head);
            }
            if self.end - self.start > 16 * 1024 {
                bail!("response head too large");
            }
            self.read_more(0).await?;
        }
    }
}

/// Writes masked client frames.
pub struct FrameWriter<W> {
    io: W,
    masks: MaskGen,
    wbuf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer whose masking keys derive from `seed`.
    pub fn new(io: W, seed: u64) -> Self {
        Self {
            io,
            masks: MaskGen::new(seed),
            wbuf: Vec::new(),
        }
    }

    /// Queues one frame; nothing is written until [`flush`](Self::flush).
    pub fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.masks.next_key();
        encode_masked(opcode, payload, mask, &mut self.wbuf);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued in one `write_all`.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await.context("write")?;
            // Over TLS, records may still sit in rustls: push them out.
            self.io.flush().await.context("flush")?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Queues and flushes one frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        self.queue(opcode, payload);
        self.flush().await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.write_all(bytes).await.context("write")?;
        self.io.flush().await.context("flush")
    }
}

/// An established, `connect`ed (and optionally subscribed) connection.
pub struct Conn {
    /// Reading side.
    pub reader: FrameReader<ReadIo>,
    /// Writing side.
    pub writer: FrameWriter<WriteIo>,
    /// The socket under both sides (plain or TLS).
    fd: std::os::fd::RawFd,
    /// The `offset` of the `subscribe` reply (the channel's position at
    /// subscription; the next publication has `offset + 1`).
    pub sub_offset: Option<u64>,
    /// The parsed `subscribe` reply, when asked for ([`SubOpts::detail`]).
    pub sub_reply: Option<SubReply>,
    /// The parsed `collab_join` reply, when the connection joined a story
    /// ([`SubOpts::collab`]).
    pub join_reply: Option<JoinReply>,
}

impl Conn {
    /// Makes the eventual close abortive (`SO_LINGER` 0: the kernel sends
    /// RST instead of FIN, with no close handshake and no TIME_WAIT), as
    /// after a network failure.
    pub fn set_abortive_close(&self) -> Result<()> {
        crate::tls::set_zero_linger(self.fd)
    }
}

/// What a control frame asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// Nothing more to do (the frame was a pong, or a ping we answered).
    Handled,
    /// The server closed the connection with this code (we answered).
    Closed(u16),
}

/// Answers a ping with a pong or a close with a close; `Ok(None)` for a data frame.
pub async fn handle_control(
    reader: &mut FrameReader<ReadIo>,
    writer: &mut FrameWriter<WriteIo>,
    h: &FrameHeader,
) -> Result<Option<Control>> {
    match h.opcode {
        OP_PING => {
            let p = reader.payload(h).to_vec();
            reader.consume(h);
            writer.send(OP_PONG, &p).await?;
            Ok(Some(Control::Handled))
        }
        OP_PONG => {
            reader.consume(h);
            Ok(Some(Control::Handled))
        }
        OP_CLOSE => {
            let p = reader.payload(h);
            let code = if p.len() >= 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                1005
            };
            reader.consume(h);
            let echo = if code == 1005 {
                Vec::new()
            } else {
                code.to_be_bytes().to_vec()
            };
            // Best effort: the server may already have closed its side.
            let _ = writer.send(OP_CLOSE, &echo).await;
            Ok(Some(Control::Closed(code)))
        }
        _ => Ok(None),
    }
}

/// How to subscribe during [`open_with`].
#[derive(Debug, Clone, Default)]
pub struct SubOpts {
    /// Parse the whole `subscribe` reply ([`Conn::sub_reply`]): epoch,
    /// `recovered`, the offsets of `publications`.
    pub detail: bool,
    /// Subscribe with `{"recover":true,"epoch":..,"offset":..}` from this
    /// position (implies `detail`).
    pub recover: Option<Position>,
    /// Join the channel as a story member with `collab_join` in this role
    /// instead of subscribing; the whole reply is parsed
    /// ([`Conn::join_reply`]).
    pub collab: Option<JoinRole>,
    /// `connect {user}` (taken as given by a node with `[auth] mode =
    /// "none"`); ignored when a token or ticket is configured.
    pub user: Option<String>,
}

/// A stream position: the channel's epoch (16 hex characters) and the
/// offset of the last publication seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Epoch as the server sent it.
    pub epoch: String,
    /// Last offset seen.
    pub offset: u64,
}

/// A parsed `subscribe` reply (with [`SubOpts::detail`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubReply {
    /// The channel's epoch.
    pub epoch: String,
    /// The channel's offset at subscription.
    pub offset: u64,
    /// `recovered` (false when absent).
    pub recovered: bool,
    /// Offsets of the `publications` replayed, in reply order.
    pub publications: Vec<u64>,
    /// Offsets of `pub` pushes that came in the setup frames, in order
    /// (the caller must count them: they are not seen again).
    pub early_pushes: Vec<u64>,
}

/// Parses the body of a `subscribe` reply object (`{"id":2,"subscribe":{..}}`).
pub fn parse_sub_reply(obj: &[u8]) -> Result<SubReply> {
    let v: serde_json::Value = serde_json::from_slice(obj).context("subscribe reply JSON")?;
    let r = v
        .get("subscribe")
        .ok_or_else(|| anyhow::anyhow!("no \"subscribe\" in {}", String::from_utf8_lossy(obj)))?;
    let publications = r
        .get("publications")
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("offset").and_then(|o| o.as_u64()))
                .collect()
        })
        .unwrap_or_default();
    Ok(SubReply {
        epoch: r
            .get("epoch")
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_string(),
        offset: r.get("offset").and_then(|o| o.as_u64()).unwrap_or(0),
        recovered: r
            .get("recovered")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        publications,
        early_pushes: Vec::new(),
    })
}

/// Opens a connection to `addr` (from `src`, port chosen by the kernel),
/// upgrades with the JSON subprotocol (offering `permessage-deflate` if
/// `deflate`), sends `connect` and, if `channel` is given, `subscribe` in
/// the same frame, and waits for their replies.
pub async fn open(
    addr: SocketAddr,
    src: Option<IpAddr>,
    seed: u64,
    channel: Option<&str>,
    deflate: bool,
) -> Result<Conn> {
    open_with(addr, src, seed, channel, deflate, &SubOpts::default()).await
}

/// [`open`], subscribing as `sub` says.
pub async fn open_with(
    addr: SocketAddr,
    src: Option<IpAddr>,
    seed: u64,
    channel: Option<&str>,
    deflate: bool,
    sub: &SubOpts,
) -> Result<Conn> {
    let sock = TcpSocket::new_v4().context("socket")?;
    if let Some(ip) = src {
        // Let connect() pick the port (per 4-tuple) instead of bind()
        // searching for a port free for every destination: that search
        // gets slower with every socket already bound.
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .context("IP_BIND_ADDRESS_NO_PORT")?;
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}:0"))?;
    }
    let stream = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (r, w, fd) = crate::tls::split(stream).await?;
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w, seed);

    let key = key_for(seed);
    writer
        .write_raw(&upgrade_request(&addr.to_string(), WS_PATH, &key, deflate))
        .await?;
    let head = reader.read_head().await?;
    if let Some(d) = check_response(&head, &key, deflate)? {
        reader.set_deflate(d);
    }

    let params = connect_params(seed, sub.user.as_deref())?;
    let hello = match (channel, sub.collab) {
        (Some(ch), Some(role)) => {
            let mut h = format!("{{\"id\":1,\"connect\":{params}}}\n").into_bytes();
            build_join(&mut h, 2, &serde_json::to_string(ch)?, role);
            String::from_utf8(h).expect("ASCII and JSON strings")
        }
        (Some(ch), None) => format!(
            "{{\"id\":1,\"connect\":{params}}}\n{}",
            subscribe_cmd(2, ch, sub.recover.as_ref())?
        ),
        (None, _) => format!("{{\"id\":1,\"connect\":{params}}}"),
    };
    writer.send(OP_TEXT, hello.as_bytes()).await?;
    let s = await_setup(&mut reader, &mut writer, true, channel.map(|_| 2), sub).await?;
    Ok(Conn {
        reader,
        writer,
        fd,
        sub_offset: s.sub_offset,
        sub_reply: s.sub_reply,
        join_reply: s.join_reply,
    })
}

/// A command the server answered with an error (during [`open_with`] or
/// [`Conn::resubscribe`]); callers may look at `code` (e.g. 100, temporary:
/// try again) with `anyhow::Error::downcast_ref`.
#[derive(Debug, Clone)]
pub struct CommandFailed {
    /// The command's id.
    pub id: u64,
    /// The error code.
    pub code: u64,
    /// The error reply as received.
    pub reply: String,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command {} failed: {}", self.id, self.reply)
    }
}

impl std::error::Error for CommandFailed {}

/// `{"id":<id>,"subscribe":{"channel":..[,"recover":true,"epoch":..,"offset":..]}}`.
fn subscribe_cmd(id: u64, channel: &str, recover: Option<&Position>) -> Result<String> {
    let recover = match recover {
        Some(p) => format!(
            ",\"recover\":true,\"epoch\":{},\"offset\":{}",
            serde_json::to_string(&p.epoch)?,
            p.offset
        ),
        None => String::new(),
    };
    Ok(format!(
        "{{\"id\":{id},\"subscribe\":{{\"channel\":{}{recover}}}}}",
        serde_json::to_string(channel)?
    ))
}

/// What the setup replies said.
#[derive(Default)]
struct Setup {
    sub_offset: Option<u64>,
    sub_reply: Option<SubReply>,
    join_reply: Option<JoinReply>,
}

/// Reads until the `connect` reply (id 1, if `connect`) and the reply to
/// command `sub_id` (a `subscribe`, or a `collab_join` with `sub.collab`)
/// have arrived; `pub` pushes that come with them are kept for the caller.
async fn await_setup(
    reader: &mut FrameReader<ReadIo>,
    writer: &mut FrameWriter<WriteIo>,
    connect: bool,
    sub_id: Option<u64>,
    sub: &SubOpts,
) -> Result<Setup> {
    let collab = sub.collab.is_some();
    let detail = sub.detail || sub.recover.is_some() || collab;
    let mut connected = !connect;
    let mut s = Setup::default();
    let mut early = Vec::new();
    let mut early_objects = Vec::new();
    while !(connected && (sub_id.is_none() || s.sub_offset.is_some())) {
        let h = reader.next_frame().await?;
        if let Some(c) = handle_control(reader, writer, &h).await? {
            if let Control::Closed(code) = c {
                bail!("closed by the server during setup (code {code})");
            }
            continue;
        }
        if h.opcode != OP_TEXT || !h.fin {
            bail!(
                "unexpected frame during setup: opcode {} fin {}",
                h.opcode,
                h.fin
            );
        }
        let mut err: Option<anyhow::Error> = None;
        for_each_object(reader.payload(&h), |o| match classify(o) {
            ServerMsg::Reply { id: 1, .. } if connect => connected = true,
            ServerMsg::Reply { id, .. } if collab && Some(id) == sub_id => {
                match parse_join_reply(o) {
                    Ok(r) => {
                        s.sub_offset = Some(r.offset);
                        s.join_reply = Some(r);
                    }
                    Err(e) => err = Some(e),
                }
            }
            ServerMsg::Reply { id, offset } if Some(id) == sub_id => {
                s.sub_offset = offset.or(Some(0));
                if detail {
                    match parse_sub_reply(o) {
                        Ok(r) => s.sub_reply = Some(r),
                        Err(e) => err = Some(e),
                    }
                }
            }
            ServerMsg::Pub { .. } if collab => early_objects.push(o.to_vec()),
            ServerMsg::Pub { offset, .. } if detail => early.push(offset),
            ServerMsg::Error { id, code } => {
                err = Some(anyhow::Error::new(CommandFailed {
                    id,
                    code,
                    reply: String::from_utf8_lossy(o).into_owned(),
                }));
            }
            ServerMsg::Disconnect { code } => {
                err = Some(anyhow::anyhow!("disconnect push {code} during setup"))
            }
            _ => {}
        });
        reader.consume(&h);
        if let Some(e) = err {
            return Err(e);
        }
    }
    if let Some(r) = s.join_reply.as_mut() {
        r.early = early_objects;
    } else if let Some(r) = s.sub_reply.as_mut() {
        r.early_pushes = early;
    }
    Ok(s)
}

impl Conn {
    /// Subscribes this (connected) connection to `channel` with command id
    /// `id`, as `sub` says (recovery position, detail), and waits for the
    /// reply: `sub_offset` and `sub_reply` are then the new ones. What a
    /// client does after a temporary (100) refusal: try again on the same
    /// connection.
    pub async fn resubscribe(&mut self, id: u64, channel: &str, sub: &SubOpts) -> Result<()> {
        let cmd = subscribe_cmd(id, channel, sub.recover.as_ref())?;
        self.writer.send(OP_TEXT, cmd.as_bytes()).await?;
        let s = await_setup(&mut self.reader, &mut self.writer, false, Some(id), sub).await?;
        self.sub_offset = s.sub_offset;
        self.sub_reply = s.sub_reply;
        Ok(())
    }
}

/// The `connect` parameters from the environment:
/// - `WSBENCH_CONNECT_TOKEN`: a JWT every connection sends (to measure
///   connects against a node with `[auth] mode = "jwt"`);
/// - `WSBENCH_CONNECT_TICKET_PREFIX`: connection `seed` sends the one-time
///   ticket `<prefix><seed>` (`mode = "ticket"`; `bench/auth-connect.sh`
///   writes `wsedge:ticket:<prefix>1..N` into Redis first);
/// - otherwise `{"user": user}` when `user` is given, else `{}`.
fn connect_params(seed: u64, user: Option<&str>) -> Result<String> {
    if let Ok(prefix) = std::env::var("WSBENCH_CONNECT_TICKET_PREFIX") {
        let ticket = format!("{prefix}{seed}");
        return Ok(format!(
            "{{\"ticket\":{}}}",
            serde_json::to_string(&ticket)?
        ));
    }
    match (std::env::var("WSBENCH_CONNECT_TOKEN"), user) {
        (Ok(t), _) => Ok(format!("{{\"token\":{}}}", serde_json::to_string(&t)?)),
        (Err(_), Some(u)) => Ok(format!("{{\"user\":{}}}", serde_json::to_string(u)?)),
        (Err(_), None) => Ok("{}".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compresses like a `permessage-deflate` sender: raw deflate, sync
    /// flush, trailing `00 00 ff ff` removed.
    fn deflate(msg: &[u8], c: &mut flate2::Compress) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        c.compress_vec(msg, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn sub_reply() {
        let r = parse_sub_reply(br#"{"id":2,"subscribe":{"epoch":"9d3c1f0a7b2e4c55","offset":121,"recoverable":true,"recovered":true,"publications":[{"offset":120,"data":{"offset":1}},{"offset":121,"b64data":"/wA="}]}}"#).unwrap();
        assert_eq!(r.epoch, "9d3c1f0a7b2e4c55");
        assert_eq!(r.offset, 121);
        assert!(r.recovered);
        assert_eq!(r.publications, vec![120, 121]);
        let r = parse_sub_reply(br#"{"id":2,"subscribe":{"epoch":"00ab","offset":0}}"#).unwrap();
        assert!(!r.recovered && r.publications.is_empty());
    }

    #[test]
    fn inflate_no_context_takeover() {
        let mut inf = Inflater::new(Deflate {
            server_no_context_takeover: true,
        });
        for i in 0..3 {
            let msg = format!("{{\"push\":{{\"n\":{i}}}}}").repeat(200);
            let mut c = flate2::Compress::new(flate2::Compression::default(), false);
            inf.inflate(&deflate(msg.as_bytes(), &mut c)).unwrap();
            assert_eq!(inf.out, msg.as_bytes());
        }
    }

    #[test]
    fn inflate_with_context_takeover() {
        let mut inf = Inflater::new(Deflate {
            server_no_context_takeover: false,
        });
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        for i in 0..3 {
            let msg = format!("same text again and again {i} ").repeat(50);
            inf.inflate(&deflate(msg.as_bytes(), &mut c)).unwrap();
            assert_eq!(inf.out, msg.as_bytes());
        }
    }
}

#[cfg(test)]
mod inflate_speed {
    use super::*;

    /// `cargo test --release inflate_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn inflate_speed() {
        let item = crate::payload::feed_item(1, 1500);
        let msg = format!(
            "{{\"push\":{{\"channel\":\"feed\",\"pub\":{{\"offset\":1,\"data\":{{\"t\":1,{item}}}}}}}"
        );
        let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut out = Vec::with_capacity(4096);
        c.compress_vec(msg.as_bytes(), &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        let mut inf = Inflater::new(Deflate {
            server_no_context_takeover: true,
        });
        let n = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            inf.inflate(&out).unwrap();
        }
        let el = t.elapsed();
        eprintln!(
            "{} -> {} bytes: {:.2} us per inflate",
            out.len(),
            inf.out.len(),
            el.as_secs_f64() * 1e6 / n as f64
        );
    }
}
