//! The protocol core the Rust baselines share (`baseline_fastws`,
//! `baseline_tungstenite`): the same JSON subset of wsedge's wire protocol
//! (`edu-matrix-v1.json`): `connect`, `subscribe`, `unsubscribe`,
//! `publish`, `ping`; replies `{"id":N,"<method>":{..}}` /
//! `{"id":N,"error":{..}}` and pushes
//! `{"push":{"channel":..,"pub":{"offset":K,"data":..}}}` with offsets
//! counted per channel. Written the way a competent tokio user writes a
//! pub/sub server: one `Mutex<HashMap>` registry, a bounded `mpsc` queue per
//! connection drained by that connection's writer task, a publication
//! serialized once (for `baseline_fastws`, the whole WebSocket frame) and
//! `try_send` to every subscriber as a reference-counted clone. A
//! subscriber whose queue is full is a slow consumer and is dropped, like
//! wsedge drops a connection over its `outbound_budget`: it leaves the
//! channel at once and its writer is told (through [`Link::kill`]) to send
//! close 3002 and end the connection. Only the WebSocket library and the
//! message type differ between the two binaries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};

/// The subprotocol the baselines speak.
pub const PROTOCOL: &str = "edu-matrix-v1.json";
/// Per-connection outbound queue, in messages. A full queue drops the
/// connection (slow consumer). 4096 of the bench's 163-byte pushes are
/// 0.65 MiB, the same order as wsedge's 1 MiB `outbound_budget`; tokio's
/// bounded queue allocates its slots in blocks of 32 as they fill, so the
/// bound costs an idle connection nothing.
pub const QUEUE: usize = 4096;
/// Most bytes a writer task gathers into one `write` (it stops draining
/// its queue once the batch is this large, flushes, then drains again).
pub const MAX_BATCH: usize = 64 * 1024;
/// WebSocket close code sent to a dropped slow consumer (wsedge's 3002).
pub const CLOSE_SLOW_CONSUMER: u16 = 3002;
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
    /// A text message in the form shared by every subscriber of a
    /// publication, cheap to clone (a reference count).
    type Text: Clone;
    /// Wraps serialized JSON (called once per publication or reply; a
    /// library that allows it encodes the whole frame here).
    fn text(s: String) -> Self::Text;
    /// The text message carrying `t`.
    fn from_text(t: Self::Text) -> Self;
}

/// One connection as the registry and its own tasks see it: the sending
/// end of its outbound queue and the switch that drops it.
pub struct Link<M> {
    /// The connection's outbound queue (its writer task holds the receiver).
    pub tx: mpsc::Sender<M>,
    /// Notified (`notify_one`, so a notification before the writer waits
    /// is kept) when the connection is dropped as a slow consumer.
    pub kill: Arc<Notify>,
}

impl<M> Link<M> {
    /// A queue of [`QUEUE`] messages; the receiver goes to the writer task.
    pub fn new() -> (Self, mpsc::Receiver<M>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Self {
                tx,
                kill: Arc::new(Notify::new()),
            },
            rx,
        )
    }
}

impl<M> Clone for Link<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            kill: self.kill.clone(),
        }
    }
}

/// One channel: its last offset and its subscribers.
struct Channel<M> {
    offset: u64,
    subscribers: Vec<Link<M>>,
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
    slow_consumer_drops: AtomicU64,
}

impl<M> State<M> {
    /// An empty registry for the node called `node`.
    pub fn new(node: &str) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            epoch: format!("{:016x}", std::process::id() as u64 * 0x9E37_79B9),
            node: node.to_string(),
            next_client: AtomicU64::new(1),
            slow_consumer_drops: AtomicU64::new(0),
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
    link: Link<M>,
    connected: bool,
    channels: Vec<String>,
}

