//! Encoding story collaboration replies, errors, pushes and events in both
//! forms, each read back independently (serde_json; the generated
//! FlatBuffers accessors).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use super::*;
use crate::engine::wire::{ReplyBody, fixtures, proto};

/// A section as [`MapStory`] keeps it: version, data, lock holder (user,
/// client).
type MapSection = (u64, Vec<u8>, Option<(String, String)>);

/// A story kept the way an engine might keep it (a map by section id),
/// encoded through [`StorySnapshot`] without copying a section.
struct MapStory {
    editors: Vec<ClientInfo>,
    sections: BTreeMap<String, MapSection>,
}

impl StorySnapshot for MapStory {
    fn each_editor(&self, f: &mut dyn FnMut(&ClientInfo)) {
        self.editors.iter().for_each(f);
    }

    fn each_section<'s>(&'s self, f: &mut dyn FnMut(SectionView<'s>)) {
        for (id, (version, data, holder)) in &self.sections {
            f(SectionView {
                id,
                version: *version,
                data,
                holder: holder
                    .as_ref()
                    .map(|(user, client)| MemberId { user, client }),
            });
        }
    }
}

/// Two editors (one with info) and three sections, not in id order, one
/// locked, one with an id that needs escaping.
fn small_story() -> StorySnapshotBuf {
    StorySnapshotBuf {
        editors: vec![
            fixtures::client("b.2", "bob", Some(r#"{"name":"Bob"}"#)),
            fixtures::client("a.1", "ann", None),
        ],
        sections: vec![
            SectionBuf {
                id: "title".into(),
                version: 3,
                data: Bytes::from_static(br#"{"text":"Hello"}"#),
                holder: Some(MemberBuf {
                    user: "bob".into(),
                    client: "b.2".into(),
                }),
            },
            SectionBuf {
                id: "body \"1\"\n".into(),
                version: 0,
                data: Bytes::from_static(b"null"),
                holder: None,
            },
            SectionBuf {
                id: "photo".into(),
                version: 12,
                // From a binary client: JSON text with a line feed.
                data: Bytes::from_static(b"{\"src\":\n\"a.jpg\"}"),
                holder: None,
            },
        ],
    }
}

fn join_reply(story: &dyn StorySnapshot, role: MemberRole, position: Option<u32>) -> ReplyBody<'_> {
    ReplyBody::CollabJoin(CollabJoinReply {
        role,
        position,
        viewers: 1000,
        queued: position.unwrap_or(0) + 3,
        epoch: 0xab,
        offset: 41,
        story,
        recovering: false,
        recovered: false,
        publications: &[],
    })
}

/// A `collab_join` reply; `recovering`: the join asked to recover,
/// `recovered` and `pubs` (the story events missed) as given.
fn join_recovery<'a>(
    story: &'a dyn StorySnapshot,
    recovering: bool,
    recovered: bool,
    pubs: &'a [Publication],
) -> ReplyBody<'a> {
    ReplyBody::CollabJoin(CollabJoinReply {
        role: MemberRole::Editor,
        position: None,
        viewers: 2,
        queued: 0,
        epoch: 0xab,
        offset: 9,
        story,
        recovering,
        recovered,
        publications: pubs,
    })
}

/// One editor, one section: short enough for a golden string.
fn tiny_story() -> StorySnapshotBuf {
    StorySnapshotBuf {
        editors: vec![fixtures::client("a.1", "ann", None)],
        sections: vec![SectionBuf {
            id: "title".into(),
            version: 3,
            data: Bytes::from_static(br#"{"t":1}"#),
            holder: None,
        }],
    }
}

/// One JSON reply (id 9), parsed; the text must be one line.
fn reply_json(body: ReplyBody<'_>) -> Value {
    let mut out = Vec::new();
    json::write_reply(&mut out, 9, body);
    assert!(!out.contains(&b'\n'), "a reply is one line");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], 9);
    v
}

/// One binary frame holding the reply (id 9), for `f` to read back.
fn with_reply_bin<T>(body: ReplyBody<'_>, f: impl FnOnce(proto::Reply<'_>) -> T) -> T {
    let mut w = FrameWriter::new();
    w.begin(WireFormat::Binary);
    w.reply(9, body);
    let bytes = w.finish().unwrap();
    // Skip the WebSocket frame header (2, 4 or 10 bytes).
    let payload = ws_payload(&bytes);
    let sf = flatbuffers::root::<proto::ServerFrame>(payload).unwrap();
    let r = sf.messages().unwrap().get(0).reply().unwrap();
    assert_eq!(r.id(), 9);
    f(r)
}

