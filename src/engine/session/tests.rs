//! A session driven byte by byte and tick by tick, with no socket: the
//! upgrade, control frames, both directions of the close handshake, the
//! heartbeat and the deadlines.

use std::io::IoSlice;

use super::*;
use crate::engine::codes::ErrorCode;
use crate::engine::wire::{ConnectParams, ReplyBody};
use crate::engine::ws::deflate::DeflateConfig;

fn cfg() -> SessionConfig {
    SessionConfig {
        handshake: HandshakeConfig {
            client_path: "/ws".into(),
            echo_path: None,
            max_head_bytes: 8192,
            deflate: DeflateConfig { enabled: false },
            sse: true,
            max_post_body: 65536,
        },
        heartbeat: HeartbeatConfig {
            ping_interval: 25,
            pong_timeout: 10,
        },
        max_message_size: 1024,
        handshake_timeout: 5,
        connect_timeout: 10,
        close_timeout: 3,
        max_commands_per_second: 0,
    }
}

const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame (payload under 126 bytes).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Everything queued in the outbox, as the socket would get it; the outbox
/// is left empty.
fn written(s: &mut Session) -> Vec<u8> {
    let mut out = Vec::new();
    while !s.outbox.is_empty() {
        let mut iov = [IoSlice::new(&[]); 16];
        let k = s.outbox.fill(&mut iov);
        let n: usize = iov[..k].iter().map(|x| x.len()).sum();
        for x in &iov[..k] {
            out.extend_from_slice(x);
        }
        s.outbox.consume(n);
    }
    out
}

/// The events one read's bytes give, as the shell would collect them
/// (messages owned), and how the feed ended.
fn feed(s: &mut Session, now: u32, bytes: &[u8], cfg: &SessionConfig) -> (Vec<String>, Feed) {
    let mut seen = Vec::new();
    let (mut decoder, limits) = s.take_decoder(cfg);
    let mut buf = bytes.to_vec();
    let result = decoder.feed(&mut buf, &limits, |ev| {
        let input = s.on_event(now, ev, cfg);
        seen.push(match input {
            Input::Message { payload, .. } => {
                format!("message {}", String::from_utf8_lossy(payload))
            }
            other => format!("{other:?}"),
        });
        s.flow()
    });
    let fed = s.fed(decoder, result);
    (seen, fed)
}

/// Upgraded, `connect` not sent.
fn upgraded(now: u32, cfg: &SessionConfig) -> Session {
    let mut s = Session::new(now, cfg);
    assert!(
        matches!(s.handle_request(now, REQUEST, cfg), Request::Opened(rest) if rest.is_empty())
    );
    written(&mut s);
    s
}

/// Upgraded and connected at `now`.
fn open(now: u32, cfg: &SessionConfig) -> Session {
    let mut s = upgraded(now, cfg);
    let step = s.command(now, Ok(Method::Connect(ConnectParams::default())), cfg);
    assert!(matches!(step, Some(Step::Connect(_))));
    assert!(s.connect_pending());
    s.accept_connect(now, cfg);
    s
}

#[test]
fn stays_small() {
    let size = std::mem::size_of::<Session>();
    assert!(size <= 104, "Session grew to {size} bytes");
}

