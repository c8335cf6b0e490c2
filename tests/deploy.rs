//! The observability package in deploy/ against a running node: every
//! metric the Grafana dashboard and the alert rules name is one the node
//! exports, and the node-wide gauges read at the scrape (readiness,
//! descriptors) say what they should. Syntax and the alert thresholds are
//! checked by scripts/check-deploy.sh (promtool).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// Every `wsedge_<name>` token in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wsedge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `wsedge_` itself (a prefix in prose) names nothing.
        if end > "wsedge_".len() {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_dashboard_and_alerts_name_only_exported_metrics() {
    let server = Server::start();
    server.wait_for("ready", || server.admin_get("/readyz").0 == 200);
    let (_, body) = server.admin_get("/metrics");
    // Families (`# TYPE` lines) and samples (`_total`, `_bucket`...).
    let exported = metric_names(&body);
    let dashboard = read("deploy/grafana/wsedge.json");
    let alerts = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts.test.yml");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    for (file, text) in [
        ("wsedge.json", &dashboard),
        ("alerts.yml", &alerts),
        ("alerts.test.yml", &tests),
    ] {
        let named = metric_names(text);
        assert!(named.len() >= 8, "{file}: {named:?}");
        let unknown: Vec<&String> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the node does not export: {unknown:?}"
        );
    }
    // What the issue asks the dashboard to show.
    for m in [
        "wsedge_connections",
        "wsedge_handshakes_total",
        "wsedge_deliveries_total",
        "wsedge_publish_to_write_seconds_bucket",
        "wsedge_slow_consumer_drops_total",
        "wsedge_error_replies_total",
        "wsedge_shard_last_turn_age_seconds",
    ] {
        assert!(metric_names(&dashboard).contains(m), "dashboard lacks {m}");
    }
}

#[test]
fn node_gauges_report_readiness_and_descriptors() {
    let server = Server::start();
    server.wait_for("ready", || server.admin_get("/readyz").0 == 200);
    assert_eq!(server.metric("wsedge_ready"), 1.0);
    let limit = server.metric("wsedge_process_max_fds");
    let before = server.metric("wsedge_process_open_fds");
    assert!(before > 0.0 && before < limit, "{before} of {limit}");
    let clients: Vec<RawWs> = (0..20).map(|_| RawWs::connect(&server, None)).collect();
    server.wait_for("20 connections", || {
        server.metric("wsedge_connections") == 20.0
    });
    // One descriptor per connection (the admin request's own socket may
    // come and go).
    let during = server.metric("wsedge_process_open_fds");
    assert!(
        (before + 18.0..=before + 22.0).contains(&during),
        "{before} -> {during}"
    );
    drop(clients);
}
