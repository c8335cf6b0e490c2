use std::io::{Read, Write};
use std::mem::{offset_of, size_of};

use rustls::crypto::cipher::{AeadKey, Iv};

use super::*;

#[test]
fn crypto_info_structs_match_the_kernel_uapi_layout() {
    // linux/tls.h: struct tls_crypto_info { __u16 version; __u16 cipher_type; }
    // followed by iv, key, salt, rec_seq as byte arrays, no padding.
    type A128 = libc::tls12_crypto_info_aes_gcm_128;
    assert_eq!(size_of::<A128>(), 40);
    assert_eq!(offset_of!(A128, iv), 4);
    assert_eq!(offset_of!(A128, key), 12);
    assert_eq!(offset_of!(A128, salt), 28);
    assert_eq!(offset_of!(A128, rec_seq), 32);
    type A256 = libc::tls12_crypto_info_aes_gcm_256;
    assert_eq!(size_of::<A256>(), 56);
    assert_eq!(offset_of!(A256, key), 12);
    assert_eq!(offset_of!(A256, salt), 44);
    assert_eq!(offset_of!(A256, rec_seq), 48);
    type C = libc::tls12_crypto_info_chacha20_poly1305;
    assert_eq!(size_of::<C>(), 56);
    assert_eq!(offset_of!(C, iv), 4);
    assert_eq!(offset_of!(C, key), 16);
    assert_eq!(offset_of!(C, rec_seq), 48);
    assert_eq!(libc::TLS_1_2_VERSION, 0x0303);
    assert_eq!(libc::TLS_1_3_VERSION, 0x0304);
    assert_eq!(libc::SOL_TLS, 282);
    assert_eq!(libc::TCP_ULP, 31);
}

fn seq_key(n: usize, from: u8) -> Vec<u8> {
    (0..n).map(|i| from.wrapping_add(i as u8)).collect()
}

#[test]
fn aes_128_gcm_splits_the_iv_into_salt_and_iv_and_stores_the_sequence_big_endian() {
    let key: [u8; 16] = seq_key(16, 0x10).try_into().unwrap();
    let iv: [u8; 12] = seq_key(12, 0xa0).try_into().unwrap();
    let info = CryptoInfo::aes_gcm_128(Version::Tls13, &key, &iv, 0x0102_0304_0506_0708);
    let mut want = vec![0x04, 0x03, 51, 0]; // TLS 1.3, TLS_CIPHER_AES_GCM_128 (little endian)
    want.extend_from_slice(&iv[4..]);
    want.extend_from_slice(&key);
    want.extend_from_slice(&iv[..4]);
    want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(info.as_bytes(), &want[..]);
}

#[test]
fn crypto_info_from_extracted_secrets_for_each_aead() {
    let key32: [u8; 32] = seq_key(32, 0x40).try_into().unwrap();
    let iv: [u8; 12] = seq_key(12, 0xc0).try_into().unwrap();

    let s = ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(key32),
        iv: Iv::new(iv),
    };
    let info = CryptoInfo::from_secrets(Version::Tls12, 7, &s).unwrap();
    let mut want = vec![0x03, 0x03, 52, 0];
    want.extend_from_slice(&iv[4..]);
    want.extend_from_slice(&key32);
    want.extend_from_slice(&iv[..4]);
    want.extend_from_slice(&7u64.to_be_bytes());
    assert_eq!(info.as_bytes(), &want[..]);

    let s = ConnectionTrafficSecrets::Chacha20Poly1305 {
        key: AeadKey::from(key32),
        iv: Iv::new(iv),
    };
    let info = CryptoInfo::from_secrets(Version::Tls13, u64::MAX, &s).unwrap();
    let mut want = vec![0x04, 0x03, 54, 0];
    want.extend_from_slice(&iv);
    want.extend_from_slice(&key32);
    want.extend_from_slice(&[0xff; 8]);
    assert_eq!(info.as_bytes(), &want[..]);

    // A 32-byte key cannot be AES-128.
    let s = ConnectionTrafficSecrets::Aes128Gcm {
        key: AeadKey::from(key32),
        iv: Iv::new(iv),
    };
    let e = CryptoInfo::from_secrets(Version::Tls13, 0, &s)
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn every_suite_of_the_provider_maps_to_a_kernel_offload() {
    let provider = crate::tls::provider();
    assert_eq!(provider.cipher_suites.len(), 9);
    for s in &provider.cipher_suites {
        let o = Offload::of(*s).unwrap_or_else(|| panic!("{:?}", s.suite()));
        let v = match s {
            SupportedCipherSuite::Tls13(_) => Version::Tls13,
            SupportedCipherSuite::Tls12(_) => Version::Tls12,
        };
        assert_eq!(o.version, v);
    }
    let bits: Vec<u8> = Offload::ALL.iter().map(|o| o.bit()).collect();
    assert_eq!(bits, [1, 2, 4, 8, 16, 32]);
}

fn available_ulps() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default()
}

#[test]
fn the_probe_agrees_with_what_the_kernel_lets_a_socket_do() {
    let support = ktls_supported();
    let (_c, s) = loopback_pair().unwrap();
    let attached = attach_ulp(s.as_raw_fd());
    if support.available() {
        assert!(attached.is_ok(), "probe found kTLS, attaching must work");
        assert!(support.unavailable_reason().is_none());
    } else {
        // This machine: no `tls` ULP, so setsockopt fails with ENOENT.
        let reason = support.unavailable_reason().unwrap();
        if !available_ulps().contains("tls") {
            let e = attached.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
            assert!(reason.contains("no tls ULP"), "{reason}");
        }
    }
}

#[test]
fn attaching_the_ulp_needs_an_established_socket() {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let e = attach_ulp(s.as_raw_fd()).unwrap_err();
    // Not connected (ENOTCONN), or no ULP at all (ENOENT) where the
    // kernel checks the name first.
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::ENOENT)),
        "{e}"
    );
}

#[test]
fn recv_reports_application_data_when_no_record_type_comes_with_the_bytes() {
    let (mut c, s) = loopback_pair().unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let (n, ty) = recv(s.as_raw_fd(), &mut buf).unwrap();
    assert_eq!((&buf[..n], ty), (&b"hello"[..], RECORD_APPLICATION_DATA));
    drop(c);
    assert_eq!(recv(s.as_raw_fd(), &mut buf).unwrap().0, 0, "end of stream");
}

#[test]
fn send_record_builds_a_valid_control_message() {
    // On a socket without kTLS the kernel ignores the SOL_TLS control
    // message and sends the payload as is: the message header is sound.
    let (mut c, s) = loopback_pair().unwrap();
    assert_eq!(
        send_record(s.as_raw_fd(), RECORD_ALERT, &CLOSE_NOTIFY).unwrap(),
        2
    );
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(buf, CLOSE_NOTIFY);
}

#[test]
fn a_ktls_connection_asks_to_reconnect_before_the_confidentiality_limit() {
    let mut k = KtlsState {
        offload: Offload::ALL[0],
        records: 0,
        record_limit: 100,
    };
    k.count_write(0);
    k.count_write(1);
    k.count_write(16384);
    k.count_write(16385);
    assert_eq!(k.records, 4);
    assert!(!k.must_reconnect());
    k.count_write(96 * 16384);
    assert!(k.must_reconnect());
}
