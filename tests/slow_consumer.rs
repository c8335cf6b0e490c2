//! A slow consumer's last moments, byte for byte: when a subscriber that
//! stopped reading is dropped (3002), what it finally reads must still be
//! a valid WebSocket stream: every data frame whole, then the `disconnect`
//! push, then a close frame with 3002, then end of stream (a FIN, never a
//! reset), even when it reads it all back slowly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

/// Payload bytes of each publication (a frame of about 60 KB).
const BLOB: usize = 60_000;

/// Opens a WebSocket over a socket with a small receive buffer (set before
/// connecting so the advertised window stays small), returning the stream
/// positioned right after the 101 response head.
fn small_window_client(server: &Server) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&server.client.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: edu-matrix-v1.json\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

/// Sends one masked text frame.
fn send_text(s: &mut TcpStream, text: &str) {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let len = text.len();
    assert!(len < 126);
    let mut out = vec![0x81, 0x80 | len as u8];
    out.extend_from_slice(&mask);
    out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&out).unwrap();
}

/// Everything the client reads until end of stream, a little at a time,
/// with the time end of stream came. Panics on a reset, which would mean
/// the server threw away bytes it had already queued.
/// It pauses `pause(time since the first read)` after each chunk.
fn read_slowly(
    mut s: TcpStream,
    chunk: usize,
    pause: impl Fn(Duration) -> Duration,
) -> (Vec<u8>, Instant) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (all, Instant::now()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "read failed after {} bytes: {e} (the server must close with a FIN after \
                 its close frame, not a reset)",
                all.len()
            ),
        }
        std::thread::sleep(pause(start.elapsed()));
    }
}

