//! Envelope codec: every router message, answer and story command
//! round-trips; a delivery crosses without its caches and with the
//! receiver's clock; truncations, forged lengths, wrong headers and
//! out-of-limit fields are refused; random and mutated bytes never panic.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::cluster::fuzz::{mutate, random_bytes};
use crate::engine::codes::ErrorCode;
use crate::engine::collab::{
    CollabError, DirectedEvent, JoinAs, JoinOk, LockOk, LockView, Role, SectionView, UpdateOk,
};
use crate::engine::history::{HistoryQuery, Recovery};
use crate::engine::hub::Position;
use crate::engine::presence::PresenceEvent;
use crate::engine::router::msg::{Answer, CollabAsk, MsgKind, ReplyTo, StoryJoined};
use crate::engine::subs::ConnRef;
use crate::engine::wire::publication::{LocalPub, PubData, PubEncoder, Publication, SharedPub};
use crate::engine::wire::{ClientInfo, PresenceEntry};
use crate::engine::ws::handshake::WireFormat;

fn who(n: u8) -> ClientInfo {
    ClientInfo {
        client: Arc::from(format!("c{n}")),
        user: Arc::from(if n.is_multiple_of(2) { "" } else { "alice" }),
        info: n
            .is_multiple_of(3)
            .then(|| Bytes::from_static(b"{\"name\":\"A\"}")),
    }
}

fn reply_to(n: u32) -> ReplyTo {
    ReplyTo {
        conn: ConnRef {
            idx: n,
            generation: u32::MAX - n,
        },
        cmd_id: n * 7,
    }
}

fn publication(offset: u64, payload: &'static [u8], is_json: bool) -> Publication {
    Publication {
        offset,
        data: PubData {
            bytes: Bytes::from_static(payload),
            is_json,
        },
    }
}

