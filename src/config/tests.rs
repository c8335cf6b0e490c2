//! Tests of loading and validating the configuration (figment::Jail keeps
//! files and environment variables per test).

#![allow(clippy::result_large_err)] // figment::Jail's closure signature

use super::*;

#[test]
fn defaults_are_valid() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.max_message_size, 65536);
}

#[test]
fn layering_file_env_flags() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "w.toml",
            "listen = \"127.0.0.1:7000\"\nping_interval = \"30s\"\nshards = 3\n",
        )?;
        jail.set_env("WSEDGE_SHARDS", "2");
        jail.set_env("WSEDGE_MAX_MESSAGE_SIZE", "1000");
        let o = Overrides {
            max_message_size: Some(2000),
            ..Default::default()
        };
        let c = Config::load(Some(Path::new("w.toml")), &o).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.shards, 2, "env beats file");
        assert_eq!(c.max_message_size, 2000, "flag beats env");
        Ok(())
    });
}

#[test]
fn clear_errors() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("bad.toml", "pong_timeout = \"30s\"\n")?;
        let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("pong_timeout"), "{e}");
        jail.create_file("unknown.toml", "lisen = \"x\"\n")?;
        let e = Config::load(Some(Path::new("unknown.toml")), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let e = Config::load(Some(Path::new("missing.toml")), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("does not exist"), "{e}");
        Ok(())
    });
}

const NAMESPACES: &str = r#"
strict_namespaces = true
history_memory_limit = 1048576
idempotency_window = "90s"
api_listen = "127.0.0.1:9500"
api_key = "from-file"
personal_channel = true
personal_channel_prefix = "user:"

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "10m"
recover = true
presence = true
join_leave = true
join_leave_max_subscribers = 50
priority = "high"

[[namespace]]
name = "feed"
client_publish = false
max_subscribers = 10

[[namespace]]
name = "user"
presence = true

[[namespace]]
name = "default"
history_size = 5
history_ttl = "30s"
"#;

fn load_str(jail: &mut figment::Jail, toml: &str) -> Result<Config, ConfigError> {
    jail.create_file("t.toml", toml).expect("write");
    Config::load(Some(Path::new("t.toml")), &Overrides::default())
}

#[test]
fn namespaces_from_toml() {
    figment::Jail::expect_with(|jail| {
        let c = load_str(jail, NAMESPACES).unwrap();
        assert!(c.strict_namespaces);
        assert_eq!(c.history_memory_limit, 1 << 20);
        assert_eq!(c.idempotency_window, Duration::from_secs(90));
        assert_eq!(c.api_listen.port(), 9500);
        assert_eq!(c.api_key.as_deref(), Some("from-file"));
        assert_eq!(c.namespace.len(), 4);
        let chat = &c.namespace[0];
        assert_eq!(chat.name, "chat");
        assert_eq!(chat.history_ttl, Duration::from_secs(600));
        assert_eq!(chat.priority, NamespacePriority::High);
        let o = chat.options();
        assert_eq!(o.history_size, 100);
        assert_eq!(o.history_ttl_ms, 600_000);
        assert!(o.recover && o.presence && o.join_leave && o.keeps_history());
        assert_eq!(o.join_leave_max_subscribers, 50);
        assert!(o.client_publish, "unset options keep their default");
        assert_eq!(o.priority, Priority::High);

        let ns = Namespaces::from_config(&c).unwrap();
        let (id, feed) = ns.resolve("feed:news").unwrap();
        assert_eq!(ns.name(id), "feed");
        assert!(!feed.client_publish);
        assert_eq!(feed.max_subscribers, 10);
        assert_eq!(ns.resolve("plain").unwrap().1.history_size, 5);
        assert_eq!(ns.resolve("nope:x"), None, "strict");
        Ok(())
    });
}

#[test]
fn namespace_defaults_match_the_engine() {
    assert_eq!(
        NamespaceConfig::default().options(),
        NamespaceOptions::default()
    );
    let c = Config::default();
    assert!(c.namespace.is_empty() && !c.strict_namespaces);
    assert_eq!(c.history_memory_limit, 256 << 20);
    assert_eq!(c.recovery_max_publications, 300);
    assert_eq!(c.history_max_publications, 300);
    assert_eq!(c.idempotency_window, Duration::from_secs(300));
    assert_eq!(c.idempotency_max_keys, 100_000);
    assert_eq!(c.api_listen.to_string(), "127.0.0.1:9091");
    assert_eq!(c.api_key, None);
    assert_eq!(c.api_max_body, 1 << 20);
    assert!(!c.personal_channel);
    assert_eq!(c.personal_channel_prefix, "#");
    let ns = Namespaces::from_config(&c).unwrap();
    assert_eq!(ns.resolve("any:x").unwrap().1, &NamespaceOptions::default());
}

