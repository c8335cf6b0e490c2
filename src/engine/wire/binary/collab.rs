//! The FlatBuffers form of story collaboration: its request tables, its
//! result tables and error fields, and its pushes (schemas/edge.fbs,
//! "story collaboration").

use std::borrow::Cow;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::{channel, client_info_offset, epoch_offset, publications_offset, push_message};
use crate::engine::codes::ErrorCode;
use crate::engine::wire::collab::{
    self as c, CollabJoinReply, CollabRole, ErrorDetail, MemberId, MemberRole,
};
use crate::engine::wire::publication::is_json_text;
use crate::engine::wire::{ClientInfo, Method, proto};

/// A required string field.
fn required(s: Option<&str>) -> Result<Cow<'_, str>, ErrorCode> {
    s.map(Cow::Borrowed).ok_or(ErrorCode::BadRequest)
}

/// The story collaboration command in `cmd`; `None` when its method is not
/// one of them.
pub(super) fn method<'a>(cmd: &proto::Command<'a>) -> Option<Result<Method<'a>, ErrorCode>> {
    use proto::Method as M;
    let bad = ErrorCode::BadRequest;
    Some(match cmd.method_type() {
        M::CollabJoin => cmd.method_as_collab_join().ok_or(bad).and_then(|j| {
            let role = match j.role() {
                Some(proto::CollabRole::Editor) => CollabRole::Editor,
                Some(proto::CollabRole::Viewer) => CollabRole::Viewer,
                _ => return Err(bad),
            };
            let ch = channel(j.channel())?;
            c::collab_join(ch, role, j.queue(), j.recover(), j.epoch(), j.offset())
        }),
        M::CollabLeave => channel(cmd.method_as_collab_leave().and_then(|l| l.channel()))
            .map(|channel| Method::CollabLeave { channel }),
        M::Lock => cmd
            .method_as_lock()
            .ok_or(bad)
            .and_then(|l| c::lock(channel(l.channel())?, required(l.section())?, l.ttl())),
        M::Unlock => cmd
            .method_as_unlock()
            .ok_or(bad)
            .and_then(|u| c::unlock(channel(u.channel())?, required(u.section())?)),
        M::Update => cmd.method_as_update().ok_or(bad).and_then(|u| {
            let data = u.data().ok_or(bad)?.bytes();
            if !is_json_text(data) {
                return Err(bad);
            }
            let base = u.base_version().ok_or(bad)?;
            let ch = channel(u.channel())?;
            c::update(ch, required(u.section())?, base, data, required(u.op_id())?)
        }),
        _ => return None,
    })
}

fn role(r: MemberRole) -> proto::CollabRole {
    match r {
        MemberRole::Editor => proto::CollabRole::Editor,
        MemberRole::Viewer => proto::CollabRole::Viewer,
        MemberRole::Queued => proto::CollabRole::Queued,
    }
}

/// A `Holder` table.
fn holder_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    m: MemberId<'_>,
) -> WIPOffset<proto::Holder<'b>> {
    let user = fbb.create_string(m.user);
    let client = fbb.create_string(m.client);
    proto::Holder::create(
        fbb,
        &proto::HolderArgs {
            user: Some(user),
            client: Some(client),
        },
    )
}

/// A `ClientInfo` table for `info`.
fn info_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    info: &ClientInfo,
) -> WIPOffset<proto::ClientInfo<'b>> {
    let client = fbb.create_string(&info.client);
    client_info_offset(fbb, client, info)
}

/// The union tag and table of a story collaboration result.
pub(super) type ResultTable = (proto::ReplyResult, WIPOffset<UnionWIPOffset>);

