//! Unit tests for the metrics: pre-created series, the close-code bucket,
//! and that per-event methods never create a series.

use super::*;
use std::collections::HashSet;

/// The exposition's sample lines (no `#` comments).
fn samples(m: &Metrics) -> Vec<String> {
    m.encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn has(text: &str, family: &str, shard: usize, kind: &str, value: u64) -> bool {
    let line = format!("wsedge_{family}_total{{shard=\"{shard}\",kind=\"{kind}\"}} {value}");
    text.lines().any(|l| l == line)
}

#[test]
fn exposition_has_families_and_labels() {
    let m = Arc::new(Metrics::new());
    let s = m.shard(1);
    let mut st = Stats {
        deliveries: 5,
        encodes: [1, 1, 0, 0],
        ..Default::default()
    };
    s.flush(&mut st);
    s.close(1009);
    s.latency(0.001);
    let text = m.encode();
    assert!(
        text.contains("wsedge_deliveries_total{shard=\"1\"} 5"),
        "{text}"
    );
    assert!(has(&text, "publication_encodes", 1, "json", 1), "{text}");
    assert!(has(&text, "publication_encodes", 1, "json_deflate", 0));
    assert!(has(&text, "closes", 1, "1009", 1));
    assert!(text.contains("wsedge_publish_to_write_seconds_count{shard=\"1\"} 1"));
    assert_eq!(st.deliveries, 0);
}

#[test]
fn every_series_is_exported_at_zero_from_the_start() {
    let m = Arc::new(Metrics::new());
    let _s0 = m.shard(0);
    let _s3 = m.shard(3);
    let text = m.encode();
    for shard in [0, 3] {
        for r in Refusal::ALL {
            assert!(
                has(&text, "connections_refused", shard, r.label(), 0),
                "{r:?}"
            );
        }
        for h in HandshakeResult::all() {
            assert!(has(&text, "handshakes", shard, h.label(), 0), "{h:?}");
        }
        for c in ErrorCode::ALL {
            let code = c.code().to_string();
            assert!(has(&text, "error_replies", shard, &code, 0), "{c:?}");
        }
        for c in known_close_codes() {
            assert!(has(&text, "closes", shard, &c.to_string(), 0), "{c}");
        }
        assert!(has(&text, "closes", shard, CLOSE_OTHER, 0));
        for k in ShardMsgKind::ALL {
            assert!(has(&text, "queue_full", shard, k.label(), 0), "{k:?}");
        }
        for form in ENCODE_FORMS {
            assert!(has(&text, "publication_encodes", shard, form, 0), "{form}");
        }
    }
    // The handshake labels the docs list, and the reject labels with them.
    for label in [
        "ok",
        "timeout",
        "aborted",
        "unavailable",
        "upgrade_required",
    ] {
        assert!(has(&text, "handshakes", 0, label, 0), "{label}");
    }
}

#[test]
fn close_codes_cover_what_peers_and_the_server_send() {
    let codes = known_close_codes();
    for c in [
        1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
    ] {
        assert!(codes.contains(&c), "{c}");
    }
    for r in CloseReason::ALL {
        assert!(codes.contains(&r.code()) && codes.contains(&r.close_code()));
    }
    assert!(!codes.contains(&1004) && !codes.contains(&1015));
    let unique: HashSet<_> = codes.iter().collect();
    assert_eq!(unique.len(), codes.len());
    // Small enough that a linear scan per close is cheap.
    assert!(codes.len() < 32, "{}", codes.len());
}

#[test]
fn unknown_legal_close_codes_share_one_bucket() {
    let m = Arc::new(Metrics::new());
    let s = m.shard(2);
    let before = samples(&m).len();
    s.close(4321);
    s.close(3000);
    s.close(4999);
    s.close(3002); // in the catalogue: its own series
    s.close(1010); // RFC code a peer may send: its own series
    s.close(1005);
    let text = m.encode();
    assert!(has(&text, "closes", 2, CLOSE_OTHER, 3), "{text}");
    assert!(has(&text, "closes", 2, "3002", 1));
    assert!(has(&text, "closes", 2, "1010", 1));
    assert!(has(&text, "closes", 2, "1005", 1));
    assert!(!text.contains("kind=\"4321\""));
    assert_eq!(samples(&m).len(), before, "no series was created");
}

#[test]
fn events_land_in_their_series_and_create_none() {
    let m = Arc::new(Metrics::new());
    let s = m.shard(0);
    let before = samples(&m).len();
    for r in Refusal::ALL {
        s.refused(r);
    }
    s.refused(Refusal::Memory);
    for h in HandshakeResult::all() {
        s.handshake(h);
    }
    s.handshake(Reject::NotFound);
    s.handshake(HandshakeResult::Ok);
    for c in ErrorCode::ALL {
        s.error_reply(c);
    }
    s.error_reply(ErrorCode::TooManyRequests);
    for k in ShardMsgKind::ALL {
        s.queue_full(k);
    }
    s.queue_full(ShardMsgKind::Publish);
    let mut st = Stats {
        encodes: [2, 3, 4, 5],
        ..Default::default()
    };
    s.flush(&mut st);
    let text = m.encode();
    assert_eq!(samples(&m).len(), before, "no series was created");
    assert!(has(&text, "connections_refused", 0, "memory", 2), "{text}");
    assert!(has(&text, "connections_refused", 0, "fd_limit", 1));
    assert!(has(&text, "handshakes", 0, "not_found", 2));
    assert!(has(&text, "handshakes", 0, "ok", 2));
    assert!(has(&text, "handshakes", 0, "timeout", 1));
    assert!(has(&text, "error_replies", 0, "114", 2));
    assert!(has(&text, "error_replies", 0, "100", 1));
    assert!(has(&text, "queue_full", 0, "publish", 2));
    assert!(has(&text, "queue_full", 0, "drain", 1));
    assert!(has(&text, "publication_encodes", 0, "binary_deflate", 5));
}

#[test]
fn shards_count_apart() {
    let m = Arc::new(Metrics::new());
    let (a, b) = (m.shard(0), m.shard(1));
    a.error_reply(ErrorCode::BadRequest);
    b.close(1006);
    let text = m.encode();
    assert!(has(&text, "error_replies", 0, "107", 1));
    assert!(has(&text, "error_replies", 1, "107", 0));
    assert!(has(&text, "closes", 1, "1006", 1));
    assert!(has(&text, "closes", 0, "1006", 0));
}

#[test]
fn labels_are_unique() {
    let refusals: HashSet<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(refusals.len(), Refusal::ALL.len());
    let handshakes: Vec<_> = HandshakeResult::all().map(|h| h.label()).collect();
    let unique: HashSet<_> = handshakes.iter().collect();
    assert_eq!(unique.len(), handshakes.len());
    assert_eq!(handshakes.len(), 3 + Reject::ALL.len());
    let kinds: HashSet<_> = ShardMsgKind::ALL.iter().map(|k| k.label()).collect();
    assert_eq!(kinds.len(), ShardMsgKind::ALL.len());
}

#[test]
fn api_requests_exist_at_zero_and_count_apart() {
    let m = Metrics::new();
    let api = m.api(&["publish", "info"], &["ok", "error"]);
    api.request(1, 0);
    api.request(1, 0);
    api.request(0, 1);
    let text = m.encode();
    for (method, status, n) in [
        ("publish", "ok", 0),
        ("publish", "error", 1),
        ("info", "ok", 2),
        ("info", "error", 0),
    ] {
        let line =
            format!("wsedge_api_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
}