/// `validate`'s message for the default config with `ns` as the only
/// namespace and `edit` applied.
fn invalid(ns: &[NamespaceConfig], edit: impl FnOnce(&mut Config)) -> String {
    let mut c = Config {
        namespace: ns.to_vec(),
        ..Config::default()
    };
    edit(&mut c);
    c.validate().expect_err("invalid").0
}

fn ns(name: &str, edit: impl FnOnce(&mut NamespaceConfig)) -> NamespaceConfig {
    let mut n = NamespaceConfig {
        name: name.into(),
        ..NamespaceConfig::default()
    };
    edit(&mut n);
    n
}

#[test]
fn namespace_errors() {
    let none = |_: &mut Config| {};
    let e = invalid(&[ns("", |_| {})], none);
    assert_eq!(e, "every [[namespace]] needs a name");
    let e = invalid(&[ns("a.b", |_| {})], none);
    assert!(
        e.contains("namespace name \"a.b\" must be 1-64 characters"),
        "{e}"
    );
    let e = invalid(&[ns("chat", |_| {}), ns("chat", |_| {})], none);
    assert_eq!(e, "namespace \"chat\" is configured more than once");
    let e = invalid(&[ns("default", |_| {}), ns("default", |_| {})], none);
    assert_eq!(e, "namespace \"default\" is configured more than once");
    let e = invalid(&[ns("h", |n| n.history_size = 10)], none);
    assert_eq!(
        e,
        "namespace \"h\": history_size needs history_ttl above 0 too (history is kept \
         only with both)"
    );
    let e = invalid(&[ns("h", |n| n.history_ttl = Duration::from_secs(9))], none);
    assert!(e.contains("history_ttl needs history_size above 0"), "{e}");
    // Below a millisecond is no time to live at all.
    let sub_ms = ns("h", |n| {
        n.history_size = 3;
        n.history_ttl = Duration::from_micros(500);
    });
    let e = invalid(&[sub_ms], none);
    assert!(e.contains("history_size needs history_ttl"), "{e}");
    let e = invalid(&[ns("r", |n| n.recover = true)], none);
    assert_eq!(
        e,
        "namespace \"r\": recover needs history (history_size and history_ttl above 0)"
    );
    let e = invalid(&[ns("j", |n| n.join_leave = true)], none);
    assert_eq!(e, "namespace \"j\": join_leave needs presence = true");

    figment::Jail::expect_with(|jail| {
        let e = load_str(jail, "[[namespace]]\nname = \"x\"\nhistroy_size = 1\n").unwrap_err();
        assert!(e.0.contains("histroy_size"), "{e}");
        let e = load_str(jail, "[[namespace]]\nname = \"x\"\npriority = \"urgent\"\n").unwrap_err();
        assert!(e.0.contains("urgent"), "{e}");
        let e = load_str(jail, "[[namespace]]\nrecover = false\n").unwrap_err();
        assert!(e.0.contains("needs a name"), "{e}");
        Ok(())
    });
}

