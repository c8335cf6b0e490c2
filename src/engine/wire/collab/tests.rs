//! Decoding the story collaboration commands in both forms.

use std::borrow::Cow;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::*;
use crate::engine::hub::Position;
use crate::engine::wire::{Command, binary, json, proto};

const EPOCH: &str = "00000000000000ab";

/// The method of a one-command JSON frame.
fn json_one(s: &str) -> Result<Method<'_>, ErrorCode> {
    let mut got: Vec<Command<'_>> = Vec::new();
    json::decode_commands(s.as_bytes(), |c| got.push(c)).unwrap();
    assert_eq!(got.len(), 1, "{s}");
    got.pop().unwrap().method
}

/// The method of a one-command binary frame.
fn bin_one(buf: &[u8]) -> Result<Method<'_>, ErrorCode> {
    let mut got: Vec<Command<'_>> = Vec::new();
    binary::decode_commands(buf, |c| got.push(c)).unwrap();
    assert_eq!(got.len(), 1);
    got.pop().unwrap().method
}

type Fbb = FlatBufferBuilder<'static>;

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

fn join(role: CollabRole, queue: bool, recover: bool, since: Option<Position>) -> Method<'static> {
    Method::CollabJoin {
        channel: "story:1".into(),
        role,
        queue,
        recover,
        since,
    }
}

fn update<'a>(section: &'a str, data: &'a [u8], op_id: &'a str) -> Method<'a> {
    Method::Update {
        channel: "story:1".into(),
        section: section.into(),
        base_version: 4,
        data,
        op_id: op_id.into(),
    }
}

fn at(offset: u64) -> Option<Position> {
    Some(Position {
        epoch: 0xab,
        offset,
    })
}