#[test]
fn an_upgrade_in_pieces_with_frames_behind_it() {
    let c = cfg();
    let mut s = Session::new(100, &c);
    assert_eq!(s.phase(), Phase::Handshake);
    assert_eq!(s.deadline(), 105);
    assert!(!s.reads_frames());
    assert_eq!(s.handle_request(101, &REQUEST[..20], &c), Request::Partial);
    let mut rest = REQUEST[20..].to_vec();
    let text = frame(0x1, b"{\"id\":1}");
    rest.extend_from_slice(&text);
    assert_eq!(
        s.handle_request(101, &rest, &c),
        Request::Opened(text.clone())
    );
    assert_eq!(s.phase(), Phase::Open);
    assert_eq!(s.deadline(), 101 + 10, "until `connect`, its deadline");
    let out = written(&mut s);
    assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(
        out.windows(28)
            .any(|w| w == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let (seen, fed) = feed(&mut s, 101, &text, &c);
    assert_eq!(seen, ["message {\"id\":1}"]);
    assert_eq!(fed, Feed::Done);
}

#[test]
fn a_refused_upgrade_answers_and_half_closes() {
    let c = cfg();
    let mut s = Session::new(0, &c);
    let r = s.handle_request(1, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", &c);
    assert_eq!(r, Request::Rejected(Reject::NotFound));
    assert_eq!(s.phase(), Phase::Closing);
    assert!(!s.reads_frames(), "nothing more is parsed");
    assert!(!s.wants_shutdown(), "not before the answer is written");
    assert!(written(&mut s).starts_with(b"HTTP/1.1 404"));
    assert!(s.wants_shutdown());
    assert_eq!(s.deadline(), 1 + c.close_timeout);
}

#[test]
fn the_access_check_sees_the_head_once_and_may_refuse() {
    let c = cfg();
    let req = String::from_utf8(REQUEST.to_vec())
        .unwrap()
        .replace("Host: x\r\n", "Host: x\r\nOrigin: https://evil.example\r\n");
    let (a, b) = req.as_bytes().split_at(40);
    let mut s = Session::new(0, &c);
    let mut asked = 0;
    let mut check = |r: &UpgradeRequest<'_>| {
        asked += 1;
        match r.origin() {
            Some(b"https://evil.example") => Err(Refusal::OriginRefused),
            _ => Ok(()),
        }
    };
    // Across two reads: asked only once the head is whole.
    assert_eq!(
        s.handle_request_checked(1, a, &c, &mut check),
        Request::Partial
    );
    assert_eq!(
        s.handle_request_checked(1, b, &c, &mut check),
        Request::Refused(Refusal::OriginRefused)
    );
    assert_eq!(asked, 1);
    assert_eq!(s.phase(), Phase::Closing);
    assert!(!s.reads_frames());
    let out = written(&mut s);
    assert!(out.starts_with(b"HTTP/1.1 403 Forbidden\r\n"), "{out:?}");
    assert!(s.wants_shutdown());
    assert_eq!(s.deadline(), 1 + c.close_timeout);
    // Allowed: the usual 101.
    let mut s = Session::new(0, &c);
    let r = s.handle_request_checked(1, REQUEST, &c, |r| {
        assert_eq!(r.origin(), None);
        assert_eq!(r.head, REQUEST);
        Ok(())
    });
    assert_eq!(r, Request::Opened(Vec::new()));
    // A request the parser refuses never reaches the check.
    let mut s = Session::new(0, &c);
    let r = s.handle_request_checked(1, b"GET /nope HTTP/1.1\r\n\r\n", &c, |_| {
        panic!("not asked")
    });
    assert_eq!(r, Request::Rejected(Reject::NotFound));
}

#[test]
fn a_refusal_before_the_request_answers_with_its_status() {
    let c = cfg();
    let mut s = Session::new(0, &c);
    s.refuse_upgrade(2, Refusal::ProxyHeader, &c);
    assert_eq!(s.phase(), Phase::Closing);
    assert!(written(&mut s).starts_with(b"HTTP/1.1 400 "));
    assert!(s.wants_shutdown());
    // Once open, a late refusal changes nothing.
    let mut s = upgraded(0, &c);
    s.refuse_upgrade(2, Refusal::IpRate, &c);
    assert!(s.is_open());
    assert!(s.outbox.is_empty());
}

#[test]
fn an_upgrade_that_never_completes_expires() {
    let c = cfg();
    let mut s = Session::new(10, &c);
    s.handle_request(11, b"GET /ws HTTP/1.1\r\n", &c);
    assert_eq!(s.handle_timeout(14, &c), Timeout::Wait(15));
    assert_eq!(s.handle_timeout(15, &c), Timeout::HandshakeExpired);
}

#[test]
fn pings_are_answered_and_pongs_move_the_heartbeat() {
    let c = cfg();
    let mut s = open(0, &c);
    let (seen, _) = feed(&mut s, 1, &frame(0x9, b"hi"), &c);
    assert_eq!(seen, ["Answered"]);
    assert_eq!(written(&mut s), [0x8a, 2, b'h', b'i']);
    // The server's own ping at the interval, then its pong.
    assert_eq!(s.handle_timeout(24, &c), Timeout::Wait(25));
    assert_eq!(s.handle_timeout(25, &c), Timeout::Ping(35));
    assert_eq!(written(&mut s), PING_FRAME);
    let (seen, _) = feed(&mut s, 30, &frame(0xA, b""), &c);
    assert_eq!(seen, ["Nothing"]);
    assert_eq!(s.deadline(), 50, "next ping an interval after the last");
    // No answer to the next one: closed with 3003.
    assert_eq!(s.handle_timeout(50, &c), Timeout::Ping(60));
    assert_eq!(s.handle_timeout(60, &c), Timeout::NoPong);
}

#[test]
fn the_peers_close_is_echoed_and_ends_reading() {
    let c = cfg();
    let mut s = open(0, &c);
    let mut bytes = frame(0x8, &[0x03, 0xe8]); // 1000
    bytes.extend(frame(0x1, b"after the close"));
    let (seen, fed) = feed(&mut s, 2, &bytes, &c);
    assert_eq!(seen, ["PeerClosed(Some(1000))"], "nothing is read after it");
    assert_eq!(fed, Feed::Done);
    assert_eq!(s.phase(), Phase::Closing);
    assert!(!s.reads_frames());
    assert_eq!(written(&mut s), [0x88, 2, 0x03, 0xe8]);
    assert!(s.wants_shutdown());
    assert_eq!(s.handle_timeout(5, &c), Timeout::CloseExpired);
}

#[test]
fn a_server_close_waits_for_the_peers_close_even_in_the_same_read() {
    let c = cfg();
    let mut s = open(0, &c);
    let mut pushes = FrameWriter::new();
    s.outbox
        .push_data(Bytes::from_static(b"data").into(), 1 << 20)
        .unwrap();
    assert!(s.close(3, CloseReason::BadRequest, "bad request", &mut pushes, &c));
    assert!(!s.close(3, CloseReason::Shutdown, "again", &mut pushes, &c));
    assert_eq!(
        s.command(3, Ok(Method::Ping), &c),
        None,
        "closed: no more commands"
    );
    let out = written(&mut s);
    assert!(out.starts_with(b"data"), "queued data goes first");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\"disconnect\":{\"code\":3501"), "{text}");
    assert!(out.ends_with(b"\x0d\xadbad request"), "close 3501 last");
    assert!(!s.wants_shutdown(), "the peer's close is awaited");
    // Data, then the peer's close, in one read: the data is ignored and the
    // close completes the handshake.
    let mut bytes = frame(0x1, b"ignored");
    bytes.extend(frame(0x8, &[0x0d, 0xad]));
    let (seen, fed) = feed(&mut s, 4, &bytes, &c);
    assert_eq!(seen, ["Nothing", "CloseDone"]);
    assert_eq!(fed, Feed::Done);
    assert!(s.wants_shutdown());
}

