//! SIGHUP on a running node: the log level and the live limits change,
//! other changed keys are named as waiting for a restart, a bad file
//! changes nothing, and open connections stay.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("wsedge-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = ConfigFile(dir.join("wsedge.toml"));
        f.write(text);
        f
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn reloads(server: &Server, result: &str) -> f64 {
    server.metric(&format!(
        "wsedge_config_reloads_total{{result=\"{result}\"}}"
    ))
}

#[tokio::test]
async fn sighup_applies_the_log_level_and_limits_and_names_the_rest() {
    let file = ConfigFile::new("log_level = \"info\"\nmax_connections = 100\n");
    let server = Server::start_with(
        Opts::default()
            .arg("--config")
            .arg(file.0.to_str().unwrap())
            // The file decides the level (the environment would win).
            .unset("WSEDGE_LOG_LEVEL"),
    );
    let mut a = JsonClient::connect(&server).await;
    assert_eq!(server.metric("wsedge_connections_max"), 100.0);

    // Live: a quieter log, a lower cap, smaller messages. Not live: the
    // ping interval.
    file.write(
        "log_level = \"warn\"\nmax_connections = 2\nmax_message_size = 1000\n\
         ping_interval = \"30s\"\n",
    );
    server.signal(libc::SIGHUP);
    server.wait_for("the reload", || reloads(&server, "ok") == 1.0);
    assert_eq!(server.metric("wsedge_connections_max"), 2.0);
    assert_eq!(server.metric("wsedge_config_restart_pending"), 1.0);
    {
        let log = server.log.lock().unwrap().clone();
        let warn = log
            .lines()
            .find(|l| l.contains("take effect only on restart"))
            .expect("the restart-only keys are named");
        assert!(warn.contains("keys=ping_interval"), "{warn}");
        // The level went to warn before the reload's own info line.
        assert!(!log.contains("configuration reloaded"), "{log}");
    }
    // Every shard takes the message size at its next tick (each second).
    std::thread::sleep(Duration::from_millis(1500));
    let mut big = RawWs::connect(&server, Some("edu-matrix-v1.json"));
    big.send_frame(true, 1, &[b' '; 1500]);
    assert_eq!(big.until_close().1, Some(1009));
    drop(big);
    server.wait_for("the closed slot back", || {
        server.metric("wsedge_connections") == 1.0
    });
    // The cap: `a` and one more; the third is refused with 503.
    let _b = RawWs::connect(&server, None);
    let r = raw_request(server.client, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    assert_eq!(
        server.metric("wsedge_connections_refused_total{kind=\"max_connections\"}"),
        1.0
    );

    // A file that does not validate changes nothing.
    file.write("max_connections = 50\noutbound_budget = 5\n");
    server.signal(libc::SIGHUP);
    server.wait_for("the failed reload", || reloads(&server, "failed") == 1.0);
    assert_eq!(server.metric("wsedge_connections_max"), 2.0);
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("configuration not reloaded; running values kept")
    );

    // Back to info and a higher cap, the ping interval as started.
    file.write("log_level = \"info\"\nmax_connections = 100\n");
    server.signal(libc::SIGHUP);
    server.wait_for("the third reload", || reloads(&server, "ok") == 2.0);
    assert_eq!(server.metric("wsedge_connections_max"), 100.0);
    assert_eq!(server.metric("wsedge_config_restart_pending"), 0.0);
    server.wait_for("the info line", || {
        server.log.lock().unwrap().lines().any(|l| {
            l.contains("configuration reloaded")
                && l.contains("applied=log_level,max_connections,max_message_size")
        })
    });
    let _c = JsonClient::connect(&server).await;
    // The first connection stayed open through all of it.
    let r = a
        .call("publish", serde_json::json!({"channel": "x", "data": 1}))
        .await;
    assert!(r["publish"]["offset"].is_u64(), "{r}");
}