#[test]
fn node_wide_errors() {
    let kept = ns("h", |n| {
        n.history_size = 1;
        n.history_ttl = Duration::from_secs(1);
    });
    let e = invalid(&[kept], |c| c.history_memory_limit = 0);
    assert_eq!(
        e,
        "history_memory_limit = 0 leaves no room for the history of namespace \"h\""
    );
    // Without history a zero limit is harmless.
    let mut c = Config {
        history_memory_limit: 0,
        ..Config::default()
    };
    c.validate().unwrap();
    for edit in [
        (|c: &mut Config| c.recovery_max_publications = 0) as fn(&mut Config),
        |c| c.history_max_publications = 0,
    ] {
        let e = invalid(&[], edit);
        assert!(e.contains("must be at least 1"), "{e}");
    }
    for window in [
        Duration::from_millis(999),
        Duration::from_secs(24 * 3600 + 1),
    ] {
        let e = invalid(&[], |c| c.idempotency_window = window);
        assert_eq!(e, "idempotency_window must be between 1s and 24h");
    }
    let e = invalid(&[], |c| c.idempotency_max_keys = 0);
    assert_eq!(e, "idempotency_max_keys must be at least 1");

    for bad in ["", "a:b:", "ns!:", "sp ace", ":"] {
        let e = invalid(&[], |c| c.personal_channel_prefix = bad.into());
        assert!(
            e.starts_with(&format!(
                "personal_channel_prefix = {bad:?}: <prefix><user>"
            )),
            "{e}"
        );
    }
    let long = "#".repeat(255);
    let e = invalid(&[], |c| c.personal_channel_prefix = long);
    assert!(e.contains("must be a valid channel"), "{e}");
    for ok in ["#", "user:", "user:#", "p.", "default:"] {
        c.personal_channel_prefix = ok.into();
        c.validate().unwrap();
    }
    let strict_unknown = |c: &mut Config| {
        c.personal_channel = true;
        c.strict_namespaces = true;
        c.personal_channel_prefix = "user:".into();
    };
    let e = invalid(&[], strict_unknown);
    assert!(
        e.contains("namespace \"user\", which is not configured"),
        "{e}"
    );
    let mut c = Config {
        namespace: vec![ns("user", |_| {})],
        ..Config::default()
    };
    strict_unknown(&mut c);
    c.validate().unwrap();

    for key in ["", "has space", "tab\t", "ü-nicode"] {
        let e = invalid(&[], |c| c.api_key = Some(key.into()));
        assert!(
            e.starts_with("api_key must be non-empty printable ASCII"),
            "{e}"
        );
        if !key.is_empty() {
            assert!(!e.contains(key), "the key is never echoed: {e}");
        }
    }
    for body in [1023, 256 * 1024 * 1024 + 1] {
        let e = invalid(&[], |c| c.api_max_body = body);
        assert_eq!(e, "api_max_body must be between 1 KiB and 256 MiB");
    }
    let e = invalid(&[], |c| c.api_listen = c.listen);
    assert_eq!(e, "api_listen and listen must differ");
    let e = invalid(&[], |c| c.api_listen = c.admin_listen);
    assert_eq!(e, "api_listen and admin_listen must differ");
    // Port 0 (any free port) may repeat.
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let c = Config {
        listen: any,
        admin_listen: any,
        api_listen: any,
        ..Config::default()
    };
    c.validate().unwrap();
}

#[test]
fn api_key_from_env_is_verbatim() {
    figment::Jail::expect_with(|jail| {
        let c = load_str(jail, "api_key = \"from-file\"\n").unwrap();
        assert_eq!(c.api_key.as_deref(), Some("from-file"));
        // Env beats file, and is never parsed as a number, list or
        // quoted string.
        for key in ["0123", "1.50", "[a,b]", "true", "\"q\"", "k3y/+="] {
            jail.set_env(API_KEY_ENV, key);
            let c = load_str(jail, "api_key = \"from-file\"\n").unwrap();
            assert_eq!(c.api_key.as_deref(), Some(key));
        }
        jail.set_env(API_KEY_ENV, "");
        let e = load_str(jail, "").unwrap_err();
        assert!(e.0.contains("api_key must be non-empty"), "{e}");
        Ok(())
    });
}

#[test]
fn to_toml_redacts_the_key_and_prints_namespace_tables() {
    figment::Jail::expect_with(|jail| {
        jail.set_env(API_KEY_ENV, "s3cret-Key_42");
        let c = load_str(jail, NAMESPACES).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("s3cret-Key_42"));
        let text = c.to_toml();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains(&format!("api_key = \"{REDACTED}\"")),
            "{text}"
        );
        assert_eq!(text.matches("[[namespace]]").count(), 4, "{text}");
        assert!(text.contains("history_ttl = \"10m\""), "{text}");
        assert!(text.contains("priority = \"high\""), "{text}");
        // The output reads back as the same configuration, key aside.
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(
            back,
            Config {
                api_key: Some(REDACTED.into()),
                ..c
            }
        );
        // No key, no api_key line.
        let plain = Config::default().to_toml();
        assert!(!plain.contains("api_key"), "{plain}");
        assert!(!plain.contains(REDACTED), "{plain}");
        Ok(())
    });
}

