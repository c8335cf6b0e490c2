//! The JSON form of story collaboration: its commands' parameters, its
//! replies and errors, its pushes, and the story events' publication data.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    push_bool, push_client_info, push_head, push_json_str, push_position, push_publications,
    push_raw_json, push_u64,
};
use crate::engine::codes::ErrorCode;
use crate::engine::wire::collab::{
    self as c, CollabJoinReply, CollabRole, ErrorDetail, MemberId, MemberRole, StorySnapshot,
};
use crate::engine::wire::{ClientInfo, Method};

/// `role` as the JSON form spells it.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleJson {
    Editor,
    Viewer,
}

#[derive(Deserialize)]
struct CollabJoinJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    role: RoleJson,
    #[serde(default)]
    queue: bool,
    #[serde(default)]
    recover: bool,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
}

#[derive(Deserialize)]
struct LockJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    section: Cow<'a, str>,
    #[serde(default)]
    ttl: Option<u32>,
}

#[derive(Deserialize)]
struct UnlockJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    section: Cow<'a, str>,
}

#[derive(Deserialize)]
struct UpdateJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    section: Cow<'a, str>,
    base_version: u64,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    op_id: Cow<'a, str>,
}

fn parse<'a, T: Deserialize<'a>>(p: &'a str) -> Result<T, ErrorCode> {
    serde_json::from_str(p).map_err(|_| ErrorCode::BadRequest)
}

/// The story collaboration command `name` with its parameters `p` (JSON
/// text); `None` when `name` is not one of them.
pub(super) fn method<'a>(name: &str, p: &'a str) -> Option<Result<Method<'a>, ErrorCode>> {
    Some(match name {
        "collab_join" => parse::<CollabJoinJson<'a>>(p).and_then(|j| {
            let role = match j.role {
                RoleJson::Editor => CollabRole::Editor,
                RoleJson::Viewer => CollabRole::Viewer,
            };
            let epoch = j.epoch.as_deref();
            c::collab_join(j.channel, role, j.queue, j.recover, epoch, j.offset)
        }),
        "collab_leave" => {
            parse::<super::ChannelJson<'a>>(p).map(|j| Method::CollabLeave { channel: j.channel })
        }
        "lock" => parse::<LockJson<'a>>(p).and_then(|j| c::lock(j.channel, j.section, j.ttl)),
        "unlock" => parse::<UnlockJson<'a>>(p).and_then(|j| c::unlock(j.channel, j.section)),
        "update" => parse::<UpdateJson<'a>>(p).and_then(|j| {
            let data = j.data.get().as_bytes();
            c::update(j.channel, j.section, j.base_version, data, j.op_id)
        }),
        _ => return None,
    })
}

/// `{"user":…,"client":…}`.
fn push_member(out: &mut Vec<u8>, m: MemberId<'_>) {
    out.extend_from_slice(b"{\"user\":");
    push_json_str(out, m.user);
    out.extend_from_slice(b",\"client\":");
    push_json_str(out, m.client);
    out.push(b'}');
}

/// `"<role>"`.
fn push_role(out: &mut Vec<u8>, role: MemberRole) {
    out.push(b'"');
    out.extend_from_slice(role.as_str().as_bytes());
    out.push(b'"');
}

/// `,"collab_join":{…}` (a reply's body); `"recovered"` and
/// `"publications"` (as in the `subscribe` reply) only when the join asked
/// to recover.
pub(super) fn write_join_reply(out: &mut Vec<u8>, r: &CollabJoinReply<'_>) {
    out.extend_from_slice(b",\"collab_join\":{\"role\":");
    push_role(out, r.role);
    if let Some(p) = r.position {
        out.extend_from_slice(b",\"position\":");
        push_u64(out, p.into());
    }
    out.extend_from_slice(b",\"editors\":[");
    let mut first = true;
    r.story.each_editor(&mut |e| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        push_client_info(out, e);
    });
    out.extend_from_slice(b"],\"viewers\":");
    push_u64(out, r.viewers.into());
    out.extend_from_slice(b",\"queued\":");
    push_u64(out, r.queued.into());
    out.extend_from_slice(b",\"sections\":{");
    push_sections(out, r.story);
    out.extend_from_slice(b"},");
    push_position(out, r.epoch, r.offset);
    if r.recovering {
        out.extend_from_slice(b",\"recovered\":");
        push_bool(out, r.recovered);
        out.extend_from_slice(b",\"publications\":");
        push_publications(out, r.publications);
    }
    out.push(b'}');
}

/// `"<id>":{"version":N,"data":…,"holder"?:{…}}, …`.
fn push_sections(out: &mut Vec<u8>, story: &dyn StorySnapshot) {
    let mut first = true;
    story.each_section(&mut |s| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        push_json_str(out, s.id);
        out.extend_from_slice(b":{\"version\":");
        push_u64(out, s.version);
        out.extend_from_slice(b",\"data\":");
        push_raw_json(out, s.data);
        if let Some(h) = s.holder {
            out.extend_from_slice(b",\"holder\":");
            push_member(out, h);
        }
        out.push(b'}');
    });
}

