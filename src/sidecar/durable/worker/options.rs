//! The worker's options: the sink (JetStream over NATS, or Kafka, with
//! the streams or topics it creates when they are missing), the spill,
//! the bounds and timings. Validated once ([`DurableOptions::validate`],
//! and by [`super::start`]); every default states its reason.

use std::path::PathBuf;
use std::time::Duration;

use crate::sidecar::cluster::parse_servers;
use crate::sidecar::durable::spill::SpillOptions;

/// The default dead-letter subject (JetStream) or topic (Kafka).
pub const DEFAULT_DEAD_LETTER: &str = "wsedge.durable.dlq";

/// librdkafka properties the Kafka transport sets itself: order,
/// idempotence and the fence depend on them, so
/// [`KafkaSink::config`] may not name them.
pub const KAFKA_RESERVED: [&str; 14] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "allow.auto.create.topics",
    "message.max.bytes",
    "retries",
    "message.send.max.retries",
    "transactional.id",
];

/// The worker's bounds and timings. Every default states its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableOptions {
    /// Where the records go, and the streams or topics to create.
    pub sink: SinkOptions,
    /// The spill (its directory, bounds and fsync policy).
    pub spill: SpillOptions,
    /// Records waiting for the worker. Default 16,384: at 50,000 durable
    /// events a second, a third of a second of slack while the worker
    /// moves a slow broker's load to the spill (it does so at half full);
    /// a few MB at most.
    pub queue_capacity: usize,
    /// Records per batch at most (in direct mode and in replay). Default
    /// 256: one batch is in flight at a time, so at a 2 ms round trip
    /// about 128,000 records a second, while a failed batch resends
    /// little.
    pub batch_max: usize,
    /// Payload bytes a replay batch reads from the spill at most (but
    /// always one record). Default 1 MiB: a batch of large records stays
    /// within the connection's buffers.
    pub batch_bytes: usize,
    /// Longest a record waits for more to fill its batch. Default 2 ms:
    /// long enough to batch a burst. A batch holding a record someone
    /// waits for (`durable_ack`) does not wait: it goes as soon as no
    /// batch is in flight.
    pub linger: Duration,
    /// Longest wait for a batch's acknowledgements (and for a flush of
    /// the connection, for Kafka also librdkafka's `message.timeout.ms`
    /// and the wait for the broker when connecting). Default 2 s: far
    /// above a healthy round trip (replicated streams and `acks=all`
    /// included), short enough that a half-dead connection is dropped
    /// quickly; it is also how long records of a batch can wait before
    /// they go to the spill. For Kafka it must also cover a new
    /// producer's first batch, which waits for its producer id (about
    /// half a second measured against tansu: librdkafka asks for it on a
    /// 500 ms timer when no broker was up at its creation).
    pub ack_timeout: Duration,
    /// First pause after a failure (to send, to connect). Default 50 ms.
    pub retry_min: Duration,
    /// Longest pause between attempts while the broker is down. Default
    /// 2 s: the spill drains within about two seconds of the broker
    /// coming back, at one attempt every two seconds while it is down.
    pub retry_max: Duration,
    /// Where records the sink refuses for good go: a NATS subject (a core
    /// publish) or a Kafka topic (created when missing, like the sink's
    /// topics: see [`KafkaSink::topics`]). Default `wsedge.durable.dlq`.
    pub dead_letter_subject: String,
    /// Longest the stop waits for room in a full spill for records still
    /// in memory. Default 2 s.
    pub shutdown_grace: Duration,
}

/// The broker the worker sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkOptions {
    /// JetStream over NATS (`jetstream:<subject>` sinks).
    JetStream(JetStreamSink),
    /// Kafka (`kafka:<topic>` sinks).
    Kafka(KafkaSink),
}

/// A JetStream sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamSink {
    /// The NATS servers, comma-separated (`nats://host:port`,
    /// `tls://…`, `host[:port]`).
    pub nats_url: String,
    /// Streams created on each new connection if missing (file storage,
    /// duplicate window 2 min); one that exists is never changed (its
    /// retention is the operator's). A stream that cannot be created
    /// fails the connection attempt, which is retried: the spill fills,
    /// visibly. Default none (the operator creates them).
    pub streams: Vec<StreamSpec>,
}

