//! A JSON-protocol WebSocket client on the raw frame reader: no library
//! between the test and the bytes, so a cut, glued, fragmented or
//! compressed frame fails the test instead of being hidden.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{RawWs, Server, TimedOut};

/// How long any one expected message may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A JSON-protocol client on [`RawWs`]: it reads frame by frame, checks
/// each is a whole uncompressed text frame whose `\n`-separated lines are
/// one JSON object each, and fails a wait after [`WAIT`] with everything
/// it received.
pub struct RawJson {
    pub raw: RawWs,
    /// Objects received and not yet taken, in arrival order, each with
    /// the number of objects its frame held.
    pending: VecDeque<(Value, usize)>,
    /// Every frame received, as text, for failure messages.
    log: Vec<String>,
    next_id: u32,
    /// The `client` id from the connect reply.
    pub id: String,
    /// The shard serving this connection (from its client id).
    pub shard: usize,
}

impl RawJson {
    /// Connects with `params` as the `connect` command's; returns the
    /// client and the whole connect reply.
    pub fn connect(server: &Server, params: Value) -> (RawJson, Value) {
        let mut c = RawJson::unconnected(RawWs::connect(server, Some("edu-matrix-v1.json")));
        let reply = c.call("connect", params);
        let id = reply["connect"]["client"]
            .as_str()
            .unwrap_or_else(|| panic!("connect reply: {reply}"))
            .to_string();
        // "<node nonce>.<shard>.<slot>"
        let parts: Vec<&str> = id.split('.').collect();
        assert_eq!(parts.len(), 3, "client id {id:?}");
        c.shard = parts[1].parse().unwrap();
        c.id = id;
        (c, reply)
    }

    /// A client on an upgraded connection that has not sent `connect`.
    pub fn unconnected(raw: RawWs) -> RawJson {
        RawJson {
            raw,
            pending: VecDeque::new(),
            log: Vec::new(),
            next_id: 1,
            id: String::new(),
            shard: usize::MAX,
        }
    }

    /// Connects as `user` (with `info`, if any).
    pub fn user(server: &Server, user: &str, info: Option<Value>) -> RawJson {
        let mut params = json!({"user": user});
        if let Some(i) = info {
            params["info"] = i;
        }
        RawJson::connect(server, params).0
    }

    pub fn anon(server: &Server) -> RawJson {
        RawJson::connect(server, json!({})).0
    }

    /// Sends one command; returns its id.
    pub fn send(&mut self, method: &str, params: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut obj = serde_json::Map::new();
        obj.insert("id".into(), id.into());
        obj.insert(method.into(), params);
        self.raw.send_text(&Value::Object(obj).to_string());
        id
    }

