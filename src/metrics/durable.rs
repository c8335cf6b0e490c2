//! Durable-events metrics (`wsedge_durable_*`): per shard, the
//! publications handed to a sink's queue or refused; per sink (`sink =
//! jetstream | kafka`), the worker's own counters and gauges, read from
//! its atomics at each scrape (a [`Collector`]), so nothing is copied
//! while no one looks.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::KindCounters;
use crate::sidecar::durable::consume::{ConsumeMetrics, ConsumerSource};
use crate::sidecar::durable::inbound::InboundMetricsSnapshot;
use crate::sidecar::durable::metrics::DurableMetricsSnapshot;
use crate::sidecar::durable::worker::DurableClient;

/// `{sink}` of the per-sink series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// The sinks whose workers are running, and the consumers that run,
/// read at each scrape.
#[derive(Debug, Default, Clone)]
pub(super) struct SinkSources {
    sinks: Arc<Mutex<Vec<(&'static str, DurableClient)>>>,
    consumers: Arc<Mutex<Vec<ConsumerSource>>>,
}

impl SinkSources {
    pub(super) fn set(&self, sinks: &[(&'static str, DurableClient)]) {
        *self.sinks.lock().unwrap_or_else(|e| e.into_inner()) = sinks.to_vec();
    }

    pub(super) fn set_consumers(&self, consumers: &[ConsumerSource]) {
        *self.consumers.lock().unwrap_or_else(|e| e.into_inner()) = consumers.to_vec();
    }
}

/// The registered durable families.
pub(super) struct DurableFamilies {
    /// `{shard, result}`: queued, refused.
    pub(super) publications: KindCounters,
    /// `{shard, kind}`: presence events queued, refused.
    pub(super) presence: KindCounters,
    /// `{shard, kind}`: story updates queued with a `durable_collab` sink,
    /// refused.
    pub(super) stories: KindCounters,
    pub(super) sources: SinkSources,
}

impl DurableFamilies {
    pub(super) fn register(r: &mut Registry) -> Self {
        let publications = KindCounters::default();
        r.register(
            "durable_publications",
            "Publications of durable namespaces handed to their sink's queue at the home (result \
             queued), or refused because the queue or the spill was full (result refused: the \
             publisher got error 112 and nothing was published)",
            publications.clone(),
        );
        let presence = KindCounters::default();
        r.register(
            "durable_presence_events",
            "Presence joins and leaves of durable_presence namespaces handed to their sink's queue \
             at the home (kind queued), or lost because the queue or the spill was full (kind \
             refused: the join or leave stood, its event was not kept)",
            presence.clone(),
        );
        let stories = KindCounters::default();
        r.register(
            "durable_story_events",
            "Story updates of durable_collab namespaces handed to their sink's queue at the home \
             (kind queued), or refused because the sink could not take events (kind refused: \
             the editor got error 112 and the update was not applied)",
            stories.clone(),
        );
        let sources = SinkSources::default();
        r.register_collector(Box::new(SinkCollector(sources.clone())));
        Self {
            publications,
            presence,
            stories,
            sources,
        }
    }
}

#[derive(Debug)]
struct SinkCollector(SinkSources);

/// A per-sink series: its name, help, and how it reads a snapshot.
type Series = (
    &'static str,
    &'static str,
    fn(&DurableMetricsSnapshot) -> u64,
);

const GAUGES: [Series; 5] = [
    (
        "durable_queued",
        "Durable events accepted and held in memory, not yet with the sink nor in the spill",
        |s| s.queued,
    ),
    (
        "durable_spill_records",
        "Durable events in the spill the sink does not have yet",
        |s| s.in_spill_records,
    ),
    (
        "durable_spill_bytes",
        "Bytes of the spill's segment files on disk",
        |s| s.spill_bytes,
    ),
    (
        "durable_oldest_unsent_milliseconds",
        "Age of the oldest durable event the sink has not acknowledged (0: none)",
        |s| s.oldest_unsent_age_ms,
    ),
    (
        "durable_up",
        "Whether the sink's worker has a connection to its broker (1) or not (0)",
        |s| u64::from(s.up),
    ),
];

const COUNTERS: [Series; 7] = [
    (
        "durable_sent",
        "Durable events the sink acknowledged (duplicates included)",
        |s| s.sent,
    ),
    (
        "durable_duplicates",
        "Acknowledgements the sink marked duplicate (an event sent again, stored once)",
        |s| s.duplicates,
    ),
    (
        "durable_spilled",
        "Durable events written to the spill",
        |s| s.spilled,
    ),
    (
        "durable_retries",
        "Failed attempts to send or connect, retried after a backoff",
        |s| s.retries,
    ),
    (
        "durable_dead_lettered",
        "Durable events the sink refused for good, sent to the dead-letter subject or topic",
        |s| s.dead_lettered,
    ),
    (
        "durable_refused",
        "Durable events the worker's queue refused (queue or spill full, too large, stopped)",
        |s| s.refused,
    ),
    (
        "durable_lost",
        "Accepted durable events lost after all (spill full at a stop, damaged on disk); each is logged",
        |s| s.lost,
    ),
];

impl Collector for SinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let consumers: Vec<(&'static str, InboundMetricsSnapshot, Arc<ConsumeMetrics>)> = self
            .0
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| (c.kind, c.inbound.snapshot(), c.consumed.clone()))
            .collect();
        if !consumers.is_empty() {
            encode_consumers(&mut encoder, &consumers)?;
        }
        let sinks: Vec<(&'static str, DurableMetricsSnapshot)> = self
            .0
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, c)| (*k, c.metrics().snapshot()))
            .collect();
        if sinks.is_empty() {
            return Ok(());
        }
        for (name, help, read) in GAUGES {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (sink, snap) in &sinks {
                let label = SinkLabel {
                    sink: (*sink).into(),
                };
                let value = i64::try_from(read(snap)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&label)?)?;
            }
        }
        for (name, help, read) in COUNTERS {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (sink, snap) in &sinks {
                let label = SinkLabel {
                    sink: (*sink).into(),
                };
                ConstCounter::new(read(snap)).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

/// `{source, result}` of consumed records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumedLabel {
    source: String,
    result: String,
}

/// `{source}` of the consumers' series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// A consumer's series: its name, help, type, whether the JetStream
/// consumer has it too (the rest are Kafka's only), and how it reads a
/// snapshot.
type ConsumerSeries = (
    &'static str,
    &'static str,
    prometheus_client::metrics::MetricType,
    bool,
    fn(&InboundMetricsSnapshot) -> u64,
);

const CONSUMER_SERIES: [ConsumerSeries; 6] = {
    use prometheus_client::metrics::MetricType::{Counter, Gauge};
    [
        (
            "durable_consumer_received",
            "Records the consumer read from its broker (Kafka: not counting hand-overs again; \
             JetStream: every delivery, redeliveries included)",
            Counter,
            true,
            |s| s.received,
        ),
        (
            "durable_consumer_rebalances",
            "Consumer group rebalances this node took part in (Kafka)",
            Counter,
            false,
            |s| s.rebalances,
        ),
        (
            "durable_consumer_commit_failures",
            "Offset commits that failed (Kafka; retried at the next interval)",
            Counter,
            false,
            |s| s.commit_failures,
        ),
        (
            "durable_consumer_lag",
            "Records not yet done: Kafka, high watermark - committed over this node's partitions; \
             JetStream, num_pending + num_ack_pending of the group's durable consumers (the same \
             on every node)",
            Gauge,
            true,
            |s| s.lag,
        ),
        (
            "durable_consumer_in_flight",
            "Records handed to the node and not yet settled",
            Gauge,
            true,
            |s| s.in_flight,
        ),
        (
            "durable_consumer_partitions",
            "Partitions assigned to this node's consumer (Kafka)",
            Gauge,
            false,
            |s| s.assigned_partitions,
        ),
    ]
};

/// The consumers' series, labelled by source (`kafka`, `jetstream`).
fn encode_consumers(
    encoder: &mut DescriptorEncoder<'_>,
    consumers: &[(&'static str, InboundMetricsSnapshot, Arc<ConsumeMetrics>)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    use std::sync::atomic::Ordering;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut family = encoder.encode_descriptor(
        "durable_consumed",
        "Records of [[durable.consume]] topics and subjects by what became of them: published \
         to their channel, refused for good (dead-lettered), or retried later (the home could \
         not take them now)",
        None,
        MetricType::Counter,
    )?;
    for (source, _, consume) in consumers {
        for (result, v) in [
            ("published", get(&consume.published)),
            ("refused", get(&consume.refused)),
            ("retried", get(&consume.retried)),
        ] {
            let label = ConsumedLabel {
                source: (*source).into(),
                result: result.into(),
            };
            ConstCounter::new(v).encode(family.encode_family(&label)?)?;
        }
    }
    for (name, help, kind, jetstream, read) in CONSUMER_SERIES {
        let mine: Vec<_> = consumers
            .iter()
            .filter(|(source, _, _)| jetstream || *source == "kafka")
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (source, snap, _) in mine {
            let label = SourceLabel {
                source: (*source).into(),
            };
            let v = read(snap);
            match kind {
                MetricType::Counter => {
                    ConstCounter::new(v).encode(family.encode_family(&label)?)?
                }
                _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&label)?)?,
            }
        }
    }
    Ok(())
}
