//! Test helpers: self-signed certificates written to temporary files, and
//! rustls client configurations that trust them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;

use super::{KtlsMode, TlsConfig, TlsVersion};

/// A self-signed certificate for `localhost` and its key, as PEM files in
/// a fresh directory (removed on drop).
pub(crate) struct TestCert {
    pub(crate) dir: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) der: CertificateDer<'static>,
}

impl TestCert {
    /// A new certificate in a new directory.
    pub(crate) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        let mut c = Self {
            dir,
            cert_file,
            key_file,
            der: CertificateDer::from(Vec::new()),
        };
        c.regenerate();
        c
    }

    /// Overwrites the files with a new certificate and key.
    pub(crate) fn regenerate(&mut self) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&self.cert_file, ck.cert.pem()).unwrap();
        std::fs::write(&self.key_file, ck.signing_key.serialize_pem()).unwrap();
        self.der = ck.cert.der().clone();
    }

    /// `[tls]` settings naming these files.
    pub(crate) fn config(&self, min_version: TlsVersion, ktls: KtlsMode) -> TlsConfig {
        TlsConfig {
            cert_file: Some(self.cert_file.clone()),
            key_file: Some(self.key_file.clone()),
            min_version,
            ktls,
            ..TlsConfig::default()
        }
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client trusting `roots`, limited to `versions`, offering `alpn`.
pub(crate) fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(super::provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}
