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
    /// The first few distinct error messages.
    pub errors: Vec<String>,
}