#[test]
fn a_transport_failure_closes_without_a_push_or_waiting() {
    let c = cfg();
    let mut s = open(0, &c);
    // An unmasked client frame breaks the protocol.
    let (seen, fed) = feed(&mut s, 1, &[0x81, 0x01, b'x'], &c);
    assert!(seen.is_empty());
    let Feed::Close(reason) = fed else {
        panic!("{fed:?}")
    };
    assert!(s.close(1, reason, reason.reason(), &mut FrameWriter::new(), &c));
    let out = written(&mut s);
    assert_eq!(
        &out[..4],
        &[0x88, out[1], 0x03, 0xea],
        "1002, no push first"
    );
    assert!(s.wants_shutdown());
}

#[test]
fn garbage_while_awaiting_the_close_gives_up_the_wait() {
    let c = cfg();
    let mut s = open(0, &c);
    s.close(0, CloseReason::Shutdown, "bye", &mut FrameWriter::new(), &c);
    written(&mut s);
    let (_, fed) = feed(&mut s, 1, &[0x81, 0x01, b'x'], &c);
    assert_eq!(fed, Feed::GiveUp);
    assert!(s.wants_shutdown());
}

#[test]
fn a_slow_consumers_close_skips_its_queued_data() {
    let c = cfg();
    let mut s = open(0, &c);
    s.outbox
        .push_data(Bytes::from_static(b"stale").into(), 1 << 20)
        .unwrap();
    s.close(
        0,
        CloseReason::SlowConsumer,
        "slow",
        &mut FrameWriter::new(),
        &c,
    );
    let out = written(&mut s);
    assert!(!out.windows(5).any(|w| w == b"stale"));
    assert!(out.ends_with(b"slow"));
}

