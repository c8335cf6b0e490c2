//! Tests of the FlatBuffers form.

use super::*;
use crate::engine::hub::Position;
use crate::engine::wire::fixtures;

/// A `ClientFrame` with one command whose request table `build` writes.
fn raw_frame(
    build: impl FnOnce(&mut Fbb) -> (proto::Method, WIPOffset<UnionWIPOffset>),
) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let (method_type, method) = build(&mut fbb);
    let cmd = proto::Command::create(
        &mut fbb,
        &proto::CommandArgs {
            id: 1,
            method_type,
            method: Some(method),
        },
    );
    let commands = fbb.create_vector(&[cmd]);
    let frame = proto::ClientFrame::create(
        &mut fbb,
        &proto::ClientFrameArgs {
            commands: Some(commands),
        },
    );
    fbb.finish_minimal(frame);
    fbb.finished_data().to_vec()
}

/// The method of a one-command frame.
fn one(buf: &[u8]) -> Result<Method<'_>, ErrorCode> {
    let mut got = Vec::new();
    decode_commands(buf, |c| got.push(c)).unwrap();
    assert_eq!(got.len(), 1);
    got.pop().unwrap().method
}

fn since(epoch: u64, offset: u64) -> Option<Position> {
    Some(Position { epoch, offset })
}

