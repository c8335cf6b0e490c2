//! systemd's notification protocol end to end: the real binary talks to a
//! Unix datagram socket the test owns, as it would to systemd
//! (`NOTIFY_SOCKET`, `WATCHDOG_USEC`). READY=1 once every shard serves,
//! WATCHDOG=1 every half timeout, STATUS= lines, RELOADING=1 and READY=1
//! around a SIGHUP, STOPPING=1 at the drain; and nothing breaks without a
//! listening manager.

mod common;

use std::time::{Duration, Instant};

use common::notify::{NotifySocket, longest_gap};
use common::*;

#[tokio::test]
async fn ready_watchdog_status_reload_and_stopping() {
    let mut sock = NotifySocket::new();
    let mut server = Server::start_with(
        Opts::default()
            .env("NOTIFY_SOCKET", &sock.env())
            // 1 s: a ping every 500 ms.
            .env("WATCHDOG_USEC", "1000000")
            .env("WSEDGE_DRAIN_TIMEOUT", "2s"),
    );
    let ready = sock
        .wait_for(TIMEOUT, |n| n.has("READY=1"))
        .expect("READY=1");
    // Once READY=1 is sent every shard serves: at once the node says it is
    // ready and completes a WebSocket connect.
    assert_eq!(server.admin_get("/readyz").0, 200);
    let _a = JsonClient::connect(&server).await;
    let status = sock.seen[ready].value("STATUS").unwrap().to_owned();
    assert!(status.starts_with("serving 0 connections"), "{status}");
    assert!(status.ends_with("on 2 shards"), "{status}");
    // Nothing pinged before READY=1, and READY=1 was sent once.
    assert!(sock.seen[..ready].iter().all(|n| !n.has("WATCHDOG=1")));

    // Pings every ~500 ms while the shards turn; the status follows the
    // connections (refreshed every 2 s when it changed).
    let _b = JsonClient::connect(&server).await;
    let start = Instant::now();
    sock.wait_for(Duration::from_secs(6), |n| {
        n.value("STATUS")
            .is_some_and(|s| s.starts_with("serving 2 connections"))
    })
    .expect("a STATUS line with the two connections");
    sock.collect_for(Duration::from_millis(2600).saturating_sub(start.elapsed()));
    let pings = sock.times_of("WATCHDOG=1");
    assert!(pings.len() >= 5, "{:?}", sock.seen);
    assert!(
        longest_gap(&pings) < Duration::from_millis(1200),
        "{:?}",
        longest_gap(&pings)
    );
    assert_eq!(sock.times_of("READY=1").len(), 1);

    // SIGHUP: RELOADING=1 (with the monotonic time), then READY=1 with
    // what the reload did.
    server.signal(libc::SIGHUP);
    let reloading = sock
        .wait_for(TIMEOUT, |n| n.has("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(
        sock.seen[reloading]
            .value("MONOTONIC_USEC")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{:?}",
        sock.seen[reloading]
    );
    let again = sock
        .wait_for(TIMEOUT, |n| n.has("READY=1"))
        .expect("READY=1 after the reload");
    assert_eq!(
        sock.seen[again].value("STATUS"),
        Some("configuration reloaded: no live change")
    );

    // SIGTERM: STOPPING=1 as the drain starts, then a clean exit.
    server.signal(libc::SIGTERM);
    let stopping = sock
        .wait_for(TIMEOUT, |n| n.has("STOPPING=1"))
        .expect("STOPPING=1");
    let status = sock.seen[stopping].value("STATUS").unwrap();
    assert_eq!(status, "draining: 2 connections left");
    let exit = server
        .wait_exit(Duration::from_secs(10))
        .expect("exited after the drain");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn an_unreachable_manager_is_logged_once_and_harms_nothing() {
    let dir = std::env::temp_dir().join(format!("wsedge-no-notify-{}", std::process::id()));
    let server = Server::start_with(
        Opts::default()
            .env("NOTIFY_SOCKET", dir.join("gone.sock").to_str().unwrap())
            // A ping every 100 ms, each failing.
            .env("WATCHDOG_USEC", "200000"),
    );
    let mut c = JsonClient::connect(&server).await;
    c.idle_for(Duration::from_millis(800)).await;
    let r = c
        .call("publish", serde_json::json!({"channel": "x", "data": 1}))
        .await;
    assert!(r["publish"].is_object(), "{r}");
    let log = server.log.lock().unwrap().clone();
    assert_eq!(
        log.matches("cannot notify the service manager").count(),
        1,
        "{log}"
    );
}

#[test]
fn without_a_manager_there_is_no_watchdog_but_stalls_are_still_watched() {
    let server = Server::start();
    server.wait_for("ready", || server.admin_get("/readyz").0 == 200);
    let log = server.log.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("watching the shard loops"))
        .expect("the watch's start line");
    assert!(line.contains("notify=false"), "{line}");
    assert!(line.contains("stall_after_ms=2000"), "{line}");
    assert!(!line.contains("watchdog_ms"), "{line}");
    // Every shard has its series; an idle shard turns at least once a
    // second, so its age stays below the stall threshold.
    std::thread::sleep(Duration::from_millis(1500));
    for shard in ["0", "1"] {
        let age = server.metric(&format!(
            "wsedge_shard_last_turn_age_seconds{{shard=\"{shard}\"}}"
        ));
        assert!(age < 1.5, "shard {shard}: {age}");
        assert_eq!(
            server.metric(&format!("wsedge_shard_stalls_total{{shard=\"{shard}\"}}")),
            0.0
        );
    }
    let (_, body) = server.admin_get("/metrics");
    assert!(body.contains("wsedge_shard_last_turn_age_seconds{shard=\"1\"}"));
}
