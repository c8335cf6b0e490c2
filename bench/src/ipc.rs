//! Driver ⇄ worker messages: one JSON object per line, commands on the
//! worker's stdin, events on its stdout.

use serde::{Deserialize, Serialize};

/// Driver → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Sets the measurement window: publications whose `t` is in
    /// `[start_ns, end_ns)` are counted and their latency recorded.
    /// Answered with [`Event::Ack`].
    Window {
        /// Window start, `CLOCK_MONOTONIC` ns.
        start_ns: u64,
        /// Window end (exclusive), `CLOCK_MONOTONIC` ns.
        end_ns: u64,
    },
    /// `rooms`: every connection starts publishing to its room at
    /// `rate_per_conn`, connection g first at `start_ns + g/total × period`,
    /// until `end_ns`. Answered with [`Event::Ack`].
    Publish {
        /// First publication slot, `CLOCK_MONOTONIC` ns.
        start_ns: u64,
        /// No publication at or after this, `CLOCK_MONOTONIC` ns.
        end_ns: u64,
        /// Publications per second per connection.
        rate_per_conn: f64,
        /// Size of each publication's `data`, bytes.
        payload: usize,
    },
    /// `storm`: drop every established connection at once (abortive close,
    /// no close handshake), then reconnect, `connect` and resubscribe each.
    /// Answered with [`Event::Ack`] once the command is applied.
    Drop,
    /// `recover-storm`: the dropped connections reconnect now (in
    /// `recover` mode they wait for this instead of reconnecting as soon as
    /// all are closed), each resubscribing with `recover` from the last
    /// position it saw. Answered with [`Event::Ack`].
    Reconnect,
    /// `storm`: asks for [`Event::Storm`].
    StormStatus,
    /// Asks for the running counters ([`Event::Stats`]).
    Stats,
    /// Asks for the final report ([`Event::Report`]).
    Report,
    /// Closes every connection and exits.
    Exit,
}

/// Worker → driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Every connection attempt has finished (subscribed or failed).
    Ready(Ready),
    /// A command without other answer was applied.
    Ack,
    /// Running counters.
    Stats(Stats),
    /// Final report.
    Report(Report),
    /// Progress of a storm.
    Storm(StormStatus),
}

/// Progress of a `storm` in one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormStatus {
    /// `CLOCK_MONOTONIC` ns when the worker started dropping.
    pub drop_ns: u64,
    /// Established connections when the drop command arrived.
    pub live_at_drop: u64,
    /// Of those, closed so far.
    pub dropped: u64,
    /// `CLOCK_MONOTONIC` ns when the last of them was closed.
    pub closed_all_ns: u64,
    /// Reconnected and resubscribed.
    pub resubscribed: u64,
    /// Reconnections that failed (see `errors`).
    pub failed: u64,
    /// `CLOCK_MONOTONIC` ns of the last subscribe reply.
    pub last_sub_ns: u64,
    /// Resubscribed connections that have received a publication published
    /// after their resubscription.
    pub receiving: u64,
    /// `CLOCK_MONOTONIC` ns of the last such first publication.
    pub last_recv_ns: u64,
    /// Per-connection time from the drop to the subscribe reply, ns
    /// histogram as `(value, count)`.
    pub sub_hist: Vec<(u64, u64)>,
    /// Per-connection time from the drop to the first new publication.
    pub recv_hist: Vec<(u64, u64)>,
    /// The first few distinct error messages.
    pub errors: Vec<String>,
    /// `recover-storm`: `CLOCK_MONOTONIC` ns when [`Command::Reconnect`]
    /// arrived (the histograms then count from it, not from the drop).
    #[serde(default)]
    pub reconnect_ns: u64,
    /// `recover-storm`: subscribe replies with `recovered: true` and the
    /// same epoch.
    #[serde(default)]
    pub recovered: u64,
    /// `recover-storm`: subscribe replies that did not recover.
    #[serde(default)]
    pub not_recovered: u64,
    /// `recover-storm`: publications replayed in the subscribe replies.
    #[serde(default)]
    pub recovered_pubs: u64,
    /// `recover-storm`: offsets missing from the replays (between the last
    /// offset seen before the drop and the reply's offset).
    #[serde(default)]
    pub replay_gaps: u64,
    /// `recover-storm`: replayed publications at or below an offset already
    /// seen.
    #[serde(default)]
    pub replay_dups: u64,
    /// Missing offsets in the pushes (before the drop and after the
    /// resubscription), summed over connections.
    #[serde(default)]
    pub gaps: u64,
    /// Pushes not above the previous offset (duplicates or reordering).
    #[serde(default)]
    pub dups: u64,
    /// `failover`: connections lost and not subscribed again yet.
    #[serde(default)]
    pub lost_now: u64,
    /// `failover`: losses of a connection after its first one (a close
    /// such as 3004 after it had resubscribed), each followed by another
    /// reconnection.
    #[serde(default)]
    pub lost_again: u64,
    /// `failover`: subscribes refused with 100 (temporary) and tried again.
    #[serde(default)]
    pub sub_retries: u64,
    /// `failover`: reconnection attempts that failed otherwise (and were
    /// tried again).
    #[serde(default)]
    pub reconnect_errors: u64,
}