impl<M: Outgoing> Session<M> {
    /// A connection whose writer task reads `link`'s queue.
    pub fn new(state: Arc<State<M>>, link: Link<M>) -> Self {
        Self {
            state,
            link,
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
            ch.subscribers.push(self.link.clone());
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
                ch.subscribers.retain(|s| !s.tx.same_channel(&self.link.tx));
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
            let drops = &state.slow_consumer_drops;
            ch.subscribers
                .retain(|s| match s.tx.try_send(M::from_text(text.clone())) {
                    Ok(()) => true,
                    // Slow consumer: drop the connection (its writer sends
                    // close 3002) and stop queueing for it.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.kill.notify_one();
                        let n = drops.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            eprintln!("slow consumers dropped: {n}");
                        }
                        false
                    }
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
        self.link.tx.send(M::from_text(M::text(out))).await
    }

    /// Removes this connection from every channel it joined.
    pub fn leave_all(&mut self) {
        let mut channels = self.state.channels.lock().unwrap();
        for name in self.channels.drain(..) {
            if let Some(ch) = channels.get_mut(&name) {
                ch.subscribers.retain(|s| !s.tx.same_channel(&self.link.tx));
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// A message type that keeps the text, to read queues back.
    #[derive(Debug)]
    struct Msg(Arc<str>);

    impl Outgoing for Msg {
        type Text = Arc<str>;
        fn text(s: String) -> Arc<str> {
            s.into()
        }
        fn from_text(t: Arc<str>) -> Self {
            Msg(t)
        }
    }

    async fn session(state: &Arc<State<Msg>>, lines: &str) -> (Session<Msg>, mpsc::Receiver<Msg>) {
        let (link, rx) = Link::new();
        let mut s = Session::new(state.clone(), link);
        s.on_text(lines).await.unwrap();
        (s, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<Msg>) -> Vec<Arc<str>> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            v.push(m.0);
        }
        v
    }

    #[tokio::test(flavor = "current_thread")]
    async fn publication_is_shared_and_offsets_count() {
        let state = Arc::new(State::<Msg>::new("t"));
        let sub_cmds = "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}";
        let (_a, mut a_rx) = session(&state, sub_cmds).await;
        let (_b, mut b_rx) = session(&state, sub_cmds).await;
        let (mut p, mut p_rx) = session(&state, "{\"id\":1,\"connect\":{}}").await;
        drain(&mut a_rx);
        drain(&mut b_rx);
        drain(&mut p_rx);
        for _ in 0..2 {
            p.on_text(r#"{"id":7,"publish":{"channel":"c","data":{"x":1}}}"#)
                .await
                .unwrap();
        }
        assert_eq!(
            drain(&mut p_rx),
            vec![
                Arc::from(r#"{"id":7,"publish":{"offset":1}}"#),
                Arc::from(r#"{"id":7,"publish":{"offset":2}}"#)
            ]
        );
        let a = drain(&mut a_rx);
        let b = drain(&mut b_rx);
        assert_eq!(
            &*a[1],
            r#"{"push":{"channel":"c","pub":{"offset":2,"data":{"x":1}}}}"#
        );
        // One serialization per publication, shared by both subscribers.
        assert_eq!(a.len(), 2);
        assert!(Arc::ptr_eq(&a[0], &b[0]) && Arc::ptr_eq(&a[1], &b[1]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn full_queue_drops_the_slow_consumer_only() {
        let state = Arc::new(State::<Msg>::new("t"));
        let sub_cmds = "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}";
        let (slow, mut slow_rx) = session(&state, sub_cmds).await;
        let (_fast, mut fast_rx) = session(&state, sub_cmds).await;
        let (mut p, mut p_rx) = session(&state, "{\"id\":1,\"connect\":{}}").await;
        let kill = slow.link.kill.clone();
        // The slow subscriber's queue holds its subscribe reply and never
        // drains: QUEUE - 1 publications fill it exactly.
        let publish = r#"{"id":9,"publish":{"channel":"c","data":0}}"#;
        for _ in 0..QUEUE - 1 {
            p.on_text(publish).await.unwrap();
            drain(&mut p_rx);
            drain(&mut fast_rx);
        }
        assert_eq!(slow_rx.len(), QUEUE);
        assert!(kill.notified().now_or_never().is_none(), "not dropped yet");
        assert_eq!(state.slow_consumer_drops.load(Ordering::Relaxed), 0);
        // One more: the slow consumer is dropped, the other still served.
        p.on_text(publish).await.unwrap();
        assert!(kill.notified().now_or_never().is_some(), "dropped");
        assert_eq!(state.slow_consumer_drops.load(Ordering::Relaxed), 1);
        assert_eq!(drain(&mut fast_rx).len(), 1);
        // It left the channel: later publications are not offered to it.
        slow_rx.recv().await.unwrap();
        p.on_text(publish).await.unwrap();
        assert_eq!(slow_rx.len(), QUEUE - 1);
        assert_eq!(drain(&mut fast_rx).len(), 1);
        assert_eq!(state.slow_consumer_drops.load(Ordering::Relaxed), 1);
    }
}
