//! Per-connection command rate limit: a fixed one-second window (the
//! shard's tick), so the state is two integers the caller keeps (in
//! [`crate::engine::session::Session`]) and the check is a compare.
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

/// The largest per-second limit the window can count to twice (the count
/// is 16 bits, to keep a connection's state small).
pub const MAX_COMMANDS_PER_SECOND: u32 = 30_000;

/// Counts one command at tick `now` against `limit` per second (0 =
/// unlimited, else at most [`MAX_COMMANDS_PER_SECOND`]), in the window
/// `(window, count)` the caller keeps.
pub fn admit(window: &mut u32, count: &mut u16, now: u32, limit: u32) -> Admit {
    if limit == 0 {
        return Admit::Run;
    }
    if *window != now {
        *window = now;
        *count = 0;
    }
    *count = count.saturating_add(1);
    let n = u32::from(*count);
    if n <= limit {
        Admit::Run
    } else if n <= limit.saturating_mul(2) {
        Admit::Refuse
    } else {
        Admit::Disconnect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limit_then_refuse_then_disconnect() {
        let (mut w, mut c) = (0, 0);
        let got: Vec<Admit> = (0..7).map(|_| admit(&mut w, &mut c, 10, 3)).collect();
        use Admit::*;
        assert_eq!(got, vec![Run, Run, Run, Refuse, Refuse, Refuse, Disconnect]);
        // A new second starts afresh.
        assert_eq!(admit(&mut w, &mut c, 11, 3), Run);
        // Unlimited.
        assert!((0..100_000).all(|_| admit(&mut w, &mut c, 1, 0) == Run));
        // The count saturates instead of wrapping: a flood at the largest
        // limit stays a flood.
        let max = MAX_COMMANDS_PER_SECOND;
        let last = (0..200_000).map(|_| admit(&mut w, &mut c, 12, max)).last();
        assert_eq!(last, Some(Disconnect));
    }
}
