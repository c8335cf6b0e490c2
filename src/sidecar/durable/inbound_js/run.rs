//! The JetStream consumer's loop (see the parent module's doc for the
//! rules): binding the durable consumers, handing messages over,
//! settling them (ack, dead letter and term, nak with a delay), the lag,
//! the stop.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::jetstream::consumer::pull::{self, MessagesError, MessagesErrorKind};
use async_nats::jetstream::consumer::{self, AckPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap, HeaderName};
use bytes::Bytes;
use futures_util::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{DLQ_SEQUENCE, DLQ_STREAM, JsInboundOptions, JsRecord, PULL_BATCH};
use crate::sidecar::durable::inbound::{InboundAck, InboundMetrics, backoff};
use crate::sidecar::durable::worker::jetstream::{
    DLQ_MSG_ID, DLQ_PAYLOAD_BYTES, DLQ_REASON, DLQ_SUBJECT,
};
use crate::sidecar::durable::worker::transport::clean;

/// How often the consumers' lag is read.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// First pause before binding the consumers again after a failure; it
/// doubles to [`SETUP_RETRY_MAX`] (a missing stream is created by an
/// operator, not in milliseconds).
const SETUP_RETRY_MIN: Duration = Duration::from_secs(1);

/// Longest such pause.
const SETUP_RETRY_MAX: Duration = Duration::from_secs(30);

/// A consumer's messages, then `None` once its pull stream ended.
type Messages = BoxStream<'static, Option<Result<jetstream::Message, MessagesError>>>;

type EventFuture = Pin<Box<dyn Future<Output = Event> + Send>>;

/// The consumers bound to their streams, and their messages.
pub(super) struct Bound {
    consumers: Vec<PullConsumer>,
    messages: SelectAll<Messages>,
}

/// Why binding failed; `operator`: only an operator can fix it (an
/// incompatible consumer), logged as an error.
pub(super) struct SetupError {
    pub(super) message: String,
    pub(super) operator: bool,
}

impl From<String> for SetupError {
    fn from(message: String) -> Self {
        SetupError {
            message,
            operator: false,
        }
    }
}

