//! The SSE fallback on a shard (docs/PROTOCOL.md, "SSE fallback"): event
//! streams are ordinary connections whose session speaks the JSON form
//! and whose outbox writes server-sent events; command posts are short
//! connections whose body is run as a message of the stream they name.
//!
//! A post read on the stream's own shard is run at once. A post read on
//! another shard goes to the stream's shard through its inbox
//! ([`ShardMsg::SsePost`]); one read on another node of the cluster (the
//! session id names the node) goes there on NATS (`PostFrame`), and its
//! stream's shard answers the same way (`AnswerFrame`). Either way the
//! `204` waits for the answer ([`Inbox::sse_answered`]), so a `204` always
//! means "taken, in order": a client that sends its next post only after
//! the previous `204` has its commands run in the order it sent them,
//! whichever shards and nodes the posts land on. A post whose answer never
//! comes (a frame lost with a node) is closed without an answer at its
//! `handshake_timeout`, as one whose body never came.
//!
//! [`Inbox::sse_answered`]: crate::bridge::Inbox::sse_answered

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::core::{Shard, slot_ref};

use crate::bridge::{PostReply, ShardMsg, SsePost};
use crate::engine::cluster::sse::{AnswerFrame, PostFrame};
use crate::engine::cluster::subject::is_valid_name;
use crate::engine::session::Post;
use crate::engine::sse::{self, PostAnswer, SessionId};
use crate::engine::subs::ConnRef;
use crate::engine::ws::handshake::Endpoint;
use crate::metrics::{PostResult, SseMetrics};

/// A shard's streams and the posts it passed on.
pub(crate) struct ShardSse {
    /// Open streams by slot: generation and secret.
    streams: HashMap<u32, (u32, [u8; 16])>,
    /// Posts waiting for another shard's answer, with the header lines
    /// their answer carries.
    waiting: HashMap<ConnRef, Box<[u8]>>,
    /// The node's name in session ids: its cluster name, or without a
    /// cluster the configured `node_name` made a valid name.
    node: Arc<str>,
    pub(crate) metrics: SseMetrics,
}

impl ShardSse {
    pub(crate) fn new(node: Arc<str>, metrics: SseMetrics) -> Self {
        Self {
            streams: HashMap::new(),
            waiting: HashMap::new(),
            node,
            metrics,
        }
    }

    /// Whether this shard holds no stream and no waiting post (the common
    /// case: nothing to forget when a connection ends).
    pub(crate) fn is_idle(&self) -> bool {
        self.streams.is_empty() && self.waiting.is_empty()
    }
}

/// `name` as a node name for session ids (`A-Z a-z 0-9 _ -`, 1-64
/// bytes): other bytes become `-`.
pub(crate) fn id_node_name(name: &str) -> Arc<str> {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push_str("wsedge");
    }
    debug_assert!(is_valid_name(&out));
    Arc::from(out)
}

impl From<PostAnswer> for PostResult {
    fn from(a: PostAnswer) -> Self {
        match a {
            PostAnswer::Taken => PostResult::Ok,
            PostAnswer::Unknown => PostResult::Unknown,
            PostAnswer::Busy => PostResult::Overloaded,
        }
    }
}

