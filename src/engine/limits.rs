//! Per-connection command rate limit: a fixed one-second window (the
//! shard's tick), so the state is two integers and the check is a compare.
//!
//! Commands beyond `limit` in a second are answered with error 114 (too
//! many requests, temporary); a client that keeps going past twice the
//! limit in one second is flooding and is disconnected with 3503.

/// What to do with one more command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the limit: run it.
    Run,
    /// Over the limit: answer error 114.
    Refuse,
    /// Far over the limit: close the connection (3503).
    Disconnect,
}

/// Commands seen in the current one-second window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandRate {
    window: u32,
    count: u32,
}

impl CommandRate {
    /// Counts one command at tick `now` against `limit` per second
    /// (0 = unlimited).
    pub fn admit(&mut self, now: u32, limit: u32) -> Admit {
        if limit == 0 {
            return Admit::Run;
        }
        if self.window != now {
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count <= limit {
            Admit::Run
        } else if self.count <= limit.saturating_mul(2) {
            Admit::Refuse
        } else {
            Admit::Disconnect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limit_then_refuse_then_disconnect() {
        let mut r = CommandRate::default();
        let got: Vec<Admit> = (0..7).map(|_| r.admit(10, 3)).collect();
        use Admit::*;
        assert_eq!(got, vec![Run, Run, Run, Refuse, Refuse, Refuse, Disconnect]);
        // A new second starts afresh.
        assert_eq!(r.admit(11, 3), Run);
        // Unlimited.
        let mut r = CommandRate::default();
        assert!((0..10_000).all(|_| r.admit(1, 0) == Run));
    }
}