#[test]
fn security_sections_load_from_the_environment_and_unwired_ones_are_refused() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("WSEDGE_AUTH_MODE", "jwt");
        jail.set_env(
            "WSEDGE_AUTH_HMAC_SECRET",
            "0123456789012345678901234567890123",
        );
        jail.set_env("WSEDGE_AUTH_CONNECT_TIMEOUT", "3s");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.mode, crate::auth::AuthMode::Jwt);
        assert_eq!(c.auth.connect_timeout, Duration::from_secs(3));
        assert!(
            !c.to_toml().contains("0123456789"),
            "the secret is never shown"
        );
        jail.set_env("WSEDGE_TLS_CERT_FILE", "/etc/wsedge/cert.pem");
        jail.set_env("WSEDGE_TLS_KEY_FILE", "/etc/wsedge/key.pem");
        jail.set_env("WSEDGE_TLS_HANDSHAKES_PER_TURN", "4");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert!(c.tls.enabled());
        assert_eq!(
            c.tls.key_file.as_deref(),
            Some("/etc/wsedge/key.pem".as_ref())
        );
        assert_eq!(c.tls.handshakes_per_turn, 4);
        // [access] is applied: its keys load from the environment, and a
        // bad entry is named.
        jail.set_env("WSEDGE_ACCESS_IP_DENY", "[\"10.0.0.0/8\"]");
        jail.set_env("WSEDGE_ACCESS_PER_IP_CONNECTION_RATE", "5");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.access.ip_deny, ["10.0.0.0/8"]);
        assert_eq!(c.access.per_ip_connection_rate, 5.0);
        jail.set_env("WSEDGE_ACCESS_IP_DENY", "[\"10.0.0.1/8\"]");
        let e = Config::load(None, &Overrides::default()).unwrap_err().0;
        assert!(e.starts_with("access.ip_deny[0]"), "{e}");
        Ok(())
    });
    // TLS is applied: the files are read when the node starts, so the
    // section validates on its own; half of it is refused.
    let mut c = Config::default();
    c.tls.cert_file = Some("/etc/wsedge/cert.pem".into());
    c.tls.key_file = Some("/etc/wsedge/key.pem".into());
    c.validate().unwrap();
    c.tls.key_file = None;
    let e = c.validate().unwrap_err().0;
    assert!(e.starts_with("tls: "), "{e}");
}

#[test]
fn collab_section_from_file_and_environment_with_the_auth_fallback() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.collab.story_ttl, Duration::from_secs(3600));
        assert_eq!(c.story_redis_url(), None, "memory only by default");
        jail.set_env("WSEDGE_AUTH_REDIS_URL", "redis://auth-host:6379");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.story_redis_url(), Some("redis://auth-host:6379"));
        let c = load_str(
            jail,
            "[collab]\nredis_url = \"redis://file:1/2\"\nstory_ttl = \"90m\"\n",
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(
            c.story_redis_url(),
            Some("redis://file:1/2"),
            "[collab] wins"
        );
        assert_eq!(c.collab.story_ttl, Duration::from_secs(5400));
        jail.set_env("WSEDGE_COLLAB_REDIS_URL", "redis://:pw@env-host:6380/1");
        jail.set_env("WSEDGE_COLLAB_STORY_TTL", "10m");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.story_redis_url(), Some("redis://:pw@env-host:6380/1"));
        assert_eq!(c.collab.story_ttl, Duration::from_secs(600));
        let shown = format!("{:?}", c.collab);
        assert!(!shown.contains("pw"), "credentials are hidden: {shown}");
        let toml = c.to_toml();
        assert!(!toml.contains("pw"), "check-config hides them: {toml}");
        assert!(
            toml.contains("redis://<redacted>@env-host:6380/1"),
            "{toml}"
        );
        jail.set_env("WSEDGE_COLLAB_STORY_TTL", "0s");
        let e = Config::load(None, &Overrides::default()).unwrap_err().0;
        assert!(e.contains("collab.story_ttl"), "{e}");
        jail.set_env("WSEDGE_COLLAB_STORY_TTL", "1h");
        jail.set_env("WSEDGE_COLLAB_UNKNOWN_KEY", "1");
        let e = Config::load(None, &Overrides::default()).unwrap_err().0;
        assert!(e.contains("unknown_key"), "{e}");
        Ok(())
    });
    let mut c = Config::default();
    c.collab.redis_url = Some("http://not-redis".into());
    let e = c.validate().unwrap_err().0;
    assert!(e.starts_with("collab.redis_url"), "{e}");
    c.collab.redis_url = Some("redis://:secret@host".into());
    c.validate().unwrap();
    c.collab.redis_url = Some(String::new());
    assert!(c.validate().unwrap_err().0.contains("empty"));
    c.collab.redis_url = None;
    c.collab.story_ttl = collab::MAX_STORY_TTL + Duration::from_secs(1);
    assert!(c.validate().is_err());
}

#[test]
fn redis_url_credentials_are_redacted() {
    for (url, shown) in [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:pw@h:6379", "redis://<redacted>@h:6379"),
        ("redis://user:p@ss@h", "redis://<redacted>@h"),
        ("rediss://u@h", "rediss://<redacted>@h"),
        ("not a url @ all", "not a url @ all"),
    ] {
        assert_eq!(redact_url_credentials(url), shown, "{url}");
    }
}

