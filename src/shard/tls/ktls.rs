//! Kernel TLS (kTLS): after rustls has finished a handshake, the record
//! layer moves into the kernel (`setsockopt(SOL_TCP, TCP_ULP, "tls")`,
//! then `SOL_TLS`/`TLS_TX` and `TLS_RX` with the traffic keys), so the
//! socket is written with plain `writev` and read with `recvmsg`, and the
//! connection keeps no TLS state in user space.
//!
//! Both directions are offloaded. Data records read like plain TCP;
//! other records (alerts, post-handshake handshake messages) come back
//! from `recvmsg` alone, with their type in a `TLS_GET_RECORD_TYPE`
//! control message ([`recv`]). A plain `read` would fail with EIO on
//! them, which is why the read path always uses `recvmsg`. Offloading TX
//! only would keep rustls (and its ~2 KB) alive for every connection,
//! which is what kTLS is meant to remove.
//!
//! Not supported under kTLS, by choice: TLS 1.3 KeyUpdate from the peer
//! (browsers do not send it; the connection is closed and the client
//! reconnects) and our own key updates (instead [`KtlsState`] counts the
//! records sent and asks for a reconnect before the cipher's
//! confidentiality limit).
//!
//! Support is probed once per process ([`ktls_supported`]) on a loopback
//! connection, for each version and cipher, so a connection is only
//! handed over when the kernel is known to take it: extracting the
//! secrets consumes the rustls connection, and there is no way back.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use rustls::server::UnbufferedServerConnection;
use rustls::{CipherSuite, ConnectionTrafficSecrets, SupportedCipherSuite};

/// TLS record content types (RFC 8446 §5.1).
pub const RECORD_ALERT: u8 = 21;
/// Handshake record.
pub const RECORD_HANDSHAKE: u8 = 22;
/// Application data record.
pub const RECORD_APPLICATION_DATA: u8 = 23;

/// A protocol version the kernel can take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl Version {
    fn uapi(self) -> u16 {
        match self {
            Version::Tls12 => libc::TLS_1_2_VERSION,
            Version::Tls13 => libc::TLS_1_3_VERSION,
        }
    }
}

/// An AEAD the kernel can take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// AES-128-GCM.
    AesGcm128,
    /// AES-256-GCM.
    AesGcm256,
    /// ChaCha20-Poly1305.
    Chacha20Poly1305,
}

/// What a connection would hand to the kernel: version and cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// Negotiated version.
    pub version: Version,
    /// Negotiated AEAD.
    pub cipher: Cipher,
}

impl Offload {
    /// Every combination, in probe order.
    pub const ALL: [Offload; 6] = [
        Offload::new(Version::Tls13, Cipher::AesGcm128),
        Offload::new(Version::Tls13, Cipher::AesGcm256),
        Offload::new(Version::Tls13, Cipher::Chacha20Poly1305),
        Offload::new(Version::Tls12, Cipher::AesGcm128),
        Offload::new(Version::Tls12, Cipher::AesGcm256),
        Offload::new(Version::Tls12, Cipher::Chacha20Poly1305),
    ];

    const fn new(version: Version, cipher: Cipher) -> Self {
        Self { version, cipher }
    }

    /// The offload for a negotiated suite, if the kernel knows its AEAD.
    pub fn of(suite: SupportedCipherSuite) -> Option<Self> {
        use CipherSuite as S;
        let cipher = match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Cipher::AesGcm128,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Cipher::AesGcm256,
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Cipher::Chacha20Poly1305,
            _ => return None,
        };
        let version = match suite {
            SupportedCipherSuite::Tls13(_) => Version::Tls13,
            SupportedCipherSuite::Tls12(_) => Version::Tls12,
        };
        Some(Self { version, cipher })
    }

    fn bit(self) -> u8 {
        let i = Offload::ALL.iter().position(|o| *o == self).unwrap_or(0);
        1 << i
    }
}

/// Why a connection stays on user-space rustls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The kernel has no `tls` ULP (`modprobe tls`; see
    /// `/proc/sys/net/ipv4/tcp_available_ulp`).
    NoUlp,
    /// The kernel cannot offload the negotiated version and cipher.
    Cipher,
    /// Attaching the ULP to this socket failed (errno).
    Attach(i32),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NoUlp => f.write_str("the kernel has no tls ULP"),
            Unavailable::Cipher => f.write_str("the kernel cannot offload this cipher"),
            Unavailable::Attach(e) => write!(
                f,
                "TCP_ULP tls failed: {}",
                io::Error::from_raw_os_error(*e)
            ),
        }
    }
}