/// The complete answer to a post.
fn answer(result: PostResult, headers: &[u8]) -> Bytes {
    let (status, body): (&str, &str) = match result {
        PostResult::Ok => ("204 No Content", ""),
        PostResult::Unknown => ("404 Not Found", "no such stream\n"),
        PostResult::Overloaded | PostResult::Expired => {
            ("503 Service Unavailable", "busy, retry later\n")
        }
    };
    let mut out = Vec::with_capacity(160 + headers.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(headers);
    if result == PostResult::Overloaded {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    if !body.is_empty() {
        // A 204 carries neither a body nor a Content-Length (RFC 9110).
        out.extend_from_slice(b"Content-Type: text/plain\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out.into()
}

impl Shard {
    /// A stream `c` was opened: it gets its session id (the capability to
    /// post to it) as its first event.
    pub(super) fn sse_opened(&mut self, c: ConnRef) {
        let id = SessionId {
            shard: self.id as u16,
            idx: c.idx,
            generation: c.generation,
            secret: rand::random(),
        };
        let data = serde_json::json!({
            "session": id.encode(&self.sse.node),
            "node": self.ctx.config.node_name,
        });
        let mut event = Vec::with_capacity(128);
        sse::chunk(
            format!("event: session\ndata: {data}\n\n").as_bytes(),
            &mut event,
        );
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        conn.session.outbox.push_prepared(event.into());
        self.sse.streams.insert(c.idx, (c.generation, id.secret));
        self.sse.metrics.stream(true);
        self.mark_dirty(c);
    }

    /// Connection `c` is being freed: forget it if it was a stream or a
    /// waiting post.
    pub(super) fn sse_forget(&mut self, c: ConnRef) {
        if self
            .sse
            .streams
            .get(&c.idx)
            .is_some_and(|&(generation, _)| generation == c.generation)
        {
            self.sse.streams.remove(&c.idx);
            self.sse.metrics.stream(false);
        }
        self.sse.waiting.remove(&c);
    }

    /// Body bytes of post `c`.
    pub(super) fn on_post_bytes(&mut self, c: ConnRef, buf: &[u8]) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let Post::Complete {
            session,
            body,
            answer_headers,
        } = conn.session.post_bytes(buf)
        else {
            return;
        };
        let Some((node, target)) = SessionId::parse(&session) else {
            return self.answer_post(c, PostResult::Unknown, &answer_headers);
        };
        if node != &*self.sse.node {
            return self.post_to_node(c, node, target, body, answer_headers);
        }
        if target.shard as usize == self.id {
            let result = self.run_post(&target, &body);
            return self.answer_post(c, result, &answer_headers);
        }
        let Some(inbox) = self.ctx.inboxes.get(target.shard as usize) else {
            return self.answer_post(c, PostResult::Unknown, &answer_headers);
        };
        let msg = ShardMsg::SsePost(Box::new(SsePost {
            target,
            body,
            reply: PostReply::Shard {
                from: self.id,
                post: c,
            },
        }));
        match inbox.push(msg) {
            Ok(()) => {
                self.sse.waiting.insert(c, answer_headers);
            }
            Err(_) => {
                self.metrics
                    .queue_full(crate::bridge::ShardMsgKind::SsePost);
                self.answer_post(c, PostResult::Overloaded, &answer_headers);
            }
        }
    }

    /// Post `c` names a stream of another node: passed there if that node
    /// is live in this node's cluster; otherwise there is no such stream
    /// (the node is gone, or this node is in no cluster).
    fn post_to_node(
        &mut self,
        c: ConnRef,
        node: &str,
        target: SessionId,
        body: Vec<u8>,
        answer_headers: Box<[u8]>,
    ) {
        let Some(cluster) = self.cluster.as_ref().filter(|cl| cl.is_live(node)) else {
            return self.answer_post(c, PostResult::Unknown, &answer_headers);
        };
        let frame = PostFrame {
            from_node: cluster.self_node().clone(),
            from_shard: self.id as u16,
            post: c,
            target,
            body: body.into(),
        };
        if cluster.send_to_node(Arc::from(node), frame.encode()) {
            self.sse.waiting.insert(c, answer_headers);
        } else {
            self.answer_post(c, PostResult::Overloaded, &answer_headers);
        }
    }

    /// Runs a post's commands on the stream it names, if that stream is
    /// this shard's, still open, and the secret matches.
    fn run_post(&mut self, target: &SessionId, body: &[u8]) -> PostResult {
        let Some(&(generation, secret)) = self.sse.streams.get(&target.idx) else {
            return PostResult::Unknown;
        };
        let ours = SessionId {
            shard: self.id as u16,
            idx: target.idx,
            generation,
            secret,
        };
        if !ours.matches(target) {
            return PostResult::Unknown;
        }
        let stream = ConnRef {
            idx: target.idx,
            generation,
        };
        let open = slot_ref(&self.conns, stream).is_some_and(|conn| {
            conn.session.is_open() && conn.session.endpoint() == Endpoint::SseStream
        });
        if !open {
            return PostResult::Unknown;
        }
        self.stats.messages_in += 1;
        self.on_client_message(stream, true, body);
        PostResult::Ok
    }

    /// Another shard or node passed us a post for one of our streams.
    pub(crate) fn on_sse_post(&mut self, post: SsePost) {
        let answer = match self.run_post(&post.target, &post.body) {
            PostResult::Ok => PostAnswer::Taken,
            _ => PostAnswer::Unknown,
        };
        self.answer_passed_post(post.reply, answer);
    }

    /// Sends the answer to a post passed to this shard. An answer that
    /// cannot be sent (the cluster queue is full) leaves the post to its
    /// deadline.
    pub(crate) fn answer_passed_post(&mut self, reply: PostReply, answer: PostAnswer) {
        match reply {
            PostReply::Shard { from, post } => {
                if let Some(inbox) = self.ctx.inboxes.get(from) {
                    inbox.sse_answered(post, answer);
                }
            }
            PostReply::Node { node, shard, post } => {
                if let Some(cluster) = &self.cluster {
                    let frame = AnswerFrame {
                        shard,
                        post,
                        answer,
                    };
                    let _ = cluster.send_to_node(node, frame.encode());
                }
            }
        }
    }

    /// The stream's shard answered a post we passed on.
    pub(super) fn on_sse_answer(&mut self, c: ConnRef, answer: PostAnswer) {
        let Some(headers) = self.sse.waiting.remove(&c) else {
            return; // the post's connection is gone
        };
        self.answer_post(c, answer.into(), &headers);
    }

    /// Answers post `c` and closes it.
    fn answer_post(&mut self, c: ConnRef, result: PostResult, headers: &[u8]) {
        self.sse.metrics.post(result);
        let now = self.now_tick;
        let Some(conn) = super::core::slot(&mut self.conns, c) else {
            return;
        };
        conn.session
            .answer_post(now, answer(result, headers), &self.session_cfg);
        self.closing(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_http_responses() {
        let cors = b"Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n";
        let ok = answer(PostResult::Ok, cors);
        assert_eq!(
            &ok[..],
            b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        );
        let text = String::from_utf8(answer(PostResult::Overloaded, b"").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("Retry-After: 1\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{text}"
        );
        let text = String::from_utf8(answer(PostResult::Unknown, b"").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    }
}
