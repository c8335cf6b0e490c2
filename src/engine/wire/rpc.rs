//! Backend calls on the wire: `rpc {method, data}` (a NATS request whose
//! reply comes back as `{data}`) and `send {data}` (a NATS publish,
//! answered `{}`). The parameter rules both forms share live here, so they
//! cannot drift apart; the NATS side is `crate::sidecar::rpc`.

use std::borrow::Cow;

use super::{Data, Method};
use crate::engine::codes::ErrorCode;

/// Longest `rpc` method name, in bytes.
pub const MAX_RPC_METHOD: usize = 64;

/// Whether `m` may name an `rpc` method: 1..=64 characters of `A–Z a–z
/// 0–9 _ - .`, with no empty dot-separated token. It becomes the last
/// tokens of a NATS subject, so it cannot hold a wildcard (`*`, `>`),
/// a space, or an empty token (`a..b`, a leading or trailing dot).
pub fn is_valid_rpc_method(m: &str) -> bool {
    (1..=MAX_RPC_METHOD).contains(&m.len())
        && m.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// `rpc`: the method must be a valid subject suffix.
pub(super) fn rpc<'a>(method: Cow<'a, str>, data: Data<'a>) -> Result<Method<'a>, ErrorCode> {
    if !is_valid_rpc_method(&method) {
        return Err(ErrorCode::BadRequest);
    }
    Ok(Method::Rpc { method, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_subject_suffixes() {
        for ok in [
            "echo",
            "a",
            "rooms.list",
            "Rooms_v2-beta.get.one",
            "0",
            &"m".repeat(MAX_RPC_METHOD),
        ] {
            assert!(is_valid_rpc_method(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            ".a",
            "a.",
            "a..b",
            "a.*",
            "*",
            ">",
            "a.>",
            "a b",
            "a\tb",
            "a\nb",
            "é",
            "a/b",
            "a:b",
            &"m".repeat(MAX_RPC_METHOD + 1),
        ] {
            assert!(!is_valid_rpc_method(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_method_is_a_bad_request() {
        let data = Data::Json(b"1");
        assert_eq!(rpc(Cow::Borrowed("a..b"), data), Err(ErrorCode::BadRequest));
        assert_eq!(
            rpc(Cow::Borrowed("echo"), data),
            Ok(Method::Rpc {
                method: Cow::Borrowed("echo"),
                data
            })
        );
    }
}
