//! Tests of the JSON form.

use serde_json::{Value, json};

use super::*;
use crate::engine::hub::Position;
use crate::engine::wire::fixtures;

fn decode(s: &str) -> Result<Vec<Command<'_>>, MalformedFrame> {
    let mut v = Vec::new();
    decode_commands(s.as_bytes(), |c| v.push(c))?;
    Ok(v)
}

/// The method of a one-command frame.
fn one(s: &str) -> Result<Method<'_>, ErrorCode> {
    let mut cmds = decode(s).unwrap();
    assert_eq!(cmds.len(), 1, "{s}");
    cmds.pop().unwrap().method
}

fn reply_json(body: ReplyBody<'_>) -> Value {
    let mut out = Vec::new();
    write_reply(&mut out, 9, body);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], 9);
    v
}

const EPOCH: &str = "00000000000000ab";

#[test]
fn decodes_every_method() {
    let cmds = decode(concat!(
        "{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"app\"}}\n",
        "{\"id\":2,\"subscribe\":{\"channel\":\"chat:1\"}}\n",
        "{\"publish\":{\"channel\":\"chat:\\u0031\",\"data\":{\"a\":[1,2]}},\"id\":3}\n",
        "{\"id\":4,\"unsubscribe\":{\"channel\":\"chat:1\"}}\n",
        "{\"id\":5,\"ping\":{}}\n"
    ))
    .unwrap();
    assert_eq!(cmds.len(), 5);
    assert_eq!(cmds[0].id, 1);
    match &cmds[0].method {
        Ok(Method::Connect(p)) => {
            assert_eq!(p.token.as_deref(), Some("t"));
            assert_eq!(p.name.as_deref(), Some("app"));
            assert_eq!(p.version, None);
            assert_eq!(p.user, None);
            assert_eq!(p.info, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cmds[1].method,
        Ok(Method::Subscribe {
            channel: "chat:1".into(),
            recover: false,
            since: None,
            token: None,
        })
    );
    assert_eq!(
        cmds[2].method,
        Ok(Method::Publish {
            channel: "chat:1".into(),
            data: Data::Json(b"{\"a\":[1,2]}"),
            idempotency_key: None,
            durable_ack: false,
        })
    );
    assert_eq!(cmds[4].method, Ok(Method::Ping));
}

#[test]
fn connect_user_and_info() {
    let m = one(r#"{"id":1,"connect":{"user":"u-1","info":{"name": "Ann","tags":[1]}}}"#);
    match m {
        Ok(Method::Connect(p)) => {
            assert_eq!(p.user.as_deref(), Some("u-1"));
            assert_eq!(p.info, Some(&br#"{"name": "Ann","tags":[1]}"#[..]));
        }
        other => panic!("{other:?}"),
    }
    match one(r#"{"id":1,"connect":{"info":null}}"#) {
        Ok(Method::Connect(p)) => assert_eq!(p.info, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribe_with_position() {
    let since = Some(Position {
        epoch: 0xab,
        offset: 5,
    });
    assert_eq!(
        one(
            r#"{"id":1,"subscribe":{"channel":"c","recover":true,"epoch":"00000000000000ab","offset":5}}"#
        ),
        Ok(Method::Subscribe {
            channel: "c".into(),
            recover: true,
            since,
            token: None,
        })
    );
    // A position without recover is carried as given; upper-case hex too.
    assert_eq!(
        one(r#"{"id":1,"subscribe":{"channel":"c","epoch":"00000000000000AB","offset":5}}"#),
        Ok(Method::Subscribe {
            channel: "c".into(),
            recover: false,
            since,
            token: None,
        })
    );
}

#[test]
fn publish_idempotency_key() {
    let key = "k".repeat(256);
    let line =
        format!(r#"{{"id":1,"publish":{{"channel":"c","data":1,"idempotency_key":"{key}"}}}}"#);
    assert_eq!(
        one(&line),
        Ok(Method::Publish {
            channel: "c".into(),
            data: Data::Json(b"1"),
            idempotency_key: Some(key.as_str().into()),
            durable_ack: false,
        })
    );
    let line = r#"{"id":1,"publish":{"channel":"c","data":1,"durable_ack":true}}"#;
    assert_eq!(
        one(line),
        Ok(Method::Publish {
            channel: "c".into(),
            data: Data::Json(b"1"),
            idempotency_key: None,
            durable_ack: true,
        })
    );
}

#[test]
fn history_presence_and_state() {
    assert_eq!(
        one(
            r#"{"id":1,"history":{"channel":"c","limit":10,"since":{"epoch":"00000000000000ab","offset":3},"reverse":true}}"#
        ),
        Ok(Method::History {
            channel: "c".into(),
            limit: Some(10),
            since: Some(Position {
                epoch: 0xab,
                offset: 3
            }),
            reverse: true,
        })
    );
    assert_eq!(
        one(r#"{"id":1,"history":{"channel":"c"}}"#),
        Ok(Method::History {
            channel: "c".into(),
            limit: None,
            since: None,
            reverse: false,
        })
    );
    assert_eq!(
        one(r#"{"id":1,"presence":{"channel":"c"}}"#),
        Ok(Method::Presence {
            channel: "c".into()
        })
    );
    assert_eq!(
        one(r#"{"id":1,"presence_stats":{"channel":"c"}}"#),
        Ok(Method::PresenceStats {
            channel: "c".into()
        })
    );
    assert_eq!(
        one(r#"{"id":1,"presence_state":{"channel":"c","state":"typing","ttl":30}}"#),
        Ok(Method::PresenceState {
            channel: "c".into(),
            state: "typing".into(),
            ttl: Some(30),
        })
    );
    assert_eq!(
        one(r#"{"id":1,"presence_state":{"channel":"c","state":""}}"#),
        Ok(Method::PresenceState {
            channel: "c".into(),
            state: "".into(),
            ttl: None,
        })
    );
    // 128 bytes is the limit, counted in bytes (é is two).
    let state = "é".repeat(64);
    let line = format!(r#"{{"id":1,"presence_state":{{"channel":"c","state":"{state}"}}}}"#);
    assert!(matches!(one(&line), Ok(Method::PresenceState { state: s, .. }) if s == state));
    for (name, m) in [
        ("history", one(r#"{"id":1,"history":{"channel":"c"}}"#)),
        ("presence", one(r#"{"id":1,"presence":{"channel":"c"}}"#)),
        (
            "presence_stats",
            one(r#"{"id":1,"presence_stats":{"channel":"c"}}"#),
        ),
        (
            "presence_state",
            one(r#"{"id":1,"presence_state":{"channel":"c","state":""}}"#),
        ),
    ] {
        assert_eq!(m.unwrap().name(), name);
    }
}

#[test]
fn bad_parameters_are_107() {
    let long_key = "k".repeat(257);
    let long_state = "s".repeat(129);
    let wide_state = "é".repeat(65);
    let cases = [
        // subscribe: epoch and offset go together; recover needs them.
        r#"{"subscribe":{"channel":"c","epoch":"00000000000000ab"}}"#.to_string(),
        r#"{"subscribe":{"channel":"c","offset":3}}"#.into(),
        r#"{"subscribe":{"channel":"c","recover":true}}"#.into(),
        r#"{"subscribe":{"channel":"c","recover":"yes"}}"#.into(),
        r#"{"subscribe":{"channel":"c","epoch":"0000000000000ab","offset":3}}"#.into(),
        r#"{"subscribe":{"channel":"c","epoch":"000000000000000ab","offset":3}}"#.into(),
        r#"{"subscribe":{"channel":"c","epoch":"zz000000000000ab","offset":3}}"#.into(),
        r#"{"subscribe":{"channel":"c","epoch":"+000000000000abc","offset":3}}"#.into(),
        r#"{"subscribe":{"channel":"c","epoch":171,"offset":3}}"#.into(),
        r#"{"subscribe":{"channel":"c","epoch":"00000000000000ab","offset":-1}}"#.into(),
        // publish: key 1..=256 bytes, a string.
        r#"{"publish":{"channel":"c","data":1,"idempotency_key":""}}"#.into(),
        format!(r#"{{"publish":{{"channel":"c","data":1,"idempotency_key":"{long_key}"}}}}"#),
        r#"{"publish":{"channel":"c","data":1,"idempotency_key":7}}"#.into(),
        // history
        r#"{"history":{}}"#.into(),
        r#"{"history":{"channel":"c","since":{"epoch":"00000000000000ab"}}}"#.into(),
        r#"{"history":{"channel":"c","since":{"offset":3}}}"#.into(),
        r#"{"history":{"channel":"c","since":{"epoch":"xyz","offset":3}}}"#.into(),
        r#"{"history":{"channel":"c","since":"00000000000000ab"}}"#.into(),
        r#"{"history":{"channel":"c","limit":-1}}"#.into(),
        r#"{"history":{"channel":"c","limit":4294967296}}"#.into(),
        r#"{"history":{"channel":"c","reverse":1}}"#.into(),
        // presence
        r#"{"presence":{}}"#.into(),
        r#"{"presence":{"channel":5}}"#.into(),
        r#"{"presence_stats":{}}"#.into(),
        // presence_state: state required, at most 128 bytes.
        r#"{"presence_state":{"channel":"c"}}"#.into(),
        r#"{"presence_state":{"channel":"c","state":null}}"#.into(),
        format!(r#"{{"presence_state":{{"channel":"c","state":"{long_state}"}}}}"#),
        format!(r#"{{"presence_state":{{"channel":"c","state":"{wide_state}"}}}}"#),
        r#"{"presence_state":{"channel":"c","state":"x","ttl":-5}}"#.into(),
        r#"{"presence_state":{"state":"x"}}"#.into(),
        // connect
        r#"{"connect":{"user":5}}"#.into(),
    ];
    for line in &cases {
        assert_eq!(one(line), Err(ErrorCode::BadRequest), "{line}");
    }
}

#[test]
fn per_command_errors_keep_the_id() {
    let cmds =
        decode("{\"id\":7,\"teleport\":{}}\n{\"id\":8,\"subscribe\":{}}\n{\"id\":9}").unwrap();
    assert_eq!(cmds[0].method, Err(ErrorCode::UnknownMethod));
    assert_eq!(cmds[1].method, Err(ErrorCode::BadRequest));
    assert_eq!(cmds[2].method, Err(ErrorCode::BadRequest));
    assert_eq!(cmds.iter().map(|c| c.id).collect::<Vec<_>>(), vec![7, 8, 9]);
}

#[test]
fn malformed_frames() {
    assert!(decode("not json").is_err());
    assert!(decode("[1,2]").is_err());
    assert!(decode("{\"id\":-1,\"ping\":{}}").is_err());
    assert!(decode("").is_err());
    assert!(decode("{\"id\":1,\"ping\":{}}\n{").is_err());
}

#[test]
fn connect_and_subscribe_replies() {
    let v = reply_json(ReplyBody::Connect {
        client: "c.1",
        node: "n",
        ping: 25,
        user: "",
        ttl: None,
    });
    assert_eq!(
        v["connect"],
        json!({"client":"c.1","node":"n","ping":25,"user":"","expires":false})
    );
    let v = reply_json(ReplyBody::Connect {
        client: "c.1",
        node: "n",
        ping: 25,
        user: "ann",
        ttl: None,
    });
    assert_eq!(v["connect"]["user"], "ann");

    let mut out = Vec::new();
    write_reply(
        &mut out,
        3,
        ReplyBody::Subscribe {
            epoch: 0xab,
            offset: 7,
            recoverable: false,
            recovered: false,
            publications: &[],
        },
    );
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"id":3,"subscribe":{"epoch":"00000000000000ab","offset":7,"recoverable":false,"recovered":false,"publications":[]}}"#
    );
    let pubs = fixtures::pubs();
    let v = reply_json(ReplyBody::Subscribe {
        epoch: 0xab,
        offset: 8,
        recoverable: true,
        recovered: true,
        publications: &pubs,
    });
    let s = &v["subscribe"];
    assert_eq!(s["epoch"], EPOCH);
    assert_eq!(s["offset"], 8);
    assert_eq!(s["recoverable"], true);
    assert_eq!(s["recovered"], true);
    assert_eq!(
        s["publications"],
        json!([{"offset":7,"data":{"text":"hi"}},{"offset":8,"b64data":"/wA="}])
    );
}

#[test]
fn history_and_presence_replies() {
    let pubs = fixtures::pubs();
    let v = reply_json(ReplyBody::History {
        epoch: 0xab,
        offset: 9,
        publications: &pubs,
    });
    let h = &v["history"];
    assert_eq!(h["epoch"], EPOCH);
    assert_eq!(h["offset"], 9);
    assert_eq!(h["publications"][0]["offset"], 7);
    assert_eq!(h["publications"][0]["data"]["text"], "hi");
    assert_eq!(h["publications"][1]["b64data"], "/wA=");
    assert!(h["publications"][1].get("data").is_none());
    let v = reply_json(ReplyBody::History {
        epoch: 0,
        offset: 0,
        publications: &[],
    });
    assert_eq!(v["history"]["publications"], json!([]));

    let members = fixtures::presence();
    let v = reply_json(ReplyBody::Presence { clients: &members });
    assert_eq!(
        v["presence"],
        json!({"clients":{
            "b.2":{"user":"bob","client":"b.2","info":{"name":"Bob"},"state":"typing"},
            "a.1":{"user":"","client":"a.1"}
        }})
    );
    let v = reply_json(ReplyBody::Presence { clients: &[] });
    assert_eq!(v["presence"], json!({"clients":{}}));

    let v = reply_json(ReplyBody::PresenceStats {
        num_clients: 3,
        num_users: 2,
    });
    assert_eq!(v["presence_stats"], json!({"num_clients":3,"num_users":2}));
    let mut out = Vec::new();
    write_reply(&mut out, 1, ReplyBody::PresenceState);
    assert_eq!(out, br#"{"id":1,"presence_state":{}}"#);
}

#[test]
fn other_replies_and_pushes() {
    let v = reply_json(ReplyBody::Error(ErrorCode::UnknownMethod));
    assert_eq!(v["error"]["code"], 104);
    assert_eq!(v["error"]["temporary"], false);
    let mut out = Vec::new();
    write_pub(&mut out, "a\"b", 9, br#"{"x":1}"#, true);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["push"]["channel"], "a\"b");
    assert_eq!(v["push"]["pub"]["offset"], 9);
    assert_eq!(v["push"]["pub"]["data"]["x"], 1);
    out.clear();
    write_pub(&mut out, "c", 1, &[0xff, 0x00], false);
    assert_eq!(
        out,
        br#"{"push":{"channel":"c","pub":{"offset":1,"b64data":"/wA="}}}"#
    );
    out.clear();
    write_disconnect(&mut out, CloseReason::SlowConsumer, "slow consumer");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["push"]["disconnect"]["code"], 3002);
    assert_eq!(v["push"]["disconnect"]["reconnect"], true);
}

#[test]
fn presence_pushes() {
    let bob = fixtures::client("b.2", "bob", Some(r#"{"name":"Bob"}"#));
    let anon = fixtures::client("a.1", "", None);
    let mut out = Vec::new();
    write_join(&mut out, "room", &bob);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"push":{"channel":"room","join":{"info":{"user":"bob","client":"b.2","info":{"name":"Bob"}}}}})
    );
    out.clear();
    write_leave(&mut out, "room", &anon);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"push":{"channel":"room","leave":{"info":{"user":"","client":"a.1"}}}})
    );
    out.clear();
    write_state(&mut out, "room", &bob, "typing");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["push"]["channel"], "room");
    assert_eq!(v["push"]["state"]["state"], "typing");
    assert_eq!(v["push"]["state"]["info"]["client"], "b.2");
    assert_eq!(v["push"]["state"]["info"]["info"]["name"], "Bob");
    out.clear();
    write_state(&mut out, "room", &anon, "");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"push":{"channel":"room","state":{"info":{"user":"","client":"a.1"},"state":""}}})
    );
}

#[test]
fn writer_batches_replies_and_pushes() {
    let bob = fixtures::client("b.2", "bob", None);
    let mut w = JsonWriter::default();
    w.begin();
    w.reply(1, ReplyBody::PresenceState);
    w.join("room", &bob);
    w.state("room", &bob, "typing");
    w.leave("room", &bob);
    w.disconnect(CloseReason::Shutdown, "shutdown");
    let lines: Vec<Value> = std::str::from_utf8(w.payload())
        .unwrap()
        .split('\n')
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["id"], 1);
    assert!(lines[1]["push"]["join"].is_object());
    assert_eq!(lines[2]["push"]["state"]["state"], "typing");
    assert!(lines[3]["push"]["leave"].is_object());
    assert_eq!(lines[4]["push"]["disconnect"]["code"], 3001);
}

#[test]
fn server_side_subscription_pushes() {
    let mut out = Vec::new();
    write_subscribe_push(&mut out, "#bob", 0xab, 7, true);
    assert_eq!(
        out,
        br##"{"push":{"channel":"#bob","subscribe":{"epoch":"00000000000000ab","offset":7,"recoverable":true,"recovered":false,"publications":[]}}}"##
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    let push = v["push"].as_object().unwrap();
    assert_eq!(push.len(), 2);
    assert_eq!(push["channel"], "#bob");
    let s = push["subscribe"].as_object().unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s["epoch"], EPOCH);
    assert_eq!(s["offset"], 7);
    assert_eq!(s["recoverable"], true);
    assert_eq!(s["recovered"], false);
    assert_eq!(s["publications"], json!([]));

    // The push body is the reply body, field for field.
    let reply = reply_json(ReplyBody::Subscribe {
        epoch: 0xab,
        offset: 7,
        recoverable: true,
        recovered: false,
        publications: &[],
    });
    assert_eq!(reply["subscribe"], push["subscribe"]);

    out.clear();
    write_subscribe_push(&mut out, "news", u64::MAX, 0, false);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["push"]["channel"], "news");
    assert_eq!(v["push"]["subscribe"]["epoch"], "ffffffffffffffff");
    assert_eq!(v["push"]["subscribe"]["offset"], 0);
    assert_eq!(v["push"]["subscribe"]["recoverable"], false);

    out.clear();
    write_unsubscribe_push(&mut out, "a\"b");
    assert_eq!(out, br#"{"push":{"channel":"a\"b","unsubscribe":{}}}"#);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, json!({"push":{"channel":"a\"b","unsubscribe":{}}}));

    let mut w = JsonWriter::default();
    w.begin();
    w.subscribe_push("#bob", 1, 2, false);
    w.unsubscribe_push("#bob");
    let lines: Vec<Value> = std::str::from_utf8(w.payload())
        .unwrap()
        .split('\n')
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["push"]["subscribe"]["offset"], 2);
    assert_eq!(lines[1]["push"]["unsubscribe"], json!({}));
}

#[test]
fn credentials() {
    match one(r#"{"id":1,"connect":{"ticket":"t-1"}}"#) {
        Ok(Method::Connect(p)) => assert_eq!(p.ticket.as_deref(), Some("t-1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        one(r#"{"id":1,"subscribe":{"channel":"p:a","token":"s.jwt"}}"#),
        Ok(Method::Subscribe {
            channel: "p:a".into(),
            recover: false,
            since: None,
            token: Some("s.jwt".into()),
        })
    );
    assert_eq!(
        one(r#"{"id":1,"refresh":{"token":"n.jwt"}}"#),
        Ok(Method::Refresh {
            token: "n.jwt".into()
        })
    );
    assert_eq!(
        one(r#"{"id":1,"sub_refresh":{"channel":"p:a","token":"s2"}}"#),
        Ok(Method::SubRefresh {
            channel: "p:a".into(),
            token: "s2".into()
        })
    );
    for bad in [
        r#"{"id":1,"refresh":{}}"#,
        r#"{"id":1,"refresh":{"token":""}}"#,
        r#"{"id":1,"sub_refresh":{"token":"x"}}"#,
    ] {
        assert_eq!(one(bad), Err(ErrorCode::BadRequest), "{bad}");
    }
    let v = reply_json(ReplyBody::Connect {
        client: "c.1",
        node: "n",
        ping: 25,
        user: "ann",
        ttl: Some(600),
    });
    assert_eq!(v["connect"]["expires"], true);
    assert_eq!(v["connect"]["ttl"], 600);
    let v = reply_json(ReplyBody::Refresh {
        ttl: Some(30),
        subscription: false,
    });
    assert_eq!(v["refresh"], json!({"expires": true, "ttl": 30}));
    let v = reply_json(ReplyBody::Refresh {
        ttl: None,
        subscription: true,
    });
    assert_eq!(v["sub_refresh"], json!({"expires": false}));
}

#[test]
fn backend_calls() {
    assert_eq!(
        one(r#"{"id":1,"rpc":{"method":"rooms.list","data":{"page":2}}}"#),
        Ok(Method::Rpc {
            method: "rooms.list".into(),
            data: Data::Json(br#"{"page":2}"#),
        })
    );
    // `data` is optional: an empty payload.
    assert_eq!(
        one(r#"{"id":1,"rpc":{"method":"ping_backend"}}"#),
        Ok(Method::Rpc {
            method: "ping_backend".into(),
            data: Data::Json(b""),
        })
    );
    assert_eq!(
        one(r#"{"id":2,"send":{"data":"typing"}}"#),
        Ok(Method::Send {
            data: Data::Json(br#""typing""#),
        })
    );
    assert_eq!(
        one(r#"{"id":2,"send":{}}"#),
        Ok(Method::Send {
            data: Data::Json(b""),
        })
    );
    for bad in [
        r#"{"id":3,"rpc":{"data":1}}"#,
        r#"{"id":3,"rpc":{"method":1}}"#,
        r#"{"id":3,"rpc":{"method":""}}"#,
        r#"{"id":3,"rpc":{"method":"a..b"}}"#,
        r#"{"id":3,"rpc":{"method":"a.*"}}"#,
        r#"{"id":3,"rpc":{"method":"a.>"}}"#,
        r#"{"id":3,"rpc":{"method":"a b"}}"#,
        r#"{"id":3,"rpc":{"method":".a"}}"#,
        r#"{"id":3,"rpc":{"method":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#,
        r#"{"id":3,"rpc":[]}"#,
        r#"{"id":3,"send":1}"#,
    ] {
        assert_eq!(one(bad), Err(ErrorCode::BadRequest), "{bad}");
    }
}

#[test]
fn backend_call_replies() {
    let v = reply_json(ReplyBody::Rpc {
        data: br#"{"rooms":["a"]}"#,
        is_json: true,
    });
    assert_eq!(v["rpc"], json!({"data": {"rooms": ["a"]}}));
    // Bytes that are not JSON, as publications: base64.
    let v = reply_json(ReplyBody::Rpc {
        data: b"\xff\x00",
        is_json: false,
    });
    assert_eq!(v["rpc"], json!({"b64data": "/wA="}));
    let v = reply_json(ReplyBody::Rpc {
        data: b"",
        is_json: false,
    });
    assert_eq!(v["rpc"], json!({"b64data": ""}));
    assert_eq!(reply_json(ReplyBody::Send)["send"], json!({}));
    let v = reply_json(ReplyBody::ErrorMessage {
        code: ErrorCode::RpcError,
        message: "400 \"bad\" input",
    });
    assert_eq!(
        v["error"],
        json!({"code": 126, "message": "400 \"bad\" input", "temporary": false})
    );
    let v = reply_json(ReplyBody::Error(ErrorCode::RpcTimeout));
    assert_eq!(
        v["error"],
        json!({"code": 124, "message": "rpc timeout", "temporary": true})
    );
}