/// What the kernel offers, found once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KtlsSupport {
    /// errno of attaching the `tls` ULP, if that failed.
    ulp_errno: Option<i32>,
    /// One bit per [`Offload::ALL`] entry that took both TX and RX.
    offloads: u8,
}

impl KtlsSupport {
    /// Whether any connection can use kTLS.
    pub fn available(&self) -> bool {
        self.offloads != 0
    }

    /// Whether the kernel takes `o` in both directions.
    pub fn allows(&self, o: Offload) -> bool {
        self.offloads & o.bit() != 0
    }

    /// Why no connection can use kTLS (for the start-up log), if so.
    pub fn unavailable_reason(&self) -> Option<String> {
        match self.ulp_errno {
            Some(libc::ENOENT) => Some(Unavailable::NoUlp.to_string()),
            Some(e) => Some(Unavailable::Attach(e).to_string()),
            None if self.offloads == 0 => Some(Unavailable::Cipher.to_string()),
            None => None,
        }
    }
}

/// The kernel's kTLS support, probed on first use.
pub fn ktls_supported() -> &'static KtlsSupport {
    static SUPPORT: OnceLock<KtlsSupport> = OnceLock::new();
    SUPPORT.get_or_init(probe)
}

/// A connected loopback pair (the ULP needs an established socket).
fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    Ok((c, s))
}

/// Tries every version and cipher on throwaway loopback connections with
/// zero keys.
pub fn probe() -> KtlsSupport {
    let mut support = KtlsSupport {
        ulp_errno: None,
        offloads: 0,
    };
    for o in Offload::ALL {
        let Ok((_c, s)) = loopback_pair() else {
            support.ulp_errno = Some(libc::ENOTCONN);
            return support;
        };
        let fd = s.as_raw_fd();
        if let Err(e) = attach_ulp(fd) {
            support.ulp_errno = Some(e.raw_os_error().unwrap_or(libc::EINVAL));
            return support;
        }
        let info = CryptoInfo::zero(o);
        if set_crypto(fd, libc::TLS_TX, &info).is_ok()
            && set_crypto(fd, libc::TLS_RX, &info).is_ok()
        {
            support.offloads |= o.bit();
        }
    }
    support
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the `tls` upper-layer protocol to an established socket.
/// Until keys are set it passes bytes through unchanged, so a failure
/// after this point can still fall back to user space.
pub fn attach_ulp(fd: RawFd) -> io::Result<()> {
    const NAME: &[u8] = b"tls";
    // SAFETY: the kernel reads `NAME.len()` bytes from a valid slice.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            NAME.as_ptr().cast(),
            NAME.len() as libc::socklen_t,
        )
    })
}

/// The `struct tls12_crypto_info_*` a direction is configured with
/// (linux/tls.h; the same layout serves TLS 1.2 and 1.3). Zeroed on drop:
/// it holds a traffic key.
pub enum CryptoInfo {
    /// `tls12_crypto_info_aes_gcm_128` (40 bytes).
    AesGcm128(libc::tls12_crypto_info_aes_gcm_128),
    /// `tls12_crypto_info_aes_gcm_256` (56 bytes).
    AesGcm256(libc::tls12_crypto_info_aes_gcm_256),
    /// `tls12_crypto_info_chacha20_poly1305` (56 bytes).
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    /// AES-128-GCM: the kernel splits rustls's 12-byte IV into a 4-byte
    /// salt (implicit part) and an 8-byte IV.
    pub fn aes_gcm_128(v: Version, key: &[u8; 16], iv: &[u8; 12], seq: u64) -> Self {
        let mut c = libc::tls12_crypto_info_aes_gcm_128 {
            info: libc::tls_crypto_info {
                version: v.uapi(),
                cipher_type: libc::TLS_CIPHER_AES_GCM_128,
            },
            iv: [0; 8],
            key: *key,
            salt: [0; 4],
            rec_seq: seq.to_be_bytes(),
        };
        c.salt.copy_from_slice(&iv[..4]);
        c.iv.copy_from_slice(&iv[4..]);
        CryptoInfo::AesGcm128(c)
    }