#[test]
fn a_story_namespace_takes_its_limits_from_collab() {
    use crate::engine::collab::ConflictPolicy;
    figment::Jail::expect_with(|jail| {
        let c = load_str(
            jail,
            r#"
            [collab]
            lock_grace = "20s"
            max_sections = 50
            max_stories = 7

            [[namespace]]
            name = "story"
            collaboration = true
            conflict = "reject"
            max_editors = 3

            [[namespace]]
            name = "chat"
            "#,
        )
        .unwrap();
        let ns = Namespaces::from_config(&c).unwrap();
        let story = ns.resolve("story:1").unwrap().1.collab.expect("a story");
        assert_eq!(story.conflict, ConflictPolicy::Reject);
        assert_eq!(story.max_editors, 3);
        assert_eq!(story.lock_grace, Duration::from_secs(20));
        assert_eq!(story.max_sections, 50);
        assert_eq!(
            story.lock_ttl,
            Duration::from_secs(30),
            "unset: the default"
        );
        assert_eq!(ns.resolve("chat:1").unwrap().1.collab, None);
        // max_stories is the node's; each of 2 shards holds half (rounded up).
        assert_eq!(c.collab.story_table(2).max_stories, 4);
        Ok(())
    });
}

#[test]
fn inconsistent_story_limits_are_refused_by_name() {
    figment::Jail::expect_with(|jail| {
        let e = load_str(
            jail,
            "[collab]\nlock_ttl = \"10m\"\nlock_ttl_max = \"1m\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("collab.lock_ttl"), "{e}");
        let e = load_str(
            jail,
            "[[namespace]]\nname = \"s\"\ncollaboration = true\nmax_editors = 0\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_editors"), "{e}");
        let e = load_str(jail, "[[namespace]]\nname = \"s\"\nconflict = \"merge\"\n").unwrap_err();
        assert!(e.to_string().contains("conflict"), "{e}");
        Ok(())
    });
}

#[test]
fn cluster_defaults_mean_one_node_and_options_carry_every_key() {
    let c = Config::default();
    assert!(!c.cluster.enabled(), "no nats_url: no cluster");
    assert_eq!(c.cluster.options(), None);
    assert_eq!(c.cluster.cluster_name, "wsedge");
    assert_eq!(c.cluster.node_timeout, Duration::from_secs(3));
    assert_eq!(c.cluster.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(c.cluster.request_timeout, Duration::from_secs(2));
    assert_eq!(c.cluster.queue_capacity, 65_536);
    let mut c = c.cluster;
    c.nats_url = Some("nats://n1:4222, nats://n2:4222".into());
    c.node_name = Some("edge-1".into());
    c.token = Some("t".into());
    c.validate().unwrap();
    let o = c.options().unwrap();
    assert_eq!(o.servers, ["nats://n1:4222", "nats://n2:4222"]);
    assert_eq!(&*o.node_name, "edge-1");
    assert_eq!(&*o.cluster_name, "wsedge");
    assert_eq!(
        o.auth,
        crate::sidecar::cluster::ClusterAuth::Token("t".into())
    );
    assert_eq!(o.node_timeout, Duration::from_secs(3));
    assert_eq!(o.queue_capacity, 65_536);
    // Without node_name: the host name if it is a valid name, else a
    // random one, always a valid name.
    c.node_name = None;
    let name = c.options().unwrap().node_name;
    assert!(
        crate::engine::cluster::subject::is_valid_name(&name),
        "{name}"
    );
    match host_name().filter(|h| crate::engine::cluster::subject::is_valid_name(h)) {
        Some(host) => assert_eq!(&*name, host),
        None => assert!(name.starts_with("wsedge-"), "{name}"),
    }
}

#[test]
fn cluster_section_from_file_and_environment_verbatim_and_redacted() {
    figment::Jail::expect_with(|jail| {
        let c = load_str(
            jail,
            "[cluster]\nnats_url = \"nats://file:4222\"\nnode_name = \"n1\"\n\
             heartbeat_interval = \"500ms\"\nnode_timeout = \"2s\"\n",
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(c.cluster.nats_url.as_deref(), Some("nats://file:4222"));
        assert_eq!(c.cluster.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.cluster.node_timeout, Duration::from_secs(2));
        jail.set_env(
            "WSEDGE_CLUSTER_NATS_URL",
            "nats://u:pw-in-url@a:4222,nats://b:4222",
        );
        // Digits stay text (the generic provider would make them numbers).
        jail.set_env("WSEDGE_CLUSTER_NODE_NAME", "0123");
        jail.set_env("WSEDGE_CLUSTER_CLUSTER_NAME", "prod");
        jail.set_env("WSEDGE_CLUSTER_REQUEST_TIMEOUT", "750ms");
        jail.set_env("WSEDGE_CLUSTER_QUEUE_CAPACITY", "1024");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.cluster.node_name.as_deref(), Some("0123"));
        assert_eq!(c.cluster.cluster_name, "prod");
        assert_eq!(c.cluster.request_timeout, Duration::from_millis(750));
        assert_eq!(c.cluster.queue_capacity, 1024);
        let toml = c.to_toml();
        assert!(!toml.contains("pw-in-url"), "{toml}");
        assert!(
            toml.contains("nats://<redacted>@a:4222,nats://b:4222"),
            "{toml}"
        );
        assert!(!format!("{:?}", c.cluster).contains("pw-in-url"));
        // Secrets: verbatim, never shown.
        jail.set_env("WSEDGE_CLUSTER_NATS_URL", "nats://a:4222");
        jail.set_env("WSEDGE_CLUSTER_TOKEN", "000777");
        let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.cluster.token.as_deref(), Some("000777"));
        let toml = c.to_toml();
        assert!(!toml.contains("000777"), "{toml}");
        assert!(toml.contains(&format!("token = \"{REDACTED}\"")), "{toml}");
        assert!(!format!("{:?}", c.cluster).contains("000777"));
        jail.set_env("WSEDGE_CLUSTER_TOKEN", "");
        let e = Config::load(None, &Overrides::default()).unwrap_err().0;
        assert!(e.contains("cluster.token"), "{e}");
        jail.set_env("WSEDGE_CLUSTER_TOKEN", "x");
        jail.set_env("WSEDGE_CLUSTER_UNKNOWN_KEY", "1");
        let e = Config::load(None, &Overrides::default()).unwrap_err().0;
        assert!(e.contains("unknown_key"), "{e}");
        Ok(())
    });
}

