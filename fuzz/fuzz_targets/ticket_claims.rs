//! Ticket strings and ticket claims on arbitrary bytes: never panics; an
//! accepted ticket is at most 256 bytes of printable ASCII, and accepted
//! claims keep `info` as valid JSON text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::sidecar::tickets::{MAX_TICKET_LEN, parse_claims, valid_ticket};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && valid_ticket(text)
    {
        assert!(text.len() <= MAX_TICKET_LEN);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()));
    }
    if let Ok(claims) = parse_claims(data)
        && let Some(info) = claims.info
    {
        assert!(std::str::from_utf8(&info).is_ok());
    }
});
