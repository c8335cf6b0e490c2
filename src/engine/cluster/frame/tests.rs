//! Frame codec: random deliveries and sync markers roundtrip with exact
//! lengths, a delivery converts to and from a shared publication, every
//! truncation and every defined refusal is answered, `decode_any`
//! dispatches by kind, and random or mutated bytes never panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::cluster::codec::KIND_HEARTBEAT;
use crate::engine::cluster::fuzz::{mutate, random_bytes};
use crate::engine::cluster::membership::Heartbeat;
use crate::engine::presence::PresenceEvent;
use crate::engine::router::msg::Msg;
use crate::engine::wire::ClientInfo;

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

fn delivery(rng: &mut StdRng) -> Delivery {
    Delivery {
        channel: channel(rng),
        epoch: rng.random(),
        publication: Publication {
            offset: rng.random(),
            data: payload(rng),
        },
        high_priority: rng.random(),
    }
}

fn marker(rng: &mut StdRng) -> SyncMarker {
    SyncMarker {
        channel: channel(rng),
        position: Position {
            epoch: rng.random(),
            offset: rng.random(),
        },
        nonce: rng.random(),
    }
}

/// A random frame: its bytes, and its length without the payload.
fn random_frame(rng: &mut StdRng) -> (Bytes, usize) {
    if rng.random() {
        let d = delivery(rng);
        let b = d.encode();
        assert_eq!(b.len(), d.encoded_len());
        let header = b.len() - d.publication.data.bytes.len();
        (b, header)
    } else {
        let m = marker(rng);
        let b = m.encode();
        assert_eq!(b.len(), m.encoded_len());
        let n = b.len();
        (b, n)
    }
}