/// The payload of an unmasked server frame.
fn ws_payload(frame: &[u8]) -> &[u8] {
    match frame[1] & 0x7f {
        126 => &frame[4..],
        127 => &frame[10..],
        _ => &frame[2..],
    }
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

#[test]
fn collab_join_reply_json() {
    let story = small_story();
    let v = reply_json(join_reply(&story, MemberRole::Editor, None));
    let j = &v["collab_join"];
    assert_eq!(j["role"], "editor");
    assert!(j.get("position").is_none());
    assert_eq!(
        j["editors"],
        json!([
            {"user":"bob","client":"b.2","info":{"name":"Bob"}},
            {"user":"ann","client":"a.1"},
        ])
    );
    assert_eq!(j["viewers"], 1000);
    assert_eq!(j["queued"], 3);
    assert_eq!(j["offset"], 41);
    assert_eq!(j["epoch"], "00000000000000ab");
    assert!(j.get("recovered").is_none() && j.get("publications").is_none());
    assert_eq!(
        j["sections"],
        json!({
            "title": {"version":3,"data":{"text":"Hello"},"holder":{"user":"bob","client":"b.2"}},
            "body \"1\"\n": {"version":0,"data":null},
            "photo": {"version":12,"data":{"src":"a.jpg"}},
        })
    );
    let v = reply_json(join_reply(&story, MemberRole::Queued, Some(2)));
    assert_eq!(v["collab_join"]["role"], "queued");
    assert_eq!(v["collab_join"]["position"], 2);
    assert_eq!(v["collab_join"]["queued"], 5);
    let empty = StorySnapshotBuf::default();
    let v = reply_json(join_reply(&empty, MemberRole::Viewer, None));
    assert_eq!(v["collab_join"]["role"], "viewer");
    assert_eq!(v["collab_join"]["editors"], json!([]));
    assert_eq!(v["collab_join"]["sections"], json!({}));
}

#[test]
fn collab_join_reply_binary() {
    let story = small_story();
    with_reply_bin(join_reply(&story, MemberRole::Editor, None), |r| {
        assert!(r.error().is_none());
        let j = r.result_as_collab_join().unwrap();
        assert_eq!(j.role(), proto::CollabRole::Editor);
        assert_eq!(j.position(), None);
        assert_eq!((j.viewers(), j.queued(), j.offset()), (1000, 3, 41));
        assert_eq!(j.epoch(), Some("00000000000000ab"));
        assert!(!j.recovered() && j.publications().is_none());
        let editors = j.editors().unwrap();
        assert_eq!(editors.len(), 2);
        assert_eq!(editors.get(0).client(), Some("b.2"));
        assert_eq!(editors.get(0).user(), Some("bob"));
        assert_eq!(
            editors.get(0).info().map(|i| i.bytes()),
            Some(&br#"{"name":"Bob"}"#[..])
        );
        assert!(editors.get(1).info().is_none());
        let sections = j.sections().unwrap();
        let ids: Vec<_> = sections.iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["body \"1\"\n", "photo", "title"], "sorted by id");
        let title = sections.lookup_by_key("title", |s, k| s.key_compare_with_value(k));
        let title = title.unwrap();
        assert_eq!(title.version(), 3);
        assert_eq!(title.data().unwrap().bytes(), br#"{"text":"Hello"}"#);
        let h = title.holder().unwrap();
        assert_eq!((h.user(), h.client()), (Some("bob"), Some("b.2")));
        let photo = sections
            .lookup_by_key("photo", |s, k| s.key_compare_with_value(k))
            .unwrap();
        assert!(photo.holder().is_none());
        // The binary form carries the bytes unchanged.
        assert_eq!(photo.data().unwrap().bytes(), b"{\"src\":\n\"a.jpg\"}");
    });
    with_reply_bin(join_reply(&story, MemberRole::Queued, Some(4)), |r| {
        let j = r.result_as_collab_join().unwrap();
        assert_eq!(j.role(), proto::CollabRole::Queued);
        assert_eq!((j.position(), j.queued()), (Some(4), 7));
    });
}

#[test]
fn collab_join_recovery_json() {
    let story = small_story();
    let pubs = fixtures::pubs();
    let want = json!([{"offset":7,"data":{"text":"hi"}},{"offset":8,"b64data":"/wA="}]);
    for recovered in [true, false] {
        let v = reply_json(join_recovery(&story, true, recovered, &pubs));
        let j = &v["collab_join"];
        assert_eq!(j["recovered"], recovered);
        assert_eq!(j["publications"], want);
        // The snapshot and position are there as without recovery.
        assert_eq!(
            (j["epoch"].as_str(), j["offset"].as_u64()),
            (Some("00000000000000ab"), Some(9))
        );
        assert_eq!(j["sections"].as_object().unwrap().len(), 3);
        assert_eq!(j["editors"].as_array().unwrap().len(), 2);
    }
    // Recovering with nothing missed: the keys are there, the list empty.
    let v = reply_json(join_recovery(&story, true, true, &[]));
    assert_eq!(v["collab_join"]["recovered"], true);
    assert_eq!(v["collab_join"]["publications"], json!([]));
    // Not recovering: neither key, whatever the other fields hold.
    let v = reply_json(join_recovery(&story, false, true, &pubs));
    let j = v["collab_join"].as_object().unwrap();
    assert!(!j.contains_key("recovered") && !j.contains_key("publications"));
    assert_eq!(j["offset"], 9);
}

#[test]
fn collab_join_recovery_json_golden() {
    let story = tiny_story();
    let pubs = fixtures::pubs();
    let mut out = Vec::new();
    json::write_reply(&mut out, 9, join_recovery(&story, true, true, &pubs));
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        concat!(
            r#"{"id":9,"collab_join":{"role":"editor","editors":[{"user":"ann","client":"a.1"}],"#,
            r#""viewers":2,"queued":0,"sections":{"title":{"version":3,"data":{"t":1}}},"#,
            r#""epoch":"00000000000000ab","offset":9,"recovered":true,"#,
            r#""publications":[{"offset":7,"data":{"text":"hi"}},{"offset":8,"b64data":"/wA="}]}}"#,
        )
    );
    out.clear();
    json::write_reply(&mut out, 9, join_recovery(&story, false, true, &pubs));
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        concat!(
            r#"{"id":9,"collab_join":{"role":"editor","editors":[{"user":"ann","client":"a.1"}],"#,
            r#""viewers":2,"queued":0,"sections":{"title":{"version":3,"data":{"t":1}}},"#,
            r#""epoch":"00000000000000ab","offset":9}}"#,
        )
    );
}

