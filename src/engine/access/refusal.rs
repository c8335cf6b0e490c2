//! Why a client was refused, with what each refusal answers (HTTP status
//! at the handshake, error code after it), its metrics label, and a tally
//! that turns refusals into one log line per interval instead of one per
//! event (a flood of refusals must not become a flood of logs).

use std::fmt;

use crate::engine::codes::ErrorCode;

/// Every reason the access rules refuse a client.
///
/// HTTP status at the handshake: 403 when the client is not welcome at
/// all (address filter, origin), 429 when it is too fast (it may retry
/// later), 503 when a capacity cap is reached (like the node's own
/// connection cap), 400 for a broken PROXY header (the shell may just
/// close: the sender is a load balancer, not a browser). 429 and 503
/// responses carry `Retry-After: 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 403: the address matches `ip_deny`.
    IpDenied,
    /// 403: `ip_allow` is set and the address matches none of it.
    IpNotAllowed,
    /// 403: `Origin` is not in `allowed_origins`.
    OriginRefused,
    /// 429: the address opened connections faster than
    /// `per_ip_connection_rate` allows.
    IpRate,
    /// 503: the address has `per_ip_max_connections` open.
    IpConnections,
    /// 503: the per-IP table is full (`max_tracked_ips`) and the address
    /// is not in it.
    TableFull,
    /// 503 at the handshake, error 106 after `connect`: the user has
    /// `per_user_max_connections` open.
    UserConnections,
    /// Error 114 (temporary): the user published faster than
    /// `per_user_publish_rate` allows on this shard (429 if ever refused
    /// over HTTP).
    UserPublishRate,
    /// 400: a trusted proxy sent no valid PROXY v2 header while
    /// `proxy_protocol` is on.
    ProxyHeader,
}

impl Refusal {
    /// Number of reasons.
    pub const COUNT: usize = 9;

    /// Every reason, for metrics (each has a series from the start).
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::IpDenied,
        Refusal::IpNotAllowed,
        Refusal::OriginRefused,
        Refusal::IpRate,
        Refusal::IpConnections,
        Refusal::TableFull,
        Refusal::UserConnections,
        Refusal::UserPublishRate,
        Refusal::ProxyHeader,
    ];

    /// Position in [`Refusal::ALL`], for per-reason counters in an array.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Label for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::IpDenied => "ip_denied",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::OriginRefused => "origin_refused",
            Refusal::IpRate => "ip_rate",
            Refusal::IpConnections => "ip_connections",
            Refusal::TableFull => "table_full",
            Refusal::UserConnections => "user_connections",
            Refusal::UserPublishRate => "user_publish_rate",
            Refusal::ProxyHeader => "proxy_header",
        }
    }

    /// The HTTP status the handshake answers with.
    pub const fn status(self) -> u16 {
        match self {
            Refusal::IpDenied | Refusal::IpNotAllowed | Refusal::OriginRefused => 403,
            Refusal::IpRate | Refusal::UserPublishRate => 429,
            Refusal::IpConnections | Refusal::TableFull | Refusal::UserConnections => 503,
            Refusal::ProxyHeader => 400,
        }
    }

    /// The error reply for refusals that happen after the upgrade (a
    /// `connect` over the user's cap, a publish over the user's rate);
    /// `None` for those that only happen at the handshake.
    pub const fn error_code(self) -> Option<ErrorCode> {
        match self {
            Refusal::UserConnections => Some(ErrorCode::LimitExceeded),
            Refusal::UserPublishRate => Some(ErrorCode::TooManyRequests),
            _ => None,
        }
    }

    /// The complete HTTP response for this refusal at the handshake. The
    /// body never says which list or limit matched beyond the status.
    pub fn response(self) -> Vec<u8> {
        let (reason, body) = match self.status() {
            403 => ("Forbidden", "forbidden\n"),
            429 => ("Too Many Requests", "too many connections, retry later\n"),
            503 => ("Service Unavailable", "server at capacity, retry later\n"),
            _ => ("Bad Request", "bad request\n"),
        };
        let retry = if matches!(self.status(), 429 | 503) {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {reason}\r\n{retry}Content-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.status(),
            body.len()
        )
        .into_bytes()
    }
}