#[test]
fn json_decodes_every_collab_command() {
    assert_eq!(
        json_one(r#"{"id":1,"collab_join":{"channel":"story:1","role":"editor"}}"#),
        Ok(join(CollabRole::Editor, false, false, None))
    );
    assert_eq!(
        json_one(
            r#"{"id":1,"collab_join":{"channel":"story:1","role":"viewer","queue":true,"recover":true,"epoch":"00000000000000ab","offset":7}}"#
        ),
        Ok(join(CollabRole::Viewer, true, true, at(7)))
    );
    // A position without recover is kept (as subscribe keeps it).
    assert_eq!(
        json_one(&format!(
            r#"{{"id":1,"collab_join":{{"channel":"story:1","role":"editor","epoch":"{EPOCH}","offset":0}}}}"#
        )),
        Ok(join(CollabRole::Editor, false, false, at(0)))
    );
    assert_eq!(
        json_one(r#"{"id":1,"collab_leave":{"channel":"story:1"}}"#),
        Ok(Method::CollabLeave {
            channel: "story:1".into()
        })
    );
    assert_eq!(
        json_one(r#"{"id":1,"lock":{"channel":"story:1","section":"intro","ttl":30}}"#),
        Ok(Method::Lock {
            channel: "story:1".into(),
            section: "intro".into(),
            ttl: Some(30),
        })
    );
    assert_eq!(
        json_one(r#"{"id":1,"lock":{"channel":"story:1","section":"s\u00e9"}}"#),
        Ok(Method::Lock {
            channel: "story:1".into(),
            section: "sé".into(),
            ttl: None,
        })
    );
    assert_eq!(
        json_one(r#"{"id":1,"unlock":{"channel":"story:1","section":"intro"}}"#),
        Ok(Method::Unlock {
            channel: "story:1".into(),
            section: "intro".into(),
        })
    );
    // `data` is kept as its raw text, whatever JSON value it is.
    for data in [
        r#"{"text": "hi", "n":[1, 2]}"#,
        "null",
        "\"x\"",
        "3.5",
        "[]",
    ] {
        let cmd = format!(
            r#"{{"id":1,"update":{{"channel":"story:1","section":"intro","base_version":4,"data":{data},"op_id":"op-1"}}}}"#
        );
        assert_eq!(
            json_one(&cmd),
            Ok(update("intro", data.as_bytes(), "op-1")),
            "{data}"
        );
    }
}

#[test]
fn json_rejects_bad_collab_params() {
    let join = |p: &str| format!(r#"{{"id":1,"collab_join":{p}}}"#);
    let lock = |p: &str| format!(r#"{{"id":1,"lock":{p}}}"#);
    let upd = |p: &str| format!(r#"{{"id":1,"update":{p}}}"#);
    let long = "s".repeat(MAX_SECTION_ID + 1);
    let long_op = "o".repeat(MAX_OP_ID + 1);
    let bad = [
        // collab_join: missing or wrong fields, positions as in subscribe.
        join(r#"{"role":"editor"}"#),
        join(r#"{"channel":"story:1"}"#),
        join(r#"{"channel":"story:1","role":"Editor"}"#),
        join(r#"{"channel":"story:1","role":"queued"}"#),
        join(r#"{"channel":"story:1","role":1}"#),
        join(r#"{"channel":"story:1","role":"editor","queue":"yes"}"#),
        join(r#"{"channel":"story:1","role":"editor","recover":true}"#),
        join(r#"{"channel":"story:1","role":"editor","epoch":"00000000000000ab"}"#),
        join(r#"{"channel":"story:1","role":"editor","offset":3}"#),
        join(r#"{"channel":"story:1","role":"editor","epoch":"ab","offset":3}"#),
        join(r#"{"channel":7,"role":"editor"}"#),
        join("[]"),
        // collab_leave
        r#"{"id":1,"collab_leave":{}}"#.to_string(),
        r#"{"id":1,"collab_leave":{"channel":null}}"#.to_string(),
        // lock / unlock
        lock(r#"{"channel":"story:1"}"#),
        lock(r#"{"channel":"story:1","section":""}"#),
        lock(&format!(r#"{{"channel":"story:1","section":"{long}"}}"#)),
        lock(r#"{"channel":"story:1","section":5}"#),
        lock(r#"{"channel":"story:1","section":"a","ttl":-1}"#),
        lock(r#"{"channel":"story:1","section":"a","ttl":4294967296}"#),
        lock(r#"{"channel":"story:1","section":"a","ttl":"30"}"#),
        r#"{"id":1,"unlock":{"channel":"story:1"}}"#.to_string(),
        r#"{"id":1,"unlock":{"channel":"story:1","section":""}}"#.to_string(),
        // update
        upd(r#"{"channel":"story:1","section":"a","data":1,"op_id":"o"}"#),
        upd(r#"{"channel":"story:1","section":"a","base_version":1,"op_id":"o"}"#),
        upd(r#"{"channel":"story:1","section":"a","base_version":1,"data":1}"#),
        upd(r#"{"channel":"story:1","base_version":1,"data":1,"op_id":"o"}"#),
        upd(r#"{"section":"a","base_version":1,"data":1,"op_id":"o"}"#),
        upd(r#"{"channel":"story:1","section":"a","base_version":-1,"data":1,"op_id":"o"}"#),
        upd(r#"{"channel":"story:1","section":"a","base_version":"1","data":1,"op_id":"o"}"#),
        upd(r#"{"channel":"story:1","section":"a","base_version":1.5,"data":1,"op_id":"o"}"#),
        upd(r#"{"channel":"story:1","section":"a","base_version":1,"data":1,"op_id":""}"#),
        upd(&format!(
            r#"{{"channel":"story:1","section":"a","base_version":1,"data":1,"op_id":"{long_op}"}}"#
        )),
        upd(r#"{"channel":"story:1","section":"a","base_version":1,"data":1,"op_id":7}"#),
        upd(r#"{"channel":"story:1","section":"","base_version":1,"data":1,"op_id":"o"}"#),
        upd(&format!(
            r#"{{"channel":"story:1","section":"{long}","base_version":1,"data":1,"op_id":"o"}}"#
        )),
    ];
    for cmd in &bad {
        assert_eq!(json_one(cmd), Err(ErrorCode::BadRequest), "{cmd}");
    }
}

#[test]
fn json_bounds_are_inclusive() {
    let s = "s".repeat(MAX_SECTION_ID);
    let op = "o".repeat(MAX_OP_ID);
    let cmd = format!(
        r#"{{"id":1,"update":{{"channel":"story:1","section":"{s}","base_version":4,"data":{{}},"op_id":"{op}"}}}}"#
    );
    assert_eq!(json_one(&cmd), Ok(update(&s, b"{}", &op)));
    // Lengths are bytes: 64 two-byte characters are 128 bytes.
    let wide = "é".repeat(64);
    let cmd = format!(r#"{{"id":1,"unlock":{{"channel":"c","section":"{wide}"}}}}"#);
    assert!(json_one(&cmd).is_ok());
    let wider = "é".repeat(65);
    let cmd = format!(r#"{{"id":1,"unlock":{{"channel":"c","section":"{wider}"}}}}"#);
    assert_eq!(json_one(&cmd), Err(ErrorCode::BadRequest));
}

#[test]
fn json_unknown_names_stay_unknown() {
    for name in [
        "collab",
        "collab_joins",
        "Lock",
        "updates",
        "story.user.join",
    ] {
        let cmd = format!(r#"{{"id":1,"{name}":{{"channel":"story:1"}}}}"#);
        assert_eq!(json_one(&cmd), Err(ErrorCode::UnknownMethod), "{name}");
    }
}

#[test]
fn binary_round_trips_every_collab_command() {
    let data = br#"{"text":"hi"}"#;
    let methods = vec![
        join(CollabRole::Editor, false, false, None),
        join(CollabRole::Viewer, true, false, None),
        join(CollabRole::Editor, true, true, at(9)),
        join(CollabRole::Editor, false, false, at(0)),
        Method::CollabLeave {
            channel: "story:1".into(),
        },
        Method::Lock {
            channel: "story:1".into(),
            section: "intro".into(),
            ttl: None,
        },
        Method::Lock {
            channel: "story:1".into(),
            section: "intro".into(),
            ttl: Some(0),
        },
        Method::Unlock {
            channel: "story:1".into(),
            section: "intro".into(),
        },
        update("intro", data, "op-1"),
        update("intro", b" [1,\n2] ", "op-2"),
    ];
    let cmds: Vec<(u32, Method<'_>)> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u32, m.clone()))
        .collect();
    let frame = binary::client_frame(&cmds);
    let mut got = Vec::new();
    binary::decode_commands(&frame, |c| got.push(c)).unwrap();
    assert_eq!(got.len(), methods.len());
    for (i, (c, m)) in got.iter().zip(&methods).enumerate() {
        assert_eq!(c.id, i as u32);
        assert_eq!(c.method.as_ref(), Ok(m));
    }
}

/// A `CollabJoinRequest` with the given role.
fn bin_join(role: Option<proto::CollabRole>, recover: bool, offset: Option<u64>) -> Vec<u8> {
    raw_frame(|fbb| {
        let channel = Some(fbb.create_string("story:1"));
        let epoch = offset.map(|_| fbb.create_string(EPOCH));
        let r = proto::CollabJoinRequest::create(
            fbb,
            &proto::CollabJoinRequestArgs {
                channel,
                role,
                queue: false,
                recover,
                epoch,
                offset,
            },
        );
        (proto::Method::CollabJoin, r.as_union_value())
    })
}

/// An `UpdateRequest` with each field optional.
fn bin_update(
    section: Option<&str>,
    base_version: Option<u64>,
    data: Option<&[u8]>,
    op_id: Option<&str>,
) -> Vec<u8> {
    raw_frame(|fbb| {
        let channel = Some(fbb.create_string("story:1"));
        let section = section.map(|s| fbb.create_string(s));
        let data = data.map(|d| fbb.create_vector(d));
        let op_id = op_id.map(|o| fbb.create_string(o));
        let r = proto::UpdateRequest::create(
            fbb,
            &proto::UpdateRequestArgs {
                channel,
                section,
                base_version,
                data,
                op_id,
            },
        );
        (proto::Method::Update, r.as_union_value())
    })
}

/// A `LockRequest` (`lock`) or `UnlockRequest` with optional fields.
fn bin_lock(unlock: bool, channel: Option<&str>, section: Option<&str>) -> Vec<u8> {
    raw_frame(|fbb| {
        let channel = channel.map(|c| fbb.create_string(c));
        let section = section.map(|s| fbb.create_string(s));
        if unlock {
            let r =
                proto::UnlockRequest::create(fbb, &proto::UnlockRequestArgs { channel, section });
            (proto::Method::Unlock, r.as_union_value())
        } else {
            let r = proto::LockRequest::create(
                fbb,
                &proto::LockRequestArgs {
                    channel,
                    section,
                    ttl: Some(5),
                },
            );
            (proto::Method::Lock, r.as_union_value())
        }
    })
}

#[test]
fn binary_rejects_bad_collab_params() {
    let ok = bin_join(Some(proto::CollabRole::Viewer), false, None);
    assert_eq!(
        bin_one(&ok),
        Ok(join(CollabRole::Viewer, false, false, None))
    );
    let long = "s".repeat(MAX_SECTION_ID + 1);
    let long_op = "o".repeat(MAX_OP_ID + 1);
    let data: &[u8] = b"{}";
    let bad = [
        // Role absent, Queued (server-only) or a value from nowhere.
        bin_join(None, false, None),
        bin_join(Some(proto::CollabRole::Queued), false, None),
        bin_join(Some(proto::CollabRole(9)), false, None),
        // recover without a position.
        bin_join(Some(proto::CollabRole::Editor), true, None),
        // collab_leave without a channel.
        raw_frame(|fbb| {
            let r = proto::CollabLeaveRequest::create(
                fbb,
                &proto::CollabLeaveRequestArgs { channel: None },
            );
            (proto::Method::CollabLeave, r.as_union_value())
        }),
        bin_lock(false, None, Some("a")),
        bin_lock(false, Some("story:1"), None),
        bin_lock(false, Some("story:1"), Some("")),
        bin_lock(false, Some("story:1"), Some(&long)),
        bin_lock(true, Some("story:1"), None),
        bin_lock(true, Some("story:1"), Some("")),
        bin_lock(true, None, Some("a")),
        bin_update(None, Some(1), Some(data), Some("o")),
        bin_update(Some(""), Some(1), Some(data), Some("o")),
        bin_update(Some(&long), Some(1), Some(data), Some("o")),
        bin_update(Some("a"), None, Some(data), Some("o")),
        bin_update(Some("a"), Some(1), None, Some("o")),
        bin_update(Some("a"), Some(1), Some(data), None),
        bin_update(Some("a"), Some(1), Some(data), Some("")),
        bin_update(Some("a"), Some(1), Some(data), Some(&long_op)),
    ];
    for (i, frame) in bad.iter().enumerate() {
        assert_eq!(bin_one(frame), Err(ErrorCode::BadRequest), "case {i}");
    }
    assert_eq!(
        bin_one(&bin_join(Some(proto::CollabRole::Editor), true, Some(3))),
        Ok(join(CollabRole::Editor, false, true, at(3)))
    );
}

#[test]
fn binary_update_data_must_be_utf8_json_text() {
    let not_json: [&[u8]; 9] = [
        b"",
        b"   ",
        b"{",
        b"{} x",
        b"{}{}",
        b"hello",
        &[0xff, 0xfe],
        // Valid JSON shape, but a string that is not UTF-8.
        b"\"\xff\"",
        b"{\"a\":\"\xc3\"}",
    ];
    for d in not_json {
        let frame = bin_update(Some("a"), Some(1), Some(d), Some("o"));
        assert_eq!(bin_one(&frame), Err(ErrorCode::BadRequest), "{d:?}");
    }
    for d in [&b" {\"a\" : [1, 2]}\n"[..], b"null", b"\"\xc3\xa9\"", b"0"] {
        let frame = bin_update(Some("a"), Some(4), Some(d), Some("o"));
        assert_eq!(bin_one(&frame), Ok(update("a", d, "o")), "{d:?}");
    }
    // Bounds are inclusive, in bytes.
    let s = "s".repeat(MAX_SECTION_ID);
    let op = "o".repeat(MAX_OP_ID);
    let frame = bin_update(Some(&s), Some(0), Some(b"1"), Some(&op));
    assert!(matches!(
        bin_one(&frame),
        Ok(Method::Update {
            base_version: 0,
            ..
        })
    ));
}

#[test]
fn binary_unknown_union_member_is_104() {
    // A member from a newer client: a table under a tag this build lacks.
    let frame = raw_frame(|fbb| {
        let r = proto::PingRequest::create(fbb, &proto::PingRequestArgs {});
        (proto::Method(200), r.as_union_value())
    });
    assert_eq!(bin_one(&frame), Err(ErrorCode::UnknownMethod));
}

#[test]
fn method_names() {
    let names: Vec<&str> = [
        join(CollabRole::Editor, false, false, None),
        Method::CollabLeave {
            channel: Cow::Borrowed("c"),
        },
        Method::Lock {
            channel: "c".into(),
            section: "s".into(),
            ttl: None,
        },
        Method::Unlock {
            channel: "c".into(),
            section: "s".into(),
        },
        update("s", b"1", "o"),
    ]
    .iter()
    .map(Method::name)
    .collect();
    assert_eq!(
        names,
        ["collab_join", "collab_leave", "lock", "unlock", "update"]
    );
    // Each name decodes back to its method in the JSON form.
    for (name, params) in [
        ("collab_join", r#"{"channel":"c","role":"viewer"}"#),
        ("collab_leave", r#"{"channel":"c"}"#),
        ("lock", r#"{"channel":"c","section":"s"}"#),
        ("unlock", r#"{"channel":"c","section":"s"}"#),
        (
            "update",
            r#"{"channel":"c","section":"s","base_version":0,"data":1,"op_id":"o"}"#,
        ),
    ] {
        let cmd = format!(r#"{{"id":1,"{name}":{params}}}"#);
        assert_eq!(json_one(&cmd).map(|m| m.name()), Ok(name));
    }
}

#[test]
fn new_error_codes() {
    let want = [
        (ErrorCode::EditorsFull, 117, "editors full", true),
        (ErrorCode::SectionLocked, 118, "section locked", false),
        (ErrorCode::VersionConflict, 119, "version conflict", false),
        (ErrorCode::NotEditor, 120, "not an editor", false),
        (ErrorCode::StoryLimit, 121, "story limit", false),
        (
            ErrorCode::NotCollaborative,
            122,
            "not a collaborative channel",
            false,
        ),
    ];
    for (c, code, message, temporary) in want {
        assert_eq!(
            (c.code(), c.message(), c.temporary()),
            (code, message, temporary)
        );
        assert!(ErrorCode::ALL.contains(&c));
    }
    let locked = ErrorDetail::SectionLocked {
        holder: MemberId {
            user: "u",
            client: "c",
        },
    };
    assert_eq!(locked.code(), ErrorCode::SectionLocked);
    let conflict = ErrorDetail::VersionConflict {
        version: 1,
        data: b"1",
    };
    assert_eq!(conflict.code(), ErrorCode::VersionConflict);
}