/// A JetStream stream to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// The stream's name (no `.`, `*`, `>` or whitespace).
    pub name: String,
    /// The subjects it captures (wildcards allowed), e.g. `evt.chat.>`.
    pub subjects: Vec<String>,
}

/// A Kafka sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSink {
    /// The bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// Topics created on each new connection if missing; one that exists
    /// is never changed (its retention is the operator's). The
    /// dead-letter topic is created as well, unless listed here: one
    /// partition (dead letters in order) and the highest replication
    /// listed here (1 if none). A topic that cannot be created fails the
    /// connection attempt, which is retried: the spill fills, visibly.
    /// Topics are never created by producing to them (the producer's
    /// `allow.auto.create.topics` is off): a record for a topic that
    /// does not exist is retried, not sent to a topic with the broker's
    /// default partitions. Default none.
    pub topics: Vec<TopicSpec>,
    /// librdkafka's `message.max.bytes`: a record larger than this
    /// (payload, key, headers and framing) is refused for good, locally,
    /// and dead-lettered without its payload. Default 1,000,000, the
    /// default of both librdkafka and the brokers' `message.max.bytes`.
    pub max_message_bytes: usize,
    /// More librdkafka properties, set after the transport's own (e.g.
    /// `security.protocol`, `sasl.*`, `ssl.*`, `compression.type`,
    /// `linger.ms`, `client.id`); [`KAFKA_RESERVED`] ones are refused.
    /// Default none.
    pub config: Vec<(String, String)>,
}

/// A Kafka topic to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name (`[a-zA-Z0-9._-]`, at most 249 bytes).
    pub name: String,
    /// Its partitions (a channel's records go to one, by key).
    pub partitions: i32,
    /// Its replication factor.
    pub replication: i32,
}

impl TopicSpec {
    /// A topic of `partitions` partitions, each on `replication` brokers.
    pub fn new(name: impl Into<String>, partitions: i32, replication: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication,
        }
    }
}

impl StreamSpec {
    /// A stream over `subjects`.
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
        }
    }
}

impl DurableOptions {
    /// The defaults for a JetStream sink on the servers in `nats_url`,
    /// spilling in `spill_dir` (the same as [`DurableOptions::jetstream`]).
    pub fn new(nats_url: impl Into<String>, spill_dir: impl Into<PathBuf>) -> Self {
        Self::jetstream(nats_url, spill_dir)
    }

    /// The defaults for a JetStream sink on the servers in `nats_url`,
    /// spilling in `spill_dir`.
    pub fn jetstream(nats_url: impl Into<String>, spill_dir: impl Into<PathBuf>) -> Self {
        Self::with_sink(
            SinkOptions::JetStream(JetStreamSink {
                nats_url: nats_url.into(),
                streams: Vec::new(),
            }),
            spill_dir,
        )
    }

    /// The defaults for a Kafka sink on the bootstrap `brokers`
    /// (`host:port,…`), spilling in `spill_dir`.
    pub fn kafka(brokers: impl Into<String>, spill_dir: impl Into<PathBuf>) -> Self {
        Self::with_sink(
            SinkOptions::Kafka(KafkaSink {
                brokers: brokers.into(),
                topics: Vec::new(),
                max_message_bytes: 1_000_000,
                config: Vec::new(),
            }),
            spill_dir,
        )
    }

