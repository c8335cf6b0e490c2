//! TLS for `wss://` URLs: which certificates the client trusts, the
//! rustls configuration made from that, and what a failed handshake means.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// Which certificate authorities a client trusts on `wss://` URLs
/// ([`Options::tls`](crate::Options::tls)); `ws://` URLs ignore it.
///
/// The default trusts the public roots: Mozilla's set (compiled in, from
/// `webpki-roots`), plus the operating system's store with the crate
/// feature `native-roots`. A private deployment (a company CA, a
/// self-signed certificate in a test) adds its CA with
/// [`TlsConfig::add_ca_pem`], or trusts only it with
/// [`TlsConfig::private_ca_pem`].
///
/// TLS is rustls on aws-lc-rs (TLS 1.2 and 1.3, the server name checked
/// against the URL's host, ALPN `http/1.1`). A certificate the client does
/// not trust fails the connection attempt for good (no reconnect; see
/// [`codes::TLS_FAILED`](crate::codes::TLS_FAILED)).
///
/// ```no_run
/// # fn demo() -> Result<(), wsedge_client::Error> {
/// use wsedge_client::{Client, Options, TlsConfig};
///
/// let ca = std::fs::read("/etc/myapp/ca.pem").expect("the CA file");
/// let options = Options {
///     tls: TlsConfig::private_ca_pem(&ca)?,
///     ..Options::default()
/// };
/// # let _ = options; Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    public_roots: bool,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            public_roots: true,
            extra_roots: Vec::new(),
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("public_roots", &self.public_roots)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl TlsConfig {
    /// Trusts only the CA certificates in `pem` (one or more `CERTIFICATE`
    /// blocks; other blocks are skipped), not the public roots.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when `pem` holds no certificate or one that cannot be
    /// read.
    pub fn private_ca_pem(pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        TlsConfig::default().public_roots(false).add_ca_pem(pem)
    }

    /// Also trusts the CA certificates in `pem`, besides those trusted
    /// already.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when `pem` holds no certificate or one that cannot be
    /// read.
    pub fn add_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_ref()) {
            let cert = cert.map_err(|e| Error::Tls(format!("reading the CA PEM: {e}")))?;
            // Checked now, so a bad certificate is this call's error rather
            // than a connection attempt's.
            RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| Error::Tls(format!("a CA certificate in the PEM: {e}")))?;
            self.extra_roots.push(cert);
            found += 1;
        }
        if found == 0 {
            return Err(Error::Tls("no CERTIFICATE block in the CA PEM".into()));
        }
        Ok(self)
    }

    /// Also trusts the CA certificates in the PEM file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when the file cannot be read, or as
    /// [`TlsConfig::add_ca_pem`].
    pub fn add_ca_file(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))?;
        self.add_ca_pem(pem)
    }

    /// Whether to trust the public roots (Mozilla's; the system's with the
    /// `native-roots` feature). Default true.
    pub fn public_roots(mut self, trust: bool) -> Self {
        self.public_roots = trust;
        self
    }

    /// The rustls configuration: the roots, the aws-lc-rs provider with
    /// its safe defaults, ALPN `http/1.1` (what the node serves).
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut roots = RootCertStore::empty();
        if self.public_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            #[cfg(feature = "native-roots")]
            {
                // Certificates the system store holds but rustls cannot
                // read are skipped, as are the store's loading errors:
                // Mozilla's roots are there either way.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        for cert in &self.extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| Error::Tls(format!("a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "no trusted root certificate (public roots off and no CA added)".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What a TLS failure while opening means: the error to report, and
/// whether reconnecting may help.
pub(crate) struct TlsFailure {
    pub error: Error,
    pub reconnect: bool,
}

/// The rustls error inside a failed connection attempt's I/O error, as a
/// [`TlsFailure`]; `None` when the failure is not TLS's.
pub(crate) fn classify(e: &std::io::Error) -> Option<TlsFailure> {
    let rustls_error = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match rustls_error {
        // The server's certificate is not one this client trusts (unknown
        // CA, expired, another host's name): a configuration matter that
        // retrying will not fix.
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsFailure {
                error: Error::Tls(format!(
                    "the server's certificate is not trusted ({rustls_error}); \
                     a private CA is trusted with TlsConfig::add_ca_pem"
                )),
                reconnect: false,
            }
        }
        // Anything else (an alert from the server, a handshake cut short)
        // may pass on a later attempt.
        other => TlsFailure {
            error: Error::Tls(format!("handshake failed: {other}")),
            reconnect: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` (made once with rcgen;
    /// only parsed here, never used to connect).
    fn pem() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn the_default_trusts_the_public_roots() {
        let c = TlsConfig::default().client_config().unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_private_ca_replaces_the_public_roots() {
        let one = TlsConfig::private_ca_pem(pem()).unwrap();
        assert!(!one.public_roots);
        assert_eq!(one.extra_roots.len(), 1);
        one.client_config().unwrap();
        // Several certificates in one PEM, and a key block skipped.
        let key =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        let two = TlsConfig::default()
            .add_ca_pem(format!("{}{key}{}", pem(), pem()))
            .unwrap();
        assert!(two.public_roots);
        assert_eq!(two.extra_roots.len(), 2);
    }

    #[test]
    fn bad_pem_is_refused_at_once() {
        let e = TlsConfig::private_ca_pem("not a pem").unwrap_err();
        assert!(
            matches!(&e, Error::Tls(m) if m.contains("no CERTIFICATE")),
            "{e:?}"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = TlsConfig::private_ca_pem(garbage).unwrap_err();
        assert!(matches!(e, Error::Tls(_)), "{e:?}");
        let e = TlsConfig::default()
            .add_ca_file("/nonexistent/ca.pem")
            .unwrap_err();
        assert!(
            matches!(&e, Error::Tls(m) if m.contains("/nonexistent/ca.pem")),
            "{e:?}"
        );
        let e = TlsConfig::default()
            .public_roots(false)
            .client_config()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Tls(m) if m.contains("no trusted root")),
            "{e:?}"
        );
    }

    #[test]
    fn certificate_errors_are_final_others_are_not() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let f = classify(&io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )))
        .unwrap();
        assert!(!f.reconnect);
        assert!(
            matches!(&f.error, Error::Tls(m) if m.contains("not trusted") && m.contains("UnknownIssuer")),
            "{:?}",
            f.error
        );
        let f = classify(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        )))
        .unwrap();
        assert!(f.reconnect);
        assert!(classify(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).is_none());
    }
}
