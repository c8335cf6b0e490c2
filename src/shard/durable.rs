//! The shell's side of durable events: the node's sinks as the shards see
//! them ([`DurableRoutes`]: per namespace, the worker's queue and where
//! its records go) and the record built from an engine event.
//!
//! The engine makes a [`PublicationEvent`] at the channel's home before it
//! accepts the publication; the shard turns it into a [`DurableRecord`]
//! here and queues it with the namespace's worker. A refusal (queue or
//! spill full, worker stopped) goes back to the engine, which answers the
//! publisher 112 and publishes nothing.
//!
//! # The record
//!
//! - JetStream subject `<subject>.<channel token>` (the channel's
//!   subject token, [`channel_token`]: consumers can filter one
//!   channel); Kafka topic `<topic>`, key = the channel (a channel's
//!   events in one partition, in order).
//! - Message id (`Nats-Msg-Id`, Kafka header `wsedge-id`): the event id
//!   `<channel>:<epoch, 16 hex>:<offset>`.
//! - Payload, JSON: `{"type":"publication","id","channel","epoch",
//!   "offset","user","client","time","data"|"b64data","idempotency_key"?}`
//!   (`data` when the payload is JSON, else `b64data`, standard base64;
//!   `time` in Unix ms; `user`/`client` empty for the server API).

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::bridge::Inbox;
use crate::config::durable::DurableTarget;
use crate::config::{Config, DurableEvents};
use crate::engine::cluster::subject::channel_token;
use crate::engine::durable::{DurableEvent, PresenceChange, PublicationEvent, StoryUpdate};
use crate::engine::namespace::Namespaces;
use crate::engine::wire::epoch_str;
use crate::sidecar::WorkerThread;
use crate::sidecar::durable::record::DurableRecord;
use crate::sidecar::durable::spill::SpillOptions;
use crate::sidecar::durable::worker::{
    AckSender, DurableClient, DurableOptions, Refused, SinkOptions, StreamSpec, TopicSpec,
    default_connect_options,
};

/// One namespace's sink.
#[derive(Debug, Clone)]
pub struct Route {
    /// The worker's queue.
    pub client: DurableClient,
    /// Where the records go.
    pub target: DurableTarget,
}

/// A namespace's sinks, by the events they keep.
#[derive(Debug, Clone, Default)]
pub struct NamespaceRoutes {
    /// `durable`: publications.
    pub publications: Option<Route>,
    /// `durable_presence`: presence joins and leaves.
    pub presence: Option<Route>,
    /// `durable_collab`: story updates.
    pub collab: Option<Route>,
}

impl NamespaceRoutes {
    /// The route of `events`, if the namespace has one.
    pub fn get(&self, events: DurableEvents) -> Option<&Route> {
        match events {
            DurableEvents::Publications => self.publications.as_ref(),
            DurableEvents::Presence => self.presence.as_ref(),
            DurableEvents::Collab => self.collab.as_ref(),
        }
    }

    fn slot(&mut self, events: DurableEvents) -> &mut Option<Route> {
        match events {
            DurableEvents::Publications => &mut self.publications,
            DurableEvents::Presence => &mut self.presence,
            DurableEvents::Collab => &mut self.collab,
        }
    }
}

