//! End to end over loopback TCP: a rustls client on a non-blocking socket
//! and a [`TlsConn`] on another, driven in lockstep by a small poll loop.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, ServerConfig, SupportedProtocolVersion};
use socket2::{Domain, Socket, Type};

use super::*;
use crate::tls::testutil::{TestCert, client_config};
use crate::tls::{KtlsMode, TlsAcceptorConfig, TlsVersion};

const SCRATCH: usize = 64 * 1024;
const H11: &[u8] = b"http/1.1";

struct Server {
    sock: TcpStream,
    tls: TlsConn,
    scratch: Vec<u8>,
    got: Vec<u8>,
    /// Bytes read from the socket.
    wire: usize,
    eof: bool,
    handshakes_done: u32,
}

impl Server {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads until the socket is drained, collecting plaintext.
    fn read(&mut self) -> io::Result<()> {
        for _ in 0..64 {
            match self.tls.read(self.sock.as_raw_fd(), &mut self.scratch) {
                Ok(r) => {
                    self.got.extend_from_slice(&self.scratch[r.plain.clone()]);
                    self.wire += r.wire;
                    self.handshakes_done += r.handshake_done as u32;
                    if r.eof {
                        self.eof = true;
                        return Ok(());
                    }
                    if r.drained {
                        return Ok(());
                    }
                }
                Err(e) if sys::would_block(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One write of `data` (what the write pass does per turn).
    fn write(&mut self, data: &[u8]) -> io::Result<TlsWrite> {
        let fd = self.sock.as_raw_fd();
        self.tls.write(fd, &[IoSlice::new(data)], &mut self.scratch)
    }
}

struct Client {
    sock: TcpStream,
    conn: ClientConnection,
    got: Vec<u8>,
    /// close_notify received.
    closed: bool,
}

impl Client {
    fn io(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if sys::would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => break,
                Ok(_) => {
                    self.conn.process_new_packets().map_err(io::Error::other)?;
                }
                Err(e) if sys::would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        let mut buf = [0u8; 16384];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if sys::would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

struct Pair {
    server: Server,
    client: Client,
}

fn socket_pair(small_buffers: bool) -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if small_buffers {
        // Before connecting, so the window stays small.
        c.set_recv_buffer_size(4096).unwrap();
    }
    c.connect(&addr.into()).unwrap();
    let (s, _) = l.accept().unwrap();
    if small_buffers {
        Socket::from(s.try_clone().unwrap())
            .set_send_buffer_size(4096)
            .unwrap();
    }
    s.set_nonblocking(true).unwrap();
    let c: TcpStream = c.into();
    c.set_nonblocking(true).unwrap();
    (c, s)
}

impl Pair {
    fn new(sc: Arc<ServerConfig>, ktls: bool, cc: Arc<ClientConfig>, small: bool) -> Self {
        let (c, s) = socket_pair(small);
        let name = ServerName::try_from("localhost").unwrap();
        Self {
            server: Server {
                sock: s,
                tls: TlsConn::new(sc, ktls).unwrap(),
                scratch: vec![0; SCRATCH],
                got: Vec::new(),
                wire: 0,
                eof: false,
                handshakes_done: 0,
            },
            client: Client {
                sock: c,
                conn: ClientConnection::new(cc, name).unwrap(),
                got: Vec::new(),
                closed: false,
            },
        }
    }

    /// Runs both sides until `done`, at most 10 s.
    fn pump(&mut self, what: &str, done: impl Fn(&Pair) -> bool) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.client.io()?;
            self.server.read()?;
            self.server.tls.flush(self.server.fd())?;
            if done(self) {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn handshake(&mut self) -> io::Result<()> {
        self.pump("handshake", |p| {
            !p.server.tls.is_handshaking() && !p.client.conn.is_handshaking()
        })
    }
}

fn acceptor(cert: &TestCert, min: TlsVersion, ktls: KtlsMode) -> TlsAcceptorConfig {
    TlsAcceptorConfig::new(&cert.config(min, ktls)).unwrap()
}

fn client(
    roots: &[&CertificateDer<'static>],
    v: &'static SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    client_config(roots, &[v], alpn)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Handshake, a request and a message larger than one record from the
/// client, a large answer through a small socket buffer (partial writes),
/// then close_notify both ways.
fn exchange(version: &'static SupportedProtocolVersion, ktls: bool) -> Pair {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Auto);
    let cc = client(&[&cert.der], version, &[H11]);
    let mut p = Pair::new(a.server_config(), ktls, cc, true);
    p.handshake().unwrap();
    assert_eq!(p.server.handshakes_done, 1);
    assert_eq!(p.client.conn.alpn_protocol(), Some(H11));
    assert!(p.server.tls.alpn_http11());
    assert_eq!(p.server.tls.protocol_version(), Some(version.version));

    let mut sent = b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    sent.extend(pattern(100_000, 1));
    // rustls's client takes at most 64 KiB of plaintext at a time.
    let mut off = 0;
    while off < sent.len() {
        off += p.client.conn.writer().write(&sent[off..]).unwrap();
        p.pump("client data", |p| !p.client.conn.wants_write())
            .unwrap();
    }
    p.pump("client data", |p| p.server.got.len() >= sent.len())
        .unwrap();
    assert_eq!(p.server.got, sent);

    // The client does not read: the server's socket fills up.
    let answer = pattern(300_000, 7);
    let mut off = 0;
    let mut blocked = false;
    while off < answer.len() && !blocked {
        let w = p.server.write(&answer[off..]).unwrap();
        off += w.accepted;
        blocked = w.blocked;
    }
    assert!(blocked, "a 4 KiB socket buffer cannot take 300 KB");
    assert!(p.server.tls.is_ktls() || p.server.tls.wants_write());
    assert!(
        p.server.tls.buffered_bytes() <= TX_BATCH + 512,
        "at most one batch of ciphertext held: {}",
        p.server.tls.buffered_bytes()
    );
    // Now it reads; the server writes whatever the socket takes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.client.got.len() < answer.len() {
        p.client.io().unwrap();
        if off < answer.len() {
            off += p.server.write(&answer[off..]).unwrap().accepted;
        } else {
            p.server.tls.flush(p.server.fd()).unwrap();
        }
        assert!(Instant::now() < deadline, "answer stalled at {off}");
    }
    assert_eq!(p.client.got, answer);
    assert!(!p.server.tls.wants_write());
    assert_eq!(p.server.tls.buffered_bytes(), 0, "buffers released");

    p.client.conn.send_close_notify();
    p.pump("client close_notify", |p| p.server.eof).unwrap();
    assert!(p.server.tls.close_notify(p.server.fd()).unwrap());
    p.pump("server close_notify", |p| p.client.closed).unwrap();
    p
}

#[test]
fn tls13_handshake_data_both_ways_partial_writes_and_close_notify() {
    let p = exchange(&TLS13, false);
    assert_eq!(p.server.tls.ktls_status(), KtlsStatus::Off);
}

#[test]
fn tls12_handshake_data_both_ways_partial_writes_and_close_notify() {
    let p = exchange(&TLS12, false);
    assert!(!p.server.tls.is_ktls());
}

/// With kTLS asked for: where the kernel has the `tls` ULP the record
/// layer moves there; here (no ULP) the connection must fall back to
/// rustls and behave exactly the same.
#[test]
fn ktls_takes_over_where_the_kernel_offers_it_and_falls_back_otherwise() {
    let support = ktls::ktls_supported();
    for v in [&TLS13, &TLS12] {
        let p = exchange(v, true);
        let status = p.server.tls.ktls_status();
        if support.available() {
            assert_eq!(status, KtlsStatus::Active, "{v:?}");
            assert!(p.server.tls.is_ktls());
        } else {
            assert_eq!(status, KtlsStatus::Unavailable(ktls::Unavailable::NoUlp));
            assert!(!p.server.tls.is_ktls());
        }
    }
}

#[test]
fn ktls_is_off_when_the_config_cannot_extract_secrets() {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Off);
    let tls = TlsConn::new(a.server_config(), true).unwrap();
    assert_eq!(tls.ktls_status(), KtlsStatus::Off);
}

#[test]
fn a_record_split_at_every_byte_is_assembled_and_its_buffer_released() {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Off);
    let mut p = Pair::new(
        a.server_config(),
        false,
        client(&[&cert.der], &TLS13, &[H11]),
        false,
    );
    p.handshake().unwrap();
    p.client.conn.writer().write_all(&pattern(300, 3)).unwrap();
    let mut wire = Vec::new();
    while p.client.conn.wants_write() {
        p.client.conn.write_tls(&mut wire).unwrap();
    }
    assert!(wire.len() > 300);
    let base = p.server.wire;
    for (i, b) in wire.iter().enumerate() {
        p.client.sock.write_all(&[*b]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Loopback delivers at once, but wait for the byte to be read.
        while p.server.wire < base + i + 1 {
            p.server.read().unwrap();
            assert!(Instant::now() < deadline);
        }
        if i + 1 < wire.len() {
            assert!(
                p.server.got.is_empty(),
                "no plaintext before the record ends"
            );
            assert!(
                p.server.tls.buffered_bytes() > 0,
                "byte {i} of {}",
                wire.len()
            );
        }
    }
    assert_eq!(p.server.got, pattern(300, 3));
    assert_eq!(p.server.tls.buffered_bytes(), 0);
}

/// Runs a pair whose handshake must fail; returns the client's error
/// once the server has failed too.
fn expect_refusal(p: &mut Pair) -> io::Error {
    let e = p
        .pump("refusal", |_| false)
        .expect_err("the handshake must fail");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut server_failed = false;
    while !server_failed {
        p.client.io().ok();
        server_failed = p.server.read().is_err() || p.server.eof;
        assert!(Instant::now() < deadline, "the server never gave up");
    }
    // The refused connection stays refused.
    let again = p
        .server
        .tls
        .read(p.server.fd(), &mut p.server.scratch)
        .unwrap_err();
    assert!(
        matches!(
            again.kind(),
            io::ErrorKind::NotConnected | io::ErrorKind::WouldBlock
        ),
        "{again}"
    );
    e
}

fn server_error(p: &mut Pair) -> io::Error {
    // Drive only the server side so its error (not the client's) shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.client.io().ok();
        if let Err(e) = p.server.read() {
            return e;
        }
        assert!(Instant::now() < deadline, "the server never refused");
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn a_client_that_only_speaks_tls12_is_refused_when_min_version_is_13() {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_3, KtlsMode::Auto);
    let mut p = Pair::new(
        a.server_config(),
        true,
        client(&[&cert.der], &TLS12, &[H11]),
        false,
    );
    let e = server_error(&mut p);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(
        matches!(tls_error(&e), Some(rustls::Error::PeerIncompatible(_))),
        "{e}"
    );
    // The client hears why (protocol_version alert).
    let ce = expect_refusal(&mut p);
    assert!(ce.to_string().contains("ProtocolVersion"), "{ce}");
}

#[test]
fn alpn_is_optional_but_a_client_without_http11_is_refused() {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Off);
    let mut p = Pair::new(
        a.server_config(),
        false,
        client(&[&cert.der], &TLS13, &[]),
        false,
    );
    p.handshake().unwrap();
    assert!(!p.server.tls.alpn_http11());
    assert_eq!(p.client.conn.alpn_protocol(), None);

    let mut p = Pair::new(
        a.server_config(),
        false,
        client(&[&cert.der], &TLS13, &[b"h2"]),
        false,
    );
    let e = server_error(&mut p);
    assert!(
        matches!(tls_error(&e), Some(rustls::Error::NoApplicationProtocol)),
        "{e}"
    );
    // The client hears why: in TLS 1.3 the alert follows the ServerHello
    // the failing ClientHello had already produced.
    let ce = expect_refusal(&mut p);
    assert!(ce.to_string().contains("NoApplicationProtocol"), "{ce}");
}

/// Raw bytes instead of a ClientHello: a clear error, an alert where
/// rustls has one, no panic.
#[test]
fn garbage_instead_of_a_client_hello_is_refused_with_a_clear_error() {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Auto);
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        // A handshake record holding 5 bytes of nonsense.
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
        // A record longer than TLS allows.
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0],
        // Application data before any handshake.
        &[0x17, 0x03, 0x03, 0x00, 0x02, 0, 0],
    ];
    for garbage in cases {
        let (mut c, s) = socket_pair(false);
        let fd = s.as_raw_fd();
        let mut tls = TlsConn::new(a.server_config(), true).unwrap();
        let mut scratch = vec![0; SCRATCH];
        c.set_nonblocking(false).unwrap();
        c.write_all(garbage).unwrap();
        let e = loop {
            match tls.read(fd, &mut scratch) {
                Ok(r) => assert!(r.plain.is_empty()),
                Err(e) if sys::would_block(&e) => std::thread::yield_now(),
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{garbage:?}: {e}");
        assert!(tls_error(&e).is_some(), "{e}");
        assert!(!e.to_string().is_empty());
        assert_eq!(
            tls.read(fd, &mut scratch).unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        // What came back, if anything, is a TLS alert record.
        drop(s);
        let mut back = Vec::new();
        c.read_to_end(&mut back).ok();
        assert!(back.is_empty() || back[0] == 0x15, "{garbage:?}: {back:?}");
        if garbage.starts_with(b"GET") {
            // Plain HTTP on the TLS port: a fatal decode_error alert.
            assert_eq!(back, [0x15, 3, 3, 0, 2, 2, 50]);
        }
    }
}

#[test]
fn reload_serves_the_new_certificate_to_new_connections_only() {
    let mut cert = TestCert::new();
    let old_der = cert.der.clone();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Auto);
    let trusts_old = client(&[&old_der], &TLS13, &[H11]);
    let mut old = Pair::new(a.server_config(), false, trusts_old.clone(), false);
    old.handshake().unwrap();

    cert.regenerate();
    a.reload().unwrap();
    let trusts_new = client(&[&cert.der], &TLS13, &[H11]);
    let mut fresh = Pair::new(a.server_config(), false, trusts_new.clone(), false);
    fresh.handshake().unwrap();
    // A client that only knows the old certificate is now refused...
    let mut stale = Pair::new(a.server_config(), false, trusts_old, false);
    let e = expect_refusal(&mut stale);
    assert!(e.to_string().contains("certificate"), "{e}");
    // ...while the connection made before the reload keeps working.
    old.client.conn.writer().write_all(b"still here").unwrap();
    old.pump("old connection data", |p| p.server.got == b"still here")
        .unwrap();
    assert!(old.server.write(b"yes").unwrap().accepted == 3);
    old.pump("old connection answer", |p| p.client.got == b"yes")
        .unwrap();

    // A bad file: the reload fails and the new certificate stays.
    std::fs::write(&cert.key_file, "garbage").unwrap();
    assert!(a.reload().is_err());
    let mut after = Pair::new(a.server_config(), false, trusts_new, false);
    after.handshake().unwrap();
}

#[test]
fn nothing_is_written_before_the_handshake_and_small_scratch_is_refused() {
    let cert = TestCert::new();
    let a = acceptor(&cert, TlsVersion::V1_2, KtlsMode::Off);
    let (_c, s) = socket_pair(false);
    let mut tls = TlsConn::new(a.server_config(), false).unwrap();
    let mut small = vec![0; MIN_SCRATCH - 1];
    let e = tls.read(s.as_raw_fd(), &mut small).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let mut scratch = vec![0; SCRATCH];
    let w = tls.write(s.as_raw_fd(), &[], &mut scratch).unwrap();
    assert_eq!(w.accepted, 0);
    let e = tls
        .write(s.as_raw_fd(), &[IoSlice::new(b"early")], &mut scratch)
        .unwrap_err();
    assert!(e.to_string().contains("handshake"), "{e}");
}

#[test]
fn record_remainder_finds_the_end_of_the_last_record_begun() {
    assert_eq!(record_remainder(&[0x17, 3]), 3);
    assert_eq!(record_remainder(&[0x17, 3, 3, 0, 4, 1]), 3);
    // A whole record, then a header of a 2-byte one.
    assert_eq!(
        record_remainder(&[0x16, 3, 3, 0, 1, 9, 0x17, 3, 3, 0, 2]),
        2
    );
}