    /// AES-256-GCM, split as AES-128-GCM.
    pub fn aes_gcm_256(v: Version, key: &[u8; 32], iv: &[u8; 12], seq: u64) -> Self {
        let mut c = libc::tls12_crypto_info_aes_gcm_256 {
            info: libc::tls_crypto_info {
                version: v.uapi(),
                cipher_type: libc::TLS_CIPHER_AES_GCM_256,
            },
            iv: [0; 8],
            key: *key,
            salt: [0; 4],
            rec_seq: seq.to_be_bytes(),
        };
        c.salt.copy_from_slice(&iv[..4]);
        c.iv.copy_from_slice(&iv[4..]);
        CryptoInfo::AesGcm256(c)
    }

    /// ChaCha20-Poly1305: the whole 12-byte IV, no salt.
    pub fn chacha20_poly1305(v: Version, key: &[u8; 32], iv: &[u8; 12], seq: u64) -> Self {
        CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
            info: libc::tls_crypto_info {
                version: v.uapi(),
                cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305,
            },
            iv: *iv,
            key: *key,
            salt: [],
            rec_seq: seq.to_be_bytes(),
        })
    }

    /// The crypto info for one direction of a connection rustls
    /// negotiated, from its extracted traffic secrets.
    pub fn from_secrets(
        v: Version,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> io::Result<Self> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "unexpected TLS key length");
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key.as_ref(), iv.as_ref()),
            _ => return Err(io::Error::new(io::ErrorKind::Unsupported, "unknown AEAD")),
        };
        let iv: &[u8; 12] = iv.try_into().map_err(|_| bad())?;
        Ok(match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => {
                Self::aes_gcm_128(v, key.try_into().map_err(|_| bad())?, iv, seq)
            }
            ConnectionTrafficSecrets::Aes256Gcm { .. } => {
                Self::aes_gcm_256(v, key.try_into().map_err(|_| bad())?, iv, seq)
            }
            _ => Self::chacha20_poly1305(v, key.try_into().map_err(|_| bad())?, iv, seq),
        })
    }

    /// Zero keys for probing the kernel.
    fn zero(o: Offload) -> Self {
        match o.cipher {
            Cipher::AesGcm128 => Self::aes_gcm_128(o.version, &[0; 16], &[0; 12], 0),
            Cipher::AesGcm256 => Self::aes_gcm_256(o.version, &[0; 32], &[0; 12], 0),
            Cipher::Chacha20Poly1305 => Self::chacha20_poly1305(o.version, &[0; 32], &[0; 12], 0),
        }
    }

    /// The struct's bytes, as `setsockopt` takes them.
    pub fn as_bytes(&self) -> &[u8] {
        fn bytes<T>(t: &T) -> &[u8] {
            // SAFETY: the uapi structs are plain `repr(C)` byte arrays
            // after two u16 fields, with no padding (checked by the layout
            // tests), so every byte is initialised.
            unsafe { std::slice::from_raw_parts((t as *const T).cast(), std::mem::size_of::<T>()) }
        }
        match self {
            CryptoInfo::AesGcm128(c) => bytes(c),
            CryptoInfo::AesGcm256(c) => bytes(c),
            CryptoInfo::Chacha20Poly1305(c) => bytes(c),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        fn wipe<T>(t: &mut T) {
            let p = (t as *mut T).cast::<u8>();
            for i in 0..std::mem::size_of::<T>() {
                // SAFETY: `p + i` stays inside `*t`, a plain byte struct;
                // volatile so the compiler keeps the stores.
                unsafe { std::ptr::write_volatile(p.add(i), 0) };
            }
        }
        match self {
            CryptoInfo::AesGcm128(c) => wipe(c),
            CryptoInfo::AesGcm256(c) => wipe(c),
            CryptoInfo::Chacha20Poly1305(c) => wipe(c),
        }
    }
}

/// Configures one direction (`libc::TLS_TX` or `libc::TLS_RX`).
pub fn set_crypto(fd: RawFd, direction: libc::c_int, info: &CryptoInfo) -> io::Result<()> {
    let b = info.as_bytes();
    // SAFETY: the kernel reads `b.len()` bytes from a valid slice.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TLS,
            direction,
            b.as_ptr().cast(),
            b.len() as libc::socklen_t,
        )
    })
}

/// A connection whose record layer is in the kernel: what is left of it
/// in user space.
#[derive(Debug, Clone, Copy)]
pub struct KtlsState {
    /// Version and cipher.
    pub offload: Offload,
    /// Records sent (an upper estimate: one per write, plus one per full
    /// 16 KiB).
    records: u64,
    /// When to ask for a reconnect: 7/8 of the cipher's confidentiality
    /// limit, since the kernel cannot rotate keys for us.
    record_limit: u64,
}

