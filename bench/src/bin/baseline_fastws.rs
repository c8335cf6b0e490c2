//! `baseline_fastws`: the comparison target for wsedge benchmarks — an
//! idiomatic tokio + fastwebsockets broadcast server, written the way a
//! typical engineer would, speaking the same JSON subset of the wire
//! protocol (`edu-matrix-v1.json`): `connect`, `subscribe`, `unsubscribe`,
//! `publish`, `ping`, replies `{"id":N,"<method>":{..}}` /
//! `{"id":N,"error":{..}}` and pushes
//! `{"push":{"channel":..,"pub":{"offset":K,"data":..}}}` with offsets
//! counted per channel.
//!
//! Design (what a competent tokio user writes; see bench/README.md, "The
//! baselines"): a single-threaded tokio runtime (the benchmark gives it one
//! core); hyper 1 + `fastwebsockets::upgrade` for the handshake; per
//! connection a reader task (a `FragmentCollectorRead`) and a writer task
//! fed by a bounded `tokio::sync::mpsc` queue (`baseline::QUEUE` messages), because
//! fastwebsockets' `read_frame` is not cancel-safe and so cannot sit in a
//! `select!` next to the queue; a shared `Arc<Mutex<HashMap<..>>>` channel
//! registry. A publication is serialized once into a complete WebSocket
//! frame (`Frame::write`, header included) held in `Bytes`, and `try_send`
//! to every subscriber as a reference-counted clone. The writer waits for
//! one message, drains whatever else is queued (`try_recv`, up to
//! `baseline::MAX_BATCH` bytes) into one buffer and writes it with one `write_all`
//! and one `flush`: one `write(2)` per wake-up, not one per frame. A full
//! queue drops the connection as a slow consumer (close 3002).
//!
//! ```text
//! baseline_fastws --listen 127.0.0.1:8080      # prints "listening client=ADDR" on stderr
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use wsbench::baseline::{
    CLOSE_SLOW_CONSUMER, Link, ListenArgs, MAX_BATCH, Outgoing, PROTOCOL, Session, State, accept,
};

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
    /// A complete, already encoded text frame (header + payload), shared
    /// by every subscriber of a publication; replies too.
    Frame(Bytes),
    /// A pong answering a ping (payload).
    Pong(Bytes),
    /// A close frame echoing the client's (payload); the writer stops after it.
    Close(Bytes),
}

/// Encodes one server (unmasked) frame with fastwebsockets' own encoder.
fn encode(mut frame: Frame<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    let n = frame.write(&mut buf).len();
    buf.truncate(n);
    buf
}

/// Appends `msg`'s frame to `batch`; true if it was the closing frame.
fn append(batch: &mut Vec<u8>, msg: Outbound) -> bool {
    match msg {
        Outbound::Frame(b) => {
            batch.extend_from_slice(&b);
            false
        }
        Outbound::Pong(p) => {
            batch.extend_from_slice(&encode(Frame::pong(Payload::Borrowed(&p))));
            false
        }
        Outbound::Close(p) => {
            batch.extend_from_slice(&encode(Frame::close_raw(Payload::Borrowed(&p))));
            true
        }
    }
}

/// The writer task: one batch per wake-up, one `write_all` + `flush` per
/// batch. Returns when the queue is closed, after a close frame, on a
/// write error, or when the connection is dropped as a slow consumer.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Outbound>,
    kill: Arc<Notify>,
) -> std::io::Result<()> {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            () = kill.notified() => {
                // Slow consumer: what is queued is dropped; close 3002,
                // given at most a second to go out.
                let close = encode(Frame::close(CLOSE_SLOW_CONSUMER, b"slow consumer"));
                let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&close)).await;
                return Ok(());
            }
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        let mut closing = append(&mut batch, first);
        while !closing && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => closing = append(&mut batch, m),
                Err(_) => break,
            }
        }
        let write = async {
            w.write_all(&batch).await?;
            w.flush().await
        };
        tokio::select! {
            biased;
            // Dropped mid-write: the frame in flight cannot be finished, so
            // no close frame either; the socket is closed.
            () = kill.notified() => return Ok(()),
            res = write => res?,
        }
        if closing {
            return Ok(());
        }
        batch.clear();
        if batch.capacity() > 2 * MAX_BATCH {
            batch.shrink_to(MAX_BATCH);
        }
    }
}

async fn serve(fut: UpgradeFut, state: Arc<State<Outbound>>) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    // Own the two halves: the reader goes to fastwebsockets, the writer is
    // ours (fastwebsockets' `write_frame` is one `write` per frame).
    let (r, w) = tokio::io::split(ws.into_inner());
    let (rx, _) = fastwebsockets::after_handshake_split(r, tokio::io::sink(), Role::Server);
    let mut rx = FragmentCollectorRead::new(rx);
    let (link, out_rx) = Link::<Outbound>::new();
    let mut writer = tokio::spawn(write_loop(w, out_rx, link.kill.clone()));

    // Pongs and close replies owed by the reader go through the writer's queue.
    let obligations = link.tx.clone();
    let mut send_fn = move |frame: Frame<'_>| {
        let tx = obligations.clone();
        let payload = Bytes::copy_from_slice(&frame.payload);
        let msg = match frame.opcode {
            OpCode::Pong => Outbound::Pong(payload),
            _ => Outbound::Close(payload),
        };
        async move { tx.send(msg).await.map_err(|_| "connection writer gone") }
    };

    let mut session = Session::new(state, link);
    let read = async {
        loop {
            let frame = rx.read_frame(&mut send_fn).await?;
            match frame.opcode {
                OpCode::Text => {
                    // FragmentCollectorRead has already validated UTF-8.
                    let text = std::str::from_utf8(&frame.payload).unwrap_or_default();
                    if session.on_text(text).await.is_err() {
                        return Ok(());
                    }
                }
                OpCode::Close => return Ok(()),
                _ => {}
            }
        }
    };
    // The connection ends when either half does (a writer that ended on a
    // write error or a slow-consumer drop ends the reader too).
    let (result, writer_done) = tokio::select! {
        r = read => (r, false),
        _ = &mut writer => (Ok(()), true),
    };
    session.leave_all();
    drop(session);
    drop(send_fn);
    if !writer_done {
        let _ = writer.await;
    }
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
    /// The whole text frame, encoded once.
    fn text(s: String) -> Bytes {
        Bytes::from(encode(Frame::text(Payload::Borrowed(s.as_bytes()))))
    }
    fn from_text(t: Bytes) -> Self {
        Outbound::Frame(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_once_whole_and_batched() {
        // 100 bytes: 7-bit length; 300 bytes: 16-bit length.
        for (len, head) in [(100usize, vec![0x81, 100]), (300, vec![0x81, 126, 1, 44])] {
            let text = "x".repeat(len);
            let frame = Outbound::text(text.clone());
            assert_eq!(&frame[..head.len()], &head[..]);
            assert_eq!(&frame[head.len()..], text.as_bytes());
        }
        let mut batch = Vec::new();
        assert!(!append(
            &mut batch,
            Outbound::from_text(Outbound::text("ab".into()))
        ));
        assert!(!append(
            &mut batch,
            Outbound::Pong(Bytes::from_static(b"p"))
        ));
        assert!(append(
            &mut batch,
            Outbound::Close(Bytes::from_static(&[3, 232]))
        ));
        assert_eq!(
            batch,
            [0x81, 2, b'a', b'b', 0x8a, 1, b'p', 0x88, 2, 3, 232].to_vec()
        );
    }
}
