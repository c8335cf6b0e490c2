//! The FlatBuffers form of the wire protocol: each binary frame from a
//! client is one `ClientFrame`, each from the server one `ServerFrame`
//! (schema: `schemas/edge.fbs`).

use std::borrow::Cow;

use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, VerifierOptions, WIPOffset,
};

use super::proto;
use super::publication::{Publication, is_json_text};
use super::{
    ClientInfo, Command, ConnectParams, Data, MalformedFrame, Method, ReplyBody, epoch_str,
};
use crate::engine::codes::{CloseReason, ErrorCode};

mod client;
mod collab;
pub use client::client_frame;

/// Verifier limits: a client frame is at most the message size limit, and
/// these bound the work the verifier may do on hostile input.
fn verifier_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: 16,
        max_tables: 100_000,
        max_apparent_size: 1 << 26,
        ..Default::default()
    }
}

fn channel<'a>(c: Option<&'a str>) -> Result<Cow<'a, str>, ErrorCode> {
    c.map(Cow::Borrowed).ok_or(ErrorCode::BadRequest)
}

fn method<'a>(cmd: &proto::Command<'a>) -> Result<Method<'a>, ErrorCode> {
    use proto::Method as M;
    let bad = ErrorCode::BadRequest;
    Ok(match cmd.method_type() {
        M::Connect => {
            let c = cmd.method_as_connect().ok_or(bad)?;
            let info = c.info().map(|i| i.bytes());
            if let Some(i) = info
                && !is_json_text(i)
            {
                return Err(bad);
            }
            Method::Connect(ConnectParams {
                token: c.token().map(Cow::Borrowed),
                name: c.name().map(Cow::Borrowed),
                version: c.version().map(Cow::Borrowed),
                user: c.user().map(Cow::Borrowed),
                info,
                ticket: c.ticket().map(Cow::Borrowed),
            })
        }
        M::Subscribe => {
            let s = cmd.method_as_subscribe().ok_or(bad)?;
            let token = s.token().map(Cow::Borrowed);
            super::subscribe(
                channel(s.channel())?,
                s.recover(),
                s.epoch(),
                s.offset(),
                token,
            )?
        }
        M::Refresh => Method::Refresh {
            token: super::token(
                cmd.method_as_refresh()
                    .and_then(|r| r.token())
                    .map(Cow::Borrowed),
            )?,
        },
        M::SubRefresh => {
            let r = cmd.method_as_sub_refresh().ok_or(bad)?;
            Method::SubRefresh {
                channel: channel(r.channel())?,
                token: super::token(r.token().map(Cow::Borrowed))?,
            }
        }
        M::Unsubscribe => Method::Unsubscribe {
            channel: channel(cmd.method_as_unsubscribe().and_then(|s| s.channel()))?,
        },
        M::Publish => {
            let p = cmd.method_as_publish().ok_or(bad)?;
            let data = Data::Bytes(p.data().map(|d| d.bytes()).unwrap_or(&[]));
            let key = p.idempotency_key().map(Cow::Borrowed);
            super::publish(channel(p.channel())?, data, key, p.durable_ack())?
        }
        M::History => {
            let h = cmd.method_as_history().ok_or(bad)?;
            let since = match h.since() {
                Some(s) => {
                    super::position(Some(s.epoch().ok_or(bad)?), Some(s.offset().ok_or(bad)?))?
                }
                None => None,
            };
            Method::History {
                channel: channel(h.channel())?,
                limit: h.limit(),
                since,
                reverse: h.reverse(),
            }
        }
        M::Presence => Method::Presence {
            channel: channel(cmd.method_as_presence().and_then(|s| s.channel()))?,
        },
        M::PresenceStats => Method::PresenceStats {
            channel: channel(cmd.method_as_presence_stats().and_then(|s| s.channel()))?,
        },
        M::PresenceState => {
            let s = cmd.method_as_presence_state().ok_or(bad)?;
            let state = Cow::Borrowed(s.state().ok_or(bad)?);
            super::presence_state(channel(s.channel())?, state, s.ttl())?
        }
        M::Ping => Method::Ping,
        M::Rpc => {
            let r = cmd.method_as_rpc().ok_or(bad)?;
            let method = r.method().map(Cow::Borrowed).ok_or(bad)?;
            super::rpc::rpc(method, call_data(r.data()))?
        }
        M::Send => Method::Send {
            data: call_data(cmd.method_as_send().ok_or(bad)?.data()),
        },
        _ => return collab::method(cmd).unwrap_or(Err(ErrorCode::UnknownMethod)),
    })
}