/// The node's durable sinks, by namespace index.
#[derive(Debug, Default)]
pub struct DurableRoutes {
    by_ns: Vec<NamespaceRoutes>,
    /// The workers' clients with their sink kind, for metrics.
    sinks: Vec<(&'static str, DurableClient)>,
}

/// The running workers (stop them after the shards drained, so every
/// event the shards queued reaches the spill).
pub struct DurableWorkers {
    threads: Vec<(&'static str, WorkerThread)>,
}

impl DurableWorkers {
    /// Stops every worker: each writes what it holds to its spill and
    /// syncs it.
    pub fn shutdown(self) {
        for (kind, t) in self.threads {
            tracing::info!(sink = kind, "durable: stopping the worker");
            t.shutdown();
        }
    }
}

impl DurableRoutes {
    /// Starts a worker per sink kind that a namespace uses and routes
    /// each durable namespace to it; `None` when no namespace is durable.
    /// The NATS connection of `jetstream:` sinks is `[durable] nats_url`,
    /// else `[cluster] nats_url` with the cluster's credentials.
    pub fn start(config: &Config) -> io::Result<Option<(DurableRoutes, DurableWorkers)>> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let targets = config.durable_targets().map_err(|e| invalid(e.0))?;
        if targets.is_empty() {
            return Ok(None);
        }
        let namespaces = Namespaces::from_config(config).map_err(|e| invalid(e.to_string()))?;
        let d = &config.durable;
        let base = d.spill_dir();
        let mut routes = DurableRoutes::default();
        let mut workers = DurableWorkers {
            threads: Vec::new(),
        };
        // One worker per kind, creating the sinks every namespace of that
        // kind names.
        let mut clients: Vec<(&'static str, DurableClient)> = Vec::new();
        for kind in ["jetstream", "kafka"] {
            let mine: Vec<&DurableTarget> = targets
                .iter()
                .map(|(_, _, t)| t)
                .filter(|t| t.kind() == kind)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let dir = base.join(kind);
            let spill = spill_options(config, dir.clone());
            let (mut opts, connect) = match kind {
                "jetstream" => {
                    let (url, connect) = nats_connection(config)?;
                    let mut opts = DurableOptions::jetstream(url, &dir);
                    if let SinkOptions::JetStream(js) = &mut opts.sink
                        && d.create_sinks
                    {
                        js.streams = streams(&mine);
                    }
                    (opts, connect)
                }
                _ => {
                    let brokers = d.kafka_brokers.clone().ok_or_else(|| {
                        invalid("a kafka durable sink needs [durable] kafka_brokers".into())
                    })?;
                    let mut opts = DurableOptions::kafka(brokers, &dir);
                    if let SinkOptions::Kafka(k) = &mut opts.sink {
                        k.max_message_bytes = k.max_message_bytes.max(spill.max_record);
                        k.config = d
                            .kafka_config
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        if d.create_sinks {
                            k.topics = topics(&mine, d.kafka_partitions, d.kafka_replication);
                        }
                    }
                    let connect: NatsConnect = Box::new(default_connect_options);
                    (opts, connect)
                }
            };
            opts.spill = spill;
            opts.queue_capacity = d.queue_capacity;
            opts.dead_letter_subject = d.dead_letter.clone();
            let (client, thread) = crate::sidecar::durable::worker::start(opts, connect)?;
            workers.threads.push((kind, thread));
            clients.push((kind, client));
        }
        routes.sinks = clients.clone();
        for (name, events, target) in targets {
            let Some(client) = clients
                .iter()
                .find(|(k, _)| *k == target.kind())
                .map(|(_, c)| c.clone())
            else {
                continue;
            };
            let Some(id) = namespaces
                .iter()
                .find(|(_, n, _)| *n == name)
                .map(|(id, _, _)| id)
            else {
                continue;
            };
            let i = id.index();
            if routes.by_ns.len() <= i {
                routes.by_ns.resize(i + 1, NamespaceRoutes::default());
            }
            tracing::info!(
                namespace = name,
                events = events.key(),
                sink = ?target,
                "durable: namespace routed"
            );
            *routes.by_ns[i].slot(events) = Some(Route { client, target });
        }
        Ok(Some((routes, workers)))
    }

    /// The publications' route of namespace index `ns`, if it is durable.
    pub fn route(&self, ns: usize) -> Option<&Route> {
        self.route_of(ns, DurableEvents::Publications)
    }

    /// Namespace index `ns`'s route for `events`, if it has one.
    pub fn route_of(&self, ns: usize, events: DurableEvents) -> Option<&Route> {
        self.by_ns.get(ns).and_then(|r| r.get(events))
    }

    /// Whether namespace `ns`'s sink for `events` can take an event now
    /// (false also when it has none).
    pub fn has_room(&self, ns: usize, events: DurableEvents) -> bool {
        self.route_of(ns, events)
            .is_some_and(|r| r.client.has_room())
    }

    /// Queues a presence or story event with namespace `ns`'s sink for
    /// it. `Err(None)`: the namespace has no such sink (the caller keeps
    /// a story update in the embedded buffer).
    pub fn emit_event(&self, ns: usize, event: &DurableEvent) -> Result<(), Option<Refused>> {
        let (route, record) = match event {
            DurableEvent::Presence(p) => {
                let route = self.route_of(ns, DurableEvents::Presence).ok_or(None)?;
                (route, presence_record(p, &route.target))
            }
            DurableEvent::StoryContentUpdate(u) => {
                let route = self.route_of(ns, DurableEvents::Collab).ok_or(None)?;
                (route, story_record(u, &route.target))
            }
            DurableEvent::Publication(_) => return Err(None),
        };
        route.client.emit(record).map_err(Some)
    }

