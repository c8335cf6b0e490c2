//! The `[durable]` configuration section and the namespaces' `durable`
//! key: where durable events go (`durable = "jetstream:<subject>"` or
//! `"kafka:<topic>"` per namespace) and the local spill that keeps them
//! while the broker is slow or down (docs/OPERATIONS.md, "Durable
//! events"). Without a durable namespace nothing here is used.
//!
//! Every key is also settable as `WSEDGE_DURABLE_<KEY>`, e.g.
//! `WSEDGE_DURABLE_DIR`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sidecar::durable::spill::FsyncPolicy;

/// Prefix of the environment variables that set `[durable]` keys.
pub const ENV_PREFIX: &str = "WSEDGE_DURABLE_";

/// Where records that `[[durable.consume]]` can never publish go: a
/// Kafka topic for topic rules, a NATS subject for subject rules.
pub const INBOUND_DEAD_LETTER: &str = "wsedge.inbound.dlq";

/// Where a namespace's durable events go: the parsed `durable` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurableTarget {
    /// `jetstream:<subject>`: JetStream, on `<subject>.<channel hex>`.
    Jetstream(String),
    /// `kafka:<topic>`: a Kafka topic, keyed by channel.
    Kafka(String),
}

impl DurableTarget {
    /// Parses a namespace's `durable` value; the error says what is
    /// wrong and what is expected.
    pub fn parse(s: &str) -> Result<DurableTarget, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("durable = {s:?} must be \"jetstream:<subject>\" or \"kafka:<topic>\"")
        })?;
        match kind {
            "jetstream" if is_sink_subject(name) => Ok(DurableTarget::Jetstream(name.into())),
            "jetstream" => Err(format!(
                "durable = {s:?}: {name:?} is not a NATS subject prefix (tokens of printable \
                 characters without `*`, `>` or spaces, separated by single dots)"
            )),
            "kafka" if is_kafka_topic(name) => Ok(DurableTarget::Kafka(name.into())),
            "kafka" => Err(format!(
                "durable = {s:?}: {name:?} is not a Kafka topic name (1-249 characters of \
                 `A-Z a-z 0-9 . _ -`, not `.` or `..`)"
            )),
            _ => Err(format!(
                "durable = {s:?}: the sink must be `jetstream` or `kafka`"
            )),
        }
    }

    /// The sink's kind, as metrics label it (`jetstream`, `kafka`).
    pub fn kind(&self) -> &'static str {
        match self {
            DurableTarget::Jetstream(_) => "jetstream",
            DurableTarget::Kafka(_) => "kafka",
        }
    }
}

/// Whether `s` can prefix a JetStream subject: tokens of printable ASCII
/// without wildcards, separated by single dots, at most 200 bytes (the
/// channel's hex follows it).
fn is_sink_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        })
}

/// Whether `s` is a legal Kafka topic name.
fn is_kafka_topic(s: &str) -> bool {
    (1..=249).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// When the spill's appends reach the disk (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurableFsync {
    /// After every append: no spilled event is lost to a power cut.
    Always,
    /// Every `fsync_interval`: a power cut loses at most that much.
    Interval,
    /// Only when the worker needs it (a `durable_ack` waiter, a segment
    /// full, a stop): the page cache holds the rest.
    Never,
}

/// One `[[durable.consume]]` table: a Kafka topic (`topic`) or NATS
/// subjects of a JetStream stream (`subject`) whose records the node
/// publishes to channels. Exactly one of `topic` and `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeRule {
    /// A Kafka topic (it must exist), read by the consumer group
    /// `consume_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// A NATS subject, wildcards allowed (`notify.>`, `users.*.inbox`),
    /// read from its JetStream stream by the durable pull consumer
    /// `consume_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The JetStream stream of a `subject` rule. Default: the stream
    /// whose subjects take `subject` (the server's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The channel each record goes to: text with `{key}` (a Kafka
    /// record's key; a NATS message's last subject token),
    /// `{header:<name>}` (a header's value) and, for `subject` rules,
    /// `{subject:<n>}` (the n-th subject token, from 1) in it, e.g.
    /// `"#{key}"` (the personal channel of the user the record is keyed
    /// by) or `"course:{header:course}"`.
    pub channel: String,
}

