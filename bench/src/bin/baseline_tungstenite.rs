//! `baseline_tungstenite`: a comparison target for wsedge benchmarks — an
//! idiomatic tokio + tokio-tungstenite broadcast server, written the way a
//! typical engineer would, speaking the same JSON subset of the wire
//! protocol (`edu-matrix-v1.json`) as wsedge and `baseline_fastws`:
//! `connect`, `subscribe`, `unsubscribe`, `publish`, `ping`, replies
//! `{"id":N,"<method>":{..}}` / `{"id":N,"error":{..}}` and pushes
//! `{"push":{"channel":..,"pub":{"offset":K,"data":..}}}` with offsets
//! counted per channel.
//!
//! Design (what a competent tokio user writes; see bench/README.md, "The
//! baselines"): a single-threaded tokio runtime (the benchmark gives it one
//! core); `tokio_tungstenite::accept_hdr_async_with_config` with a callback
//! selecting the subprotocol and a `WebSocketConfig` sized for many
//! connections (4 KiB read buffer, as tungstenite's docs advise for many
//! connections; writes gathered up to 64 KiB); the stream `split` into a
//! sink and a stream; per connection a writer task that waits for one
//! message from a bounded `tokio::sync::mpsc` queue (`baseline::QUEUE`),
//! `feed`s it and everything else already queued (`try_recv`) into the
//! sink and then `flush`es once: one `write(2)` per wake-up, not one per
//! message; a shared `Arc<Mutex<HashMap<..>>>` channel registry; a
//! publication is serialized once into a `Utf8Bytes` and a cloned
//! `Message::Text` is `try_send` to every subscriber (tungstenite encodes
//! each frame's header and copies the payload into its write buffer; its
//! API has no pre-encoded frames). A full queue drops the connection as a
//! slow consumer (close 3002). tungstenite answers pings and close frames
//! by itself.
//!
//! ```text
//! baseline_tungstenite --listen 127.0.0.1:8080   # prints "listening client=ADDR" on stderr
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig, frame::coding};
use wsbench::baseline::{
    CLOSE_SLOW_CONSUMER, Link, ListenArgs, MAX_BATCH, PROTOCOL, QUEUE, Session, State, accept,
};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "baseline_tungstenite",
    about = "tokio + tokio-tungstenite broadcast baseline"
)]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
}

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// The writer task: per wake-up, `feed` every queued message (up to
/// [`QUEUE`] of them), then one `flush`. Returns when the queue is closed,
/// on a write error, or when the connection is dropped as a slow consumer.
async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Message>,
    kill: Arc<Notify>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    loop {
        let first = tokio::select! {
            biased;
            () = kill.notified() => {
                // Slow consumer: what is queued is dropped; close 3002,
                // given at most a second to go out.
                let close = Message::Close(Some(CloseFrame {
                    code: coding::CloseCode::from(CLOSE_SLOW_CONSUMER),
                    reason: "slow consumer".into(),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
                return Ok(());
            }
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        let drain = async {
            sink.feed(first).await?;
            for _ in 1..QUEUE {
                match rx.try_recv() {
                    Ok(m) => sink.feed(m).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            // Dropped mid-write: no close frame can follow a partial one.
            () = kill.notified() => return Ok(()),
            res = drain => res?,
        }
    }
}

async fn serve(
    stream: TcpStream,
    state: Arc<State<Message>>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    // The callback's error type is tungstenite's (an HTTP response).
    #[allow(clippy::result_large_err)]
    let select_protocol = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let wants_json = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == PROTOCOL);
        if wants_json {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(MAX_BATCH);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, select_protocol, Some(config))
        .await?;
    let (sink, mut stream) = ws.split();
    let (link, rx) = Link::<Message>::new();
    let mut writer = tokio::spawn(write_loop(sink, rx, link.kill.clone()));

    let mut session = Session::new(state, link);
    let read = async {
        while let Some(msg) = stream.next().await {
            match msg? {
                Message::Text(text) => {
                    // An error means the writer has gone: the connection is ending.
                    let Ok(()) = session.on_text(text.as_str()).await else {
                        break;
                    };
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok(())
    };
    // The connection ends when either half does.
    let (result, writer_done) = tokio::select! {
        r = read => (r, false),
        _ = &mut writer => (Ok(()), true),
    };
    session.leave_all();
    drop(session);
    if !writer_done {
        let _ = writer.await;
    }
    result
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = args.listen.listen()?;
    let state = Arc::new(State::<Message>::new("baseline-tungstenite"));
    loop {
        let stream = accept(&listener).await;
        let state = state.clone();
        tokio::spawn(async move {
            use tokio_tungstenite::tungstenite::Error;
            match serve(stream, state).await {
                Ok(())
                | Err(Error::ConnectionClosed)
                | Err(Error::AlreadyClosed)
                | Err(Error::Protocol(
                    tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {}
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => eprintln!("websocket connection error: {e}"),
            }
        });
    }
}
