//! One connection's whole protocol life as a state machine with no I/O:
//! the HTTP upgrade, frames, the heartbeat, the close handshake in both
//! directions, and (in [`Commands`]) the command-level state above them.
//!
//! The shard shell keeps one [`Session`] in each connection slot. It hands
//! the session the bytes it read and the tick it is at, and carries out
//! what the session returns: write the [`Session::outbox`], half-close once
//! [`Session::wants_shutdown`], look again at [`Session::deadline`], send a
//! complete message's commands to the router. Frames are decoded one event
//! at a time ([`Session::take_decoder`], [`Session::on_event`],
//! [`Session::fed`]) so that a message's payload is borrowed straight from
//! the read buffer, and the shell may route a command (whose answers and
//! deliveries may land in this same session's outbox) between two events
//! without the session being borrowed.
//!
//! Time is the shard's whole-second tick; every deadline is a tick.

mod commands;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

pub use commands::{Commands, Step};

use crate::engine::access::Refusal;
use crate::engine::codes::CloseReason;
use crate::engine::heartbeat::{Heartbeat, HeartbeatAction, HeartbeatConfig};
use crate::engine::outbox::Outbox;
use crate::engine::wire::{FrameWriter, Method};
use crate::engine::ws::deflate::{Deflate, Inflater};
use crate::engine::ws::frame::{
    DecoderLimits, Event, Fed, Flow, FrameDecoder, Opcode, close_frame, frame_bytes,
};
use crate::engine::ws::handshake::{
    self, Endpoint, HandshakeConfig, Parsed, Reject, SsePostHead, UpgradeRequest, WireFormat,
};

/// An unmasked ping with no payload.
const PING_FRAME: &[u8] = &[0x89, 0x00];

/// What every session of a shard shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Paths, head size, compression.
    pub handshake: HandshakeConfig,
    /// Ping interval and pong timeout.
    pub heartbeat: HeartbeatConfig,
    /// Largest message accepted (after inflating), in bytes.
    pub max_message_size: usize,
    /// Seconds a client has to complete its upgrade request.
    pub handshake_timeout: u32,
    /// Seconds an open connection has to complete `connect` (its
    /// credentials checked included).
    pub connect_timeout: u32,
    /// Seconds the peer has to answer a close (see [`Session::extend_close`]).
    pub close_timeout: u32,
    /// Commands a connection may send per second (0 = unlimited).
    pub max_commands_per_second: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// WebSocket open.
    Open,
    /// Our close frame (or HTTP refusal) is queued or sent; waiting for the
    /// peer's close and/or the end of the stream, until the deadline.
    Closing,
}

/// What a connection holds only some of the time.
enum Extra {
    /// Upgrade request bytes received so far.
    Request(Vec<u8>),
    /// Who the client is.
    Identity(Identity),
    /// A token the upgrade request carried (`bearer.` protocol or
    /// `?token=`), for `connect` to use.
    Token(Box<str>),
    /// An SSE command post reading its body.
    Post(PostBody),
}

/// An SSE command post's body as it arrives.
#[derive(Debug)]
struct PostBody {
    head: SsePostHead,
    body: Vec<u8>,
}

/// How an SSE command post's body is coming along (see
/// [`Session::post_bytes`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Post {
    /// More bytes are needed.
    Partial,
    /// The whole body: for the stream session it names. Bytes after it are
    /// ignored (the answer closes the connection).
    Complete {
        /// The stream session id the path named (not yet checked).
        session: Box<str>,
        /// The commands.
        body: Vec<u8>,
        /// Header lines the answer must carry (CORS).
        answer_headers: Box<[u8]>,
    },
}

/// Who a client said it is at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub user: Arc<str>,
    /// Connection info (JSON text).
    pub info: Option<Bytes>,
    /// The tick at which the connection is closed as expired (its token's
    /// `exp` plus the refresh grace), unless a `refresh` moves it.
    pub expires_at: Option<u32>,
}

/// How the upgrade request went so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The head is incomplete: more bytes are needed.
    Partial,
    /// Refused: the HTTP answer is queued and the session is closing.
    Rejected(Reject),
    /// A valid upgrade the access rules refused (see
    /// [`Session::handle_request_checked`]): the refusal's HTTP answer is
    /// queued and the session is closing.
    Refused(Refusal),
    /// Upgraded: the `101` answer is queued and the session is open. The
    /// bytes the client sent after the head are already frames, to be fed.
    Opened(Vec<u8>),
}

