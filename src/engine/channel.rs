//! Channel names: `namespace:name` or `name`.
//!
//! Rules (docs/PROTOCOL.md): at most 255 bytes; the optional namespace is
//! 1–64 characters of `A–Z a–z 0–9 _ -` followed by one `:`; the name is at
//! least one character of `A–Z a–z 0–9 _ - . = @ / , + ! ~ # $` and `:`
//! is not allowed in it. Anything else is refused with error 109.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

fn namespace_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'-' | b'.' | b'=' | b'@' | b'/' | b',' | b'+' | b'!' | b'~' | b'#' | b'$'
        )
}

/// Whether `s` is a valid namespace (the part before `:`): 1–64 characters
/// of `A–Z a–z 0–9 _ -`.
pub fn is_valid_namespace(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAMESPACE_LEN && s.bytes().all(namespace_char)
}

/// Whether `s` is a valid channel name.
pub fn is_valid_channel(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_CHANNEL_LEN {
        return false;
    }
    let (ns, name) = match s.split_once(':') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, s),
    };
    if let Some(ns) = ns
        && !is_valid_namespace(ns)
    {
        return false;
    }
    !name.is_empty() && name.bytes().all(name_char)
}

/// The namespace of a valid channel name, if it has one.
pub fn namespace(s: &str) -> Option<&str> {
    s.split_once(':').map(|(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for ok in [
            "a",
            "chat:room-1",
            "feed:user.42",
            "story:abc_DEF",
            "x:a=b@c/d,e+f!g~h#i$j",
        ] {
            assert!(is_valid_channel(ok), "{ok}");
        }
        assert!(is_valid_channel(&"a".repeat(255)));
        assert_eq!(namespace("chat:1"), Some("chat"));
        assert_eq!(namespace("plain"), None);
    }

    #[test]
    fn invalid_names() {
        for bad in [
            "", ":x", "x:", "a:b:c", "sp ace", "quo\"te", "ü", "a\nb", "ns!:x",
        ] {
            assert!(!is_valid_channel(bad), "{bad:?}");
        }
        assert!(!is_valid_channel(&"a".repeat(256)));
        assert!(!is_valid_channel(&format!("{}:x", "n".repeat(65))));
    }

    #[test]
    fn namespaces() {
        assert!(is_valid_namespace("chat"));
        assert!(is_valid_namespace("a_B-9"));
        assert!(is_valid_namespace(&"n".repeat(64)));
        for bad in ["", "a:b", "a.b", "sp ace", "ü"] {
            assert!(!is_valid_namespace(bad), "{bad:?}");
        }
        assert!(!is_valid_namespace(&"n".repeat(65)));
    }
}
