//! Story collaboration with the [`Story`] handle against the real server
//! binary: editors, the line for an editor slot and its promotion, lock
//! contention, a last-write-wins conflict and a rejected stale update,
//! `op_id` repeats, and a re-join with recovery after a dropped connection.

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::time::timeout;
use wsedge_client::{
    Client, ClientEvent, Events, Options, State, Story, StoryEvent, StoryOptions, StoryRole,
};

const WAIT: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
shards = 2
ping_interval = "2s"
pong_timeout = "1s"

[[namespace]]
name = "story"
collaboration = true
max_editors = 2
history_size = 1000
history_ttl = "5m"
recover = true

[[namespace]]
name = "strict"
collaboration = true
conflict = "reject"
history_size = 100
history_ttl = "5m"
recover = true

[[namespace]]
name = "chat"
"#;

async fn connected(server: &support::Server, user: &str) -> (Client, Events) {
    let client = Client::new(
        server.url(),
        Options {
            user: Some(user.into()),
            max_reconnect_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            ..Options::default()
        },
    );
    let events = client.events();
    timeout(WAIT, client.connect()).await.unwrap().unwrap();
    (client, events)
}

async fn join(client: &Client, channel: &str, options: StoryOptions) -> Story {
    timeout(WAIT, client.join_story(channel, options))
        .await
        .expect("joined in time")
        .expect("joined")
}

