//! The pure parts of a redemption: which ticket strings may reach Redis,
//! the key a ticket lives under, and the claims JSON a backend stored.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bridge::{TicketClaims, TicketError};

/// Prefix of every ticket key: a ticket `t` lives at `wsedge:ticket:<t>`.
pub const KEY_PREFIX: &str = "wsedge:ticket:";

/// Longest ticket accepted, in bytes. Generous for any random token
/// (a 256-bit token is 43 characters in base64url); it keeps keys short
/// and a client from making the edge send large commands.
pub const MAX_TICKET_LEN: usize = 256;

/// Largest claims value accepted, in bytes. Claims are kept with the
/// connection for its lifetime (`info` is shown in presence), so an
/// oversized value is refused as malformed rather than stored.
pub const MAX_CLAIMS_LEN: usize = 64 * 1024;

/// Whether `ticket` may be looked up: 1 to [`MAX_TICKET_LEN`] bytes of
/// printable ASCII without spaces (`!` to `~`). Anything else is answered
/// [`TicketError::Invalid`] without asking Redis, so a client cannot make
/// the edge look up keys with whitespace, control characters or non-ASCII
/// in them, nor long ones.
pub fn valid_ticket(ticket: &str) -> bool {
    !ticket.is_empty()
        && ticket.len() <= MAX_TICKET_LEN
        && ticket.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// The Redis key of a (valid) ticket.
pub fn ticket_key(ticket: &str) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + ticket.len());
    key.push_str(KEY_PREFIX);
    key.push_str(ticket);
    key
}

/// The claims object as stored. Unknown fields are ignored, as in a JWT.
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, borrow)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<u64>,
}