/// Where a [`ConsumeRule`] reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeSource<'a> {
    /// A Kafka topic.
    Kafka(&'a str),
    /// NATS subjects of a JetStream stream (named, or found by subject).
    Jetstream {
        /// The subject filter (wildcards allowed).
        subject: &'a str,
        /// The stream, when the rule names it.
        stream: Option<&'a str>,
    },
}

impl ConsumeRule {
    /// Where the rule reads from; the error says what is wrong (both or
    /// neither of `topic` and `subject`, a `stream` without `subject`).
    pub fn source(&self) -> Result<ConsumeSource<'_>, String> {
        match (&self.topic, &self.subject) {
            (Some(_), Some(_)) => Err("has both topic and subject: give one".into()),
            (None, None) => Err("needs topic (Kafka) or subject (JetStream)".into()),
            (Some(_), None) if self.stream.is_some() => {
                Err("stream goes with subject, not with topic".into())
            }
            (Some(t), None) => Ok(ConsumeSource::Kafka(t)),
            (None, Some(s)) => Ok(ConsumeSource::Jetstream {
                subject: s,
                stream: self.stream.as_deref(),
            }),
        }
    }

    /// The topic or subject, for messages.
    pub fn name(&self) -> &str {
        self.topic
            .as_deref()
            .or(self.subject.as_deref())
            .unwrap_or("")
    }
}

/// Whether `s` is a NATS subject filter: dot-separated tokens of
/// printable ASCII (no spaces), `*` only as a whole token, `>` only as
/// the whole last token; at most 255 bytes.
pub fn is_filter_subject(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && t.bytes().all(|b| b.is_ascii_graphic())
            && (!t.contains('*') || *t == "*")
            && (!t.contains('>') || (*t == ">" && i == tokens.len() - 1))
    })
}

/// Whether subject `subject` (no wildcards) matches `filter`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both filters `a` and `b`.
pub fn subjects_collide(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `s` is a legal JetStream stream or durable consumer name:
/// 1-255 printable ASCII bytes without `.`, `*`, `>`, `/`, `\` or spaces.
pub fn is_jetstream_name(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

/// A [`ConsumeRule::channel`] template, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Key,
    Header(String),
    /// `{subject:<n>}`: the n-th subject token, from 1.
    Token(usize),
}

impl ChannelTemplate {
    /// Parses `s`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<ChannelTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].into()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("channel = {s:?}: a `{{` without its `}}`"))?;
            let name = &rest[open + 1..open + close];
            parts.push(if name == "key" {
                Part::Key
            } else if let Some(h) = name.strip_prefix("header:").filter(|h| !h.is_empty()) {
                Part::Header(h.into())
            } else if let Some(n) = name.strip_prefix("subject:") {
                match n.parse::<usize>() {
                    Ok(n) if (1..=255).contains(&n) => Part::Token(n),
                    _ => {
                        return Err(format!(
                            "channel = {s:?}: `{{{name}}}`: subject tokens count from 1 \
                             (`{{subject:1}}` is the first)"
                        ));
                    }
                }
            } else {
                return Err(format!(
                    "channel = {s:?}: `{{{name}}}` is neither `{{key}}`, `{{header:<name>}}` \
                     nor `{{subject:<n>}}`"
                ));
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.into()));
        }
        let t = ChannelTemplate { parts };
        // With every value a plain word, the result must be a channel.
        let word = |_: &str| Some("u1".to_owned());
        let sample = t.fill(|_| Some("u1".into()), word, |_| Some("u1".into()));
        match sample {
            Ok(c) if crate::engine::channel::is_valid_channel(&c) => Ok(t),
            _ => Err(format!(
                "channel = {s:?} does not make a valid channel name (docs/PROTOCOL.md, Channels)"
            )),
        }
    }

    /// The highest `{subject:<n>}` the template uses, if any.
    pub fn subject_tokens(&self) -> Option<usize> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Token(n) => Some(*n),
                _ => None,
            })
            .max()
    }

    /// The channel for a record: `key`, `header(name)` and `token(n)`
    /// (the n-th subject token, from 1) give the values (`None`: missing
    /// or not UTF-8). The error names what is missing.
    pub fn fill(
        &self,
        key: impl Fn(()) -> Option<String>,
        header: impl Fn(&str) -> Option<String>,
        token: impl Fn(usize) -> Option<String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Key => out.push_str(&key(()).ok_or("the record has no UTF-8 key")?),
                Part::Header(h) => out.push_str(
                    &header(h).ok_or_else(|| format!("the record has no UTF-8 header {h:?}"))?,
                ),
                Part::Token(n) => out.push_str(&token(*n).ok_or_else(|| {
                    format!("the record's subject has fewer than {n} tokens ({{subject:{n}}})")
                })?),
            }
        }
        Ok(out)
    }
}

