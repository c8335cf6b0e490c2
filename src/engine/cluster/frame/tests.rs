//! Frame codec: random frames roundtrip with exact lengths, every
//! truncation and every defined refusal is answered, and random or mutated
//! bytes never panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::cluster::codec::KIND_HEARTBEAT;
use crate::engine::cluster::membership::Heartbeat;

const NAME_BYTES: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.=@/,+!~#$";

fn channel(rng: &mut StdRng) -> Arc<str> {
    let n = if rng.random_bool(0.1) {
        255
    } else {
        rng.random_range(1..40)
    };
    let s: String = (0..n)
        .map(|_| NAME_BYTES[rng.random_range(0..NAME_BYTES.len())] as char)
        .collect();
    Arc::from(s)
}

fn payload(rng: &mut StdRng) -> PubData {
    let n = match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(1..16),
        2 => rng.random_range(16..300),
        _ => rng.random_range(300..70_000),
    };
    PubData {
        bytes: Bytes::from((0..n).map(|_| rng.random()).collect::<Vec<u8>>()),
        is_json: rng.random(),
    }
}

fn key(rng: &mut StdRng) -> Option<Box<str>> {
    rng.random_bool(0.5).then(|| {
        let n = rng.random_range(1..=MAX_IDEMPOTENCY_KEY / 4);
        // Multi-byte UTF-8 included: the bound is in bytes.
        (0..n)
            .map(|_| ['k', 'é', '雪', '-'][rng.random_range(0..4)])
            .collect::<String>()
            .into()
    })
}

fn random_frame(rng: &mut StdRng) -> Frame {
    match rng.random_range(0..5) {
        0 => Frame::PublishRequest(PublishRequest {
            request_id: rng.random(),
            channel: channel(rng),
            idempotency_key: key(rng),
            data: payload(rng),
        }),
        1 => Frame::PublishAnswer(PublishAnswer {
            request_id: rng.random(),
            result: if rng.random() {
                Ok(rng.random())
            } else {
                Err(rng.random())
            },
        }),
        2 => Frame::Delivery(Delivery {
            channel: channel(rng),
            epoch: rng.random(),
            publication: Publication {
                offset: rng.random(),
                data: payload(rng),
            },
        }),
        3 => Frame::SyncRequest(SyncRequest {
            channel: channel(rng),
            nonce: rng.random(),
        }),
        _ => Frame::SyncMarker(SyncMarker {
            channel: channel(rng),
            position: Position {
                epoch: rng.random(),
                offset: rng.random(),
            },
            nonce: rng.random(),
        }),
    }
}

#[test]
fn random_frames_roundtrip() {
    let mut rng = StdRng::seed_from_u64(40);
    for _ in 0..5_000 {
        let f = random_frame(&mut rng);
        let b = f.encode();
        assert_eq!(b.len(), f.encoded_len(), "{}", f.label());
        assert_eq!(b[0], PROTOCOL_VERSION);
        assert_eq!(Frame::decode(&b).as_ref(), Ok(&f));
    }
}

#[test]
fn payloads_are_not_copied() {
    let f = Frame::Delivery(Delivery {
        channel: Arc::from("chat:a"),
        epoch: 1,
        publication: Publication {
            offset: 2,
            data: PubData {
                bytes: Bytes::from_static(b"{\"x\":1}"),
                is_json: true,
            },
        },
    });
    let b = f.encode();
    let Ok(Frame::Delivery(d)) = Frame::decode(&b) else {
        panic!("not a delivery");
    };
    let start = b.len() - 7;
    assert_eq!(d.publication.data.bytes.as_ptr(), b[start..].as_ptr());
}

/// Each frame cut at every length is refused as truncated, except a
/// payload frame cut inside its payload, which is a shorter payload (the
/// payload's end is the message's end: NATS frames messages).
#[test]
fn every_truncation_is_answered() {
    let mut rng = StdRng::seed_from_u64(41);
    for _ in 0..300 {
        let f = random_frame(&mut rng);
        let b = f.encode();
        let payload_len = match &f {
            Frame::PublishRequest(p) => p.data.bytes.len(),
            Frame::Delivery(d) => d.publication.data.bytes.len(),
            _ => 0,
        };
        let header_end = b.len() - payload_len;
        for cut in 0..b.len().min(header_end + 3) {
            let got = Frame::decode(&b.slice(..cut));
            if cut < 2 {
                assert_eq!(got, Err(DecodeError::Empty));
            } else if cut < header_end {
                assert_eq!(got, Err(DecodeError::Truncated), "{} at {cut}", f.label());
            } else {
                assert!(got.is_ok(), "{} at {cut}", f.label());
            }
        }
    }
}

