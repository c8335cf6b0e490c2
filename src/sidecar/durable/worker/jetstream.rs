//! The JetStream transport: one connection to NATS and what travels on
//! it: the fenced client on its own I/O thread, the streams created when
//! missing, a batch in flight (publish in order, await the
//! acknowledgements, dead-letter what is refused for good), and which
//! errors are permanent (see the parent module's doc for the rules).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::client::PublishErrorKind as CorePublishErrorKind;
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode, stream};
use async_nats::{
    Client, ConnectError, ConnectOptions, Event, HeaderMap, ServerAddr, SubjectError,
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::options::{StreamSpec, is_nats_subject};
use super::transport::{self, Done, Failure, Landed, Landing, Outgoing, Transport, clean};

/// The reconnect delay of a fenced client: never, in effect (the worker
/// drops the client, and its I/O thread, long before).
const NEVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The duplicate window of the streams the worker creates: JetStream's
/// default, stated (a record sent again within it is stored once).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Headers of a dead letter.
pub(in crate::sidecar::durable) const DLQ_REASON: &str = "Wsedge-Dlq-Reason";
/// The subject the record was for.
pub(in crate::sidecar::durable) const DLQ_SUBJECT: &str = "Wsedge-Dlq-Subject";
/// The record's message id.
pub(in crate::sidecar::durable) const DLQ_MSG_ID: &str = "Wsedge-Dlq-Msg-Id";
/// The payload's size, when it was left out (too large for the server).
pub(in crate::sidecar::durable) const DLQ_PAYLOAD_BYTES: &str = "Wsedge-Dlq-Payload-Bytes";

/// JetStream errors no retry can cure: the message is over the stream's
/// `max_msg_size`, or its headers over the server's limit.
const PERMANENT_CODES: [ErrorCode; 2] = [
    ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
    ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
];

/// The JetStream transport: how to connect (servers, the caller's
/// options factory), the streams to create, where dead letters go.
pub(super) struct JetStream {
    pub(super) servers: Vec<ServerAddr>,
    pub(super) connect: Box<dyn Fn() -> ConnectOptions + Send>,
    pub(super) spec: ConnectSpec,
    pub(super) streams: Vec<StreamSpec>,
    pub(super) dlq: Arc<str>,
}

impl Transport for JetStream {
    type Session = Session;
    const BROKER: &'static str = "NATS";

    fn connect(&mut self) -> std::io::Result<transport::Connecting<Session>> {
        let mut attempt = connect((self.connect)(), self.servers.clone(), self.spec.clone())?;
        let streams = self.streams.clone();
        Ok(Box::pin(async move {
            let (client, js) = attempt.outcome().await?;
            create_streams(&js, &streams).await?;
            Ok(attempt.into_session(client, js))
        }))
    }

    async fn lost(session: &mut Session) -> String {
        session.lost().await
    }

    fn fly(&self, session: &Session, batch: Vec<Outgoing>) -> Landing {
        fly(session, batch, self.dlq.clone(), self.spec.timeout)
    }
}

/// Creates each of `streams` that does not exist (file storage, the
/// duplicate window, a description); one that exists is left as it is,
/// and so is the spec when another stream already takes its subjects.
async fn create_streams(js: &jetstream::Context, streams: &[StreamSpec]) -> Result<(), String> {
    for spec in streams {
        let config = stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            description: Some(
                "wsedge durable events (created by wsedge when missing; never changed by it)"
                    .into(),
            ),
            ..Default::default()
        };
        // Looks the stream up first and creates it only on a 404.
        match js.get_or_create_stream(config).await {
            Ok(_) => {}
            // Created by another node in between; or the operator's own
            // stream already takes these subjects (then it is the sink).
            Err(e)
                if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NAME_EXIST
                    || j.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP) => {}
            Err(e) => return Err(format!("cannot create stream {:?}: {e}", spec.name)),
        }
    }
    Ok(())
}

/// A current-thread runtime on its own thread, running one client's
/// connection; dropping it ends the thread and drops everything the
/// client still held (the fence).
pub(super) struct IoThread {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    fn spawn() -> std::io::Result<IoThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("wsedge-durable-io".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(IoThread {
            handle,
            _stop: stop,
        })
    }
}

/// A connection being made.
pub(super) struct Attempt {
    io: IoThread,
    join: JoinHandle<Result<(Client, jetstream::Context), ConnectError>>,
    events: mpsc::UnboundedReceiver<Event>,
    fenced: Arc<AtomicBool>,
}

/// A connection that is up.
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) js: jetstream::Context,
    events: mpsc::UnboundedReceiver<Event>,
    _io: IoThread,
}

/// What a connection attempt needs besides the servers.
#[derive(Debug, Clone)]
pub(super) struct ConnectSpec {
    /// Commands the client may hold: what the worker has in flight.
    pub(super) capacity: usize,
    /// The context's timeouts.
    pub(super) timeout: Duration,
}

