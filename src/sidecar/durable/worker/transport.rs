//! The seam between the worker's loop and a broker: what the loop asks of
//! a transport (connect and create the sinks, send a batch, notice a
//! session ending, retire a session), and the types a batch travels in.
//! The loop's rules (order, spill, slow start, refusals, backoff) are the
//! same for every broker; a transport decides what is permanent and how
//! a connection is fenced (the parent module's doc).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A connection attempt: resolves to a session once the broker answers
/// and the sinks exist, or to why not. Polled in the loop's `select!`
/// until it resolves (never dropped half-way, except at the stop).
pub(super) type Connecting<S> = Pin<Box<dyn Future<Output = Result<S, String>> + Send>>;

/// A batch in flight: resolves once every record is done or one failed.
pub(super) type Landing = Pin<Box<dyn Future<Output = Landed> + Send>>;

/// A broker the worker sends to.
pub(super) trait Transport: Send + 'static {
    /// One connection (or producer) the loop sends on; dropping it, or
    /// [`Transport::retire`], ends it.
    type Session: Send + 'static;

    /// The broker's name for logs ("NATS", "Kafka").
    const BROKER: &'static str;

    /// Starts a connection attempt: connect, then create the sinks that
    /// are missing (never change one that exists). The attempt waits
    /// for the session retired before it, if any, to be gone (the
    /// fence). Fails only when it cannot even start (e.g. no thread).
    fn connect(&mut self) -> std::io::Result<Connecting<Self::Session>>;

    /// Resolves when `session` has ended (the connection lost, the client
    /// closed), with why; cancel-safe.
    async fn lost(session: &mut Self::Session) -> String;

    /// Sends `batch` in order on `session`, awaits the sink's answers
    /// (all within the worker's `ack_timeout`) and dead-letters what the
    /// sink refuses for good. Stops at the first failure: the records
    /// after it are not done (some may have been stored: sent again,
    /// they are duplicates).
    fn fly(&self, session: &Self::Session, batch: Vec<Outgoing>) -> Landing;

    /// Ends `session`: nothing it still holds may reach the broker after
    /// the next session's records (the fence). The default drops it.
    fn retire(&mut self, session: Self::Session) {
        drop(session);
    }
}

/// One record to send; `reject` set when it must not be sent (it is
/// dead-lettered at once with that reason).
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    /// The JetStream subject or Kafka topic.
    pub(super) subject: String,
    /// The Kafka message key (empty: none); JetStream ignores it.
    pub(super) key: String,
    /// The record's id (`Nats-Msg-Id`, Kafka header `wsedge-id`).
    pub(super) msg_id: String,
    /// The bytes stored.
    pub(super) payload: Bytes,
    /// Why it must not be sent (a spilled record that does not decode).
    pub(super) reject: Option<String>,
}

/// What became of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Done {
    /// The sink has it (`duplicate`: it had it already).
    Stored {
        /// The acknowledgement said duplicate.
        duplicate: bool,
    },
    /// Refused for good; sent to the dead-letter subject or topic.
    DeadLettered(String),
}

/// How a batch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// The connection is suspect (lost, timed out): drop it.
    Connection(String),
    /// The broker answered no for now; the connection is fine.
    Broker(String),
}

/// A batch's outcome: what became of its first records, in order, and
/// why the rest (if any) were not done.
#[derive(Debug, Default)]
pub(super) struct Landed {
    pub(super) done: Vec<Done>,
    pub(super) failure: Option<Failure>,
}

/// Longest a dead-letter reason (or other header value we write) is.
pub(super) const MAX_REASON: usize = 512;

/// `s` safe for a header value: control characters replaced, at most
/// [`MAX_REASON`] bytes.
pub(in crate::sidecar::durable) fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_cleaned_and_bounded() {
        assert_eq!(clean("a\r\nb"), "a  b");
        assert_eq!(clean(&"é".repeat(400)).len(), MAX_REASON);
    }
}