/// Refusals counted per reason since the last report, for a log line once
/// per interval. One per shard (no sharing); time is an input.
#[derive(Debug, Clone)]
pub struct RefusalTally {
    counts: [u64; Refusal::COUNT],
    since_ms: u64,
}

/// The refusals of one interval, displayed as `ip_rate=12 origin_refused=3`
/// (only the reasons that occurred).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalSummary {
    /// Count per reason, indexed by [`Refusal::index`].
    pub counts: [u64; Refusal::COUNT],
    /// Start of the interval (ms).
    pub since_ms: u64,
    /// End of the interval (ms).
    pub until_ms: u64,
}

impl RefusalTally {
    /// An empty tally starting at `now_ms`.
    pub fn new(now_ms: u64) -> RefusalTally {
        RefusalTally {
            counts: [0; Refusal::COUNT],
            since_ms: now_ms,
        }
    }

    /// Counts one refusal.
    pub fn note(&mut self, r: Refusal) {
        self.counts[r.index()] = self.counts[r.index()].saturating_add(1);
    }

    /// If `interval_ms` has passed since the last report and something was
    /// refused, the summary to log, and the tally starts afresh. Quiet
    /// intervals report nothing.
    pub fn take_due(&mut self, now_ms: u64, interval_ms: u64) -> Option<RefusalSummary> {
        if now_ms.saturating_sub(self.since_ms) < interval_ms {
            return None;
        }
        let counts = std::mem::replace(&mut self.counts, [0; Refusal::COUNT]);
        let since_ms = std::mem::replace(&mut self.since_ms, now_ms);
        counts.iter().any(|&n| n > 0).then_some(RefusalSummary {
            counts,
            since_ms,
            until_ms: now_ms,
        })
    }
}

impl fmt::Display for RefusalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for r in Refusal::ALL {
            let n = self.counts[r.index()];
            if n > 0 {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{}={n}", r.label())?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn labels_unique_and_indexes_match() {
        let labels: HashSet<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::COUNT);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn status_mapping() {
        use Refusal::*;
        let by_status = |s| -> Vec<Refusal> {
            Refusal::ALL
                .into_iter()
                .filter(|r| r.status() == s)
                .collect()
        };
        assert_eq!(by_status(403), [IpDenied, IpNotAllowed, OriginRefused]);
        assert_eq!(by_status(429), [IpRate, UserPublishRate]);
        assert_eq!(by_status(503), [IpConnections, TableFull, UserConnections]);
        assert_eq!(by_status(400), [ProxyHeader]);
        assert_eq!(
            UserPublishRate.error_code(),
            Some(ErrorCode::TooManyRequests)
        );
        assert_eq!(UserConnections.error_code(), Some(ErrorCode::LimitExceeded));
        assert_eq!(IpDenied.error_code(), None);
    }

    #[test]
    fn responses_are_complete_http() {
        for r in Refusal::ALL {
            let resp = String::from_utf8(r.response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {} ", r.status())));
            let (head, body) = resp.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            assert_eq!(
                head.contains("Retry-After: 1"),
                matches!(r.status(), 429 | 503)
            );
        }
    }

    #[test]
    fn tally_reports_once_per_interval() {
        let mut t = RefusalTally::new(0);
        for _ in 0..1000 {
            t.note(Refusal::IpRate);
        }
        t.note(Refusal::OriginRefused);
        assert_eq!(t.take_due(9_999, 10_000), None);
        let s = t.take_due(10_000, 10_000).unwrap();
        assert_eq!(s.to_string(), "origin_refused=1 ip_rate=1000");
        assert_eq!((s.since_ms, s.until_ms), (0, 10_000));
        // A quiet interval logs nothing.
        assert_eq!(t.take_due(20_000, 10_000), None);
        t.note(Refusal::TableFull);
        assert_eq!(t.take_due(25_000, 10_000), None);
        assert_eq!(
            t.take_due(30_000, 10_000).unwrap().to_string(),
            "table_full=1"
        );
    }
}