#[test]
fn cluster_refusals_name_their_keys() {
    let refused = |edit: &dyn Fn(&mut cluster::ClusterConfig)| -> String {
        let mut c = Config::default();
        c.cluster.nats_url = Some("nats://127.0.0.1:4222".into());
        edit(&mut c.cluster);
        c.validate().unwrap_err().0
    };
    type Edit = dyn Fn(&mut cluster::ClusterConfig);
    let cases: [(&Edit, &[&str]); 14] = [
        (
            &|c| c.nats_url = Some(" ".into()),
            &["cluster.nats_url", "empty"],
        ),
        (
            &|c| c.nats_url = Some("http://h".into()),
            &["cluster.nats_url"],
        ),
        (
            &|c| c.nats_url = Some("ws://h:80".into()),
            &["cluster.nats_url", "WebSocket"],
        ),
        (
            &|c| c.node_name = Some("a.b".into()),
            &["cluster.node_name"],
        ),
        (
            &|c| c.node_name = Some("x".repeat(65)),
            &["cluster.node_name"],
        ),
        (
            &|c| c.cluster_name = "a b".into(),
            &["cluster.cluster_name"],
        ),
        (
            &|c| {
                c.credentials_file = Some("/x.creds".into());
                c.token = Some("t".into());
            },
            &["cluster.credentials_file", "cluster.token", "alternatives"],
        ),
        (
            &|c| {
                c.user = Some("u".into());
                c.password = Some("p".into());
                c.token = Some("t".into());
            },
            &["cluster.user/cluster.password", "cluster.token"],
        ),
        (
            &|c| {
                c.nats_url = Some("nats://u:p@h:4222".into());
                c.token = Some("t".into());
            },
            &["user:password@ in cluster.nats_url", "cluster.token"],
        ),
        (
            &|c| c.user = Some("u".into()),
            &["cluster.user and cluster.password"],
        ),
        (
            &|c| c.heartbeat_interval = c.node_timeout,
            &["cluster.heartbeat_interval", "below cluster.node_timeout"],
        ),
        (
            &|c| c.heartbeat_interval = Duration::from_millis(1),
            &["cluster.heartbeat_interval"],
        ),
        (
            &|c| c.request_timeout = Duration::ZERO,
            &["cluster.request_timeout"],
        ),
        (&|c| c.queue_capacity = 10, &["cluster.queue_capacity"]),
    ];
    for (edit, words) in cases {
        let e = refused(edit);
        for w in words {
            assert!(e.contains(w), "{e:?} should say {w:?}");
        }
        assert!(!e.contains("p@h"), "no credentials in {e}");
    }
    // The keys are checked without nats_url too: a typo is an error
    // before the cluster is switched on.
    let mut c = Config::default();
    c.cluster.node_timeout = Duration::from_millis(500);
    assert!(
        c.validate()
            .unwrap_err()
            .0
            .contains("cluster.heartbeat_interval")
    );
    // One kind each is fine.
    let mut c = Config::default();
    c.cluster.nats_url = Some("tls://h:4443".into());
    c.cluster.user = Some("u".into());
    c.cluster.password = Some("p".into());
    c.cluster.tls_ca_file = Some("/etc/ca.pem".into());
    c.validate().unwrap();
}

