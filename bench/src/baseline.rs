//! The protocol core the Rust baselines share (`baseline_fastws`,
//! `baseline_tungstenite`): the same JSON subset of wsedge's wire protocol
//! (`edu-matrix-v1.json`): `connect`, `subscribe`, `unsubscribe`,
//! `publish`, `ping`; replies `{"id":N,"<method>":{..}}` /
//! `{"id":N,"error":{..}}` and pushes
//! `{"push":{"channel":..,"pub":{"offset":K,"data":..}}}` with offsets
//! counted per channel. Written the way a typical tokio server is: one
//! `Mutex<HashMap>` registry, a bounded `mpsc` queue per connection, a
//! publication serialized once and `try_send` to every subscriber (dropped
//! for a subscriber whose queue is full). Only the WebSocket library and
//! the message type differ between the two binaries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// The subprotocol the baselines speak.
pub const PROTOCOL: &str = "edu-matrix-v1.json";
/// Per-connection outbound queue, in messages.
pub const QUEUE: usize = 1024;
/// Ping interval advertised in the connect reply, seconds.
const PING_INTERVAL: u32 = 25;

/// The baselines' command line.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Client listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Listen backlog. `TcpListener::bind` would give std's 128, which a
    /// storm of 256 concurrent handshakes overflows (SYNs then retransmit
    /// after 1 s); 4096 matches wsedge's default.
    #[arg(long, default_value_t = 4096)]
    pub backlog: u32,
}

impl ListenArgs {
    /// Binds the listener and prints `listening client=ADDR` on stderr (the
    /// line the driver waits for).
    pub fn listen(&self) -> std::io::Result<TcpListener> {
        let socket = if self.listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.listen)?;
        let listener = socket.listen(self.backlog)?;
        eprintln!("listening client={}", listener.local_addr()?);
        Ok(listener)
    }
}

/// The next client connection (TCP_NODELAY set). Accept errors (e.g.
/// EMFILE) are logged and retried after 10 ms instead of spinning.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A WebSocket library's outgoing message type.
pub trait Outgoing: Send + 'static {
    /// A text payload that is cheap to clone (a reference count).
    type Text: Clone;
    /// Wraps serialized JSON.
    fn text(s: String) -> Self::Text;
    /// The text message carrying `t`.
    fn from_text(t: Self::Text) -> Self;
}

/// One channel: its last offset and its subscribers.
struct Channel<M> {
    offset: u64,
    subscribers: Vec<mpsc::Sender<M>>,
}

impl<M> Default for Channel<M> {
    fn default() -> Self {
        Self {
            offset: 0,
            subscribers: Vec::new(),
        }
    }
}

/// Process-wide state: the channel registry behind one mutex, as a
/// typical tokio server has it.
pub struct State<M> {
    channels: Mutex<HashMap<String, Channel<M>>>,
    epoch: String,
    node: String,
    next_client: AtomicU64,
}

impl<M> State<M> {
    /// An empty registry for the node called `node`.
    pub fn new(node: &str) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            epoch: format!("{:016x}", std::process::id() as u64 * 0x9E37_79B9),
            node: node.to_string(),
            next_client: AtomicU64::new(1),
        }
    }
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
pub struct Session<M: Outgoing> {
    state: Arc<State<M>>,
    tx: mpsc::Sender<M>,
    connected: bool,
    channels: Vec<String>,
}

impl<M: Outgoing> Session<M> {
    /// A connection whose writer task reads `tx`'s queue.
    pub fn new(state: Arc<State<M>>, tx: mpsc::Sender<M>) -> Self {
        Self {
            state,
            tx,
            connected: false,
            channels: Vec::new(),
        }
    }

    fn execute<'a>(&mut self, cmd: Command<'_>, state: &'a State<M>) -> ReplyBody<'a> {
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
            let text = M::text(serde_json::to_string(&push).expect("serializable"));
            ch.subscribers
                .retain(|s| match s.try_send(M::from_text(text.clone())) {
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
    pub async fn on_text(&mut self, text: &str) -> Result<(), mpsc::error::SendError<M>> {
        let state = self.state.clone();
        let mut out = String::new();
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
                out.push('\n');
            }
            out.push_str(&serde_json::to_string(&reply).expect("serializable"));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.tx.send(M::from_text(M::text(out))).await
    }

    /// Removes this connection from every channel it joined.
    pub fn leave_all(&mut self) {
        let mut channels = self.state.channels.lock().unwrap();
        for name in self.channels.drain(..) {
            if let Some(ch) = channels.get_mut(&name) {
                ch.subscribers.retain(|s| !s.same_channel(&self.tx));
            }
        }
    }
}

/// tokio-tungstenite's message (`baseline_tungstenite`).
impl Outgoing for tokio_tungstenite::tungstenite::Message {
    type Text = tokio_tungstenite::tungstenite::Utf8Bytes;
    fn text(s: String) -> tokio_tungstenite::tungstenite::Utf8Bytes {
        s.into()
    }
    fn from_text(t: tokio_tungstenite::tungstenite::Utf8Bytes) -> Self {
        Self::Text(t)
    }
}
