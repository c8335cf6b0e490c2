//! The shard's table of stories: cap, eviction, due-time ticks, totals.

use std::time::Duration;

use super::*;
use crate::engine::collab::{CollabError, JoinAs, Stories};

fn cfg() -> CollabConfig {
    CollabConfig {
        max_stories: 3,
        idle_evict: Duration::from_secs(60),
        ..CollabConfig::default()
    }
}

fn ch(name: &str) -> Arc<str> {
    name.into()
}

#[test]
fn cap_evicts_the_longest_empty_story_else_refuses() {
    let mut t = Stories::new(cfg());
    let mut ev = Vec::new();
    for (i, name) in ["s:a", "s:b", "s:c"].iter().enumerate() {
        let mut s = t.open(&ch(name), i as u64 * 10).unwrap();
        s.join(
            m(i as u32),
            &who(i as u32),
            JoinAs::Editor,
            false,
            i as u64 * 10,
            &mut ev,
        )
        .unwrap();
    }
    assert_eq!((t.len(), t.members()), (3, 3));
    // All three have members: a fourth is refused.
    assert_eq!(
        t.open(&ch("s:d"), 100).unwrap_err(),
        CollabError::TooManyStories
    );
    assert_eq!(t.refused(), 1);
    // b empties first, then a: b has been empty longest and goes.
    t.get_mut("s:b").unwrap().leave(m(1), 200, &mut ev);
    t.get_mut("s:a").unwrap().leave(m(0), 300, &mut ev);
    assert_eq!(t.members(), 1);
    t.open(&ch("s:d"), 400).unwrap();
    assert!(t.get("s:b").is_none());
    assert!(t.get("s:a").is_some());
    assert_eq!((t.len(), t.evictions()), (3, 1));
    // Opening an existing story neither evicts nor counts.
    t.open(&ch("s:c"), 500).unwrap();
    assert_eq!((t.len(), t.evictions()), (3, 1));
}

/// A story with no members but an editor slot held is not evicted to make
/// room: the held slot would be lost (it is not part of what the store
/// keeps). Once the slot lapses it is.
#[test]
fn a_story_holding_a_slot_is_not_evicted_to_make_room() {
    let c = cfg();
    let grace = c.lock_grace.as_millis() as u64;
    let mut t = Stories::new(c);
    let mut ev = Vec::new();
    for (i, name) in ["s:a", "s:b", "s:c"].iter().enumerate() {
        let mut s = t.open(&ch(name), 0).unwrap();
        s.join(
            m(i as u32),
            &who(i as u32),
            JoinAs::Editor,
            false,
            0,
            &mut ev,
        )
        .unwrap();
    }
    t.get_mut("s:a").unwrap().disconnect(m(0), 10, &mut ev);
    assert_eq!(t.members(), 2);
    assert_eq!(
        t.open(&ch("s:d"), 20).unwrap_err(),
        CollabError::TooManyStories
    );
    assert_eq!(t.get("s:a").unwrap().held_count(), 1);
    let mut out = Vec::new();
    t.tick(10 + grace, &mut out);
    assert_eq!(t.get("s:a").unwrap().held_count(), 0);
    t.open(&ch("s:d"), 20 + grace).unwrap();
    assert!(t.get("s:a").is_none(), "evicted once its slot lapsed");
    assert_eq!(t.evictions(), 1);
}

#[test]
fn idle_stories_are_evicted_by_the_tick() {
    let mut t = Stories::new(cfg());
    let mut ev = Vec::new();
    let mut out = Vec::new();
    {
        let mut s = t.open(&ch("s:a"), 0).unwrap();
        s.join(m(0), &who(0), JoinAs::Editor, false, 0, &mut ev)
            .unwrap();
        s.update(
            m(0),
            "p",
            0,
            bytes::Bytes::from_static(b"1"),
            "op1",
            0,
            &mut ev,
        )
        .unwrap();
    }
    t.open(&ch("s:b"), 0).unwrap();
    assert_eq!(t.bytes(), 1);
    // b was never used: it is due at 60 s; a has a member and no deadline.
    assert_eq!(t.next_deadline(), Some(60_000));
    assert_eq!(t.tick(59_999, &mut out), 0);
    assert_eq!(t.tick(60_000, &mut out), 1);
    assert!(t.get("s:b").is_none());
    assert_eq!(t.next_deadline(), None);
    // a empties at 70 s: evicted at 130 s, not before; a join in between
    // would have kept it.
    t.get_mut("s:a").unwrap().leave(m(0), 70_000, &mut ev);
    assert_eq!(t.next_deadline(), Some(130_000));
    assert_eq!(t.tick(129_999, &mut out), 0);
    assert_eq!(t.tick(130_000, &mut out), 1);
    assert!(t.is_empty());
    assert_eq!(
        (t.evictions(), t.bytes(), t.members(), t.locks()),
        (2, 0, 0, 0)
    );
    assert!(out.is_empty());
}

