//! History kept in JetStream, on the worker's side: the stream of each
//! namespace with `history_backend = "jetstream"`, the writes of the homes
//! and the read-backs of a channel's tail (the model and its reasons are
//! in [`crate::engine::cluster::stored`]; the home's side is in the
//! router).
//!
//! - **Streams** are created (or updated to the configuration) before the
//!   first write or read of their namespace after each (re)connection:
//!   `wsedge_<cluster>_<ns>` over `wsedge.<cluster>.hist.<ns>.>`, file
//!   storage, `max_messages_per_subject` = `history_size`, `max_age` =
//!   `history_ttl`, direct gets allowed, `history_replicas` replicas.
//! - **Writes** are published in queue order on the one connection (so a
//!   channel's writes reach the stream in offset order) with
//!   `Nats-Msg-Id` = epoch and offset; the acknowledgement is awaited
//!   beside the loop and handed to the sink. An acknowledgement marked
//!   duplicate is a failure: writes are never re-sent, so another home
//!   stored that offset first (the id fences two homes of one channel). While NATS is down a write
//!   fails at once: the home answers 100 rather than let the client wait.
//! - **A read-back** walks the channel's subject with direct gets, oldest
//!   first, up to the newest message as it was when the read began (at
//!   most `history_size` + 1 requests).
//! - **Members** of a stored channel that counts them live in the KV
//!   bucket `wsedge_<cluster>_presence` ([`crate::engine::cluster::members`]),
//!   created (or updated) before first use after each (re)connection:
//!   history 1, file storage, `max_age` [`RECORD_MAX_AGE`], per-message
//!   TTLs allowed (nats-server 2.11+). A write's puts and delete markers
//!   (`KV-Operation: DEL`, `Nats-TTL` [`MARKER_TTL`]) are published in
//!   order and their acknowledgements awaited beside the loop; any failure
//!   is answered [`StoreAnswer::MembersUnwritten`]. A whole write purges
//!   the channel's keys first. The read-back of such a channel also reads
//!   its members: an ordered consumer over `<channel hex>.>` delivering
//!   the last value per key, up to the pending count it started with.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::{ClusterOptions, ClusterSink, HistoryStream};
use crate::engine::cluster::members::{
    MARKER_TTL, MemberChange, MemberWrite, RECORD_MAX_AGE, StoredMember, bucket_name,
    channel_prefix, member_key,
};
use crate::engine::cluster::stored::{
    FLOOR_HEADER, StoreAnswer, StoreUnavailable, StoredPub, floor_id, msg_id, stream_name,
};
use crate::engine::cluster::subject::Subjects;
use crate::engine::hub::Position;
use crate::engine::wire::publication::PubData;
use crate::metrics::ClusterMetrics;

/// Longest a stream's duplicate window is (JetStream's default): a write
/// repeated within it is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// One namespace's stream.
struct Slot {
    spec: HistoryStream,
    name: String,
    /// The stream, once created on the current connection.
    stream: Mutex<Option<stream::Stream<()>>>,
}

/// Most members one channel's read-back takes: a bound against a bucket
/// filled by someone else.
const MAX_MEMBERS_READ: u64 = 1 << 20;

/// The presence bucket.
struct Bucket {
    name: String,
    /// The bucket's stream, once created on the current connection.
    stream: Mutex<Option<stream::Stream<()>>>,
}

/// The worker's JetStream side.
#[derive(Clone)]
pub(super) struct Store {
    js: jetstream::Context,
    subjects: Subjects,
    slots: Arc<Vec<Option<Arc<Slot>>>>,
    /// The presence bucket, when a stored namespace counts members.
    bucket: Option<Arc<Bucket>>,
    timeout: Duration,
    replicas: usize,
    sink: Arc<dyn ClusterSink>,
    metrics: ClusterMetrics,
}