#[test]
fn the_close_deadline_can_be_extended_while_output_drains() {
    let c = cfg();
    let mut s = open(0, &c);
    s.close(
        10,
        CloseReason::Shutdown,
        "bye",
        &mut FrameWriter::new(),
        &c,
    );
    assert_eq!(s.handle_timeout(12, &c), Timeout::Wait(13));
    assert_eq!(s.handle_timeout(13, &c), Timeout::CloseExpired);
    assert_eq!(s.extend_close(13, &c), 16);
    assert_eq!(s.handle_timeout(14, &c), Timeout::Wait(16));
}

#[test]
fn commands_go_through_the_command_state() {
    let mut c = cfg();
    c.max_commands_per_second = 2;
    let mut s = upgraded(0, &c);
    assert!(s.accepts(true) && !s.accepts(false), "JSON is text");
    assert_eq!(
        s.command(0, Ok(Method::Ping), &c),
        Some(Step::Reply(ReplyBody::Error(ErrorCode::NotConnected)))
    );
    assert!(matches!(
        s.command(0, Ok(Method::Connect(ConnectParams::default())), &c),
        Some(Step::Connect(_))
    ));
    s.accept_connect(0, &c);
    assert!(s.connected());
    s.set_identity("ann".into(), None, None);
    assert_eq!(s.identity().map(|i| &*i.user), Some("ann"));
    assert_eq!(
        s.command(0, Ok(Method::Ping), &c),
        Some(Step::Reply(ReplyBody::Error(ErrorCode::TooManyRequests)))
    );
}

#[test]
fn an_oversized_message_fails_with_1009() {
    let mut c = cfg();
    c.max_message_size = 8;
    let mut s = open(0, &c);
    let (_, fed) = feed(&mut s, 0, &frame(0x1, b"0123456789"), &c);
    assert_eq!(fed, Feed::Close(CloseReason::MessageTooBig));
}

#[test]
fn connect_must_complete_before_its_deadline() {
    let c = cfg();
    let mut s = upgraded(100, &c);
    assert_eq!(s.handle_timeout(105, &c), Timeout::Wait(110));
    // Asked, refused for now, still not connected: the deadline holds.
    s.command(105, Ok(Method::Connect(ConnectParams::default())), &c);
    s.refuse_connect();
    assert!(!s.connect_pending());
    assert_eq!(s.handle_timeout(110, &c), Timeout::ConnectExpired);
    // Connected in time: the heartbeat takes over from then.
    let mut s = upgraded(100, &c);
    s.command(109, Ok(Method::Connect(ConnectParams::default())), &c);
    s.accept_connect(109, &c);
    assert_eq!(s.deadline(), 109 + 25);
    assert_eq!(s.handle_timeout(110, &c), Timeout::Wait(134));
}

