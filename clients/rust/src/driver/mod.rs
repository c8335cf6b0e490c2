//! The background task: the one owner of the socket and of every piece of
//! client state (subscriptions, in-flight commands, the outbox, timers).
//!
//! Handles talk to it over an unbounded channel of [`Request`]s and get
//! answers on oneshot channels; it reports on watch and mpsc channels. It
//! never holds a lock, and all its timers come down to one next deadline
//! per loop turn ([`Driver::next_deadline`]).
//!
//! Files: this one has the loop and the connection's life (open, connect,
//! drop, reconnect, write); `requests.rs` what handles ask for and the
//! replies to it; `subs.rs` subscriptions (story memberships too: their
//! subscribe is `collab_join`) and their token renewal; `refresh.rs` the
//! connection token's refresh.

mod refresh;
mod requests;
mod subs;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_core::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::codes::{self, reconnect_advised};
use crate::error::{Error, TOKEN_EXPIRED};
use crate::jwt;
use crate::outbox::Outbox;
use crate::rate::RateWindow;
use crate::tls;
use crate::types::{ClientEvent, State};
use crate::wire::{self, Incoming};
use crate::{Options, TokenProvider};

pub(crate) use requests::{NewSub, Publish, Request};
use requests::{Pending, PendingKind, Waiting};
pub(crate) use subs::COLLAB_JOIN;
use subs::{Sub, SubTokenDone};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON text frame holds several commands up to about this many bytes
/// (the server's default `max_message_size` is 64 KiB); a larger command
/// goes alone.
const MAX_FRAME: usize = 16 * 1024;

/// How long closing a socket may take (our close frame out).
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Starts the task for `url`; returns its request channel and state.
pub(crate) fn spawn(
    url: String,
    options: Options,
) -> (mpsc::UnboundedSender<Request>, watch::Receiver<State>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(State::Disconnected);
    let driver = Driver::new(url, options, rx, state_tx);
    tokio::spawn(driver.run());
    (tx, state_rx)
}

/// The connection's phase.
enum Link {
    /// Disconnected: nothing to do until `connect`.
    Idle,
    /// Waiting out a reconnect delay.
    Backoff { until: Instant },
    /// Getting a token and opening the WebSocket.
    Opening {
        job: BoxFuture<'static, Result<Opened, OpenFailed>>,
    },
    /// The WebSocket is open, `connect` sent, its reply awaited.
    Handshaking { ws: Box<Ws> },
    /// Connected. `alive_until`: the dead-link deadline (none when the
    /// server announced no ping interval).
    Open {
        ws: Box<Ws>,
        alive_until: Option<Instant>,
        ping_window: Option<Duration>,
    },
}

/// An open WebSocket, and the token fetched for it (if one was).
struct Opened {
    ws: Box<Ws>,
    token: Option<String>,
}

/// Why opening failed, and whether to try again.
struct OpenFailed {
    code: u16,
    error: Error,
    reconnect: bool,
}

/// What woke the loop.
enum Event {
    Request(Request),
    Opened(Result<Opened, OpenFailed>),
    Frame(Option<Result<Message, tungstenite::Error>>),
    Token(Result<String, Error>),
    SubToken(SubTokenDone),
    Tick,
}