    fn with_sink(sink: SinkOptions, spill_dir: impl Into<PathBuf>) -> Self {
        Self {
            sink,
            spill: SpillOptions::new(spill_dir),
            queue_capacity: 16_384,
            batch_max: 256,
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(2),
            ack_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            dead_letter_subject: DEFAULT_DEAD_LETTER.into(),
            shutdown_grace: Duration::from_secs(2),
        }
    }

    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        match &self.sink {
            SinkOptions::JetStream(j) => j.validate(&self.dead_letter_subject)?,
            SinkOptions::Kafka(k) => k.validate(&self.dead_letter_subject)?,
        }
        self.spill.validate()?;
        for (name, v) in [
            ("queue_capacity", self.queue_capacity),
            ("batch_max", self.batch_max),
            ("batch_bytes", self.batch_bytes),
        ] {
            if v == 0 {
                return Err(format!("durable {name} must be at least 1"));
            }
        }
        if self.queue_capacity < 2 {
            return Err("durable queue_capacity must be at least 2".into());
        }
        if self.ack_timeout.is_zero() {
            return Err("durable ack_timeout must be above 0".into());
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err("durable retry_min must be above 0 and retry_max ≥ retry_min".into());
        }
        Ok(())
    }
}

impl JetStreamSink {
    fn validate(&self, dead_letter: &str) -> Result<(), String> {
        if self.nats_url.trim().is_empty() {
            return Err("durable nats_url is empty".into());
        }
        parse_servers(&self.nats_url).map_err(|e| format!("durable nats_url: {e}"))?;
        if !is_nats_subject(dead_letter) || dead_letter.contains(['*', '>']) {
            return Err(format!(
                "durable dead_letter_subject {dead_letter:?} is not a NATS subject"
            ));
        }
        for s in &self.streams {
            let bad_name = s.name.is_empty()
                || s.name.len() > 255
                || s.name
                    .bytes()
                    .any(|b| matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\') || b <= b' ');
            if bad_name {
                return Err(format!("durable stream name {:?} is not valid", s.name));
            }
            if s.subjects.is_empty() {
                return Err(format!("durable stream {:?} has no subjects", s.name));
            }
            if let Some(bad) = s.subjects.iter().find(|x| !is_nats_subject(x)) {
                return Err(format!(
                    "durable stream {:?}: {bad:?} is not a NATS subject",
                    s.name
                ));
            }
        }
        Ok(())
    }
}

impl KafkaSink {
    fn validate(&self, dead_letter: &str) -> Result<(), String> {
        let brokers: Vec<&str> = self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        if brokers.is_empty() {
            return Err("durable kafka brokers is empty".into());
        }
        if let Some(bad) = brokers.iter().find(|b| b.contains(char::is_whitespace)) {
            return Err(format!("durable kafka broker {bad:?} is not host:port"));
        }
        if !is_kafka_topic(dead_letter) {
            return Err(format!(
                "durable dead_letter_subject {dead_letter:?} is not a Kafka topic name"
            ));
        }
        for t in &self.topics {
            if !is_kafka_topic(&t.name) {
                return Err(format!("durable kafka topic {:?} is not valid", t.name));
            }
            if t.partitions < 1 || t.replication < 1 {
                return Err(format!(
                    "durable kafka topic {:?}: partitions and replication must be at least 1",
                    t.name
                ));
            }
        }
        if !(1_000..=1_000_000_000).contains(&self.max_message_bytes) {
            return Err("durable kafka max_message_bytes must be 1,000 to 1,000,000,000".into());
        }
        for (k, _) in &self.config {
            if KAFKA_RESERVED.contains(&k.trim()) {
                return Err(format!(
                    "durable kafka config may not set {k:?}: the worker sets it (order, idempotence)"
                ));
            }
        }
        Ok(())
    }