#[test]
fn tick_visits_due_stories_and_labels_their_events() {
    let mut t = Stories::new(CollabConfig {
        max_stories: 100,
        ..cfg()
    });
    let mut ev = Vec::new();
    for i in 0..50u32 {
        let name = ch(&format!("s:{i}"));
        let mut s = t.open(&name, 0).unwrap();
        s.join(m(i), &who(i), JoinAs::Editor, false, 0, &mut ev)
            .unwrap();
        let ttl = Duration::from_secs(u64::from(i % 5) + 1);
        s.lock(m(i), "p", Some(ttl), 0, &mut ev).unwrap();
    }
    assert_eq!(t.locks(), 50);
    assert_eq!(t.next_deadline(), Some(1_000));
    let mut out = Vec::new();
    assert_eq!(t.tick(2_500, &mut out), 0);
    // Stories 0,5,10.. (1 s) and 1,6,11.. (2 s): 20 releases.
    assert_eq!(out.len(), 20);
    for (channel, e) in &out {
        let i: u32 = channel[2..].parse().unwrap();
        assert!(i % 5 < 2, "{channel}");
        assert_eq!(
            *e,
            CollabEvent::Lock {
                section: "p".into(),
                holder: None
            }
        );
    }
    assert_eq!(t.locks(), 30);
    assert_eq!(t.next_deadline(), Some(3_000));
    // Renewing through the table moves the deadline.
    t.get_mut("s:2")
        .unwrap()
        .lock(m(2), "p", None, 2_600, &mut ev)
        .unwrap();
    out.clear();
    t.tick(3_000, &mut out);
    assert_eq!(out.len(), 9);
    assert!(t.get("s:2").unwrap().lock_count() == 1);
    assert_eq!(t.members(), 50);
}

#[test]
fn insert_replaces_and_remove_forgets() {
    let mut t = Stories::new(cfg());
    let mut ev = Vec::new();
    {
        let mut s = t.open(&ch("s:a"), 0).unwrap();
        s.join(m(0), &who(0), JoinAs::Editor, false, 0, &mut ev)
            .unwrap();
        s.lock(m(0), "p", None, 0, &mut ev).unwrap();
    }
    let export = t.get("s:a").unwrap().export(0);
    let imported = Story::import(*t.config(), export, 10);
    let s = t.insert(ch("s:a"), imported.story).unwrap();
    assert_eq!((s.member_count(), s.lock_count()), (0, 1));
    assert_eq!(&**s.channel(), "s:a");
    drop(s);
    assert_eq!((t.len(), t.members(), t.locks()), (1, 0, 1));
    // The imported lock is in grace: due at 10 + 10 s.
    assert_eq!(t.next_deadline(), Some(10_010));
    let story = t.remove("s:a").unwrap();
    assert_eq!(story.lock_count(), 1);
    assert_eq!((t.len(), t.locks(), t.next_deadline()), (0, 0, None));
    assert!(t.remove("s:a").is_none());
}

#[test]
fn a_held_editor_slot_is_due_in_the_table_and_promotes_when_it_lapses() {
    let c = CollabConfig {
        max_editors: 1,
        ..cfg()
    };
    let grace = c.lock_grace.as_millis() as u64;
    let mut t = Stories::new(c);
    let mut ev = Vec::new();
    {
        let mut s = t.open(&ch("s:a"), 0).unwrap();
        s.join(m(0), &who(0), JoinAs::Editor, false, 0, &mut ev)
            .unwrap();
        s.join(m(1), &who(1), JoinAs::Editor, true, 0, &mut ev)
            .unwrap();
        s.join(m(2), &who(2), JoinAs::Editor, true, 0, &mut ev)
            .unwrap();
        // No locks: the held slot alone is the story's deadline.
        s.disconnect(m(0), 100, &mut ev);
    }
    assert_eq!(t.next_deadline(), Some(100 + grace));
    let mut out = Vec::new();
    t.tick(100 + grace - 1, &mut out);
    assert!(out.is_empty());
    t.tick(100 + grace, &mut out);
    let events: Vec<CollabEvent> = out
        .into_iter()
        .map(|(c, e)| {
            assert_eq!(&*c, "s:a");
            e
        })
        .collect();
    assert_eq!(
        events,
        vec![
            CollabEvent::Join {
                who: who(1),
                role: Role::Editor
            },
            CollabEvent::Directed {
                to: m(1),
                event: crate::engine::collab::DirectedEvent::Promoted { role: Role::Editor },
            },
            CollabEvent::Directed {
                to: m(2),
                event: crate::engine::collab::DirectedEvent::Queue { position: 1 },
            },
        ]
    );
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.get("s:a").unwrap().held_count(), 0);
}