pub(crate) struct Driver {
    url: String,
    opts: Options,
    backoff: Backoff,
    rng: StdRng,
    requests: mpsc::UnboundedReceiver<Request>,
    state: watch::Sender<State>,
    listeners: Vec<mpsc::UnboundedSender<ClientEvent>>,
    link: Link,
    /// A socket being closed (our close frame goes out at the end of the
    /// loop turn, bounded by [`CLOSE_WAIT`]).
    closing: Option<Box<Ws>>,
    /// `disconnect` callers, answered once the socket is closed.
    disconnect_acks: Vec<oneshot::Sender<()>>,
    /// Consecutive failed attempts since the last successful connect.
    attempts: u32,
    /// The connection token (from the options or the provider).
    token: Option<String>,
    /// The server said 116: get a new token before the next attempt.
    token_stale: bool,
    /// The last `disconnect` push (code, reason, reconnect), applied when
    /// the close comes.
    close_advice: Option<(u16, String, bool)>,
    /// Why the client is disconnected (for calls made meanwhile).
    last_disconnect: (u16, String),
    connect_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    subs: HashMap<String, Sub>,
    /// Subscribes to retry after a temporary error: (when, channel, sub id).
    sub_retries: Vec<(Instant, String, u64)>,
    pending: HashMap<u32, Pending>,
    /// Deadlines of written commands, in write order (constant timeout, so
    /// the front is the earliest).
    timeouts: VecDeque<(Instant, u32)>,
    /// Calls made while connecting, waiting for the connection.
    waiting: VecDeque<Waiting>,
    outbox: Outbox<Publish>,
    /// Commands to write before any publish (connect, subscribes, calls).
    queue: VecDeque<(u32, String)>,
    rate: RateWindow,
    next_id: u32,
    next_seq: u64,
    /// When to refresh the connection token.
    refresh_at: Option<Instant>,
    refresh_job: Option<BoxFuture<'static, Result<String, Error>>>,
    refresh_attempts: u32,
    /// The rustls configuration for `wss://`, made at the first attempt.
    tls: Option<Result<Arc<rustls::ClientConfig>, Error>>,
    /// Subscription token fetches in flight.
    sub_jobs: FuturesUnordered<BoxFuture<'static, SubTokenDone>>,
}

impl Driver {
    fn new(
        url: String,
        opts: Options,
        requests: mpsc::UnboundedReceiver<Request>,
        state: watch::Sender<State>,
    ) -> Self {
        Self {
            url,
            backoff: Backoff {
                min: opts.min_reconnect_delay,
                max: opts.max_reconnect_delay,
            },
            rng: StdRng::from_os_rng(),
            requests,
            state,
            listeners: Vec::new(),
            link: Link::Idle,
            closing: None,
            disconnect_acks: Vec::new(),
            attempts: 0,
            token: opts.token.clone().filter(|t| !t.is_empty()),
            token_stale: false,
            close_advice: None,
            last_disconnect: (codes::DISCONNECT_CALLED, "not connected".into()),
            connect_waiters: Vec::new(),
            subs: HashMap::new(),
            sub_retries: Vec::new(),
            pending: HashMap::new(),
            timeouts: VecDeque::new(),
            waiting: VecDeque::new(),
            outbox: Outbox::new(opts.outbox_capacity, opts.outbox_policy),
            queue: VecDeque::new(),
            rate: RateWindow::new(opts.max_commands_per_second),
            next_id: 0,
            next_seq: 0,
            refresh_at: None,
            refresh_job: None,
            refresh_attempts: 0,
            tls: None,
            sub_jobs: FuturesUnordered::new(),
            opts,
        }
    }

    async fn run(mut self) {
        loop {
            let deadline = self.next_deadline();
            let event = tokio::select! {
                req = self.requests.recv() => match req {
                    Some(r) => Event::Request(r),
                    None => break,
                },
                ev = link_event(&mut self.link) => ev,
                tok = token_job(&mut self.refresh_job) => Event::Token(tok),
                Some(done) = self.sub_jobs.next(), if !self.sub_jobs.is_empty() => {
                    Event::SubToken(done)
                }
                () = sleep_until_opt(deadline) => Event::Tick,
            };
            match event {
                Event::Request(r) => self.on_request(r),
                Event::Opened(r) => self.on_opened(r),
                Event::Frame(f) => self.on_frame(f),
                Event::Token(t) => {
                    self.refresh_job = None;
                    self.on_refresh_token(t);
                }
                Event::SubToken(done) => self.on_sub_token(done),
                Event::Tick => {}
            }
            self.on_timers(Instant::now());
            self.write().await;
        }
        // Every handle is gone: close cleanly and end.
        if !matches!(self.link, Link::Idle) {
            self.drop_link(codes::DISCONNECT_CALLED, "client dropped".into(), false);
        }
        self.write().await;
    }

