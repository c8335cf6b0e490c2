//! The `durable` workload's publishers: N connections in the driver
//! process, each publishing to its own channel(s) either flat out (at most
//! `window` publishes unanswered) or at a fixed rate, optionally with
//! `durable_ack: true`, and timing every publish from send to reply.
//!
//! Every publish is counted in the *phase* its send time falls in: the
//! driver sets phase boundaries on `CLOCK_MONOTONIC` (e.g. warm-up |
//! window, or broker up | down | replaying | after), and may add one while
//! the publishers run.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;

use crate::clock::{mono_ns, to_instant};
use crate::conn::{Conn, Control, handle_control};
use crate::payload::build_publish;
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::worker::new_histogram;
use crate::wsclient::OP_TEXT;

/// Most publishes one connection leaves unanswered in rate mode (the
/// server stalls: the publisher stops sending rather than queue without
/// bound; a publish due then is sent late, and its latency counts from
/// the time it was sent).
pub(crate) const MAX_IN_FLIGHT_RATE: u64 = 50_000;

/// Appends a `publish` command whose `data` is `{"t":<t>,"p":"xx…"}` of
/// `payload` bytes, with `"durable_ack":true` when asked.
pub(crate) fn build_durable_publish(
    out: &mut Vec<u8>,
    id: u64,
    channel_json: &str,
    t: u64,
    payload: usize,
    durable_ack: bool,
) {
    build_publish(out, id, channel_json, t, payload);
    if durable_ack {
        // `…"p":"xx"}}}` → `…"p":"xx"},"durable_ack":true}}`.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b",\"durable_ack\":true}}");
    }
}

/// What the publishes sent in one phase came to.
pub(crate) struct PhaseTally {
    /// Publishes sent.
    pub sent: u64,
    /// Success replies.
    pub acked: u64,
    /// Error replies by code.
    pub errors: BTreeMap<u64, u64>,
    /// The first error reply.
    pub first_error: Option<String>,
    /// Send-to-reply time of the acked ones, ns.
    pub hist: Histogram<u64>,
}

impl PhaseTally {
    fn new() -> Self {
        Self {
            sent: 0,
            acked: 0,
            errors: BTreeMap::new(),
            first_error: None,
            hist: new_histogram(),
        }
    }
}

/// Per channel: success replies and the highest offset they gave.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ChannelTally {
    /// Success replies.
    pub acked: u64,
    /// Error 123 replies (published, not confirmed by the sink).
    pub unconfirmed: u64,
    /// Highest offset acknowledged.
    pub max_offset: u64,
}

/// State shared by the driver and every publishing connection.
pub(crate) struct Shared {
    /// Phase boundaries (send time, `CLOCK_MONOTONIC` ns, ascending):
    /// phase k holds the sends at or after `boundaries[k-1]`, before
    /// `boundaries[k]`.
    pub boundaries: RefCell<Vec<u64>>,
    /// Publishing stops at this time (may be moved while running).
    pub stop_ns: Cell<u64>,
    /// Per phase.
    pub phases: RefCell<Vec<PhaseTally>>,
    /// Per channel name.
    pub channels: RefCell<HashMap<String, ChannelTally>>,
    /// Publishes unanswered after the drain, all connections.
    pub unanswered: Cell<u64>,
}

impl Shared {
    /// Boundaries `b` (ascending), stopping at `stop_ns`.
    pub fn new(b: Vec<u64>, stop_ns: u64) -> Rc<Shared> {
        Rc::new(Shared {
            boundaries: RefCell::new(b),
            stop_ns: Cell::new(stop_ns),
            phases: RefCell::new(Vec::new()),
            channels: RefCell::new(HashMap::new()),
            unanswered: Cell::new(0),
        })
    }

    fn phase_of(&self, t: u64) -> usize {
        self.boundaries.borrow().partition_point(|&b| b <= t)
    }

    /// Adds a boundary (later than every one so far).
    pub fn push_boundary(&self, t: u64) {
        self.boundaries.borrow_mut().push(t);
    }

    /// Runs `f` on phase `k`'s tally (created empty if needed).
    pub fn with_phase<R>(&self, k: usize, f: impl FnOnce(&mut PhaseTally) -> R) -> R {
        let mut p = self.phases.borrow_mut();
        while p.len() <= k {
            p.push(PhaseTally::new());
        }
        f(&mut p[k])
    }

    /// Acked publishes over every phase, and error 123 replies (both
    /// made an event).
    pub fn accepted_total(&self) -> u64 {
        self.channels
            .borrow()
            .values()
            .map(|c| c.acked + c.unconfirmed)
            .sum()
    }
}

/// One connection's settings.
pub(crate) struct ConnSpec {
    /// Its channels (publication k goes to the (k mod n)-th).
    pub channels: Vec<String>,
    /// `data` bytes.
    pub payload: usize,
    /// `"durable_ack": true` on every publish.
    pub durable_ack: bool,
    /// Publications per second (this connection), or flat out.
    pub rate: Option<f64>,
    /// Flat out: most unanswered publishes.
    pub window: usize,
    /// First send (rate mode: the schedule's origin), `CLOCK_MONOTONIC` ns.
    pub first_ns: u64,
    /// How long to wait for the last replies after the stop.
    pub drain: Duration,
}

struct InFlight {
    t: u64,
    phase: usize,
    channel: usize,
}