/// What one decoded frame event asks of the shell.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'e> {
    /// Nothing.
    Nothing,
    /// An answer (a pong) was queued: list the connection for writing.
    Answered,
    /// The peer closed with this code (None: no code). The echo is queued
    /// and the session is closing: write it, then half-close.
    PeerClosed(Option<u16>),
    /// The close the session was waiting for arrived: write what is left,
    /// then half-close.
    CloseDone,
    /// A complete data message, for the endpoint.
    Message {
        /// Text (true) or binary.
        text: bool,
        /// The payload, still compressed if `compressed`.
        payload: &'e [u8],
        /// Deflate-compressed: inflate it with [`Session::inflate`] first.
        compressed: bool,
    },
}

/// How feeding a read's frames ended (see [`Session::fed`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// All consumed, or stopped on purpose.
    Done,
    /// The stream broke the protocol while open: close with this reason.
    Close(CloseReason),
    /// Garbage while waiting for the peer's close: the wait is given up;
    /// write what is left, then half-close.
    GiveUp,
}

/// What a deadline found (see [`Session::handle_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Not due: look again at this tick.
    Wait(u32),
    /// A ping was queued: write it, and look again at this tick.
    Ping(u32),
    /// The upgrade request did not complete in time: drop the connection.
    HandshakeExpired,
    /// The peer did not answer the heartbeat: close with
    /// [`CloseReason::NoPong`].
    NoPong,
    /// The close handshake did not complete in time. Unless output is still
    /// reaching the peer ([`Session::extend_close`]), drop the connection.
    CloseExpired,
    /// `connect` did not complete within `connect_timeout`: close with
    /// [`CloseReason::ConnectTimeout`].
    ConnectExpired,
    /// The credentials expired and were not refreshed in time: close with
    /// [`CloseReason::TokenExpired`].
    Expired,
}

/// One connection's protocol state. 112 bytes; the shell's slot adds the
/// socket and its own bookkeeping.
pub struct Session {
    phase: Phase,
    endpoint: Endpoint,
    format: WireFormat,
    deflate: Option<Deflate>,
    /// In `Closing`: still parse frames, looking for the peer's close.
    awaiting_peer_close: bool,
    /// Half-close (FIN) once the outbox is empty.
    shutdown_after_flush: bool,
    /// While open, the heartbeat; before and after, a plain deadline for
    /// the upgrade or the close (one field serves all three phases).
    heartbeat: Heartbeat,
    commands: Commands,
    decoder: FrameDecoder,
    /// The partial upgrade request while in `Handshake`; afterwards who the
    /// client said it is, if it said. Boxed so an anonymous open connection
    /// pays 8 bytes for both.
    extra: Option<Box<Extra>>,
    /// Frames waiting for the socket, in the order they must be written.
    pub outbox: Outbox,
}

