//! `baseline_fastws`: the comparison target for wsedge benchmarks — an
//! idiomatic tokio + fastwebsockets broadcast server, written the way a
//! typical engineer would, speaking the same JSON subset of the wire
//! protocol (`edu-matrix-v1.json`): `connect`, `subscribe`, `unsubscribe`,
//! `publish`, `ping`, replies `{"id":N,"<method>":{..}}` /
//! `{"id":N,"error":{..}}` and pushes
//! `{"push":{"channel":..,"pub":{"offset":K,"data":..}}}` with offsets
//! counted per channel.
//!
//! Design: a single-threaded tokio runtime (the benchmark gives it one
//! core); hyper 1 + `fastwebsockets::upgrade` for the handshake; per
//! connection a reader task (a `FragmentCollectorRead`) and a writer task
//! fed by a bounded `tokio::sync::mpsc` channel (1024), because
//! fastwebsockets' `read_frame` is not cancel-safe and so cannot sit in a
//! `select!` next to the queue; a shared `Arc<Mutex<HashMap<..>>>` channel
//! registry; a publication is serialized once into `Bytes` and `try_send`
//! to every subscriber (dropped for a subscriber whose queue is full).
//!
//! ```text
//! baseline_fastws --listen 127.0.0.1:8080      # prints "listening client=ADDR" on stderr
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

/// The subprotocol this server speaks.
const PROTOCOL: &str = "edu-matrix-v1.json";
/// Per-connection outbound queue, in messages.
const QUEUE: usize = 1024;
/// Ping interval advertised in the connect reply, seconds.
const PING_INTERVAL: u32 = 25;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "baseline_fastws",
    about = "tokio + fastwebsockets broadcast baseline"
)]
struct Args {
    /// Client listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Listen backlog. `TcpListener::bind` would give std's 128, which a
    /// storm of 256 concurrent handshakes overflows (SYNs then retransmit
    /// after 1 s); 4096 matches wsedge's default.
    #[arg(long, default_value_t = 4096)]
    backlog: u32,
}

/// What a connection's writer task sends.
enum Outbound {
    /// A text frame (replies, pushes).
    Text(Bytes),
    /// A pong answering a ping.
    Pong(Bytes),
    /// A close frame echoing the client's; the writer stops after it.
    Close(Bytes),
}

type Subscriber = mpsc::Sender<Outbound>;

/// One channel: its last offset and its subscribers.
#[derive(Default)]
struct Channel {
    offset: u64,
    subscribers: Vec<Subscriber>,
}

/// Process-wide state.
struct State {
    channels: Mutex<HashMap<String, Channel>>,
    epoch: String,
    node: String,
    next_client: AtomicU64,
}

#[derive(Deserialize)]
struct ChannelParams<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PublishParams<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A command object; exactly one method key is expected.
#[derive(Deserialize)]
struct Command<'a> {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    connect: Option<IgnoredAny>,
    #[serde(default, borrow)]
    subscribe: Option<ChannelParams<'a>>,
    #[serde(default, borrow)]
    unsubscribe: Option<ChannelParams<'a>>,
    #[serde(default, borrow)]
    publish: Option<PublishParams<'a>>,
    #[serde(default)]
    ping: Option<IgnoredAny>,
}

#[derive(Serialize)]
struct Reply<'a> {
    id: u32,
    #[serde(flatten)]
    body: ReplyBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum ReplyBody<'a> {
    Connect {
        client: String,
        node: &'a str,
        ping: u32,
    },
    Subscribe {
        epoch: &'a str,
        offset: u64,
    },
    Unsubscribe {},
    Publish {
        offset: u64,
    },
    Ping {},
    Error {
        code: u32,
        message: &'static str,
        temporary: bool,
    },
}

#[derive(Serialize)]
struct Push<'a> {
    push: PushBody<'a>,
}

#[derive(Serialize)]
struct PushBody<'a> {
    channel: &'a str,
    #[serde(rename = "pub")]
    publication: Publication<'a>,
}

#[derive(Serialize)]
struct Publication<'a> {
    offset: u64,
    data: &'a RawValue,
}

