//! SSE fallback metrics (`wsedge_sse_*`): node-wide, no `shard` label.
//! Every labelled series is created in [`Metrics::sse`], so each is
//! exported at 0 from the start. Stream connections are also ordinary
//! connections (`wsedge_connections`, the limits, the handshake counts).

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Metrics, ResultLabel, result_counter};

/// The registered families.
pub(super) struct SseFamilies {
    streams: Gauge<i64, AtomicI64>,
    posts: Family<ResultLabel, Counter>,
}

impl SseFamilies {
    pub(super) fn register(r: &mut Registry) -> Self {
        let f = Self {
            streams: Gauge::default(),
            posts: Family::default(),
        };
        r.register(
            "sse_streams",
            "Open SSE event streams (the fallback transport)",
            f.streams.clone(),
        );
        r.register(
            "sse_posts",
            "SSE command posts by result (ok: taken by the stream, unknown: no such stream, overloaded: the stream's shard inbox was full, expired: the body did not arrive in time)",
            f.posts.clone(),
        );
        f
    }
}

/// How an SSE command post ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostResult {
    /// The stream took the commands (204).
    Ok,
    /// No such stream, or it has ended (404).
    Unknown,
    /// The stream's shard could not take it now (503).
    Overloaded,
    /// The body did not arrive before the handshake deadline.
    Expired,
}

impl PostResult {
    /// Every result, in [`SseMetrics`]' order.
    pub const ALL: [PostResult; 4] = [
        PostResult::Ok,
        PostResult::Unknown,
        PostResult::Overloaded,
        PostResult::Expired,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            PostResult::Ok => "ok",
            PostResult::Unknown => "unknown",
            PostResult::Overloaded => "overloaded",
            PostResult::Expired => "expired",
        }
    }
}

/// A shard's handles on the SSE metrics.
#[derive(Clone)]
pub struct SseMetrics {
    streams: Gauge<i64, AtomicI64>,
    posts: [Counter; 4],
}

impl SseMetrics {
    /// A stream opened (+1) or ended (-1).
    pub fn stream(&self, opened: bool) {
        if opened {
            self.streams.inc();
        } else {
            self.streams.dec();
        }
    }

    /// Counts a post's result.
    pub fn post(&self, result: PostResult) {
        self.posts[result as usize].inc();
    }
}

impl Metrics {
    /// Handles for a shard; every `result` series is created now.
    pub fn sse(&self) -> SseMetrics {
        let f = &self.sse;
        SseMetrics {
            streams: f.streams.clone(),
            posts: PostResult::ALL.map(|r| result_counter(&f.posts, r.label())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_at_zero_and_counts() {
        let m = Metrics::new();
        let sse = m.sse();
        let text = m.encode();
        for r in PostResult::ALL {
            let line = format!("wsedge_sse_posts_total{{result=\"{}\"}} 0", r.label());
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("wsedge_sse_streams 0"));
        sse.stream(true);
        sse.stream(true);
        sse.stream(false);
        sse.post(PostResult::Overloaded);
        let text = m.encode();
        assert!(text.contains("wsedge_sse_streams 1"));
        assert!(text.contains("wsedge_sse_posts_total{result=\"overloaded\"} 1"));
        assert!(text.contains("wsedge_sse_posts_total{result=\"ok\"} 0"));
    }
}
