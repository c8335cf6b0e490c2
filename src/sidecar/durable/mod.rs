//! The durable-events sidecar: events that must not be lost when the
//! broker is slow or down are kept on local disk until the broker has
//! them, then sent in order.
//!
//! Layout: [`spill`], the on-disk log itself (synchronous, owned by the
//! worker thread); [`record`], a record for the sink and its encoding in
//! the spill; [`worker`], the thread that sends records to JetStream or
//! Kafka (direct while the broker answers, through the spill while it
//! does not), with its client handle and options; [`metrics`], its
//! counters; [`inbound`], the other direction: a Kafka consumer group
//! whose records the node publishes, committing what the homes
//! accepted; [`inbound_js`], the same from JetStream subjects (a durable
//! pull consumer, acknowledging what the homes accepted); [`consume`],
//! the node's side of both: each record published to the channel its
//! rule names. The engine's side (building
//! records at the home, `durable_ack`) lives in the shard.

pub mod consume;
pub mod inbound;
pub mod inbound_js;
pub mod metrics;
pub mod record;
pub mod spill;
pub mod worker;
