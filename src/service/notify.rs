//! The service manager's notification protocol (`sd_notify(3)`), through
//! the `sd-notify` crate: `READY=1`, `RELOADING=1`, `STOPPING=1`,
//! `STATUS=...` and `WATCHDOG=1`, each one datagram to `$NOTIFY_SOCKET`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. A failed
//! send is logged once, not per call (a socket that went away would
//! otherwise log every watchdog period), and again once it works.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{info, warn};

/// Sends state changes to the service manager, when there is one.
#[derive(Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set at start.
    socket: bool,
    /// `WATCHDOG_USEC` (for this process) was set at start.
    watchdog: Option<Duration>,
    /// The last send failed (and was logged).
    failing: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the
    /// environment.
    pub fn from_env() -> Self {
        Self {
            socket: std::env::var_os("NOTIFY_SOCKET").is_some(),
            // None unless WATCHDOG_USEC is set and WATCHDOG_PID, if set, is
            // this process.
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            failing: false,
        }
    }

    /// Whether a service manager listens.
    pub fn active(&self) -> bool {
        self.socket
    }

    /// The watchdog timeout the manager enforces (`WatchdogSec=`), if any
    /// and if there is a socket to ping.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.socket)
    }

    /// Start-up is finished: every shard serves.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload starts (`RELOADING=1` with the monotonic time, as systemd
    /// 253+ requires; older ones ignore the stamp). [`Notifier::ready`]
    /// ends it.
    pub fn reloading(&mut self) {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// The drain starts.
    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A one-line status (`systemctl status` shows it).
    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Every shard is turning: reset the watchdog timer.
    pub fn ping(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.socket {
            return;
        }
        match sd_notify::notify(states) {
            Ok(()) if self.failing => {
                self.failing = false;
                info!("service manager notifications work again");
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(
                    error = %e,
                    socket = ?std::env::var_os("NOTIFY_SOCKET"),
                    "cannot notify the service manager (NOTIFY_SOCKET); logged once until it works"
                );
            }
            Err(_) => {}
        }
    }
}