    /// The topics to create when missing: those listed, and the
    /// dead-letter topic (one partition, the highest replication listed)
    /// unless listed.
    pub(super) fn topics_to_create(&self, dead_letter: &str) -> Vec<TopicSpec> {
        let mut topics = self.topics.clone();
        if !topics.iter().any(|t| t.name == dead_letter) {
            let replication = topics.iter().map(|t| t.replication).max().unwrap_or(1);
            topics.push(TopicSpec::new(dead_letter, 1, replication));
        }
        topics
    }
}

/// Whether `s` is a subject NATS takes: not empty, no whitespace, no
/// empty token (wildcards are the caller's concern).
pub(super) fn is_nats_subject(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && !s.bytes().any(|b| b.is_ascii_whitespace())
}

/// Whether `s` is a legal Kafka topic name: 1 to 249 bytes of
/// `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(in crate::sidecar::durable) fn is_kafka_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_like_nats_does() {
        for ok in ["a", "evt.chat", "wsedge.durable.dlq", "a.*.>"] {
            assert!(is_nats_subject(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a\r\nb", "a\tb"] {
            assert!(!is_nats_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn topics_are_checked_like_kafka_does() {
        for ok in [
            "a",
            "evt.chat",
            "wsedge.durable.dlq",
            "A-b_c.9",
            &"x".repeat(249),
        ] {
            assert!(is_kafka_topic(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", "a*", &"x".repeat(250)] {
            assert!(!is_kafka_topic(bad), "{bad:?}");
        }
    }

    fn kafka(o: &mut DurableOptions) -> &mut KafkaSink {
        match &mut o.sink {
            SinkOptions::Kafka(k) => k,
            SinkOptions::JetStream(_) => unreachable!(),
        }
    }

    fn jetstream(o: &mut DurableOptions) -> &mut JetStreamSink {
        match &mut o.sink {
            SinkOptions::JetStream(j) => j,
            SinkOptions::Kafka(_) => unreachable!(),
        }
    }

    #[test]
    fn sink_options_are_validated() {
        let mut k = DurableOptions::kafka("127.0.0.1:9092", "/tmp/x");
        assert_eq!(k.validate(), Ok(()));
        kafka(&mut k).topics.push(TopicSpec::new("evt", 0, 1));
        assert!(k.validate().unwrap_err().contains("partitions"));
        kafka(&mut k).topics = vec![TopicSpec::new("evt", 6, 3)];
        kafka(&mut k)
            .config
            .push(("enable.idempotence".into(), "false".into()));
        assert!(k.validate().unwrap_err().contains("enable.idempotence"));
        kafka(&mut k).config = vec![("client.id".into(), "edge-1".into())];
        assert_eq!(k.validate(), Ok(()));
        assert_eq!(
            kafka(&mut k).topics_to_create(DEFAULT_DEAD_LETTER),
            [
                TopicSpec::new("evt", 6, 3),
                TopicSpec::new(DEFAULT_DEAD_LETTER, 1, 3)
            ]
        );
        // Listed: created as listed.
        kafka(&mut k).topics.push(TopicSpec::new("dlq", 2, 1));
        assert_eq!(kafka(&mut k).topics_to_create("dlq").len(), 2);
        k.dead_letter_subject = "dead letters".into();
        assert!(k.validate().unwrap_err().contains("dead_letter_subject"));
        k.dead_letter_subject = DEFAULT_DEAD_LETTER.into();
        kafka(&mut k).max_message_bytes = 10;
        assert!(k.validate().unwrap_err().contains("max_message_bytes"));
        kafka(&mut k).max_message_bytes = 1_000_000;
        kafka(&mut k).brokers = " , ".into();
        assert!(k.validate().unwrap_err().contains("brokers"));

        let mut j = DurableOptions::jetstream("nats://127.0.0.1:4222", "/tmp/x");
        assert_eq!(j, DurableOptions::new("nats://127.0.0.1:4222", "/tmp/x"));
        assert_eq!(j.validate(), Ok(()));
        jetstream(&mut j)
            .streams
            .push(StreamSpec::new("EVT", ["evt.>"]));
        assert_eq!(j.validate(), Ok(()));
        jetstream(&mut j)
            .streams
            .push(StreamSpec::new("a.b", ["x"]));
        assert!(j.validate().unwrap_err().contains("stream name"));
        jetstream(&mut j).streams[1] = StreamSpec::new("AB", Vec::<String>::new());
        assert!(j.validate().unwrap_err().contains("no subjects"));
        jetstream(&mut j).streams[1] = StreamSpec::new("AB", ["a..b"]);
        assert!(j.validate().unwrap_err().contains("not a NATS subject"));
        jetstream(&mut j).streams.pop();
        j.dead_letter_subject = "dlq.>".into();
        assert!(j.validate().unwrap_err().contains("dead_letter_subject"));
        jetstream(&mut j).nats_url = String::new();
        assert!(j.validate().unwrap_err().contains("nats_url"));
    }
}