impl Session {
    /// A connection accepted at `now`: its upgrade request is due within
    /// `handshake_timeout`.
    pub fn new(now: u32, cfg: &SessionConfig) -> Self {
        Self {
            phase: Phase::Handshake,
            endpoint: Endpoint::Client,
            format: WireFormat::Json,
            deflate: None,
            awaiting_peer_close: false,
            shutdown_after_flush: false,
            heartbeat: Heartbeat::until(now + cfg.handshake_timeout),
            commands: Commands::default(),
            decoder: FrameDecoder::new(),
            extra: None,
            outbox: Outbox::default(),
        }
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the connection is open (commands are served, data is sent).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The endpoint the upgrade chose.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The wire form the upgrade negotiated.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// permessage-deflate, if negotiated.
    pub fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// Whether the connection takes the shared compressed publications
    /// (compressed once with a 15-bit window).
    pub fn takes_shared_deflate(&self) -> bool {
        self.deflate.is_some_and(|d| d.server_window_bits == 15)
    }

    /// Whether `connect` was accepted.
    pub fn connected(&self) -> bool {
        self.commands.connected()
    }

    /// The tick at which [`Session::handle_timeout`] must run next.
    pub fn deadline(&self) -> u32 {
        let d = self.heartbeat.deadline();
        match self.expires_at() {
            Some(at) if self.is_open() && self.connected() => d.min(at),
            _ => d,
        }
    }

    /// The tick at which the connection expires, if its credentials do.
    pub fn expires_at(&self) -> Option<u32> {
        self.identity().and_then(|i| i.expires_at)
    }

    /// Whether everything is written and the write side should be shut.
    pub fn wants_shutdown(&self) -> bool {
        self.shutdown_after_flush && self.outbox.is_empty()
    }

    /// The user and connection info given at `connect`, if any.
    pub fn identity(&self) -> Option<&Identity> {
        match self.extra.as_deref() {
            Some(Extra::Identity(i)) => Some(i),
            _ => None,
        }
    }

    /// Records who the client is (at `connect`), and when it expires. An
    /// anonymous user with no info and credentials that do not expire costs
    /// nothing.
    pub fn set_identity(&mut self, user: Arc<str>, info: Option<Bytes>, expires_at: Option<u32>) {
        if !user.is_empty() || info.is_some() || expires_at.is_some() {
            self.extra = Some(Box::new(Extra::Identity(Identity {
                user,
                info,
                expires_at,
            })));
        } else {
            self.extra = None;
        }
    }

    /// Moves the expiry (a `refresh`): `None` = no longer expires.
    pub fn set_expiry(&mut self, expires_at: Option<u32>) {
        match self.extra.as_deref_mut() {
            Some(Extra::Identity(i)) => i.expires_at = expires_at,
            _ => self.set_identity("".into(), None, expires_at),
        }
    }

    /// Takes the token the upgrade request carried, if any.
    pub fn take_token(&mut self) -> Option<Box<str>> {
        match self.extra.take().map(|b| *b) {
            Some(Extra::Token(t)) => Some(t),
            other => {
                self.extra = other.map(Box::new);
                None
            }
        }
    }

    /// Whether a `connect` is waiting for its credentials (a ticket being
    /// redeemed).
    pub fn connect_pending(&self) -> bool {
        self.is_open() && self.commands.pending()
    }

    /// The `connect` in progress is accepted at tick `now`: the heartbeat
    /// starts (until now the connect deadline stood in its place).
    pub fn accept_connect(&mut self, now: u32, cfg: &SessionConfig) {
        self.commands.accept();
        self.heartbeat = Heartbeat::start(now, &cfg.heartbeat);
    }

    /// The `connect` in progress is refused with a temporary error: the
    /// client may try again before its connect deadline.
    pub fn refuse_connect(&mut self) {
        self.commands.refuse();
    }

    // ---- the upgrade ---------------------------------------------------------

    /// Upgrade request bytes (`buf`, just read) at tick `now`.
    pub fn handle_request(&mut self, now: u32, buf: &[u8], cfg: &SessionConfig) -> Request {
        self.handle_request_checked(now, buf, cfg, |_| Ok(()))
    }

    /// [`Session::handle_request`], with `check` asked about a valid upgrade
    /// request before the `101` is queued: the shell's access rules (the
    /// `Origin` allow-list, the client address behind a trusted proxy and
    /// its limits). A refusal queues [`Refusal::response`] instead and the
    /// session closes. `check` runs at most once, and only for a request
    /// the parser accepted.
    pub fn handle_request_checked<F>(
        &mut self,
        now: u32,
        buf: &[u8],
        cfg: &SessionConfig,
        check: F,
    ) -> Request
    where
        F: FnOnce(&UpgradeRequest<'_>) -> Result<(), Refusal>,
    {
        debug_assert_eq!(self.phase, Phase::Handshake);
        let parsed = match self.extra.as_deref_mut() {
            Some(Extra::Request(req)) => {
                req.extend_from_slice(buf);
                handshake::parse_request(req, &cfg.handshake)
            }
            _ => match handshake::parse_request(buf, &cfg.handshake) {
                Parsed::Partial => {
                    self.extra = Some(Box::new(Extra::Request(buf.to_vec())));
                    return Request::Partial;
                }
                done => done,
            },
        };
        match parsed {
            Parsed::Partial => Request::Partial,
            Parsed::Reject(r) => {
                self.extra = None;
                self.outbox.push_urgent(Bytes::from(r.response()));
                self.start_closing(now, false, cfg);
                Request::Rejected(r)
            }
            Parsed::Upgrade(up) => {
                let req = match self.extra.take().map(|b| *b) {
                    Some(Extra::Request(req)) => Some(req),
                    _ => None,
                };
                let bytes = req.as_deref().unwrap_or(buf);
                let view = UpgradeRequest {
                    upgrade: &up,
                    head: &bytes[..up.head_len],
                };
                if let Err(refusal) = check(&view) {
                    self.refuse_upgrade(now, refusal, cfg);
                    return Request::Refused(refusal);
                }
                let rest = bytes[up.head_len..].to_vec();
                self.phase = Phase::Open;
                self.endpoint = up.endpoint;
                self.format = up.format;
                self.deflate = up.deflate;
                // Until `connect` completes, its deadline stands in for the
                // heartbeat. The echo endpoint has no commands: its
                // heartbeat starts at once. A command post has until the
                // handshake deadline to deliver its body.
                self.heartbeat = match up.endpoint {
                    Endpoint::Client | Endpoint::SseStream => {
                        Heartbeat::until(now + cfg.connect_timeout)
                    }
                    Endpoint::Echo => Heartbeat::start(now, &cfg.heartbeat),
                    Endpoint::SsePost => self.heartbeat,
                };
                if let Some(token) = up.token {
                    self.extra = Some(Box::new(Extra::Token(token)));
                }
                if let Some(head) = up.post {
                    let body = Vec::with_capacity(head.body_len.min(64 * 1024));
                    self.extra = Some(Box::new(Extra::Post(PostBody { head, body })));
                }
                if !up.response.is_empty() {
                    self.outbox.push_urgent(Bytes::from(up.response));
                }
                if up.endpoint == Endpoint::SseStream {
                    self.outbox.set_sse();
                }
                Request::Opened(rest)
            }
        }
    }

    /// Refuses the connection before its upgrade (the access rules, or a
    /// broken PROXY header in front of the request): the refusal's HTTP
    /// answer is queued and the session closes. Nothing happens once the
    /// session has left the handshake.
    pub fn refuse_upgrade(&mut self, now: u32, refusal: Refusal, cfg: &SessionConfig) {
        if self.phase != Phase::Handshake {
            return;
        }
        self.extra = None;
        self.outbox.push_urgent(Bytes::from(refusal.response()));
        self.start_closing(now, false, cfg);
    }

    // ---- frames ----------------------------------------------------------------

    /// Whether frames read now are to be decoded (open, or closing and still
    /// waiting for the peer's close); otherwise input is discarded until
    /// the end of the stream.
    pub fn reads_frames(&self) -> bool {
        if matches!(self.endpoint, Endpoint::SseStream | Endpoint::SsePost) {
            return false; // no frames: a post's body, or nothing, comes in
        }
        match self.phase {
            Phase::Open => true,
            Phase::Closing => self.awaiting_peer_close,
            Phase::Handshake => false,
        }
    }

    /// Lends the frame decoder, and the limits it enforces, for one read's
    /// bytes. Give it back with [`Session::fed`].
    pub fn take_decoder(&mut self, cfg: &SessionConfig) -> (FrameDecoder, DecoderLimits) {
        let limits = DecoderLimits {
            max_message_size: cfg.max_message_size,
            allow_compressed: self.deflate.is_some(),
        };
        (std::mem::take(&mut self.decoder), limits)
    }

    /// One decoded event. Control frames are answered here; a data message
    /// goes to the shell.
    pub fn on_event<'e>(&mut self, now: u32, ev: Event<'e>, cfg: &SessionConfig) -> Input<'e> {
        if self.phase == Phase::Closing {
            // Waiting for the peer's close; everything else is ignored.
            if let Event::Close { .. } = ev {
                self.awaiting_peer_close = false;
                self.shutdown_after_flush = true;
                return Input::CloseDone;
            }
            return Input::Nothing;
        }
        match ev {
            Event::Message {
                text,
                payload,
                compressed,
            } => Input::Message {
                text,
                payload,
                compressed,
            },
            Event::Ping(p) => {
                self.outbox.push_urgent(frame_bytes(Opcode::Pong, p));
                Input::Answered
            }
            Event::Pong(_) => {
                self.heartbeat.on_pong(&cfg.heartbeat);
                Input::Nothing
            }
            Event::Close { code, .. } => {
                // Echo the peer's close, then half-close once it is out.
                let echo = match code {
                    Some(code) => close_frame(code, ""),
                    None => frame_bytes(Opcode::Close, &[]),
                };
                self.outbox.drop_data();
                self.outbox.push_urgent(echo);
                self.start_closing(now, false, cfg);
                Input::PeerClosed(code)
            }
        }
    }