    /// The earliest deadline of anything waiting on time.
    fn next_deadline(&self) -> Option<Instant> {
        let link = match &self.link {
            Link::Backoff { until } => Some(*until),
            Link::Open { alive_until, .. } => *alive_until,
            _ => None,
        };
        let sending = match self.link {
            Link::Open { .. } => !self.queue.is_empty() || !self.outbox.is_empty(),
            Link::Handshaking { .. } => !self.queue.is_empty(),
            _ => false,
        };
        [
            link,
            self.timeouts.front().map(|t| t.0),
            self.waiting.front().map(|w| w.deadline),
            self.refresh_at,
            self.next_sub_refresh(),
            self.sub_retries.iter().map(|r| r.0).min(),
            sending
                .then(|| self.rate.next_window().map(Instant::from_std))
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timers(&mut self, now: Instant) {
        match &self.link {
            Link::Backoff { until } if *until <= now => self.start_opening(),
            Link::Open {
                alive_until: Some(t),
                ..
            } if *t <= now => {
                let reason = "no ping from the server".into();
                self.drop_link(codes::NO_PING, reason, true);
            }
            _ => {}
        }
        while let Some(&(at, id)) = self.timeouts.front() {
            if at > now {
                break;
            }
            self.timeouts.pop_front();
            if let Some(p) = self.pending.remove(&id) {
                self.on_timeout(p.kind);
            }
        }
        while self.waiting.front().is_some_and(|w| w.deadline <= now) {
            let w = self.waiting.pop_front().expect("front exists");
            let _ = w.reply.send(Err(Error::Timeout));
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            self.start_refresh();
        }
        self.sub_refreshes_due(now);
        if self.sub_retries.iter().any(|r| r.0 <= now) {
            let (due, later) = std::mem::take(&mut self.sub_retries)
                .into_iter()
                .partition(|r| r.0 <= now);
            self.sub_retries = later;
            for (_, channel, id) in due {
                self.retry_subscribe(&channel, id);
            }
        }
    }

    // ---- events out -------------------------------------------------

    fn emit(&mut self, event: ClientEvent) {
        self.listeners.retain(|l| l.send(event.clone()).is_ok());
    }

    fn set_state(&mut self, state: State) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    fn state(&self) -> State {
        *self.state.borrow()
    }

    // ---- opening ----------------------------------------------------

    /// Starts a connection attempt now.
    fn start_opening(&mut self) {
        let provider = self.opts.token_provider.clone();
        let fetch = provider.filter(|_| self.token_needed());
        let tls = self.tls_connector();
        let job = open(self.url.clone(), fetch, self.opts.timeout, tls);
        self.link = Link::Opening { job: Box::pin(job) };
        self.close_advice = None;
        self.set_state(State::Connecting);
    }

    /// The TLS connector for a `wss://` URL (made once, then shared by
    /// every attempt); none for `ws://`.
    fn tls_connector(&mut self) -> Result<Option<Connector>, Error> {
        let secure = self
            .url
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss://"));
        if !secure {
            return Ok(None);
        }
        let tls = &self.opts.tls;
        let config = self.tls.get_or_insert_with(|| tls.client_config());
        config.clone().map(|c| Some(Connector::Rustls(c)))
    }

    /// Whether to ask the provider for a token before connecting: none
    /// yet, the server said it expired, or its `exp` has passed.
    fn token_needed(&self) -> bool {
        match &self.token {
            None => true,
            Some(_) if self.token_stale => true,
            Some(t) => jwt::expiry(t).is_some_and(|exp| exp <= unix_now() + 1),
        }
    }

    fn on_opened(&mut self, result: Result<Opened, OpenFailed>) {
        match result {
            Ok(opened) => {
                if let Some(t) = opened.token {
                    self.token = Some(t);
                    self.token_stale = false;
                }
                self.link = Link::Handshaking { ws: opened.ws };
                self.rate.reset();
                let mut params = json!({"name": self.opts.name, "version": self.opts.version});
                if let Some(t) = &self.token {
                    params["token"] = t.clone().into();
                }
                if let Some(u) = &self.opts.user {
                    params["user"] = u.clone().into();
                }
                if let Some(i) = &self.opts.info {
                    params["info"] = i.clone();
                }
                self.enqueue("connect", &params, PendingKind::Connect);
            }
            Err(f) => {
                self.link = Link::Idle;
                if f.reconnect {
                    self.emit(ClientEvent::Error(f.error));
                    self.schedule_reconnect(f.code, "connection attempt failed".into());
                } else {
                    let reason = f.error.to_string();
                    self.emit(ClientEvent::Error(f.error));
                    self.emit(ClientEvent::Disconnected {
                        code: f.code,
                        reason: reason.clone(),
                        reconnect: false,
                    });
                    self.go_idle(f.code, reason);
                }
            }
        }
    }

    /// The `connect` reply.
    fn on_connect_reply(&mut self, result: Result<Value, crate::ServerError>) {
        let v = match result {
            Ok(v) => v,
            Err(e) => {
                let reason = e.to_string();
                if e.code == TOKEN_EXPIRED {
                    if self.opts.token_provider.is_some() {
                        self.token_stale = true;
                        self.drop_link(codes::CONNECT_REFUSED, reason, true);
                    } else {
                        let reason = format!("{reason}, and no token provider for a new one");
                        self.drop_link(codes::TOKEN_UNAVAILABLE, reason, false);
                    }
                } else {
                    self.drop_link(codes::CONNECT_REFUSED, reason, e.temporary);
                }
                return;
            }
        };
        let info = match wire::connect_info(&v) {
            Ok(i) => i,
            Err(e) => return self.drop_link(codes::BAD_PROTOCOL, e, false),
        };
        let old = std::mem::replace(&mut self.link, Link::Idle);
        let Link::Handshaking { ws } = old else {
            self.link = old;
            return;
        };
        let ping_window = (info.ping > 0)
            .then(|| Duration::from_secs(info.ping) + self.opts.max_server_ping_delay);
        self.link = Link::Open {
            ws,
            alive_until: ping_window.map(|w| Instant::now() + w),
            ping_window,
        };
        self.attempts = 0;
        self.set_state(State::Connected);
        self.schedule_refresh(info.expires, info.ttl);
        self.emit(ClientEvent::Connected(info));
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        self.resubscribe_all();
        while let Some(w) = self.waiting.pop_front() {
            self.enqueue(w.method, &w.params, PendingKind::Call(w.reply));
        }
        // The outbox goes out in `write`, after these.
    }

    // ---- the connection's end ----------------------------------------

    /// Ends the current connection (or attempt) for `code`/`reason`, and
    /// reconnects or goes idle.
    fn drop_link(&mut self, code: u16, reason: String, reconnect: bool) {
        let was_connected = self.state() == State::Connected;
        match std::mem::replace(&mut self.link, Link::Idle) {
            Link::Handshaking { ws } | Link::Open { ws, .. } => self.closing = Some(ws),
            _ => {}
        }
        self.queue.clear();
        self.timeouts.clear();
        self.refresh_at = None;
        self.refresh_job = None;
        self.sub_retries.clear();
        // What was in flight: publishes go back to the outbox in order
        // (resent with their keys), calls learn the connection is gone.
        let mut in_flight: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        in_flight.sort_by_key(|p| p.seq);
        let mut publishes = Vec::new();
        for p in in_flight {
            match p.kind {
                PendingKind::Publish(p) => publishes.push(p),
                PendingKind::Call(reply) => {
                    let _ = reply.send(Err(Error::ConnectionLost));
                }
                PendingKind::Connect
                | PendingKind::Subscribe { .. }
                | PendingKind::Refresh
                | PendingKind::SubRefresh { .. }
                | PendingKind::Ignore => {}
            }
        }
        self.outbox.requeue_front(publishes);
        self.subs_connection_lost();
        if was_connected || !reconnect {
            self.emit(ClientEvent::Disconnected {
                code,
                reason: reason.clone(),
                reconnect,
            });
        } else {
            self.emit(ClientEvent::Error(Error::Transport(format!(
                "connection attempt failed ({code}: {reason})"
            ))));
        }
        if reconnect {
            self.schedule_reconnect(code, reason);
        } else {
            self.go_idle(code, reason);
        }
    }

    /// Waits a backoff delay before the next attempt, or gives up after
    /// `max_reconnect_attempts`.
    fn schedule_reconnect(&mut self, code: u16, reason: String) {
        if self
            .opts
            .max_reconnect_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            let reason = format!("gave up after {} reconnect attempts", self.attempts);
            self.emit(ClientEvent::Disconnected {
                code: codes::RECONNECT_EXHAUSTED,
                reason: reason.clone(),
                reconnect: false,
            });
            return self.go_idle(codes::RECONNECT_EXHAUSTED, reason);
        }
        let delay = self.backoff.delay(self.attempts, &mut self.rng);
        self.attempts = self.attempts.saturating_add(1);
        self.link = Link::Backoff {
            until: Instant::now() + delay,
        };
        self.set_state(State::Connecting);
        self.emit(ClientEvent::Connecting { code, reason });
    }

    /// Disconnected for good (until `connect`): everything waiting for a
    /// connection fails with the reason.
    fn go_idle(&mut self, code: u16, reason: String) {
        self.link = Link::Idle;
        self.set_state(State::Disconnected);
        let err = Error::Disconnected {
            code,
            reason: reason.clone(),
        };
        self.last_disconnect = (code, reason);
        for p in self.outbox.drain() {
            let _ = p.reply.send(Err(err.clone()));
        }
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err(err.clone()));
        }
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
    }

    // ---- reading ----------------------------------------------------

    fn on_frame(&mut self, frame: Option<Result<Message, tungstenite::Error>>) {
        let msg = match frame {
            Some(Ok(m)) => m,
            Some(Err(e)) => return self.lost(codes::TRANSPORT_CLOSED, e.to_string()),
            None => return self.lost(codes::TRANSPORT_CLOSED, "connection closed".into()),
        };
        if let Link::Open {
            alive_until: Some(t),
            ping_window: Some(w),
            ..
        } = &mut self.link
        {
            *t = Instant::now() + *w;
        }
        match msg {
            Message::Text(text) => match wire::parse_frame(&text) {
                Ok(objects) => {
                    for o in objects {
                        self.on_incoming(o);
                        if matches!(self.link, Link::Idle | Link::Backoff { .. }) {
                            break;
                        }
                    }
                }
                Err(e) => self.drop_link(codes::BAD_PROTOCOL, e, false),
            },
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, "closed without a code".into()),
                };
                self.lost(code, reason);
            }
            Message::Binary(_) => {
                let reason = "a binary frame on a JSON connection".into();
                self.drop_link(codes::BAD_PROTOCOL, reason, false);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// The server closed (or the socket failed): the `disconnect` push's
    /// advice if one came, else the close code's.
    fn lost(&mut self, code: u16, reason: String) {
        let (code, reason, reconnect) = match self.close_advice.take() {
            Some(advice) => advice,
            None if code == codes::TRANSPORT_CLOSED => (code, reason, true),
            None => (code, reason, reconnect_advised(code)),
        };
        self.drop_link(code, reason, reconnect);
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Reply { id, result } => {
                // None: the command timed out; nobody waits for it now.
                if let Some(p) = self.pending.remove(&id) {
                    self.on_reply(p.kind, result);
                }
            }
            Incoming::Push {
                channel,
                kind,
                body,
            } => {
                if kind == "disconnect" {
                    let code = body.get("code").and_then(Value::as_u64).unwrap_or(0) as u16;
                    let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
                    let reconnect = body
                        .get("reconnect")
                        .and_then(Value::as_bool)
                        .unwrap_or_else(|| reconnect_advised(code));
                    self.close_advice = Some((code, reason.into(), reconnect));
                } else {
                    self.on_push(channel, kind, body);
                }
            }
        }
    }

    // ---- writing ----------------------------------------------------

    /// Queues a command; returns its id. Its timeout starts when written.
    fn enqueue(&mut self, method: &'static str, params: &Value, kind: PendingKind) -> u32 {
        let id = self.take_id();
        self.queue
            .push_back((id, wire::command(id, method, params)));
        self.insert_pending(id, kind);
        id
    }

    fn insert_pending(&mut self, id: u32, kind: PendingKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(id, Pending { seq, kind });
    }

    /// The next command id: never 0 (a missing id) nor `u32::MAX`
    /// (reserved for the server's own subscriptions).
    fn take_id(&mut self) -> u32 {
        self.next_id = match self.next_id.wrapping_add(1) {
            0 | u32::MAX => 1,
            id => id,
        };
        self.next_id
    }

    /// Writes what may go out now (the queue, then outbox publishes when
    /// connected, within the rate limit), in frames of several commands,
    /// then closes a dropped socket. The only place the task awaits I/O
    /// besides reading; every write is bounded by the command timeout.
    async fn write(&mut self) {
        let now = Instant::now();
        let open = matches!(self.link, Link::Open { .. });
        let mut frames = Vec::new();
        if open || matches!(self.link, Link::Handshaking { .. }) {
            let mut budget = self.rate.available(now.into_std());
            let mut text = String::new();
            let mut written = 0;
            while budget > 0 {
                let line = if let Some((id, line)) = self.queue.pop_front() {
                    self.timeouts.push_back((now + self.opts.timeout, id));
                    line
                } else if let Some(p) = open.then(|| self.outbox.pop_front()).flatten() {
                    let id = self.take_id();
                    let params = json!({
                        "channel": p.channel,
                        "data": p.data,
                        "idempotency_key": p.key,
                    });
                    self.insert_pending(id, PendingKind::Publish(p));
                    self.timeouts.push_back((now + self.opts.timeout, id));
                    wire::command(id, "publish", &params)
                } else {
                    break;
                };
                if !text.is_empty() && text.len() + 1 + line.len() > MAX_FRAME {
                    frames.push(std::mem::take(&mut text));
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&line);
                budget -= 1;
                written += 1;
            }
            if !text.is_empty() {
                frames.push(text);
            }
            self.rate.consume(written);
        }
        if !frames.is_empty() {
            let limit = self.opts.timeout;
            let ws = match &mut self.link {
                Link::Handshaking { ws } | Link::Open { ws, .. } => ws,
                _ => unreachable!("frames are only built with a socket"),
            };
            let sent = timeout(limit, async {
                for f in frames {
                    ws.feed(Message::text(f)).await?;
                }
                ws.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.lost(codes::TRANSPORT_CLOSED, e.to_string()),
                Err(_) => self.lost(codes::TRANSPORT_CLOSED, "write timed out".into()),
            }
        }
        if let Some(mut ws) = self.closing.take() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = timeout(CLOSE_WAIT, ws.close(Some(frame))).await;
        }
        for ack in self.disconnect_acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Gets a token from the provider within `limit`.
async fn fetch_token(provider: TokenProvider, limit: Duration) -> Result<String, Error> {
    match timeout(limit, provider.call()).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Error::Token(e.to_string())),
        Err(_) => Err(Error::Token("the token provider timed out".into())),
    }
}

