//! Sample values shared by the wire tests of both forms.

use std::sync::Arc;

use bytes::Bytes;

use super::publication::{PubData, Publication};
use super::{ClientInfo, PresenceEntry};

/// A client info; `info` is JSON text.
pub(crate) fn client(client: &str, user: &str, info: Option<&str>) -> ClientInfo {
    ClientInfo {
        client: Arc::from(client),
        user: Arc::from(user),
        info: info.map(|i| Bytes::copy_from_slice(i.as_bytes())),
    }
}

/// Two publications: offset 7 with JSON data, offset 8 with bytes that are
/// not JSON.
pub(crate) fn pubs() -> Vec<Publication> {
    vec![
        Publication {
            offset: 7,
            data: PubData {
                bytes: Bytes::from_static(br#"{"text":"hi"}"#),
                is_json: true,
            },
        },
        Publication {
            offset: 8,
            data: PubData {
                bytes: Bytes::from_static(&[0xff, 0x00]),
                is_json: false,
            },
        },
    ]
}

/// Two presence members, not in client-id order: `b.2` (user `bob`, info,
/// typing) and `a.1` (anonymous, no info, no state).
pub(crate) fn presence() -> Vec<PresenceEntry> {
    vec![
        PresenceEntry {
            info: client("b.2", "bob", Some(r#"{"name":"Bob"}"#)),
            state: Some(Arc::from("typing")),
        },
        PresenceEntry {
            info: client("a.1", "", None),
            state: None,
        },
    ]
}
