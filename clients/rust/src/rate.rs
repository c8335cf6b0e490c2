//! The client's own command rate limit.
//!
//! The server runs at most `max_commands_per_second` commands per
//! connection in each one-second window (default 200), answers the next
//! as many with error 114 and closes the connection with 3503 (do not
//! reconnect) beyond twice the limit. A client flushing a long offline
//! outbox would cross that at once, so it paces itself: at most `limit`
//! commands per one-second window of its own. Its windows are not aligned
//! with the server's, so one server window may see two of the client's:
//! a client limit of half the server's never crosses it.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// A fixed one-second window counting commands sent.
#[derive(Debug)]
pub(crate) struct RateWindow {
    /// Commands per window; 0 = no limit.
    limit: u32,
    start: Option<Instant>,
    used: u32,
}

impl RateWindow {
    /// A window allowing `limit` commands a second (0 = unlimited).
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            start: None,
            used: 0,
        }
    }

    /// How many commands may be sent at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        if self.limit == 0 {
            return usize::MAX;
        }
        match self.start {
            Some(start) if now.duration_since(start) < WINDOW => {}
            _ => {
                self.start = Some(now);
                self.used = 0;
            }
        }
        (self.limit - self.used) as usize
    }

    /// Counts `n` commands sent (after [`RateWindow::available`] allowed them).
    pub fn consume(&mut self, n: usize) {
        if self.limit != 0 {
            self.used = self.used.saturating_add(n as u32).min(self.limit);
        }
    }

    /// When more may be sent, if the current window is used up.
    pub fn next_window(&self) -> Option<Instant> {
        match self.start {
            Some(start) if self.limit != 0 && self.used >= self.limit => Some(start + WINDOW),
            _ => None,
        }
    }

    /// Forgets the window (a new connection starts afresh).
    pub fn reset(&mut self) {
        self.start = None;
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_limit_per_window() {
        let t0 = Instant::now();
        let mut r = RateWindow::new(3);
        assert_eq!(r.available(t0), 3);
        assert_eq!(r.next_window(), None);
        r.consume(2);
        assert_eq!(r.available(t0 + Duration::from_millis(500)), 1);
        r.consume(1);
        assert_eq!(r.available(t0 + Duration::from_millis(999)), 0);
        assert_eq!(r.next_window(), Some(t0 + WINDOW));
        assert_eq!(r.available(t0 + WINDOW), 3);
        assert_eq!(r.next_window(), None);
    }

    #[test]
    fn zero_is_unlimited() {
        let mut r = RateWindow::new(0);
        let now = Instant::now();
        r.consume(1_000_000);
        assert_eq!(r.available(now), usize::MAX);
        assert_eq!(r.next_window(), None);
    }

    #[test]
    fn reset_starts_a_new_window() {
        let now = Instant::now();
        let mut r = RateWindow::new(2);
        r.available(now);
        r.consume(2);
        r.reset();
        assert_eq!(r.available(now), 2);
    }
}
