//! Server-driven heartbeat: ping every `ping_interval`, close a connection
//! that has not answered within `pong_timeout` (code 3003).
//!
//! Pure arithmetic on whole seconds; the shard's [`TimerWheel`] calls
//! [`Heartbeat::on_timer`] when the connection's deadline comes round.
//!
//! [`TimerWheel`]: crate::engine::timer::TimerWheel

/// Heartbeat settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Seconds between pings.
    pub ping_interval: u32,
    /// Seconds a ping may go unanswered. Must be below `ping_interval`.
    pub pong_timeout: u32,
}

/// What the timer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Not due yet: schedule again at this tick.
    Wait(u32),
    /// Send a ping now and schedule again at this tick.
    Ping(u32),
    /// No pong in time: close the connection.
    Timeout,
}

/// Per-connection heartbeat state (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    deadline: u32,
    awaiting_pong: bool,
}

impl Heartbeat {
    /// Starts the heartbeat of a connection opened at `now`.
    pub fn start(now: u32, cfg: &HeartbeatConfig) -> Self {
        Self {
            deadline: now + cfg.ping_interval,
            awaiting_pong: false,
        }
    }

    /// A plain deadline at `at` with no ping outstanding: what a connection
    /// that is not open (still upgrading, or closing) waits on instead.
    pub fn until(at: u32) -> Self {
        Self {
            deadline: at,
            awaiting_pong: false,
        }
    }

    /// The tick at which the timer must look at this connection again.
    pub fn deadline(&self) -> u32 {
        self.deadline
    }

    /// Whether a ping is outstanding.
    pub fn awaiting_pong(&self) -> bool {
        self.awaiting_pong
    }

    /// Called when the connection's timer slot comes round at `now`.
    pub fn on_timer(&mut self, now: u32, cfg: &HeartbeatConfig) -> HeartbeatAction {
        if now < self.deadline {
            return HeartbeatAction::Wait(self.deadline);
        }
        if self.awaiting_pong {
            return HeartbeatAction::Timeout;
        }
        self.awaiting_pong = true;
        self.deadline = now + cfg.pong_timeout;
        HeartbeatAction::Ping(self.deadline)
    }

    /// Called when a pong arrives. The next ping is due `ping_interval`
    /// after the previous one was sent.
    pub fn on_pong(&mut self, cfg: &HeartbeatConfig) {
        if self.awaiting_pong {
            self.awaiting_pong = false;
            let sent = self.deadline - cfg.pong_timeout;
            self.deadline = sent + cfg.ping_interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::timer::TimerWheel;

    const CFG: HeartbeatConfig = HeartbeatConfig {
        ping_interval: 25,
        pong_timeout: 10,
    };

    #[test]
    fn ping_then_pong_then_ping_again() {
        let mut hb = Heartbeat::start(0, &CFG);
        assert_eq!(hb.on_timer(24, &CFG), HeartbeatAction::Wait(25));
        assert_eq!(hb.on_timer(25, &CFG), HeartbeatAction::Ping(35));
        hb.on_pong(&CFG);
        assert!(!hb.awaiting_pong());
        // The wheel still visits at 35; the next ping is due at 50.
        assert_eq!(hb.on_timer(35, &CFG), HeartbeatAction::Wait(50));
        assert_eq!(hb.on_timer(50, &CFG), HeartbeatAction::Ping(60));
        assert_eq!(hb.on_timer(60, &CFG), HeartbeatAction::Timeout);
    }

    /// Virtual time through the wheel: three connections, one of which
    /// never answers; it times out exactly ping_interval + pong_timeout
    /// after it opened, the others keep being pinged.
    #[test]
    fn deadlines_through_the_wheel() {
        let mut wheel: TimerWheel<usize> = TimerWheel::new(64, 0);
        let mut conns: Vec<Heartbeat> = (0..3).map(|i| Heartbeat::start(i, &CFG)).collect();
        for (i, c) in conns.iter().enumerate() {
            wheel.schedule(c.deadline(), i);
        }
        let mut pings = vec![Vec::new(); 3];
        let mut timeouts = Vec::new();
        let mut due = Vec::new();
        for now in 1..=120u32 {
            due.clear();
            wheel.advance(now, &mut due);
            for &i in &due {
                match conns[i].on_timer(now, &CFG) {
                    HeartbeatAction::Wait(at) => wheel.schedule(at, i),
                    HeartbeatAction::Ping(at) => {
                        pings[i].push(now);
                        wheel.schedule(at, i);
                        if i != 2 {
                            conns[i].on_pong(&CFG); // answers at once
                        }
                    }
                    HeartbeatAction::Timeout => timeouts.push((i, now)),
                }
            }
        }
        assert_eq!(pings[0], vec![25, 50, 75, 100]);
        assert_eq!(pings[1], vec![26, 51, 76, 101]);
        assert_eq!(pings[2], vec![27]);
        assert_eq!(timeouts, vec![(2, 37)]);
    }
}
