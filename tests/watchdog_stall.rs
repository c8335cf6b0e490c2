//! The watchdog against shards that really stop: a build with the
//! `test-hooks` feature lets a test hold one shard's thread before it
//! starts (`EDGE_TEST_START_DELAY`) or block its loop for a while
//! (`EDGE_TEST_STALL_SHARD`). Run with
//! `cargo test --release --features test-hooks --test watchdog_stall`.

mod common;

use std::time::{Duration, Instant};

use common::notify::{NotifySocket, longest_gap};
use common::*;

#[tokio::test]
async fn ready_waits_until_every_shard_serves() {
    let mut sock = NotifySocket::new();
    let started = Instant::now();
    let server = Server::start_with(
        Opts::default()
            .env("NOTIFY_SOCKET", &sock.env())
            .env("WATCHDOG_USEC", "1000000")
            .env("EDGE_TEST_START_DELAY", "1:1800"),
    );
    // Bound and listening, but shard 1 has not started: not ready, and no
    // READY=1.
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed()));
    assert_eq!(server.admin_get("/readyz").0, 503);
    sock.collect_for(Duration::from_millis(500));
    assert!(
        sock.seen.iter().all(|n| !n.has("READY=1")),
        "{:?}",
        sock.seen
    );
    assert!(
        sock.seen.iter().all(|n| !n.has("WATCHDOG=1")),
        "{:?}",
        sock.seen
    );
    let ready = sock
        .wait_for(TIMEOUT, |n| n.has("READY=1"))
        .expect("READY=1 once shard 1 starts");
    assert!(
        sock.seen[ready].at - started >= Duration::from_millis(1700),
        "READY=1 after {:?}",
        sock.seen[ready].at - started
    );
    assert_eq!(server.admin_get("/readyz").0, 200);
    let _c = JsonClient::connect(&server).await;
}

#[test]
fn a_stalled_shard_stops_the_pings_until_it_turns_again() {
    let mut sock = NotifySocket::new();
    let server = Server::start_with(
        Opts::default()
            .env("NOTIFY_SOCKET", &sock.env())
            // Pings every 500 ms; a shard is stalled after 2 s (the floor).
            .env("WATCHDOG_USEC", "1000000")
            // Shard 1 blocks for 5 s, 1.5 s after its loop starts.
            .env("EDGE_TEST_STALL_SHARD", "1:1500:5000"),
    );
    sock.wait_for(TIMEOUT, |n| n.has("READY=1"))
        .expect("READY=1");
    // Into the stall: detected after 2 s without a turn.
    server.wait_for("stall detected", || {
        server.metric("wsedge_shard_stalls_total{shard=\"1\"}") == 1.0
    });
    let detected = Instant::now();
    assert!(server.metric("wsedge_shard_last_turn_age_seconds{shard=\"1\"}") >= 2.0);
    assert!(server.metric("wsedge_shard_last_turn_age_seconds{shard=\"0\"}") < 1.5);
    assert_eq!(server.metric("wsedge_shard_stalls_total{shard=\"0\"}"), 0.0);
    // The status says so (refreshed within 2 s).
    sock.wait_for(Duration::from_millis(2500), |n| {
        n.value("STATUS")
            .is_some_and(|s| s.ends_with("; shard 1 not turning"))
    })
    .expect("a STATUS naming the stalled shard");
    // Then it turns again: pings resume.
    server.wait_for("recovery logged", || {
        server
            .log
            .lock()
            .unwrap()
            .contains("shard loop is turning again")
    });
    sock.collect_for(Duration::from_millis(1500));
    let pings = sock.times_of("WATCHDOG=1");
    // Before the stall, pings came every ~500 ms; none from detection
    // until recovery (~3 s); then again.
    let before: Vec<Instant> = pings.iter().copied().filter(|&t| t < detected).collect();
    let after_gap = pings.iter().filter(|&&t| t > detected).count();
    assert!(before.len() >= 2, "{:?}", sock.seen);
    assert!(
        longest_gap(&before) < Duration::from_millis(1200),
        "{:?}",
        longest_gap(&before)
    );
    assert!(
        longest_gap(&pings) >= Duration::from_millis(2500),
        "longest gap {:?}",
        longest_gap(&pings)
    );
    assert!(after_gap >= 2, "{:?}", sock.seen);
    let log = server.log.lock().unwrap().clone();
    let stalled = log
        .lines()
        .find(|l| l.contains("shard loop is not turning"))
        .expect("the stall is logged");
    assert!(stalled.contains("shard=1"), "{stalled}");
    // Counted once, and the shard's age is back to normal.
    assert_eq!(server.metric("wsedge_shard_stalls_total{shard=\"1\"}"), 1.0);
    assert!(server.metric("wsedge_shard_last_turn_age_seconds{shard=\"1\"}") < 1.5);
}
