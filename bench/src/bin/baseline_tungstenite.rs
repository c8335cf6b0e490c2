//! `baseline_tungstenite`: a comparison target for wsedge benchmarks — an
//! idiomatic tokio + tokio-tungstenite broadcast server, written the way a
//! typical engineer would, speaking the same JSON subset of the wire
//! protocol (`edu-matrix-v1.json`) as wsedge and `baseline_fastws`:
//! `connect`, `subscribe`, `unsubscribe`, `publish`, `ping`, replies
//! `{"id":N,"<method>":{..}}` / `{"id":N,"error":{..}}` and pushes
//! `{"push":{"channel":..,"pub":{"offset":K,"data":..}}}` with offsets
//! counted per channel.
//!
//! Design: a single-threaded tokio runtime (the benchmark gives it one
//! core); `tokio_tungstenite::accept_hdr_async` with a callback selecting
//! the subprotocol; the stream `split` into a sink and a stream; per
//! connection a writer task draining a bounded `tokio::sync::mpsc` queue
//! (1024) into the sink with `sink.send(msg)` (one flush per message); a
//! shared `Arc<Mutex<HashMap<..>>>` channel registry; a publication is
//! serialized once into a `Utf8Bytes` and a cloned `Message::Text` is
//! `try_send` to every subscriber (dropped for a subscriber whose queue is
//! full). tungstenite answers pings and close frames by itself.
//!
//! ```text
//! baseline_tungstenite --listen 127.0.0.1:8080   # prints "listening client=ADDR" on stderr
//! ```

use std::sync::Arc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsbench::baseline::{ListenArgs, PROTOCOL, QUEUE, Session, State, accept};

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
    let ws = tokio_tungstenite::accept_hdr_async(stream, select_protocol).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);

    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });

    let mut session = Session::new(state, tx);
    let mut result = Ok(());
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(text)) => {
                if session.on_text(text.as_str()).await.is_err() {
                    break;
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    session.leave_all();
    drop(session);
    let _ = writer.await;
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