/// Starts connecting, on a new I/O thread.
pub(super) fn connect(
    options: ConnectOptions,
    servers: Vec<ServerAddr>,
    spec: ConnectSpec,
) -> std::io::Result<Attempt> {
    let io = IoThread::spawn()?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let fenced = Arc::new(AtomicBool::new(false));
    let fence = fenced.clone();
    let options = options
        .client_capacity(spec.capacity)
        // Before the first connection, each server once, at once (the
        // worker paces whole attempts); after it, never.
        .reconnect_delay_callback(move |_| match fence.load(Ordering::Acquire) {
            true => NEVER,
            false => Duration::ZERO,
        })
        .event_callback(move |event| {
            let _ = events_tx.send(event);
            std::future::ready(())
        });
    let join = io.handle.spawn(async move {
        let client = options.connect(servers).await?;
        // Built here: the context's acker task runs on this thread.
        let js = jetstream::ContextBuilder::new()
            .timeout(spec.timeout)
            .ack_timeout(spec.timeout)
            .max_ack_inflight(spec.capacity)
            .build(client.clone());
        Ok((client, js))
    });
    Ok(Attempt {
        io,
        join,
        events,
        fenced,
    })
}

impl Attempt {
    /// Waits for the attempt's outcome (cancel-safe).
    pub(super) async fn outcome(&mut self) -> Result<(Client, jetstream::Context), String> {
        match (&mut self.join).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the connect task ended: {e}")),
        }
    }

    /// The session, once [`Attempt::outcome`] gave the client: from
    /// now on the client never reconnects.
    pub(super) fn into_session(self, client: Client, js: jetstream::Context) -> Session {
        self.fenced.store(true, Ordering::Release);
        Session {
            client,
            js,
            events: self.events,
            _io: self.io,
        }
    }
}

impl Session {
    /// The next event that ends the session: the connection lost or the
    /// client closed (cancel-safe).
    pub(super) async fn lost(&mut self) -> String {
        loop {
            match self.events.recv().await {
                Some(Event::Disconnected) => return "disconnected".into(),
                Some(Event::Closed) | None => return "the client closed".into(),
                Some(Event::LameDuckMode) => {
                    tracing::info!("durable: the NATS server is entering lame duck mode")
                }
                Some(e) => tracing::debug!(event = %e, "durable: NATS event"),
            }
        }
    }
}

/// How an error is handled.
enum Class {
    Permanent(String),
    Failed(Failure),
}

fn classify(e: &PublishError) -> Class {
    let text = e.to_string();
    let source = std::error::Error::source(e);
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => Class::Permanent(text),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Class::Failed(Failure::Connection(text))
        }
        PublishErrorKind::StreamNotFound | PublishErrorKind::MaxAckPending => {
            Class::Failed(Failure::Broker(text))
        }
        PublishErrorKind::Other => {
            if let Some(js) = source.and_then(|s| s.downcast_ref::<jetstream::Error>()) {
                let text = js.to_string();
                return match PERMANENT_CODES.contains(&js.error_code()) {
                    true => Class::Permanent(text),
                    false => Class::Failed(Failure::Broker(text)),
                };
            }
            if source.is_some_and(|s| s.is::<SubjectError>()) {
                return Class::Permanent(text);
            }
            Class::Failed(Failure::Connection(text))
        }
    }
}

/// What is in flight between `publish` and its acknowledgement.
enum Sent {
    Ack(jetstream::context::PublishAckFuture),
    Rejected(String),
    Failed(Failure),
}

