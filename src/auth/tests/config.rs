//! `[auth]`: defaults, TOML names, environment names, validation, and the
//! errors of loading keys.
#![allow(clippy::result_large_err)] // figment::Jail's closure signature

use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::Deserialize;

use super::*;
use crate::auth::config::merge_env;

#[derive(Deserialize)]
struct Wrapper {
    #[serde(default)]
    auth: AuthConfig,
}

fn from_toml(text: &str) -> Result<AuthConfig, String> {
    Figment::new()
        .merge(Toml::string(text))
        .extract::<Wrapper>()
        .map(|w| w.auth)
        .map_err(|e| e.to_string())
}

#[test]
fn defaults() {
    let d = AuthConfig::default();
    assert_eq!(d.mode, AuthMode::None);
    assert_eq!(d.leeway, Duration::from_secs(5));
    assert_eq!(d.connect_timeout, Duration::from_secs(10));
    assert_eq!(d.refresh_grace, Duration::from_secs(25));
    assert!(!d.allow_anonymous);
    assert!(!d.has_jwt_keys());
    assert_eq!(d.validate(), Ok(()));
    assert_eq!(from_toml("").unwrap(), d);
    // Round trip through the figment defaults the node's config uses.
    let back: AuthConfig = Figment::from(Serialized::defaults(d.clone()))
        .extract()
        .unwrap();
    assert_eq!(back, d);
}

#[test]
fn every_key_by_its_contract_name() {
    let cfg = from_toml(
        r#"
        [auth]
        mode = "jwt_or_ticket"
        hmac_secret = "0123456789abcdef0123456789abcdef"
        public_key_file = "/etc/wsedge/jwt.pem"
        jwks_url = "https://auth.example.com/.well-known/jwks.json"
        jwks_ca_file = "/etc/wsedge/ca.pem"
        audience = "wsedge"
        issuer = "https://auth.example.com"
        leeway = "2s"
        allow_anonymous = true
        redis_url = "redis://127.0.0.1:6379/0"
        connect_timeout = "3s"
        refresh_grace = "1m"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.mode, AuthMode::JwtOrTicket);
    assert!(cfg.mode.accepts_jwt() && cfg.mode.accepts_ticket());
    assert_eq!(cfg.leeway, Duration::from_secs(2));
    assert_eq!(cfg.refresh_grace, Duration::from_secs(60));
    assert_eq!(cfg.connect_timeout, Duration::from_secs(3));
    assert_eq!(cfg.audience.as_deref(), Some("wsedge"));
    assert_eq!(cfg.validate(), Ok(()));
    let f = from_toml("[auth]\njwks_file = \"/k.json\"\nmode = \"jwt\"").unwrap();
    assert_eq!(
        f.jwks_file.as_deref(),
        Some(std::path::Path::new("/k.json"))
    );
    for (mode, want) in [
        ("none", AuthMode::None),
        ("jwt", AuthMode::Jwt),
        ("ticket", AuthMode::Ticket),
    ] {
        assert_eq!(
            from_toml(&format!("[auth]\nmode = \"{mode}\""))
                .unwrap()
                .mode,
            want
        );
        assert_eq!(want.as_str(), mode);
    }
    assert!(from_toml("[auth]\nmode = \"JWT\"").is_err());
    assert!(
        from_toml("[auth]\nhmac_key = \"x\"")
            .unwrap_err()
            .contains("hmac_key")
    );
    assert!(from_toml("[auth]\nleeway = \"soon\"").is_err());
}

#[test]
fn environment_names() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("WSEDGE_AUTH_MODE", "jwt");
        jail.set_env(
            "WSEDGE_AUTH_HMAC_SECRET",
            "01234567890123456789012345678901",
        );
        jail.set_env("WSEDGE_AUTH_AUDIENCE", "wsedge");
        jail.set_env("WSEDGE_AUTH_LEEWAY", "1s");
        jail.set_env("WSEDGE_AUTH_ALLOW_ANONYMOUS", "true");
        jail.set_env("WSEDGE_AUTH_REFRESH_GRACE", "40s");
        jail.set_env("WSEDGE_AUTH_JWKS_CA_FILE", "/ca.pem");
        let fig = merge_env(Figment::from(Toml::string(
            "[auth]\nissuer = \"from-file\"",
        )))
        .unwrap();
        let cfg = fig.extract::<Wrapper>().unwrap().auth;
        assert_eq!(cfg.mode, AuthMode::Jwt);
        // All digits, yet kept as the string it is.
        assert_eq!(
            cfg.hmac_secret.as_deref(),
            Some("01234567890123456789012345678901")
        );
        assert_eq!(cfg.audience.as_deref(), Some("wsedge"));
        assert_eq!(cfg.issuer.as_deref(), Some("from-file"));
        assert_eq!(cfg.leeway, Duration::from_secs(1));
        assert!(cfg.allow_anonymous);
        assert_eq!(cfg.refresh_grace, Duration::from_secs(40));
        assert_eq!(
            cfg.jwks_ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        jail.set_env("WSEDGE_AUTH_NO_SUCH_KEY", "1");
        let err = merge_env(Figment::new())
            .unwrap()
            .extract::<Wrapper>()
            .err()
            .unwrap();
        assert!(err.to_string().contains("no_such_key"), "{err}");
        Ok(())
    });
}