/// The result of the connection phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    /// Connections upgraded, connected and subscribed.
    pub ok: u64,
    /// Connections that failed (see `errors`).
    pub failed: u64,
    /// `CLOCK_MONOTONIC` ns when the first connection attempt started.
    pub first_connect_ns: u64,
    /// `CLOCK_MONOTONIC` ns when the last subscribe reply arrived.
    pub last_ready_ns: u64,
    /// The first few distinct error messages.
    pub errors: Vec<String>,
}

/// Running counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// `pub` pushes received, all of them.
    pub received: u64,
    /// `pub` pushes whose `t` falls in the window.
    pub received_in_window: u64,
    /// `pub` pushes *received* while the window was open (any `t`): the
    /// subscribers' actual delivery throughput.
    pub received_during_window: u64,
    /// Connections that ended after being established (close, EOF, error).
    pub closed: u64,
    /// Bytes read from the sockets (what came over the wire), all.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes read while the window was open.
    #[serde(default)]
    pub bytes_during_window: u64,
    /// Connections that verify (inflate, check offsets, time) every push;
    /// the others only count them (`--inflate-every`).
    #[serde(default)]
    pub verifiers: u64,
    /// Text frames received (any content).
    #[serde(default)]
    pub frames: u64,
    /// Pushes other than `pub` and `disconnect` (presence `join`, `leave`,
    /// `state`), counted per object.
    #[serde(default)]
    pub other_pushes: u64,
    /// Bytes of those push objects (JSON text, without frame headers or
    /// `\n` separators).
    #[serde(default)]
    pub other_push_bytes: u64,
}

/// Final report of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Counters.
    pub stats: Stats,
    /// Missing offsets (a push skipped ahead), summed over subscribers.
    pub gaps: u64,
    /// Pushes whose offset was not above the previous one.
    pub out_of_order: u64,
    /// Pushes without a parsable `"t"`.
    pub no_t: u64,
    /// Lowest offset counted in the window.
    pub min_offset: Option<u64>,
    /// Highest offset counted in the window.
    pub max_offset: Option<u64>,
    /// Latency histogram in ns, as `(value, count)` pairs.
    pub hist: Vec<(u64, u64)>,
    /// Close codes / disconnect reasons of established connections, with counts.
    pub closes: Vec<(String, u64)>,
    /// Connections that negotiated `permessage-deflate`.
    #[serde(default)]
    pub deflate_conns: u64,
    /// Compressed (RSV1) messages received and inflated.
    #[serde(default)]
    pub compressed_msgs: u64,
    /// `rooms`: per room, this worker's publications whose `t` is in the
    /// window and that were acknowledged.
    #[serde(default)]
    pub room_pubs: Vec<u64>,
    /// `rooms`: per room, this worker's subscribed members.
    #[serde(default)]
    pub room_members: Vec<u64>,
    /// `rooms`: publications sent (all).
    #[serde(default)]
    pub pubs_sent: u64,
    /// `rooms`: publications with `t` in the window that were sent.
    #[serde(default)]
    pub pubs_sent_in_window: u64,
    /// `rooms`: publish replies (success).
    #[serde(default)]
    pub pubs_acked: u64,
    /// `rooms`: publish error replies.
    #[serde(default)]
    pub pub_errors: u64,
    /// The first few distinct error messages.
    pub errors: Vec<String>,
    /// `collab-*`: the editors' figures.
    #[serde(default)]
    pub collab: CollabReport,
    /// `failover` mode: per channel index, recovering `subscribe` replies
    /// with `recovered: true` in the same epoch.
    #[serde(default)]
    pub channel_recovered: Vec<u64>,
    /// `failover` mode: per channel index, recovering replies that did not
    /// recover.
    #[serde(default)]
    pub channel_not_recovered: Vec<u64>,
}

/// What a worker's story editors saw (`collab-*` workloads). Their
/// updates reuse [`Report`]'s publish counters: `pubs_sent`,
/// `pubs_sent_in_window`, `pubs_acked`, `pub_errors`, and `room_pubs`
/// (per story, accepted updates sent in the window; `room_members` is
/// per story the viewers).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CollabReport {
    /// `update` replies whose `version` was not the one expected
    /// (`base_version + 1`, each editor writing its own section).
    pub version_mismatches: u64,
    /// `update` replies with `duplicate: true` (never expected: every
    /// `op_id` is fresh).
    pub duplicates: u64,
    /// Update events whose version did not follow the previous one of the
    /// same section by exactly 1, as members saw them.
    pub version_skips: u64,
    /// Editor-side `update` round trip (send to reply), ns histogram as
    /// `(value, count)`, over the updates sent in the window.
    pub ack_hist: Vec<(u64, u64)>,
}

impl CollabReport {
    /// Adds `o`'s counters (not the histogram) to these.
    pub fn add_counts(&mut self, o: &CollabReport) {
        self.version_mismatches += o.version_mismatches;
        self.duplicates += o.duplicates;
        self.version_skips += o.version_skips;
    }
}