impl Store {
    /// The store over `client`, or `None` when no namespace keeps its
    /// history in JetStream.
    pub(super) fn new(
        client: &async_nats::Client,
        opts: &ClusterOptions,
        subjects: Subjects,
        sink: Arc<dyn ClusterSink>,
        metrics: ClusterMetrics,
    ) -> Option<Store> {
        let streams = &opts.history_streams;
        if streams.iter().all(Option::is_none) {
            return None;
        }
        let (cluster, replicas, timeout) = (
            &opts.cluster_name,
            opts.history_replicas,
            opts.request_timeout,
        );
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .ack_timeout(timeout)
            // The shards' queue bounds what is in flight already.
            .max_ack_inflight(1 << 20)
            .build(client.clone());
        let slots = streams
            .iter()
            .map(|s| {
                s.as_ref().map(|spec| {
                    Arc::new(Slot {
                        name: stream_name(cluster, &spec.namespace),
                        spec: spec.clone(),
                        stream: Mutex::new(None),
                    })
                })
            })
            .collect();
        let bucket = streams.iter().flatten().any(|s| s.members).then(|| {
            Arc::new(Bucket {
                name: bucket_name(cluster),
                stream: Mutex::new(None),
            })
        });
        Some(Store {
            js,
            subjects,
            slots: Arc::new(slots),
            bucket,
            timeout,
            replicas,
            sink,
            metrics,
        })
    }

    /// The connection came back: streams are checked again before use (a
    /// NATS server without persistent storage may have lost them).
    pub(super) fn reconnected(&self) {
        for slot in self.slots.iter().flatten() {
            if let Ok(mut s) = slot.stream.try_lock() {
                *s = None;
            }
        }
        if let Some(b) = &self.bucket
            && let Ok(mut s) = b.stream.try_lock()
        {
            *s = None;
        }
    }

    fn slot(&self, ns: usize) -> Option<Arc<Slot>> {
        self.slots.get(ns).cloned().flatten()
    }

    /// The namespace's stream, created or updated to the configuration if
    /// this connection has not done it yet.
    async fn stream(&self, slot: &Slot) -> Option<stream::Stream<()>> {
        let mut held = slot.stream.lock().await;
        if let Some(s) = held.as_ref() {
            return Some(s.clone());
        }
        let ttl = slot.spec.ttl;
        let config = stream::Config {
            name: slot.name.clone(),
            subjects: vec![self.subjects.history_all(&slot.spec.namespace)],
            max_messages_per_subject: i64::try_from(slot.spec.size).unwrap_or(i64::MAX),
            max_age: ttl,
            duplicate_window: DUPLICATE_WINDOW.min(ttl),
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            description: Some(format!(
                "wsedge history of namespace {:?} (history_backend = \"jetstream\")",
                slot.spec.namespace
            )),
            ..Default::default()
        };
        match self.js.create_or_update_stream(config).await {
            Ok(_) => {
                let s = self.js.get_stream_no_info(&slot.name).await.ok()?;
                tracing::info!(stream = %slot.name, "cluster: history stream ready");
                *held = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!(stream = %slot.name, error = %e, "cluster: cannot create the history stream");
                None
            }
        }
    }

