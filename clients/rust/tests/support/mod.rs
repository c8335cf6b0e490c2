//! Test harness: runs the real `wsedge` binary on loopback ports with a
//! config file (as the node's own tests/common does), can SIGKILL it and
//! start it again on the same client port, stop and continue it, and
//! call its HTTP API.
//!
//! The binary: `$WSEDGE_BIN` when set (and nothing else), else the
//! repository's `target/release/wsedge`. Without one, each test says so
//! loudly on stderr and passes without running (see [`binary`]).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// How long the server may take to start.
const START: Duration = Duration::from_secs(30);

/// The API key every test server gets.
pub const API_KEY: &str = "rsdk-test-key-0123";

/// The server binary, or `None` (after printing why) when there is none.
pub fn binary() -> Option<PathBuf> {
    // WSEDGE_BIN, when set, is the only candidate: a run that names its
    // binary must not test another one.
    let candidates = match std::env::var_os("WSEDGE_BIN") {
        Some(b) => vec![PathBuf::from(b)],
        None => vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/wsedge")],
    };
    for c in &candidates {
        if c.is_file() {
            return Some(c.clone());
        }
    }
    eprintln!(
        "\n*** SKIPPED: no wsedge binary found (looked at {candidates:?}).\n\
         *** Build it (`cargo build --release` at the repository root) or set WSEDGE_BIN.\n"
    );
    None
}

/// Starts a server for the test, or returns from it (skipped, loudly)
/// when there is no binary.
#[macro_export]
macro_rules! server_or_skip {
    ($config:expr) => {
        match support::binary() {
            Some(bin) => support::Server::start(bin, $config),
            None => return,
        }
    };
}

/// A running server process.
pub struct Server {
    bin: PathBuf,
    config: PathBuf,
    child: Child,
    /// The client listener (kept across restarts).
    pub client: SocketAddr,
    /// The HTTP API listener.
    pub api: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `bin` with `config` (TOML) on a free client port.
    pub fn start(bin: PathBuf, config: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("wsedge-client-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config_path = dir.join(format!("{port}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let client: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (child, api, log) = spawn(&bin, &config_path, client);
        Server {
            bin,
            config: config_path,
            child,
            client,
            api,
            log,
        }
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.client)
    }

    /// SIGKILL: no drain, no close frames; the kernel resets the sockets.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the binary again on the same client port (after [`Server::kill`]).
    pub fn restart(&mut self) {
        let (child, api, log) = spawn(&self.bin, &self.config, self.client);
        self.child = child;
        self.api = api;
        self.log = log;
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// `POST /api/<method>` with the test key; the whole JSON answer.
    pub fn api(&self, method: &str, body: &str) -> Value {
        let mut s = TcpStream::connect(self.api).expect("connect to the API");
        s.set_read_timeout(Some(START)).unwrap();
        let req = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: apikey {API_KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "API {method}: {out}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("API {method} ({e}): {out}"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns the binary and waits for its `listening` line; retries a few
/// times while the client port is still held (a restart right after a kill).
fn spawn(
    bin: &PathBuf,
    config: &PathBuf,
    client: SocketAddr,
) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut last_log = String::new();
    for _ in 0..20 {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .args(["--listen", &client.to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("WSEDGE_API_LISTEN", "127.0.0.1:0")
            .env("WSEDGE_API_KEY", API_KEY)
            .env("WSEDGE_LOG_LEVEL", "info")
            // The node reads every WSEDGE_* variable as configuration, and
            // refuses unknown ones: not the harness's own.
            .env_remove("WSEDGE_BIN")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wsedge");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" listening ")
                    && let Some(i) = line.find("api=")
                {
                    let api = line[i + 4..].split_whitespace().next().unwrap_or("");
                    if let (Ok(api), Some(tx)) = (api.parse::<SocketAddr>(), tx.take()) {
                        let _ = tx.send(api);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        match rx.recv_timeout(START) {
            Ok(api) => return (child, api, log),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                last_log = log.lock().unwrap().clone();
                // Only a port still held is worth another try.
                if !last_log.contains("in use") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    panic!("the server did not start on {client}; last log:\n{last_log}");
}