/// A backend call's payload: the bytes given, or empty when absent.
fn call_data(data: Option<Vector<'_, u8>>) -> Data<'_> {
    Data::Bytes(data.map_or(&[][..], |d| d.bytes()))
}

/// Decodes the commands of one binary message.
pub fn decode_commands<'a>(
    payload: &'a [u8],
    mut f: impl FnMut(Command<'a>),
) -> Result<(), MalformedFrame> {
    let frame = flatbuffers::root_with_opts::<proto::ClientFrame<'a>>(&verifier_options(), payload)
        .map_err(|e| MalformedFrame(e.to_string()))?;
    let cmds = frame
        .commands()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| MalformedFrame("no commands".into()))?;
    for cmd in cmds {
        f(Command {
            id: cmd.id(),
            method: method(&cmd),
        });
    }
    Ok(())
}

type Fbb = FlatBufferBuilder<'static>;

fn reply_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    id: u32,
    body: ReplyBody<'_>,
) -> WIPOffset<proto::Reply<'b>> {
    use proto::ReplyResult as R;
    let (result_type, result, error) = match body {
        ReplyBody::Connect {
            client,
            node,
            ping,
            user,
            ttl,
        } => {
            let client = fbb.create_string(client);
            let node = fbb.create_string(node);
            let user = fbb.create_string(user);
            let r = proto::ConnectResult::create(
                fbb,
                &proto::ConnectResultArgs {
                    client: Some(client),
                    node: Some(node),
                    ping,
                    user: Some(user),
                    expires: ttl.is_some(),
                    ttl: ttl.unwrap_or(0),
                },
            );
            (R::Connect, Some(r.as_union_value()), None)
        }
        ReplyBody::Subscribe {
            epoch,
            offset,
            recoverable,
            recovered,
            publications,
        } => {
            let r =
                subscribe_result_offset(fbb, epoch, offset, recoverable, recovered, publications);
            (R::Subscribe, Some(r.as_union_value()), None)
        }
        ReplyBody::Unsubscribe => {
            let r = proto::UnsubscribeResult::create(fbb, &proto::UnsubscribeResultArgs {});
            (R::Unsubscribe, Some(r.as_union_value()), None)
        }
        ReplyBody::Publish { offset } => {
            let r = proto::PublishResult::create(fbb, &proto::PublishResultArgs { offset });
            (R::Publish, Some(r.as_union_value()), None)
        }
        ReplyBody::History {
            epoch,
            offset,
            publications,
        } => {
            let epoch = epoch_offset(fbb, epoch);
            let publications = publications_offset(fbb, publications);
            let r = proto::HistoryResult::create(
                fbb,
                &proto::HistoryResultArgs {
                    epoch: Some(epoch),
                    offset,
                    publications: Some(publications),
                },
            );
            (R::History, Some(r.as_union_value()), None)
        }
        ReplyBody::Presence { clients } => {
            // Sorted by client id, so readers can use `lookup_by_key`.
            let mut entries: Vec<(&str, WIPOffset<proto::PresenceEntry<'b>>)> =
                Vec::with_capacity(clients.len());
            for e in clients {
                let client = fbb.create_string(&e.info.client);
                let info = client_info_offset(fbb, client, &e.info);
                let state = e.state.as_deref().map(|s| fbb.create_string(s));
                let entry = proto::PresenceEntry::create(
                    fbb,
                    &proto::PresenceEntryArgs {
                        client: Some(client),
                        info: Some(info),
                        state,
                    },
                );
                entries.push((&e.info.client, entry));
            }
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let sorted: Vec<_> = entries.into_iter().map(|(_, e)| e).collect();
            let clients = fbb.create_vector(&sorted);
            let r = proto::PresenceResult::create(
                fbb,
                &proto::PresenceResultArgs {
                    clients: Some(clients),
                },
            );
            (R::Presence, Some(r.as_union_value()), None)
        }
        ReplyBody::PresenceStats {
            num_clients,
            num_users,
        } => {
            let r = proto::PresenceStatsResult::create(
                fbb,
                &proto::PresenceStatsResultArgs {
                    num_clients,
                    num_users,
                },
            );
            (R::PresenceStats, Some(r.as_union_value()), None)
        }
        ReplyBody::PresenceState => {
            let r = proto::PresenceStateResult::create(fbb, &proto::PresenceStateResultArgs {});
            (R::PresenceState, Some(r.as_union_value()), None)
        }
        ReplyBody::Refresh { ttl, subscription } => {
            let r = proto::RefreshResult::create(
                fbb,
                &proto::RefreshResultArgs {
                    expires: ttl.is_some(),
                    ttl: ttl.unwrap_or(0),
                },
            );
            let kind = if subscription {
                R::SubRefresh
            } else {
                R::Refresh
            };
            (kind, Some(r.as_union_value()), None)
        }
        ReplyBody::Ping => {
            let r = proto::PingResult::create(fbb, &proto::PingResultArgs {});
            (R::Ping, Some(r.as_union_value()), None)
        }
        ReplyBody::Error(code) => {
            let e = collab::error_offset(fbb, code, code.message(), None);
            (R::NONE, None, Some(e))
        }
        ReplyBody::ErrorMessage { code, message } => {
            let e = collab::error_offset(fbb, code, message, None);
            (R::NONE, None, Some(e))
        }
        ReplyBody::ErrorDetail(d) => {
            let e = collab::error_offset(fbb, d.code(), d.code().message(), Some(&d));
            (R::NONE, None, Some(e))
        }
        ReplyBody::CollabJoin(r) => some(collab::join_result(fbb, &r)),
        ReplyBody::CollabLeave => some(collab::leave_result(fbb)),
        ReplyBody::Lock {
            section,
            holder,
            expires,
        } => some(collab::lock_result(fbb, section, holder, expires)),
        ReplyBody::Unlock => some(collab::unlock_result(fbb)),
        ReplyBody::Update { version, duplicate } => {
            some(collab::update_result(fbb, version, duplicate))
        }
        ReplyBody::Rpc { data, .. } => {
            let data = fbb.create_vector(data);
            let r = proto::RpcResult::create(fbb, &proto::RpcResultArgs { data: Some(data) });
            (R::Rpc, Some(r.as_union_value()), None)
        }
        ReplyBody::Send => {
            let r = proto::SendResult::create(fbb, &proto::SendResultArgs {});
            (R::Send, Some(r.as_union_value()), None)
        }
    };
    proto::Reply::create(
        fbb,
        &proto::ReplyArgs {
            id,
            result_type,
            result,
            error,
        },
    )
}

