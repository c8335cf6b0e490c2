//! The heap an idle TLS connection holds after its handshake: wsedge's
//! `TlsConn` (rustls's unbuffered connection, buffers owned by the shard)
//! against rustls's buffered `ServerConnection`. Counted by a global
//! allocator that tags each block with whether it was allocated while the
//! server side was running, so frees are attributed correctly.
//!
//! Run with `--nocapture` to see the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, SupportedProtocolVersion};
use wsedge::shard::tls::TlsConn;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
thread_local!(static SERVER: Cell<bool> = const { Cell::new(false) });
const TAG: usize = 16;

fn tagged(l: Layout) -> (Layout, usize) {
    let pre = TAG.max(l.align());
    (
        Layout::from_size_align(l.size() + pre, l.align().max(TAG)).unwrap(),
        pre,
    )
}

// SAFETY: every block gets a `pre`-byte prefix whose last byte says
// whether it was counted; the pointer handed out is past the prefix and
// keeps the requested alignment; dealloc undoes exactly that.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let (t, pre) = tagged(l);
        let p = unsafe { System.alloc(t) };
        if p.is_null() {
            return p;
        }
        let on = SERVER.with(|c| c.get());
        unsafe { *p.add(pre - 1) = on as u8 };
        if on {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { p.add(pre) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let (t, pre) = tagged(l);
        let base = unsafe { p.sub(pre) };
        if unsafe { *base.add(pre - 1) } == 1 {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(base, t) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn server_side<T>(f: impl FnOnce() -> T) -> T {
    SERVER.with(|c| c.set(true));
    let r = f();
    SERVER.with(|c| c.set(false));
    r
}

fn configs(v: &'static SupportedProtocolVersion) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(wsedge::tls::provider());
    let mut s = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[v])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    s.alpn_protocols = vec![b"http/1.1".to_vec()];
    s.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    s.send_tls13_tickets = 1;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[v])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(s), Arc::new(c))
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Moves the client's pending output to the socket and its input in.
fn client_io(c: &mut ClientConnection, s: &mut UnixStream, got: &mut Vec<u8>) {
    while c.wants_write() {
        if c.write_tls(s).is_err() {
            break;
        }
    }
    while let Ok(n) = c.read_tls(s) {
        if n == 0 {
            break;
        }
        c.process_new_packets().unwrap();
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.reader().read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Idle heap of a `TlsConn` after a handshake, a request and an answer.
fn tls_conn_idle(v: &'static SupportedProtocolVersion) -> isize {
    let (sc, cc) = configs(v);
    let (mut cs, ss) = pair();
    let mut client = ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut scratch = vec![0u8; 64 * 1024];
    let base = LIVE.load(Ordering::Relaxed);
    let mut server = server_side(|| TlsConn::new(sc, false).unwrap());
    let fd = ss.as_raw_fd();
    let mut got = Vec::new();
    let mut request = Vec::new();
    client
        .writer()
        .write_all(b"GET /ws HTTP/1.1\r\n\r\n")
        .unwrap();
    for _ in 0..50 {
        client_io(&mut client, &mut cs, &mut got);
        server_side(|| {
            while let Ok(r) = server.read(fd, &mut scratch) {
                request.extend_from_slice(&scratch[r.plain]);
                if r.drained {
                    break;
                }
            }
        });
        if !server.is_handshaking() && request.len() == 20 && got.is_empty() {
            server_side(|| server.write(fd, &[IoSlice::new(&[7u8; 300])], &mut scratch)).unwrap();
        }
        if got.len() == 300 {
            break;
        }
    }
    assert_eq!(got.len(), 300, "exchange finished");
    assert_eq!(server.buffered_bytes(), 0);
    LIVE.load(Ordering::Relaxed) - base
}

/// The same with rustls's buffered `ServerConnection`.
fn buffered_idle(v: &'static SupportedProtocolVersion) -> isize {
    let (sc, cc) = configs(v);
    let (mut cs, mut ss) = pair();
    let mut client = ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    let mut server = server_side(|| rustls::ServerConnection::new(sc).unwrap());
    let mut got = Vec::new();
    let mut request = Vec::new();
    client
        .writer()
        .write_all(b"GET /ws HTTP/1.1\r\n\r\n")
        .unwrap();
    for _ in 0..50 {
        client_io(&mut client, &mut cs, &mut got);
        server_side(|| {
            while let Ok(n) = server.read_tls(&mut ss) {
                if n == 0 {
                    break;
                }
                server.process_new_packets().unwrap();
            }
            let mut buf = [0u8; 64];
            while let Ok(n) = server.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            if !server.is_handshaking() && request.len() == 20 && got.is_empty() {
                server.writer().write_all(&[7u8; 300]).unwrap();
            }
            while server.wants_write() {
                if server.write_tls(&mut ss).is_err() {
                    break;
                }
            }
        });
        if got.len() == 300 {
            break;
        }
    }
    assert_eq!(got.len(), 300, "exchange finished");
    LIVE.load(Ordering::Relaxed) - base
}

#[test]
fn an_idle_tls_connection_holds_about_two_kilobytes() {
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let ours = tls_conn_idle(v);
        let buffered = buffered_idle(v);
        let inline_ours = std::mem::size_of::<TlsConn>();
        let inline_buffered = std::mem::size_of::<rustls::ServerConnection>();
        println!(
            "{:?}: TlsConn {inline_ours} B inline + {ours} B heap; \
             rustls ServerConnection {inline_buffered} B inline + {buffered} B heap",
            v.version
        );
        // The boxed unbuffered connection (~1.1 KB) and its keys and
        // state (~1 KB); a regression to per-connection buffers shows
        // up as 4 KB or more.
        assert!(ours < 3 * 1024, "{ours} bytes");
        assert!(ours < buffered, "{ours} vs {buffered}");
    }
}
