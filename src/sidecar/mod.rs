//! Sidecar threads: work that must never run on a shard (slow or
//! blocking I/O). For now the admin HTTP server; broker workers (NATS,
//! JetStream, Kafka, Redis) join here.

pub mod admin;
