//! Joining, leaving, the editor cap and the queue.

use super::*;
use crate::engine::codes::ErrorCode;
use crate::engine::collab::{CollabError, DirectedEvent, JoinAs};

fn cfg() -> CollabConfig {
    CollabConfig::default()
}

fn join(
    s: &mut Story,
    i: u32,
    role: JoinAs,
    queue: bool,
    now: u64,
) -> Result<super::super::JoinOk, CollabError> {
    let mut ev = Vec::new();
    s.join(m(i), &who(i), role, queue, now, &mut ev)
}

#[test]
fn the_eleventh_editor_is_refused_unless_it_queues() {
    let mut s = story(cfg());
    let mut ev = Vec::new();
    for i in 0..10 {
        let ok = s
            .join(m(i), &who(i), JoinAs::Editor, false, 0, &mut ev)
            .unwrap();
        assert_eq!((ok.role, ok.position), (Role::Editor, None));
        assert_eq!(ok.editors.len(), i as usize + 1);
    }
    assert_eq!(ev.len(), 10, "one Join each");
    ev.clear();
    let err = s
        .join(m(10), &who(10), JoinAs::Editor, false, 0, &mut ev)
        .unwrap_err();
    assert_eq!(err, CollabError::EditorsFull);
    assert_eq!(err.code(), ErrorCode::EditorsFull);
    assert_eq!(err.code().code(), 117);
    assert!(err.code().temporary());
    assert!(ev.is_empty(), "a refusal sends nothing");
    assert_eq!((s.member_count(), s.editor_count()), (10, 10));

    // With queue: a place in line, visible to everyone as a queued join.
    let ok = s
        .join(m(10), &who(10), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    assert_eq!(
        (ok.role, ok.position, ok.queued),
        (Role::Queued, Some(1), 1)
    );
    let ok = s
        .join(m(11), &who(11), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    assert_eq!(
        (ok.role, ok.position, ok.queued),
        (Role::Queued, Some(2), 2)
    );
    assert_eq!(
        ev,
        vec![
            CollabEvent::Join {
                who: who(10),
                role: Role::Queued
            },
            CollabEvent::Join {
                who: who(11),
                role: Role::Queued
            },
        ]
    );
    // Editors in the snapshot are in slot order.
    let editors: Vec<_> = ok.editors.iter().map(|w| w.client.clone()).collect();
    let expected: Vec<Arc<str>> = (0..10).map(|i| format!("c{i}").into()).collect();
    assert_eq!(editors, expected);
    check_invariants(&s, 0);
}

#[test]
fn viewers_are_unlimited_and_do_not_take_slots() {
    let mut s = story(cfg());
    for i in 0..10 {
        join(&mut s, i, JoinAs::Editor, false, 0).unwrap();
    }
    for i in 100..1100 {
        let ok = join(&mut s, i, JoinAs::Viewer, false, 0).unwrap();
        assert_eq!(ok.role, Role::Viewer);
    }
    assert_eq!(
        (s.viewer_count(), s.editor_count(), s.member_count()),
        (1000, 10, 1010)
    );
    let ok = s.snapshot(m(5)).unwrap();
    assert_eq!((ok.viewers, ok.editors.len()), (1000, 10));
    check_invariants(&s, 0);
}

/// The `Queue` pushes in `events`: (member index, position).
fn queue_pushes(events: &[CollabEvent]) -> Vec<(u32, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            CollabEvent::Directed {
                to,
                event: DirectedEvent::Queue { position },
            } => Some((to.conn.idx, *position)),
            _ => None,
        })
        .collect()
}