#[test]
fn debug_output_hides_secrets() {
    let cfg = AuthConfig {
        redis_url: Some("redis://:hunter2@10.0.0.1/0".into()),
        ..hmac_config()
    };
    let text = format!("{cfg:?}");
    assert!(
        !text.contains(SECRET) && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("hmac_secret: \"<hidden>\""), "{text}");
    let plain = AuthConfig {
        redis_url: Some("redis://127.0.0.1/0".into()),
        ..AuthConfig::default()
    };
    assert!(format!("{plain:?}").contains("redis://127.0.0.1/0"));
}

#[test]
fn validation_errors_name_the_key() {
    let ok = hmac_config();
    assert_eq!(ok.validate(), Ok(()));
    let cases: Vec<(AuthConfig, &str)> = vec![
        (
            AuthConfig {
                hmac_secret: None,
                ..ok.clone()
            },
            "needs a key",
        ),
        (
            AuthConfig {
                mode: AuthMode::JwtOrTicket,
                hmac_secret: None,
                ..ok.clone()
            },
            "needs a key",
        ),
        (
            AuthConfig {
                mode: AuthMode::Ticket,
                ..ok.clone()
            },
            "auth.redis_url",
        ),
        (
            AuthConfig {
                mode: AuthMode::Ticket,
                redis_url: Some(String::new()),
                ..ok.clone()
            },
            "auth.redis_url",
        ),
        (
            AuthConfig {
                hmac_secret: Some("short".into()),
                ..ok.clone()
            },
            "at least 32",
        ),
        (
            AuthConfig {
                jwks_file: Some("/a".into()),
                jwks_url: Some("https://x/j".into()),
                ..ok.clone()
            },
            "not both",
        ),
        (
            AuthConfig {
                jwks_url: Some("http://x/j".into()),
                ..ok.clone()
            },
            "must be https",
        ),
        (
            AuthConfig {
                jwks_url: Some("not a url".into()),
                ..ok.clone()
            },
            "not a URL",
        ),
        (
            AuthConfig {
                jwks_ca_file: Some("/ca".into()),
                ..ok.clone()
            },
            "only used with",
        ),
        (
            AuthConfig {
                audience: Some(String::new()),
                ..ok.clone()
            },
            "auth.audience",
        ),
        (
            AuthConfig {
                issuer: Some(String::new()),
                ..ok.clone()
            },
            "auth.issuer",
        ),
        (
            AuthConfig {
                leeway: Duration::from_secs(301),
                ..ok.clone()
            },
            "auth.leeway",
        ),
        (
            AuthConfig {
                connect_timeout: Duration::ZERO,
                ..ok.clone()
            },
            "connect_timeout",
        ),
    ];
    for (cfg, want) in cases {
        let err = cfg.validate().unwrap_err();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
        // Verifier::new refuses what validate refuses.
        assert!(Verifier::new(&cfg).is_err());
    }
    // mode none with keys is fine (the keys are simply unused).
    assert_eq!(
        AuthConfig {
            mode: AuthMode::None,
            ..ok
        }
        .validate(),
        Ok(())
    );
}

#[test]
fn key_files_are_checked_at_start() {
    let missing = AuthConfig {
        public_key_file: Some("/nonexistent/key.pem".into()),
        ..hmac_config()
    };
    let err = Verifier::new(&missing).unwrap_err();
    assert!(
        err.starts_with("auth.public_key_file /nonexistent/key.pem"),
        "{err}"
    );
    for (contents, want) in [
        (fixture("rsa_private.pem"), "private key"),
        (fixture("ed25519_private.pem"), "private key"),
        (
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
            "not a PEM",
        ),
        (b"hello".to_vec(), "not a PEM"),
    ] {
        let cfg = AuthConfig {
            public_key_file: Some(temp_file("key.pem", &contents)),
            ..hmac_config()
        };
        let err = Verifier::new(&cfg).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
    let no_keys = AuthConfig {
        mode: AuthMode::None,
        ..AuthConfig::default()
    };
    assert!(Verifier::new(&no_keys).unwrap_err().contains("no JWT key"));
    let bad_ca = AuthConfig {
        jwks_url: Some("https://127.0.0.1:9/j".into()),
        jwks_ca_file: Some("/nonexistent/ca.pem".into()),
        ..hmac_config()
    };
    assert!(
        Verifier::new(&bad_ca)
            .unwrap_err()
            .starts_with("auth.jwks_ca_file")
    );
}
