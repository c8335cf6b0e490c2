//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), parsed incrementally
//! with a hard cap on the request head. No I/O: bytes in, a decision out.

use std::ops::Range;

use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::deflate::{self, Deflate, DeflateConfig};
use crate::engine::access::Refusal;

/// Subprotocol for the binary (FlatBuffers) form of the wire protocol.
pub const PROTOCOL_BINARY: &str = "edu-matrix-v1";
/// Subprotocol for the JSON form of the wire protocol.
pub const PROTOCOL_JSON: &str = "edu-matrix-v1.json";

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 64;

/// The wire form chosen for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Text frames carrying JSON (`edu-matrix-v1.json`, or no subprotocol).
    Json,
    /// Binary frames carrying FlatBuffers (`edu-matrix-v1`).
    Binary,
}

/// Which endpoint a request upgraded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The client endpoint (`/ws`): the wire protocol.
    Client,
    /// The conformance echo endpoint (off unless configured).
    Echo,
    /// The SSE fallback's event stream (`GET <client path>/sse`): the wire
    /// protocol's JSON form as server-sent events (docs/PROTOCOL.md, "SSE
    /// fallback").
    SseStream,
    /// A command post to an event stream (`POST <client path>/sse/<id>`):
    /// a body of JSON commands for the stream's session, answered with a
    /// status and closed.
    SsePost,
}

impl Endpoint {
    /// Whether the endpoint speaks the wire protocol (commands, replies,
    /// pushes): the WebSocket client endpoint and the SSE stream.
    pub fn serves_protocol(self) -> bool {
        matches!(self, Endpoint::Client | Endpoint::SseStream)
    }
}

/// A successful upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Endpoint the path selected.
    pub endpoint: Endpoint,
    /// Wire form negotiated through `Sec-WebSocket-Protocol`.
    pub format: WireFormat,
    /// permessage-deflate, if negotiated.
    pub deflate: Option<Deflate>,
    /// The complete `101 Switching Protocols` response.
    pub response: Vec<u8>,
    /// Bytes the client sent after the request head (already frames).
    pub head_len: usize,
    /// A token carried by the request: a `bearer.<token>` entry of
    /// `Sec-WebSocket-Protocol` (never echoed back), else a `token=` query
    /// parameter. `connect` uses it when it carries none itself.
    pub token: Option<Box<str>>,
    /// Where the `Origin` value sits in the request head (the first such
    /// header), for the `allowed_origins` check.
    pub origin: Option<Range<usize>>,
    /// Where each `X-Forwarded-For` value sits in the request head, in
    /// request order (empty, and not allocated, without the header). Read
    /// only for connections from a trusted proxy.
    pub forwarded_for: Vec<Range<usize>>,
    /// A command post: the stream session it names and its body length.
    pub post: Option<SsePostHead>,
}

/// What the head of a command post (`POST <client path>/sse/<id>`) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsePostHead {
    /// The stream session id (the path's last segment, not yet checked).
    pub session: Box<str>,
    /// The body's length (`Content-Length`), at most the configured
    /// maximum.
    pub body_len: usize,
    /// Header lines the answer carries (CORS for a cross-origin page),
    /// each ending in CRLF.
    pub answer_headers: Box<[u8]>,
}

/// An accepted upgrade with the request head it was parsed from: what the
/// access rules look at before the `101` goes out.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    /// The parsed upgrade.
    pub upgrade: &'a Upgrade,
    /// The request head (`upgrade.head_len` bytes).
    pub head: &'a [u8],
}

impl<'a> UpgradeRequest<'a> {
    /// The `Origin` value, if the request has one.
    pub fn origin(&self) -> Option<&'a [u8]> {
        let head = self.head;
        self.upgrade.origin.clone().and_then(move |r| head.get(r))
    }

    /// The `X-Forwarded-For` values, in request order.
    pub fn forwarded_for(&self) -> impl DoubleEndedIterator<Item = &'a [u8]> + use<'a> {
        let head = self.head;
        self.upgrade
            .forwarded_for
            .iter()
            .filter_map(move |r| head.get(r.clone()))
    }
}