/// One connection attempt: a token if asked for, then the WebSocket
/// upgrade offering the JSON subprotocol (over TLS with `tls`), each step
/// within `limit`.
async fn open(
    url: String,
    provider: Option<TokenProvider>,
    limit: Duration,
    tls: Result<Option<Connector>, Error>,
) -> Result<Opened, OpenFailed> {
    let connector = tls.map_err(|error| OpenFailed {
        code: codes::TLS_FAILED,
        error,
        reconnect: false,
    })?;
    let token = match provider {
        None => None,
        Some(p) => match fetch_token(p, limit).await {
            Ok(t) if t.is_empty() => {
                return Err(OpenFailed {
                    code: codes::TOKEN_UNAVAILABLE,
                    error: Error::Token("unauthorized: the token provider gave no token".into()),
                    reconnect: false,
                });
            }
            Ok(t) => Some(t),
            Err(error) => {
                return Err(OpenFailed {
                    code: codes::TOKEN_UNAVAILABLE,
                    error,
                    reconnect: true,
                });
            }
        },
    };
    let mut request = url.as_str().into_client_request().map_err(|e| OpenFailed {
        code: codes::CONNECT_FAILED,
        error: Error::Transport(format!("bad URL {url:?}: {e}")),
        reconnect: false,
    })?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(wire::SUBPROTOCOL),
    );
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
    let (ws, response) = match timeout(limit, connecting).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(open_failed(e)),
        Err(_) => {
            return Err(OpenFailed {
                code: codes::CONNECT_TIMEOUT,
                error: Error::Transport("WebSocket upgrade timed out".into()),
                reconnect: true,
            });
        }
    };
    // A server that answers with another subprotocol does not speak ours.
    if let Some(p) = response.headers().get("sec-websocket-protocol")
        && p.as_bytes() != wire::SUBPROTOCOL.as_bytes()
    {
        return Err(OpenFailed {
            code: codes::BAD_PROTOCOL,
            error: Error::Protocol(format!("the server chose subprotocol {p:?}")),
            reconnect: false,
        });
    }
    Ok(Opened {
        ws: Box::new(ws),
        token,
    })
}