    /// The workers' clients, with their sink kind.
    pub fn sinks(&self) -> &[(&'static str, DurableClient)] {
        &self.sinks
    }

    /// Queues `event` with namespace `ns`'s worker (`ack`: answered when
    /// the sink or the synced spill has it).
    pub fn emit(
        &self,
        ns: usize,
        event: &PublicationEvent,
        ack: Option<AckSender>,
    ) -> Result<(), Refused> {
        let Some(route) = self.route(ns) else {
            return Err(Refused::Stopped);
        };
        let record = record(event, &route.target);
        match ack {
            Some(done) => route.client.emit_acked(record, done),
            None => route.client.emit(record),
        }
    }
}

/// A sink's spill in `dir`, sized from `[durable]`: a record holds a
/// largest message (base64 adds a third) and its envelope; segments are a
/// sixteenth of `max_bytes` (so acknowledged records pin little of it),
/// between one record and 64 MiB.
pub fn spill_options(config: &Config, dir: std::path::PathBuf) -> SpillOptions {
    let d = &config.durable;
    let max_record = config.max_message_size / 3 * 4 + 64 * 1024;
    let header = crate::sidecar::durable::spill::RECORD_HEADER as u64;
    SpillOptions {
        max_bytes: d.max_bytes,
        segment_bytes: (d.max_bytes / 16)
            .min(64 << 20)
            .max(max_record as u64 + header),
        max_record,
        fsync: d.fsync_policy(),
        ..SpillOptions::new(dir)
    }
}

/// The NATS connect options factory a worker calls per connection.
pub type NatsConnect = Box<dyn Fn() -> async_nats::ConnectOptions + Send>;

/// The JetStream streams wsedge creates when missing: one per subject
/// prefix, `WSEDGE_DURABLE_<PREFIX>` over `<prefix>.>`.
fn streams(targets: &[&DurableTarget]) -> Vec<StreamSpec> {
    let mut out: Vec<StreamSpec> = Vec::new();
    for t in targets {
        if let DurableTarget::Jetstream(subject) = t {
            let name = format!("WSEDGE_DURABLE_{}", stream_token(subject));
            if !out.iter().any(|s| s.name == name) {
                out.push(StreamSpec::new(name, vec![format!("{subject}.>")]));
            }
        }
    }
    out
}

/// `subject` as a stream name's part: `A-Z 0-9 _ -` only (a stream name
/// may not hold `.`, `*`, `>` or spaces), uppercase.
fn stream_token(subject: &str) -> String {
    subject
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' => c.to_ascii_uppercase(),
            _ => '_',
        })
        .collect()
}

/// The Kafka topics wsedge creates when missing.
fn topics(targets: &[&DurableTarget], partitions: u32, replication: u32) -> Vec<TopicSpec> {
    let mut out: Vec<TopicSpec> = Vec::new();
    for t in targets {
        if let DurableTarget::Kafka(topic) = t
            && !out.iter().any(|s| &s.name == topic)
        {
            out.push(TopicSpec::new(
                topic.clone(),
                i32::try_from(partitions).unwrap_or(i32::MAX),
                i32::try_from(replication).unwrap_or(i32::MAX),
            ));
        }
    }
    out
}

/// The servers and connect options of the node's durable NATS traffic
/// (the JetStream sinks, the JetStream consumer of `[[durable.consume]]`):
/// `[durable] nats_url`, else `[cluster] nats_url` with the cluster's
/// credentials and CA.
pub fn nats_connection(config: &Config) -> io::Result<(String, NatsConnect)> {
    if let Some(url) = &config.durable.nats_url {
        return Ok((url.clone(), Box::new(default_connect_options)));
    }
    let cluster = config.cluster.options().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "durable NATS traffic (a jetstream sink, [[durable.consume]] subjects) needs \
             [durable] nats_url or [cluster] nats_url",
        )
    })?;
    let auth = crate::sidecar::cluster::NatsAuth::from_options(&cluster)?;
    let name = format!("wsedge durable {}", cluster.node_name);
    Ok((
        cluster.servers.join(","),
        Box::new(move || auth.apply(async_nats::ConnectOptions::new().name(&name))),
    ))
}

/// The waiter of a `durable_ack` publisher's event: the sink's outcome
/// goes to the home shard's inbox (never refused) as wait `token`'s
/// confirmation. If the worker drops it unanswered (a refusal, a stop),
/// the shard hears "not confirmed": a wait is never left open.
pub fn confirmation(inbox: Arc<Inbox>, token: u64) -> AckSender {
    struct Guard {
        inbox: Arc<Inbox>,
        token: u64,
        sent: bool,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.sent {
                self.inbox.confirm_durable(self.token, false);
            }
        }
    }
    let mut guard = Guard {
        inbox,
        token,
        sent: false,
    };
    AckSender::callback(move |outcome| {
        if let Err(e) = &outcome {
            tracing::debug!(error = %e, "durable: an event a publisher waits for is not confirmed");
        }
        guard.sent = true;
        guard.inbox.confirm_durable(guard.token, outcome.is_ok());
    })
}

/// The JSON payload of a publication's record.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    user: &'a str,
    client: &'a str,
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