#[test]
fn queue_promotes_in_order_on_leave_and_after_a_disconnect_grace() {
    let c = CollabConfig {
        max_editors: 2,
        ..cfg()
    };
    let grace = c.lock_grace.as_millis() as u64;
    let mut s = story(c);
    let mut ev = Vec::new();
    join(&mut s, 0, JoinAs::Editor, false, 0).unwrap();
    join(&mut s, 1, JoinAs::Editor, false, 0).unwrap();
    for i in 2..5 {
        join(&mut s, i, JoinAs::Editor, true, 0).unwrap();
    }
    assert_eq!(s.snapshot(m(4)).unwrap().position, Some(3));

    // Leave: the first in line gets the slot; the others move up, told.
    assert!(s.leave(m(0), 10, &mut ev));
    assert_eq!(
        ev,
        vec![
            CollabEvent::Leave {
                who: who(0),
                role: Role::Editor
            },
            CollabEvent::Join {
                who: who(2),
                role: Role::Editor
            },
            CollabEvent::Directed {
                to: m(2),
                event: DirectedEvent::Promoted { role: Role::Editor },
            },
            CollabEvent::Directed {
                to: m(3),
                event: DirectedEvent::Queue { position: 1 },
            },
            CollabEvent::Directed {
                to: m(4),
                event: DirectedEvent::Queue { position: 2 },
            },
        ]
    );
    assert_eq!(s.role(m(2)), Some(Role::Editor));
    assert_eq!(s.snapshot(m(3)).unwrap().position, Some(1));
    assert_eq!(s.snapshot(m(4)).unwrap().position, Some(2));
    check_invariants(&s, 10);

    // Disconnect holds the slot for its user through the grace: nobody is
    // promoted, nobody moves.
    ev.clear();
    assert!(s.disconnect(m(1), 20, &mut ev));
    assert_eq!(
        ev,
        vec![CollabEvent::Leave {
            who: who(1),
            role: Role::Editor
        }]
    );
    assert_eq!((s.editor_count(), s.held_count()), (1, 1));
    assert_eq!(s.next_deadline(), Some(20 + grace));
    check_invariants(&s, 20);
    ev.clear();
    assert_eq!(s.tick(20 + grace - 1, &mut ev), 0);
    assert!(ev.is_empty());
    // The grace lapses: the slot goes to the first in line.
    s.tick(20 + grace, &mut ev);
    assert_eq!(
        ev,
        vec![
            CollabEvent::Join {
                who: who(3),
                role: Role::Editor
            },
            CollabEvent::Directed {
                to: m(3),
                event: DirectedEvent::Promoted { role: Role::Editor },
            },
            CollabEvent::Directed {
                to: m(4),
                event: DirectedEvent::Queue { position: 1 },
            },
        ]
    );
    assert_eq!((s.held_count(), s.next_deadline()), (0, None));
    // A queued member leaving frees nothing and promotes nobody.
    let now = 30 + grace;
    ev.clear();
    assert!(s.leave(m(4), now, &mut ev));
    assert_eq!(
        ev,
        vec![CollabEvent::Leave {
            who: who(4),
            role: Role::Queued
        }]
    );
    // Leaving twice is harmless.
    ev.clear();
    assert!(!s.leave(m(4), now + 1, &mut ev));
    assert!(!s.disconnect(m(0), now + 1, &mut ev));
    assert!(ev.is_empty());
    check_invariants(&s, now + 1);
}

#[test]
fn queue_pushes_go_to_those_who_moved_once_per_call() {
    let c = CollabConfig {
        max_editors: 1,
        ..cfg()
    };
    let mut s = story(c);
    let mut ev = Vec::new();
    join(&mut s, 0, JoinAs::Editor, false, 0).unwrap();
    for i in 1..6 {
        let ok = s
            .join(m(i), &who(i), JoinAs::Editor, true, 0, &mut ev)
            .unwrap();
        assert_eq!((ok.position, ok.queued), (Some(i as usize), i as usize));
    }
    assert!(queue_pushes(&ev).is_empty(), "a newcomer moves nobody");
    // The middle of the line leaves: only those behind it move.
    ev.clear();
    s.leave(m(3), 1, &mut ev);
    assert_eq!(queue_pushes(&ev), vec![(4, 3), (5, 4)]);
    // The last in line settles for viewing: nobody moves.
    ev.clear();
    s.join(m(5), &who(5), JoinAs::Viewer, false, 2, &mut ev)
        .unwrap();
    assert_eq!(queue_pushes(&ev), vec![]);
    // Asking again for the same place moves nobody either.
    ev.clear();
    let ok = s
        .join(m(4), &who(4), JoinAs::Editor, true, 3, &mut ev)
        .unwrap();
    assert_eq!(
        (ok.role, ok.position, ok.queued),
        (Role::Queued, Some(3), 3)
    );
    assert!(ev.is_empty());
    // The editor steps down: the first in line is promoted (a `promoted`
    // push, not a `queue` one), the rest move up by one, told once each.
    ev.clear();
    s.join(m(0), &who(0), JoinAs::Viewer, false, 4, &mut ev)
        .unwrap();
    assert_eq!(queue_pushes(&ev), vec![(2, 1), (4, 2)]);
    assert!(ev.contains(&CollabEvent::Directed {
        to: m(1),
        event: DirectedEvent::Promoted { role: Role::Editor },
    }));
    // A disconnect from the front: one push each, with the final place.
    ev.clear();
    s.disconnect(m(2), 5, &mut ev);
    assert_eq!(queue_pushes(&ev), vec![(4, 1)]);
    check_invariants(&s, 5);
}