#[test]
fn durable_namespaces_from_file_and_environment_and_their_refusals() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("WSEDGE_DURABLE_DIR", "/var/spool/edge");
        jail.set_env("WSEDGE_DURABLE_NATS_URL", "nats://127.0.0.1:4222");
        let cfg = load_str(
            jail,
            r#"
            [[namespace]]
            name = "chat"
            durable = "jetstream:events.chat"

            [durable]
            max_bytes = 2097152
            fsync = "always"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.durable.dir, Some("/var/spool/edge".into()));
        assert_eq!(cfg.durable.max_bytes, 2 << 20);
        assert_eq!(
            cfg.durable.fsync_policy(),
            crate::sidecar::durable::spill::FsyncPolicy::Always
        );
        assert!(cfg.namespace[0].options().durable);
        assert_eq!(
            cfg.durable_targets().unwrap(),
            vec![(
                "chat",
                DurableEvents::Publications,
                DurableTarget::Jetstream("events.chat".into())
            )]
        );
        Ok(())
    });
    let e = invalid(
        &[ns("chat", |n| n.durable = Some("jetstream:events".into()))],
        |_| {},
    );
    assert!(
        e.contains("needs [durable] nats_url or [cluster] nats_url"),
        "{e}"
    );
    let e = invalid(&[ns("chat", |n| n.durable = Some("events".into()))], |c| {
        c.durable.nats_url = Some("nats://x".into())
    });
    assert!(
        e.starts_with("namespace \"chat\": durable = \"events\""),
        "{e}"
    );
    let e = invalid(
        &[ns("chat", |n| n.durable = Some("kafka:chat".into()))],
        |_| {},
    );
    assert!(e.contains("needs [durable] kafka_brokers"), "{e}");
    let e = invalid(&[], |c| {
        c.durable.kafka_brokers = Some("kafka://a:9092".into())
    });
    assert!(e.contains("kafka_brokers"), "{e}");
    let e = invalid(&[], |c| c.durable.kafka_partitions = 0);
    assert!(e.contains("kafka_partitions"), "{e}");
    let e = invalid(&[], |c| c.durable.max_bytes = 10);
    assert!(e.contains("max_bytes"), "{e}");
    // Subject rules of [[durable.consume]] need a NATS: [durable]'s or the
    // cluster's.
    let rule = crate::config::durable::ConsumeRule {
        topic: None,
        subject: Some("notify.>".into()),
        stream: None,
        channel: "#{key}".into(),
    };
    let e = invalid(&[], |c| c.durable.consume = vec![rule.clone()]);
    assert!(
        e.contains("subject rules need [durable] nats_url or [cluster] nats_url"),
        "{e}"
    );
    for nats in [
        |c: &mut Config| c.durable.nats_url = Some("nats://127.0.0.1:4222".into()),
        |c: &mut Config| c.cluster.nats_url = Some("nats://127.0.0.1:4222".into()),
    ] {
        let mut c = Config::default();
        c.durable.consume = vec![rule.clone()];
        nats(&mut c);
        c.validate().unwrap();
    }
}

#[test]
fn presence_and_story_sinks_need_their_feature_and_a_valid_target() {
    let kafka = |c: &mut Config| c.durable.kafka_brokers = Some("127.0.0.1:9092".into());
    let e = invalid(
        &[ns("room", |n| {
            n.durable_presence = Some("kafka:presence".into())
        })],
        kafka,
    );
    assert!(e.contains("durable_presence needs presence = true"), "{e}");
    let e = invalid(
        &[ns("story", |n| {
            n.durable_collab = Some("kafka:stories".into())
        })],
        kafka,
    );
    assert!(
        e.contains("durable_collab needs collaboration = true"),
        "{e}"
    );
    let e = invalid(
        &[ns("room", |n| {
            n.presence = true;
            n.durable_presence = Some("presence".into());
        })],
        kafka,
    );
    assert!(
        e.starts_with("namespace \"room\": durable_presence = \"presence\""),
        "{e}"
    );
    let mut c = Config::default();
    kafka(&mut c);
    c.namespace.push(ns("room", |n| {
        n.presence = true;
        n.collaboration = true;
        n.durable = Some("kafka:chat".into());
        n.durable_presence = Some("kafka:presence".into());
        n.durable_collab = Some("kafka:stories".into());
    }));
    c.validate().unwrap();
    let opts = c.namespace[0].options();
    assert!(opts.durable && opts.durable_presence && opts.durable_collab);
    assert_eq!(
        c.durable_targets().unwrap(),
        vec![
            (
                "room",
                DurableEvents::Publications,
                DurableTarget::Kafka("chat".into())
            ),
            (
                "room",
                DurableEvents::Presence,
                DurableTarget::Kafka("presence".into())
            ),
            (
                "room",
                DurableEvents::Collab,
                DurableTarget::Kafka("stories".into())
            ),
        ]
    );
}

