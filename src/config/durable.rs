//! The `[durable]` configuration section and the namespaces' `durable`
//! key: where durable events go (`durable = "jetstream:<subject>"` or
//! `"kafka:<topic>"` per namespace) and the local spill that keeps them
//! while the broker is slow or down (docs/OPERATIONS.md, "Durable
//! events"). Without a durable namespace nothing here is used.
//!
//! Every key is also settable as `WSEDGE_DURABLE_<KEY>`, e.g.
//! `WSEDGE_DURABLE_DIR`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sidecar::durable::spill::FsyncPolicy;

/// Prefix of the environment variables that set `[durable]` keys.
pub const ENV_PREFIX: &str = "WSEDGE_DURABLE_";

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

/// One `[[durable.consume]]` table: a Kafka topic whose records the node
/// publishes to channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeRule {
    /// The topic (it must exist).
    pub topic: String,
    /// The channel each record goes to: text with `{key}` (the record's
    /// key) and `{header:<name>}` (a header's value) in it, e.g.
    /// `"#{key}"` (the personal channel of the user the record is keyed
    /// by) or `"course:{header:course}"`.
    pub channel: String,
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
            parts.push(match name.strip_prefix("header:") {
                _ if name == "key" => Part::Key,
                Some(h) if !h.is_empty() => Part::Header(h.into()),
                _ => {
                    return Err(format!(
                        "channel = {s:?}: `{{{name}}}` is neither `{{key}}` nor `{{header:<name>}}`"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.into()));
        }
        let t = ChannelTemplate { parts };
        // With every value a plain word, the result must be a channel.
        let sample = t.fill(|_| Some("u1".into()), |_| Some("u1".into()));
        match sample {
            Ok(c) if crate::engine::channel::is_valid_channel(&c) => Ok(t),
            _ => Err(format!(
                "channel = {s:?} does not make a valid channel name (docs/PROTOCOL.md, Channels)"
            )),
        }
    }

    /// The channel for a record: `key` and `header(name)` give the values
    /// (`None`: missing or not UTF-8). The error names what is missing.
    pub fn fill(
        &self,
        key: impl Fn(()) -> Option<String>,
        header: impl Fn(&str) -> Option<String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Key => out.push_str(&key(()).ok_or("the record has no UTF-8 key")?),
                Part::Header(h) => out.push_str(
                    &header(h).ok_or_else(|| format!("the record has no UTF-8 header {h:?}"))?,
                ),
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
    /// NATS servers for `jetstream:` sinks. Default: `[cluster] nats_url`
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
    /// The consumer group of `consume` (the seed's). Default
    /// `notification-processors`.
    pub consume_group: String,
    /// `[[durable.consume]]`: Kafka topics whose records are published to
    /// channels. Default none.
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
        if !self.consume.is_empty() && self.kafka_brokers.is_none() {
            return Err("[[durable.consume]] needs [durable] kafka_brokers".into());
        }
        if self.consume_group.is_empty() || self.consume_group.len() > 249 {
            return Err("durable consume_group must be 1-249 bytes".into());
        }
        for (i, r) in self.consume.iter().enumerate() {
            if !is_kafka_topic(&r.topic) {
                return Err(format!(
                    "[[durable.consume]] #{}: topic = {:?} is not a Kafka topic name",
                    i + 1,
                    r.topic
                ));
            }
            ChannelTemplate::parse(&r.channel)
                .map_err(|e| format!("[[durable.consume]] #{} ({}): {e}", i + 1, r.topic))?;
            if self.consume[..i].iter().any(|o| o.topic == r.topic) {
                return Err(format!(
                    "[[durable.consume]]: topic {:?} is listed twice",
                    r.topic
                ));
            }
        }
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

    /// A copy fit to print: credentials in `nats_url` hidden.
    pub fn redacted(&self) -> Self {
        DurableConfig {
            nats_url: self
                .nats_url
                .as_deref()
                .map(crate::sidecar::cluster::redacted_servers),
            ..self.clone()
        }
    }
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
    fn channel_templates_fill_from_key_and_headers() {
        let t = ChannelTemplate::parse("#{key}").unwrap();
        assert_eq!(
            t.fill(|_| Some("alice".into()), |_| None),
            Ok("#alice".into())
        );
        assert!(
            t.fill(|_| None, |_| None)
                .unwrap_err()
                .contains("no UTF-8 key")
        );
        let t = ChannelTemplate::parse("course:{header:course}-{key}").unwrap();
        let h = |n: &str| (n == "course").then(|| "bio101".to_owned());
        assert_eq!(
            t.fill(|_| Some("u".into()), h),
            Ok("course:bio101-u".into())
        );
        assert!(
            t.fill(|_| Some("u".into()), |_| None)
                .unwrap_err()
                .contains("\"course\"")
        );
        let t = ChannelTemplate::parse("news:all").unwrap();
        assert_eq!(t.fill(|_| None, |_| None), Ok("news:all".into()));
        for bad in ["#{key", "{user}", "{header:}", "a b{key}", ""] {
            assert!(ChannelTemplate::parse(bad).is_err(), "{bad:?}");
        }
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
