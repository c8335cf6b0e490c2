//! Test harness: starts the real `wsedge` binary on ephemeral loopback
//! ports and talks to it with an independent WebSocket client
//! (tokio-tungstenite) or raw TCP ([`RawWs`], and [`raw_json::RawJson`]
//! on it).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod kafka_broker;
pub mod nats_server;
pub mod notify;
pub mod raw_json;
pub mod redis_server;
pub mod sse;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A running server process.
pub struct Server {
    pub child: Child,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    /// The server HTTP API.
    pub api: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

pub struct Opts {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// RLIMIT_NOFILE for the server process.
    pub nofile: Option<u64>,
    /// Variables the harness would set that this server must not have.
    pub unset: Vec<String>,
    /// The client listener (default `127.0.0.1:0`: a port of its own).
    pub listen: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            args: vec!["--shards".into(), "2".into()],
            env: Vec::new(),
            nofile: None,
            unset: Vec::new(),
            listen: "127.0.0.1:0".into(),
        }
    }
}

impl Opts {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn unset(mut self, k: &str) -> Self {
        self.unset.push(k.into());
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsedge"));
        cmd.args(["--listen", &opts.listen, "--admin-listen", "127.0.0.1:0"])
            .args(&opts.args)
            .env("WSEDGE_LOG_LEVEL", "info")
            // Every server gets its own API port, and no key unless the
            // test sets one.
            .env("WSEDGE_API_LISTEN", "127.0.0.1:0")
            .env_remove("WSEDGE_API_KEY")
            // Not under a service manager unless the test says so.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        for k in &opts.unset {
            cmd.env_remove(k);
        }
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limits.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn wsedge");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening") {
                    let field = |name: &str| -> Option<SocketAddr> {
                        let i = line.find(&format!("{name}="))? + name.len() + 1;
                        line[i..].split_whitespace().next()?.parse().ok()
                    };
                    if let (Some(c), Some(a), Some(p), Some(tx)) =
                        (field("client"), field("admin"), field("api"), tx.take())
                    {
                        let _ = tx.send((c, a, p));
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (client, admin, api) = match rx.recv_timeout(TIMEOUT) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            client,
            admin,
            api,
            log,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.client)
    }

    /// GET on the admin server: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// The value of one metric sample (summed over matching lines).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                let key = l.rsplit_once(' ').map(|(k, _)| k).unwrap_or("");
                metric_matches(key, name_and_labels)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `f` holds (polling), or panics with the log.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}; log:\n{}",
            self.log.lock().unwrap()
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Sends `SIGSTOP` and returns once every thread of the node is
    /// stopped: `kill` returns when the signal is queued, and until the
    /// thread that takes it runs, the others go on (a busy machine showed a
    /// "stopped" node answering a cluster call).
    #[allow(dead_code)]
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        wait_stopped(self.child.id());
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// `name` matches `name{labels}` when every label given is present.
fn metric_matches(key: &str, want: &str) -> bool {
    let (wname, wlabels) = want.split_once('{').unwrap_or((want, ""));
    let (kname, klabels) = key.split_once('{').unwrap_or((key, ""));
    if kname != wname {
        return false;
    }
    let wlabels = wlabels.trim_end_matches('}');
    wlabels
        .split(',')
        .filter(|l| !l.is_empty())
        .all(|l| klabels.contains(l))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its exit, killing it (and failing the test) if it has
/// not exited within `limit`, so a process that should refuse to start
/// cannot hang the suite instead. Returns its exit code and stderr.
#[allow(dead_code)]
pub fn run_expecting_exit(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = reader.join().unwrap_or_default();
            panic!("still running after {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap_or_default())
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One HTTP/1.1 exchange (`Connection: close`): `head` is the request line
/// and any headers, each ending in CRLF, without the final blank line;
/// `body` follows the blank line as is. Returns (status, headers, body).
/// Tolerates a reset after the response (a server refusing a body it did
/// not read).
pub fn http_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = format!("{head}Host: x\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    let _ = s.write_all(&req);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (headers, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, headers.to_string(), body.to_string())
}

/// `POST /api/<method>` with `Authorization: apikey <key>` (when given)
/// and a JSON body: (status, body parsed as JSON, or `null`).
pub fn api_post(server: &Server, method: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    let head = format!(
        "POST /api/{method} HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    let (status, _, body) = http_exchange(server.api, &head, body.as_bytes());
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Raw HTTP exchange on the client port: returns the whole response head.
pub fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

/// Opens a WebSocket offering `protocol` (if any).
pub async fn connect(server: &Server, protocol: Option<&str>) -> Ws {
    let mut req = server.ws_url().into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .expect("connect");
    if let Some(p) = protocol {
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some(p)
        );
    }
    ws
}

/// Next data or close message (pings are answered by the client library).
pub async fn next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
            .expect("websocket error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// Next JSON object (a frame may hold several, one per line).
pub struct JsonClient {
    pub ws: Ws,
    pending: std::collections::VecDeque<Value>,
    next_id: u32,
}

impl JsonClient {
    pub async fn connect(server: &Server) -> JsonClient {
        let ws = connect(server, Some("edu-matrix-v1.json")).await;
        let mut c = JsonClient {
            ws,
            pending: Default::default(),
            next_id: 1,
        };
        let r = c.call("connect", serde_json::json!({"name": "test"})).await;
        assert!(r["connect"]["client"].is_string(), "{r}");
        c
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send(&mut self, method: &str, params: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut obj = serde_json::Map::new();
        obj.insert("id".into(), id.into());
        obj.insert(method.into(), params);
        self.send_raw(&Value::Object(obj).to_string()).await;
        id
    }

    pub async fn recv(&mut self) -> Value {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return v;
            }
            match next(&mut self.ws).await {
                Message::Text(t) => {
                    for line in t.as_str().split('\n') {
                        self.pending
                            .push_back(serde_json::from_str(line).expect("valid JSON"));
                    }
                }
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Sends a command and returns its reply, queueing pushes that arrive
    /// first into `pushes`.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        let mut skipped = Vec::new();
        loop {
            let v = self.recv().await;
            if v["id"] == id {
                for s in skipped.into_iter().rev() {
                    self.pending.push_front(s);
                }
                return v;
            }
            skipped.push(v);
        }
    }

    /// True if nothing arrives within `d`.
    pub async fn recv_nothing_for(&mut self, d: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        tokio::time::timeout(d, futures_util::StreamExt::next(&mut self.ws))
            .await
            .is_err()
    }

    /// Keeps reading (so the client library answers pings) for `d`;
    /// data that arrives is kept for later.
    pub async fn idle_for(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while let Ok(m) =
            tokio::time::timeout_at(end, futures_util::StreamExt::next(&mut self.ws)).await
        {
            match m.expect("stream ended").expect("websocket error") {
                Message::Text(t) => {
                    for line in t.as_str().split('\n') {
                        self.pending
                            .push_back(serde_json::from_str(line).expect("valid JSON"));
                    }
                }
                Message::Close(f) => panic!("closed while idle: {f:?}"),
                _ => {}
            }
        }
        futures_util::SinkExt::flush(&mut self.ws).await.unwrap();
    }

    /// Next push (replies are not expected meanwhile).
    pub async fn push(&mut self) -> Value {
        let v = self.recv().await;
        assert!(v.get("push").is_some(), "expected a push, got {v}");
        v
    }

    /// Reads until the close frame; returns its code.
    pub async fn close_code(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut seen: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Text(t))) => {
                    for line in t.as_str().split('\n') {
                        seen.push(serde_json::from_str(line).unwrap());
                    }
                }
                Some(Ok(Message::Close(f))) => return (seen, f.map(|f: CloseFrame| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("error before close: {e}"),
                None => return (seen, None),
            }
        }
    }
}

/// A minimal raw WebSocket client for malformed input and for clients
/// that do not read. Over TLS ([`RawWs::connect_tls`]) the bytes are
/// decrypted by rustls and read frame by frame as on plain TCP.
pub struct RawWs {
    pub s: TcpStream,
    buf: Vec<u8>,
    tls: Option<Box<rustls::ClientConnection>>,
}

/// No whole frame arrived before the deadline.
#[derive(Debug)]
pub struct TimedOut;

pub struct RawFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    pub fn connect(server: &Server, protocol: Option<&str>) -> RawWs {
        Self::connect_with(server, protocol, None)
    }

    pub fn connect_with(
        server: &Server,
        protocol: Option<&str>,
        extensions: Option<&str>,
    ) -> RawWs {
        Self::connect_path(server, "/ws", protocol, extensions)
    }

    /// An upgrade to `path` (which may carry a query).
    pub fn connect_path(
        server: &Server,
        path: &str,
        protocol: Option<&str>,
        extensions: Option<&str>,
    ) -> RawWs {
        let mut s = TcpStream::connect(server.client).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut proto = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        if let Some(e) = extensions {
            proto.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
        }
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs {
            s,
            buf: Vec::new(),
            tls: None,
        }
    }

    /// An upgrade to `/ws` over TLS to `addr`, as `localhost`, with
    /// `config` (its roots decide which certificate is trusted). Errors
    /// when TLS fails (e.g. the certificate is not trusted) or the
    /// connection ends before the response; panics on any answer but 101.
    pub fn connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        protocol: Option<&str>,
    ) -> std::io::Result<RawWs> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut ws = RawWs {
            s,
            buf: Vec::new(),
            tls: Some(Box::new(conn)),
        };
        let proto = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
        );
        ws.write_all(req.as_bytes())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if ws.read_some(&mut b)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Ok(ws)
    }

    /// The TLS session, if this client speaks TLS.
    pub fn tls(&self) -> Option<&rustls::ClientConnection> {
        self.tls.as_deref()
    }

    /// Reads what the connection has (decrypted over TLS). Over TLS, an
    /// end of stream without close_notify is an `UnexpectedEof` error.
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            Some(c) => rustls::Stream::new(c.as_mut(), &mut self.s).read(buf),
            None => self.s.read(buf),
        }
    }

    /// Writes all of `data` (encrypted over TLS).
    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            Some(c) => {
                let mut st = rustls::Stream::new(c.as_mut(), &mut self.s);
                st.write_all(data)?;
                st.flush()
            }
            None => self.s.write_all(data),
        }
    }

    /// A client on a stream whose upgrade already succeeded (see
    /// [`upgrade_from`]).
    pub fn from_upgraded(s: TcpStream) -> RawWs {
        RawWs {
            s,
            buf: Vec::new(),
            tls: None,
        }
    }

    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(fin as u8) << 7 | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.write_all(&out).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 1, text.as_bytes());
    }

    /// Reads one server frame; None at end of stream.
    pub fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some(f) = self.take_frame() {
                return Some(f);
            }
            let mut tmp = [0u8; 65536];
            match self.read_some(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads one server frame, waiting no later than `deadline`:
    /// `Err(TimedOut)` when no whole frame arrived by then (bytes of a
    /// partial frame stay buffered), `Ok(None)` at end of stream.
    pub fn read_frame_before(&mut self, deadline: Instant) -> Result<Option<RawFrame>, TimedOut> {
        loop {
            if let Some(f) = self.take_frame() {
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TimedOut);
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 65536];
            let r = self.read_some(&mut tmp);
            self.s.set_read_timeout(Some(TIMEOUT)).unwrap();
            match r {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(TimedOut);
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Closes the TCP connection with a reset (SO_LINGER 0): no close
    /// frame, no orderly shutdown, as when a client vanishes.
    pub fn abort(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: sets an option on a socket this value owns; the pointer
        // and length describe a live `linger`.
        let rc = unsafe {
            libc::setsockopt(
                self.s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(self.s);
    }

    /// The next whole frame already buffered, if any.
    fn take_frame(&mut self) -> Option<RawFrame> {
        if self.buf.len() < 2 {
            return None;
        }
        let len7 = (self.buf[1] & 0x7f) as usize;
        let (len, hl) = match len7 {
            126 if self.buf.len() >= 4 => {
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 if self.buf.len() >= 10 => (
                u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n, 2),
        };
        if self.buf.len() < hl + len {
            return None;
        }
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
        let f = RawFrame {
            fin: self.buf[0] & 0x80 != 0,
            rsv1: self.buf[0] & 0x40 != 0,
            opcode: self.buf[0] & 0x0f,
            payload: self.buf[hl..hl + len].to_vec(),
        };
        self.buf.drain(..hl + len);
        Some(f)
    }

    /// Reads frames until a close frame; returns the data frames seen and
    /// the close code.
    pub fn until_close(&mut self) -> (Vec<RawFrame>, Option<u16>) {
        let mut seen = Vec::new();
        while let Some(f) = self.read_frame() {
            if f.opcode == 8 {
                let code = (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                return (seen, code);
            }
            seen.push(f);
        }
        (seen, None)
    }
}

/// An upgrade request on a fresh TCP connection to the client port, from
/// the loopback address `from` (any of 127.0.0.0/8; `None`: the usual
/// 127.0.0.1), with `prefix` sent first (a PROXY header) and `headers`
/// (each ending in CRLF) added to the request. Returns the response head
/// (empty if the server closed without one) and the stream, positioned
/// after the head.
pub fn upgrade_from(
    server: &Server,
    from: Option<std::net::IpAddr>,
    prefix: &[u8],
    headers: &str,
) -> (String, TcpStream) {
    let mut s = connect_from(server.client, from);
    let mut req = prefix.to_vec();
    req.extend_from_slice(
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: edu-matrix-v1.json\r\n{headers}\r\n"
        )
        .as_bytes(),
    );
    let _ = s.write_all(&req);
    let head = read_head(&mut s);
    (head, s)
}

/// A TCP connection to `addr` from the local address `from` (if given).
pub fn connect_from(addr: SocketAddr, from: Option<std::net::IpAddr>) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(ip) = from {
        s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    }
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Reads an HTTP response head (through the blank line); what arrived if
/// the stream ends or fails first.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Waits until every thread of process `pid` shows state `T` (stopped) in
/// `/proc/<pid>/task/*/stat`.
#[allow(dead_code)]
pub fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process runs");
        let all_stopped = tasks.filter_map(Result::ok).all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
            })
        });
        if all_stopped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