fn pos(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

fn ch(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn join_ok() -> JoinOk {
    JoinOk {
        role: Role::Queued,
        position: Some(3),
        editors: vec![who(1), who(2)],
        viewers: 40,
        queued: 5,
        sections: vec![
            SectionView {
                id: ch("intro"),
                version: 12,
                data: Bytes::from_static(b"{\"t\":\"hi\"}"),
                lock: Some(LockView {
                    holder: who(1),
                    expires_ms: 1_700_000_000_000,
                }),
            },
            SectionView {
                id: ch("body"),
                version: 0,
                data: Bytes::new(),
                lock: None,
            },
        ],
    }
}

/// Every answer a home computes.
fn answers() -> Vec<Answer> {
    vec![
        Answer::Publish { offset: 1 << 40 },
        Answer::History {
            position: pos(9, 3),
            publications: vec![
                publication(2, b"{\"a\":1}", true),
                publication(3, b"\x00\xff", false),
            ],
        },
        Answer::Presence {
            clients: vec![
                PresenceEntry {
                    info: who(3),
                    state: Some(ch("typing")),
                },
                PresenceEntry {
                    info: who(4),
                    state: None,
                },
            ],
        },
        Answer::PresenceStats {
            num_clients: 19_000,
            num_users: 7,
        },
        Answer::PresenceState,
        Answer::CollabJoin(Box::new(StoryJoined {
            join: join_ok(),
            position: pos(5, 6),
        })),
        Answer::Lock(Box::new(LockOk {
            section: ch("intro"),
            holder: who(1),
            expires_ms: 123,
        })),
        Answer::Unlock,
        Answer::Update(UpdateOk {
            version: (1 << 53) - 1,
            duplicate: true,
        }),
        Answer::CollabError(Box::new(CollabError::NotMember)),
        Answer::CollabError(Box::new(CollabError::SectionLocked { holder: who(2) })),
        Answer::CollabError(Box::new(CollabError::NotHolder { holder: who(5) })),
        Answer::CollabError(Box::new(CollabError::VersionConflict {
            version: 4,
            data: Bytes::from_static(b"[1,2]"),
        })),
        Answer::CollabError(Box::new(CollabError::BadVersion {
            version: 9,
            data: Bytes::new(),
        })),
        Answer::CollabError(Box::new(CollabError::TooManyStories)),
        Answer::Error(ErrorCode::Overloaded),
        Answer::Error(ErrorCode::NotCollaborative),
    ]
}

/// Every story command.
fn collab_ops() -> Vec<CollabOp> {
    vec![
        CollabOp::Join {
            ask: CollabAsk {
                role: JoinAs::Editor,
                queue: true,
            },
            who: who(6),
        },
        CollabOp::Join {
            ask: CollabAsk {
                role: JoinAs::Viewer,
                queue: false,
            },
            who: who(7),
        },
        CollabOp::Lock {
            section: "intro".into(),
            ttl: Some(Duration::from_millis(1500)),
        },
        CollabOp::Lock {
            section: "s".repeat(MAX_SECTION_ID).into(),
            ttl: None,
        },
        CollabOp::Unlock {
            section: "intro".into(),
        },
        CollabOp::Update {
            section: "body".into(),
            base_version: 41,
            data: Bytes::from_static(b"{\"text\":\"new\"}"),
            op_id: "o".repeat(MAX_OP_ID).into(),
        },
    ]
}

fn shared(high: bool, now: Instant) -> Arc<SharedPub> {
    Arc::new(SharedPub::new(
        ch("news:eu"),
        publication(77, b"{\"headline\":\"x\"}", true),
        high,
        now,
    ))
}

fn presence_push(now: Instant) -> Arc<SharedPub> {
    Arc::new(SharedPub::presence(
        ch("room:1"),
        vec![
            PresenceEvent::Join(who(1)),
            PresenceEvent::State(who(1), ch("typing")),
            PresenceEvent::State(who(2), ch("")),
            PresenceEvent::Leave(who(3)),
        ],
        now,
    ))
}

/// At least one message of every kind, every answer in a `Reply`, every
/// story command in a `Collab`; each `Deliver` accepted at `now`.
fn samples(now: Instant) -> Vec<Msg> {
    let mut v = vec![
        Msg::Interest {
            channel: ch("chat:a"),
            from: 3,
            on: true,
        },
        Msg::Interest {
            channel: ch("chat:a"),
            from: 0,
            on: false,
        },
        Msg::InterestAck {
            channel: ch("chat:a"),
            position: pos(u64::MAX, 0),
        },
        Msg::InterestFailed {
            channel: ch("chat:a"),
        },
        Msg::Publish {
            channel: ch("chat:a"),
            data: PubData {
                bytes: Bytes::from_static(b"{\"text\":\"hello\"}"),
                is_json: true,
            },
            idempotency_key: Some("k".repeat(MAX_IDEMPOTENCY_KEY).into()),
            publisher: Some(Box::new(ClientInfo {
                client: ch("c-9"),
                user: ch("ann"),
                info: None,
            })),
            durable_ack: true,
            from: 1,
            reply_to: reply_to(1),
        },
        Msg::Publish {
            channel: ch("b"),
            data: PubData {
                bytes: Bytes::new(),
                is_json: false,
            },
            idempotency_key: None,
            publisher: None,
            durable_ack: false,
            from: 63,
            reply_to: reply_to(2),
        },
        Msg::Deliver(shared(false, now)),
        Msg::Deliver(shared(true, now)),
        Msg::Deliver(presence_push(now)),
        Msg::Lost { channel: ch("x") },
        Msg::Subscribe {
            channel: ch("chat:a"),
            since: Some(pos(3, 4)),
            member: Some(Box::new(who(3))),
            collab: Some(CollabAsk {
                role: JoinAs::Editor,
                queue: false,
            }),
            from: 2,
            reply_to: reply_to(3),
        },
        Msg::Subscribe {
            channel: ch("chat:a"),
            since: None,
            member: None,
            collab: None,
            from: 0,
            reply_to: reply_to(4),
        },
        Msg::Subscribed {
            channel: ch("story:1"),
            position: pos(5, 6),
            result: Ok(Box::new(Recovery {
                recovered: true,
                publications: vec![publication(6, b"{}", true)],
            })),
            story: Some(Box::new(join_ok())),
            reply_to: reply_to(5),
        },
        Msg::Subscribed {
            channel: ch("chat:a"),
            position: pos(5, 6),
            result: Err(ErrorCode::LimitExceeded),
            story: None,
            reply_to: reply_to(6),
        },
        Msg::History {
            channel: ch("chat:a"),
            query: Box::new(HistoryQuery {
                limit: Some(10),
                since: Some(pos(1, 2)),
                reverse: true,
                max: 1000,
            }),
            from: 1,
            reply_to: reply_to(7),
        },
        Msg::Leave {
            channel: ch("chat:a"),
            client: ch("c9"),
            conn: reply_to(8).conn,
            from: 1,
            disconnect: true,
        },
        Msg::CollabPush {
            conn: reply_to(9).conn,
            channel: ch("story:1"),
            event: Box::new(DirectedEvent::Promoted { role: Role::Editor }),
        },
        Msg::CollabPush {
            conn: reply_to(10).conn,
            channel: ch("story:1"),
            event: Box::new(DirectedEvent::Conflict {
                section: ch("intro"),
                version: 3,
                overwritten: Bytes::from_static(b"\"old\""),
                by: who(2),
            }),
        },
        Msg::CollabPush {
            conn: reply_to(10).conn,
            channel: ch("story:1"),
            event: Box::new(DirectedEvent::Queue { position: 4 }),
        },
        Msg::SetState {
            channel: ch("chat:a"),
            client: ch("c1"),
            state: Arc::from("s".repeat(MAX_PRESENCE_STATE)),
            ttl_ms: Some(5000),
            from: 0,
            reply_to: reply_to(11),
        },
        Msg::SetState {
            channel: ch("chat:a"),
            client: ch("c1"),
            state: ch(""),
            ttl_ms: None,
            from: 0,
            reply_to: reply_to(12),
        },
        Msg::PresenceQuery {
            channel: ch("chat:a"),
            stats: true,
            from: 1,
            reply_to: reply_to(13),
        },
        Msg::HistoryRemove {
            channel: ch("chat:a"),
            from: 1,
            reply_to: reply_to(14),
        },
    ];
    for (i, answer) in answers().into_iter().enumerate() {
        v.push(Msg::Reply {
            reply_to: reply_to(100 + i as u32),
            answer,
        });
    }
    for (i, op) in collab_ops().into_iter().enumerate() {
        v.push(Msg::Collab {
            channel: ch("story:1"),
            op: Box::new(op),
            from: i,
            reply_to: reply_to(200 + i as u32),
        });
    }
    v
}

fn envelope(msg: Msg, i: usize) -> Envelope {
    Envelope {
        from_node: ch("node-a"),
        channel: msg
            .channel()
            .cloned()
            .unwrap_or_else(|| ch("reply:channel")),
        to_shard: i.is_multiple_of(2).then_some(i as u16),
        msg,
    }
}

/// Answer variants by index, with no wildcard: a new variant does not
/// compile until the samples are looked at.
fn answer_index(a: &Answer) -> usize {
    match a {
        Answer::Publish { .. } => 0,
        Answer::History { .. } => 1,
        Answer::Presence { .. } => 2,
        Answer::PresenceStats { .. } => 3,
        Answer::PresenceState => 4,
        Answer::CollabJoin(_) => 5,
        Answer::Lock(_) => 6,
        Answer::Unlock => 7,
        Answer::Update(_) => 8,
        Answer::CollabError(_) => 9,
        Answer::Error(_) => 10,
    }
}

/// Same for story commands.
fn op_index(op: &CollabOp) -> usize {
    match op {
        CollabOp::Join { .. } => 0,
        CollabOp::Lock { .. } => 1,
        CollabOp::Unlock { .. } => 2,
        CollabOp::Update { .. } => 3,
    }
}

#[test]
fn samples_cover_every_variant() {
    let now = Instant::now();
    let msgs = samples(now);
    let kinds: BTreeSet<&str> = msgs.iter().map(Msg::kind_label).collect();
    let router_kinds: BTreeSet<&str> = MsgKind::ALL
        .iter()
        .filter(|k| {
            !matches!(
                k,
                MsgKind::Api
                    | MsgKind::Ticket
                    | MsgKind::StoryLoaded
                    | MsgKind::Drain
                    | MsgKind::Cluster
                    | MsgKind::ClusterChanged
                    | MsgKind::Rpc
                    | MsgKind::SsePost
            )
        })
        .map(|k| k.label())
        .collect();
    assert_eq!(kinds, router_kinds);
    let seen = |index: &dyn Fn(&Msg) -> Option<usize>| -> BTreeSet<usize> {
        msgs.iter().filter_map(index).collect()
    };
    let answers = seen(&|m| match m {
        Msg::Reply { answer, .. } => Some(answer_index(answer)),
        _ => None,
    });
    assert_eq!(answers, (0..11).collect());
    let ops = seen(&|m| match m {
        Msg::Collab { op, .. } => Some(op_index(op)),
        _ => None,
    });
    assert_eq!(ops, (0..4).collect());
}

#[test]
fn every_message_roundtrips() {
    let now = Instant::now();
    for (i, msg) in samples(now).into_iter().enumerate() {
        let e = envelope(msg, i);
        let b = e.encode();
        assert_eq!(&b[..2], &[PROTOCOL_VERSION, KIND_ENVELOPE]);
        let back = Envelope::decode(&b, now).unwrap_or_else(|err| panic!("{e:?}: {err}"));
        // Debug shows every field, a `Deliver`'s `accepted_at` and caches
        // included (same `now`, none encoded on either side).
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
        assert_eq!(back.encode(), b, "{}", e.msg.kind_label());
    }
}

#[test]
fn a_delivery_crosses_without_its_caches_and_with_the_receivers_clock() {
    let sent_at = Instant::now();
    let received_at = sent_at + Duration::from_millis(3);
    let p = shared(true, sent_at);
    let fresh = Envelope {
        from_node: ch("home"),
        channel: ch("news:eu"),
        to_shard: None,
        msg: Msg::Deliver(shared(true, sent_at)),
    }
    .encode();
    // The sender's shards encoded the JSON form already.
    let mut encoder = PubEncoder::default();
    LocalPub::new(&p, &mut encoder, None).frame(WireFormat::Json, false);
    assert!(p.encoded()[0]);
    let b = Envelope {
        from_node: ch("home"),
        channel: ch("news:eu"),
        to_shard: None,
        msg: Msg::Deliver(Arc::clone(&p)),
    }
    .encode();
    assert_eq!(b, fresh, "the encoded forms are not sent");
    let Envelope {
        msg: Msg::Deliver(got),
        ..
    } = Envelope::decode(&b, received_at).unwrap()
    else {
        panic!("not a Deliver");
    };
    assert_eq!(got.encoded(), [false; 4]);
    assert_eq!(got.accepted_at, received_at);
    assert_eq!(got.channel, p.channel);
    assert!(got.high_priority);
    assert_eq!(got.offset(), Some(77));

    // Presence events: no offset, every event kept in order.
    let b = Envelope {
        from_node: ch("home"),
        channel: ch("room:1"),
        to_shard: Some(1),
        msg: Msg::Deliver(presence_push(sent_at)),
    }
    .encode();
    let e = Envelope::decode(&b, received_at).unwrap();
    let Msg::Deliver(got) = &e.msg else {
        panic!("not a Deliver");
    };
    assert_eq!(got.accepted_at, received_at);
    assert!(!got.high_priority);
    let PushBody::Presence(events) = &got.body else {
        panic!("not presence");
    };
    let sent = presence_push(sent_at);
    let PushBody::Presence(sent) = &sent.body else {
        unreachable!()
    };
    assert_eq!(events, sent);
}

#[test]
fn the_decode_clock_does_not_leak() {
    let t = Instant::now();
    let b = envelope(Msg::Deliver(shared(false, t)), 0).encode();
    Envelope::decode(&b, t).unwrap();
    assert_eq!(DECODE_NOW.get(), None);
    // Nor after a refusal.
    assert!(Envelope::decode(&b[..b.len() - 1], t).is_err());
    assert_eq!(DECODE_NOW.get(), None);
}

/// Every proper prefix of every sample is refused: postcard is
/// self-delimiting, so a cut always ends inside some field.
#[test]
fn every_truncation_is_refused() {
    let now = Instant::now();
    for (i, msg) in samples(now).into_iter().enumerate() {
        let b = envelope(msg, i).encode();
        for cut in 0..b.len() {
            let want = if cut < 2 {
                DecodeError::Empty
            } else {
                DecodeError::Truncated
            };
            assert_eq!(
                Envelope::decode(&b[..cut], now).err(),
                Some(want),
                "{i} at {cut}"
            );
        }
    }
}

#[test]
fn headers_and_trailing_bytes() {
    let now = Instant::now();
    let b = envelope(samples(now).remove(0), 0).encode().to_vec();
    let with = |i: usize, v: u8| {
        let mut m = b.clone();
        m[i] = v;
        m
    };
    assert_eq!(
        Envelope::decode(&with(0, PROTOCOL_VERSION + 1), now).err(),
        Some(DecodeError::Version(PROTOCOL_VERSION + 1))
    );
    assert_eq!(
        Envelope::decode(&with(0, 0), now).err(),
        Some(DecodeError::Version(0))
    );
    assert_eq!(
        Envelope::decode(&with(1, 0x21), now).err(),
        Some(DecodeError::Kind(0x21))
    );
    assert_eq!(
        Envelope::decode(&with(1, 0x12), now).err(),
        Some(DecodeError::Kind(0x12))
    );
    let mut long = b.clone();
    long.push(0);
    assert_eq!(
        Envelope::decode(&long, now).err(),
        Some(DecodeError::Trailing)
    );
    // Past the message enum's last variant.
    let at = 2 + 1 + "node-a".len() + 1 + "chat:a".len() + 2;
    assert_eq!(b[at], 0, "Interest is variant 0");
    // 16 variants (`HistoryRemove` is 15, the last).
    assert_eq!(
        Envelope::decode(&with(at, 16), now).err(),
        Some(DecodeError::Malformed)
    );
    // A bool that is neither 0 nor 1 (`on`, the last byte).
    assert_eq!(
        Envelope::decode(&with(b.len() - 1, 2), now).err(),
        Some(DecodeError::Malformed)
    );
}

/// The bytes of two messages, written out: the layout is the Rust types,
/// so a change to any of them shows here first. When this fails on
/// purpose, bump `PROTOCOL_VERSION` and update the bytes.
#[test]
fn layout_is_pinned() {
    let e = Envelope {
        from_node: ch("n1"),
        channel: ch("a:b"),
        to_shard: Some(300),
        msg: Msg::Interest {
            channel: ch("a:b"),
            from: 2,
            on: true,
        },
    };
    assert_eq!(
        e.encode().as_ref(),
        &[
            PROTOCOL_VERSION,
            0x20,
            2,
            b'n',
            b'1',
            3, // the channel
            b'a',
            b':',
            b'b',
            1, // Some
            0xac,
            0x02, // 300, varint
            0,    // Msg::Interest
            3,
            b'a',
            b':',
            b'b',
            2, // from
            1, // on
        ]
    );
    let e = Envelope {
        from_node: ch("n1"),
        channel: ch("a:b"),
        to_shard: None,
        msg: Msg::Reply {
            reply_to: reply_to(1),
            answer: Answer::Error(ErrorCode::Overloaded),
        },
    };
    let mut want = vec![
        PROTOCOL_VERSION,
        0x20,
        2,
        b'n',
        b'1',
        3,
        b'a',
        b':',
        b'b',
        0,
        3,
    ];
    want.extend_from_slice(&[1, 0xfe, 0xff, 0xff, 0xff, 0x0f, 7]); // ReplyTo
    want.extend_from_slice(&[10, 12]); // Answer::Error, ErrorCode::Overloaded
    assert_eq!(e.encode().as_ref(), &want[..]);
}

/// A length that claims far more than the buffer holds is refused at
/// once, without allocating it: were 2^40 elements (or bytes) reserved,
/// the process would abort rather than return.
#[test]
fn forged_lengths_are_refused_without_allocating() {
    let now = Instant::now();
    let huge = |prefix: &[u8]| {
        let mut v = prefix.to_vec();
        // 2^40 as a varint.
        v.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
        v.extend_from_slice(&[b'x'; 12]);
        v
    };
    let t = Instant::now();
    // The node name's length.
    let b = huge(&[PROTOCOL_VERSION, KIND_ENVELOPE]);
    assert_eq!(b.len(), 20);
    assert_eq!(
        Envelope::decode(&b, now).err(),
        Some(DecodeError::Truncated)
    );

    // A history answer's publication count: the body of a
    // `Reply { History }` ends with the (empty) list's length.
    let e = envelope(
        Msg::Reply {
            reply_to: reply_to(1),
            answer: Answer::History {
                position: pos(1, 2),
                publications: Vec::new(),
            },
        },
        1,
    );
    let b = e.encode();
    assert_eq!(b[b.len() - 1], 0);
    let forged = huge(&b[..b.len() - 1]);
    assert!(Envelope::decode(&forged, now).is_err());

    // A presence push's event count, and a payload's byte length.
    let b = envelope(Msg::Deliver(presence_push(now)), 1).encode();
    let head = 2 + 1 + "node-a".len() + 1 + "room:1".len() + 1 + 1 + 1 + "room:1".len() + 1;
    assert_eq!(b[head], 4, "four events");
    assert!(Envelope::decode(&huge(&b[..head]), now).is_err());
    let b = envelope(Msg::Deliver(shared(false, now)), 1).encode();
    let head = 2 + 1 + "node-a".len() + 1 + "news:eu".len() + 1 + 1 + 1 + "news:eu".len() + 1 + 1;
    assert_eq!(b[head], 16, "a 16-byte payload");
    assert_eq!(
        Envelope::decode(&huge(&b[..head]), now).err(),
        Some(DecodeError::Truncated)
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let mut b = vec![0u8; MAX_ENVELOPE + 1];
    b[0] = PROTOCOL_VERSION;
    b[1] = KIND_ENVELOPE;
    assert_eq!(
        Envelope::decode(&b, Instant::now()).err(),
        Some(DecodeError::TooLarge)
    );
}

/// A peer is held to what a client is: each out-of-limit field is refused.
#[test]
fn fields_beyond_client_limits_are_refused() {
    let now = Instant::now();
    let check = |msg: Msg, want: DecodeError| {
        let b = envelope(msg, 0).encode();
        assert_eq!(Envelope::decode(&b, now).err(), Some(want));
    };
    let publish = |channel: &str, key: Option<String>| Msg::Publish {
        channel: ch(channel),
        data: PubData {
            bytes: Bytes::from_static(b"1"),
            is_json: true,
        },
        idempotency_key: key.map(Into::into),
        publisher: None,
        durable_ack: false,
        from: 0,
        reply_to: reply_to(1),
    };
    check(publish("a b", None), DecodeError::Channel);
    check(publish("", None), DecodeError::Channel);
    check(publish(&"c".repeat(256), None), DecodeError::Channel);
    check(
        publish("ok", Some(String::new())),
        DecodeError::IdempotencyKey,
    );
    check(
        publish("ok", Some("k".repeat(MAX_IDEMPOTENCY_KEY + 1))),
        DecodeError::IdempotencyKey,
    );
    check(
        Msg::Deliver(Arc::new(SharedPub::new(
            ch("bad channel"),
            publication(1, b"1", true),
            false,
            now,
        ))),
        DecodeError::Channel,
    );
    check(
        Msg::SetState {
            channel: ch("ok"),
            client: ch("c"),
            state: Arc::from("s".repeat(MAX_PRESENCE_STATE + 1)),
            ttl_ms: None,
            from: 0,
            reply_to: reply_to(1),
        },
        DecodeError::Field,
    );
    let collab = |op: CollabOp| Msg::Collab {
        channel: ch("story:1"),
        op: Box::new(op),
        from: 0,
        reply_to: reply_to(1),
    };
    check(
        collab(CollabOp::Lock {
            section: "".into(),
            ttl: None,
        }),
        DecodeError::Field,
    );
    check(
        collab(CollabOp::Unlock {
            section: "s".repeat(MAX_SECTION_ID + 1).into(),
        }),
        DecodeError::Field,
    );
    let update = |section: String, op_id: String| {
        collab(CollabOp::Update {
            section: section.into(),
            base_version: 1,
            data: Bytes::from_static(b"1"),
            op_id: op_id.into(),
        })
    };
    check(update("s".into(), "".into()), DecodeError::Field);
    check(
        update("s".into(), "o".repeat(MAX_OP_ID + 1)),
        DecodeError::Field,
    );
    check(update("".into(), "o".into()), DecodeError::Field);

    let mut e = envelope(Msg::Lost { channel: ch("ok") }, 0);
    for bad in ["", "a.b", "a b", &"n".repeat(65)] {
        e.from_node = ch(bad);
        assert_eq!(
            Envelope::decode(&e.encode(), now).err(),
            Some(DecodeError::NodeName),
            "{bad:?}"
        );
    }
}

/// Random bytes behind a valid header, and valid envelopes with bytes
/// changed, inserted or cut: decoding answers without panicking, and what
/// it accepts encodes to an envelope that decodes the same again.
#[test]
fn random_and_mutated_bytes_never_panic() {
    let now = Instant::now();
    let encoded: Vec<Vec<u8>> = samples(now)
        .into_iter()
        .enumerate()
        .map(|(i, m)| envelope(m, i).encode().to_vec())
        .collect();
    let mut rng = StdRng::seed_from_u64(10);
    let (mut accepted, mut refused) = (0usize, BTreeSet::new());
    for i in 0..100_000 {
        let v = if i % 5 == 0 {
            random_bytes(&mut rng, 96, 0.9, &[KIND_ENVELOPE])
        } else {
            let mut v = encoded[rng.random_range(0..encoded.len())].clone();
            mutate(&mut rng, &mut v);
            v
        };
        match Envelope::decode(&v, now) {
            Ok(e) => {
                accepted += 1;
                let again = Envelope::decode(&e.encode(), now).expect("re-encoding decodes");
                assert_eq!(format!("{again:?}"), format!("{e:?}"));
            }
            Err(err) => {
                refused.insert(err.label());
            }
        }
    }
    // The mutations reach past the checks, not only into refusals, and
    // reach each kind of refusal.
    assert!(accepted > 2_000, "{accepted}");
    for label in [
        "empty",
        "version",
        "kind",
        "truncated",
        "trailing",
        "malformed",
    ] {
        assert!(refused.contains(label), "{label}: {refused:?}");
    }
}

#[test]
fn channel_and_sending_shard_helpers() {
    let now = Instant::now();
    for mut msg in samples(now) {
        let label = msg.kind_label();
        match &msg {
            Msg::Reply { .. } => assert_eq!(msg.channel(), None),
            Msg::Deliver(p) => assert_eq!(msg.channel(), Some(&p.channel)),
            _ => assert!(msg.channel().is_some(), "{label}"),
        }
        let to_home = matches!(
            msg,
            Msg::Interest { .. }
                | Msg::Publish { .. }
                | Msg::Subscribe { .. }
                | Msg::History { .. }
                | Msg::Leave { .. }
                | Msg::Collab { .. }
                | Msg::SetState { .. }
                | Msg::PresenceQuery { .. }
                | Msg::HistoryRemove { .. }
        );
        match msg.from_mut() {
            Some(from) => {
                assert!(to_home, "{label}");
                *from = 42;
            }
            None => assert!(!to_home, "{label}"),
        }
        if to_home {
            assert_eq!(msg.from_mut().copied(), Some(42), "{label}");
        }
    }
}

/// The size of a publish for the home, and (printed with `--nocapture`)
/// what encoding and decoding one costs.
#[test]
fn publish_envelope_size() {
    let now = Instant::now();
    let publish = |n: usize| {
        envelope(
            Msg::Publish {
                channel: ch("chat:room-42"),
                data: PubData {
                    bytes: Bytes::from(vec![b'x'; n]),
                    is_json: false,
                },
                idempotency_key: None,
                publisher: None,
                durable_ack: false,
                from: 1,
                reply_to: reply_to(1000),
            },
            1,
        )
    };
    let e = publish(100);
    let len = e.encode().len();
    // Header 2, node name 1 + 6, envelope channel 1 + 12, to_shard 1,
    // variant 1, channel 1 + 12, payload 1 + 100, is_json 1, no key 1,
    // no publisher 1, durable_ack 1, from 1, reply_to 2 + 5 + 2.
    assert_eq!(len, 152);
    let e = publish(200);
    let n = 10_000;
    let t = Instant::now();
    for _ in 0..n {
        let b = e.encode();
        std::hint::black_box(Envelope::decode(&b, now).unwrap());
    }
    eprintln!(
        "200-byte publish envelope: {} bytes, encode + decode {:?}",
        e.encode().len(),
        t.elapsed() / n
    );
}
