//! Mints a connection (or subscription) JWT for trying out and benchmarking
//! a node with `[auth] mode = "jwt"`. A real deployment's backend or
//! identity provider issues tokens; this is for local use.
//!
//! ```sh
//! WSEDGE_AUTH_HMAC_SECRET=... cargo run --release --example mint_token -- HS256 - ann 3600
//! cargo run --release --example mint_token -- ES256 issuer-private.pem ann 3600 [channel]
//! ```
//!
//! Arguments: algorithm (HS256 takes the secret from
//! `WSEDGE_AUTH_HMAC_SECRET`; ES256/ES384/RS256/EdDSA take a private-key PEM
//! file), the user (`sub`), seconds until `exp`, and optionally a channel
//! (which makes it a subscription token).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [alg, key, sub, ttl, rest @ ..] = args.as_slice() else {
        return Err("usage: mint_token ALG KEY_FILE|- SUB TTL_SECONDS [CHANNEL]".into());
    };
    let alg: Algorithm = alg.parse()?;
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = std::env::var("WSEDGE_AUTH_HMAC_SECRET")?;
            EncodingKey::from_secret(secret.as_bytes())?
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&std::fs::read(key)?)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&std::fs::read(key)?)?,
        _ => EncodingKey::from_rsa_pem(&std::fs::read(key)?)?,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({"sub": sub, "exp": now + ttl.parse::<u64>()?});
    if let Some(channel) = rest.first() {
        claims["channel"] = channel.as_str().into();
    }
    println!("{}", encode(&Header::new(alg), &claims, &key)?);
    Ok(())
}