#[test]
fn an_anonymous_editors_slot_is_not_held() {
    let c = CollabConfig {
        max_editors: 1,
        ..cfg()
    };
    let mut s = story(c);
    let mut ev = Vec::new();
    s.join(m(0), &who_of("", "anon"), JoinAs::Editor, false, 0, &mut ev)
        .unwrap();
    join(&mut s, 1, JoinAs::Editor, true, 0).unwrap();
    ev.clear();
    s.disconnect(m(0), 10, &mut ev);
    assert_eq!(s.held_count(), 0);
    assert_eq!(s.role(m(1)), Some(Role::Editor), "promoted at once");
    assert!(ev.contains(&CollabEvent::Directed {
        to: m(1),
        event: DirectedEvent::Promoted { role: Role::Editor },
    }));
    check_invariants(&s, 10);
}

#[test]
fn a_held_slot_lapsing_during_a_refused_join_still_promotes_and_tells() {
    let c = CollabConfig {
        max_editors: 1,
        ..cfg()
    };
    let grace = c.lock_grace.as_millis() as u64;
    let mut s = story(c);
    let mut ev = Vec::new();
    join(&mut s, 0, JoinAs::Editor, false, 0).unwrap();
    join(&mut s, 1, JoinAs::Editor, true, 0).unwrap();
    join(&mut s, 2, JoinAs::Editor, true, 0).unwrap();
    s.disconnect(m(0), 0, &mut ev);
    // The slot is u0's: another user is refused, and nobody moves.
    ev.clear();
    assert_eq!(
        join(&mut s, 9, JoinAs::Editor, false, grace - 1),
        Err(CollabError::EditorsFull)
    );
    // At the grace, the refused join's leading tick promotes and tells.
    assert_eq!(
        s.join(m(9), &who(9), JoinAs::Editor, false, grace, &mut ev),
        Err(CollabError::EditorsFull)
    );
    assert_eq!(
        ev,
        vec![
            CollabEvent::Join {
                who: who(1),
                role: Role::Editor
            },
            CollabEvent::Directed {
                to: m(1),
                event: DirectedEvent::Promoted { role: Role::Editor },
            },
            CollabEvent::Directed {
                to: m(2),
                event: DirectedEvent::Queue { position: 1 },
            },
        ]
    );
    check_invariants(&s, grace);
}

#[test]
fn a_full_queue_refuses() {
    let c = CollabConfig {
        max_editors: 1,
        queue_max: 2,
        ..cfg()
    };
    let mut s = story(c);
    join(&mut s, 0, JoinAs::Editor, false, 0).unwrap();
    join(&mut s, 1, JoinAs::Editor, true, 0).unwrap();
    join(&mut s, 2, JoinAs::Editor, true, 0).unwrap();
    let err = join(&mut s, 3, JoinAs::Editor, true, 0).unwrap_err();
    assert_eq!(err, CollabError::QueueFull);
    assert_eq!(err.code(), ErrorCode::StoryLimit);
    assert_eq!(err.code().code(), 121);
    assert_eq!(
        s.member_count(),
        3,
        "the refused member is not in the story"
    );
    // A viewer may still join, and then ask in vain for a slot.
    join(&mut s, 3, JoinAs::Viewer, false, 0).unwrap();
    assert_eq!(
        join(&mut s, 3, JoinAs::Editor, true, 0).unwrap_err(),
        CollabError::QueueFull
    );
    assert_eq!(
        s.role(m(3)),
        Some(Role::Viewer),
        "a refused role change changes nothing"
    );
    check_invariants(&s, 0);
}

