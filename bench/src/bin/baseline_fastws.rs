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

use std::sync::Arc;

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
use tokio::sync::mpsc;
use wsbench::baseline::{ListenArgs, Outgoing, PROTOCOL, QUEUE, Session, State, accept};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "baseline_fastws",
    about = "tokio + fastwebsockets broadcast baseline"
)]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
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

async fn serve(fut: UpgradeFut, state: Arc<State<Outbound>>) -> Result<(), WebSocketError> {
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

    let mut session = Session::new(state, out_tx);
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
    state: Arc<State<Outbound>>,
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
    let listener = args.listen.listen()?;
    let state = Arc::new(State::<Outbound>::new("baseline-fastws"));
    loop {
        let stream = accept(&listener).await;
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

impl Outgoing for Outbound {
    type Text = Bytes;
    fn text(s: String) -> Bytes {
        Bytes::from(s)
    }
    fn from_text(t: Bytes) -> Self {
        Outbound::Text(t)
    }
}
