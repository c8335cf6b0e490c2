//! Process lifecycle: admin endpoints, graceful drain, drivers, config
//! checking.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn admin_endpoints() {
    let server = Server::start();
    assert_eq!(server.admin_get("/healthz").0, 200);
    server.wait_for("ready", || server.admin_get("/readyz").0 == 200);
    let (status, body) = server.admin_get("/metrics");
    assert_eq!(status, 200);
    for family in [
        "wsedge_connections{",
        "wsedge_connections_accepted_total",
        "wsedge_messages_received_total",
        "wsedge_bytes_sent_total",
        "wsedge_publish_to_write_seconds_bucket",
        "wsedge_connections_max",
    ] {
        assert!(body.contains(family), "missing {family}");
    }
    assert_eq!(server.admin_get("/nope").0, 404);
}

#[tokio::test]
async fn sigterm_drains_every_client_with_reconnect() {
    let mut server = Server::start_with(Opts::default().env("WSEDGE_DRAIN_TIMEOUT", "2s"));
    let mut clients = Vec::new();
    for i in 0..12 {
        let mut c = JsonClient::connect(&server).await;
        c.call("subscribe", json!({"channel": format!("d{}", i % 3)}))
            .await;
        clients.push(c);
    }
    server.signal(libc::SIGTERM);
    for c in clients.iter_mut() {
        let (seen, code) = c.close_code().await;
        assert_eq!(code, Some(1001));
        let d = seen
            .iter()
            .find(|v| v["push"]["disconnect"].is_object())
            .expect("disconnect push before close");
        assert_eq!(d["push"]["disconnect"]["code"], 3001);
        assert_eq!(d["push"]["disconnect"]["reconnect"], true);
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exited after drain");
    assert!(status.success(), "{status:?}");
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("draining"), "{log}");
}

#[tokio::test]
async fn second_signal_exits_at_once() {
    let mut server = Server::start_with(Opts::default().env("WSEDGE_DRAIN_TIMEOUT", "60s"));
    let _c = JsonClient::connect(&server).await;
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exited at once");
    assert!(!status.success());
}

#[tokio::test]
async fn epoll_driver_serves_pubsub() {
    let server = Server::start_with(Opts::default().arg("--driver").arg("epoll"));
    server.wait_for("shards on epoll", || {
        server
            .log
            .lock()
            .unwrap()
            .matches("driver=\"epoll\"")
            .count()
            == 2
    });
    let mut a = JsonClient::connect(&server).await;
    let mut b = JsonClient::connect(&server).await;
    b.call("subscribe", json!({"channel": "e"})).await;
    a.call("publish", json!({"channel": "e", "data": [1]}))
        .await;
    assert_eq!(b.push().await["push"]["pub"]["data"], json!([1]));
}

#[test]
fn check_config_reports_errors_clearly() {
    let dir = std::env::temp_dir().join(format!("wsedge-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:7001\"\nping_interval = \"30s\"\n\
         [[namespace]]\nname = \"chat\"\npresence = true\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["check-config", "--config"])
        .arg(&good)
        .env("WSEDGE_API_KEY", "never-printed-42")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:7001\""), "{text}");
    assert!(text.contains("ping_interval = \"30s\""), "{text}");
    assert!(text.contains("[[namespace]]\nname = \"chat\""), "{text}");
    assert!(text.contains("api_key = \"<redacted>\""), "{text}");
    assert!(!text.contains("never-printed") && !err.contains("never-printed"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "max_message_size = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("max_message_size"), "{err}");

    // Environment overrides are validated too.
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .arg("check-config")
        .env("WSEDGE_DRIVER", "kqueue")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn address_in_use_fails_clearly() {
    // wsedge nodes share their ports on purpose (SO_REUSEPORT, for restarts
    // without downtime); "in use" means another program holds the port.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = common::run_expecting_exit(
        Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen"])
            .arg(other.local_addr().unwrap().to_string())
            .env("WSEDGE_API_LISTEN", "127.0.0.1:0"),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot bind the admin listener"), "{err}");
}

#[test]
fn tune_check_reports_each_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["tune", "--check", "--connections", "1000"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "RLIMIT_NOFILE (soft)",
        "net.core.somaxconn",
        "memory (MemTotal)",
    ] {
        assert!(text.contains(name), "{text}");
    }
    // The exit status says whether anything fell short.
    assert_eq!(out.status.success(), !text.contains("[FAIL]"), "{text}");
    // A million connections need more descriptors than this test process has.
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["tune", "--check", "--connections", "100000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("fix: LimitNOFILE=100000064")
    );
}