/// A result table as `reply_offset` wants it.
fn some<'b>(
    (kind, table): collab::ResultTable,
) -> (
    proto::ReplyResult,
    Option<WIPOffset<UnionWIPOffset>>,
    Option<WIPOffset<proto::Error<'b>>>,
) {
    (kind, Some(table), None)
}

/// A `SubscribeResult` table: the body of a `subscribe` reply or push.
fn subscribe_result_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    epoch: u64,
    offset: u64,
    recoverable: bool,
    recovered: bool,
    publications: &[Publication],
) -> WIPOffset<proto::SubscribeResult<'b>> {
    let epoch = epoch_offset(fbb, epoch);
    let publications = publications_offset(fbb, publications);
    proto::SubscribeResult::create(
        fbb,
        &proto::SubscribeResultArgs {
            epoch: Some(epoch),
            offset,
            recoverable,
            recovered,
            publications: Some(publications),
        },
    )
}

/// An epoch as its wire string.
fn epoch_offset<'b>(fbb: &mut FlatBufferBuilder<'b>, epoch: u64) -> WIPOffset<&'b str> {
    let mut eb = [0u8; 16];
    fbb.create_string(epoch_str(epoch, &mut eb))
}

/// One `Publication` table (a `pub` push body or a list element).
fn publication_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    offset: u64,
    data: &[u8],
) -> WIPOffset<proto::Publication<'b>> {
    let data = fbb.create_vector(data);
    proto::Publication::create(
        fbb,
        &proto::PublicationArgs {
            offset,
            data: Some(data),
        },
    )
}

