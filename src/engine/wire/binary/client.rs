//! Builds client frames in the FlatBuffers form: what a binary client
//! sends. Used by tests, examples and tools; the server never sends these.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::Fbb;
use crate::engine::wire::collab::CollabRole;
use crate::engine::wire::{Method, epoch_str, proto};

/// Builds a `ClientFrame` (used by tests, the bench client and examples).
pub fn client_frame(commands: &[(u32, Method<'_>)]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let mut offs = Vec::with_capacity(commands.len());
    for (id, m) in commands {
        let (t, v) = request_offset(&mut fbb, m);
        offs.push(proto::Command::create(
            &mut fbb,
            &proto::CommandArgs {
                id: *id,
                method_type: t,
                method: Some(v),
            },
        ));
    }
    let commands = fbb.create_vector(&offs);
    let frame = proto::ClientFrame::create(
        &mut fbb,
        &proto::ClientFrameArgs {
            commands: Some(commands),
        },
    );
    fbb.finish_minimal(frame);
    fbb.finished_data().to_vec()
}

/// One request table and its union tag.
fn request_offset(fbb: &mut Fbb, m: &Method<'_>) -> (proto::Method, WIPOffset<UnionWIPOffset>) {
    use proto::Method as M;
    let mut eb = [0u8; 16];
    match m {
        Method::Connect(p) => {
            let token = p.token.as_deref().map(|s| fbb.create_string(s));
            let name = p.name.as_deref().map(|s| fbb.create_string(s));
            let version = p.version.as_deref().map(|s| fbb.create_string(s));
            let user = p.user.as_deref().map(|s| fbb.create_string(s));
            let info = p.info.map(|i| fbb.create_vector(i));
            let ticket = p.ticket.as_deref().map(|s| fbb.create_string(s));
            let r = proto::ConnectRequest::create(
                fbb,
                &proto::ConnectRequestArgs {
                    token,
                    name,
                    version,
                    user,
                    info,
                    ticket,
                },
            );
            (M::Connect, r.as_union_value())
        }
        Method::Subscribe {
            channel,
            recover,
            since,
            token,
        } => {
            let c = fbb.create_string(channel);
            let epoch = since.map(|p| fbb.create_string(epoch_str(p.epoch, &mut eb)));
            let token = token.as_deref().map(|t| fbb.create_string(t));
            let r = proto::SubscribeRequest::create(
                fbb,
                &proto::SubscribeRequestArgs {
                    channel: Some(c),
                    recover: *recover,
                    epoch,
                    offset: since.map(|p| p.offset),
                    token,
                },
            );
            (M::Subscribe, r.as_union_value())
        }
        Method::Refresh { token } => {
            let token = fbb.create_string(token);
            let r = proto::RefreshRequest::create(
                fbb,
                &proto::RefreshRequestArgs { token: Some(token) },
            );
            (M::Refresh, r.as_union_value())
        }
        Method::SubRefresh { channel, token } => {
            let c = fbb.create_string(channel);
            let token = fbb.create_string(token);
            let r = proto::SubRefreshRequest::create(
                fbb,
                &proto::SubRefreshRequestArgs {
                    channel: Some(c),
                    token: Some(token),
                },
            );
            (M::SubRefresh, r.as_union_value())
        }
        Method::Unsubscribe { channel } => {
            let c = fbb.create_string(channel);
            let r = proto::UnsubscribeRequest::create(
                fbb,
                &proto::UnsubscribeRequestArgs { channel: Some(c) },
            );
            (M::Unsubscribe, r.as_union_value())
        }
        Method::Publish {
            channel,
            data,
            idempotency_key,
            durable_ack,
        } => {
            let c = fbb.create_string(channel);
            let d = fbb.create_vector(data.as_bytes());
            let key = idempotency_key.as_deref().map(|k| fbb.create_string(k));
            let r = proto::PublishRequest::create(
                fbb,
                &proto::PublishRequestArgs {
                    channel: Some(c),
                    data: Some(d),
                    idempotency_key: key,
                    durable_ack: *durable_ack,
                },
            );
            (M::Publish, r.as_union_value())
        }
        Method::History {
            channel,
            limit,
            since,
            reverse,
        } => {
            let c = fbb.create_string(channel);
            let since = since.map(|p| {
                let epoch = fbb.create_string(epoch_str(p.epoch, &mut eb));
                proto::StreamPosition::create(
                    fbb,
                    &proto::StreamPositionArgs {
                        epoch: Some(epoch),
                        offset: Some(p.offset),
                    },
                )
            });
            let r = proto::HistoryRequest::create(
                fbb,
                &proto::HistoryRequestArgs {
                    channel: Some(c),
                    limit: *limit,
                    since,
                    reverse: *reverse,
                },
            );
            (M::History, r.as_union_value())
        }
        Method::Presence { channel } => {
            let c = fbb.create_string(channel);
            let r = proto::PresenceRequest::create(
                fbb,
                &proto::PresenceRequestArgs { channel: Some(c) },
            );
            (M::Presence, r.as_union_value())
        }
        Method::PresenceStats { channel } => {
            let c = fbb.create_string(channel);
            let r = proto::PresenceStatsRequest::create(
                fbb,
                &proto::PresenceStatsRequestArgs { channel: Some(c) },
            );
            (M::PresenceStats, r.as_union_value())
        }
        Method::PresenceState {
            channel,
            state,
            ttl,
        } => {
            let c = fbb.create_string(channel);
            let s = fbb.create_string(state);
            let r = proto::PresenceStateRequest::create(
                fbb,
                &proto::PresenceStateRequestArgs {
                    channel: Some(c),
                    state: Some(s),
                    ttl: *ttl,
                },
            );
            (M::PresenceState, r.as_union_value())
        }
        Method::Ping => {
            let r = proto::PingRequest::create(fbb, &proto::PingRequestArgs {});
            (M::Ping, r.as_union_value())
        }
        Method::CollabJoin {
            channel,
            role,
            queue,
            recover,
            since,
        } => {
            let channel = fbb.create_string(channel);
            let epoch = since.map(|p| fbb.create_string(epoch_str(p.epoch, &mut eb)));
            let role = match role {
                CollabRole::Editor => proto::CollabRole::Editor,
                CollabRole::Viewer => proto::CollabRole::Viewer,
            };
            let r = proto::CollabJoinRequest::create(
                fbb,
                &proto::CollabJoinRequestArgs {
                    channel: Some(channel),
                    role: Some(role),
                    queue: *queue,
                    recover: *recover,
                    epoch,
                    offset: since.map(|p| p.offset),
                },
            );
            (M::CollabJoin, r.as_union_value())
        }
        Method::CollabLeave { channel } => {
            let channel = Some(fbb.create_string(channel));
            let r =
                proto::CollabLeaveRequest::create(fbb, &proto::CollabLeaveRequestArgs { channel });
            (M::CollabLeave, r.as_union_value())
        }
        Method::Lock {
            channel,
            section,
            ttl,
        } => {
            let channel = Some(fbb.create_string(channel));
            let section = Some(fbb.create_string(section));
            let r = proto::LockRequest::create(
                fbb,
                &proto::LockRequestArgs {
                    channel,
                    section,
                    ttl: *ttl,
                },
            );
            (M::Lock, r.as_union_value())
        }
        Method::Unlock { channel, section } => {
            let channel = Some(fbb.create_string(channel));
            let section = Some(fbb.create_string(section));
            let r =
                proto::UnlockRequest::create(fbb, &proto::UnlockRequestArgs { channel, section });
            (M::Unlock, r.as_union_value())
        }
        Method::Update {
            channel,
            section,
            base_version,
            data,
            op_id,
        } => {
            let channel = Some(fbb.create_string(channel));
            let section = Some(fbb.create_string(section));
            let data = Some(fbb.create_vector(data));
            let op_id = Some(fbb.create_string(op_id));
            let r = proto::UpdateRequest::create(
                fbb,
                &proto::UpdateRequestArgs {
                    channel,
                    section,
                    base_version: Some(*base_version),
                    data,
                    op_id,
                },
            );
            (M::Update, r.as_union_value())
        }
        Method::Rpc { method, data } => {
            let method = Some(fbb.create_string(method));
            let data = Some(fbb.create_vector(data.as_bytes()));
            let r = proto::RpcRequest::create(fbb, &proto::RpcRequestArgs { method, data });
            (M::Rpc, r.as_union_value())
        }
        Method::Send { data } => {
            let data = Some(fbb.create_vector(data.as_bytes()));
            let r = proto::SendRequest::create(fbb, &proto::SendRequestArgs { data });
            (M::Send, r.as_union_value())
        }
    }
}