/// Parses the value a backend stored with a ticket: a JSON object with
/// optional `sub` (string), `info` (any JSON), `channels` (array of
/// strings) and `exp` (non-negative integer, Unix seconds); `null` counts
/// as absent. Anything else, or more than [`MAX_CLAIMS_LEN`] bytes, is
/// [`TicketError::Malformed`].
pub fn parse_claims(value: &[u8]) -> Result<TicketClaims, TicketError> {
    if value.len() > MAX_CLAIMS_LEN {
        return Err(TicketError::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| TicketError::Malformed)?;
    // serde would also accept the fields as an array (`["42", ...]`).
    if !text.trim_start().starts_with('{') {
        return Err(TicketError::Malformed);
    }
    let raw: RawClaims<'_> = serde_json::from_str(text).map_err(|_| TicketError::Malformed)?;
    let info = raw
        .info
        .map(RawValue::get)
        .filter(|v| *v != "null")
        .map(|v| Bytes::copy_from_slice(v.as_bytes()));
    Ok(TicketClaims {
        sub: raw.sub.unwrap_or_default(),
        info,
        channels: raw.channels.unwrap_or_default(),
        exp: raw.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_strings() {
        assert!(valid_ticket("a"));
        assert!(valid_ticket("Zm9v-YmFy_123.~!"));
        assert!(valid_ticket(&"x".repeat(MAX_TICKET_LEN)));
        for bad in [
            String::new(),
            "x".repeat(MAX_TICKET_LEN + 1),
            "has space".into(),
            "tab\t".into(),
            "nl\n".into(),
            "nul\0".into(),
            "del\x7f".into(),
            "é".into(),
            "\u{202e}rtl".into(),
        ] {
            assert!(!valid_ticket(&bad), "{bad:?}");
        }
        assert_eq!(ticket_key("abc"), "wsedge:ticket:abc");
    }

    #[test]
    fn full_claims() {
        let c = parse_claims(
            br#"{"sub":"42","info":{"name":"Ann","tags":[1,2]},"channels":["news","chat:1"],"exp":1900000000,"extra":true}"#,
        )
        .unwrap();
        assert_eq!(c.sub, "42");
        assert_eq!(
            c.info.as_deref(),
            Some(&br#"{"name":"Ann","tags":[1,2]}"#[..])
        );
        assert_eq!(c.channels, ["news", "chat:1"]);
        assert_eq!(c.exp, Some(1_900_000_000));
    }

    #[test]
    fn optional_fields_and_nulls() {
        assert_eq!(parse_claims(b"{}").unwrap(), TicketClaims::default());
        let c = parse_claims(br#"{"sub":null,"info":null,"channels":null,"exp":null}"#).unwrap();
        assert_eq!(c, TicketClaims::default());
        let c = parse_claims(br#" {"sub":"u","info":"text"} "#).unwrap();
        assert_eq!(c.sub, "u");
        assert_eq!(c.info.as_deref(), Some(&br#""text""#[..]));
    }

    #[test]
    fn malformed_values() {
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"[\"42\",null,null,null]",
            b"\"sub\"",
            b"null",
            b"{\"sub\":42}",
            b"{\"channels\":\"news\"}",
            b"{\"channels\":[1]}",
            b"{\"exp\":-1}",
            b"{\"exp\":1.5}",
            b"{\"exp\":\"1900000000\"}",
            b"{\"sub\":\"a\"} trailing",
            b"{\"sub\":\"\xff\"}",
        ] {
            assert_eq!(
                parse_claims(bad),
                Err(TicketError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn size_limit() {
        let pad = MAX_CLAIMS_LEN - br#"{"sub":"u","info":""}"#.len();
        let at = format!(r#"{{"sub":"u","info":"{}"}}"#, "x".repeat(pad));
        assert_eq!(at.len(), MAX_CLAIMS_LEN);
        assert!(parse_claims(at.as_bytes()).is_ok());
        let over = format!(r#"{{"sub":"u","info":"{}"}}"#, "x".repeat(pad + 1));
        assert_eq!(parse_claims(over.as_bytes()), Err(TicketError::Malformed));
    }

    /// Seeded random input: random bytes and mutated valid claims never
    /// panic, and whatever is accepted agrees field by field with an
    /// independent `serde_json::Value` reading of the same text.
    #[test]
    fn random_claims_never_panic_and_agree_with_serde_json() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x71c4e7);
        let valid = br#"{"sub":"42","info":{"name":"Ann","n":[1,2]},"channels":["user:42","news"],"exp":1900000000}"#;
        let alphabet = b"{}[]\":,.0123456789-eE nultrfasubchxpio\\\x00\xff";
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 4 == 0 {
                let n = rng.random_range(0..64);
                (0..n).map(|_| rng.random()).collect()
            } else {
                let mut b = valid.to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    match rng.random_range(0..3) {
                        0 => b[i] = alphabet[rng.random_range(0..alphabet.len())],
                        1 => b.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                        _ => {
                            b.remove(i);
                        }
                    }
                }
                b
            };
            match parse_claims(&input) {
                Ok(c) => {
                    accepted += 1;
                    let v: serde_json::Value = serde_json::from_slice(&input)
                        .unwrap_or_else(|e| panic!("accepted but not JSON ({e}): {input:?}"));
                    assert!(v.is_object(), "accepted a non-object: {v}");
                    assert_eq!(c.sub, v["sub"].as_str().unwrap_or(""), "{v}");
                    assert_eq!(c.exp, v["exp"].as_u64(), "{v}");
                    let channels: Vec<&str> = v["channels"]
                        .as_array()
                        .map(|a| a.iter().map(|c| c.as_str().unwrap()).collect())
                        .unwrap_or_default();
                    assert_eq!(c.channels, channels, "{v}");
                    match &c.info {
                        Some(text) => assert_eq!(
                            serde_json::from_slice::<serde_json::Value>(text).unwrap(),
                            v["info"]
                        ),
                        None => assert!(v["info"].is_null(), "{v}"),
                    }
                }
                Err(e) => {
                    assert_eq!(e, TicketError::Malformed);
                    refused += 1;
                }
            }
        }
        // Both outcomes were exercised, so the agreement checks ran.
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// Random strings: `valid_ticket` accepts exactly 1..=256 bytes of `!`..`~`.
    #[test]
    fn random_ticket_strings() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let n = rng.random_range(0..300);
            let s: String = (0..n)
                .map(|_| char::from_u32(rng.random_range(0..0x90)).unwrap_or('?'))
                .collect();
            let expect = !s.is_empty()
                && s.len() <= MAX_TICKET_LEN
                && s.chars().all(|c| ('!'..='~').contains(&c));
            assert_eq!(valid_ticket(&s), expect, "{s:?}");
            if expect {
                assert_eq!(ticket_key(&s), format!("wsedge:ticket:{s}"));
            }
        }
    }
}
