//! Channels across shards: ordering, fan-out to every subscriber on every
//! shard, encode-once.

mod common;

use common::*;
use serde_json::json;

/// Opens clients until both shards hold at least `per_shard` of them.
async fn clients_on_both_shards(server: &Server, per_shard: usize) -> Vec<JsonClient> {
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(JsonClient::connect(server).await);
        let s0 = server.metric("wsedge_connections{shard=\"0\"}");
        let s1 = server.metric("wsedge_connections{shard=\"1\"}");
        if s0 >= per_shard as f64 && s1 >= per_shard as f64 {
            return clients;
        }
    }
    panic!("the kernel never spread connections over both shards");
}

#[tokio::test]
async fn ten_thousand_messages_in_order_on_every_shard() {
    // A high-rate publisher: the per-connection command limit is off.
    let server = Server::start_with(Opts::default().env("WSEDGE_MAX_COMMANDS_PER_SECOND", "0"));
    let mut subs = clients_on_both_shards(&server, 2).await;
    let n_subs = subs.len();
    for c in subs.iter_mut() {
        let r = c.call("subscribe", json!({"channel": "order:test"})).await;
        assert_eq!(r["subscribe"]["offset"], 0, "{r}");
    }
    let encodes_before = server.metric("wsedge_publication_encodes_total{kind=\"json\"}");
    // Publish 10,000 messages without waiting for replies (the channel's
    // home may be either shard).
    let mut publisher = JsonClient::connect(&server).await;
    const N: u64 = 10_000;
    let mut batch = String::new();
    for i in 1..=N {
        batch.push_str(&format!(
            "{{\"id\":{i},\"publish\":{{\"channel\":\"order:test\",\"data\":{{\"seq\":{i}}}}}}}\n"
        ));
        if i % 500 == 0 {
            publisher.send_raw(batch.trim_end()).await;
            batch.clear();
        }
    }
    // Replies carry consecutive offsets in publish order.
    let mut last_offset = 0;
    let mut replies = 0;
    while replies < N {
        let r = publisher.recv().await;
        let off = r["publish"]["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(
            r["id"].as_u64().unwrap(),
            off,
            "offsets follow publish order"
        );
        assert!(off > last_offset);
        last_offset = off;
        replies += 1;
    }
    // Every subscriber, on either shard, sees all of them in order.
    for (k, c) in subs.iter_mut().enumerate() {
        for i in 1..=N {
            let p = c.push().await;
            assert_eq!(p["push"]["pub"]["offset"], i, "subscriber {k}");
            assert_eq!(p["push"]["pub"]["data"]["seq"], i, "subscriber {k}");
        }
    }
    // Encode once: one JSON encoding per publication, however many
    // subscribers, while deliveries count every subscriber.
    let encodes = server.metric("wsedge_publication_encodes_total{kind=\"json\"}") - encodes_before;
    assert_eq!(encodes, N as f64);
    let deliveries = server.metric("wsedge_deliveries_total");
    assert_eq!(deliveries, (N as usize * n_subs) as f64);
    assert!(server.metric("wsedge_socket_writes_total") > 0.0);
}

#[tokio::test]
async fn every_channel_reaches_subscribers_on_both_shards() {
    let server = Server::start();
    let mut clients = clients_on_both_shards(&server, 1).await;
    // Many channels, so their homes land on both shards.
    let channels: Vec<String> = (0..16).map(|i| format!("room:{i}")).collect();
    for c in clients.iter_mut() {
        for ch in &channels {
            c.call("subscribe", json!({"channel": ch})).await;
        }
    }
    let mut publisher = JsonClient::connect(&server).await;
    for ch in &channels {
        let r = publisher
            .call("publish", json!({"channel": ch, "data": ch}))
            .await;
        assert_eq!(r["publish"]["offset"], 1, "{r}");
    }
    for c in clients.iter_mut() {
        let mut got: Vec<String> = Vec::new();
        for _ in &channels {
            let p = c.push().await;
            assert_eq!(p["push"]["pub"]["data"], p["push"]["channel"]);
            got.push(p["push"]["channel"].as_str().unwrap().to_string());
        }
        got.sort();
        let mut want = channels.clone();
        want.sort();
        assert_eq!(got, want);
    }
    // Every channel has exactly one home, the one its name hashes to.
    for shard in 0..2 {
        let want = channels
            .iter()
            .filter(|ch| wsedge::engine::hub::home_shard(ch, 2) == shard)
            .count() as f64;
        let key = format!("wsedge_channels_home{{shard=\"{shard}\"}}");
        server.wait_for(&format!("{want} channels homed on shard {shard}"), || {
            server.metric(&key) == want
        });
    }
}

#[tokio::test]
async fn unsubscribed_and_closed_clients_stop_receiving() {
    let server = Server::start();
    let mut a = JsonClient::connect(&server).await;
    let mut b = JsonClient::connect(&server).await;
    let c = JsonClient::connect(&server).await;
    let epoch = a.call("subscribe", json!({"channel": "news"})).await["subscribe"]["epoch"].clone();
    b.call("subscribe", json!({"channel": "news"})).await;
    drop(c);
    b.call("unsubscribe", json!({"channel": "news"})).await;
    let r = a
        .call("publish", json!({"channel": "news", "data": 1}))
        .await;
    let off = r["publish"]["offset"].as_u64().unwrap();
    let p = a.push().await;
    assert_eq!(p["push"]["pub"]["offset"], off);
    // b gets nothing: its next message is the reply to this ping.
    let r = b.call("ping", json!({})).await;
    assert!(r["ping"].is_object());
    assert!(
        b.recv_nothing_for(std::time::Duration::from_millis(200))
            .await
    );
    // Resubscribing gives the current position.
    let r = b.call("subscribe", json!({"channel": "news"})).await;
    assert_eq!(r["subscribe"]["offset"], off);
    assert_eq!(r["subscribe"]["epoch"], epoch);
}
