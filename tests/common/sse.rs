//! A raw SSE fallback client: the event stream read byte by byte (the
//! chunked framing checked, each chunk one whole event) and command
//! posts written by hand. No HTTP or SSE library sits between the test
//! and the bytes.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Server;

/// How long any one expected event may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// One server-sent event as the stream carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `event: <name>` (None for a plain message) with its `data:` lines.
    Data {
        name: Option<String>,
        lines: Vec<String>,
    },
    /// A comment line (`: ping`).
    Comment(String),
}

/// An open event stream.
pub struct SseStream {
    sock: TcpStream,
    buf: Vec<u8>,
    /// The answer's head (status line and headers).
    pub head: String,
    /// The session id from the first event.
    pub session: String,
    /// The node name from the first event.
    pub node: String,
    /// Messages (JSON objects) received and not yet taken.
    pending: VecDeque<Value>,
    /// Every event, for failure messages.
    pub log: Vec<String>,
    /// The last chunk (`0\r\n\r\n`) was read.
    pub ended: bool,
    next_id: u32,
}

/// Opens a raw stream: `GET <path>/sse` with `extra` header lines.
pub fn open_raw(addr: SocketAddr, extra: &str) -> (TcpStream, String, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        sock,
        "GET /ws/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut tmp) {
            Ok(0) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => panic!("reading the stream's head: {e}"),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end..].to_vec();
    (sock, head, rest)
}

impl SseStream {
    /// Opens a stream and reads its session event.
    pub fn open(server: &Server) -> SseStream {
        Self::open_with(server, "")
    }

    /// [`SseStream::open`] with extra request header lines (CRLF-ended).
    pub fn open_with(server: &Server, extra: &str) -> SseStream {
        let (sock, head, buf) = open_raw(server.client, extra);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let mut s = SseStream {
            sock,
            buf,
            head,
            session: String::new(),
            node: String::new(),
            pending: VecDeque::new(),
            log: Vec::new(),
            ended: false,
            next_id: 1,
        };
        match s.next_event() {
            Some(Event::Data { name, lines }) if name.as_deref() == Some("session") => {
                assert_eq!(lines.len(), 1, "{lines:?}");
                let v: Value = serde_json::from_str(&lines[0]).unwrap();
                s.session = v["session"].as_str().unwrap().to_owned();
                s.node = v["node"].as_str().unwrap().to_owned();
            }
            other => panic!("first event: {other:?}"),
        }
        s
    }

    /// The shard holding the stream (the id's second field, after the
    /// node's name).
    pub fn shard(&self) -> usize {
        self.session.split('.').nth(1).unwrap().parse().unwrap()
    }

    /// Posts one command to `addr` (any node) and returns its id and the
    /// answer's status and head.
    #[allow(dead_code)]
    pub fn send_to(&mut self, addr: SocketAddr, method: &str, params: Value) -> (u32, u16, String) {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::json!({ "id": id, method: params }).to_string();
        let (status, head) = post(addr, &self.session, body.as_bytes());
        (id, status, head)
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.sock
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut tmp = [0u8; 16384];
        match self.sock.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(_) => false,
        }
    }

    /// The next chunk's payload, checked: `<hex>\r\n<payload>\r\n`. None at
    /// the end of the stream or after `wait`.
    fn next_chunk(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.buf[..i]).expect("chunk size is text");
                let n = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
                let total = i + 2 + n + 2;
                if self.buf.len() >= total {
                    assert_eq!(&self.buf[i + 2 + n..total], b"\r\n", "chunk not CRLF-ended");
                    let payload = self.buf[i + 2..i + 2 + n].to_vec();
                    self.buf.drain(..total);
                    if n == 0 {
                        self.ended = true;
                        return None;
                    }
                    return Some(payload);
                }
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next event; each chunk must hold exactly one whole event.
    pub fn next_event_within(&mut self, wait: Duration) -> Option<Event> {
        let chunk = self.next_chunk(wait)?;
        let text = String::from_utf8(chunk).expect("events are UTF-8");
        self.log.push(text.clone());
        let body = text
            .strip_suffix("\n\n")
            .unwrap_or_else(|| panic!("a chunk that is not one whole event: {text:?}"));
        assert!(!body.contains("\n\n"), "two events in one chunk: {text:?}");
        if let Some(c) = body.strip_prefix(':') {
            return Some(Event::Comment(c.trim().to_owned()));
        }
        let mut name = None;
        let mut lines = Vec::new();
        for line in body.split('\n') {
            if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                lines.push(v.to_owned());
            } else {
                panic!("unexpected line {line:?} in {text:?}");
            }
        }
        Some(Event::Data { name, lines })
    }

    /// The next event within [`WAIT`].
    pub fn next_event(&mut self) -> Option<Event> {
        self.next_event_within(WAIT)
    }

    /// The next JSON object of a message event (pings skipped). Panics on
    /// a close event or the end of the stream.
    pub fn recv(&mut self) -> Value {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return v;
            }
            match self.next_event() {
                Some(Event::Data { name: None, lines }) => {
                    for l in lines {
                        let v: Value = serde_json::from_str(&l)
                            .unwrap_or_else(|e| panic!("data line {l:?}: {e}"));
                        self.pending.push_back(v);
                    }
                }
                Some(Event::Comment(_)) => {}
                other => panic!("expected a message, got {other:?}; log {:?}", self.log),
            }
        }
    }

    /// The reply to command `id`, pushes before it kept for later.
    pub fn reply(&mut self, id: u32) -> Value {
        let mut skipped = Vec::new();
        let found = loop {
            let v = self.recv();
            if v["id"].as_u64() == Some(id as u64) {
                break v;
            }
            skipped.push(v);
        };
        for v in skipped.into_iter().rev() {
            self.pending.push_front(v);
        }
        found
    }

    /// The next push (an object without an id).
    pub fn push(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v.get("id").is_none() {
                return v;
            }
        }
    }

    /// Posts one command and returns its id (the post must answer 204).
    pub fn send(&mut self, server: &Server, method: &str, params: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::json!({ "id": id, method: params }).to_string();
        let (status, head) = post(server.client, &self.session, body.as_bytes());
        assert_eq!(status, 204, "{head}");
        id
    }

    /// Posts a command and waits for its reply.
    pub fn call(&mut self, server: &Server, method: &str, params: Value) -> Value {
        let id = self.send(server, method, params);
        self.reply(id)
    }

    /// Reads until the close event and the last chunk: (code, reason).
    pub fn close_event(&mut self) -> (u16, String) {
        loop {
            match self.next_event() {
                Some(Event::Data { name, lines }) if name.as_deref() == Some("close") => {
                    let v: Value = serde_json::from_str(&lines[0]).unwrap();
                    assert!(self.next_event().is_none(), "an event after the close");
                    assert!(self.ended, "no last chunk after the close event");
                    return (
                        v["code"].as_u64().unwrap() as u16,
                        v["reason"].as_str().unwrap().to_owned(),
                    );
                }
                Some(_) => {}
                None => panic!("the stream ended without a close event; log {:?}", self.log),
            }
        }
    }

    /// Whether the server closed the socket (EOF) within `wait`.
    pub fn eof_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        self.buf.clear();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 4096];
            match self.sock.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// `POST /ws/sse/<session>` with `body`: (status, whole answer).
pub fn post(addr: SocketAddr, session: &str, body: &[u8]) -> (u16, String) {
    post_with(addr, &format!("/ws/sse/{session}"), "", body)
}

/// A post to `path` with extra header lines: (status, whole answer).
pub fn post_with(addr: SocketAddr, path: &str, extra: &str, body: &[u8]) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    sock.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}
