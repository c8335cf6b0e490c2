//! Test inputs shared by the decoders' fuzz tests: random bytes behind a
//! valid header, and valid messages with a few bytes changed.

use rand::Rng;
use rand::rngs::StdRng;

use super::PROTOCOL_VERSION;

/// Up to `max_len` random bytes; mostly (`header`) starting with this
/// version and one of `kinds`, so that they reach past the header check.
pub(super) fn random_bytes(rng: &mut StdRng, max_len: usize, header: f64, kinds: &[u8]) -> Vec<u8> {
    let n = rng.random_range(0..max_len);
    let mut v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
    if v.len() >= 2 && rng.random_bool(header) {
        v[0] = PROTOCOL_VERSION;
        v[1] = kinds[rng.random_range(0..kinds.len())];
    }
    v
}

/// One to three changes to `v`: a byte replaced (a third of the time by
/// one with the high bit set, which makes a varint claim more), a byte
/// inserted, or the end cut off.
pub(super) fn mutate(rng: &mut StdRng, v: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..3) {
            0 if !v.is_empty() => {
                let at = rng.random_range(0..v.len());
                v[at] = if rng.random_bool(0.3) {
                    rng.random::<u8>() | 0x80
                } else {
                    rng.random()
                };
            }
            1 => {
                let at = rng.random_range(0..=v.len());
                v.insert(at, rng.random());
            }
            _ => v.truncate(rng.random_range(0..=v.len())),
        }
    }
}