/// What a failed WebSocket upgrade means: TLS that will not pass (an
/// untrusted certificate) and a URL the client cannot use are final;
/// anything else (refused, reset, a 503) is worth another attempt.
fn open_failed(e: tungstenite::Error) -> OpenFailed {
    let transport = |error, reconnect| OpenFailed {
        code: codes::CONNECT_FAILED,
        error,
        reconnect,
    };
    match e {
        tungstenite::Error::Io(io) => match tls::classify(&io) {
            Some(f) => OpenFailed {
                code: if f.reconnect {
                    codes::CONNECT_FAILED
                } else {
                    codes::TLS_FAILED
                },
                error: f.error,
                reconnect: f.reconnect,
            },
            None => transport(Error::Transport(io.to_string()), true),
        },
        tungstenite::Error::Tls(t) => OpenFailed {
            code: codes::TLS_FAILED,
            error: Error::Tls(t.to_string()),
            reconnect: false,
        },
        tungstenite::Error::Url(u) => transport(Error::Transport(format!("bad URL: {u}")), false),
        other => transport(Error::Transport(other.to_string()), true),
    }
}

/// The next event of the current link (pending when there is no socket
/// or attempt). Cancel-safe: the attempt's future and the socket keep
/// their state when a `select!` drops this.
async fn link_event(link: &mut Link) -> Event {
    match link {
        Link::Opening { job } => Event::Opened(job.await),
        Link::Handshaking { ws } | Link::Open { ws, .. } => Event::Frame(ws.next().await),
        Link::Idle | Link::Backoff { .. } => std::future::pending().await,
    }
}

async fn token_job(
    job: &mut Option<BoxFuture<'static, Result<String, Error>>>,
) -> Result<String, Error> {
    match job {
        Some(j) => j.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