#[test]
fn credentials_that_expire_close_the_session_unless_moved() {
    let c = cfg();
    let mut s = open(0, &c);
    s.set_identity("ann".into(), None, Some(12));
    assert_eq!(s.deadline(), 12, "sooner than the ping");
    assert_eq!(s.handle_timeout(11, &c), Timeout::Wait(12));
    // A refresh moves it past the ping: the ping comes first.
    s.set_expiry(Some(40));
    assert_eq!(s.deadline(), 25);
    assert_eq!(s.handle_timeout(25, &c), Timeout::Ping(35));
    written(&mut s);
    s.on_event(26, Event::Pong(&[]), &c);
    assert_eq!(s.handle_timeout(39, &c), Timeout::Wait(40));
    assert_eq!(s.handle_timeout(40, &c), Timeout::Expired);
    // No longer expiring.
    s.set_expiry(None);
    assert_eq!(s.expires_at(), None);
}

#[test]
fn the_upgrade_token_waits_for_connect() {
    let c = cfg();
    let mut s = Session::new(0, &c);
    let req = String::from_utf8(REQUEST.to_vec())
        .unwrap()
        .replace("/ws ", "/ws?token=abc ");
    assert!(matches!(
        s.handle_request(0, req.as_bytes(), &c),
        Request::Opened(_)
    ));
    assert_eq!(s.take_token().as_deref(), Some("abc"));
    assert_eq!(s.take_token(), None);
}

#[test]
fn the_echo_endpoint_has_a_heartbeat_and_no_connect_deadline() {
    let mut c = cfg();
    c.handshake.echo_path = Some("/echo".into());
    let mut s = Session::new(0, &c);
    let req = String::from_utf8(REQUEST.to_vec())
        .unwrap()
        .replace("/ws ", "/echo ");
    assert!(matches!(
        s.handle_request(0, req.as_bytes(), &c),
        Request::Opened(_)
    ));
    assert_eq!(s.endpoint(), Endpoint::Echo);
    assert_eq!(s.deadline(), 25, "the ping interval, not connect_timeout");
    assert_eq!(s.handle_timeout(10, &c), Timeout::Wait(25));
    assert_eq!(s.handle_timeout(25, &c), Timeout::Ping(35));
}

const SSE_GET: &[u8] = b"GET /ws/sse HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n";