#[test]
fn kafka_client_properties_come_from_the_file_as_strings_refused_when_wsedge_owns_them() {
    figment::Jail::expect_with(|jail| {
        let cfg = load_str(
            jail,
            r#"
            [durable]
            kafka_brokers = "k1:9092"
            consume_commit_interval = "250ms"

            [durable.kafka_config]
            "security.protocol" = "SASL_SSL"
            "sasl.password" = "hunter2"
            "socket.keepalive.enable" = true

            [durable.kafka_consumer_config]
            "session.timeout.ms" = 6000
            "#,
        )
        .unwrap();
        let d = &cfg.durable;
        assert_eq!(d.consume_commit_interval, Duration::from_millis(250));
        assert_eq!(d.kafka_config["security.protocol"], "SASL_SSL");
        assert_eq!(d.kafka_config["socket.keepalive.enable"], "true");
        assert_eq!(d.kafka_consumer_config["session.timeout.ms"], "6000");
        // The password is not printed; the rest is.
        let shown = cfg.to_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
        Ok(())
    });
    for (edit, word) in [
        (
            (|c: &mut Config| {
                c.durable
                    .kafka_config
                    .insert("enable.idempotence".into(), "false".into());
            }) as fn(&mut Config),
            "enable.idempotence",
        ),
        (
            |c| {
                c.durable
                    .kafka_config
                    .insert("group.id".into(), "other".into());
            },
            "group.id",
        ),
        (
            |c| {
                c.durable
                    .kafka_consumer_config
                    .insert("enable.auto.commit".into(), "true".into());
            },
            "enable.auto.commit",
        ),
        (
            |c| {
                c.durable.kafka_config.insert("bad key".into(), "x".into());
            },
            "bad key",
        ),
        (
            |c| c.durable.consume_commit_interval = Duration::from_millis(10),
            "consume_commit_interval",
        ),
    ] {
        let e = invalid(&[], edit);
        assert!(e.contains(word), "{e:?} should say {word:?}");
    }
    // A consumer property in the consumer's table is fine.
    let mut c = Config::default();
    c.durable
        .kafka_consumer_config
        .insert("max.poll.interval.ms".into(), "600000".into());
    c.validate().unwrap();
}

#[test]
fn socket_io_is_epoll_unless_asked_and_checked_by_name() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.io, crate::config::SocketIo::Epoll, "the default");
        jail.create_file("u.toml", "io = \"uring\"\n")?;
        let c = Config::load(Some(Path::new("u.toml")), &Overrides::default()).unwrap();
        assert_eq!(c.io, crate::config::SocketIo::Uring);
        jail.create_file("bad.toml", "io = \"kqueue\"\n")?;
        let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("kqueue"), "{e}");
        jail.set_env("WSEDGE_IO", "epoll");
        let c = Config::load(Some(Path::new("u.toml")), &Overrides::default()).unwrap();
        assert_eq!(c.io, crate::config::SocketIo::Epoll, "env beats file");
        let o = Overrides {
            io: Some(crate::config::SocketIo::Uring),
            ..Default::default()
        };
        assert_eq!(
            Config::load(None, &o).unwrap().io,
            crate::config::SocketIo::Uring
        );
        jail.create_file("a.toml", "io = \"auto\"\n")?;
        jail.set_env("WSEDGE_IO", "auto");
        let c = Config::load(Some(Path::new("a.toml")), &Overrides::default()).unwrap();
        assert_eq!(c.io, crate::config::SocketIo::Auto);
        Ok(())
    });
}

#[test]
fn auto_io_takes_uring_when_the_probe_passes_and_epoll_otherwise() {
    use crate::config::SocketIo;
    let no = || Err(std::io::Error::other("io_uring disabled"));
    let yes = || Ok(());
    assert_eq!(SocketIo::Auto.resolve(false, yes).0, SocketIo::Uring);
    let (io, why) = SocketIo::Auto.resolve(false, no);
    assert_eq!(io, SocketIo::Epoll);
    assert_eq!(why.unwrap().to_string(), "io_uring disabled");
    let (io, why) = SocketIo::Auto.resolve(true, || panic!("TLS never probes"));
    assert_eq!(
        (io, why.is_none()),
        (SocketIo::Epoll, true),
        "TLS nodes use epoll"
    );
    // `uring` and `epoll` are what they say; `uring` is never downgraded
    // here (the node refuses to start instead).
    assert_eq!(SocketIo::Uring.resolve(false, no).0, SocketIo::Uring);
    assert_eq!(SocketIo::Epoll.resolve(false, yes).0, SocketIo::Epoll);
}