/// The next event matching `want`, with those before it.
async fn until(
    story: &mut Story,
    what: &str,
    want: impl Fn(&StoryEvent) -> bool,
) -> (StoryEvent, Vec<StoryEvent>) {
    let mut before = Vec::new();
    loop {
        let ev = timeout(WAIT, story.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; before it: {before:#?}"))
            .unwrap_or_else(|| panic!("the story ended before {what}; before it: {before:#?}"));
        if want(&ev) {
            return (ev, before);
        }
        before.push(ev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_locks_a_conflict_and_a_promotion() {
    let server = server_or_skip!(CONFIG);
    let (ann_c, _) = connected(&server, "ann").await;
    let (bob_c, _) = connected(&server, "bob").await;
    let (carol_c, _) = connected(&server, "carol").await;
    let channel = "story:one";

    let mut ann = join(&ann_c, channel, StoryOptions::editor()).await;
    assert_eq!(ann.role(), StoryRole::Editor);
    assert!(ann.sections().is_empty());
    let mut bob = join(&bob_c, channel, StoryOptions::editor()).await;
    assert_eq!(bob.role(), StoryRole::Editor);
    let users: Vec<&str> = bob
        .snapshot()
        .editors
        .iter()
        .map(|e| e.user.as_str())
        .collect();
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(
        users.contains(&"ann") && users.contains(&"bob"),
        "{users:?}"
    );

    // The editors are full: refused without `queue`, in line with it.
    let e = timeout(WAIT, carol_c.join_story(channel, StoryOptions::editor()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Some(117), "{e:?}");
    let mut carol = join(&carol_c, channel, StoryOptions::editor_or_queue()).await;
    assert_eq!(carol.role(), StoryRole::Queued);
    assert_eq!(carol.queue_position(), Some(1));
    let e = carol.lock("intro", None).await.unwrap_err();
    assert_eq!(e.code(), Some(120), "not an editor yet: {e:?}");

    // Lock contention: ann holds "intro"; bob may neither lock nor update it.
    let grant = ann
        .lock("intro", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        (grant.section.as_str(), grant.holder.user.as_str()),
        ("intro", "ann")
    );
    assert!(grant.expires > 0);
    let e = bob.lock("intro", None).await.unwrap_err();
    assert_eq!(e.code(), Some(118), "{e:?}");
    let wsedge_client::Error::Server(s) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(s.lock_holder().map(|h| h.user), Some("ann".into()));
    let e = bob.update("intro", 0, "mine").await.unwrap_err();
    assert_eq!(e.code(), Some(118), "{e:?}");
    // Bob sees the lock taken, in his model too.
    until(&mut bob, "ann's lock", |e| {
        matches!(e, StoryEvent::Lock { section, holder: Some(h), .. } if section == "intro" && h.user == "ann")
    })
    .await;
    assert_eq!(
        bob.section("intro")
            .and_then(|s| s.holder.as_ref())
            .map(|h| h.user.as_str()),
        Some("ann")
    );
    // Her own update goes through.
    let r = ann
        .update("intro", 0, json!({"text": "Once"}))
        .await
        .unwrap();
    assert_eq!((r.version, r.duplicate), (1, false));
    assert_eq!(r.op_id.len(), 32);

    // A conflict (last write wins): both start from version 0 of "p3".
    let a = ann.update("p3", 0, "A").await.unwrap();
    assert_eq!(a.version, 1);
    let b = bob.update("p3", 0, "B").await.unwrap();
    assert_eq!(b.version, 2);
    // The conflict push and bob's update event, in either order.
    let (ev, before) = until(&mut ann, "the conflict", |e| {
        matches!(e, StoryEvent::Conflict { .. })
    })
    .await;
    let bobs_update = |e: &StoryEvent| matches!(e, StoryEvent::Update { section, version: 2, .. } if section == "p3");
    if !before.iter().any(bobs_update) {
        until(&mut ann, "bob's update", bobs_update).await;
    }
    let StoryEvent::Conflict {
        section,
        version,
        overwritten,
        by,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!((section.as_str(), version), ("p3", 2));
    assert_eq!(overwritten, json!("A"));
    assert_eq!(by.user, "bob");
    let p3 = ann.section("p3").unwrap();
    assert_eq!((p3.version, &p3.data), (2, &json!("B")));

    // The same op_id again: applied once.
    let first = bob
        .update_with_op_id("p4", 0, "x", "bob-op-1")
        .await
        .unwrap();
    let again = bob
        .update_with_op_id("p4", 0, "x", "bob-op-1")
        .await
        .unwrap();
    assert_eq!((first.version, first.duplicate), (1, false));
    assert_eq!((again.version, again.duplicate), (1, true));

    // Ann leaves: her lock goes, carol is promoted and may take it.
    ann.leave().await;
    let (ev, _) = until(&mut carol, "the promotion", |e| {
        matches!(e, StoryEvent::Promoted)
    })
    .await;
    assert_eq!(ev, StoryEvent::Promoted);
    assert_eq!(carol.role(), StoryRole::Editor);
    let grant = carol.lock("intro", None).await.unwrap();
    assert_eq!(grant.holder.user, "carol");
    let intro = carol.section("intro").unwrap().clone();
    let r = carol
        .update("intro", intro.version, json!({"text": "Once upon"}))
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    until(&mut bob, "carol's update", |e| {
        matches!(e, StoryEvent::Update { section, by, .. } if section == "intro" && by.user == "carol")
    })
    .await;
    assert_eq!(
        bob.section("intro").unwrap().data,
        json!({"text": "Once upon"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_update_is_rejected_with_what_to_rebase_on() {
    let server = server_or_skip!(CONFIG);
    let (ann_c, _) = connected(&server, "ann").await;
    let (bob_c, _) = connected(&server, "bob").await;
    let channel = "strict:two";
    let ann = join(&ann_c, channel, StoryOptions::editor()).await;
    let viewer = join(&bob_c, "story:viewed", StoryOptions::viewer()).await;
    assert_eq!(viewer.role(), StoryRole::Viewer);
    let e = viewer.update("p", 0, "no").await.unwrap_err();
    assert_eq!(e.code(), Some(120), "{e:?}");
    let bob = join(&bob_c, channel, StoryOptions::editor()).await;

    assert_eq!(ann.update("p", 0, "A").await.unwrap().version, 1);
    let e = bob.update("p", 0, "B").await.unwrap_err();
    assert_eq!(e.code(), Some(119), "{e:?}");
    let wsedge_client::Error::Server(s) = &e else {
        panic!("{e:?}")
    };
    let (version, data) = s.current_section().unwrap();
    assert_eq!((version, data), (1, json!("A")));
    // Rebased on version 1: accepted.
    assert_eq!(bob.update("p", 1, "A+B").await.unwrap().version, 2);

    // Not a story channel: 122.
    let e = timeout(WAIT, ann_c.join_story("chat:x", StoryOptions::viewer()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Some(122), "{e:?}");
}

/// A connection the server API drops: the story re-joins by itself with
/// recovery (the events missed arrive after a `Joined` that says
/// `recovered`), the editor keeps its lock (within `lock_grace`), and an
/// update made while reconnecting goes out after the re-join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_rejoins_and_recovers() {
    let server = server_or_skip!(CONFIG);
    let (ann_c, mut ann_events) = connected(&server, "ann").await;
    let (bob_c, _) = connected(&server, "bob").await;
    let channel = "story:three";
    let mut ann = join(&ann_c, channel, StoryOptions::editor()).await;
    let bob = join(&bob_c, channel, StoryOptions::editor()).await;
    ann.lock("x", None).await.unwrap();
    let v1 = ann.update("x", 0, "one").await.unwrap();
    until(&mut ann, "her update", |e| {
        matches!(e, StoryEvent::Update { version: 1, .. })
    })
    .await;

    let r = server.api("disconnect", r#"{"user": "ann"}"#);
    assert_eq!(r["result"], json!({}), "{r}");
    loop {
        let ev = timeout(WAIT, ann_events.next()).await.unwrap().unwrap();
        if matches!(ev, ClientEvent::Disconnected { .. }) {
            break;
        }
    }
    // While ann is away: her update waits for the connection and goes out
    // right behind the re-join; bob writes meanwhile.
    let (mine, b) = tokio::join!(
        timeout(WAIT, ann.update("x", v1.version, "two")),
        bob.update("y", 0, "bob's")
    );
    assert_eq!(b.unwrap().version, 1);
    assert_eq!(mine.unwrap().unwrap().version, 2);
    assert_eq!(ann_c.state(), State::Connected);

    let (ev, before) = until(&mut ann, "the re-join", |e| {
        matches!(e, StoryEvent::Joined(_))
    })
    .await;
    // Her update, pipelined behind the re-join, may be published before
    // the re-join is answered: it still comes after the snapshot.
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, StoryEvent::Update { version: 2, .. })),
        "{before:#?}"
    );
    let StoryEvent::Joined(snapshot) = ev else {
        unreachable!()
    };
    assert_eq!(snapshot.role, StoryRole::Editor);
    assert_eq!(snapshot.recovered, Some(true), "{snapshot:?}");
    // Her lock survived the reconnect: bob still cannot take it.
    let e = bob.lock("x", None).await.unwrap_err();
    assert_eq!(e.code(), Some(118), "{e:?}");
    // Everything is in her model by the time her own update's event comes.
    until(
        &mut ann,
        "her second update",
        |e| matches!(e, StoryEvent::Update { section, version: 2, .. } if section == "x"),
    )
    .await;
    assert_eq!(ann.section("x").unwrap().data, json!("two"));
    assert_eq!(ann.section("y").unwrap().data, json!("bob's"));
}