/// Publishes on `c` as `spec` says until `shared.stop_ns`, then waits (up
/// to `spec.drain`) for the last replies; counts everything in `shared`.
pub(crate) async fn run_conn(mut c: Conn, spec: ConnSpec, shared: Rc<Shared>) -> Result<()> {
    let channels_json: Vec<String> = spec
        .channels
        .iter()
        .map(|ch| serde_json::to_string(ch).expect("a string"))
        .collect();
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut next_id: u64 = 2;
    let mut msg = Vec::with_capacity(1024);
    let period_ns = spec.rate.map(|r| 1e9 / r);
    let mut scheduled: u64 = 0;
    let mut sent: u64 = 0;
    tokio::time::sleep_until(to_instant(spec.first_ns)).await;
    let t0 = spec.first_ns;

    let process =
        |c: &mut Conn, h: &crate::wsclient::FrameHeader, inflight: &mut HashMap<u64, InFlight>| {
            let now = mono_ns();
            for_each_object(c.reader.payload(h), |o| {
                let (id, ok, code, offset) = match classify(o) {
                    ServerMsg::Reply { id, offset } => (id, true, 0, offset),
                    ServerMsg::Error { id, code } => (id, false, code, None),
                    _ => return,
                };
                let Some(f) = inflight.remove(&id) else {
                    return;
                };
                shared.with_phase(f.phase, |p| {
                    if ok {
                        p.acked += 1;
                        let _ = p.hist.record(now.saturating_sub(f.t).max(1));
                    } else {
                        *p.errors.entry(code).or_default() += 1;
                        if p.first_error.is_none() {
                            p.first_error = Some(String::from_utf8_lossy(o).into_owned());
                        }
                    }
                });
                if ok || code == 123 {
                    let mut chs = shared.channels.borrow_mut();
                    let t = chs.entry(spec.channels[f.channel].clone()).or_default();
                    if ok {
                        t.acked += 1;
                        t.max_offset = t.max_offset.max(offset.unwrap_or(0));
                    } else {
                        t.unconfirmed += 1;
                    }
                }
            });
        };

    loop {
        let stop = shared.stop_ns.get();
        if mono_ns() >= stop {
            break;
        }
        loop {
            let due = match period_ns {
                None => (inflight.len() as u64) < spec.window as u64,
                Some(p) => {
                    (t0 as f64 + scheduled as f64 * p) as u64 <= mono_ns()
                        && (inflight.len() as u64) < MAX_IN_FLIGHT_RATE
                }
            };
            if !due {
                break;
            }
            let t = mono_ns();
            if t >= stop {
                break;
            }
            let ch = (sent % channels_json.len() as u64) as usize;
            msg.clear();
            build_durable_publish(
                &mut msg,
                next_id,
                &channels_json[ch],
                t,
                spec.payload,
                spec.durable_ack,
            );
            c.writer.queue(OP_TEXT, &msg);
            let phase = shared.phase_of(t);
            shared.with_phase(phase, |p| p.sent += 1);
            inflight.insert(
                next_id,
                InFlight {
                    t,
                    phase,
                    channel: ch,
                },
            );
            next_id += 1;
            sent += 1;
            scheduled += 1;
            if c.writer.queued() >= 64 * 1024 {
                break;
            }
        }
        c.writer.flush().await?;
        // Wake for the next due send, or to notice a moved stop.
        let cap = mono_ns() + 50_000_000;
        let wake = match period_ns {
            Some(p) => ((t0 as f64 + scheduled as f64 * p) as u64).min(stop),
            None => stop,
        }
        .min(cap);
        tokio::select! {
            biased;
            h = c.reader.next_frame() => {
                let mut h = h?;
                loop {
                    if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                        if let Control::Closed(code) = ctl {
                            bail!("publisher connection closed by the server (code {code})");
                        }
                    } else {
                        process(&mut c, &h, &mut inflight);
                        c.reader.consume(&h);
                    }
                    if !c.reader.has_frame() {
                        break;
                    }
                    h = c.reader.next_frame().await?;
                }
            }
            _ = tokio::time::sleep_until(to_instant(wake)) => {}
        }
    }
    let deadline = tokio::time::Instant::now() + spec.drain;
    while !inflight.is_empty() {
        tokio::select! {
            h = c.reader.next_frame() => {
                let h = h?;
                if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                    if let Control::Closed(code) = ctl {
                        bail!("publisher connection closed by the server (code {code})");
                    }
                } else {
                    process(&mut c, &h, &mut inflight);
                    c.reader.consume(&h);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    shared
        .unanswered
        .set(shared.unanswered.get() + inflight.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_ack_publish() {
        let mut v = Vec::new();
        build_durable_publish(&mut v, 3, "\"js:c0\"", 12345, 30, true);
        let s = String::from_utf8(v).unwrap();
        let j: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(j["id"], 3);
        assert_eq!(j["publish"]["channel"], "js:c0");
        assert_eq!(j["publish"]["durable_ack"], true);
        assert_eq!(j["publish"]["data"]["t"], 12345);
        let mut w = Vec::new();
        build_durable_publish(&mut w, 3, "\"js:c0\"", 12345, 30, false);
        let j: serde_json::Value = serde_json::from_slice(&w).unwrap();
        assert!(j["publish"].get("durable_ack").is_none());
        assert_eq!(
            serde_json::to_string(&j["publish"]["data"]).unwrap().len(),
            30
        );
    }

    #[test]
    fn phases_by_send_time() {
        let s = Shared::new(vec![100, 200], 300);
        assert_eq!(s.phase_of(50), 0);
        assert_eq!(s.phase_of(100), 1);
        assert_eq!(s.phase_of(199), 1);
        assert_eq!(s.phase_of(250), 2);
        s.push_boundary(260);
        assert_eq!(s.phase_of(270), 3);
        s.with_phase(3, |p| p.sent += 1);
        assert_eq!(s.phases.borrow().len(), 4);
    }
}
