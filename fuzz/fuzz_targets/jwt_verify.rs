//! The JWT verifier on arbitrary input: never panics, never accepts.
//! (A valid signature cannot be produced by chance; the seeded test
//! `auth::tests::random` also mutates valid tokens.)
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsedge::auth::{AuthConfig, AuthMode, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/auth/ec256_public.pem"
        );
        Verifier::new(&AuthConfig {
            mode: AuthMode::Jwt,
            hmac_secret: Some("0123456789abcdef0123456789abcdef".into()),
            public_key_file: Some(key.into()),
            audience: Some("wsedge".into()),
            ..AuthConfig::default()
        })
        .expect("fixture key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    assert!(verifier().verify_connect(token, 1_735_689_600).is_err());
    assert!(verifier().verify_subscribe(token, 1_735_689_600).is_err());
});
