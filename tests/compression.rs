//! permessage-deflate end to end with a client library that offers it by
//! default (Python `websockets`, as browsers do), plus the compress-once
//! accounting.

mod common;

use std::process::Command;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// The Python interpreter with `websockets` installed: `EDGE_TEST_PYTHON`
/// (set by scripts/test-all.sh, which installs it), else `python3`.
fn python() -> String {
    std::env::var("EDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn browser_like_client_gets_compressed_publications() {
    let server = Server::start();
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/deflate_client.py"
        ))
        .arg(server.ws_url())
        .output()
        .expect("run python (scripts/test-all.sh installs it with websockets)");
    assert!(
        out.status.success(),
        "python client failed (needs the `websockets` package; scripts/test-all.sh installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.contains("server_no_context_takeover"), "{line}");
    // The publication was compressed once (JSON form) on its home shard.
    server.wait_for("compressed encoding", || {
        server.metric("wsedge_publication_encodes_total{kind=\"json_deflate\"}") >= 1.0
    });
}

#[tokio::test]
async fn compressed_frames_share_one_encoding_and_plain_clients_still_work() {
    let server = Server::start();
    // A client without the extension (tokio-tungstenite offers none).
    let mut plain = JsonClient::connect(&server).await;
    plain
        .call("subscribe", serde_json::json!({"channel": "mixed"}))
        .await;
    // Three deflate clients through raw sockets, to look at RSV1.
    let mut raws: Vec<RawWs> = (0..3)
        .map(|_| {
            RawWs::connect_with(
                &server,
                Some("edu-matrix-v1.json"),
                Some("permessage-deflate"),
            )
        })
        .collect();
    for r in raws.iter_mut() {
        r.send_text("{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"mixed\"}}");
    }
    server.wait_for("subscriptions", || {
        server.metric("wsedge_deliveries_total") >= 0.0
    });
    // Wait for the three subscribe replies.
    for r in raws.iter_mut() {
        let mut seen = String::new();
        while !seen.contains("\"id\":2") {
            let f = r.read_frame().unwrap();
            seen.push_str(&String::from_utf8_lossy(&f.payload));
        }
    }
    let big = "abcdefgh".repeat(200);
    plain
        .ws
        .send(Message::text(format!(
            "{{\"id\":9,\"publish\":{{\"channel\":\"mixed\",\"data\":\"{big}\"}}}}"
        )))
        .await
        .unwrap();
    for r in raws.iter_mut() {
        let f = r.read_frame().unwrap();
        assert!(f.rsv1, "publication arrives compressed");
        assert!(f.payload.len() < big.len() / 4, "{} bytes", f.payload.len());
    }
    // The plain client gets the uncompressed frame.
    loop {
        let v = plain.recv().await;
        if v.get("push").is_some() {
            assert_eq!(v["push"]["pub"]["data"], big);
            break;
        }
    }
    // The home shard counts its encodes when its loop turn ends, which may
    // be just after a peer shard has already written the frames.
    let deflate_encodes = "wsedge_publication_encodes_total{kind=\"json_deflate\"}";
    server.wait_for("the encode count", || server.metric(deflate_encodes) >= 1.0);
    assert_eq!(
        server.metric(deflate_encodes),
        1.0,
        "compressed once for all three subscribers"
    );
}