/// A `CollabJoinResult`; `sections` sorted by id, so readers can use
/// `lookup_by_key`. `recovered` and `publications` (built as in
/// `SubscribeResult`) are set only when the join asked to recover.
pub(super) fn join_result<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    r: &CollabJoinReply<'_>,
) -> ResultTable {
    let mut editors = Vec::new();
    r.story
        .each_editor(&mut |e| editors.push(info_offset(fbb, e)));
    let editors = fbb.create_vector(&editors);
    let mut sections = Vec::new();
    r.story.each_section(&mut |s| {
        let id = fbb.create_string(s.id);
        let data = fbb.create_vector(s.data);
        let holder = s.holder.map(|h| holder_offset(fbb, h));
        let t = proto::CollabSection::create(
            fbb,
            &proto::CollabSectionArgs {
                id: Some(id),
                version: s.version,
                data: Some(data),
                holder,
            },
        );
        sections.push((s.id, t));
    });
    sections.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let sorted: Vec<_> = sections.into_iter().map(|(_, t)| t).collect();
    let sections = fbb.create_vector(&sorted);
    let epoch = epoch_offset(fbb, r.epoch);
    let publications = r
        .recovering
        .then(|| publications_offset(fbb, r.publications));
    let t = proto::CollabJoinResult::create(
        fbb,
        &proto::CollabJoinResultArgs {
            role: role(r.role),
            position: r.position,
            editors: Some(editors),
            viewers: r.viewers,
            sections: Some(sections),
            offset: r.offset,
            epoch: Some(epoch),
            recovered: r.recovering && r.recovered,
            publications,
            queued: r.queued,
        },
    );
    (proto::ReplyResult::CollabJoin, t.as_union_value())
}

/// An empty `CollabLeaveResult`.
pub(super) fn leave_result<'b>(fbb: &mut FlatBufferBuilder<'b>) -> ResultTable {
    let t = proto::CollabLeaveResult::create(fbb, &proto::CollabLeaveResultArgs {});
    (proto::ReplyResult::CollabLeave, t.as_union_value())
}

/// A `LockResult`.
pub(super) fn lock_result<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    section: &str,
    holder: MemberId<'_>,
    expires: u64,
) -> ResultTable {
    let section = fbb.create_string(section);
    let holder = holder_offset(fbb, holder);
    let t = proto::LockResult::create(
        fbb,
        &proto::LockResultArgs {
            section: Some(section),
            holder: Some(holder),
            expires,
        },
    );
    (proto::ReplyResult::Lock, t.as_union_value())
}

/// An empty `UnlockResult`.
pub(super) fn unlock_result<'b>(fbb: &mut FlatBufferBuilder<'b>) -> ResultTable {
    let t = proto::UnlockResult::create(fbb, &proto::UnlockResultArgs {});
    (proto::ReplyResult::Unlock, t.as_union_value())
}

/// An `UpdateResult`.
pub(super) fn update_result<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    version: u64,
    duplicate: bool,
) -> ResultTable {
    let t = proto::UpdateResult::create(fbb, &proto::UpdateResultArgs { version, duplicate });
    (proto::ReplyResult::Update, t.as_union_value())
}

/// An `Error` table with code, message, temporary and, for `detail`, its
/// extra fields.
pub(super) fn error_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    code: ErrorCode,
    message: &str,
    detail: Option<&ErrorDetail<'_>>,
) -> WIPOffset<proto::Error<'b>> {
    let message = fbb.create_string(message);
    let (holder, version, data) = match detail {
        None => (None, None, None),
        Some(ErrorDetail::SectionLocked { holder }) => {
            (Some(holder_offset(fbb, *holder)), None, None)
        }
        Some(ErrorDetail::VersionConflict { version, data }) => {
            (None, Some(*version), Some(fbb.create_vector(data)))
        }
    };
    proto::Error::create(
        fbb,
        &proto::ErrorArgs {
            code: code.code(),
            message: Some(message),
            temporary: code.temporary(),
            holder,
            version,
            data,
        },
    )
}

/// A `promoted` push message.
pub(super) fn promoted_push<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    channel: &str,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let p = proto::Promoted::create(
        fbb,
        &proto::PromotedArgs {
            role: proto::CollabRole::Editor,
        },
    );
    push_message(
        fbb,
        Some(channel),
        proto::PushBody::Promoted,
        p.as_union_value(),
    )
}

/// A `queue` push message.
pub(super) fn queue_push<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    channel: &str,
    position: u32,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let q = proto::Queue::create(fbb, &proto::QueueArgs { position });
    push_message(
        fbb,
        Some(channel),
        proto::PushBody::Queue,
        q.as_union_value(),
    )
}

/// A `conflict` push message.
pub(super) fn conflict_push<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    channel: &str,
    section: &str,
    version: u64,
    overwritten: &[u8],
    by: &ClientInfo,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let section = fbb.create_string(section);
    let overwritten = fbb.create_vector(overwritten);
    let by = info_offset(fbb, by);
    let t = proto::Conflict::create(
        fbb,
        &proto::ConflictArgs {
            section: Some(section),
            version,
            overwritten: Some(overwritten),
            by: Some(by),
        },
    );
    push_message(
        fbb,
        Some(channel),
        proto::PushBody::Conflict,
        t.as_union_value(),
    )
}