#[test]
fn random_frames_roundtrip() {
    let mut rng = StdRng::seed_from_u64(40);
    let now = Instant::now();
    for _ in 0..5_000 {
        let d = delivery(&mut rng);
        let b = d.encode();
        assert_eq!(b.len(), d.encoded_len());
        assert_eq!(&b[..2], &[PROTOCOL_VERSION, KIND_DELIVERY]);
        match decode_any(&b, now) {
            Ok(Incoming::Delivery(got)) => assert_eq!(got, d),
            other => panic!("{other:?}"),
        }
        let m = marker(&mut rng);
        let b = m.encode();
        assert_eq!(b.len(), m.encoded_len());
        match decode_any(&b, now) {
            Ok(Incoming::SyncMarker(got)) => assert_eq!(got, m),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn payloads_are_not_copied() {
    let d = Delivery {
        channel: Arc::from("chat:a"),
        epoch: 1,
        publication: Publication {
            offset: 2,
            data: PubData {
                bytes: Bytes::from_static(b"{\"x\":1}"),
                is_json: true,
            },
        },
        high_priority: false,
    };
    let b = d.encode();
    let Ok(Incoming::Delivery(got)) = decode_any(&b, Instant::now()) else {
        panic!("not a delivery");
    };
    let start = b.len() - 7;
    assert_eq!(got.publication.data.bytes.as_ptr(), b[start..].as_ptr());
}

#[test]
fn a_delivery_is_a_shared_publication_and_back() {
    let accepted = Instant::now();
    let received = accepted + std::time::Duration::from_millis(2);
    let publication = Publication {
        offset: 41,
        data: PubData {
            bytes: Bytes::from_static(b"\"hi\""),
            is_json: true,
        },
    };
    for high in [false, true] {
        let p = SharedPub::new(Arc::from("news"), publication.clone(), high, accepted);
        let d = Delivery::from_shared(&p, 7).expect("a publication");
        assert_eq!(d.epoch, 7);
        assert_eq!(d.publication, publication);
        assert_eq!(d.high_priority, high);
        // The priority crosses in the flags byte.
        let b = d.encode();
        assert_eq!(b[18] & FLAG_HIGH != 0, high);
        let Ok(Incoming::Delivery(d)) = decode_any(&b, received) else {
            panic!("not a delivery");
        };
        let back = d.into_shared(received);
        assert_eq!(back.channel, p.channel);
        assert_eq!(back.high_priority, high);
        assert_eq!(back.accepted_at, received);
        assert_eq!(back.encoded(), [false; 4]);
        let PushBody::Pub(got) = &back.body else {
            panic!("not a publication");
        };
        assert_eq!(got, &publication);
    }
    // Presence events have no delivery frame: they go in an envelope.
    let events = SharedPub::presence(
        Arc::from("room"),
        vec![PresenceEvent::Join(ClientInfo {
            client: Arc::from("c1"),
            user: Arc::from("u"),
            info: None,
        })],
        accepted,
    );
    assert_eq!(Delivery::from_shared(&events, 7), None);
}

/// Each frame cut at every length is refused as truncated, except a
/// delivery cut inside its payload, which is a shorter payload (the
/// payload's end is the message's end: NATS frames messages).
#[test]
fn every_truncation_is_answered() {
    let mut rng = StdRng::seed_from_u64(41);
    let now = Instant::now();
    for _ in 0..300 {
        let (b, header_end) = random_frame(&mut rng);
        for cut in 0..b.len().min(header_end + 3) {
            let got = decode_any(&b.slice(..cut), now);
            if cut < 2 {
                assert_eq!(got.err(), Some(DecodeError::Empty));
            } else if cut < header_end {
                assert_eq!(got.err(), Some(DecodeError::Truncated), "at {cut}");
            } else {
                assert!(got.is_ok(), "at {cut}");
            }
        }
    }
}

#[test]
fn defined_refusals() {
    let now = Instant::now();
    let marker = SyncMarker {
        channel: Arc::from("a"),
        position: Position {
            epoch: 1,
            offset: 2,
        },
        nonce: 3,
    }
    .encode();
    let decode = |b: Vec<u8>| decode_any(&Bytes::from(b), now).err();
    let with = |i: usize, v: u8| {
        let mut m = marker.to_vec();
        m[i] = v;
        m
    };
    assert_eq!(
        decode(with(0, PROTOCOL_VERSION + 1)),
        Some(DecodeError::Version(PROTOCOL_VERSION + 1))
    );
    for kind in [0x10, 0x11, 0x13, 0x15, 0x21, 0xff] {
        assert_eq!(decode(with(1, kind)), Some(DecodeError::Kind(kind)));
    }
    let mut long = marker.to_vec();
    long.push(0);
    assert_eq!(decode(long), Some(DecodeError::Trailing));
    // The channel byte `a` at the end becomes a space: invalid.
    let last = marker.len() - 1;
    assert_eq!(decode(with(last, b' ')), Some(DecodeError::Channel));
    // Zero-length channel.
    let mut empty = marker[..last - 1].to_vec();
    empty.push(0);
    assert_eq!(decode(empty), Some(DecodeError::Channel));

    // A heartbeat is not a frame.
    let hb = Heartbeat {
        node: Arc::from("n"),
        incarnation: 1,
        shards: 1,
        sent_ms: 0,
    }
    .encode();
    assert_eq!(
        decode_any(&hb, now).err(),
        Some(DecodeError::Kind(KIND_HEARTBEAT))
    );
    // Nor a frame a heartbeat.
    assert_eq!(Heartbeat::decode(&marker), Err(DecodeError::Kind(0x14)));

    // A delivery's flags: JSON and high priority are defined, nothing else.
    let delivery = |flags: u8| {
        let mut v = vec![PROTOCOL_VERSION, KIND_DELIVERY];
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&2u64.to_be_bytes());
        v.push(flags);
        v.extend_from_slice(&[1, b'c', b'7']);
        decode_any(&Bytes::from(v), now)
    };
    for bad in [0x04, 0x80, 0x07] {
        assert_eq!(delivery(bad).err(), Some(DecodeError::Flags(bad)));
    }
    let Ok(Incoming::Delivery(d)) = delivery(FLAG_JSON | FLAG_HIGH) else {
        panic!("not a delivery");
    };
    assert!(d.high_priority && d.publication.data.is_json);
    assert_eq!(d.publication.data.bytes.as_ref(), b"7");
}

/// `decode_any` hands an envelope to the envelope decoder, with `now`.
#[test]
fn envelopes_arrive_through_decode_any() {
    let now = Instant::now();
    let e = Envelope {
        from_node: Arc::from("node-b"),
        channel: Arc::from("chat:a"),
        to_shard: Some(2),
        msg: Msg::Lost {
            channel: Arc::from("chat:a"),
        },
    };
    let b = e.encode();
    let Ok(Incoming::Envelope(got)) = decode_any(&b, now) else {
        panic!("not an envelope");
    };
    assert_eq!(format!("{got:?}"), format!("{e:?}"));
    assert_eq!(
        decode_any(&b.slice(..b.len() - 1), now).err(),
        Some(DecodeError::Truncated)
    );
}

/// Random bytes, and valid frames with random bytes changed, inserted or
/// cut: decoding answers without panicking, and whatever it accepts as a
/// frame encodes back to the same bytes.
#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    let now = Instant::now();
    let mut accepted = 0usize;
    for i in 0..200_000 {
        let v = if i % 4 == 0 {
            random_bytes(
                &mut rng,
                64,
                0.7,
                &[KIND_DELIVERY, KIND_SYNC_MARKER, KIND_ENVELOPE, 0x30, 0x31],
            )
        } else {
            let mut v = random_frame(&mut rng).0.to_vec();
            mutate(&mut rng, &mut v);
            v
        };
        let b = Bytes::from(v);
        match decode_any(&b, now) {
            Ok(Incoming::Delivery(d)) => {
                accepted += 1;
                assert_eq!(d.encode(), b);
            }
            Ok(Incoming::SyncMarker(m)) => {
                accepted += 1;
                assert_eq!(m.encode(), b);
            }
            Ok(Incoming::SsePost(p)) => {
                accepted += 1;
                assert_eq!(p.encode(), b);
            }
            Ok(Incoming::SseAnswer(a)) => {
                accepted += 1;
                assert_eq!(a.encode(), b);
            }
            Ok(Incoming::Envelope(_)) | Err(_) => {}
        }
    }
    // The mutations reach past the checks, not only into refusals.
    assert!(accepted > 10_000, "{accepted}");
}