#[test]
fn client_frame_round_trip() {
    let methods = vec![
        Method::Connect(ConnectParams::default()),
        Method::Connect(ConnectParams {
            token: Some("t".into()),
            name: Some("app".into()),
            version: Some("1".into()),
            user: Some("ann".into()),
            info: Some(br#"{"name":"Ann"}"#),
            ticket: Some("tk".into()),
        }),
        Method::Subscribe {
            channel: "a:b".into(),
            recover: false,
            since: None,
            token: None,
        },
        Method::Subscribe {
            channel: "a:b".into(),
            recover: true,
            since: since(0xab, 0),
            token: None,
        },
        Method::Subscribe {
            channel: "a:b".into(),
            recover: false,
            since: since(u64::MAX, 5),
            token: None,
        },
        Method::Unsubscribe {
            channel: "a:b".into(),
        },
        Method::Publish {
            channel: "a:b".into(),
            data: Data::Bytes(&[1, 2, 3]),
            idempotency_key: None,
            durable_ack: false,
        },
        Method::Publish {
            channel: "a:b".into(),
            data: Data::Bytes(&[]),
            idempotency_key: Some("k".repeat(256).into()),
            durable_ack: true,
        },
        Method::History {
            channel: "a:b".into(),
            limit: None,
            since: None,
            reverse: false,
        },
        Method::History {
            channel: "a:b".into(),
            limit: Some(0),
            since: since(1, 0),
            reverse: true,
        },
        Method::Presence {
            channel: "a:b".into(),
        },
        Method::PresenceStats {
            channel: "a:b".into(),
        },
        Method::PresenceState {
            channel: "a:b".into(),
            state: "".into(),
            ttl: None,
        },
        Method::PresenceState {
            channel: "a:b".into(),
            state: "s".repeat(128).into(),
            ttl: Some(30),
        },
        Method::Ping,
    ];
    let cmds: Vec<(u32, Method<'_>)> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u32 + 1, m.clone()))
        .collect();
    let buf = client_frame(&cmds);
    let mut got = Vec::new();
    decode_commands(&buf, |c| got.push(c)).unwrap();
    assert_eq!(got.len(), methods.len());
    for (i, (c, m)) in got.iter().zip(&methods).enumerate() {
        assert_eq!(c.id, i as u32 + 1);
        assert_eq!(c.method.as_ref(), Ok(m));
    }
}

#[test]
fn bad_parameters_are_107() {
    // Limits that `client_frame` can express.
    for m in [
        Method::Publish {
            channel: "c".into(),
            data: Data::Bytes(b"1"),
            idempotency_key: Some("".into()),
            durable_ack: false,
        },
        Method::Publish {
            channel: "c".into(),
            data: Data::Bytes(b"1"),
            idempotency_key: Some("k".repeat(257).into()),
            durable_ack: false,
        },
        Method::PresenceState {
            channel: "c".into(),
            state: "s".repeat(129).into(),
            ttl: None,
        },
        Method::Connect(ConnectParams {
            info: Some(b"{not json"),
            ..Default::default()
        }),
        Method::Connect(ConnectParams {
            info: Some(b""),
            ..Default::default()
        }),
        // JSON in shape, but not UTF-8: it would break JSON text frames.
        Method::Connect(ConnectParams {
            info: Some(b"{\"name\":\"\xff\"}"),
            ..Default::default()
        }),
    ] {
        let buf = client_frame(&[(1, m.clone())]);
        assert_eq!(one(&buf), Err(ErrorCode::BadRequest), "{m:?}");
    }
    // Shapes only a hand-built frame can have.
    type Built = (proto::Method, WIPOffset<UnionWIPOffset>);
    type Build = fn(&mut Fbb) -> Built;
    fn subscribe(fbb: &mut Fbb, recover: bool, epoch: Option<&str>, offset: Option<u64>) -> Built {
        let channel = Some(fbb.create_string("c"));
        let epoch = epoch.map(|e| fbb.create_string(e));
        let args = proto::SubscribeRequestArgs {
            channel,
            recover,
            epoch,
            offset,
            token: None,
        };
        let r = proto::SubscribeRequest::create(fbb, &args);
        (proto::Method::Subscribe, r.as_union_value())
    }
    fn history(
        fbb: &mut Fbb,
        channel: Option<&str>,
        epoch: Option<&str>,
        offset: Option<u64>,
    ) -> Built {
        let channel = channel.map(|c| fbb.create_string(c));
        let epoch = epoch.map(|e| fbb.create_string(e));
        let since =
            proto::StreamPosition::create(fbb, &proto::StreamPositionArgs { epoch, offset });
        let args = proto::HistoryRequestArgs {
            channel,
            since: Some(since),
            ..Default::default()
        };
        let r = proto::HistoryRequest::create(fbb, &args);
        (proto::Method::History, r.as_union_value())
    }
    let cases: Vec<(&str, Build)> = vec![
        ("subscribe epoch only", |f| {
            subscribe(f, false, Some("00000000000000ab"), None)
        }),
        ("subscribe offset only", |f| {
            subscribe(f, false, None, Some(3))
        }),
        ("subscribe recover alone", |f| {
            subscribe(f, true, None, None)
        }),
        ("subscribe short epoch", |f| {
            subscribe(f, true, Some("abc"), Some(3))
        }),
        ("subscribe non-hex epoch", |f| {
            subscribe(f, false, Some("g000000000000000"), Some(3))
        }),
        ("subscribe without channel", |f| {
            let r = proto::SubscribeRequest::create(f, &Default::default());
            (proto::Method::Subscribe, r.as_union_value())
        }),
        ("history since without epoch", |f| {
            history(f, Some("c"), None, Some(3))
        }),
        ("history since without offset", |f| {
            history(f, Some("c"), Some("00000000000000ab"), None)
        }),
        ("history bad epoch", |f| {
            history(f, Some("c"), Some("00000000000000a"), Some(3))
        }),
        ("history without channel", |f| {
            history(f, None, Some("00000000000000ab"), Some(3))
        }),
        ("presence without channel", |f| {
            let r = proto::PresenceRequest::create(f, &Default::default());
            (proto::Method::Presence, r.as_union_value())
        }),
        ("presence_stats without channel", |f| {
            let r = proto::PresenceStatsRequest::create(f, &Default::default());
            (proto::Method::PresenceStats, r.as_union_value())
        }),
        ("presence_state without state", |f| {
            let channel = Some(f.create_string("c"));
            let args = proto::PresenceStateRequestArgs {
                channel,
                ..Default::default()
            };
            let r = proto::PresenceStateRequest::create(f, &args);
            (proto::Method::PresenceState, r.as_union_value())
        }),
        ("presence tag on another table", |f| {
            let r = proto::PingRequest::create(f, &proto::PingRequestArgs {});
            (proto::Method::Presence, r.as_union_value())
        }),
    ];
    for (what, build) in cases {
        assert_eq!(one(&raw_frame(build)), Err(ErrorCode::BadRequest), "{what}");
    }
    // A union member from a newer client is an unknown method.
    let buf = raw_frame(|f| {
        let r = proto::PingRequest::create(f, &proto::PingRequestArgs {});
        (proto::Method(200), r.as_union_value())
    });
    assert_eq!(one(&buf), Err(ErrorCode::UnknownMethod));
}

#[test]
fn garbage_is_malformed() {
    assert!(decode_commands(&[1, 2, 3], |_| {}).is_err());
    assert!(decode_commands(&[0xff; 64], |_| {}).is_err());
    assert!(decode_commands(&[], |_| {}).is_err());
}

/// Checks a `Publication` vector against the fixture publications.
fn check_pubs(v: Option<flatbuffers::Vector<'_, ForwardsUOffset<proto::Publication<'_>>>>) {
    let v = v.unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v.get(0).offset(), 7);
    assert_eq!(v.get(0).data().unwrap().bytes(), br#"{"text":"hi"}"#);
    assert_eq!(v.get(1).offset(), 8);
    assert_eq!(v.get(1).data().unwrap().bytes(), &[0xff, 0x00]);
}

#[test]
fn every_reply_round_trips() {
    let pubs = fixtures::pubs();
    let members = fixtures::presence();
    let mut w = BinaryWriter::default();
    w.begin();
    let bodies = [
        ReplyBody::Connect {
            client: "c.1",
            node: "n",
            ping: 25,
            user: "ann",
            ttl: None,
        },
        ReplyBody::Subscribe {
            epoch: 0xab,
            offset: 8,
            recoverable: true,
            recovered: true,
            publications: &pubs,
        },
        ReplyBody::Subscribe {
            epoch: 1,
            offset: 0,
            recoverable: false,
            recovered: false,
            publications: &[],
        },
        ReplyBody::Unsubscribe,
        ReplyBody::Publish { offset: 42 },
        ReplyBody::History {
            epoch: 0xab,
            offset: 9,
            publications: &pubs,
        },
        ReplyBody::Presence { clients: &members },
        ReplyBody::PresenceStats {
            num_clients: 3,
            num_users: 2,
        },
        ReplyBody::PresenceState,
        ReplyBody::Ping,
        ReplyBody::Error(ErrorCode::UnknownMethod),
    ];
    for (i, b) in bodies.iter().enumerate() {
        w.reply(i as u32, *b);
    }
    let payload = w.payload();
    let sf = flatbuffers::root::<proto::ServerFrame>(payload).unwrap();
    let msgs = sf.messages().unwrap();
    assert_eq!(msgs.len(), bodies.len());
    let r = |i: usize| {
        let r = msgs.get(i).reply().unwrap();
        assert_eq!(r.id(), i as u32);
        assert!(msgs.get(i).push_().is_none());
        r
    };

    let c = r(0).result_as_connect().unwrap();
    assert_eq!(
        (c.client(), c.node(), c.ping(), c.user()),
        (Some("c.1"), Some("n"), 25, Some("ann"))
    );
    let s = r(1).result_as_subscribe().unwrap();
    assert_eq!(s.epoch(), Some("00000000000000ab"));
    assert_eq!(s.offset(), 8);
    assert!(s.recoverable() && s.recovered());
    check_pubs(s.publications());
    let s = r(2).result_as_subscribe().unwrap();
    assert_eq!((s.epoch(), s.offset()), (Some("0000000000000001"), 0));
    assert!(!s.recoverable() && !s.recovered());
    assert_eq!(s.publications().unwrap().len(), 0);
    assert!(r(3).result_as_unsubscribe().is_some());
    assert_eq!(r(4).result_as_publish().unwrap().offset(), 42);
    let h = r(5).result_as_history().unwrap();
    assert_eq!((h.epoch(), h.offset()), (Some("00000000000000ab"), 9));
    check_pubs(h.publications());

    let clients = r(6).result_as_presence().unwrap().clients().unwrap();
    assert_eq!(clients.len(), 2);
    // Sorted by client id, whatever the input order.
    assert_eq!(clients.get(0).client(), "a.1");
    assert_eq!(clients.get(1).client(), "b.2");
    let bob = clients
        .lookup_by_key("b.2", |e, k| e.key_compare_with_value(k))
        .unwrap();
    let info = bob.info().unwrap();
    assert_eq!((info.client(), info.user()), (Some("b.2"), Some("bob")));
    assert_eq!(info.info().unwrap().bytes(), br#"{"name":"Bob"}"#);
    assert_eq!(bob.state(), Some("typing"));
    let anon = clients
        .lookup_by_key("a.1", |e, k| e.key_compare_with_value(k))
        .unwrap();
    assert_eq!(anon.info().unwrap().user(), Some(""));
    assert!(anon.info().unwrap().info().is_none());
    assert!(anon.state().is_none());
    assert!(
        clients
            .lookup_by_key("c.3", |e, k| e.key_compare_with_value(k))
            .is_none()
    );

    let st = r(7).result_as_presence_stats().unwrap();
    assert_eq!((st.num_clients(), st.num_users()), (3, 2));
    assert!(r(8).result_as_presence_state().is_some());
    assert!(r(9).result_as_ping().is_some());
    let e = r(10).error().unwrap();
    assert_eq!((e.code(), e.temporary()), (104, false));
    assert_eq!(r(10).result_type(), proto::ReplyResult::NONE);
}

#[test]
fn every_push_round_trips() {
    let bob = fixtures::client("b.2", "bob", Some(r#"{"name":"Bob"}"#));
    let anon = fixtures::client("a.1", "", None);
    let mut w = BinaryWriter::default();
    w.begin();
    w.join("room", &bob);
    w.leave("room", &anon);
    w.state("room", &bob, "typing");
    w.state("room", &anon, "");
    w.disconnect(CloseReason::Shutdown, "shutdown");
    let payload = w.payload();
    let sf = flatbuffers::root::<proto::ServerFrame>(payload).unwrap();
    let msgs = sf.messages().unwrap();
    assert_eq!(msgs.len(), 5);
    let push = |i: usize| {
        assert!(msgs.get(i).reply().is_none());
        msgs.get(i).push_().unwrap()
    };
    let check_bob = |i: proto::ClientInfo<'_>| {
        assert_eq!((i.client(), i.user()), (Some("b.2"), Some("bob")));
        assert_eq!(i.info().unwrap().bytes(), br#"{"name":"Bob"}"#);
    };
    let check_anon = |i: proto::ClientInfo<'_>| {
        assert_eq!((i.client(), i.user()), (Some("a.1"), Some("")));
        assert!(i.info().is_none());
    };
    assert_eq!(push(0).channel(), Some("room"));
    check_bob(push(0).body_as_join().unwrap().info().unwrap());
    assert_eq!(push(1).channel(), Some("room"));
    check_anon(push(1).body_as_leave().unwrap().info().unwrap());
    let s = push(2).body_as_state().unwrap();
    check_bob(s.info().unwrap());
    assert_eq!(s.state(), Some("typing"));
    let s = push(3).body_as_state().unwrap();
    check_anon(s.info().unwrap());
    assert_eq!(s.state(), Some(""));
    assert_eq!(push(4).channel(), None);
    let d = push(4).body_as_disconnect().unwrap();
    assert_eq!(d.code(), 3001);
    assert!(d.reconnect());

    let mut fbb = FlatBufferBuilder::new();
    let pf = pub_payload(&mut fbb, "ch", 9, b"xyz");
    let sf = flatbuffers::root::<proto::ServerFrame>(pf).unwrap();
    let push = sf.messages().unwrap().get(0).push_().unwrap();
    assert_eq!(push.channel(), Some("ch"));
    let p = push.body_as_pub().unwrap();
    assert_eq!(p.offset(), 9);
    assert_eq!(p.data().unwrap().bytes(), b"xyz");
}

#[test]
fn server_side_subscription_pushes_round_trip() {
    let mut w = BinaryWriter::default();
    w.begin();
    w.subscribe_push("#bob", 0xab, 7, true);
    w.unsubscribe_push("#bob");
    w.subscribe_push("news", u64::MAX, 0, false);
    let payload = w.payload();
    let sf = flatbuffers::root::<proto::ServerFrame>(payload).unwrap();
    let msgs = sf.messages().unwrap();
    assert_eq!(msgs.len(), 3);
    let push = |i: usize| {
        assert!(msgs.get(i).reply().is_none());
        msgs.get(i).push_().unwrap()
    };

    assert_eq!(push(0).channel(), Some("#bob"));
    assert_eq!(push(0).body_type(), proto::PushBody::Subscribe);
    let s = push(0).body_as_subscribe().unwrap();
    assert_eq!(s.epoch(), Some("00000000000000ab"));
    assert_eq!(s.offset(), 7);
    assert!(s.recoverable());
    assert!(!s.recovered());
    assert_eq!(s.publications().unwrap().len(), 0);

    assert_eq!(push(1).channel(), Some("#bob"));
    assert_eq!(push(1).body_type(), proto::PushBody::Unsubscribe);
    assert!(push(1).body_as_unsubscribe().is_some());
    assert!(push(1).body_as_subscribe().is_none());

    assert_eq!(push(2).channel(), Some("news"));
    let s = push(2).body_as_subscribe().unwrap();
    assert_eq!(s.epoch(), Some("ffffffffffffffff"));
    assert_eq!(s.offset(), 0);
    assert!(!s.recoverable());
}

#[test]
fn credentials_round_trip() {
    let methods = [
        Method::Connect(ConnectParams {
            ticket: Some("t-1".into()),
            ..ConnectParams::default()
        }),
        Method::Subscribe {
            channel: "private:a".into(),
            recover: false,
            since: None,
            token: Some("sub.jwt".into()),
        },
        Method::Refresh {
            token: "new.jwt".into(),
        },
        Method::SubRefresh {
            channel: "private:a".into(),
            token: "sub2.jwt".into(),
        },
    ];
    let cmds: Vec<(u32, Method<'_>)> = methods.iter().map(|m| (1, m.clone())).collect();
    let frame = client_frame(&cmds);
    let mut got = Vec::new();
    decode_commands(&frame, |c| got.push(c.method)).unwrap();
    assert_eq!(got, methods.map(Ok));
    // An empty refresh token is refused.
    let empty = client_frame(&[(1, Method::Refresh { token: "".into() })]);
    decode_commands(&empty, |c| assert_eq!(c.method, Err(ErrorCode::BadRequest))).unwrap();

    let mut w = BinaryWriter::default();
    w.begin();
    w.reply(
        1,
        ReplyBody::Connect {
            client: "c.1",
            node: "n",
            ping: 25,
            user: "ann",
            ttl: Some(600),
        },
    );
    w.reply(
        2,
        ReplyBody::Refresh {
            ttl: Some(30),
            subscription: false,
        },
    );
    w.reply(
        3,
        ReplyBody::Refresh {
            ttl: None,
            subscription: true,
        },
    );
    let sf = flatbuffers::root::<proto::ServerFrame>(w.payload()).unwrap();
    let msgs = sf.messages().unwrap();
    let c = msgs.get(0).reply().unwrap().result_as_connect().unwrap();
    assert_eq!((c.expires(), c.ttl()), (true, 600));
    let r = msgs.get(1).reply().unwrap().result_as_refresh().unwrap();
    assert_eq!((r.expires(), r.ttl()), (true, 30));
    let r = msgs
        .get(2)
        .reply()
        .unwrap()
        .result_as_sub_refresh()
        .unwrap();
    assert!(!r.expires());
}

#[test]
fn backend_calls_round_trip() {
    let methods = [
        Method::Rpc {
            method: "rooms.list".into(),
            data: Data::Bytes(&[0, 255, 1]),
        },
        Method::Rpc {
            method: "m".into(),
            data: Data::Bytes(b""),
        },
        Method::Send {
            data: Data::Bytes(b"{\"typing\":true}"),
        },
    ];
    for m in methods {
        let buf = client_frame(&[(1, m.clone())]);
        assert_eq!(one(&buf), Ok(m));
    }
    // Absent data is an empty payload; a missing or bad method is 107.
    let buf = raw_frame(|fbb| {
        let method = Some(fbb.create_string("echo"));
        let r = proto::RpcRequest::create(fbb, &proto::RpcRequestArgs { method, data: None });
        (proto::Method::Rpc, r.as_union_value())
    });
    assert_eq!(
        one(&buf),
        Ok(Method::Rpc {
            method: "echo".into(),
            data: Data::Bytes(b""),
        })
    );
    let buf = raw_frame(|fbb| {
        let r = proto::SendRequest::create(fbb, &proto::SendRequestArgs { data: None });
        (proto::Method::Send, r.as_union_value())
    });
    assert_eq!(
        one(&buf),
        Ok(Method::Send {
            data: Data::Bytes(b"")
        })
    );
    for method in [None, Some(""), Some("a..b"), Some("a.*"), Some("a b")] {
        let buf = raw_frame(|fbb| {
            let method = method.map(|m| fbb.create_string(m));
            let r = proto::RpcRequest::create(fbb, &proto::RpcRequestArgs { method, data: None });
            (proto::Method::Rpc, r.as_union_value())
        });
        assert_eq!(one(&buf), Err(ErrorCode::BadRequest), "{method:?}");
    }
}

#[test]
fn backend_call_replies_round_trip() {
    let mut w = BinaryWriter::default();
    w.begin();
    w.reply(
        1,
        ReplyBody::Rpc {
            data: &[0, 255],
            is_json: false,
        },
    );
    w.reply(2, ReplyBody::Send);
    w.reply(
        3,
        ReplyBody::ErrorMessage {
            code: ErrorCode::RpcError,
            message: "400 bad input",
        },
    );
    w.reply(4, ReplyBody::Error(ErrorCode::NoResponders));
    let payload = w.payload().to_vec();
    let sf = flatbuffers::root::<proto::ServerFrame>(&payload).unwrap();
    let msgs = sf.messages().unwrap();
    let reply = |i: usize| msgs.get(i).reply().unwrap();
    let rpc = reply(0).result_as_rpc().unwrap();
    assert_eq!(rpc.data().unwrap().bytes(), &[0, 255]);
    assert!(reply(1).result_as_send().is_some());
    let e = reply(2).error().unwrap();
    assert_eq!(
        (e.code(), e.message(), e.temporary()),
        (126, Some("400 bad input"), false)
    );
    let e = reply(3).error().unwrap();
    assert_eq!(
        (e.code(), e.message(), e.temporary()),
        (125, Some("no responders"), true)
    );
}
