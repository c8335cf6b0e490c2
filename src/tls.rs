//! Native TLS (`wss://`): the `[tls]` configuration section, loading the
//! certificate chain and private key, and the node-wide rustls
//! [`ServerConfig`] that a SIGHUP swaps for a freshly loaded one without
//! touching established connections.
//!
//! The per-connection side (a non-blocking rustls connection over a raw
//! socket, and kernel TLS after the handshake) is `shard::tls`.
//!
//! Crypto provider: aws-lc-rs (rustls's default). It builds here without
//! cmake or NASM (aws-lc-sys's bundled C build), has the fastest AES-GCM
//! and ECDSA/RSA signing of the two providers, which is what a handshake
//! rate per core and fan-out over TLS cost, and offers the post-quantum
//! hybrid X25519MLKEM768 that rustls prefers by default.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ProducesTickets};
use serde::{Deserialize, Serialize};

/// The ALPN protocol the node speaks (WebSocket upgrades are HTTP/1.1).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Lowest TLS version a client may use (`min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Whether to hand an established connection's record layer to the
/// kernel (`ktls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    /// Use kernel TLS where the kernel offers it (the `tls` ULP and the
    /// negotiated cipher), user-space rustls otherwise.
    Auto,
    /// Always encrypt in user space.
    Off,
}

/// The `[tls]` section. TLS is on when both `cert_file` and `key_file`
/// are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Default unset: TLS is opt-in
    /// (plain `ws://` stays the local default; most deployments terminate
    /// TLS at a load balancer).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the leaf
    /// certificate. Default unset, as `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Lowest accepted version. Default `1.2`: every browser that speaks
    /// WebSocket speaks 1.2, and some corporate middleboxes still only
    /// pass 1.2; `1.3` for deployments that can require it.
    pub min_version: TlsVersion,
    /// Kernel TLS after the handshake. Default `auto`: when the kernel
    /// has the `tls` ULP, an established connection keeps no TLS state in
    /// user space and the fan-out keeps one `writev` per socket; without
    /// it connections stay on rustls, so `auto` is safe everywhere.
    pub ktls: KtlsMode,
    /// TLS handshake steps a shard advances per loop turn. Default 16: a
    /// full handshake costs one signature and one key exchange, measured
    /// at 0.25–0.35 ms of server time per handshake on the (loaded)
    /// development machine with ECDSA P-256 and RSA 2048 keys alike, so
    /// a turn spends at most ~5 ms on handshakes while a storm of new
    /// connections waits its turn instead of starving established ones
    /// (uWebSockets' rule). Turns are short when there is little else to
    /// do, so the bound costs handshake throughput little.
    pub handshakes_per_turn: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            min_version: TlsVersion::V1_2,
            ktls: KtlsMode::Auto,
            handshakes_per_turn: 16,
        }
    }
}

impl TlsConfig {
    /// Whether the node serves TLS (both files set).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Checks what can be checked without reading the files: both files
    /// or neither, and a handshake budget above zero.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(TlsError::Config(
                "tls.cert_file and tls.key_file must be set together".into(),
            ));
        }
        if self.handshakes_per_turn == 0 {
            return Err(TlsError::Config(
                "tls.handshakes_per_turn must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a certificate or key could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    /// An invalid combination of settings.
    Config(String),
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
    /// A file is not valid PEM, or holds no object of the expected kind.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected and what went wrong.
        detail: String,
    },
    /// rustls refused the certificate and key (for example, the key does
    /// not match the leaf certificate, or its algorithm is unsupported).
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Config(m) => f.write_str(m),
            TlsError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            TlsError::Pem { path, detail } => write!(f, "{}: {detail}", path.display()),
            TlsError::Rustls(e) => write!(f, "certificate and key refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Rustls(e) => Some(e),
            _ => None,
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM certificate chain (every `CERTIFICATE` block, in order).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            detail: format!("invalid PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads the first PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".into(),
            e => format!("invalid PEM private key: {e}"),
        },
    })
}

