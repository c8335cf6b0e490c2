//! A stand-in for systemd's notification socket: a Unix datagram socket
//! the test owns (`NOTIFY_SOCKET` for the server), whose datagrams are
//! collected with their arrival times.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One datagram: when it arrived and its text (`KEY=value` lines).
#[derive(Debug, Clone)]
pub struct Notice {
    pub at: Instant,
    pub text: String,
}

impl Notice {
    /// Whether one of its lines is exactly `line`.
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    /// The value of its `key=` line, if any.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The socket and everything received on it so far.
pub struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<Notice>,
    /// Every datagram taken from the socket, in order.
    pub seen: Vec<Notice>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "wsedge-notify-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx
                        .send(Notice {
                            at: Instant::now(),
                            text,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        NotifySocket {
            path,
            rx,
            seen: Vec::new(),
            stop,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as the server's `NOTIFY_SOCKET` value.
    pub fn env(&self) -> String {
        self.path.to_str().unwrap().to_owned()
    }

    /// Waits up to `limit` for a datagram matching `f` (everything taken
    /// on the way is kept in `seen`); its index in `seen`.
    pub fn wait_for(&mut self, limit: Duration, f: impl Fn(&Notice) -> bool) -> Option<usize> {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let n = self.rx.recv_timeout(left).ok()?;
            self.seen.push(n);
            if f(self.seen.last().unwrap()) {
                return Some(self.seen.len() - 1);
            }
        }
    }

    /// Takes everything that arrives for `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let _ = self.wait_for(d, |_| false);
    }

    /// Arrival times of the datagrams in `seen` that hold `line`.
    pub fn times_of(&self, line: &str) -> Vec<Instant> {
        self.seen
            .iter()
            .filter(|n| n.has(line))
            .map(|n| n.at)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The longest gap between consecutive instants.
pub fn longest_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}