/// One server frame parsed from `bytes` at `at`: (fin, opcode, payload,
/// next offset). Panics, naming the offset, if the frame is cut short.
fn frame_at(bytes: &[u8], at: usize) -> (bool, u8, &[u8], usize) {
    let rest = &bytes[at..];
    assert!(rest.len() >= 2, "frame header cut at byte {at}");
    assert_eq!(rest[1] & 0x80, 0, "server frames are unmasked");
    let (len, hl) = match rest[1] & 0x7f {
        126 => {
            assert!(rest.len() >= 4, "frame header cut at byte {at}");
            (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4)
        }
        127 => {
            assert!(rest.len() >= 10, "frame header cut at byte {at}");
            (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    assert!(
        rest.len() >= hl + len,
        "frame at byte {at} announced {len} payload bytes, only {} arrived before end of stream",
        rest.len() - hl
    );
    (
        rest[0] & 0x80 != 0,
        rest[0] & 0x0f,
        &rest[hl..hl + len],
        at + hl + len,
    )
}

/// A server with a small outbound budget and a one-second close_timeout,
/// a subscriber to "big" that has read nothing since its handshake, and a
/// publisher that has just got it dropped (then published 5 more). Returns
/// the publications sent before the drop.
async fn drop_a_slow_consumer() -> (Server, TcpStream, JsonClient, usize) {
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_OUTBOUND_BUDGET", "65536")
            .env("WSEDGE_CLOSE_TIMEOUT", "1s")
            .env("WSEDGE_MAX_COMMANDS_PER_SECOND", "0"),
    );
    let mut slow = small_window_client(&server);
    send_text(
        &mut slow,
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"big\"}}",
    );
    server.wait_for("subscription", || {
        server.metric("wsedge_channels_local") >= 1.0
    });
    let mut publisher = JsonClient::connect(&server).await;
    let blob = "x".repeat(BLOB);
    let mut published = 0;
    while server.metric("wsedge_slow_consumer_drops_total") < 1.0 {
        publisher
            .call("publish", json!({"channel": "big", "data": blob}))
            .await;
        published += 1;
        assert!(published < 1000, "slow consumer never dropped");
    }
    // Publications after the drop reach nobody on that connection: nothing
    // may follow its close frame, and the drop is counted once.
    for _ in 0..5 {
        publisher
            .call("publish", json!({"channel": "big", "data": blob}))
            .await;
    }
    (server, slow, publisher, published)
}

#[tokio::test]
async fn dropped_slow_consumer_reads_whole_frames_then_disconnect_close_and_fin() {
    let (server, slow, _publisher, published) = drop_a_slow_consumer().await;
    // It reads everything, slowly: a chunk every 300 ms for the first
    // 3 s (progress well within each close_timeout, so the server must not
    // give up on it), then faster. The pace, not the amount queued (which
    // varies with load), makes the read outlast close_timeout, the case
    // under test: the server holds the socket until its close is out.
    let started = Instant::now();
    let (bytes, eof_at) = tokio::task::spawn_blocking(move || {
        read_slowly(slow, 4096, |read_for| {
            if read_for < Duration::from_secs(3) {
                Duration::from_millis(300)
            } else {
                Duration::from_millis(10)
            }
        })
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "read back in {took:?}: less than 40 KB was queued, not a slow consumer's backlog"
    );
    // Walk every frame boundary.
    let mut at = 0;
    let mut data = Vec::new();
    let (close_code, close_end) = loop {
        let (fin, opcode, payload, next) = frame_at(&bytes, at);
        assert!(fin, "frame at byte {at} not final");
        match opcode {
            1 => {
                let text = std::str::from_utf8(payload).unwrap();
                for line in text.split('\n') {
                    let v: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("frame at byte {at}: {e}"));
                    data.push(v);
                }
            }
            9 => {} // a server ping may be queued among the data
            8 => {
                assert!(payload.len() >= 2, "close frame without a code");
                break (u16::from_be_bytes([payload[0], payload[1]]), next);
            }
            op => panic!("unexpected opcode {op} at byte {at}"),
        }
        at = next;
    };
    assert_eq!(close_code, 3002);
    assert_eq!(
        close_end,
        bytes.len(),
        "{} bytes followed the close frame",
        bytes.len() - close_end
    );
    // Replies, then whole publications, then the disconnect push last.
    let (last, rest) = data.split_last().expect("frames before the close");
    assert_eq!(last["push"]["disconnect"]["code"], 3002, "{last}");
    assert_eq!(last["push"]["disconnect"]["reconnect"], true);
    assert_eq!(rest[0]["id"], 1);
    assert_eq!(rest[1]["id"], 2);
    let pubs = &rest[2..];
    assert!(
        !pubs.is_empty(),
        "some publications arrived before the drop"
    );
    for (i, p) in pubs.iter().enumerate() {
        assert_eq!(p["push"]["pub"]["offset"], i + 1, "in order, none skipped");
        assert_eq!(p["push"]["pub"]["data"].as_str().map(str::len), Some(BLOB));
    }
    assert!(pubs.len() < published, "queued data was dropped");
    eprintln!(
        "read {} bytes ({} publications of {published}) in {took:?}; eof {:?} after start",
        bytes.len(),
        pubs.len(),
        eof_at.duration_since(started)
    );
    server.wait_for("connection released", || {
        server.metric("wsedge_connections") == 1.0
    });
    assert_eq!(server.metric("wsedge_slow_consumer_drops_total"), 1.0);
    assert_eq!(server.metric("wsedge_closes_total{kind=\"3002\"}"), 1.0);
    assert_eq!(server.metric("wsedge_closes_total{kind=\"1006\"}"), 0.0);
}

#[tokio::test]
async fn dropped_slow_consumer_that_never_reads_again_is_released() {
    let (server, slow, _publisher, _) = drop_a_slow_consumer().await;
    // It takes nothing for a whole close_timeout: given up on after at most
    // two of them (plus the one-second tick), not kept forever.
    let dropped = Instant::now();
    server.wait_for("connection released", || {
        server.metric("wsedge_connections") == 1.0
    });
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "{:?}",
        dropped.elapsed()
    );
    assert_eq!(server.metric("wsedge_slow_consumer_drops_total"), 1.0);
    drop(slow);
}