/// `,"lock":{"section":…,"holder":{…},"expires":N}` (a reply's body).
pub(super) fn write_lock_reply(
    out: &mut Vec<u8>,
    section: &str,
    holder: MemberId<'_>,
    expires: u64,
) {
    out.extend_from_slice(b",\"lock\":{\"section\":");
    push_json_str(out, section);
    out.extend_from_slice(b",\"holder\":");
    push_member(out, holder);
    out.extend_from_slice(b",\"expires\":");
    push_u64(out, expires);
    out.push(b'}');
}

/// `,"update":{"version":N,"duplicate"?:true}` (a reply's body).
pub(super) fn write_update_reply(out: &mut Vec<u8>, version: u64, duplicate: bool) {
    out.extend_from_slice(b",\"update\":{\"version\":");
    push_u64(out, version);
    if duplicate {
        out.extend_from_slice(b",\"duplicate\":true");
    }
    out.push(b'}');
}

/// The extra fields of an error, after `"temporary":…`.
pub(super) fn write_error_detail(out: &mut Vec<u8>, d: &ErrorDetail<'_>) {
    match *d {
        ErrorDetail::SectionLocked { holder } => {
            out.extend_from_slice(b",\"holder\":");
            push_member(out, holder);
        }
        ErrorDetail::VersionConflict { version, data } => {
            out.extend_from_slice(b",\"version\":");
            push_u64(out, version);
            out.extend_from_slice(b",\"data\":");
            push_raw_json(out, data);
        }
    }
}

/// A `promoted` push object.
pub(in crate::engine::wire) fn write_promoted(out: &mut Vec<u8>, channel: &str) {
    push_head(out, channel);
    out.extend_from_slice(b",\"promoted\":{\"role\":");
    push_role(out, MemberRole::Editor);
    out.extend_from_slice(b"}}}");
}

/// A `queue` push object.
pub(in crate::engine::wire) fn write_queue(out: &mut Vec<u8>, channel: &str, position: u32) {
    push_head(out, channel);
    out.extend_from_slice(b",\"queue\":{\"position\":");
    push_u64(out, position.into());
    out.extend_from_slice(b"}}}");
}

/// A `conflict` push object.
pub(in crate::engine::wire) fn write_conflict(
    out: &mut Vec<u8>,
    channel: &str,
    section: &str,
    version: u64,
    overwritten: &[u8],
    by: &ClientInfo,
) {
    push_head(out, channel);
    out.extend_from_slice(b",\"conflict\":{\"section\":");
    push_json_str(out, section);
    out.extend_from_slice(b",\"version\":");
    push_u64(out, version);
    out.extend_from_slice(b",\"overwritten\":");
    push_raw_json(out, overwritten);
    out.extend_from_slice(b",\"by\":");
    push_client_info(out, by);
    out.extend_from_slice(b"}}}");
}

/// `{"<event>":{` — the caller adds the fields and `}}`.
fn event_head(out: &mut Vec<u8>, event: &str) {
    out.push(b'{');
    push_json_str(out, event);
    out.extend_from_slice(b":{");
}

/// The `update` story event.
pub(in crate::engine::wire) fn write_update_event(
    out: &mut Vec<u8>,
    section: &str,
    version: u64,
    data: &[u8],
    by: &ClientInfo,
) {
    event_head(out, c::EVENT_UPDATE);
    out.extend_from_slice(b"\"section\":");
    push_json_str(out, section);
    out.extend_from_slice(b",\"version\":");
    push_u64(out, version);
    out.extend_from_slice(b",\"data\":");
    push_raw_json(out, data);
    out.extend_from_slice(b",\"by\":");
    push_client_info(out, by);
    out.extend_from_slice(b"}}");
}

/// The `lock` story event.
pub(in crate::engine::wire) fn write_lock_event(
    out: &mut Vec<u8>,
    section: &str,
    holder: Option<MemberId<'_>>,
    expires: Option<u64>,
) {
    event_head(out, c::EVENT_LOCK);
    out.extend_from_slice(b"\"section\":");
    push_json_str(out, section);
    out.extend_from_slice(b",\"holder\":");
    match holder {
        Some(h) => push_member(out, h),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(e) = expires {
        out.extend_from_slice(b",\"expires\":");
        push_u64(out, e);
    }
    out.extend_from_slice(b"}}");
}

/// The `story.user.join` story event: `who`'s client info fields and its
/// role.
pub(in crate::engine::wire) fn write_user_join_event(
    out: &mut Vec<u8>,
    who: &ClientInfo,
    role: MemberRole,
) {
    event_head(out, c::EVENT_USER_JOIN);
    out.extend_from_slice(b"\"user\":");
    push_json_str(out, &who.user);
    out.extend_from_slice(b",\"client\":");
    push_json_str(out, &who.client);
    if let Some(i) = &who.info {
        out.extend_from_slice(b",\"info\":");
        push_raw_json(out, i);
    }
    out.extend_from_slice(b",\"role\":");
    push_role(out, role);
    out.extend_from_slice(b"}}");
}

/// The `story.user.leave` story event.
pub(in crate::engine::wire) fn write_user_leave_event(out: &mut Vec<u8>, who: MemberId<'_>) {
    event_head(out, c::EVENT_USER_LEAVE);
    out.extend_from_slice(b"\"user\":");
    push_json_str(out, who.user);
    out.extend_from_slice(b",\"client\":");
    push_json_str(out, who.client);
    out.extend_from_slice(b"}}");
}
