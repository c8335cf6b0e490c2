//! Tests of the reload: which keys are live, the key diff, and a whole
//! reload from a file (figment::Jail keeps the file and the environment to
//! the test).

#![allow(clippy::result_large_err)] // figment::Jail's closure signature

use std::path::Path;
use std::sync::Mutex;

use super::*;

/// Changes one key of a configuration.
type Change = fn(&mut Config);

/// One change per live key, by the key's name.
fn live_changes() -> Vec<(&'static str, Change)> {
    vec![
        ("log_level", |c| c.log_level = "debug".into()),
        ("max_connections", |c| c.max_connections = 77),
        ("max_memory", |c| c.max_memory = 1 << 30),
        ("max_message_size", |c| c.max_message_size = 1234),
        ("max_commands_per_second", |c| c.max_commands_per_second = 9),
        ("outbound_budget", |c| c.outbound_budget = 4096),
    ]
}

#[test]
fn every_live_key_is_seen_adopted_and_nothing_else() {
    let changes = live_changes();
    // The list covers exactly the live keys.
    let mut names: Vec<&str> = changes.iter().map(|(k, _)| *k).collect();
    names.sort_unstable();
    let mut live: Vec<&str> = LIVE_LIMIT_KEYS
        .iter()
        .copied()
        .chain(["log_level"])
        .collect();
    live.sort_unstable();
    assert_eq!(names, live);
    for (key, change) in changes {
        let running = Config::default();
        let mut new = Config::default();
        change(&mut new);
        assert_eq!(changed_keys(&running, &new), [key]);
        assert!(is_live(key));
        let mut adopted = running.clone();
        adopt_live(&mut adopted, &new);
        assert!(
            changed_keys(&adopted, &new).is_empty(),
            "{key} is not adopted"
        );
    }
}

#[test]
fn other_keys_wait_for_a_restart_and_secrets_are_named_only() {
    let running = Config::default();
    let mut new = Config {
        listen: "0.0.0.0:9999".parse().unwrap(),
        ping_interval: std::time::Duration::from_secs(40),
        api_key: Some("s3cret-key".into()),
        ..Config::default()
    };
    new.tls.cert_file = Some("/etc/new.pem".into());
    new.namespace.push(crate::config::NamespaceConfig {
        name: "chat".into(),
        ..Default::default()
    });
    let keys = changed_keys(&running, &new);
    assert_eq!(
        keys,
        [
            "api_key",
            "listen",
            "namespace",
            "ping_interval",
            "tls.cert_file"
        ]
    );
    assert!(keys.iter().all(|k| !is_live(k)));
    assert!(!keys.iter().any(|k| k.contains("s3cret")));
    let mut adopted = running.clone();
    adopt_live(&mut adopted, &new);
    assert_eq!(changed_keys(&adopted, &new), keys, "restart keys stay");
}

#[test]
fn outcome_summary_says_what_happened() {
    let o = Outcome {
        applied: vec!["log_level".into(), "max_connections".into()],
        restart: vec!["listen".into()],
        tls: Some(true),
        ..Outcome::default()
    };
    assert_eq!(
        o.summary(),
        "configuration reloaded: log_level, max_connections; restart needed for listen; \
         TLS certificate reloaded"
    );
    let failed = Outcome {
        error: Some("bad".into()),
        ..Outcome::default()
    };
    assert_eq!(
        failed.summary(),
        "configuration reload failed; running values kept"
    );
}

#[test]
fn reload_from_the_file_applies_live_keys_and_reports_the_rest() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("w.toml", "max_connections = 5\nshards = 1\n")?;
        let file = Path::new("w.toml").to_path_buf();
        let overrides = Overrides::default();
        let running = Config::load(Some(&file), &overrides).unwrap();
        let shared = Arc::new(Shared::new(&running));
        let metrics = Arc::new(Metrics::new());
        let levels = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = levels.clone();
        let log: LogFilterReload = Box::new(move |l| {
            seen.lock().unwrap().push(l.to_owned());
            Ok(())
        });
        let mut r = Reloader::new(
            Some(file),
            overrides,
            running,
            Some(log),
            shared.clone(),
            metrics.clone(),
            None,
        );
        assert_eq!(shared.max_connections(), 5);

        // Nothing changed.
        let o = r.reload();
        assert_eq!(o, Outcome::default());
        assert!(levels.lock().unwrap().is_empty());

        // Two live keys and a restart-only one.
        jail.create_file(
            "w.toml",
            "max_connections = 7\nshards = 1\nlog_level = \"debug\"\nlisten = \"127.0.0.1:1\"\n\
             outbound_budget = 2048\n",
        )?;
        let o = r.reload();
        assert_eq!(o.error, None);
        assert_eq!(
            o.applied,
            ["log_level", "max_connections", "outbound_budget"]
        );
        assert_eq!(o.restart, ["listen"]);
        assert_eq!(o.tls, None);
        assert_eq!(shared.max_connections(), 7);
        assert_eq!(shared.limits.outbound_budget(), 2048);
        assert_eq!(*levels.lock().unwrap(), ["debug"]);
        assert_eq!(r.running().listen.port(), 8080, "listen keeps its value");
        let text = metrics.encode();
        assert!(text.contains("wsedge_config_reloads_total{result=\"ok\"} 2"));
        assert!(text.contains("wsedge_config_restart_pending 1"));

        // A file that does not validate changes nothing.
        jail.create_file("w.toml", "max_connections = 9\noutbound_budget = 10\n")?;
        let o = r.reload();
        assert!(
            o.error.as_deref().unwrap().contains("outbound_budget"),
            "{o:?}"
        );
        assert_eq!(shared.max_connections(), 7);
        assert_eq!(shared.limits.outbound_budget(), 2048);
        let text = metrics.encode();
        assert!(text.contains("wsedge_config_reloads_total{result=\"failed\"} 1"));
        // Still pending from the last good reload.
        assert!(text.contains("wsedge_config_restart_pending 1"));

        // Back to the started values for the restart key: nothing pending.
        jail.create_file(
            "w.toml",
            "max_connections = 7\nshards = 1\nlog_level = \"debug\"\n",
        )?;
        let o = r.reload();
        assert_eq!(o.applied, ["outbound_budget"]);
        assert!(o.restart.is_empty());
        assert!(metrics.encode().contains("wsedge_config_restart_pending 0"));
        Ok(())
    });
}
