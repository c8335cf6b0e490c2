use std::sync::Arc;

use super::testutil::TestCert;
use super::*;

#[test]
fn defaults_leave_tls_off_with_ktls_auto_and_a_handshake_budget() {
    let c = TlsConfig::default();
    assert!(!c.enabled());
    assert_eq!(c.min_version, TlsVersion::V1_2);
    assert_eq!(c.ktls, KtlsMode::Auto);
    assert_eq!(c.handshakes_per_turn, 16);
    assert!(c.validate().is_ok());
}

#[test]
fn the_section_parses_with_its_exact_key_names() {
    let c: TlsConfig = toml::from_str(
        r#"
        cert_file = "/etc/wsedge/cert.pem"
        key_file = "/etc/wsedge/key.pem"
        min_version = "1.3"
        ktls = "off"
        handshakes_per_turn = 8
        "#,
    )
    .unwrap();
    assert!(c.enabled());
    assert_eq!(
        c.cert_file.as_deref(),
        Some(Path::new("/etc/wsedge/cert.pem"))
    );
    assert_eq!(c.min_version, TlsVersion::V1_3);
    assert_eq!(c.ktls, KtlsMode::Off);
    assert_eq!(c.handshakes_per_turn, 8);

    let e = toml::from_str::<TlsConfig>("certfile = \"x\"").unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    let e = toml::from_str::<TlsConfig>("min_version = \"1.1\"").unwrap_err();
    assert!(e.to_string().contains("1.2"), "{e}");
    let e = toml::from_str::<TlsConfig>("ktls = \"on\"").unwrap_err();
    assert!(e.to_string().contains("auto"), "{e}");
}

#[test]
fn validation_wants_both_files_and_a_positive_budget() {
    let only_cert = TlsConfig {
        cert_file: Some("c.pem".into()),
        ..TlsConfig::default()
    };
    assert!(!only_cert.enabled());
    let e = only_cert.validate().unwrap_err();
    assert!(e.to_string().contains("together"), "{e}");
    let zero = TlsConfig {
        handshakes_per_turn: 0,
        ..TlsConfig::default()
    };
    assert!(zero.validate().is_err());
    let e = TlsAcceptorConfig::new(&TlsConfig::default()).unwrap_err();
    assert!(e.to_string().contains("not set"), "{e}");
}

#[test]
fn the_server_config_offers_http11_tickets_and_extraction_only_for_ktls() {
    let cert = TestCert::new();
    let a = TlsAcceptorConfig::new(&cert.config(TlsVersion::V1_2, KtlsMode::Auto)).unwrap();
    let sc = a.server_config();
    assert_eq!(sc.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(sc.enable_secret_extraction);
    assert_eq!(sc.send_tls13_tickets, 1);
    assert!(sc.ticketer.enabled());
    let off = TlsAcceptorConfig::new(&cert.config(TlsVersion::V1_3, KtlsMode::Off)).unwrap();
    assert!(!off.server_config().enable_secret_extraction);
}

#[test]
fn unreadable_empty_and_mismatched_files_are_refused_with_the_reason() {
    let cert = TestCert::new();
    let other = TestCert::new();

    let mut c = cert.config(TlsVersion::V1_2, KtlsMode::Auto);
    c.cert_file = Some(cert.dir.join("missing.pem"));
    let e = TlsAcceptorConfig::new(&c).unwrap_err();
    assert!(matches!(e, TlsError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let empty = cert.dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let mut c = cert.config(TlsVersion::V1_2, KtlsMode::Auto);
    c.cert_file = Some(empty.clone());
    let e = TlsAcceptorConfig::new(&c).unwrap_err();
    assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    let mut c = cert.config(TlsVersion::V1_2, KtlsMode::Auto);
    c.key_file = Some(empty);
    let e = TlsAcceptorConfig::new(&c).unwrap_err();
    assert!(e.to_string().contains("no PRIVATE KEY"), "{e}");

    // The key of another certificate.
    let mut c = cert.config(TlsVersion::V1_2, KtlsMode::Auto);
    c.key_file = Some(other.key_file.clone());
    let e = TlsAcceptorConfig::new(&c).unwrap_err();
    assert!(matches!(e, TlsError::Rustls(_)), "{e}");
}

#[test]
fn reload_swaps_the_config_and_a_bad_file_keeps_the_old_one() {
    let mut cert = TestCert::new();
    let a = TlsAcceptorConfig::new(&cert.config(TlsVersion::V1_2, KtlsMode::Auto)).unwrap();
    let first = a.server_config();
    cert.regenerate();
    a.reload().unwrap();
    let second = a.server_config();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(a.reloads(), 1);

    std::fs::write(&cert.cert_file, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    let e = a.reload().unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e}");
    assert!(Arc::ptr_eq(&second, &a.server_config()), "old config kept");
    assert_eq!(a.reloads(), 1);

    cert.regenerate();
    std::fs::remove_file(&cert.key_file).unwrap();
    assert!(matches!(a.reload(), Err(TlsError::Read { .. })));
    assert!(Arc::ptr_eq(&second, &a.server_config()));
}

#[test]
fn the_handshake_budget_refills_each_turn() {
    let mut b = HandshakeBudget::new(2);
    assert!(!b.exhausted());
    assert!(b.try_take());
    assert!(b.try_take());
    assert!(b.exhausted());
    assert!(!b.try_take(), "third handshake waits for the next turn");
    b.start_turn();
    assert!(!b.exhausted());
    assert!(b.try_take());
}

#[test]
fn failures_are_classified_by_who_broke_what() {
    let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let cases = [
        (
            tls(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            )),
            TlsFailure::InvalidMessage,
        ),
        (
            tls(rustls::Error::NoApplicationProtocol),
            TlsFailure::NoApplicationProtocol,
        ),
        (
            tls(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            )),
            TlsFailure::Incompatible,
        ),
        (
            tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA,
            )),
            TlsFailure::Alert,
        ),
        (tls(rustls::Error::DecryptError), TlsFailure::DecryptError),
        (tls(rustls::Error::General("x".into())), TlsFailure::Other),
        (
            io::Error::new(io::ErrorKind::InvalidData, "TLS message too large"),
            TlsFailure::InvalidMessage,
        ),
        (
            io::Error::from(io::ErrorKind::ConnectionReset),
            TlsFailure::Io,
        ),
    ];
    for (e, want) in cases {
        assert_eq!(TlsFailure::of(&e), want, "{e}");
    }
    let labels: std::collections::HashSet<_> = TlsFailure::ALL.iter().map(|f| f.label()).collect();
    assert_eq!(labels.len(), TlsFailure::ALL.len());
}