    /// Sends one write (in queue order: the caller awaits this before the
    /// next) and awaits its acknowledgement beside the loop.
    pub(super) async fn persist(
        &self,
        up: bool,
        ns: usize,
        channel: Arc<str>,
        epoch: u64,
        offset: u64,
        body: Bytes,
    ) {
        let answer = {
            let channel = channel.clone();
            move |ok: bool| StoreAnswer::Persisted {
                channel: channel.clone(),
                offset,
                ok,
            }
        };
        let Some(slot) = self.slot(ns).filter(|_| up) else {
            return self.answer(answer(false));
        };
        if self.stream(&slot).await.is_none() {
            return self.answer(answer(false));
        }
        let subject = self.subjects.history(&slot.spec.namespace, &channel);
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            msg_id(epoch, offset).as_str(),
        );
        match self.js.publish_with_headers(subject, headers, body).await {
            Ok(ack) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let ok = match ack.await {
                        // A duplicate of `<epoch>.<offset>` is never our
                        // own retry (writes are not re-sent): another home
                        // stored that offset first (two homes while live
                        // sets disagree). The id fences them: this one
                        // fails and its home reads the tail back.
                        Ok(ack) if ack.duplicate => {
                            tracing::warn!(%channel, offset, "cluster: a history write lost to another home's write of the same offset");
                            false
                        }
                        Ok(_) => true,
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster: a history write failed");
                            false
                        }
                    };
                    this.answer(answer(ok));
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster: a history write was not sent");
                self.answer(answer(false));
            }
        }
    }

    /// `history_remove`: publishes a floor marker at `floor` (in queue
    /// order, after the channel's writes) and, once it is acknowledged,
    /// purges the channel's subject below it, beside the loop.
    pub(super) async fn purge(&self, up: bool, ns: usize, channel: Arc<str>, floor: Position) {
        let purged = |ok| StoreAnswer::Purged {
            channel: channel.clone(),
            ok,
        };
        let Some(slot) = self.slot(ns).filter(|_| up) else {
            return self.answer(purged(false));
        };
        let Some(stream) = self.stream(&slot).await else {
            return self.answer(purged(false));
        };
        let subject = self.subjects.history(&slot.spec.namespace, &channel);
        let marker = StoredPub {
            epoch: floor.epoch,
            offset: floor.offset,
            data: PubData {
                bytes: Bytes::new(),
                is_json: false,
            },
            key: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            floor_id(floor.epoch, floor.offset).as_str(),
        );
        headers.insert(FLOOR_HEADER, "1");
        let ack = match self
            .js
            .publish_with_headers(subject.clone(), headers, marker.encode().into())
            .await
        {
            Ok(ack) => ack,
            Err(e) => {
                tracing::debug!(%channel, error = %e, "cluster: a history floor was not sent");
                return self.answer(purged(false));
            }
        };
        let this = self.clone();
        tokio::spawn(async move {
            let ok = match ack.await {
                Ok(ack) => match stream.purge().filter(subject).sequence(ack.sequence).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(%channel, error = %e, "cluster: cannot purge below a history floor");
                        false
                    }
                },
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "cluster: a history floor was not stored");
                    false
                }
            };
            this.answer(StoreAnswer::Purged { channel, ok });
        });
    }

    /// Reads the channel's tail back (and its members, if its namespace
    /// counts them), beside the loop.
    pub(super) fn load(&self, up: bool, ns: usize, channel: Arc<str>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut members = Vec::new();
            let mut floor = None;
            let result = match this.slot(ns).filter(|_| up) {
                Some(slot) => match this.read_tail(&slot, &channel).await {
                    Ok((tail, f)) => {
                        floor = f;
                        match slot.spec.members {
                            true => this.read_members(&channel).await.map(|m| {
                                members = m;
                                tail
                            }),
                            false => Ok(tail),
                        }
                    }
                    Err(e) => Err(e),
                },
                None => Err(StoreUnavailable),
            };
            this.answer(StoreAnswer::Loaded {
                channel,
                result,
                floor,
                members,
            });
        });
    }

    /// The presence bucket's stream, created or updated to the
    /// configuration if this connection has not done it yet.
    async fn bucket(&self) -> Option<stream::Stream<()>> {
        let b = self.bucket.as_ref()?;
        let mut held = b.stream.lock().await;
        if let Some(s) = held.as_ref() {
            return Some(s.clone());
        }
        let config = kv::Config {
            bucket: b.name.clone(),
            description: "wsedge presence of stored channels".into(),
            history: 1,
            max_age: RECORD_MAX_AGE,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            limit_markers: Some(MARKER_TTL),
            ..Default::default()
        };
        match self.js.create_or_update_key_value(config).await {
            Ok(_) => {
                let s = self
                    .js
                    .get_stream_no_info(format!("KV_{}", b.name))
                    .await
                    .ok()?;
                tracing::info!(bucket = %b.name, "cluster: presence bucket ready");
                *held = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!(bucket = %b.name, error = %e, "cluster: cannot create the presence bucket (nats-server 2.11+ is needed)");
                None
            }
        }
    }

    fn key_subject(&self, key: &str) -> String {
        let name = self.bucket.as_ref().map_or("", |b| b.name.as_str());
        format!("$KV.{name}.{key}")
    }

    /// Sends one channel's member changes (in queue order) and awaits the
    /// acknowledgements beside the loop.
    pub(super) async fn write_members(&self, up: bool, write: MemberWrite) {
        let channel = write.channel.clone();
        let unwritten = || StoreAnswer::MembersUnwritten {
            channel: channel.clone(),
        };
        if !up {
            return self.answer(unwritten());
        }
        let Some(stream) = self.bucket().await else {
            return self.answer(unwritten());
        };
        if write.whole {
            let filter = self.key_subject(&format!("{}>", channel_prefix(&channel)));
            if let Err(e) = stream.purge().filter(filter).await {
                tracing::debug!(%channel, error = %e, "cluster: cannot clear a channel's members");
                return self.answer(unwritten());
            }
        }
        let mut acks = Vec::with_capacity(write.changes.len());
        for change in write.changes {
            let (key, headers, body) = match change {
                MemberChange::Put(m) => (
                    member_key(&channel, &m.client),
                    HeaderMap::new(),
                    Bytes::from(m.encode()),
                ),
                MemberChange::Remove(client) => {
                    let mut h = HeaderMap::new();
                    h.insert("KV-Operation", "DEL");
                    h.insert(
                        async_nats::header::NATS_MESSAGE_TTL,
                        MARKER_TTL.as_secs().to_string().as_str(),
                    );
                    (member_key(&channel, &client), h, Bytes::new())
                }
            };
            match self
                .js
                .publish_with_headers(self.key_subject(&key), headers, body)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "cluster: a member write was not sent");
                    return self.answer(unwritten());
                }
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            for ack in acks {
                if let Err(e) = ack.await {
                    tracing::debug!(%channel, error = %e, "cluster: a member write failed");
                    return this.answer(StoreAnswer::MembersUnwritten { channel });
                }
            }
        });
    }

    /// The members of `channel` in the bucket: the last value of each of
    /// its keys, delete markers left out, records that do not decode
    /// counted and skipped.
    async fn read_members(&self, channel: &str) -> Result<Vec<StoredMember>, StoreUnavailable> {
        let stream = self.bucket().await.ok_or(StoreUnavailable)?;
        let filter = self.key_subject(&format!("{}>", channel_prefix(channel)));
        let read = async {
            let consumer = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: self.js.client().new_inbox(),
                    filter_subject: filter,
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    replay_policy: consumer::ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut members = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(members);
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            for _ in 0..MAX_MEMBERS_READ {
                let Some(m) = messages.next().await else {
                    return Err("the consumer ended".to_string());
                };
                let m = m.map_err(|e| e.to_string())?;
                let pending = m.info().map_err(|e| e.to_string())?.pending;
                let deleted = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                if !deleted {
                    match StoredMember::decode(&m.payload) {
                        Some(member) => members.push(member),
                        None => self.metrics.decode_error(),
                    }
                }
                if pending == 0 {
                    break;
                }
            }
            Ok::<_, String>(members)
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(members)) => Ok(members),
            Ok(Err(e)) => {
                tracing::debug!(%channel, error = %e, "cluster: cannot read a channel's members");
                Err(StoreUnavailable)
            }
            Err(_) => {
                tracing::debug!(%channel, "cluster: reading a channel's members timed out");
                Err(StoreUnavailable)
            }
        }
    }

    /// The channel's publications, oldest first, and the floor marker
    /// `history_remove` left, if it is still there.
    async fn read_tail(
        &self,
        slot: &Slot,
        channel: &str,
    ) -> Result<(Vec<StoredPub>, Option<Position>), StoreUnavailable> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let stream = self.stream(slot).await.ok_or(StoreUnavailable)?;
        let subject = self.subjects.history(&slot.spec.namespace, channel);
        let last = match stream.direct_get_last_for_subject(subject.clone()).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok((Vec::new(), None)),
            Err(e) => {
                tracing::debug!(%channel, error = %e, "cluster: cannot read a history tail");
                return Err(StoreUnavailable);
            }
        };
        let mut tail = Vec::new();
        let mut floor = None;
        let mut from = 1;
        // The subject holds at most `size` messages; the bound only guards
        // against a stream configured by someone else.
        for _ in 0..=slot.spec.size {
            let m = match stream
                .direct_get_next_for_subject(subject.clone(), Some(from))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "cluster: cannot read a history tail");
                    return Err(StoreUnavailable);
                }
            };
            let is_floor = m.headers.get(FLOOR_HEADER).is_some();
            match StoredPub::decode(&m.payload) {
                Some(p) if is_floor => {
                    floor = Some(Position {
                        epoch: p.epoch,
                        offset: p.offset,
                    })
                }
                Some(p) => tail.push(p),
                None => self.metrics.decode_error(),
            }
            if m.sequence >= last {
                break;
            }
            from = m.sequence + 1;
        }
        Ok((tail, floor))
    }

    fn answer(&self, answer: StoreAnswer) {
        if self.sink.stored(answer).is_err() {
            self.metrics
                .dropped(crate::metrics::ClusterDrop::InboxFull, 1);
        }
    }
}