/// The `[durable]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DurableConfig {
    /// The spill's directory (each sink spills in a subdirectory,
    /// `jetstream/` and `kafka/`). Default: `$STATE_DIRECTORY/durable`
    /// when systemd sets `STATE_DIRECTORY` (the unit's
    /// `StateDirectory=wsedge`), else `wsedge-durable` in the working
    /// directory. Must be local disk that survives a restart, one per
    /// process (a second process on it is refused).
    pub dir: Option<PathBuf>,
    /// Bytes the spill may hold on disk, per sink. Default 1 GiB: at
    /// 1 KiB events a million events, minutes of outage at a high
    /// durable rate. When it is full, durable publishes get error 112.
    pub max_bytes: u64,
    /// When spilled events reach the disk. Default `interval`, like
    /// Redis's `appendfsync everysec`: a process crash loses nothing, a
    /// power cut at most `fsync_interval`.
    pub fsync: DurableFsync,
    /// The `interval` policy's period. Default 1s.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// NATS servers for `jetstream:` sinks and the JetStream consumer of
    /// `[[durable.consume]]` subjects. Default: `[cluster] nats_url`
    /// (with the cluster's credentials and CA); set it for a single node
    /// or to keep durable traffic on another NATS.
    pub nats_url: Option<String>,
    /// Kafka brokers for `kafka:` sinks (`host:port`, comma-separated).
    /// Required when a namespace uses one.
    pub kafka_brokers: Option<String>,
    /// Create each sink's stream (JetStream: `WSEDGE_DURABLE_<SUBJECT>`
    /// over `<subject>.>`, file storage, 2 min duplicate window) or topic
    /// (Kafka) when it is missing; an existing one is never changed, and a
    /// JetStream stream of the operator's that already takes the subjects
    /// is the sink. Default true: a node works out of the box; set false
    /// where wsedge's credentials may not create streams or topics.
    pub create_sinks: bool,
    /// Partitions of a Kafka topic wsedge creates. Default 6: a
    /// channel's events stay in one partition (keyed by channel), so this
    /// bounds the consumers that share a topic's load.
    pub kafka_partitions: u32,
    /// Replication of a Kafka topic wsedge creates. Default 1 (a single
    /// broker can create it); set 3 on a production cluster.
    pub kafka_replication: u32,
    /// More librdkafka properties for every Kafka client of the node: the
    /// sinks' producers, the consumer group and its dead-letter
    /// producer. For what a secured cluster needs: `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`, `client.id`, … Values may be strings, numbers
    /// or booleans. Properties wsedge sets itself for order, idempotence
    /// and commits (`bootstrap.servers`, `enable.idempotence`, `acks`,
    /// `group.id`, `enable.auto.commit`, …) are refused. File only (no
    /// environment variable); values of keys naming a password or secret
    /// are redacted in `--print-config`. Default none.
    #[serde(deserialize_with = "scalar_map")]
    pub kafka_config: BTreeMap<String, String>,
    /// librdkafka properties for the consumer group only, after
    /// `kafka_config`: `session.timeout.ms`, `heartbeat.interval.ms`,
    /// `max.poll.interval.ms`, `fetch.max.bytes`, `auto.offset.reset`
    /// (`earliest` by default: a new group reads what the topics retain),
    /// `partition.assignment.strategy`, … Default none.
    #[serde(deserialize_with = "scalar_map")]
    pub kafka_consumer_config: BTreeMap<String, String>,
    /// How often the consumer group commits the offsets of records the
    /// channels' homes accepted (also at a rebalance and at the stop).
    /// Default 1s: after a crash about a second of records is read again
    /// (and published once, by the idempotency window). 100ms to 1h.
    #[serde(with = "humantime_serde")]
    pub consume_commit_interval: Duration,
    /// The consumer group of `consume`'s topics, and the name of the
    /// JetStream durable consumer of its subjects (then a legal durable
    /// name: no `.`, `*`, `>`, `/`, `\` or spaces). Default
    /// `notification-processors` (the seed's).
    pub consume_group: String,
    /// `[[durable.consume]]`: Kafka topics and JetStream subjects whose
    /// records are published to channels. Default none.
    pub consume: Vec<ConsumeRule>,
    /// Events waiting for the sink's worker, per sink. Default 16,384:
    /// at 50,000 durable events a second a third of a second of slack
    /// while the worker moves a slow broker's load to the spill.
    pub queue_capacity: usize,
    /// Where events the sink refuses for good go (a NATS subject for
    /// JetStream, a topic for Kafka). Default `wsedge.durable.dlq`.
    pub dead_letter: String,
}

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 1 << 30,
            fsync: DurableFsync::Interval,
            fsync_interval: Duration::from_secs(1),
            nats_url: None,
            kafka_brokers: None,
            create_sinks: true,
            kafka_partitions: 6,
            kafka_replication: 1,
            kafka_config: BTreeMap::new(),
            kafka_consumer_config: BTreeMap::new(),
            consume_commit_interval: Duration::from_secs(1),
            consume_group: "notification-processors".into(),
            consume: Vec::new(),
            queue_capacity: 16_384,
            dead_letter: "wsedge.durable.dlq".into(),
        }
    }
}