#[test]
fn collab_join_recovery_binary() {
    let story = small_story();
    let pubs = fixtures::pubs();
    for recovered in [true, false] {
        with_reply_bin(join_recovery(&story, true, recovered, &pubs), |r| {
            let j = r.result_as_collab_join().unwrap();
            assert_eq!(j.recovered(), recovered);
            let p = j.publications().unwrap();
            assert_eq!(p.len(), 2);
            assert_eq!(p.get(0).offset(), 7);
            assert_eq!(p.get(0).data().unwrap().bytes(), br#"{"text":"hi"}"#);
            assert_eq!(p.get(1).offset(), 8);
            assert_eq!(p.get(1).data().unwrap().bytes(), &[0xff, 0x00]);
            assert_eq!((j.epoch(), j.offset()), (Some("00000000000000ab"), 9));
            assert_eq!(j.sections().unwrap().len(), 3);
            assert_eq!(j.editors().unwrap().len(), 2);
        });
    }
    // Recovering with nothing missed: the vector is there, empty.
    with_reply_bin(join_recovery(&story, true, true, &[]), |r| {
        let j = r.result_as_collab_join().unwrap();
        assert!(j.recovered());
        assert_eq!(j.publications().unwrap().len(), 0);
    });
    // Not recovering: no vector, `recovered` false, whatever was passed.
    with_reply_bin(join_recovery(&story, false, true, &pubs), |r| {
        let j = r.result_as_collab_join().unwrap();
        assert!(!j.recovered());
        assert!(j.publications().is_none());
        assert_eq!(j.offset(), 9);
    });
}

/// 200 sections of ~300 bytes each, with every tenth one locked.
fn big_story() -> MapStory {
    let editors = (0..10)
        .map(|i| fixtures::client(&format!("c.{i}"), &format!("user-{i}"), Some("{\"n\":1}")))
        .collect();
    let sections = (0..200)
        .map(|i| {
            let data = format!(r#"{{"text":"{}","n":{i}}}"#, "lorem ipsum ".repeat(24));
            let holder = (i % 10 == 0).then(|| (format!("user-{}", i % 7), format!("c.{}", i % 7)));
            (
                format!("section-{i:03}"),
                (i as u64 * 3, data.into_bytes(), holder),
            )
        })
        .collect();
    MapStory { editors, sections }
}

#[test]
fn collab_join_200_sections_round_trip_and_time() {
    let story = big_story();
    let body = join_reply(&story, MemberRole::Editor, None);
    let v = reply_json(body);
    let sections = v["collab_join"]["sections"].as_object().unwrap();
    assert_eq!(sections.len(), 200);
    for (id, (version, data, holder)) in &story.sections {
        let s = &sections[id.as_str()];
        assert_eq!(s["version"], *version);
        assert_eq!(s["data"], json_of(data));
        match holder {
            Some((u, c)) => assert_eq!(s["holder"], json!({"user": u, "client": c})),
            None => assert!(s.get("holder").is_none()),
        }
    }
    assert_eq!(v["collab_join"]["editors"].as_array().unwrap().len(), 10);
    with_reply_bin(body, |r| {
        let j = r.result_as_collab_join().unwrap();
        let got = j.sections().unwrap();
        assert_eq!(got.len(), 200);
        for (s, (id, (version, data, holder))) in got.iter().zip(&story.sections) {
            assert_eq!(s.id(), id);
            assert_eq!(s.version(), *version);
            assert_eq!(s.data().unwrap().bytes(), &data[..]);
            let h = s.holder().map(|h| (h.user().unwrap(), h.client().unwrap()));
            assert_eq!(h, holder.as_ref().map(|(u, c)| (u.as_str(), c.as_str())));
        }
        assert_eq!(j.editors().unwrap().len(), 10);
    });

    // Encoding (~62 KB) must take well under a millisecond: the best of
    // several runs, so a busy machine does not fail the test (debug builds
    // get more room).
    let bound = if cfg!(debug_assertions) {
        20_000
    } else {
        1_000
    };
    let mut w = FrameWriter::new();
    for format in [WireFormat::Json, WireFormat::Binary] {
        let best = (0..20)
            .map(|_| {
                let t = Instant::now();
                w.begin(format);
                w.reply(1, body);
                let frame = w.finish().unwrap();
                assert!(frame.len() > 60_000);
                t.elapsed().as_micros()
            })
            .min()
            .unwrap();
        assert!(best < bound, "{format:?}: {best} µs");
    }
}

#[test]
fn small_replies_both_forms() {
    let holder = MemberId {
        user: "ann",
        client: "a.1",
    };
    let lock = ReplyBody::Lock {
        section: "title",
        holder,
        expires: 1_700_000_000_123,
    };
    assert_eq!(
        reply_json(lock)["lock"],
        json!({"section":"title","holder":{"user":"ann","client":"a.1"},"expires":1_700_000_000_123u64})
    );
    with_reply_bin(lock, |r| {
        let l = r.result_as_lock().unwrap();
        assert_eq!(l.section(), Some("title"));
        let h = l.holder().unwrap();
        assert_eq!((h.user(), h.client()), (Some("ann"), Some("a.1")));
        assert_eq!(l.expires(), 1_700_000_000_123);
    });
    assert_eq!(
        reply_json(ReplyBody::CollabLeave)["collab_leave"],
        json!({})
    );
    assert_eq!(reply_json(ReplyBody::Unlock)["unlock"], json!({}));
    with_reply_bin(ReplyBody::CollabLeave, |r| {
        assert!(r.result_as_collab_leave().is_some())
    });
    with_reply_bin(ReplyBody::Unlock, |r| {
        assert!(r.result_as_unlock().is_some())
    });
    let fresh = ReplyBody::Update {
        version: 5,
        duplicate: false,
    };
    assert_eq!(reply_json(fresh)["update"], json!({"version":5}));
    let dup = ReplyBody::Update {
        version: 5,
        duplicate: true,
    };
    assert_eq!(
        reply_json(dup)["update"],
        json!({"version":5,"duplicate":true})
    );
    with_reply_bin(fresh, |r| {
        let u = r.result_as_update().unwrap();
        assert_eq!((u.version(), u.duplicate()), (5, false));
    });
    with_reply_bin(dup, |r| assert!(r.result_as_update().unwrap().duplicate()));
}

#[test]
fn errors_with_detail_both_forms() {
    let locked = ReplyBody::ErrorDetail(ErrorDetail::SectionLocked {
        holder: MemberId {
            user: "bo\"b",
            client: "b.2",
        },
    });
    assert_eq!(
        reply_json(locked)["error"],
        json!({"code":118,"message":"section locked","temporary":false,
               "holder":{"user":"bo\"b","client":"b.2"}})
    );
    with_reply_bin(locked, |r| {
        assert!(r.result().is_none());
        let e = r.error().unwrap();
        assert_eq!((e.code(), e.message()), (118, Some("section locked")));
        let h = e.holder().unwrap();
        assert_eq!((h.user(), h.client()), (Some("bo\"b"), Some("b.2")));
        assert!(e.version().is_none() && e.data().is_none());
    });
    let conflict = ReplyBody::ErrorDetail(ErrorDetail::VersionConflict {
        version: 8,
        data: b"{\"t\":\n[1]}",
    });
    assert_eq!(
        reply_json(conflict)["error"],
        json!({"code":119,"message":"version conflict","temporary":false,
               "version":8,"data":{"t":[1]}})
    );
    with_reply_bin(conflict, |r| {
        let e = r.error().unwrap();
        assert_eq!(e.code(), 119);
        assert_eq!(e.version(), Some(8));
        assert_eq!(e.data().unwrap().bytes(), b"{\"t\":\n[1]}");
        assert!(e.holder().is_none());
    });
    // Plain errors keep their three fields, in both forms.
    let full = ReplyBody::Error(ErrorCode::EditorsFull);
    assert_eq!(
        reply_json(full)["error"],
        json!({"code":117,"message":"editors full","temporary":true})
    );
    with_reply_bin(full, |r| {
        let e = r.error().unwrap();
        assert_eq!((e.code(), e.temporary()), (117, true));
        assert!(e.holder().is_none() && e.version().is_none() && e.data().is_none());
    });
}

#[test]
fn pushes_both_forms() {
    let ann = fixtures::client("a.1", "ann", Some("{\"name\":\n\"Ann\"}"));
    let mut w = FrameWriter::new();
    w.begin(WireFormat::Json);
    w.promoted("story:1");
    w.conflict("story:1", "title", 6, br#"{"text":"mine"}"#, &ann);
    w.queue_position("story:1", 3);
    let frame = w.finish().unwrap();
    let text = std::str::from_utf8(ws_payload(&frame)).unwrap();
    let lines: Vec<Value> = text
        .split('\n')
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"push":{"channel":"story:1","promoted":{"role":"editor"}}}),
            json!({"push":{"channel":"story:1","conflict":{
                "section":"title","version":6,"overwritten":{"text":"mine"},
                "by":{"user":"ann","client":"a.1","info":{"name":"Ann"}}}}}),
            json!({"push":{"channel":"story:1","queue":{"position":3}}}),
        ]
    );

    w.begin(WireFormat::Binary);
    w.promoted("story:1");
    w.conflict("story:1", "title", 6, br#"{"text":"mine"}"#, &ann);
    w.queue_position("story:1", 3);
    let frame = w.finish().unwrap();
    let sf = flatbuffers::root::<proto::ServerFrame>(ws_payload(&frame)).unwrap();
    let msgs = sf.messages().unwrap();
    assert_eq!(msgs.len(), 3);
    let q = msgs.get(2).push_().unwrap();
    assert_eq!(q.channel(), Some("story:1"));
    assert_eq!(q.body_as_queue().unwrap().position(), 3);
    let p = msgs.get(0).push_().unwrap();
    assert_eq!(p.channel(), Some("story:1"));
    assert_eq!(
        p.body_as_promoted().unwrap().role(),
        proto::CollabRole::Editor
    );
    let p = msgs.get(1).push_().unwrap();
    let c = p.body_as_conflict().unwrap();
    assert_eq!((c.section(), c.version()), (Some("title"), 6));
    assert_eq!(c.overwritten().unwrap().bytes(), br#"{"text":"mine"}"#);
    let by = c.by().unwrap();
    assert_eq!((by.user(), by.client()), (Some("ann"), Some("a.1")));
    assert_eq!(by.info().unwrap().bytes(), b"{\"name\":\n\"Ann\"}");
}

#[test]
fn story_events() {
    let ann = fixtures::client("a.1", "ann", Some(r#"{"name":"Ann"}"#));
    let anon = fixtures::client("x\u{1}\"y", "", None);
    let cases: Vec<(Bytes, Value)> = vec![
        (
            update_event("title", 4, br#"{"text":"Hi"}"#, &ann),
            json!({"update":{"section":"title","version":4,"data":{"text":"Hi"},
                   "by":{"user":"ann","client":"a.1","info":{"name":"Ann"}}}}),
        ),
        (
            update_event("s\n\"é", 1, b" [1,\n 2] ", &anon),
            json!({"update":{"section":"s\n\"é","version":1,"data":[1,2],
                   "by":{"user":"","client":"x\u{1}\"y"}}}),
        ),
        (
            lock_event("title", Some((&ann).into()), Some(1_700_000_000_000)),
            json!({"lock":{"section":"title","holder":{"user":"ann","client":"a.1"},
                   "expires":1_700_000_000_000u64}}),
        ),
        (
            lock_event("title", None, None),
            json!({"lock":{"section":"title","holder":null}}),
        ),
        (
            user_join_event(&ann, MemberRole::Editor),
            json!({"story.user.join":{"user":"ann","client":"a.1","info":{"name":"Ann"},
                   "role":"editor"}}),
        ),
        (
            user_join_event(&anon, MemberRole::Queued),
            json!({"story.user.join":{"user":"","client":"x\u{1}\"y","role":"queued"}}),
        ),
        (
            user_join_event(&ann, MemberRole::Viewer),
            json!({"story.user.join":{"user":"ann","client":"a.1","info":{"name":"Ann"},
                   "role":"viewer"}}),
        ),
        (
            user_leave_event((&ann).into()),
            json!({"story.user.leave":{"user":"ann","client":"a.1"}}),
        ),
    ];
    for (bytes, want) in cases {
        assert!(!bytes.contains(&b'\n'), "{bytes:?}: one line");
        assert_eq!(json_of(&bytes), want);
    }
}

#[test]
fn story_event_as_a_publication_in_both_forms() {
    use crate::engine::wire::publication::{PubData, PubEncoder, Publication};
    let ann = fixtures::client("a.1", "ann", None);
    let data = update_event("title", 2, b"{\"t\":\n1}", &ann);
    let p = Publication {
        offset: 17,
        data: PubData {
            bytes: data.clone(),
            is_json: true,
        },
    };
    let mut enc = PubEncoder::default();
    let v = json_of(enc.payload(WireFormat::Json, "story:1", &p));
    assert_eq!(v["push"]["pub"]["offset"], 17);
    assert_eq!(v["push"]["pub"]["data"]["update"]["data"], json!({"t":1}));
    let bin = enc.payload(WireFormat::Binary, "story:1", &p);
    let sf = flatbuffers::root::<proto::ServerFrame>(bin).unwrap();
    let pb = sf.messages().unwrap().get(0).push_().unwrap();
    let publication = pb.body_as_pub().unwrap();
    assert_eq!(publication.data().unwrap().bytes(), &data[..]);
}

#[test]
fn raw_json_line_feeds_never_split_a_frame() {
    // Info from a binary `connect` and data from a binary `publish` may
    // hold line feeds; JSON frames separate objects with them.
    let bob = fixtures::client("b.2", "bob", Some("{\n\"name\": \"Bob\"\n}"));
    let mut w = FrameWriter::new();
    w.begin(WireFormat::Json);
    w.join("room", &bob);
    let frame = w.finish().unwrap();
    let text = ws_payload(&frame);
    assert!(!text.contains(&b'\n'));
    assert_eq!(
        json_of(text)["push"]["join"]["info"]["info"],
        json!({"name":"Bob"})
    );
    let mut out = Vec::new();
    json::write_pub(&mut out, "room", 3, b"[1,\n2]", true);
    assert_eq!(json_of(&out)["push"]["pub"]["data"], json!([1, 2]));
    assert!(!out.contains(&b'\n'));
}

#[test]
fn snapshot_equality_and_debug() {
    let a = small_story();
    let b = small_story();
    let x = join_reply(&a, MemberRole::Editor, None);
    let y = join_reply(&b, MemberRole::Editor, None);
    assert_eq!(x, y, "same content, different storage");
    let mut c = small_story();
    c.sections[0].version += 1;
    assert_ne!(x, join_reply(&c, MemberRole::Editor, None));
    let mut d = small_story();
    d.editors.pop();
    assert_ne!(x, join_reply(&d, MemberRole::Editor, None));
    let dbg = format!("{x:?}");
    assert!(dbg.contains("title") && dbg.contains("b.2"), "{dbg}");
    assert_eq!(MemberRole::from(CollabRole::Viewer), MemberRole::Viewer);
    assert_eq!(MemberRole::from(CollabRole::Editor).as_str(), "editor");
}