/// The `Sec-WebSocket-Protocol` prefix that carries a token.
pub const BEARER_PREFIX: &str = "bearer.";

/// The token of a request: `bearer.<token>` in `Sec-WebSocket-Protocol`,
/// else `?token=` (taken as is: tokens are URL-safe). Empty or over 8 KiB
/// counts as none.
fn request_token(req: &httparse::Request<'_, '_>, query: Option<&str>) -> Option<Box<str>> {
    let from_protocol =
        tokens(req, "sec-websocket-protocol").find_map(|p| p.strip_prefix(BEARER_PREFIX));
    let from_query = || query?.split('&').find_map(|kv| kv.strip_prefix("token="));
    from_protocol
        .or_else(from_query)
        .filter(|t| !t.is_empty() && t.len() <= 8192)
        .map(Box::from)
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: malformed request or upgrade headers.
    BadRequest,
    /// 404: a path that is not a WebSocket endpoint.
    NotFound,
    /// 405: a method other than GET.
    MethodNotAllowed,
    /// 426: a plain GET (no upgrade) on the WebSocket path, or an
    /// unsupported `Sec-WebSocket-Version`.
    UpgradeRequired,
    /// 431: the request head is larger than the cap.
    HeadersTooLarge,
    /// 503: the server refuses new connections (limits or draining, or a
    /// per-IP cap of `[access]`).
    Unavailable,
    /// 403: the `[access]` rules refuse the client's address or origin.
    Forbidden,
    /// 429: the client's address opens connections faster than `[access]`
    /// allows.
    TooManyRequests,
    /// 413: an SSE command post whose body is larger than
    /// `max_message_size`.
    PayloadTooLarge,
}

impl Reject {
    /// Every refusal, for metrics (each has a series from the start).
    pub const ALL: [Reject; 9] = [
        Reject::BadRequest,
        Reject::NotFound,
        Reject::MethodNotAllowed,
        Reject::UpgradeRequired,
        Reject::HeadersTooLarge,
        Reject::Unavailable,
        Reject::Forbidden,
        Reject::TooManyRequests,
        Reject::PayloadTooLarge,
    ];

    /// The handshake result an `[access]` refusal counts as (by its HTTP
    /// status).
    pub fn of_refusal(r: Refusal) -> Reject {
        match r.status() {
            403 => Reject::Forbidden,
            429 => Reject::TooManyRequests,
            503 => Reject::Unavailable,
            _ => Reject::BadRequest,
        }
    }

    /// HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest => 400,
            Reject::NotFound => 404,
            Reject::MethodNotAllowed => 405,
            Reject::UpgradeRequired => 426,
            Reject::HeadersTooLarge => 431,
            Reject::Unavailable => 503,
            Reject::Forbidden => 403,
            Reject::TooManyRequests => 429,
            Reject::PayloadTooLarge => 413,
        }
    }

    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::UpgradeRequired => "upgrade_required",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::Unavailable => "unavailable",
            Reject::Forbidden => "forbidden",
            Reject::TooManyRequests => "too_many_requests",
            Reject::PayloadTooLarge => "payload_too_large",
        }
    }

    /// The complete HTTP response for this refusal.
    pub fn response(self) -> Vec<u8> {
        let (reason, body, extra): (&str, &str, &str) = match self {
            Reject::BadRequest => ("Bad Request", "bad websocket upgrade request\n", ""),
            Reject::NotFound => ("Not Found", "not found\n", ""),
            Reject::MethodNotAllowed => (
                "Method Not Allowed",
                "use GET (POST for SSE command posts)\n",
                "Allow: GET, POST\r\n",
            ),
            Reject::UpgradeRequired => (
                "Upgrade Required",
                "this endpoint speaks WebSocket (version 13) only\n",
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
            ),
            Reject::HeadersTooLarge => (
                "Request Header Fields Too Large",
                "request head too large\n",
                "",
            ),
            Reject::Unavailable => (
                "Service Unavailable",
                "server at capacity, retry later\n",
                "Retry-After: 1\r\n",
            ),
            Reject::Forbidden => ("Forbidden", "forbidden\n", ""),
            Reject::TooManyRequests => (
                "Too Many Requests",
                "too many connections, retry later\n",
                "Retry-After: 1\r\n",
            ),
            Reject::PayloadTooLarge => ("Payload Too Large", "body too large\n", ""),
        };
        format!(
            "HTTP/1.1 {} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status(),
            body.len()
        )
        .into_bytes()
    }
}

/// Outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is incomplete; feed more bytes.
    Partial,
    /// Upgrade accepted.
    Upgrade(Upgrade),
    /// Request refused.
    Reject(Reject),
}

/// Settings the parser needs.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// The client WebSocket path, e.g. `/ws`.
    pub client_path: String,
    /// The optional echo path for conformance runs.
    pub echo_path: Option<String>,
    /// Largest request head accepted, in bytes.
    pub max_head_bytes: usize,
    /// Whether permessage-deflate may be negotiated.
    pub deflate: DeflateConfig,
    /// Whether the SSE fallback's endpoints (`<client path>/sse`) answer.
    pub sse: bool,
    /// Largest SSE command post body, in bytes (`max_message_size`).
    pub max_post_body: usize,
}

/// Looks at the request bytes accumulated so far (`buf` holds everything
/// received on the connection). Cheap to call repeatedly: the head is only
/// parsed once its terminating blank line has arrived.
pub fn parse_request(buf: &[u8], cfg: &HandshakeConfig) -> Parsed {
    let end = match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(i) => i + 4,
        None if buf.len() >= cfg.max_head_bytes => return Parsed::Reject(Reject::HeadersTooLarge),
        None => return Parsed::Partial,
    };
    if end > cfg.max_head_bytes {
        return Parsed::Reject(Reject::HeadersTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(Reject::HeadersTooLarge),
        Err(_) => return Parsed::Reject(Reject::BadRequest),
    }
    match decide(&req, cfg) {
        Ok(mut up) => {
            up.head_len = end;
            // Where a header value sits in `buf` (httparse hands out
            // subslices of it).
            let span = |v: &[u8]| {
                let at = v.as_ptr() as usize - buf.as_ptr() as usize;
                at..at + v.len()
            };
            up.origin = header(&req, "origin").map(span);
            up.forwarded_for = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                .map(|h| span(h.value))
                .collect();
            Parsed::Upgrade(up)
        }
        Err(r) => Parsed::Reject(r),
    }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Comma-separated tokens of every header named `name`, trimmed.
fn tokens<'a>(req: &'a httparse::Request<'_, '_>, name: &'a str) -> impl Iterator<Item = &'a str> {
    req.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn decide(req: &httparse::Request<'_, '_>, cfg: &HandshakeConfig) -> Result<Upgrade, Reject> {
    let path = req.path.ok_or(Reject::BadRequest)?;
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let endpoint = if path == cfg.client_path {
        Endpoint::Client
    } else if cfg.echo_path.as_deref() == Some(path) {
        Endpoint::Echo
    } else if let Some(sse) = sse_path(path, cfg) {
        return decide_sse(req, sse, cfg);
    } else {
        return Err(Reject::NotFound);
    };
    if req.method != Some("GET") {
        return Err(Reject::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(Reject::BadRequest);
    }
    let wants_upgrade = tokens(req, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        // A plain GET (or an upgrade to something else).
        return Err(if header(req, "upgrade").is_none() {
            Reject::UpgradeRequired
        } else {
            Reject::BadRequest
        });
    }
    if !tokens(req, "connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(Reject::BadRequest);
    }
    if header(req, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Reject::UpgradeRequired);
    }
    let key = header(req, "sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or(Reject::BadRequest)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(Reject::BadRequest),
    }
    let mut protocol = None;
    if endpoint == Endpoint::Client {
        protocol = tokens(req, "sec-websocket-protocol")
            .find(|p| *p == PROTOCOL_BINARY || *p == PROTOCOL_JSON);
    }
    let format = match protocol {
        Some(PROTOCOL_BINARY) => WireFormat::Binary,
        _ => WireFormat::Json,
    };
    let deflate = deflate::negotiate(tokens(req, "sec-websocket-extensions"), &cfg.deflate);
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept_key(key).as_bytes());
    response.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(p.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    if let Some((_, ext)) = &deflate {
        response.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        response.extend_from_slice(ext.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    let token = match endpoint {
        Endpoint::Client => request_token(req, query),
        _ => None,
    };
    Ok(Upgrade {
        endpoint,
        format,
        deflate: deflate.map(|(d, _)| d),
        response,
        head_len: 0,
        token,
        origin: None,
        forwarded_for: Vec::new(),
        post: None,
    })
}

/// Which SSE endpoint a path names: `<client path>/sse` (None) or
/// `<client path>/sse/<id>` (Some(id)).
enum SsePath<'a> {
    Stream,
    Post(&'a str),
}

fn sse_path<'a>(path: &'a str, cfg: &HandshakeConfig) -> Option<SsePath<'a>> {
    if !cfg.sse {
        return None;
    }
    let rest = path.strip_prefix(cfg.client_path.as_str())?;
    let rest = rest.strip_prefix("/sse")?;
    match rest {
        "" => Some(SsePath::Stream),
        _ => {
            let id = rest.strip_prefix('/')?;
            (!id.is_empty() && !id.contains('/')).then_some(SsePath::Post(id))
        }
    }
}

/// The stream's answer head: a chunked `text/event-stream` that no proxy
/// should buffer or cache.
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-store\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n";

/// The SSE endpoints. Nothing here is a WebSocket upgrade: the stream is a
/// GET answered with a never-ending chunked body, a post a POST with a
/// body of commands. A cross-origin page gets CORS headers naming its
/// origin (the `[access]` origin allow-list decides, as for WebSocket).
fn decide_sse(
    req: &httparse::Request<'_, '_>,
    which: SsePath<'_>,
    cfg: &HandshakeConfig,
) -> Result<Upgrade, Reject> {
    if req.version != Some(1) {
        return Err(Reject::BadRequest);
    }
    let mut cors = Vec::new();
    if let Some(origin) = header(req, "origin") {
        cors.extend_from_slice(b"Access-Control-Allow-Origin: ");
        cors.extend_from_slice(origin);
        cors.extend_from_slice(b"\r\nVary: Origin\r\n");
    }
    let (endpoint, response, post) = match which {
        SsePath::Stream => {
            if req.method != Some("GET") {
                return Err(Reject::MethodNotAllowed);
            }
            let mut response = Vec::with_capacity(SSE_HEAD.len() + cors.len() + 2);
            response.extend_from_slice(SSE_HEAD);
            response.extend_from_slice(&cors);
            response.extend_from_slice(b"\r\n");
            (Endpoint::SseStream, response, None)
        }
        SsePath::Post(id) => {
            if req.method != Some("POST") {
                return Err(Reject::MethodNotAllowed);
            }
            // A body of known length only: no chunked request bodies.
            if header(req, "transfer-encoding").is_some() {
                return Err(Reject::BadRequest);
            }
            let mut lengths = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
            let len = lengths.next().ok_or(Reject::BadRequest)?.value;
            if lengths.next().is_some() {
                return Err(Reject::BadRequest);
            }
            let body_len: usize = std::str::from_utf8(len.trim_ascii())
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or(Reject::BadRequest)?;
            if body_len == 0 {
                return Err(Reject::BadRequest);
            }
            if body_len > cfg.max_post_body {
                return Err(Reject::PayloadTooLarge);
            }
            let post = SsePostHead {
                session: id.into(),
                body_len,
                answer_headers: cors.into_boxed_slice(),
            };
            (Endpoint::SsePost, Vec::new(), Some(post))
        }
    };
    Ok(Upgrade {
        endpoint,
        format: WireFormat::Json,
        deflate: None,
        response,
        head_len: 0,
        token: None,
        origin: None,
        forwarded_for: Vec::new(),
        post,
    })
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HandshakeConfig {
        HandshakeConfig {
            client_path: "/ws".into(),
            echo_path: Some("/echo".into()),
            max_head_bytes: 1024,
            deflate: DeflateConfig { enabled: true },
            sse: true,
            max_post_body: 100,
        }
    }

    fn request(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_token_rides_the_protocol_header_or_the_query_and_is_never_echoed() {
        let up = |req: Vec<u8>| match parse_request(&req, &cfg()) {
            Parsed::Upgrade(u) => u,
            other => panic!("{other:?}"),
        };
        let u = up(request(
            "/ws",
            "Sec-WebSocket-Protocol: edu-matrix-v1.json, bearer.aa.bb.cc\r\n",
        ));
        assert_eq!(u.token.as_deref(), Some("aa.bb.cc"));
        assert_eq!(u.format, WireFormat::Json);
        let head = String::from_utf8(u.response).unwrap();
        assert!(
            head.contains("Sec-WebSocket-Protocol: edu-matrix-v1.json\r\n"),
            "{head}"
        );
        assert!(!head.contains("aa.bb.cc"), "{head}");
        // The header wins over the query.
        let u = up(request(
            "/ws?x=1&token=qq",
            "Sec-WebSocket-Protocol: bearer.hh, edu-matrix-v1\r\n",
        ));
        assert_eq!(
            (u.token.as_deref(), u.format),
            (Some("hh"), WireFormat::Binary)
        );
        let u = up(request("/ws?x=1&token=qq", ""));
        assert_eq!(u.token.as_deref(), Some("qq"));
        // Empty, absent, or on the echo endpoint: none.
        assert_eq!(up(request("/ws?token=", "")).token, None);
        assert_eq!(up(request("/ws", "")).token, None);
        assert_eq!(up(request("/echo?token=qq", "")).token, None);
    }

    #[test]
    fn origin_and_forwarded_for_are_found_in_the_head() {
        let req = request(
            "/ws",
            "Origin: https://app.example.com\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n\
             x-forwarded-for:10.0.0.3\r\nOrigin: https://second.example\r\n",
        );
        let Parsed::Upgrade(up) = parse_request(&req, &cfg()) else {
            panic!()
        };
        let view = UpgradeRequest {
            upgrade: &up,
            head: &req[..up.head_len],
        };
        // The first Origin; every X-Forwarded-For line, in order, trimmed.
        assert_eq!(view.origin(), Some(&b"https://app.example.com"[..]));
        let xff: Vec<&[u8]> = view.forwarded_for().collect();
        assert_eq!(xff, [&b"203.0.113.7, 10.0.0.2"[..], b"10.0.0.3"]);
        assert_eq!(view.forwarded_for().next_back(), Some(&b"10.0.0.3"[..]));
        // Neither header: nothing recorded, nothing allocated.
        let plain = request("/ws", "");
        let Parsed::Upgrade(up) = parse_request(&plain, &cfg()) else {
            panic!()
        };
        assert_eq!(up.origin, None);
        assert_eq!(up.forwarded_for.capacity(), 0);
    }

    #[test]
    fn access_refusals_count_as_their_status() {
        for r in Refusal::ALL {
            let reject = Reject::of_refusal(r);
            assert_eq!(reject.status(), r.status(), "{r:?}");
            assert!(Reject::ALL.contains(&reject));
            let text = String::from_utf8(reject.response()).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {} ", r.status())));
        }
    }

    #[test]
    fn rfc_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_at_every_split() {
        let req = request(
            "/ws?token=abc",
            "Sec-WebSocket-Protocol: foo, edu-matrix-v1\r\n",
        );
        for i in 0..req.len() {
            assert_eq!(
                parse_request(&req[..i], &cfg()),
                Parsed::Partial,
                "prefix {i}"
            );
        }
        match parse_request(&req, &cfg()) {
            Parsed::Upgrade(up) => {
                assert_eq!(up.endpoint, Endpoint::Client);
                assert_eq!(up.format, WireFormat::Binary);
                assert_eq!(up.head_len, req.len());
                let text = String::from_utf8(up.response).unwrap();
                assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
                assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
                assert!(text.contains("Sec-WebSocket-Protocol: edu-matrix-v1\r\n"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subprotocol_choice() {
        let json = request("/ws", "Sec-WebSocket-Protocol: edu-matrix-v1.json\r\n");
        let Parsed::Upgrade(up) = parse_request(&json, &cfg()) else {
            panic!()
        };
        assert_eq!(up.format, WireFormat::Json);
        assert!(
            String::from_utf8(up.response)
                .unwrap()
                .contains("Protocol: edu-matrix-v1.json")
        );
        // Neither offered: JSON, and no protocol header echoed.
        let none = request("/ws", "Sec-WebSocket-Protocol: chat\r\n");
        let Parsed::Upgrade(up) = parse_request(&none, &cfg()) else {
            panic!()
        };
        assert_eq!(up.format, WireFormat::Json);
        assert!(
            !String::from_utf8(up.response)
                .unwrap()
                .contains("Sec-WebSocket-Protocol")
        );
        let echo = request("/echo", "");
        let Parsed::Upgrade(up) = parse_request(&echo, &cfg()) else {
            panic!()
        };
        assert_eq!(up.endpoint, Endpoint::Echo);
    }

    #[test]
    fn deflate_negotiation_in_the_response() {
        let req = request(
            "/ws",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
        let Parsed::Upgrade(up) = parse_request(&req, &cfg()) else {
            panic!()
        };
        assert_eq!(up.deflate.map(|d| d.server_window_bits), Some(15));
        let text = String::from_utf8(up.response).unwrap();
        assert!(text.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ));
        let mut off = cfg();
        off.deflate.enabled = false;
        let Parsed::Upgrade(up) = parse_request(&req, &off) else {
            panic!()
        };
        assert!(up.deflate.is_none());
        assert!(
            !String::from_utf8(up.response)
                .unwrap()
                .contains("Extensions")
        );
    }

    #[test]
    fn pipelined_bytes_after_head() {
        let mut req = request("/ws", "");
        let n = req.len();
        req.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0]);
        let Parsed::Upgrade(up) = parse_request(&req, &cfg()) else {
            panic!()
        };
        assert_eq!(up.head_len, n);
    }

    #[test]
    fn rejections() {
        let r = |b: &[u8]| match parse_request(b, &cfg()) {
            Parsed::Reject(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r(&request("/other", "")), Reject::NotFound);
        assert_eq!(
            r(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            Reject::UpgradeRequired
        );
        assert_eq!(
            r(b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            Reject::MethodNotAllowed
        );
        assert_eq!(
            r(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(
            r(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
            Reject::UpgradeRequired
        );
        assert_eq!(
            r(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"),
            Reject::BadRequest
        );
        assert_eq!(r(b"GARBAGE\x01\r\n\r\n"), Reject::BadRequest);
        assert_eq!(r(&vec![b'a'; 1024]), Reject::HeadersTooLarge);
        let big = request("/ws", &format!("X-Pad: {}\r\n", "p".repeat(1100)));
        assert_eq!(r(&big), Reject::HeadersTooLarge);
        assert!(
            String::from_utf8(Reject::UpgradeRequired.response())
                .unwrap()
                .starts_with("HTTP/1.1 426")
        );
    }
}