fn error(code: u32, message: &'static str) -> ReplyBody<'static> {
    ReplyBody::Error {
        code,
        message,
        temporary: false,
    }
}

/// The protocol state of one connection.
struct Session {
    state: Arc<State>,
    tx: Subscriber,
    connected: bool,
    channels: Vec<String>,
}

impl Session {
    fn execute<'a>(&mut self, cmd: Command<'_>, state: &'a State) -> ReplyBody<'a> {
        if cmd.connect.is_some() {
            if self.connected {
                return error(111, "already connected");
            }
            self.connected = true;
            let n = state.next_client.fetch_add(1, Ordering::Relaxed);
            return ReplyBody::Connect {
                client: format!("{n:016x}"),
                node: &state.node,
                ping: PING_INTERVAL,
            };
        }
        if !self.connected {
            return error(110, "connect first");
        }
        if let Some(p) = cmd.subscribe {
            if self.channels.iter().any(|c| *c == p.channel) {
                return error(105, "already subscribed");
            }
            let mut channels = state.channels.lock().unwrap();
            let ch = channels.entry(p.channel.to_string()).or_default();
            ch.subscribers.push(self.tx.clone());
            self.channels.push(p.channel.into_owned());
            return ReplyBody::Subscribe {
                epoch: &state.epoch,
                offset: ch.offset,
            };
        }
        if let Some(p) = cmd.unsubscribe {
            let Some(i) = self.channels.iter().position(|c| *c == p.channel) else {
                return error(108, "not subscribed");
            };
            let name = self.channels.swap_remove(i);
            if let Some(ch) = state.channels.lock().unwrap().get_mut(&name) {
                ch.subscribers.retain(|s| !s.same_channel(&self.tx));
            }
            return ReplyBody::Unsubscribe {};
        }
        if let Some(p) = cmd.publish {
            let mut channels = state.channels.lock().unwrap();
            let ch = channels.entry(p.channel.to_string()).or_default();
            ch.offset += 1;
            let push = Push {
                push: PushBody {
                    channel: &p.channel,
                    publication: Publication {
                        offset: ch.offset,
                        data: p.data,
                    },
                },
            };
            // Serialized once, shared by every subscriber.
            let bytes = Bytes::from(serde_json::to_vec(&push).expect("serializable"));
            ch.subscribers
                .retain(|s| match s.try_send(Outbound::Text(bytes.clone())) {
                    Ok(()) => true,
                    // Slow subscriber: drop this publication for it.
                    Err(mpsc::error::TrySendError::Full(_)) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
            return ReplyBody::Publish { offset: ch.offset };
        }
        if cmd.ping.is_some() {
            return ReplyBody::Ping {};
        }
        error(104, "unknown method")
    }

    /// Handles one text message (one or more `\n`-separated commands) and
    /// queues the replies as one frame.
    async fn on_text(&mut self, text: &str) -> Result<(), mpsc::error::SendError<Outbound>> {
        let state = self.state.clone();
        let mut out = Vec::new();
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            let reply = match serde_json::from_str::<Command>(line) {
                Ok(cmd) => Reply {
                    id: cmd.id,
                    body: self.execute(cmd, &state),
                },
                Err(_) => Reply {
                    id: 0,
                    body: error(107, "bad request"),
                },
            };
            if !out.is_empty() {
                out.push(b'\n');
            }
            serde_json::to_writer(&mut out, &reply).expect("serializable");
        }
        if out.is_empty() {
            return Ok(());
        }
        self.tx.send(Outbound::Text(Bytes::from(out))).await
    }

    /// Removes this connection from every channel it joined.
    fn leave_all(&mut self) {
        let mut channels = self.state.channels.lock().unwrap();
        for name in self.channels.drain(..) {
            if let Some(ch) = channels.get_mut(&name) {
                ch.subscribers.retain(|s| !s.same_channel(&self.tx));
            }
        }
    }
}

async fn serve(fut: UpgradeFut, state: Arc<State>) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (rx, mut tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(QUEUE);

    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let res = match &msg {
                Outbound::Text(b) => tx.write_frame(Frame::text(Payload::Borrowed(b))).await,
                Outbound::Pong(b) => tx.write_frame(Frame::pong(Payload::Borrowed(b))).await,
                Outbound::Close(b) => {
                    let _ = tx.write_frame(Frame::close_raw(Payload::Borrowed(b))).await;
                    break;
                }
            };
            if res.is_err() {
                break;
            }
        }
    });

    // Pongs and close replies owed by the reader go through the writer's queue.
    let obligations = out_tx.clone();
    let mut send_fn = move |frame: Frame<'_>| {
        let tx = obligations.clone();
        let payload = Bytes::copy_from_slice(&frame.payload);
        let msg = match frame.opcode {
            OpCode::Pong => Outbound::Pong(payload),
            _ => Outbound::Close(payload),
        };
        async move { tx.send(msg).await.map_err(|_| "connection writer gone") }
    };

    let mut session = Session {
        state,
        tx: out_tx,
        connected: false,
        channels: Vec::new(),
    };
    let result = loop {
        let frame = match rx.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        match frame.opcode {
            OpCode::Text => {
                // FragmentCollectorRead has already validated UTF-8.
                let text = std::str::from_utf8(&frame.payload).unwrap_or_default();
                if session.on_text(text).await.is_err() {
                    break Ok(());
                }
            }
            OpCode::Close => break Ok(()),
            _ => {}
        }
    };
    session.leave_all();
    drop(session);
    drop(send_fn);
    let _ = writer.await;
    result
}

async fn handle(
    mut req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let wants_json = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    let (mut response, fut) = upgrade::upgrade(&mut req)?;
    if wants_json {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
    }
    tokio::spawn(async move {
        match serve(fut, state).await {
            Ok(()) | Err(WebSocketError::UnexpectedEOF) | Err(WebSocketError::ConnectionClosed) => {
            }
            Err(WebSocketError::IoError(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => eprintln!("websocket connection error: {e}"),
        }
    });
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener = socket.listen(args.backlog)?;
    eprintln!("listening client={}", listener.local_addr()?);
    let state = Arc::new(State {
        channels: Mutex::new(HashMap::new()),
        epoch: format!("{:016x}", std::process::id() as u64 * 0x9E37_79B9),
        node: "baseline-fastws".to_string(),
        next_client: AtomicU64::new(1),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let service = service_fn(move |req| handle(req, state.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
            {
                eprintln!("http connection error: {e}");
            }
        });
    }
}