    /// Whether the decoder should go on after the last event was handled:
    /// while open, or while closing and still looking for the peer's close.
    pub fn flow(&self) -> Flow {
        if self.reads_frames() {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    /// Takes the decoder back after a read's bytes were fed.
    pub fn fed(&mut self, decoder: FrameDecoder, result: Result<Fed, CloseReason>) -> Feed {
        match result {
            Ok(Fed::All) => {
                self.decoder = decoder;
                Feed::Done
            }
            // Stopped: nothing more will be decoded.
            Ok(Fed::Stopped) => Feed::Done,
            Err(reason) if self.phase == Phase::Open => Feed::Close(reason),
            Err(_) => {
                self.awaiting_peer_close = false;
                self.shutdown_after_flush = true;
                Feed::GiveUp
            }
        }
    }

    /// Inflates a compressed message (bounded by the message size limit)
    /// and checks that text is UTF-8. `Err`: close with that reason.
    pub fn inflate<'i>(
        &self,
        inflater: &'i mut Inflater,
        text: bool,
        payload: &[u8],
        cfg: &SessionConfig,
    ) -> Result<&'i [u8], CloseReason> {
        let plain = inflater.inflate(payload, cfg.max_message_size)?;
        if text && simdutf8::basic::from_utf8(plain).is_err() {
            return Err(CloseReason::InvalidPayload);
        }
        Ok(plain)
    }