#[test]
fn joining_again_changes_the_role() {
    let c = CollabConfig {
        max_editors: 1,
        ..cfg()
    };
    let mut s = story(c);
    let mut ev = Vec::new();
    join(&mut s, 0, JoinAs::Editor, false, 0).unwrap();
    join(&mut s, 1, JoinAs::Editor, true, 0).unwrap();
    join(&mut s, 2, JoinAs::Viewer, false, 0).unwrap();

    // The same role again: the snapshot again, nothing sent.
    let ok = s
        .join(m(0), &who(0), JoinAs::Editor, false, 1, &mut ev)
        .unwrap();
    assert_eq!(ok.role, Role::Editor);
    let ok = s
        .join(m(1), &who(1), JoinAs::Editor, false, 1, &mut ev)
        .unwrap();
    assert_eq!((ok.role, ok.position), (Role::Queued, Some(1)));
    s.join(m(2), &who(2), JoinAs::Viewer, false, 1, &mut ev)
        .unwrap();
    assert!(ev.is_empty());

    // Viewer asking for a slot while full without queue: refused, unchanged.
    assert_eq!(
        s.join(m(2), &who(2), JoinAs::Editor, false, 1, &mut ev)
            .unwrap_err(),
        CollabError::EditorsFull
    );
    // The editor steps down: its lock goes at once, the queue moves up.
    s.lock(m(0), "intro", None, 2, &mut ev).unwrap();
    ev.clear();
    let ok = s
        .join(m(0), &who(0), JoinAs::Viewer, false, 3, &mut ev)
        .unwrap();
    assert_eq!(ok.role, Role::Viewer);
    assert_eq!(
        ev,
        vec![
            CollabEvent::Lock {
                section: "intro".into(),
                holder: None
            },
            CollabEvent::Join {
                who: who(0),
                role: Role::Viewer
            },
            CollabEvent::Join {
                who: who(1),
                role: Role::Editor
            },
            CollabEvent::Directed {
                to: m(1),
                event: DirectedEvent::Promoted { role: Role::Editor },
            },
        ]
    );
    assert_eq!(s.lock_count(), 0);
    // A queued member may settle for viewing.
    join(&mut s, 3, JoinAs::Editor, true, 4).unwrap();
    ev.clear();
    let ok = s
        .join(m(3), &who(3), JoinAs::Viewer, false, 5, &mut ev)
        .unwrap();
    assert_eq!((ok.role, ok.queued), (Role::Viewer, 0));
    assert_eq!(
        ev,
        vec![CollabEvent::Join {
            who: who(3),
            role: Role::Viewer
        }]
    );
    // A viewer takes a free slot.
    s.leave(m(1), 6, &mut ev);
    ev.clear();
    let ok = s
        .join(m(2), &who(2), JoinAs::Editor, false, 7, &mut ev)
        .unwrap();
    assert_eq!((ok.role, ok.viewers), (Role::Editor, 2));
    assert_eq!(
        ev,
        vec![CollabEvent::Join {
            who: who(2),
            role: Role::Editor
        }]
    );
    check_invariants(&s, 7);
}