type PubVector<'b> = WIPOffset<Vector<'b, ForwardsUOffset<proto::Publication<'b>>>>;

/// A vector of `Publication` tables, in the given order.
fn publications_offset<'b>(fbb: &mut FlatBufferBuilder<'b>, pubs: &[Publication]) -> PubVector<'b> {
    let offs: Vec<_> = pubs
        .iter()
        .map(|p| publication_offset(fbb, p.offset, &p.data.bytes))
        .collect();
    fbb.create_vector(&offs)
}

/// A `ClientInfo` table; `client` is the already written client id (shared
/// with a presence entry's key).
fn client_info_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    client: WIPOffset<&'b str>,
    info: &ClientInfo,
) -> WIPOffset<proto::ClientInfo<'b>> {
    let user = fbb.create_string(&info.user);
    let data = info.info.as_deref().map(|i| fbb.create_vector(i));
    proto::ClientInfo::create(
        fbb,
        &proto::ClientInfoArgs {
            client: Some(client),
            user: Some(user),
            info: data,
        },
    )
}

/// A `ServerMessage` holding one push.
fn push_message<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    channel: Option<&str>,
    body_type: proto::PushBody,
    body: WIPOffset<UnionWIPOffset>,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let channel = channel.map(|c| fbb.create_string(c));
    let push = proto::Push::create(
        fbb,
        &proto::PushArgs {
            channel,
            body_type,
            body: Some(body),
        },
    );
    proto::ServerMessage::create(
        fbb,
        &proto::ServerMessageArgs {
            reply: None,
            push_: Some(push),
        },
    )
}

fn disconnect_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    reason: CloseReason,
    text: &str,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let text = fbb.create_string(text);
    let d = proto::Disconnect::create(
        fbb,
        &proto::DisconnectArgs {
            code: reason.code() as u32,
            reason: Some(text),
            reconnect: reason.reconnect(),
        },
    );
    push_message(fbb, None, proto::PushBody::Disconnect, d.as_union_value())
}

/// Which presence push [`presence_push`] builds.
enum PresencePush<'s> {
    Join,
    Leave,
    State(&'s str),
}

/// A `join`, `leave` or `state` push message.
fn presence_push<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    channel: &str,
    info: &ClientInfo,
    kind: PresencePush<'_>,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let client = fbb.create_string(&info.client);
    let info = Some(client_info_offset(fbb, client, info));
    let (body_type, body) = match kind {
        PresencePush::Join => (
            proto::PushBody::Join,
            proto::Join::create(fbb, &proto::JoinArgs { info }).as_union_value(),
        ),
        PresencePush::Leave => (
            proto::PushBody::Leave,
            proto::Leave::create(fbb, &proto::LeaveArgs { info }).as_union_value(),
        ),
        PresencePush::State(state) => {
            let state = Some(fbb.create_string(state));
            let s = proto::State::create(fbb, &proto::StateArgs { info, state });
            (proto::PushBody::State, s.as_union_value())
        }
    };
    push_message(fbb, Some(channel), body_type, body)
}

/// A `ServerFrame` with one `pub` push (the frame's payload).
pub fn pub_payload<'f>(fbb: &'f mut Fbb, channel: &str, offset: u64, data: &[u8]) -> &'f [u8] {
    fbb.reset();
    let publication = publication_offset(fbb, offset, data);
    let msg = push_message(
        fbb,
        Some(channel),
        proto::PushBody::Pub,
        publication.as_union_value(),
    );
    let messages = fbb.create_vector(&[msg]);
    let frame = proto::ServerFrame::create(
        fbb,
        &proto::ServerFrameArgs {
            messages: Some(messages),
        },
    );
    fbb.finish_minimal(frame);
    fbb.finished_data()
}

