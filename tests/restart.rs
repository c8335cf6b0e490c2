//! Restart without downtime: a new process binds the same client port
//! (`SO_REUSEPORT`, as do the admin and API listeners) and becomes ready
//! beside the old one; the old one then drains. Under 10,000 connected
//! clients and a connect loop running throughout, no connection attempt
//! is refused and every client told to reconnect is back, on the new
//! process, before the old one has exited.
//!
//! The kernel must hand the connections still queued on the old
//! process's listeners to the new one when they close
//! (`net.ipv4.tcp_migrate_req = 1`, set by `tuning/sysctl.d` and checked by
//! `wsedge tune --check`); the test sets it for its run where it may.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::raw_json::RawJson;
use common::*;
use serde_json::json;

const CLIENTS: usize = 10_000;

fn start(listen: &str) -> Server {
    let mut opts = Opts {
        listen: listen.into(),
        // Room for 10,000 clients and the loop's connections.
        nofile: Some(20_000),
        ..Opts::default()
    };
    opts = opts.env("WSEDGE_DRAIN_TIMEOUT", "6s");
    let server = Server::start_with(opts);
    server.wait_for("ready", || server.admin_get("/readyz").0 == 200);
    server
}

/// One connection attempt to `server`'s port, all the way to the
/// `connect` reply; the error says where it failed.
fn try_connect(port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: edu-matrix-v1.json\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => {
                return Err(format!(
                    "closed in the upgrade: {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            Err(e) => return Err(format!("upgrade: {e}")),
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("refused: {}", String::from_utf8_lossy(&head)));
    }
    Ok(())
}

#[test]
fn a_new_process_takes_over_with_no_refused_connection() {
    // As a deployment sets it (tuning/sysctl.d); where /proc/sys cannot be
    // written (a container), the restart is tested without it.
    let knob = "/proc/sys/net/ipv4/tcp_migrate_req";
    struct Restore(&'static str, String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, self.1.trim());
        }
    }
    let _restore = match std::fs::read_to_string(knob) {
        Ok(before) if std::fs::write(knob, "1").is_ok() => Some(Restore(knob, before)),
        _ => {
            eprintln!("net.ipv4.tcp_migrate_req cannot be set here: testing without it");
            None
        }
    };

    let mut old = start("127.0.0.1:0");
    let port = old.client.port();
    let mut clients: Vec<RawJson> = (0..CLIENTS)
        .map(|_| RawJson::connect(&old, json!({})).0)
        .collect();
    // Some clients hold subscriptions, as real ones do.
    for c in clients.iter_mut().take(100) {
        let r = c.call("subscribe", json!({"channel": "chat:x"}));
        assert_eq!(r["subscribe"]["offset"], 0, "{r}");
    }

    // A connect loop runs from before the new process starts until the
    // old one has exited.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let looper = {
        let (stop, ok, failed, failures) =
            (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match try_connect(port) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    // The new process binds the same port and becomes ready beside the
    // old one.
    let new = start(&format!("127.0.0.1:{port}"));
    assert_eq!(new.client.port(), port);
    // The old one drains: every client is told to reconnect and does, to
    // the same address.
    old.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = 0;
    for c in clients.drain(..) {
        let mut c = c;
        let (frames, code) = c.raw.until_close();
        assert_eq!(code, Some(1001), "drained with 1001");
        assert!(
            frames
                .iter()
                .any(|f| String::from_utf8_lossy(&f.payload).contains("\"disconnect\"")),
            "a disconnect push before the close"
        );
        drop(c);
        let (again, reply) = RawJson::connect(&new, json!({}));
        assert!(reply["connect"]["client"].is_string(), "{reply}");
        drop(again);
        back += 1;
        assert!(
            Instant::now() < deadline,
            "clients still coming back after 30 s"
        );
    }
    let status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exits");
    assert!(status.success(), "{status:?}");
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    assert_eq!(back, CLIENTS);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(
        ok > 100,
        "the connect loop ran through the restart ({ok} connections)"
    );
    assert_eq!(
        failed,
        0,
        "refused or reset during the restart: {:?}",
        &failures.lock().unwrap()[..]
    );
    assert!(new.admin_get("/readyz").0 == 200);
}