/// Builds the rustls server configuration for `cfg`, reading its files.
///
/// Choices: ALPN `http/1.1` only; stateless session tickets from the
/// shared `ticketer` (one ticket per TLS 1.3 handshake) and no session
/// cache, so resumption never takes a lock shared by the shards; secret
/// extraction only when kernel TLS may be used.
pub fn build_server_config(
    cfg: &TlsConfig,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, TlsError> {
    cfg.validate()?;
    let (Some(cert_file), Some(key_file)) = (&cfg.cert_file, &cfg.key_file) else {
        return Err(TlsError::Config(
            "tls.cert_file and tls.key_file are not set".into(),
        ));
    };
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(provider());
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    sc.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    sc.session_storage = Arc::new(NoServerSessionStorage {});
    sc.ticketer = ticketer;
    sc.send_tls13_tickets = 1;
    sc.enable_secret_extraction = cfg.ktls == KtlsMode::Auto;
    Ok(sc)
}

/// The crypto provider (aws-lc-rs with rustls's default suites and key
/// exchange groups).
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The node's TLS server configuration, shared by every shard and
/// swappable: a connection takes the current one when it is accepted
/// and keeps it for its whole life, so [`TlsAcceptorConfig::reload`]
/// changes the certificate for new connections only.
pub struct TlsAcceptorConfig {
    settings: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// Kept across reloads so tickets issued before a reload still
    /// resume after it.
    ticketer: Arc<dyn ProducesTickets>,
    reloads: AtomicU64,
}

impl fmt::Debug for TlsAcceptorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptorConfig")
            .field("settings", &self.settings)
            .field("reloads", &self.reloads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TlsAcceptorConfig {
    /// Loads the certificate and key named in `cfg`.
    pub fn new(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Rustls)?;
        let sc = build_server_config(cfg, ticketer.clone())?;
        Ok(Self {
            settings: cfg.clone(),
            current: ArcSwap::from_pointee(sc),
            ticketer,
            reloads: AtomicU64::new(0),
        })
    }

    /// Re-reads the certificate and key files (on SIGHUP). On success new
    /// connections use them; on failure nothing changes and the error says
    /// why (log it: the node keeps serving the previous certificate).
    pub fn reload(&self) -> Result<(), TlsError> {
        let sc = build_server_config(&self.settings, self.ticketer.clone())?;
        self.current.store(Arc::new(sc));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The configuration a connection accepted now uses (one atomic load
    /// and a reference count increment).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The `[tls]` settings this was built from.
    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }
}

/// Bounds the TLS handshake work of one shard per loop turn
/// (`handshakes_per_turn`): the shard asks before it advances a
/// connection that is still handshaking and, when refused, keeps the
/// connection for the next turn.
#[derive(Debug, Clone)]
pub struct HandshakeBudget {
    per_turn: u32,
    left: u32,
}

impl HandshakeBudget {
    /// A budget of `per_turn` handshake steps per turn.
    pub fn new(per_turn: u32) -> Self {
        Self {
            per_turn,
            left: per_turn,
        }
    }

    /// Starts a new loop turn.
    pub fn start_turn(&mut self) {
        self.left = self.per_turn;
    }

    /// Takes one handshake step if the turn has any left.
    pub fn try_take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }

    /// Whether this turn's steps are all taken (connections still waiting
    /// must wait for the next turn).
    pub fn exhausted(&self) -> bool {
        self.left == 0
    }
}

/// Why a TLS connection failed, for counting (`tls_handshakes{kind}` and
/// `tls_errors{kind}`): a coarse grouping of rustls's errors that says
/// who is at fault without creating a series per error detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not TLS, or malformed or out-of-place records (e.g. plain HTTP
    /// sent to the TLS port, an oversized record).
    InvalidMessage,
    /// The client offered ALPN without `http/1.1`.
    NoApplicationProtocol,
    /// No version, cipher suite or key-exchange group in common (e.g. a
    /// TLS 1.0 client, or TLS 1.2 against `min_version = "1.3"`).
    Incompatible,
    /// The peer broke the protocol's rules.
    PeerMisbehaved,
    /// The peer sent a fatal alert (e.g. a client that does not trust the
    /// certificate answers `bad_certificate` or `unknown_ca`).
    Alert,
    /// A record failed to decrypt (corruption or tampering).
    DecryptError,
    /// Any other TLS error.
    Other,
    /// The socket failed (reset, or another error outside TLS).
    Io,
}

impl TlsFailure {
    /// Every failure; each has a series from the start.
    pub const ALL: [TlsFailure; 8] = [
        TlsFailure::InvalidMessage,
        TlsFailure::NoApplicationProtocol,
        TlsFailure::Incompatible,
        TlsFailure::PeerMisbehaved,
        TlsFailure::Alert,
        TlsFailure::DecryptError,
        TlsFailure::Other,
        TlsFailure::Io,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            TlsFailure::InvalidMessage => "invalid_message",
            TlsFailure::NoApplicationProtocol => "no_application_protocol",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::PeerMisbehaved => "peer_misbehaved",
            TlsFailure::Alert => "alert",
            TlsFailure::DecryptError => "decrypt_error",
            TlsFailure::Other => "other",
            TlsFailure::Io => "io",
        }
    }

    /// Classifies an error returned by the per-connection TLS layer
    /// (`shard::tls::TlsConn`): a rustls error inside it by its kind; a
    /// record too large to buffer as a malformed message; anything else
    /// as a socket error.
    pub fn of(e: &io::Error) -> Self {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return if e.kind() == io::ErrorKind::InvalidData {
                TlsFailure::InvalidMessage
            } else {
                TlsFailure::Io
            };
        };
        match tls {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::PeerSentOversizedRecord
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => TlsFailure::InvalidMessage,
            rustls::Error::NoApplicationProtocol => TlsFailure::NoApplicationProtocol,
            rustls::Error::PeerIncompatible(_) => TlsFailure::Incompatible,
            rustls::Error::PeerMisbehaved(_) => TlsFailure::PeerMisbehaved,
            rustls::Error::AlertReceived(_) => TlsFailure::Alert,
            rustls::Error::DecryptError => TlsFailure::DecryptError,
            _ => TlsFailure::Other,
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
