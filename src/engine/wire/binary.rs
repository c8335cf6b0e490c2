//! The FlatBuffers form of the wire protocol: each binary frame from a
//! client is one `ClientFrame`, each from the server one `ServerFrame`
//! (schema: `schemas/edge.fbs`).

use std::borrow::Cow;

use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};

use super::proto;
use super::{Command, ConnectParams, Data, MalformedFrame, Method, ReplyBody, epoch_str};
use crate::engine::codes::{CloseReason, ErrorCode};

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
    Ok(match cmd.method_type() {
        M::Connect => {
            let c = cmd.method_as_connect().ok_or(ErrorCode::BadRequest)?;
            Method::Connect(ConnectParams {
                token: c.token().map(Cow::Borrowed),
                name: c.name().map(Cow::Borrowed),
                version: c.version().map(Cow::Borrowed),
            })
        }
        M::Subscribe => Method::Subscribe {
            channel: channel(cmd.method_as_subscribe().and_then(|s| s.channel()))?,
        },
        M::Unsubscribe => Method::Unsubscribe {
            channel: channel(cmd.method_as_unsubscribe().and_then(|s| s.channel()))?,
        },
        M::Publish => {
            let p = cmd.method_as_publish().ok_or(ErrorCode::BadRequest)?;
            Method::Publish {
                channel: channel(p.channel())?,
                data: Data::Bytes(p.data().map(|d| d.bytes()).unwrap_or(&[])),
            }
        }
        M::Ping => Method::Ping,
        _ => return Err(ErrorCode::UnknownMethod),
    })
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
        ReplyBody::Connect { client, node, ping } => {
            let client = fbb.create_string(client);
            let node = fbb.create_string(node);
            let r = proto::ConnectResult::create(
                fbb,
                &proto::ConnectResultArgs {
                    client: Some(client),
                    node: Some(node),
                    ping,
                },
            );
            (R::Connect, Some(r.as_union_value()), None)
        }
        ReplyBody::Subscribe { epoch, offset } => {
            let mut eb = [0u8; 16];
            let epoch = fbb.create_string(epoch_str(epoch, &mut eb));
            let r = proto::SubscribeResult::create(
                fbb,
                &proto::SubscribeResultArgs {
                    epoch: Some(epoch),
                    offset,
                },
            );
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
        ReplyBody::Ping => {
            let r = proto::PingResult::create(fbb, &proto::PingResultArgs {});
            (R::Ping, Some(r.as_union_value()), None)
        }
        ReplyBody::Error(code) => {
            let message = fbb.create_string(code.message());
            let e = proto::Error::create(
                fbb,
                &proto::ErrorArgs {
                    code: code.code(),
                    message: Some(message),
                    temporary: code.temporary(),
                },
            );
            (R::NONE, None, Some(e))
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

fn disconnect_offset<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    reason: CloseReason,
) -> WIPOffset<proto::ServerMessage<'b>> {
    let text = fbb.create_string(reason.reason());
    let d = proto::Disconnect::create(
        fbb,
        &proto::DisconnectArgs {
            code: reason.code() as u32,
            reason: Some(text),
            reconnect: reason.reconnect(),
        },
    );
    let push = proto::Push::create(
        fbb,
        &proto::PushArgs {
            channel: None,
            body_type: proto::PushBody::Disconnect,
            body: Some(d.as_union_value()),
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

/// A `ServerFrame` with one `pub` push (the frame's payload).
pub fn pub_payload<'f>(fbb: &'f mut Fbb, channel: &str, offset: u64, data: &[u8]) -> &'f [u8] {
    fbb.reset();
    let data = fbb.create_vector(data);
    let publication = proto::Publication::create(
        fbb,
        &proto::PublicationArgs {
            offset,
            data: Some(data),
        },
    );
    let channel = fbb.create_string(channel);
    let push = proto::Push::create(
        fbb,
        &proto::PushArgs {
            channel: Some(channel),
            body_type: proto::PushBody::Pub,
            body: Some(publication.as_union_value()),
        },
    );
    let msg = proto::ServerMessage::create(
        fbb,
        &proto::ServerMessageArgs {
            reply: None,
            push_: Some(push),
        },
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
    pub fn disconnect(&mut self, reason: CloseReason) {
        let msg = disconnect_offset(&mut self.fbb, reason);
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

/// Builds a `ClientFrame` (used by tests, the bench client and examples).
pub fn client_frame(commands: &[(u32, Method<'_>)]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let mut offs = Vec::with_capacity(commands.len());
    for (id, m) in commands {
        use proto::Method as M;
        let (t, v) = match m {
            Method::Connect(p) => {
                let token = p.token.as_deref().map(|s| fbb.create_string(s));
                let name = p.name.as_deref().map(|s| fbb.create_string(s));
                let version = p.version.as_deref().map(|s| fbb.create_string(s));
                let r = proto::ConnectRequest::create(
                    &mut fbb,
                    &proto::ConnectRequestArgs {
                        token,
                        name,
                        version,
                    },
                );
                (M::Connect, r.as_union_value())
            }
            Method::Subscribe { channel } => {
                let c = fbb.create_string(channel);
                let r = proto::SubscribeRequest::create(
                    &mut fbb,
                    &proto::SubscribeRequestArgs { channel: Some(c) },
                );
                (M::Subscribe, r.as_union_value())
            }
            Method::Unsubscribe { channel } => {
                let c = fbb.create_string(channel);
                let r = proto::UnsubscribeRequest::create(
                    &mut fbb,
                    &proto::UnsubscribeRequestArgs { channel: Some(c) },
                );
                (M::Unsubscribe, r.as_union_value())
            }
            Method::Publish { channel, data } => {
                let c = fbb.create_string(channel);
                let d = fbb.create_vector(data.as_bytes());
                let r = proto::PublishRequest::create(
                    &mut fbb,
                    &proto::PublishRequestArgs {
                        channel: Some(c),
                        data: Some(d),
                    },
                );
                (M::Publish, r.as_union_value())
            }
            Method::Ping => {
                let r = proto::PingRequest::create(&mut fbb, &proto::PingRequestArgs {});
                (M::Ping, r.as_union_value())
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frame_round_trip() {
        let buf = client_frame(&[
            (1, Method::Connect(ConnectParams::default())),
            (
                2,
                Method::Subscribe {
                    channel: "a:b".into(),
                },
            ),
            (
                3,
                Method::Publish {
                    channel: "a:b".into(),
                    data: Data::Bytes(&[1, 2, 3]),
                },
            ),
            (4, Method::Ping),
        ]);
        let mut got = Vec::new();
        decode_commands(&buf, |c| got.push(c)).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[1].method,
            Ok(Method::Subscribe {
                channel: "a:b".into()
            })
        );
        assert_eq!(
            got[2].method,
            Ok(Method::Publish {
                channel: "a:b".into(),
                data: Data::Bytes(&[1, 2, 3])
            })
        );
        assert_eq!(got[3].id, 4);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(decode_commands(&[1, 2, 3], |_| {}).is_err());
        assert!(decode_commands(&[0xff; 64], |_| {}).is_err());
        assert!(decode_commands(&[], |_| {}).is_err());
    }

    #[test]
    fn server_frame_decodes() {
        let mut w = BinaryWriter::default();
        w.begin();
        w.reply(5, ReplyBody::Publish { offset: 42 });
        w.reply(6, ReplyBody::Error(ErrorCode::UnknownMethod));
        w.disconnect(CloseReason::Shutdown);
        let payload = w.payload();
        let sf = flatbuffers::root::<proto::ServerFrame>(payload).unwrap();
        let msgs = sf.messages().unwrap();
        assert_eq!(msgs.len(), 3);
        let r0 = msgs.get(0).reply().unwrap();
        assert_eq!(r0.id(), 5);
        assert_eq!(r0.result_as_publish().unwrap().offset(), 42);
        let r1 = msgs.get(1).reply().unwrap();
        assert_eq!(r1.error().unwrap().code(), 104);
        let d = msgs.get(2).push_().unwrap().body_as_disconnect().unwrap();
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
}