/// Ann edits in one tab and waits in line in another; the editing tab's
/// connection closes: the slot held for ann goes to her waiting tab at
/// once, ahead of the line, with her locks.
#[test]
fn a_queued_tab_of_the_same_user_takes_the_held_slot_and_its_locks() {
    let c = CollabConfig {
        max_editors: 1,
        ..cfg()
    };
    let mut s = story(c);
    let mut ev = Vec::new();
    let tab1 = who_of("ann", "tab1");
    let tab2 = who_of("ann", "tab2");
    s.join(m(0), &tab1, JoinAs::Editor, false, 0, &mut ev)
        .unwrap();
    s.join(m(1), &who(1), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    let ok = s
        .join(m(2), &tab2, JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    assert_eq!((ok.role, ok.position), (Role::Queued, Some(2)));
    s.lock(m(0), "intro", None, 1, &mut ev).unwrap();
    ev.clear();
    assert!(s.disconnect(m(0), 10, &mut ev));
    assert_eq!(
        ev,
        vec![
            CollabEvent::Leave {
                who: tab1.clone(),
                role: Role::Editor
            },
            CollabEvent::Join {
                who: tab2.clone(),
                role: Role::Editor
            },
            CollabEvent::Directed {
                to: m(2),
                event: DirectedEvent::Promoted { role: Role::Editor },
            },
            CollabEvent::Lock {
                section: "intro".into(),
                holder: Some(tab2.clone()),
            },
        ],
        "u1, first in line, neither moves nor gets the slot"
    );
    assert_eq!(s.role(m(2)), Some(Role::Editor));
    assert_eq!(s.role(m(1)), Some(Role::Queued));
    assert_eq!(s.snapshot(m(1)).unwrap().position, Some(1));
    assert_eq!((s.editor_count(), s.held_count()), (1, 0));
    check_invariants(&s, 10);
    // An anonymous editor's slot is not held, so nothing is inherited:
    // the first in line gets it.
    let mut s = story(CollabConfig {
        max_editors: 1,
        ..cfg()
    });
    let anon = who_of("", "a1");
    s.join(m(0), &anon, JoinAs::Editor, false, 0, &mut ev)
        .unwrap();
    s.join(m(1), &who(1), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    s.join(m(2), &who_of("", "a2"), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    s.disconnect(m(0), 10, &mut ev);
    assert_eq!(s.role(m(1)), Some(Role::Editor));
    assert_eq!(s.role(m(2)), Some(Role::Queued));
    check_invariants(&s, 10);
}

/// A story whose last member left with its slot held is not empty until
/// the slot lapses: idle eviction would drop the slot (it is not stored).
#[test]
fn a_held_slot_keeps_the_story_from_going_idle() {
    let c = cfg();
    let grace = c.lock_grace.as_millis() as u64;
    let idle = c.idle_evict.as_millis() as u64;
    let mut s = story(c);
    let mut ev = Vec::new();
    join(&mut s, 0, JoinAs::Editor, false, 100).unwrap();
    s.disconnect(m(0), 200, &mut ev);
    assert_eq!(s.member_count(), 0);
    assert_eq!(s.empty_since(), None, "a slot is held");
    assert!(!s.is_idle(200 + grace - 1 + idle));
    check_invariants(&s, 200);
    // The user comes back within the grace: the slot is taken.
    join(&mut s, 0, JoinAs::Editor, false, 300).unwrap();
    assert_eq!((s.held_count(), s.empty_since()), (0, None));
    // Away again, and the grace lapses: the empty clock starts then.
    s.disconnect(m(0), 400, &mut ev);
    s.tick(400 + grace, &mut ev);
    assert_eq!(s.empty_since(), Some(400 + grace));
    assert!(!s.is_idle(400 + grace + idle - 1));
    assert!(s.is_idle(400 + grace + idle));
    check_invariants(&s, 400 + grace);
}

#[test]
fn idleness_follows_the_last_member() {
    let mut s = story(cfg());
    let idle = cfg().idle_evict.as_millis() as u64;
    assert!(!s.is_idle(idle - 1));
    assert!(s.is_idle(idle), "an unused story is idle after idle_evict");
    join(&mut s, 0, JoinAs::Viewer, false, 100).unwrap();
    assert!(!s.is_idle(10 * idle));
    let mut ev = Vec::new();
    s.leave(m(0), 5_000, &mut ev);
    assert_eq!(s.empty_since(), Some(5_000));
    assert!(!s.is_idle(5_000 + idle - 1));
    assert!(s.is_idle(5_000 + idle));
}

#[test]
fn config_validation_names_the_key() {
    assert_eq!(CollabConfig::default().validate(), Ok(()));
    let bad = [
        (
            CollabConfig {
                max_editors: 0,
                ..cfg()
            },
            "max_editors",
        ),
        (
            CollabConfig {
                max_sections: 0,
                ..cfg()
            },
            "max_sections",
        ),
        (
            CollabConfig {
                max_stories: 0,
                ..cfg()
            },
            "max_stories",
        ),
        (
            CollabConfig {
                max_section_bytes: 10,
                max_story_bytes: 9,
                ..cfg()
            },
            "max_section_bytes",
        ),
        (
            CollabConfig {
                lock_ttl: std::time::Duration::from_secs(301),
                ..cfg()
            },
            "lock_ttl",
        ),
        (
            CollabConfig {
                lock_grace: std::time::Duration::ZERO,
                ..cfg()
            },
            "lock_grace",
        ),
        (
            CollabConfig {
                idle_evict: std::time::Duration::from_secs(100_000),
                ..cfg()
            },
            "idle_evict",
        ),
    ];
    for (c, key) in bad {
        let err = c.validate().unwrap_err();
        assert!(err.contains(key), "{err} should name {key}");
    }
    // Zero queue and zero op window are allowed: no queue, no dedupe.
    let ok = CollabConfig {
        queue_max: 0,
        op_id_window: 0,
        ..cfg()
    };
    assert_eq!(ok.validate(), Ok(()));
}

#[test]
fn error_codes_are_the_documented_ones() {
    use crate::engine::collab::CollabError as E;
    let cases = [
        (E::EditorsFull, 117),
        (E::SectionLocked { holder: who(1) }, 118),
        (E::NotHolder { holder: who(1) }, 118),
        (
            E::VersionConflict {
                version: 1,
                data: bytes::Bytes::new(),
            },
            119,
        ),
        (
            E::BadVersion {
                version: 1,
                data: bytes::Bytes::new(),
            },
            119,
        ),
        (E::NotEditor, 120),
        (E::NotMember, 120),
        (E::QueueFull, 121),
        (E::TooManySections, 121),
        (E::TooLarge, 121),
        (E::TooManyStories, 121),
        (E::BadSection, 107),
        (E::BadOpId, 107),
        (E::BadTtl, 107),
        (E::OpIdReused, 107),
    ];
    for (e, code) in cases {
        assert_eq!(e.code().code(), code, "{e:?}");
        assert!(!e.to_string().is_empty());
        assert_eq!(e.code().temporary(), code == 117, "{e:?}");
    }
    assert_eq!(ErrorCode::NotCollaborative.code(), 122);
    assert_eq!(
        ErrorCode::NotCollaborative.message(),
        "not a collaborative channel"
    );
}