impl DurableConfig {
    /// The spill directory: `dir`, else `$STATE_DIRECTORY/durable`, else
    /// `wsedge-durable`.
    pub fn spill_dir(&self) -> PathBuf {
        if let Some(d) = &self.dir {
            return d.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may list several directories, colon-separated.
            Some(s) if !s.is_empty() => {
                let first = s
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                PathBuf::from(first).join("durable")
            }
            _ => PathBuf::from("wsedge-durable"),
        }
    }

    /// The spill's fsync policy.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            DurableFsync::Always => FsyncPolicy::Always,
            DurableFsync::Interval => FsyncPolicy::Interval(self.fsync_interval),
            DurableFsync::Never => FsyncPolicy::Never,
        }
    }

    /// Checks the values that types alone cannot (the sinks' connections
    /// are checked against the namespaces by the caller).
    pub fn validate(&self) -> Result<(), String> {
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err("durable dir must not be empty (unset it for the default)".into());
        }
        if self.max_bytes < 1 << 20 {
            return Err(format!(
                "durable max_bytes = {} must be at least 1 MiB",
                self.max_bytes
            ));
        }
        if self.fsync == DurableFsync::Interval
            && (self.fsync_interval < Duration::from_millis(1)
                || self.fsync_interval > Duration::from_secs(60))
        {
            return Err("durable fsync_interval must be between 1ms and 60s".into());
        }
        if let Some(url) = &self.nats_url {
            crate::sidecar::cluster::parse_servers(url)
                .map_err(|e| format!("durable nats_url: {e}"))?;
        }
        if let Some(b) = &self.kafka_brokers
            && (b.trim().is_empty()
                || b.split(',')
                    .any(|h| h.trim().is_empty() || h.contains("://")))
        {
            return Err(format!(
                "durable kafka_brokers = {b:?} must be host:port entries, comma-separated"
            ));
        }
        if !(1..=10_000).contains(&self.kafka_partitions)
            || !(1..=16).contains(&self.kafka_replication)
        {
            return Err(
                "durable kafka_partitions must be 1-10000 and kafka_replication 1-16".into(),
            );
        }
        self.validate_kafka_config()?;
        if self.consume_group.is_empty() || self.consume_group.len() > 249 {
            return Err("durable consume_group must be 1-249 bytes".into());
        }
        self.validate_consume()?;
        if !(2..=1 << 22).contains(&self.queue_capacity) {
            return Err("durable queue_capacity must be between 2 and 4194304".into());
        }
        if !is_sink_subject(&self.dead_letter) || !is_kafka_topic(&self.dead_letter) {
            return Err(format!(
                "durable dead_letter = {:?} must be both a NATS subject and a Kafka topic name \
                 (`A-Z a-z 0-9 . _ -`, dot-separated)",
                self.dead_letter
            ));
        }
        Ok(())
    }

    /// `kafka_config`, `kafka_consumer_config`, `consume_commit_interval`.
    fn validate_kafka_config(&self) -> Result<(), String> {
        use crate::sidecar::durable::inbound::INBOUND_RESERVED;
        use crate::sidecar::durable::worker::KAFKA_RESERVED;
        for (table, map, reserved) in [
            (
                "kafka_config",
                &self.kafka_config,
                &[&KAFKA_RESERVED[..], &INBOUND_RESERVED[..]][..],
            ),
            (
                "kafka_consumer_config",
                &self.kafka_consumer_config,
                &[&INBOUND_RESERVED[..]][..],
            ),
        ] {
            for k in map.keys() {
                if k.is_empty() || k.contains(char::is_whitespace) {
                    return Err(format!(
                        "durable {table}: {k:?} is not a librdkafka property"
                    ));
                }
                if reserved.iter().any(|r| r.contains(&k.as_str())) {
                    return Err(format!(
                        "durable {table} may not set {k:?}: wsedge sets it itself \
                         (order, idempotence, the group, commits)"
                    ));
                }
            }
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.consume_commit_interval)
        {
            return Err("durable consume_commit_interval must be between 100ms and 1h".into());
        }
        Ok(())
    }

    /// The `[[durable.consume]]` rules (the NATS connection of subject
    /// rules is checked by the caller, which sees `[cluster]`).
    fn validate_consume(&self) -> Result<(), String> {
        let mut subjects: Vec<&str> = Vec::new();
        for (i, r) in self.consume.iter().enumerate() {
            let at = |e: String| format!("[[durable.consume]] #{} ({}): {e}", i + 1, r.name());
            let template = ChannelTemplate::parse(&r.channel).map_err(at)?;
            match r.source().map_err(at)? {
                ConsumeSource::Kafka(topic) => {
                    if !is_kafka_topic(topic) {
                        return Err(at(format!("topic = {topic:?} is not a Kafka topic name")));
                    }
                    if self.kafka_brokers.is_none() {
                        return Err(at("a topic rule needs [durable] kafka_brokers".into()));
                    }
                    if template.subject_tokens().is_some() {
                        return Err(at(
                            "`{subject:<n>}` is for subject rules; a Kafka record has no subject"
                                .into(),
                        ));
                    }
                    if self.consume[..i]
                        .iter()
                        .any(|o| o.topic.as_deref() == Some(topic))
                    {
                        return Err(format!(
                            "[[durable.consume]]: topic {topic:?} is listed twice"
                        ));
                    }
                }
                ConsumeSource::Jetstream { subject, stream } => {
                    if !is_filter_subject(subject) {
                        return Err(at(format!(
                            "subject = {subject:?} is not a NATS subject (dot-separated tokens \
                             of printable characters without spaces; `*` a whole token, `>` \
                             the whole last one)"
                        )));
                    }
                    if let Some(s) = stream.filter(|s| !is_jetstream_name(s)) {
                        return Err(at(format!(
                            "stream = {s:?} is not a JetStream stream name (no `.`, `*`, `>`, \
                             `/`, `\\` or spaces)"
                        )));
                    }
                    let tokens = subject.split('.').count();
                    if let Some(n) = template.subject_tokens()
                        && !subject.ends_with('>')
                        && n > tokens
                    {
                        return Err(at(format!(
                            "`{{subject:{n}}}`: the subjects of {subject:?} have {tokens} tokens"
                        )));
                    }
                    if subject_matches(subject, INBOUND_DEAD_LETTER) {
                        return Err(at(format!(
                            "subject {subject:?} takes the consumer's own dead letters \
                             ({INBOUND_DEAD_LETTER})"
                        )));
                    }
                    if let Some(o) = subjects.iter().find(|o| subjects_collide(o, subject)) {
                        return Err(format!(
                            "[[durable.consume]]: subjects {o:?} and {subject:?} overlap (a \
                             message must match one rule)"
                        ));
                    }
                    subjects.push(subject);
                    if !is_jetstream_name(&self.consume_group) {
                        return Err(format!(
                            "durable consume_group = {:?} names the JetStream durable consumer \
                             of subject rules: no `.`, `*`, `>`, `/`, `\\` or spaces",
                            self.consume_group
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A copy fit to print: credentials in `nats_url` hidden.
    pub fn redacted(&self) -> Self {
        let hide = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| {
                    let k_lower = k.to_ascii_lowercase();
                    let secret = ["password", "secret", "sasl.oauthbearer.config", "sasl.jaas"]
                        .iter()
                        .any(|s| k_lower.contains(s));
                    let v = if secret {
                        super::REDACTED.into()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect()
        };
        DurableConfig {
            nats_url: self
                .nats_url
                .as_deref()
                .map(crate::sidecar::cluster::redacted_servers),
            kafka_config: hide(&self.kafka_config),
            kafka_consumer_config: hide(&self.kafka_consumer_config),
            ..self.clone()
        }
    }
}

/// A table of librdkafka properties: string, integer, float or boolean
/// values, kept as the strings librdkafka takes.
fn scalar_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Bool(b) => b.to_string(),
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(t) => t,
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            DurableTarget::parse("jetstream:events.chat"),
            Ok(DurableTarget::Jetstream("events.chat".into()))
        );
        assert_eq!(
            DurableTarget::parse("kafka:chat-events_1.v2"),
            Ok(DurableTarget::Kafka("chat-events_1.v2".into()))
        );
        for bad in [
            "events.chat",
            "jetstream:",
            "jetstream:a..b",
            "jetstream:a.*",
            "jetstream:a >",
            "kafka:",
            "kafka:a/b",
            "kafka:..",
            "redis:x",
        ] {
            let e = DurableTarget::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let long = format!("kafka:{}", "a".repeat(250));
        assert!(DurableTarget::parse(&long).is_err());
    }

    #[test]
    fn the_section_is_checked() {
        assert_eq!(DurableConfig::default().validate(), Ok(()));
        let bad = [
            DurableConfig {
                max_bytes: 1000,
                ..Default::default()
            },
            DurableConfig {
                fsync_interval: Duration::ZERO,
                ..Default::default()
            },
            DurableConfig {
                nats_url: Some("http://x".into()),
                ..Default::default()
            },
            DurableConfig {
                queue_capacity: 1,
                ..Default::default()
            },
            DurableConfig {
                dead_letter: "a b".into(),
                ..Default::default()
            },
            DurableConfig {
                dir: Some(PathBuf::new()),
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        // `never` does not look at the interval.
        let never = DurableConfig {
            fsync: DurableFsync::Never,
            fsync_interval: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(never.validate(), Ok(()));
        assert_eq!(never.fsync_policy(), FsyncPolicy::Never);
    }

    #[test]
    fn channel_templates_fill_from_key_headers_and_subject_tokens() {
        let none = |_: usize| None;
        let t = ChannelTemplate::parse("#{key}").unwrap();
        assert_eq!(t.subject_tokens(), None);
        assert_eq!(
            t.fill(|_| Some("alice".into()), |_| None, none),
            Ok("#alice".into())
        );
        assert!(
            t.fill(|_| None, |_| None, none)
                .unwrap_err()
                .contains("no UTF-8 key")
        );
        let t = ChannelTemplate::parse("course:{header:course}-{key}").unwrap();
        let h = |n: &str| (n == "course").then(|| "bio101".to_owned());
        assert_eq!(
            t.fill(|_| Some("u".into()), h, none),
            Ok("course:bio101-u".into())
        );
        assert!(
            t.fill(|_| Some("u".into()), |_| None, none)
                .unwrap_err()
                .contains("\"course\"")
        );
        let t = ChannelTemplate::parse("news:all").unwrap();
        assert_eq!(t.fill(|_| None, |_| None, none), Ok("news:all".into()));
        // `{subject:<n>}`: the n-th token, from 1.
        let t = ChannelTemplate::parse("org:{subject:2}-{subject:4}").unwrap();
        assert_eq!(t.subject_tokens(), Some(4));
        let tokens = ["notify", "acme", "users", "alice"];
        let token = |n: usize| tokens.get(n - 1).map(|t| (*t).to_owned());
        assert_eq!(
            t.fill(|_| None, |_| None, token),
            Ok("org:acme-alice".into())
        );
        let short = |n: usize| tokens[..3].get(n - 1).map(|t| (*t).to_owned());
        let e = t.fill(|_| None, |_| None, short).unwrap_err();
        assert!(e.contains("fewer than 4 tokens"), "{e}");
        for bad in [
            "#{key",
            "{user}",
            "{header:}",
            "a b{key}",
            "",
            "#{subject:0}",
            "#{subject:}",
            "#{subject:x}",
            "#{subject:-1}",
            "#{subject:256}",
        ] {
            assert!(ChannelTemplate::parse(bad).is_err(), "{bad:?}");
        }
        let e = ChannelTemplate::parse("#{subject:0}").unwrap_err();
        assert!(e.contains("count from 1"), "{e}");
    }

    #[test]
    fn subjects_match_and_collide_like_nats() {
        for ok in [
            "notify.>",
            "a",
            "a.*.c",
            "*",
            ">",
            "users.*.inbox",
            "a-b_c.D9",
        ] {
            assert!(is_filter_subject(ok), "{ok}");
        }
        for bad in [
            "", ".a", "a.", "a..b", "a b", "a.>.b", "a.b>", "a*.b", "a.**", "a.\tb", "ä.b",
        ] {
            assert!(!is_filter_subject(bad), "{bad:?}");
        }
        assert!(!is_filter_subject(&"a".repeat(256)));
        assert!(subject_matches("notify.>", "notify.alice"));
        assert!(subject_matches("notify.>", "notify.a.b"));
        assert!(!subject_matches("notify.>", "notify"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subjects_collide("a.>", "a.b"));
        assert!(subjects_collide("a.*", "*.b"));
        assert!(subjects_collide("a.b", "a.b"));
        assert!(subjects_collide(">", "x.y"));
        assert!(!subjects_collide("a.*", "a.b.c"));
        assert!(!subjects_collide("a.>", "b.>"));
        assert!(!subjects_collide("a.b", "a.c"));
        for ok in ["notification-processors", "EVENTS", "a_b"] {
            assert!(is_jetstream_name(ok), "{ok}");
        }
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b", "a\\b", "a\tb"] {
            assert!(!is_jetstream_name(bad), "{bad:?}");
        }
    }

    /// A section with these rules, on NATS and Kafka.
    fn with_rules(rules: &[(&str, &str, Option<&str>, &str)]) -> DurableConfig {
        DurableConfig {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            kafka_brokers: Some("k:9092".into()),
            consume: rules
                .iter()
                .map(|(topic, subject, stream, channel)| ConsumeRule {
                    topic: (!topic.is_empty()).then(|| (*topic).into()),
                    subject: (!subject.is_empty()).then(|| (*subject).into()),
                    stream: stream.map(Into::into),
                    channel: (*channel).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn consume_rules_take_a_topic_or_a_subject() {
        let good = with_rules(&[
            ("notifications", "", None, "#{key}"),
            ("", "notify.>", None, "#{key}"),
            (
                "",
                "course.*.updates",
                Some("COURSES"),
                "course:{subject:2}",
            ),
        ]);
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            good.consume[1].source(),
            Ok(ConsumeSource::Jetstream {
                subject: "notify.>",
                stream: None
            })
        );
        assert_eq!(
            good.consume[0].source(),
            Ok(ConsumeSource::Kafka("notifications"))
        );
        let refused = [
            (("t", "s.>", None, "#{key}"), "both topic and subject"),
            (("", "", None, "#{key}"), "needs topic"),
            (("t", "", Some("S"), "#{key}"), "stream goes with subject"),
            (("t", "", None, "#{subject:1}"), "for subject rules"),
            (("a/b", "", None, "#{key}"), "not a Kafka topic"),
            (("", "a..b", None, "#{key}"), "not a NATS subject"),
            (("", "a b", None, "#{key}"), "not a NATS subject"),
            (("", "a.>.b", None, "#{key}"), "not a NATS subject"),
            (("", "a.>", Some("A.B"), "#{key}"), "not a JetStream stream"),
            (("", "a.*", None, "#{subject:3}"), "have 2 tokens"),
            (("", "wsedge.>", None, "#{key}"), "own dead letters"),
            (("", ">", None, "#{key}"), "own dead letters"),
            (("", "a.>", None, "{nope}"), "neither"),
        ];
        for (rule, want) in refused {
            let e = with_rules(&[rule]).validate().unwrap_err();
            assert!(e.contains(want), "{rule:?}: {e}");
            assert!(e.contains("#1"), "{rule:?}: the rule is named: {e}");
        }
        // `{subject:<n>}` past a `>` may be there.
        assert_eq!(
            with_rules(&[("", "a.>", None, "#{subject:5}")]).validate(),
            Ok(())
        );
        let e = with_rules(&[("", "a.>", None, "#{key}"), ("", "a.b", None, "#{key}")])
            .validate()
            .unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        let e = with_rules(&[("t", "", None, "#{key}"), ("t", "", None, "#{key}")])
            .validate()
            .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        // The group names the durable consumer of subject rules.
        let mut dotted = with_rules(&[("", "a.>", None, "#{key}")]);
        dotted.consume_group = "team.notifications".into();
        assert!(dotted.validate().unwrap_err().contains("consume_group"));
        // A Kafka group may have dots.
        let mut kafka = with_rules(&[("t", "", None, "#{key}")]);
        kafka.consume_group = "team.notifications".into();
        assert_eq!(kafka.validate(), Ok(()));
        // Topic rules need the brokers; subject rules do not.
        kafka.kafka_brokers = None;
        assert!(kafka.validate().unwrap_err().contains("kafka_brokers"));
        let mut js = with_rules(&[("", "a.>", None, "#{key}")]);
        js.kafka_brokers = None;
        assert_eq!(js.validate(), Ok(()));
    }

    #[test]
    fn consume_rules_parse_from_toml() {
        let d: DurableConfig = toml::from_str(
            r##"
            [[consume]]
            subject = "notify.>"
            stream = "BACKEND"
            channel = "#{key}"

            [[consume]]
            topic = "notifications"
            channel = "#{key}"
            "##,
        )
        .unwrap();
        assert_eq!(d.consume[0].subject.as_deref(), Some("notify.>"));
        assert_eq!(d.consume[0].stream.as_deref(), Some("BACKEND"));
        assert_eq!(d.consume[0].topic, None);
        assert_eq!(d.consume[1].name(), "notifications");
        assert!(
            toml::from_str::<DurableConfig>("[[consume]]\nqueue = \"x\"\nchannel = \"a\"").is_err()
        );
    }

    #[test]
    fn the_spill_dir_defaults_to_the_state_directory() {
        let set = DurableConfig {
            dir: Some("/x/y".into()),
            ..Default::default()
        };
        assert_eq!(set.spill_dir(), PathBuf::from("/x/y"));
    }
}
