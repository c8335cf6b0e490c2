//! The client side of `wss://`: when `WSBENCH_TLS_CA` names a PEM file,
//! every connection the bench opens (workers and publisher) does a rustls
//! handshake, trusting that CA and naming the server `localhost` (SNI), before
//! the WebSocket upgrade. Unset: plain TCP, as before.
//!
//! The reading and writing halves are enums rather than boxed trait objects,
//! so the plain path costs one predictable branch and nothing else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskCx, Poll};

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The environment variable naming the CA certificate (PEM) to trust.
pub const CA_ENV: &str = "WSBENCH_TLS_CA";

/// The client configuration, built once per process from [`CA_ENV`];
/// `None` when it is unset.
pub fn client_config() -> Result<Option<Arc<ClientConfig>>> {
    static CFG: OnceLock<std::result::Result<Option<Arc<ClientConfig>>, String>> = OnceLock::new();
    CFG.get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<Option<Arc<ClientConfig>>> {
    let Some(path) = std::env::var_os(CA_ENV) else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path)
        .with_context(|| format!("{CA_ENV}: reading {}", path.to_string_lossy()))?
    {
        roots
            .add(cert.context("parsing a CA certificate")?)
            .context("adding a CA certificate")?;
    }
    anyhow::ensure!(!roots.is_empty(), "{CA_ENV}: no certificate in the file");
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// Wraps `stream` in TLS when [`client_config`] says so and splits it.
pub async fn split(stream: TcpStream) -> Result<(ReadIo, WriteIo, RawFd)> {
    let fd = stream.as_raw_fd();
    match client_config()? {
        None => {
            let (r, w) = stream.into_split();
            Ok((ReadIo::Plain(r), WriteIo::Plain(w), fd))
        }
        Some(cfg) => {
            let name = ServerName::try_from("localhost").expect("a valid DNS name");
            let tls = TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .context("TLS handshake")?;
            let (r, w) = tokio::io::split(tls);
            Ok((ReadIo::Tls(r), WriteIo::Tls(w), fd))
        }
    }
}

/// Sets `SO_LINGER` 0 on a connection's socket (abortive close: RST).
pub fn set_zero_linger(fd: RawFd) -> Result<()> {
    // SAFETY: `fd` belongs to a connection this process still holds open
    // (the caller owns its halves for as long as it calls this).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .context("SO_LINGER 0")
}

/// The reading half of a plain or TLS connection.
pub enum ReadIo {
    /// `ws://`.
    Plain(OwnedReadHalf),
    /// `wss://`.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a plain or TLS connection.
pub enum WriteIo {
    /// `ws://`.
    Plain(OwnedWriteHalf),
    /// `wss://`.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for ReadIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadIo::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadIo::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteIo::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteIo::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteIo::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteIo::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