#[test]
fn defined_refusals() {
    let marker = Frame::SyncMarker(SyncMarker {
        channel: Arc::from("a"),
        position: Position {
            epoch: 1,
            offset: 2,
        },
        nonce: 3,
    })
    .encode();
    let with = |i: usize, v: u8| {
        let mut m = marker.to_vec();
        m[i] = v;
        Bytes::from(m)
    };
    assert_eq!(Frame::decode(&with(0, 2)), Err(DecodeError::Version(2)));
    assert_eq!(Frame::decode(&with(1, 0x15)), Err(DecodeError::Kind(0x15)));
    let mut long = marker.to_vec();
    long.push(0);
    assert_eq!(
        Frame::decode(&Bytes::from(long)),
        Err(DecodeError::Trailing)
    );
    // The channel byte `a` at the end becomes a space: invalid.
    let last = marker.len() - 1;
    assert_eq!(Frame::decode(&with(last, b' ')), Err(DecodeError::Channel));
    // Zero-length channel.
    let mut empty = marker[..last - 1].to_vec();
    empty.push(0);
    assert_eq!(
        Frame::decode(&Bytes::from(empty)),
        Err(DecodeError::Channel)
    );

    // A heartbeat is not a frame.
    let hb = Heartbeat {
        node: Arc::from("n"),
        incarnation: 1,
        shards: 1,
        sent_ms: 0,
    }
    .encode();
    assert_eq!(Frame::decode(&hb), Err(DecodeError::Kind(KIND_HEARTBEAT)));
    // Nor a frame a heartbeat.
    assert_eq!(Heartbeat::decode(&marker), Err(DecodeError::Kind(0x14)));

    let answer = Frame::PublishAnswer(PublishAnswer {
        request_id: 9,
        result: Err(112),
    })
    .encode();
    let mut bad = answer.to_vec();
    bad[10] = 2;
    assert_eq!(Frame::decode(&Bytes::from(bad)), Err(DecodeError::Flags(2)));

    let request = |flags: u8, key: &[u8]| {
        let mut v = vec![PROTOCOL_VERSION, 0x10];
        v.extend_from_slice(&7u64.to_be_bytes());
        v.push(flags);
        v.extend_from_slice(&[1, b'c']);
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(key);
        Frame::decode(&Bytes::from(v))
    };
    assert_eq!(request(0x04, b"k"), Err(DecodeError::Flags(0x04)));
    assert_eq!(request(0x02, b""), Err(DecodeError::IdempotencyKey));
    assert_eq!(request(0x02, &[0xff]), Err(DecodeError::IdempotencyKey));
    let too_long = vec![b'k'; MAX_IDEMPOTENCY_KEY + 1];
    assert_eq!(request(0x02, &too_long), Err(DecodeError::IdempotencyKey));
    let longest = vec![b'k'; MAX_IDEMPOTENCY_KEY];
    assert!(matches!(
        request(0x02, &longest),
        Ok(Frame::PublishRequest(PublishRequest { idempotency_key: Some(k), .. }))
            if k.len() == MAX_IDEMPOTENCY_KEY
    ));
    // Without the key flag the same bytes are payload.
    assert!(matches!(
        request(0x01, b"k"),
        Ok(Frame::PublishRequest(PublishRequest { idempotency_key: None, data, .. }))
            if data.is_json && data.bytes.as_ref() == b"\x00\x01k"
    ));
}

/// Random bytes, and valid frames with random bytes changed, inserted or
/// cut: decoding answers without panicking, and whatever it accepts
/// encodes back to the same bytes.
#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    let mut accepted = 0usize;
    for i in 0..200_000 {
        let v: Vec<u8> = if i % 4 == 0 {
            let n = rng.random_range(0..64);
            let mut v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if v.len() >= 2 && rng.random_bool(0.7) {
                v[0] = PROTOCOL_VERSION;
                v[1] = rng.random_range(0x10..=0x14);
            }
            v
        } else {
            let mut v = random_frame(&mut rng).encode().to_vec();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !v.is_empty() => {
                        let at = rng.random_range(0..v.len());
                        v[at] = rng.random();
                    }
                    1 => {
                        let at = rng.random_range(0..=v.len());
                        v.insert(at, rng.random());
                    }
                    _ => v.truncate(rng.random_range(0..=v.len())),
                }
            }
            v
        };
        let b = Bytes::from(v);
        if let Ok(f) = Frame::decode(&b) {
            accepted += 1;
            assert_eq!(f.encode(), b);
        }
    }
    // The mutations reach past the checks, not only into refusals.
    assert!(accepted > 10_000, "{accepted}");
}