/// Something that finished while the loop waited.
enum Event {
    /// The consumers are bound, or why not.
    Bound(Result<Bound, SetupError>),
    /// The pause after a failed binding ended: bind again.
    Setup,
    /// The node answered message `id` (or dropped the ack).
    Answered(u64, Result<Result<(), String>, oneshot::error::RecvError>),
    /// Message `id`'s dead letter left the process, or why not.
    DeadLettered(u64, Result<(), String>),
    /// An acknowledgement (`what`: ack, term, nak) went to the
    /// connection, or why not.
    Settled(&'static str, Result<(), String>),
    /// The consumers' lag, or why it is unknown.
    Lag(Result<u64, String>),
}

/// A message handed over and not settled.
struct Flight {
    acker: Acker,
    record: JsRecord,
}

/// The loop's state.
pub(super) struct Consumer {
    opts: Arc<JsInboundOptions>,
    client: Client,
    js: jetstream::Context,
    tx: mpsc::Sender<(JsRecord, InboundAck)>,
    metrics: Arc<InboundMetrics>,
    consumers: Vec<PullConsumer>,
    messages: Option<SelectAll<Messages>>,
    flights: HashMap<u64, Flight>,
    next_id: u64,
    events: FuturesUnordered<EventFuture>,
    /// Acknowledgements on their way to the connection.
    settling: usize,
    setup_failures: u32,
    lag_pending: bool,
    stopping: bool,
}

impl Consumer {
    pub(super) fn new(
        opts: JsInboundOptions,
        client: Client,
        tx: mpsc::Sender<(JsRecord, InboundAck)>,
        metrics: Arc<InboundMetrics>,
    ) -> Consumer {
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.timeout)
            .build(client.clone());
        Consumer {
            opts: Arc::new(opts),
            client,
            js,
            tx,
            metrics,
            consumers: Vec::new(),
            messages: None,
            flights: HashMap::new(),
            next_id: 0,
            events: FuturesUnordered::new(),
            settling: 0,
            setup_failures: 0,
            lag_pending: false,
            stopping: false,
        }
    }

    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        tracing::info!(
            durable = %self.opts.durable,
            subjects = ?self.opts.subjects,
            "inbound-js: consuming"
        );
        self.bind();
        let mut lag = tokio::time::interval(LAG_INTERVAL);
        lag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopping {
            InboundMetrics::set(&self.metrics.in_flight, self.flights.len() as u64);
            let read = self.flights.len() < self.opts.max_in_flight;
            tokio::select! {
                _ = &mut stop => self.stopping = true,
                item = next_message(self.messages.as_mut()), if read => {
                    self.message(item, &mut stop).await
                }
                Some(event) = self.events.next(), if !self.events.is_empty() => self.event(event),
                _ = lag.tick() => self.poll_lag(),
            }
        }
        self.finish().await;
    }

    /// Binds the consumers in the background (the outcome comes back as
    /// an event).
    fn bind(&mut self) {
        let (js, opts) = (self.js.clone(), self.opts.clone());
        self.events
            .push(Box::pin(async move { Event::Bound(bind(js, opts).await) }));
    }

    /// What the pull streams gave.
    async fn message(
        &mut self,
        item: Option<Option<Result<jetstream::Message, MessagesError>>>,
        stop: &mut oneshot::Receiver<()>,
    ) {
        let m = match item {
            Some(Some(Ok(m))) => m,
            Some(Some(Err(e))) => {
                match e.kind() {
                    // The connection is being made again, or JetStream
                    // is away: the stream asks again by itself.
                    MessagesErrorKind::Pull
                    | MessagesErrorKind::MissingHeartbeat
                    | MessagesErrorKind::NoResponders => {
                        tracing::debug!(error = %e, "inbound-js: pulling failed for now")
                    }
                    _ => tracing::warn!(error = %e, "inbound-js: pulling failed"),
                }
                return;
            }
            // A pull stream ended (the consumer deleted, a request over
            // its limits): bind everything again.
            Some(None) | None => {
                tracing::warn!("inbound-js: a consumer's messages ended; binding again");
                self.messages = None;
                self.consumers.clear();
                self.retry_bind();
                return;
            }
        };
        let (stream, sequence, delivered) = match m.info() {
            Ok(i) => (i.stream.to_owned(), i.stream_sequence, i.delivered),
            Err(e) => {
                tracing::warn!(error = %e, subject = %m.subject, "inbound-js: not a JetStream message; skipped");
                return;
            }
        };
        let (message, acker) = m.split();
        let headers = message
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(k, vs)| {
                        vs.iter()
                            .map(move |v| (k.to_string(), v.as_str().to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let record = JsRecord {
            stream,
            sequence,
            subject: message.subject.to_string(),
            headers,
            payload: message.payload,
            delivered,
        };
        InboundMetrics::add(&self.metrics.received, 1);
        let id = self.next_id;
        self.next_id += 1;
        let (ack, answer) = oneshot::channel();
        let handed = record.clone();
        // Held from now on: settled by its answer, or `nak`ed at the stop.
        self.flights.insert(id, Flight { acker, record });
        tokio::select! {
            sent = self.tx.send((handed, ack)) => {
                if sent.is_err() {
                    tracing::info!("inbound-js: the node closed its queue; stopping");
                    self.stopping = true;
                    return;
                }
            }
            _ = stop => {
                self.stopping = true;
                return;
            }
        }
        self.events
            .push(Box::pin(async move { Event::Answered(id, answer.await) }));
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Bound(Ok(bound)) => {
                if self.stopping {
                    return;
                }
                tracing::info!(
                    consumers = bound.consumers.len(),
                    "inbound-js: consumers bound"
                );
                self.setup_failures = 0;
                self.consumers = bound.consumers;
                self.messages = Some(bound.messages);
            }
            Event::Bound(Err(e)) => {
                if e.operator {
                    tracing::error!(error = %e.message, "inbound-js: cannot bind the consumers; retrying");
                } else {
                    tracing::warn!(error = %e.message, "inbound-js: cannot bind the consumers yet; retrying");
                }
                self.retry_bind();
            }
            Event::Setup => {
                if !self.stopping {
                    self.bind();
                }
            }
            Event::Answered(id, Ok(Ok(()))) => {
                if let Some(f) = self.flights.remove(&id) {
                    InboundMetrics::add(&self.metrics.acknowledged, 1);
                    self.settle(f.acker, AckKind::Ack, "ack");
                }
            }
            Event::Answered(id, Ok(Err(reason))) => self.dead_letter(id, reason),
            Event::Answered(id, Err(_)) => {
                if let Some(f) = self.flights.remove(&id) {
                    InboundMetrics::add(&self.metrics.redelivered, 1);
                    let pause = self.backoff(&f.record);
                    self.settle(f.acker, AckKind::Nak(Some(pause)), "nak");
                }
            }
            Event::DeadLettered(id, Ok(())) => {
                if let Some(f) = self.flights.remove(&id) {
                    InboundMetrics::add(&self.metrics.dead_lettered, 1);
                    self.settle(f.acker, AckKind::Term, "term");
                }
            }
            Event::DeadLettered(id, Err(e)) => {
                if let Some(f) = self.flights.remove(&id) {
                    tracing::warn!(error = %e, "inbound-js: a dead letter failed; the message comes again");
                    InboundMetrics::add(&self.metrics.retries, 1);
                    let pause = self.backoff(&f.record);
                    self.settle(f.acker, AckKind::Nak(Some(pause)), "nak");
                }
            }
            Event::Settled(what, result) => {
                self.settling = self.settling.saturating_sub(1);
                if let Err(e) = result {
                    tracing::debug!(what, error = %e, "inbound-js: an acknowledgement was not sent; the server delivers the message again after ack_wait");
                }
            }
            Event::Lag(result) => {
                self.lag_pending = false;
                match result {
                    Ok(lag) => InboundMetrics::set(&self.metrics.lag, lag),
                    Err(e) => tracing::debug!(error = %e, "inbound-js: cannot read the lag"),
                }
            }
        }
    }

    /// Binds again after a pause that grows with each failure.
    fn retry_bind(&mut self) {
        let pause = backoff(SETUP_RETRY_MIN, SETUP_RETRY_MAX, self.setup_failures);
        self.setup_failures = self.setup_failures.saturating_add(1);
        self.events.push(Box::pin(async move {
            tokio::time::sleep(pause).await;
            Event::Setup
        }));
    }

    /// The `nak` delay of `r`: doubling with each delivery, with jitter.
    fn backoff(&self, r: &JsRecord) -> Duration {
        let attempt = u32::try_from(r.delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        backoff(self.opts.retry_min, self.opts.retry_max, attempt)
    }

    /// Sends `kind` for a message (its outcome comes back as an event).
    fn settle(&mut self, acker: Acker, kind: AckKind, what: &'static str) {
        self.settling += 1;
        self.events.push(Box::pin(async move {
            Event::Settled(what, acker.ack_with(kind).await.map_err(|e| e.to_string()))
        }));
    }

    /// Publishes message `id`'s dead letter; its outcome comes back as an
    /// event.
    fn dead_letter(&mut self, id: u64, reason: String) {
        let Some(f) = self.flights.get(&id) else {
            return;
        };
        let r = f.record.clone();
        tracing::warn!(
            stream = %r.stream,
            sequence = r.sequence,
            subject = %r.subject,
            %reason,
            "inbound-js: the node refused a message for good; dead-lettered"
        );
        let (client, opts) = (self.client.clone(), self.opts.clone());
        self.events.push(Box::pin(async move {
            let sent = tokio::time::timeout(
                opts.timeout,
                publish_dead_letter(&client, &opts.dead_letter, &r, &reason),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            Event::DeadLettered(id, sent)
        }));
    }

    /// Reads the consumers' lag in the background (one read at a time).
    fn poll_lag(&mut self) {
        if self.lag_pending || self.consumers.is_empty() {
            return;
        }
        self.lag_pending = true;
        let consumers = self.consumers.clone();
        let timeout = self.opts.timeout;
        self.events.push(Box::pin(async move {
            let mut lag = 0u64;
            for c in &consumers {
                match tokio::time::timeout(timeout, c.get_info()).await {
                    Ok(Ok(info)) => {
                        lag += info.num_pending + info.num_ack_pending as u64;
                    }
                    Ok(Err(e)) => return Event::Lag(Err(e.to_string())),
                    Err(_) => return Event::Lag(Err("timed out".into())),
                }
            }
            Event::Lag(Ok(lag))
        }));
    }

    /// The stop: answers already in are settled, what is still held is
    /// `nak`ed without delay (another node takes it at once), and the
    /// acknowledgements are flushed to the server.
    async fn finish(&mut self) {
        self.stopping = true;
        while let Some(Some(event)) = self.events.next().now_or_never() {
            self.event(event);
        }
        self.messages = None;
        let held: Vec<Flight> = self.flights.drain().map(|(_, f)| f).collect();
        let naked = held.len();
        for f in held {
            self.settle(f.acker, AckKind::Nak(None), "nak");
        }
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        while self.settling > 0 {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(event)) => self.event(event),
                Ok(None) | Err(_) => break,
            }
        }
        let flushed = tokio::time::timeout(self.opts.timeout, self.client.flush()).await;
        InboundMetrics::set(&self.metrics.in_flight, 0);
        tracing::info!(
            returned = naked,
            flushed = matches!(flushed, Ok(Ok(()))),
            "inbound-js: stopped; the messages it held go to the other consumers"
        );
    }
}

/// The next of the pull streams' items; never, while none is bound.
async fn next_message(
    messages: Option<&mut SelectAll<Messages>>,
) -> Option<Option<Result<jetstream::Message, MessagesError>>> {
    match messages {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// The consumer configuration wsedge creates: pull, explicit acks, the
/// stream's subjects of the rules as filters.
pub(super) fn consumer_config(opts: &JsInboundOptions, filters: &[String]) -> pull::Config {
    let (filter_subject, filter_subjects) = match filters {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    pull::Config {
        durable_name: Some(opts.durable.clone()),
        description: Some(
            "wsedge [[durable.consume]] (created by wsedge when missing; never changed by it)"
                .into(),
        ),
        ack_policy: AckPolicy::Explicit,
        ack_wait: opts.ack_wait,
        max_ack_pending: i64::try_from(opts.max_in_flight).unwrap_or(i64::MAX),
        filter_subject,
        filter_subjects,
        ..Default::default()
    }
}

/// Why an existing consumer cannot serve `filters` (`None`: it can).
pub(super) fn incompatible(existing: &consumer::Config, filters: &[String]) -> Option<String> {
    if existing.deliver_subject.is_some() {
        return Some("is a push consumer (wsedge pulls)".into());
    }
    if existing.ack_policy != AckPolicy::Explicit {
        return Some(format!(
            "has ack policy {:?} (wsedge acknowledges each message: explicit)",
            existing.ack_policy
        ));
    }
    if existing.headers_only {
        return Some("delivers headers only".into());
    }
    let mut have: Vec<&str> = existing
        .filter_subjects
        .iter()
        .map(String::as_str)
        .chain((!existing.filter_subject.is_empty()).then_some(existing.filter_subject.as_str()))
        .collect();
    let mut want: Vec<&str> = filters.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    have.dedup();
    want.dedup();
    (have != want).then(|| format!("filters {have:?}, not the rules' {want:?}"))
}

/// Binds the durable consumer on each stream of `opts.subjects`
/// (creating it when missing) and opens its pull stream.
async fn bind(js: jetstream::Context, opts: Arc<JsInboundOptions>) -> Result<Bound, SetupError> {
    let mut by_stream: Vec<(String, Vec<String>)> = Vec::new();
    for (subject, stream) in &opts.subjects {
        let name = match stream {
            Some(s) => s.clone(),
            None => js
                .stream_by_subject(subject.as_str())
                .await
                .map_err(|e| match e.kind() {
                    GetStreamByNameErrorKind::NotFound => format!(
                        "no JetStream stream takes subject {subject:?}: create one (e.g. \
                         `nats stream add`) or name it with `stream`"
                    ),
                    _ => format!("cannot look up the stream of subject {subject:?}: {e}"),
                })?,
        };
        match by_stream.iter_mut().find(|(n, _)| *n == name) {
            Some((_, filters)) => filters.push(subject.clone()),
            None => by_stream.push((name, vec![subject.clone()])),
        }
    }
    let mut bound = Bound {
        consumers: Vec::new(),
        messages: SelectAll::new(),
    };
    for (name, filters) in by_stream {
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| format!("stream {name:?}: {e}"))?;
        let durable = &opts.durable;
        let operator = |why: String| SetupError {
            message: format!(
                "stream {name:?} already has a consumer {durable:?} that {why}; wsedge never \
                 changes an existing consumer: remove it (`nats consumer rm {name} {durable}`) \
                 or set [durable] consume_group to another name"
            ),
            operator: true,
        };
        let wanted = consumer_config(&opts, &filters);
        let consumer: PullConsumer = stream
            .get_or_create_consumer(durable, wanted.clone())
            .await
            .map_err(|e| match e.kind() {
                ConsumerErrorKind::InvalidConsumerType => {
                    operator("is a push consumer (wsedge pulls)".into())
                }
                _ => SetupError::from(format!(
                    "cannot create consumer {durable:?} on stream {name:?}: {e}"
                )),
            })?;
        let have = &consumer.cached_info().config;
        if let Some(why) = incompatible(have, &filters) {
            return Err(operator(why));
        }
        if have.max_ack_pending != wanted.max_ack_pending || have.ack_wait != wanted.ack_wait {
            tracing::info!(
                stream = %name,
                max_ack_pending = have.max_ack_pending,
                ack_wait = ?have.ack_wait,
                "inbound-js: the existing consumer's limits differ from wsedge's defaults; kept"
            );
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .map_err(|e| format!("cannot pull from consumer {durable:?} of {name:?}: {e}"))?;
        let ended = futures_util::stream::once(async { None });
        bound.messages.push(messages.map(Some).chain(ended).boxed());
        bound.consumers.push(consumer);
    }
    Ok(bound)
}

/// Publishes `r`'s dead letter on `subject` (core NATS) and flushes it:
/// its headers but the `Nats-*` ones, the reason and where it came from;
/// the payload left out if the whole would not fit the server.
pub(super) async fn publish_dead_letter(
    client: &Client,
    subject: &str,
    r: &JsRecord,
    reason: &str,
) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    let mut size = 64;
    for (k, v) in &r.headers {
        let server_header = k.len() >= 5 && k[..5].eq_ignore_ascii_case("nats-");
        let Ok(name) = HeaderName::from_str(k) else {
            continue;
        };
        if !server_header {
            size += k.len() + v.len() + 4;
            headers.append(name, v.as_str());
        }
    }
    let sequence = r.sequence.to_string();
    let ours = [
        (DLQ_REASON, clean(reason)),
        (DLQ_STREAM, clean(&r.stream)),
        (DLQ_SEQUENCE, sequence.clone()),
        (DLQ_SUBJECT, clean(&r.subject)),
    ];
    for (k, v) in ours {
        size += k.len() + v.len() + 4;
        headers.insert(k, v);
    }
    if let Some(id) = r.header("Nats-Msg-Id") {
        headers.insert(DLQ_MSG_ID, clean(&id));
    }
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("wsedge-dlq:{}:{sequence}", r.stream),
    );
    size += 2 * (r.stream.len() + 64);
    let mut sent = None;
    if size + r.payload.len() <= client.max_payload() {
        match client
            .publish_with_headers(subject.to_owned(), headers.clone(), r.payload.clone())
            .await
        {
            // The estimate was short: send it without the payload.
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {}
            other => sent = Some(other),
        }
    }
    let sent = match sent {
        Some(s) => s,
        None => {
            headers.insert(DLQ_PAYLOAD_BYTES, r.payload.len().to_string());
            client
                .publish_with_headers(subject.to_owned(), headers, Bytes::new())
                .await
        }
    };
    sent.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())
}