/// The record of `event` for `target` (see the module doc).
pub fn record(event: &PublicationEvent, target: &DurableTarget) -> DurableRecord {
    let id = event.id();
    let mut epoch = [0u8; 16];
    let json = event
        .data
        .is_json
        .then(|| std::str::from_utf8(&event.data.bytes).ok())
        .flatten()
        .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
    let payload = Payload {
        kind: "publication",
        id: &id,
        channel: &event.channel,
        epoch: epoch_str(event.epoch, &mut epoch),
        offset: event.offset,
        user: &event.user,
        client: &event.client,
        time: event.at_ms,
        data: json,
        b64data: json
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&event.data.bytes)),
        idempotency_key: event.idempotency_key.as_deref(),
    };
    let bytes = serde_json::to_vec(&payload).expect("a payload serializes");
    DurableRecord::new(destination(&event.channel, target), id, Bytes::from(bytes))
        .with_key(event.channel.to_string())
}

/// The subject (JetStream) or topic (Kafka) of `channel`'s events.
fn destination(channel: &str, target: &DurableTarget) -> String {
    match target {
        DurableTarget::Jetstream(s) => format!("{s}.{}", channel_token(channel)),
        DurableTarget::Kafka(t) => t.clone(),
    }
}

/// `info` as raw JSON, when it is valid JSON.
fn raw_json(bytes: &[u8]) -> Option<&RawValue> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
}

/// The JSON payload of a presence event's record.
#[derive(Serialize)]
struct PresencePayload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    channel: &'a str,
    user: &'a str,
    client: &'a str,
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
}

/// The record of presence event `event` for `target`: keyed by channel,
/// like a publication's (a channel's joins and leaves in order).
pub fn presence_record(event: &PresenceChange, target: &DurableTarget) -> DurableRecord {
    let id = event.id();
    let payload = PresencePayload {
        kind: if event.joined {
            "presence.join"
        } else {
            "presence.leave"
        },
        id: &id,
        channel: &event.channel,
        user: &event.user,
        client: &event.client,
        time: event.at_ms,
        reason: event.reason.map(|r| r.as_str()),
        info: event.info.as_deref().and_then(raw_json),
    };
    let bytes = serde_json::to_vec(&payload).expect("a payload serializes");
    DurableRecord::new(destination(&event.channel, target), id, Bytes::from(bytes))
        .with_key(event.channel.to_string())
}

/// The JSON payload of a story update's record.
#[derive(Serialize)]
struct StoryPayload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    channel: &'a str,
    section: &'a str,
    version: u64,
    user: &'a str,
    client: &'a str,
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

/// The record of story update `update` for `target`: keyed by the
/// story's channel (its updates in version order).
pub fn story_record(update: &StoryUpdate, target: &DurableTarget) -> DurableRecord {
    let id = update.id();
    let json = raw_json(&update.data);
    let payload = StoryPayload {
        kind: "story.content.update",
        id: &id,
        channel: &update.story,
        section: &update.section,
        version: update.version,
        user: &update.user,
        client: &update.client,
        time: update.at_ms,
        data: json,
        b64data: json
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&update.data)),
    };
    let bytes = serde_json::to_vec(&payload).expect("a payload serializes");
    DurableRecord::new(destination(&update.story, target), id, Bytes::from(bytes))
        .with_key(update.story.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::wire::publication::PubData;

    fn event(data: &[u8], is_json: bool) -> PublicationEvent {
        PublicationEvent {
            channel: Arc::from("chat:room 1"),
            epoch: 0xab,
            offset: 7,
            user: Arc::from("alice"),
            client: Arc::from("c1"),
            at_ms: 1_700_000_000_000,
            data: PubData {
                bytes: Bytes::copy_from_slice(data),
                is_json,
            },
            idempotency_key: Some("k1".into()),
        }
    }

    #[test]
    fn a_json_publication_becomes_a_jetstream_record() {
        let e = event(br#"{"text":"hi"}"#, true);
        let r = record(&e, &DurableTarget::Jetstream("events.chat".into()));
        assert_eq!(r.msg_id, "chat:room 1:00000000000000ab:7");
        assert_eq!(
            r.subject,
            format!("events.chat.{}", channel_token("chat:room 1"))
        );
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "publication",
                "id": "chat:room 1:00000000000000ab:7",
                "channel": "chat:room 1",
                "epoch": "00000000000000ab",
                "offset": 7,
                "user": "alice",
                "client": "c1",
                "time": 1_700_000_000_000u64,
                "data": {"text": "hi"},
                "idempotency_key": "k1",
            })
        );
    }

    #[test]
    fn binary_data_is_base64_and_kafka_keeps_the_topic() {
        let e = event(&[0, 159, 146, 150], false);
        let r = record(&e, &DurableTarget::Kafka("chat".into()));
        assert_eq!(r.subject, "chat");
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["b64data"], "AJ+Slg==");
        assert!(v.get("data").is_none());
    }
}
