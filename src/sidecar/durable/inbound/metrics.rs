//! The inbound consumers' counters and gauges (the Kafka consumer's and
//! the JetStream one's: each its own [`InboundMetrics`]), read by the
//! metrics registry at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

/// A consumer's counters and gauges (relaxed atomics). The JetStream
/// consumer leaves the Kafka-only ones (commits, rebalances, partitions)
/// at 0.
#[derive(Debug, Default)]
pub struct InboundMetrics {
    pub(in crate::sidecar::durable) received: AtomicU64,
    pub(in crate::sidecar::durable) acknowledged: AtomicU64,
    pub(in crate::sidecar::durable) dead_lettered: AtomicU64,
    pub(in crate::sidecar::durable) redelivered: AtomicU64,
    pub(in crate::sidecar::durable) retries: AtomicU64,
    pub(in crate::sidecar::durable) commits: AtomicU64,
    pub(in crate::sidecar::durable) commit_failures: AtomicU64,
    pub(in crate::sidecar::durable) rebalances: AtomicU64,
    pub(in crate::sidecar::durable) lag: AtomicU64,
    pub(in crate::sidecar::durable) in_flight: AtomicU64,
    pub(in crate::sidecar::durable) assigned_partitions: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundMetricsSnapshot {
    /// Counter: records read from the broker (Kafka: not counting
    /// hand-overs again; JetStream: every delivery, redeliveries
    /// included).
    pub received: u64,
    /// Counter: records the node answered `Ok`.
    pub acknowledged: u64,
    /// Counter: records answered `Err`, delivered to the dead-letter
    /// topic or subject.
    pub dead_lettered: u64,
    /// Counter: records handed over again (their ack dropped; JetStream:
    /// `nak`ed with a delay).
    pub redelivered: u64,
    /// Counter: dead letters that failed for now and were retried.
    pub retries: u64,
    /// Counter: offset commits sent (asynchronous ones are sent again
    /// at each interval until librdkafka's statistics show the
    /// coordinator has them).
    pub commits: u64,
    /// Counter: offset commits librdkafka refused at once, or
    /// synchronous ones that failed (retried at the next interval).
    pub commit_failures: u64,
    /// Counter: partition assignments and revocations.
    pub rebalances: u64,
    /// Gauge: Kafka: Σ (high watermark − committed offset) over the
    /// assigned partitions, as of librdkafka's last statistics;
    /// JetStream: Σ (`num_pending` + `num_ack_pending`) over the
    /// durable consumers, polled every second (the group's, not this
    /// node's).
    pub lag: u64,
    /// Gauge: records handed over and not yet done.
    pub in_flight: u64,
    /// Gauge: partitions assigned to this consumer.
    pub assigned_partitions: u64,
}

impl InboundMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> InboundMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        InboundMetricsSnapshot {
            received: get(&self.received),
            acknowledged: get(&self.acknowledged),
            dead_lettered: get(&self.dead_lettered),
            redelivered: get(&self.redelivered),
            retries: get(&self.retries),
            commits: get(&self.commits),
            commit_failures: get(&self.commit_failures),
            rebalances: get(&self.rebalances),
            lag: get(&self.lag),
            in_flight: get(&self.in_flight),
            assigned_partitions: get(&self.assigned_partitions),
        }
    }

    pub(in crate::sidecar::durable) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(in crate::sidecar::durable) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}