/// Accumulates server messages for one binary frame.
pub struct BinaryWriter {
    fbb: Fbb,
    messages: Vec<WIPOffset<proto::ServerMessage<'static>>>,
}

impl Default for BinaryWriter {
    fn default() -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(256),
            messages: Vec::new(),
        }
    }
}

impl BinaryWriter {
    /// Starts a new frame.
    pub fn begin(&mut self) {
        self.fbb.reset();
        self.messages.clear();
    }

    /// Adds a reply.
    pub fn reply(&mut self, id: u32, body: ReplyBody<'_>) {
        let reply = reply_offset(&mut self.fbb, id, body);
        let msg = proto::ServerMessage::create(
            &mut self.fbb,
            &proto::ServerMessageArgs {
                reply: Some(reply),
                push_: None,
            },
        );
        self.messages.push(msg);
    }

    /// Adds a disconnect push.
    pub fn disconnect(&mut self, reason: CloseReason, text: &str) {
        let msg = disconnect_offset(&mut self.fbb, reason, text);
        self.messages.push(msg);
    }

    /// Adds a join push.
    pub fn join(&mut self, channel: &str, info: &ClientInfo) {
        let msg = presence_push(&mut self.fbb, channel, info, PresencePush::Join);
        self.messages.push(msg);
    }

    /// Adds a leave push.
    pub fn leave(&mut self, channel: &str, info: &ClientInfo) {
        let msg = presence_push(&mut self.fbb, channel, info, PresencePush::Leave);
        self.messages.push(msg);
    }

    /// Adds a state push.
    pub fn state(&mut self, channel: &str, info: &ClientInfo, state: &str) {
        let msg = presence_push(&mut self.fbb, channel, info, PresencePush::State(state));
        self.messages.push(msg);
    }

    /// Adds a `subscribe` push (server-side subscription): a
    /// `SubscribeResult` with nothing recovered.
    pub fn subscribe_push(&mut self, channel: &str, epoch: u64, offset: u64, recoverable: bool) {
        let body = subscribe_result_offset(&mut self.fbb, epoch, offset, recoverable, false, &[]);
        let msg = push_message(
            &mut self.fbb,
            Some(channel),
            proto::PushBody::Subscribe,
            body.as_union_value(),
        );
        self.messages.push(msg);
    }

    /// Adds an `unsubscribe` push (server-side unsubscription): an empty
    /// `UnsubscribeResult`.
    pub fn unsubscribe_push(&mut self, channel: &str) {
        let body =
            proto::UnsubscribeResult::create(&mut self.fbb, &proto::UnsubscribeResultArgs {});
        let msg = push_message(
            &mut self.fbb,
            Some(channel),
            proto::PushBody::Unsubscribe,
            body.as_union_value(),
        );
        self.messages.push(msg);
    }

    /// Adds a `promoted` push (story collaboration).
    pub fn promoted(&mut self, channel: &str) {
        let msg = collab::promoted_push(&mut self.fbb, channel);
        self.messages.push(msg);
    }

    /// Adds a `queue` push (story collaboration).
    pub fn queue_position(&mut self, channel: &str, position: u32) {
        let msg = collab::queue_push(&mut self.fbb, channel, position);
        self.messages.push(msg);
    }

    /// Adds a `conflict` push (story collaboration).
    pub fn conflict(
        &mut self,
        channel: &str,
        section: &str,
        version: u64,
        overwritten: &[u8],
        by: &ClientInfo,
    ) {
        let msg = collab::conflict_push(&mut self.fbb, channel, section, version, overwritten, by);
        self.messages.push(msg);
    }

    /// Finishes the `ServerFrame` and returns its bytes (valid until the
    /// next `begin`).
    pub fn payload(&mut self) -> &[u8] {
        let messages = self.fbb.create_vector(&self.messages);
        let frame = proto::ServerFrame::create(
            &mut self.fbb,
            &proto::ServerFrameArgs {
                messages: Some(messages),
            },
        );
        self.fbb.finish_minimal(frame);
        self.messages.clear();
        self.fbb.finished_data()
    }
}

#[cfg(test)]
mod tests;