    // ---- commands --------------------------------------------------------------

    /// Whether a client message's frame type matches the negotiated wire
    /// form (text for JSON, binary for FlatBuffers); if not, close with
    /// [`CloseReason::UnsupportedData`].
    pub fn accepts(&self, text: bool) -> bool {
        text == (self.format == WireFormat::Json)
    }

    /// One command of a client message (or the error its decoding gave) at
    /// tick `now`: what the shell must do with it. Nothing once the session
    /// is no longer open (an earlier command of the same message closed it).
    pub fn command<'a>(
        &mut self,
        now: u32,
        method: Result<Method<'a>, crate::engine::codes::ErrorCode>,
        cfg: &SessionConfig,
    ) -> Option<Step<'a>> {
        if self.phase != Phase::Open {
            return None;
        }
        Some(
            self.commands
                .command(now, cfg.max_commands_per_second, method),
        )
    }

    // ---- SSE command posts ----------------------------------------------------

    /// Body bytes of an SSE command post (`buf`, just read). Nothing once
    /// the body is complete or for any other connection.
    pub fn post_bytes(&mut self, buf: &[u8]) -> Post {
        let Some(Extra::Post(post)) = self.extra.as_deref_mut() else {
            return Post::Partial;
        };
        let want = post.head.body_len - post.body.len();
        post.body.extend_from_slice(&buf[..buf.len().min(want)]);
        if post.body.len() < post.head.body_len {
            return Post::Partial;
        }
        let Some(Extra::Post(post)) = self.extra.take().map(|b| *b) else {
            unreachable!("matched above");
        };
        Post::Complete {
            session: post.head.session,
            body: post.body,
            answer_headers: post.head.answer_headers,
        }
    }

    /// Answers an SSE command post at `now` (`answer` is the complete HTTP
    /// response): the answer is written, then the connection closes.
    pub fn answer_post(&mut self, now: u32, answer: Bytes, cfg: &SessionConfig) {
        if self.phase != Phase::Open || self.endpoint != Endpoint::SsePost {
            return;
        }
        self.extra = None;
        self.outbox.push_urgent(answer);
        self.start_closing(now, false, cfg);
    }

    // ---- closing ---------------------------------------------------------------

    /// A server-initiated close at `now`: a `disconnect` push with `text`
    /// (for application reasons, on the client endpoint), then the close
    /// frame. They follow the data already queued, except for a slow
    /// consumer, whose queued data is dropped and whose close goes out right
    /// after the frame being written, if any. `pushes` encodes the push.
    /// False if the session was not open (nothing done).
    pub fn close(
        &mut self,
        now: u32,
        reason: CloseReason,
        text: &str,
        pushes: &mut FrameWriter,
        cfg: &SessionConfig,
    ) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        if self.endpoint == Endpoint::SsePost {
            // Not a protocol connection: a post still waiting for its body
            // or its stream is told to come back later.
            self.extra = None;
            self.outbox
                .push_urgent(Bytes::from(Reject::Unavailable.response()));
            self.start_closing(now, false, cfg);
            return true;
        }
        let urgent = reason == CloseReason::SlowConsumer;
        if urgent {
            self.outbox.drop_data();
        }
        let mut frames: [Option<Bytes>; 2] = [None, None];
        if reason.sends_push() && self.endpoint.serves_protocol() {
            pushes.begin(self.format);
            pushes.disconnect_text(reason, text);
            frames[0] = pushes.finish();
        }
        frames[1] = Some(close_frame(reason.close_code(), text));
        for f in frames.into_iter().flatten() {
            if urgent {
                self.outbox.push_urgent(f);
            } else {
                self.outbox.push_final(f);
            }
        }
        // After a protocol failure the stream cannot be trusted: do not
        // wait for the peer's close.
        let transport = matches!(
            reason,
            CloseReason::ProtocolError
                | CloseReason::InvalidPayload
                | CloseReason::MessageTooBig
                | CloseReason::UnsupportedData
        );
        // An SSE stream's client never answers a close: the event ends the
        // body, and the connection ends after it.
        let await_peer = !transport && self.endpoint != Endpoint::SseStream;
        self.start_closing(now, await_peer, cfg);
        true
    }

    /// Moves to `Closing`: nothing more is read as commands; the outbox
    /// (already holding the close frame or HTTP answer) is written, then
    /// the write side is shut. With `await_peer`, frames are still parsed
    /// until the peer's close arrives.
    fn start_closing(&mut self, now: u32, await_peer: bool, cfg: &SessionConfig) {
        self.phase = Phase::Closing;
        self.awaiting_peer_close = await_peer;
        self.shutdown_after_flush = !await_peer;
        self.heartbeat = Heartbeat::until(now + cfg.close_timeout);
        if matches!(self.extra.as_deref(), Some(Extra::Request(_))) {
            self.extra = None;
        }
    }

    /// The close deadline passed while output was still reaching the peer:
    /// its time to answer starts when the close has reached it, so wait
    /// another `close_timeout`. Returns the new deadline.
    pub fn extend_close(&mut self, now: u32, cfg: &SessionConfig) -> u32 {
        self.heartbeat = Heartbeat::until(now + cfg.close_timeout);
        self.heartbeat.deadline()
    }

    // ---- time ------------------------------------------------------------------

    /// The session's deadline came round at tick `now`.
    pub fn handle_timeout(&mut self, now: u32, cfg: &SessionConfig) -> Timeout {
        match self.phase {
            Phase::Handshake | Phase::Closing if now < self.deadline() => {
                Timeout::Wait(self.deadline())
            }
            Phase::Handshake => Timeout::HandshakeExpired,
            Phase::Closing => Timeout::CloseExpired,
            // A command post's body did not arrive in time.
            Phase::Open if self.endpoint == Endpoint::SsePost => {
                if now < self.deadline() {
                    Timeout::Wait(self.deadline())
                } else {
                    Timeout::HandshakeExpired
                }
            }
            Phase::Open if !self.connected() && self.endpoint.serves_protocol() => {
                if now < self.heartbeat.deadline() {
                    Timeout::Wait(self.heartbeat.deadline())
                } else {
                    Timeout::ConnectExpired
                }
            }
            Phase::Open => {
                let expires = self.expires_at().unwrap_or(u32::MAX);
                if now >= expires {
                    return Timeout::Expired;
                }
                match self.heartbeat.on_timer(now, &cfg.heartbeat) {
                    HeartbeatAction::Wait(at) => Timeout::Wait(at.min(expires)),
                    HeartbeatAction::Ping(at) => {
                        self.outbox.push_urgent(Bytes::from_static(PING_FRAME));
                        if self.endpoint == Endpoint::SseStream {
                            // A keepalive comment no client answers: the
                            // stream's liveness is the socket's (a write
                            // that fails, or the output budget).
                            self.heartbeat.on_pong(&cfg.heartbeat);
                            return Timeout::Ping(self.heartbeat.deadline().min(expires));
                        }
                        Timeout::Ping(at.min(expires))
                    }
                    HeartbeatAction::Timeout => Timeout::NoPong,
                }
            }
        }
    }
}