/// Sends `batch` in order on `session`'s connection, awaits the
/// acknowledgements (all within `timeout` of the start) and dead-letters
/// what is refused for good, publishing to `dlq` (then flushing the
/// connection, within `timeout` again). Stops at the first
/// failure: records after it are not done (some may have been stored:
/// sent again, they are duplicates).
pub(super) fn fly(
    session: &Session,
    batch: Vec<Outgoing>,
    dlq: Arc<str>,
    timeout: Duration,
) -> Landing {
    let (client, js) = (session.client.clone(), session.js.clone());
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sent = Vec::with_capacity(batch.len());
        for rec in &batch {
            if let Some(reason) = &rec.reject {
                sent.push(Sent::Rejected(reason.clone()));
                continue;
            }
            if !is_nats_subject(&rec.subject) {
                sent.push(Sent::Rejected(format!(
                    "invalid subject {:?}",
                    clean(&rec.subject)
                )));
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, rec.msg_id.as_str());
            let publish =
                js.publish_with_headers(rec.subject.clone(), headers, rec.payload.clone());
            match tokio::time::timeout_at(deadline, publish).await {
                Ok(Ok(ack)) => sent.push(Sent::Ack(ack)),
                Ok(Err(e)) => match classify(&e) {
                    Class::Permanent(reason) => sent.push(Sent::Rejected(reason)),
                    Class::Failed(f) => {
                        sent.push(Sent::Failed(f));
                        break;
                    }
                },
                Err(_) => {
                    sent.push(Sent::Failed(Failure::Connection(
                        "publishing timed out".into(),
                    )));
                    break;
                }
            }
        }
        let mut landed = Landed::default();
        let mut first_dead = None;
        for (i, s) in sent.into_iter().enumerate() {
            let done = match s {
                Sent::Ack(ack) => match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(ack)) => Done::Stored {
                        duplicate: ack.duplicate,
                    },
                    Ok(Err(e)) => match classify(&e) {
                        Class::Permanent(reason) => Done::DeadLettered(reason),
                        Class::Failed(f) => {
                            landed.failure = Some(f);
                            break;
                        }
                    },
                    Err(_) => {
                        landed.failure =
                            Some(Failure::Connection("no acknowledgement in time".into()));
                        break;
                    }
                },
                Sent::Rejected(reason) => Done::DeadLettered(reason),
                Sent::Failed(f) => {
                    landed.failure = Some(f);
                    break;
                }
            };
            if let Done::DeadLettered(reason) = &done {
                if let Err(e) = dead_letter(&client, &dlq, &batch[i], reason).await {
                    landed.failure = Some(Failure::Connection(format!(
                        "dead-letter publish failed: {e}"
                    )));
                    break;
                }
                first_dead.get_or_insert(i);
            }
            landed.done.push(done);
        }
        // A dead letter counts as done only once it left this process.
        if let Some(first) = first_dead {
            let flushed = tokio::time::timeout(timeout, client.flush()).await;
            let error = match flushed {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".into()),
            };
            if let Some(e) = error {
                landed.done.truncate(first);
                landed.failure = Some(Failure::Connection(format!(
                    "dead-letter flush failed: {e}"
                )));
            }
        }
        landed
    })
}

/// Publishes `rec`'s dead letter on `dlq` (core NATS), the payload left
/// out if the whole would not fit the server.
async fn dead_letter(
    client: &Client,
    dlq: &str,
    rec: &Outgoing,
    reason: &str,
) -> Result<(), async_nats::client::PublishError> {
    let (reason, subject, msg_id) = (clean(reason), clean(&rec.subject), clean(&rec.msg_id));
    let mut headers = HeaderMap::new();
    headers.insert(DLQ_REASON, reason.as_str());
    headers.insert(DLQ_SUBJECT, subject.as_str());
    headers.insert(DLQ_MSG_ID, msg_id.as_str());
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    // The header block's bytes, generously ("NATS/1.0", each
    // "<name>: <value>" line, the size header that may be added).
    let overhead = 128 + reason.len() + subject.len() + 2 * msg_id.len();
    tracing::warn!(
        %subject,
        %msg_id,
        %reason,
        "durable: the sink refused a record for good; dead-lettered"
    );
    if overhead + rec.payload.len() <= client.max_payload() {
        match client
            .publish_with_headers(dlq.to_owned(), headers.clone(), rec.payload.clone())
            .await
        {
            // The estimate was short: send it without the payload.
            Err(e) if e.kind() == CorePublishErrorKind::MaxPayloadExceeded => {}
            other => return other,
        }
    }
    headers.insert(DLQ_PAYLOAD_BYTES, rec.payload.len().to_string().as_str());
    client
        .publish_with_headers(dlq.to_owned(), headers, Bytes::new())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_retried_errors() {
        let permanent = |e: PublishError| matches!(classify(&e), Class::Permanent(_));
        let conn = |e: PublishError| matches!(classify(&e), Class::Failed(Failure::Connection(_)));
        let broker = |e: PublishError| matches!(classify(&e), Class::Failed(Failure::Broker(_)));
        assert!(permanent(PublishError::new(
            PublishErrorKind::MaxPayloadExceeded
        )));
        assert!(permanent(PublishError::with_source(
            PublishErrorKind::Other,
            SubjectError::InvalidFormat
        )));
        assert!(conn(PublishError::new(PublishErrorKind::TimedOut)));
        assert!(conn(PublishError::new(PublishErrorKind::BrokenPipe)));
        assert!(conn(PublishError::new(PublishErrorKind::Other)));
        assert!(broker(PublishError::new(PublishErrorKind::StreamNotFound)));
        let js = |code: u64| {
            let e: jetstream::Error = serde_json::from_value(serde_json::json!({
                "code": 400, "err_code": code, "description": "x"
            }))
            .unwrap();
            PublishError::with_source(PublishErrorKind::Other, e)
        };
        assert!(permanent(js(10054)));
        assert!(permanent(js(10097)));
        assert!(broker(js(10077)));
    }
}