impl KtlsState {
    /// Counts a write of `n` bytes.
    pub fn count_write(&mut self, n: usize) {
        if n > 0 {
            self.records = self
                .records
                .saturating_add(n.div_ceil(MAX_PLAINTEXT) as u64);
        }
    }

    /// Whether the connection has sent so many records under one key that
    /// it should reconnect (close it with a reconnect code).
    pub fn must_reconnect(&self) -> bool {
        self.records >= self.record_limit
    }
}

const MAX_PLAINTEXT: usize = 16384;

/// Why [`try_enable_ktls`] did not switch.
pub enum KtlsError {
    /// Nothing happened: the connection is handed back, still usable.
    Unavailable {
        /// The rustls connection, unchanged.
        conn: Box<UnbufferedServerConnection>,
        /// Why.
        reason: Unavailable,
    },
    /// The keys were extracted but the kernel refused them: the connection
    /// is lost (close the socket). Only a kernel that changed between the
    /// probe and now gets here.
    Failed(io::Error),
}

/// Hands an established connection's record layer to the kernel.
///
/// `conn` must have finished its handshake with nothing left to send or
/// to read in user space (the caller's buffers empty), and its config
/// must allow secret extraction. Checks everything that can fail
/// (negotiated cipher, kernel support, attaching the ULP) before the
/// secrets are extracted, so a fallback keeps the connection.
pub fn try_enable_ktls(
    fd: RawFd,
    conn: Box<UnbufferedServerConnection>,
) -> Result<KtlsState, KtlsError> {
    let Some(suite) = conn.negotiated_cipher_suite() else {
        return Err(KtlsError::Unavailable {
            conn,
            reason: Unavailable::Cipher,
        });
    };
    let support = ktls_supported();
    let offload = match Offload::of(suite) {
        Some(o) if support.allows(o) => o,
        _ => {
            let reason = if support.available() {
                Unavailable::Cipher
            } else {
                Unavailable::NoUlp
            };
            return Err(KtlsError::Unavailable { conn, reason });
        }
    };
    if let Err(e) = attach_ulp(fd) {
        let reason = Unavailable::Attach(e.raw_os_error().unwrap_or(libc::EINVAL));
        return Err(KtlsError::Unavailable { conn, reason });
    }
    let limit = match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    let (secrets, _kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(|e| KtlsError::Failed(io::Error::other(e)))?;
    let tx = CryptoInfo::from_secrets(offload.version, secrets.tx.0, &secrets.tx.1)
        .map_err(KtlsError::Failed)?;
    let rx = CryptoInfo::from_secrets(offload.version, secrets.rx.0, &secrets.rx.1)
        .map_err(KtlsError::Failed)?;
    set_crypto(fd, libc::TLS_TX, &tx).map_err(KtlsError::Failed)?;
    set_crypto(fd, libc::TLS_RX, &rx).map_err(KtlsError::Failed)?;
    Ok(KtlsState {
        offload,
        records: 0,
        record_limit: limit - limit / 8,
    })
}

/// Control-message space for one `TLS_GET_RECORD_TYPE` byte, aligned
/// for `cmsghdr`.
#[repr(C, align(8))]
struct Cmsg([u8; 32]);

/// Reads from a kTLS socket: bytes and the record type they came in
/// (application data unless a control message says otherwise; a
/// non-data record always comes alone). `Ok((0, _))` is end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = Cmsg([0; 32]);
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len() as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `cmsg`, both alive
    // for the call; the kernel writes within their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut record = RECORD_APPLICATION_DATA;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel
    // filled, bounded by `msg.msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_TLS && (*c).cmsg_type == libc::TLS_GET_RECORD_TYPE {
                record = *libc::CMSG_DATA(c);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, record))
}

/// Sends one record of `record_type` holding `payload` on a kTLS socket
/// (`TLS_SET_RECORD_TYPE`). Returns the payload bytes sent.
pub fn send_record(fd: RawFd, record_type: u8, payload: &[u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut cmsg = Cmsg([0; 32]);
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the header and its one
    // data byte fit in the 32-byte, 8-aligned buffer `msg` points at.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_TLS;
        (*c).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*c).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(c) = record_type;
    }
    // SAFETY: `msg` points at `iov` (over `payload`) and `cmsg`, alive for
    // the call; the kernel only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The close_notify alert (warning level, description 0).
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];

#[cfg(test)]
mod tests;