#[test]
fn an_sse_stream_writes_events_and_ends_with_the_close_event() {
    let c = cfg();
    let mut s = Session::new(0, &c);
    // Bytes after the head are no frames: they are ignored.
    let mut req = SSE_GET.to_vec();
    req.extend_from_slice(b"junk");
    assert_eq!(
        s.handle_request(0, &req, &c),
        Request::Opened(b"junk".to_vec())
    );
    assert_eq!(s.endpoint(), Endpoint::SseStream);
    assert!(!s.reads_frames());
    assert!(s.outbox.is_sse());
    let head = String::from_utf8(written(&mut s)).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(
        head.contains("Access-Control-Allow-Origin: https://a.example\r\n"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    // No connect in time: the same deadline as on WebSocket.
    assert_eq!(s.deadline(), c.connect_timeout);
    s.accept_connect(1, &c);
    // Pings are keepalive comments that need no pong: the next one is a
    // whole interval later, and no pong timeout ever comes.
    let first = 1 + c.heartbeat.ping_interval;
    assert_eq!(
        s.handle_timeout(first, &c),
        Timeout::Ping(first + c.heartbeat.ping_interval)
    );
    assert_eq!(written(&mut s), b"8\r\n: ping\n\n\r\n");
    let second = first + c.heartbeat.ping_interval;
    assert_eq!(
        s.handle_timeout(second + c.heartbeat.pong_timeout, &c),
        Timeout::Ping(second + c.heartbeat.pong_timeout + c.heartbeat.ping_interval)
    );
    written(&mut s);
    // A close: the disconnect push as a message event, then the close
    // event and the last chunk, then the write side is shut.
    let mut pushes = FrameWriter::default();
    assert!(s.close(100, CloseReason::Disconnected, "bye", &mut pushes, &c));
    assert!(!s.reads_frames());
    let out = String::from_utf8(written(&mut s)).unwrap();
    assert!(out.contains("data: {\"push\":{\"disconnect\""), "{out}");
    assert!(
        out.ends_with("event: close\ndata: {\"code\":3006,\"reason\":\"bye\"}\n\n\r\n0\r\n\r\n"),
        "{out}"
    );
    assert!(s.wants_shutdown());
}

#[test]
fn an_sse_post_collects_its_body_then_answers_and_closes() {
    let c = cfg();
    let mut s = Session::new(0, &c);
    let head = b"POST /ws/sse/0.1.2.abc HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n";
    let mut req = head.to_vec();
    req.extend_from_slice(b"{\"id\":");
    let Request::Opened(rest) = s.handle_request(0, &req, &c) else {
        panic!()
    };
    assert_eq!(s.endpoint(), Endpoint::SsePost);
    assert!(s.outbox.is_empty(), "nothing is answered before the body");
    assert_eq!(s.post_bytes(&rest), Post::Partial);
    // The body's deadline is the handshake's.
    assert_eq!(
        s.handle_timeout(c.handshake_timeout - 1, &c),
        Timeout::Wait(c.handshake_timeout)
    );
    match s.post_bytes(b"1}\nextra") {
        Post::Complete { session, body, .. } => {
            assert_eq!(&*session, "0.1.2.abc");
            assert_eq!(body, b"{\"id\":1}\n");
        }
        other => panic!("{other:?}"),
    }
    s.answer_post(
        1,
        Bytes::from_static(b"HTTP/1.1 204 No Content\r\n\r\n"),
        &c,
    );
    assert_eq!(written(&mut s), b"HTTP/1.1 204 No Content\r\n\r\n");
    assert!(s.wants_shutdown());

    // A post that never completes expires; one closed by a drain is told
    // to come back (503).
    let mut slow = Session::new(0, &c);
    slow.handle_request(0, head, &c);
    assert_eq!(
        slow.handle_timeout(c.handshake_timeout, &c),
        Timeout::HandshakeExpired
    );
    let mut drained = Session::new(0, &c);
    drained.handle_request(0, head, &c);
    let mut pushes = FrameWriter::default();
    assert!(drained.close(1, CloseReason::Shutdown, "", &mut pushes, &c));
    let out = String::from_utf8(written(&mut drained)).unwrap();
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
}

#[test]
fn sse_requests_are_checked_like_upgrades() {
    let c = cfg();
    let answer = |req: &[u8]| {
        let mut s = Session::new(0, &c);
        let r = s.handle_request(0, req, &c);
        (r, String::from_utf8(written(&mut s)).unwrap())
    };
    let cases: [(&[u8], Reject); 6] = [
        (
            b"POST /ws/sse HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
            Reject::MethodNotAllowed,
        ),
        (
            b"GET /ws/sse/1.2.3.x HTTP/1.1\r\n\r\n",
            Reject::MethodNotAllowed,
        ),
        (b"POST /ws/sse/1.2.3.x HTTP/1.1\r\n\r\n", Reject::BadRequest),
        (
            b"POST /ws/sse/1.2.3.x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            Reject::BadRequest,
        ),
        (
            b"POST /ws/sse/1.2.3.x HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            Reject::PayloadTooLarge,
        ),
        (b"GET /ws/sse/a/b HTTP/1.1\r\n\r\n", Reject::NotFound),
    ];
    for (req, want) in cases {
        let (r, out) = answer(req);
        assert_eq!(
            r,
            Request::Rejected(want),
            "{}",
            String::from_utf8_lossy(req)
        );
        assert!(
            out.starts_with(&format!("HTTP/1.1 {} ", want.status())),
            "{out}"
        );
    }
    let mut off = cfg();
    off.handshake.sse = false;
    let mut s = Session::new(0, &off);
    assert_eq!(
        s.handle_request(0, SSE_GET, &off),
        Request::Rejected(Reject::NotFound)
    );
}