    /// Reads one frame into `pending`; false if none came by `deadline`.
    pub fn fill(&mut self, deadline: Instant) -> bool {
        let frame = match self.raw.read_frame_before(deadline) {
            Err(TimedOut) => return false,
            Ok(None) => panic!("connection {} ended; received:\n{}", self.id, self.seen()),
            Ok(Some(f)) => f,
        };
        match frame.opcode {
            // Ping: answer it (control frames may come between data frames).
            9 => {
                self.raw.send_frame(true, 10, &frame.payload);
                return true;
            }
            10 => return true,
            8 => panic!(
                "connection {} closed ({:?}); received:\n{}",
                self.id,
                frame.payload,
                self.seen()
            ),
            1 => {}
            op => panic!(
                "opcode {op} on a JSON connection; received:\n{}",
                self.seen()
            ),
        }
        assert!(frame.fin, "server data frames are whole messages");
        assert!(!frame.rsv1, "no compression was negotiated");
        let text = String::from_utf8(frame.payload).expect("text frames are UTF-8");
        self.log.push(text.clone());
        let lines: Vec<&str> = text.split('\n').collect();
        for line in &lines {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "a line that is not one JSON value ({e}): {line:?}\nreceived:\n{}",
                    self.seen()
                )
            });
            assert!(v.is_object(), "{line}");
            self.pending.push_back((v, lines.len()));
        }
        true
    }

    /// The next object received by `deadline`, `Err(code)` if the server
    /// closed the connection (its close code), `Ok(None)` if nothing came.
    /// For clients that must survive a close (reconnect and recover).
    #[allow(dead_code)]
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<Value>, Option<u16>> {
        loop {
            if let Some((v, _)) = self.pending.pop_front() {
                return Ok(Some(v));
            }
            let frame = match self.raw.read_frame_before(deadline) {
                Err(TimedOut) => return Ok(None),
                Ok(None) => return Err(None),
                Ok(Some(f)) => f,
            };
            match frame.opcode {
                8 => {
                    let code = (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                    return Err(code);
                }
                9 => self.raw.send_frame(true, 10, &frame.payload),
                1 => {
                    let text = String::from_utf8(frame.payload).expect("text frames are UTF-8");
                    self.log.push(text.clone());
                    for line in text.split('\n') {
                        let v: Value = serde_json::from_str(line).expect("one JSON value a line");
                        self.pending.push_back((v, 1));
                    }
                }
                _ => {}
            }
        }
    }

    pub fn seen(&self) -> String {
        self.log.join("\n---\n")
    }

    /// Takes the first object (received or arriving within [`WAIT`]) that
    /// `want` accepts; the others stay pending in order.
    pub fn wait(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        self.wait_framed(what, want).0
    }

    /// [`RawJson::wait`], with the number of objects its frame held.
    pub fn wait_framed(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> (Value, usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.pending.iter().position(|(v, _)| want(v)) {
                return self.pending.remove(i).unwrap();
            }
            if !self.fill(deadline) {
                panic!(
                    "client {} (shard {}): no {what} within {WAIT:?}; received:\n{}",
                    self.id,
                    self.shard,
                    self.seen()
                );
            }
        }
    }

    /// Waits for the reply to command `id` and checks that no publication
    /// on `channel` arrived before it (a subscription's pushes follow its
    /// reply).
    pub fn reply_before_pubs(&mut self, id: u32, channel: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.pending.iter().position(|(v, _)| v["id"] == id) {
                let early = self.pending.iter().take(i).find(|(v, _)| {
                    v["push"]["channel"] == channel && v["push"].get("pub").is_some()
                });
                assert!(
                    early.is_none(),
                    "a publication before the subscribe reply; received:\n{}",
                    self.seen()
                );
                return self.pending.remove(i).unwrap().0;
            }
            if !self.fill(deadline) {
                panic!(
                    "no reply to #{id} within {WAIT:?}; received:\n{}",
                    self.seen()
                );
            }
        }
    }

    /// Sends a command and waits for its reply.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        self.wait(&format!("reply to {method} #{id}"), |v| v["id"] == id)
    }

    /// Every `pub` push on `channel` through offset `last`, in arrival
    /// order, each checked to be alone in its frame ("each publication is
    /// its own frame").
    pub fn pubs_through(&mut self, channel: &str, last: u64) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let (v, n) = self.wait_framed(&format!("publication {last} on {channel}"), |v| {
                v["push"]["channel"] == channel && v["push"].get("pub").is_some()
            });
            assert_eq!(n, 1, "a publication is its own frame: {v}");
            let offset = v["push"]["pub"]["offset"].as_u64().unwrap_or(0);
            got.push(v);
            if offset >= last {
                return got;
            }
        }
    }

    /// Pushes of `kind` on `channel` received so far (taken), after a ping
    /// round trip (so whatever was queued before it has arrived).
    pub fn drain_pushes(&mut self, channel: &str, kind: &str) -> Vec<Value> {
        let r = self.call("ping", json!({}));
        assert_eq!(r["ping"], json!({}), "{r}");
        let (taken, kept) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(v, _)| v["push"]["channel"] == channel && v["push"].get(kind).is_some());
        self.pending = kept;
        taken.into_iter().map(|(v, _)| v).collect()
    }

    /// A WebSocket close handshake: sends 1000, reads to the echo.
    pub fn close(mut self) {
        self.raw.send_frame(true, 8, &1000u16.to_be_bytes());
        let (_, code) = self.raw.until_close();
        assert_eq!(code, Some(1000));
    }
}
