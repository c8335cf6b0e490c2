//! Locks, versioned updates, conflicts, dedupe, bounds, export/import.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::engine::codes::ErrorCode;
use crate::engine::collab::{
    CollabError, ConflictPolicy, DirectedEvent, JoinAs, LockExport, SectionExport, StoryExport,
    UpdateOk,
};
use crate::engine::wire::collab::{MAX_OP_ID, MAX_SECTION_ID};

fn cfg() -> CollabConfig {
    CollabConfig::default()
}

const TTL: u64 = 30_000;
const GRACE: u64 = 10_000;

/// A story with editors 0..n (users u0.., clients c0..).
fn with_editors(c: CollabConfig, n: u32) -> Story {
    let mut s = story(c);
    let mut ev = Vec::new();
    for i in 0..n {
        s.join(m(i), &who(i), JoinAs::Editor, false, 0, &mut ev)
            .unwrap();
    }
    s
}

fn data(text: &str) -> Bytes {
    Bytes::from(format!("{{\"text\":\"{text}\"}}"))
}

fn ok(version: u64) -> Result<UpdateOk, CollabError> {
    Ok(UpdateOk {
        version,
        duplicate: false,
    })
}

#[test]
fn two_editors_locking_in_the_same_tick_first_wins() {
    let mut s = with_editors(cfg(), 2);
    let mut ev = Vec::new();
    let got = s.lock(m(0), "p1", None, 1_000, &mut ev).unwrap();
    assert_eq!(
        (&*got.section, got.holder.clone(), got.expires_ms),
        ("p1", who(0), 1_000 + TTL)
    );
    let err = s.lock(m(1), "p1", None, 1_000, &mut ev).unwrap_err();
    assert_eq!(err, CollabError::SectionLocked { holder: who(0) });
    assert_eq!(err.code().code(), 118);
    assert_eq!(lock_events(&ev), vec![("p1".into(), Some("c0".into()))]);
    // The loser may hold other sections, and an editor may hold several.
    s.lock(m(1), "p2", None, 1_000, &mut ev).unwrap();
    s.lock(m(0), "p3", None, 1_000, &mut ev).unwrap();
    assert_eq!(s.lock_count(), 3);
    // Updates to a section another holds are refused; the holder's pass.
    assert_eq!(
        s.update(m(1), "p1", 0, data("x"), "op1", 1_001, &mut ev),
        Err(CollabError::SectionLocked { holder: who(0) })
    );
    assert_eq!(
        s.update(m(0), "p1", 0, data("x"), "op2", 1_001, &mut ev),
        ok(1)
    );
    // Unlock: only the holder; a free section is a harmless retry.
    assert_eq!(
        s.unlock(m(1), "p1", 1_002, &mut ev),
        Err(CollabError::NotHolder { holder: who(0) })
    );
    ev.clear();
    assert_eq!(s.unlock(m(0), "p1", 1_002, &mut ev), Ok(true));
    assert_eq!(lock_events(&ev), vec![("p1".into(), None)]);
    assert_eq!(s.unlock(m(0), "p1", 1_003, &mut ev), Ok(false));
    // Now the other editor gets it.
    s.lock(m(1), "p1", None, 1_004, &mut ev).unwrap();
    check_invariants(&s, 1_004);
}

#[test]
fn renewal_extends_silently_and_ttl_is_bounded() {
    let mut s = with_editors(cfg(), 2);
    let mut ev = Vec::new();
    s.lock(m(0), "p", Some(Duration::from_secs(5)), 0, &mut ev)
        .unwrap();
    ev.clear();
    let renewed = s
        .lock(m(0), "p", Some(Duration::from_secs(5)), 4_000, &mut ev)
        .unwrap();
    assert_eq!(renewed.expires_ms, 9_000);
    assert!(ev.is_empty(), "renewal sends nothing");
    // Still held past the first expiry.
    assert_eq!(s.tick(5_000, &mut ev), 0);
    assert_eq!(s.next_deadline(), Some(9_000));
    assert!(s.lock(m(1), "p", None, 8_999, &mut ev).is_err());
    // A ttl beyond lock_ttl_max is cut; zero is refused.
    let long = s
        .lock(m(0), "q", Some(Duration::from_secs(3_600)), 0, &mut ev)
        .unwrap();
    assert_eq!(long.expires_ms, 300_000);
    assert_eq!(
        s.lock(m(0), "r", Some(Duration::ZERO), 0, &mut ev),
        Err(CollabError::BadTtl)
    );
    check_invariants(&s, 8_999);
}

#[test]
fn a_lapsed_ttl_releases_the_lock() {
    let mut s = with_editors(cfg(), 2);
    let mut ev = Vec::new();
    s.update(m(0), "p", 0, data("a"), "op3", 0, &mut ev)
        .unwrap();
    s.lock(m(0), "p", None, 0, &mut ev).unwrap();
    s.lock(m(0), "fresh", None, 100, &mut ev).unwrap();
    assert_eq!(s.next_deadline(), Some(TTL));
    ev.clear();
    assert_eq!(s.tick(TTL - 1, &mut ev), 0);
    assert_eq!(s.tick(TTL, &mut ev), 1);
    assert_eq!(lock_events(&ev), vec![("p".into(), None)]);
    // The written section stays; the never-written one goes with its lock.
    ev.clear();
    assert_eq!(s.tick(TTL + 100, &mut ev), 1);
    assert_eq!(s.section_count(), 1);
    assert_eq!(s.next_deadline(), None);
    // A call made after expiry but before any tick sees the lock gone, and
    // the release is announced before the new holder.
    s.lock(m(0), "p", None, 40_000, &mut ev).unwrap();
    ev.clear();
    s.lock(m(1), "p", None, 40_000 + TTL, &mut ev).unwrap();
    assert_eq!(
        lock_events(&ev),
        vec![("p".into(), None), ("p".into(), Some("c1".into()))]
    );
    check_invariants(&s, 40_000 + TTL);
}

#[test]
fn grace_gives_the_locks_back_to_the_same_user_only() {
    let mut s = with_editors(cfg(), 3);
    let mut ev = Vec::new();
    s.lock(m(0), "a", None, 0, &mut ev).unwrap();
    s.lock(m(0), "b", None, 0, &mut ev).unwrap();
    ev.clear();
    s.disconnect(m(0), 1_000, &mut ev);
    assert_eq!(
        ev,
        vec![CollabEvent::Leave {
            who: who(0),
            role: Role::Editor
        }],
        "locks stay, silently"
    );
    assert_eq!(s.lock_count(), 2);
    assert_eq!(s.next_deadline(), Some(1_000 + GRACE));
    // Meanwhile nobody else gets them, nor writes to them.
    assert!(matches!(
        s.lock(m(1), "a", None, 2_000, &mut ev),
        Err(CollabError::SectionLocked { .. })
    ));
    assert!(matches!(
        s.update(m(1), "a", 0, data("x"), "op4", 2_000, &mut ev),
        Err(CollabError::SectionLocked { .. })
    ));
    // Another user joining takes nothing.
    ev.clear();
    s.join(m(5), &who(5), JoinAs::Editor, false, 3_000, &mut ev)
        .unwrap();
    assert!(lock_events(&ev).is_empty());
    // The same user on a new connection (new client id) takes them over.
    let back = who_of("u0", "c0-again");
    ev.clear();
    let snap = s
        .join(
            member_gen(0, 2),
            &back,
            JoinAs::Editor,
            false,
            5_000,
            &mut ev,
        )
        .unwrap();
    assert_eq!(
        lock_events(&ev),
        vec![
            ("a".into(), Some("c0-again".into())),
            ("b".into(), Some("c0-again".into())),
        ]
    );
    let holders: Vec<_> = snap
        .sections
        .iter()
        .map(|v| v.lock.as_ref().unwrap().holder.client.clone())
        .collect();
    assert_eq!(holders, vec![Arc::from("c0-again"), Arc::from("c0-again")]);
    // Its original ttl still runs (30 s from 0), not the grace.
    assert_eq!(s.next_deadline(), Some(TTL));
    assert_eq!(
        s.update(member_gen(0, 2), "a", 0, data("x"), "op5", 6_000, &mut ev),
        ok(1)
    );
    check_invariants(&s, 6_000);

    // The same again, but the user comes back too late.
    s.disconnect(member_gen(0, 2), 7_000, &mut ev);
    ev.clear();
    assert_eq!(s.tick(7_000 + GRACE, &mut ev), 2);
    assert_eq!(
        lock_events(&ev),
        vec![("a".into(), None), ("b".into(), None)]
    );
    ev.clear();
    s.join(
        member_gen(0, 3),
        &who(0),
        JoinAs::Editor,
        false,
        20_000,
        &mut ev,
    )
    .unwrap();
    assert!(lock_events(&ev).is_empty());
    check_invariants(&s, 20_000);
}

#[test]
fn grace_is_taken_over_only_on_becoming_editor() {
    let c = CollabConfig {
        max_editors: 2,
        ..cfg()
    };
    let mut s = with_editors(c, 2);
    let mut ev = Vec::new();
    s.lock(m(0), "a", None, 0, &mut ev).unwrap();
    s.disconnect(m(0), 0, &mut ev);
    // u0's slot is held with its lock: another user may only queue.
    assert_eq!(
        s.join(m(2), &who(2), JoinAs::Editor, false, 0, &mut ev),
        Err(CollabError::EditorsFull)
    );
    s.join(m(2), &who(2), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    assert_eq!(s.role(m(2)), Some(Role::Queued));
    // u0 comes back as a viewer: no lock, and the slot stays held.
    let back = member_gen(0, 2);
    ev.clear();
    s.join(back, &who(0), JoinAs::Viewer, false, 100, &mut ev)
        .unwrap();
    assert!(lock_events(&ev).is_empty());
    assert_eq!(s.held_count(), 1);
    assert!(
        s.snapshot(back).unwrap().sections[0]
            .lock
            .as_ref()
            .unwrap()
            .holder
            == who(0)
    );
    // Asking for an editor slot: its held slot at once, ahead of the line,
    // and the lock is its own again.
    ev.clear();
    let joined = s
        .join(back, &who(0), JoinAs::Editor, true, 200, &mut ev)
        .unwrap();
    assert_eq!((joined.role, joined.position), (Role::Editor, None));
    assert_eq!(lock_events(&ev), vec![("a".into(), Some("c0".into()))]);
    assert_eq!(s.held_count(), 0);
    assert_eq!(s.role(m(2)), Some(Role::Queued), "the line waits on");
    assert_eq!(
        s.update(back, "a", 0, data("mine"), "op-mine", 400, &mut ev),
        ok(1)
    );
    check_invariants(&s, 400);
}

#[test]
fn a_reconnecting_editor_gets_its_slot_and_locks_back_ahead_of_the_line() {
    let c = CollabConfig {
        max_editors: 2,
        ..cfg()
    };
    let mut s = with_editors(c, 2);
    let mut ev = Vec::new();
    s.lock(m(0), "a", None, 0, &mut ev).unwrap();
    s.lock(m(0), "b", None, 0, &mut ev).unwrap();
    s.join(m(2), &who(2), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    s.join(m(3), &who(3), JoinAs::Editor, true, 0, &mut ev)
        .unwrap();
    // u0's connection drops: it leaves, but its slot and locks wait for
    // it. Nobody is promoted, nobody in line moves.
    ev.clear();
    s.disconnect(m(0), 1_000, &mut ev);
    assert_eq!(
        ev,
        vec![CollabEvent::Leave {
            who: who(0),
            role: Role::Editor
        }]
    );
    assert_eq!((s.editor_count(), s.held_count()), (1, 1));
    assert_eq!(s.snapshot(m(2)).unwrap().position, Some(1));
    assert_eq!(
        s.lock(m(2), "c", None, 2_000, &mut ev),
        Err(CollabError::NotEditor),
        "the first in line is still waiting"
    );
    // It reconnects (a new connection and client id, the same user) and
    // re-joins asking to queue, as a client does: an editor at once, with
    // both locks, before anyone in line.
    let again = member_gen(0, 2);
    let back = who_of("u0", "c0-again");
    ev.clear();
    let joined = s
        .join(again, &back, JoinAs::Editor, true, 5_000, &mut ev)
        .unwrap();
    assert_eq!(
        (joined.role, joined.position, joined.queued),
        (Role::Editor, None, 2)
    );
    assert_eq!(
        ev,
        vec![
            CollabEvent::Join {
                who: back.clone(),
                role: Role::Editor
            },
            CollabEvent::Lock {
                section: "a".into(),
                holder: Some(back.clone())
            },
            CollabEvent::Lock {
                section: "b".into(),
                holder: Some(back.clone())
            },
        ],
        "no promotion, no move in line"
    );
    assert_eq!(s.held_count(), 0);
    assert_eq!(
        s.update(again, "a", 0, data("x"), "op-a", 6_000, &mut ev),
        ok(1)
    );
    check_invariants(&s, 6_000);

    // It drops again and this time stays away: at the end of the grace its
    // locks are released, then its slot goes to the first in line, who is
    // told (and the second learns its new place).
    s.disconnect(again, 7_000, &mut ev);
    ev.clear();
    assert_eq!(s.tick(7_000 + GRACE - 1, &mut ev), 0);
    assert!(ev.is_empty());
    assert_eq!(s.tick(7_000 + GRACE, &mut ev), 2);
    assert_eq!(
        ev,
        vec![
            CollabEvent::Lock {
                section: "a".into(),
                holder: None
            },
            CollabEvent::Lock {
                section: "b".into(),
                holder: None
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
        ]
    );
    // The promoted editor is not blocked on the lapsed locks.
    s.lock(m(2), "a", None, 7_000 + GRACE, &mut ev).unwrap();
    // u0 coming back now is one more in line.
    let late = s
        .join(
            member_gen(0, 3),
            &who(0),
            JoinAs::Editor,
            true,
            20_000,
            &mut ev,
        )
        .unwrap();
    assert_eq!((late.role, late.position), (Role::Queued, Some(2)));
    check_invariants(&s, 20_000);
}

#[test]
fn anonymous_locks_are_not_taken_over() {
    let mut s = story(cfg());
    let mut ev = Vec::new();
    let anon = who_of("", "anon-1");
    s.join(m(0), &anon, JoinAs::Editor, false, 0, &mut ev)
        .unwrap();
    s.lock(m(0), "a", None, 0, &mut ev).unwrap();
    s.disconnect(m(0), 0, &mut ev);
    ev.clear();
    s.join(
        m(1),
        &who_of("", "anon-2"),
        JoinAs::Editor,
        false,
        10,
        &mut ev,
    )
    .unwrap();
    assert!(lock_events(&ev).is_empty());
    check_invariants(&s, 10);
}

#[test]
fn leave_releases_at_once() {
    let mut s = with_editors(cfg(), 2);
    let mut ev = Vec::new();
    s.update(m(0), "kept", 0, data("a"), "op7", 0, &mut ev)
        .unwrap();
    s.lock(m(0), "kept", None, 0, &mut ev).unwrap();
    s.lock(m(0), "blank", None, 0, &mut ev).unwrap();
    s.lock(m(1), "other", None, 0, &mut ev).unwrap();
    ev.clear();
    s.leave(m(0), 10, &mut ev);
    assert_eq!(
        ev,
        vec![
            CollabEvent::Lock {
                section: "blank".into(),
                holder: None
            },
            CollabEvent::Lock {
                section: "kept".into(),
                holder: None
            },
            CollabEvent::Leave {
                who: who(0),
                role: Role::Editor
            },
        ]
    );
    let ids: Vec<_> = s
        .snapshot(m(1))
        .unwrap()
        .sections
        .iter()
        .map(|v| v.id.clone())
        .collect();
    assert_eq!(ids, vec![Arc::from("kept"), Arc::from("other")]);
    s.lock(m(1), "kept", None, 11, &mut ev).unwrap();
    check_invariants(&s, 11);
}

#[test]
fn lww_alerts_the_member_whose_version_was_overwritten() {
    let mut s = with_editors(cfg(), 3);
    let mut ev = Vec::new();
    assert_eq!(
        s.update(m(0), "p", 0, data("zero"), "op8", 0, &mut ev),
        ok(1)
    );
    assert_eq!(
        s.update(m(1), "p", 1, data("one"), "op9", 1, &mut ev),
        ok(2)
    );
    ev.clear();
    // Editor 2 saw only version 1 and overwrites editor 1's version 2.
    assert_eq!(
        s.update(m(2), "p", 1, data("two"), "op10", 2, &mut ev),
        ok(3)
    );
    assert_eq!(
        ev,
        vec![
            CollabEvent::Update {
                section: "p".into(),
                version: 3,
                data: data("two"),
                by: who(2),
            },
            CollabEvent::Directed {
                to: m(1),
                event: DirectedEvent::Conflict {
                    section: "p".into(),
                    version: 3,
                    overwritten: data("one"),
                    by: who(2),
                },
            },
        ]
    );
    // No alert when you overwrite your own version.
    ev.clear();
    assert_eq!(
        s.update(m(2), "p", 1, data("three"), "op11", 3, &mut ev),
        ok(4)
    );
    assert_eq!(ev.len(), 1, "{ev:?}");
    // No alert for a writer who has left.
    s.leave(m(2), 4, &mut ev);
    ev.clear();
    assert_eq!(
        s.update(m(0), "p", 2, data("four"), "op12", 5, &mut ev),
        ok(5)
    );
    assert_eq!(ev.len(), 1, "{ev:?}");
    // A writer who became a viewer is still told.
    s.join(m(0), &who(0), JoinAs::Viewer, false, 6, &mut ev)
        .unwrap();
    ev.clear();
    assert_eq!(
        s.update(m(1), "p", 0, data("five"), "op13", 7, &mut ev),
        ok(6)
    );
    assert!(matches!(
        ev.last(),
        Some(CollabEvent::Directed { to, event: DirectedEvent::Conflict { overwritten, .. } })
            if *to == m(0) && *overwritten == data("four")
    ));
    check_invariants(&s, 7);
}

#[test]
fn reject_mode_answers_the_current_version_and_data() {
    let c = CollabConfig {
        conflict: ConflictPolicy::Reject,
        ..cfg()
    };
    let mut s = with_editors(c, 2);
    let mut ev = Vec::new();
    s.update(m(0), "p", 0, data("a"), "op14", 0, &mut ev)
        .unwrap();
    ev.clear();
    let err = s
        .update(m(1), "p", 0, data("b"), "op", 1, &mut ev)
        .unwrap_err();
    assert_eq!(
        err,
        CollabError::VersionConflict {
            version: 1,
            data: data("a")
        }
    );
    assert_eq!(err.code(), ErrorCode::VersionConflict);
    assert!(ev.is_empty());
    assert_eq!(s.version("p"), 1);
    // The client rebases and resends with the same op_id: it was not
    // recorded, so it applies.
    assert_eq!(s.update(m(1), "p", 1, data("b"), "op", 2, &mut ev), ok(2));
    // A base ahead of the section is refused in both modes.
    assert_eq!(
        s.update(m(1), "p", 7, data("c"), "op15", 3, &mut ev),
        Err(CollabError::BadVersion {
            version: 2,
            data: data("b")
        })
    );
    check_invariants(&s, 3);
}

#[test]
fn op_id_dedupe_answers_the_original_and_sends_nothing() {
    let c = CollabConfig {
        op_id_window: 2,
        ..cfg()
    };
    let mut s = with_editors(c, 2);
    let mut ev = Vec::new();
    assert_eq!(s.update(m(0), "p", 0, data("a"), "op-1", 0, &mut ev), ok(1));
    assert_eq!(s.update(m(1), "p", 1, data("b"), "op-1", 1, &mut ev), ok(2));
    ev.clear();
    let dup = Ok(UpdateOk {
        version: 1,
        duplicate: true,
    });
    assert_eq!(s.update(m(0), "p", 0, data("a"), "op-1", 2, &mut ev), dup);
    assert!(ev.is_empty());
    assert_eq!(s.version("p"), 2);
    // After a reconnect, the same user's resend is still recognised, even
    // with a base that is now stale.
    s.disconnect(m(0), 3, &mut ev);
    let again = member_gen(0, 2);
    s.join(
        again,
        &who_of("u0", "c0-b"),
        JoinAs::Editor,
        false,
        4,
        &mut ev,
    )
    .unwrap();
    ev.clear();
    assert_eq!(s.update(again, "p", 0, data("a"), "op-1", 5, &mut ev), dup);
    assert!(ev.is_empty());
    // The same op_id for another section is a client bug.
    assert_eq!(
        s.update(again, "q", 0, data("a"), "op-1", 6, &mut ev),
        Err(CollabError::OpIdReused)
    );
    // Bad op_ids.
    assert_eq!(
        s.update(again, "q", 0, data("a"), "", 6, &mut ev),
        Err(CollabError::BadOpId)
    );
    // The wire's limit (64 bytes), the one constant for both.
    let long = "x".repeat(MAX_OP_ID + 1);
    assert_eq!(
        s.update(again, "q", 0, data("a"), &long, 6, &mut ev),
        Err(CollabError::BadOpId)
    );
    // The window holds 2: a third op_id forgets the oldest (u0's op-1).
    assert_eq!(
        s.update(again, "q", 0, data("a"), "op-2", 7, &mut ev),
        ok(1)
    );
    assert_eq!(
        s.update(again, "p", 0, data("a"), "op-1", 8, &mut ev),
        ok(3)
    );
    let longest = "x".repeat(MAX_OP_ID);
    assert_eq!(
        s.update(again, "p", 3, data("a"), &longest, 9, &mut ev),
        ok(4)
    );
    check_invariants(&s, 9);
}

#[test]
fn anonymous_op_ids_are_per_connection() {
    let mut s = story(cfg());
    let mut ev = Vec::new();
    s.join(m(0), &who_of("", "a1"), JoinAs::Editor, false, 0, &mut ev)
        .unwrap();
    s.join(m(1), &who_of("", "a2"), JoinAs::Editor, false, 0, &mut ev)
        .unwrap();
    assert_eq!(s.update(m(0), "p", 0, data("x"), "1", 0, &mut ev), ok(1));
    // Another anonymous client's "1" is not a duplicate.
    assert_eq!(s.update(m(1), "p", 1, data("y"), "1", 1, &mut ev), ok(2));
    assert_eq!(
        s.update(m(1), "p", 1, data("y"), "1", 2, &mut ev),
        Ok(UpdateOk {
            version: 2,
            duplicate: true
        })
    );
}

#[test]
fn concurrent_updates_apply_in_call_order() {
    let mut s = with_editors(cfg(), 5);
    let mut ev = Vec::new();
    // Every editor read version 0 and writes in the same tick: all are
    // accepted (LWW), each exactly one version above the previous, and the
    // events come out in the same order.
    for i in 0..5 {
        let got = s.update(m(i), "p", 0, data(&i.to_string()), "op16", 100, &mut ev);
        assert_eq!(got, ok(u64::from(i) + 1));
    }
    let versions: Vec<(u64, Arc<str>)> = ev
        .iter()
        .filter_map(|e| match e {
            CollabEvent::Update { version, by, .. } => Some((*version, by.client.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, Arc<str>)> = (0..5)
        .map(|i| (i + 1, Arc::from(format!("c{i}"))))
        .collect();
    assert_eq!(versions, expected);
    // Each later writer overwrote the previous one: four alerts, each to
    // the previous writer.
    let alerts: Vec<MemberId> = ev
        .iter()
        .filter_map(|e| match e {
            CollabEvent::Directed { to, .. } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(alerts, (0..4).map(m).collect::<Vec<_>>());
    assert_eq!(s.snapshot(m(0)).unwrap().sections[0].data, data("4"));
    check_invariants(&s, 100);
}

#[test]
fn bounds_are_enforced_and_change_nothing() {
    let c = CollabConfig {
        max_sections: 2,
        max_section_bytes: 8,
        max_story_bytes: 12,
        ..cfg()
    };
    let mut s = with_editors(c, 1);
    let mut ev = Vec::new();
    s.join(m(1), &who(1), JoinAs::Viewer, false, 0, &mut ev)
        .unwrap();
    let b = |n: usize| Bytes::from(vec![b'x'; n]);
    assert_eq!(s.update(m(0), "a", 0, b(8), "op17", 0, &mut ev), ok(1));
    assert_eq!(
        s.update(m(0), "b", 0, b(9), "op18", 0, &mut ev),
        Err(CollabError::TooLarge)
    );
    // 8 + 5 > 12 in the story.
    assert_eq!(
        s.update(m(0), "b", 0, b(5), "op19", 0, &mut ev),
        Err(CollabError::TooLarge)
    );
    assert_eq!(s.update(m(0), "b", 0, b(4), "op20", 0, &mut ev), ok(1));
    // Replacing data counts the difference.
    assert_eq!(s.update(m(0), "a", 1, b(2), "op21", 0, &mut ev), ok(2));
    assert_eq!(s.bytes(), 6);
    // A third section, by update or by lock.
    assert_eq!(
        s.update(m(0), "c", 0, b(1), "op22", 0, &mut ev),
        Err(CollabError::TooManySections)
    );
    assert_eq!(
        s.lock(m(0), "c", None, 0, &mut ev),
        Err(CollabError::TooManySections)
    );
    // Section ids.
    for bad in ["", "a\nb", "\u{7f}", &"s".repeat(MAX_SECTION_ID + 1)] {
        assert_eq!(
            s.lock(m(0), bad, None, 0, &mut ev),
            Err(CollabError::BadSection)
        );
        assert_eq!(
            s.update(m(0), bad, 0, b(1), "op23", 0, &mut ev),
            Err(CollabError::BadSection)
        );
        assert_eq!(
            s.unlock(m(0), bad, 0, &mut ev),
            Err(CollabError::BadSection)
        );
    }
    assert_eq!(
        s.lock(m(0), &"s".repeat(MAX_SECTION_ID), None, 0, &mut ev),
        Err(CollabError::TooManySections)
    );
    assert!(super::super::edit::valid_section_id("photo: été 3"));
    // Who may edit.
    assert_eq!(
        s.update(m(1), "a", 2, b(1), "op24", 0, &mut ev),
        Err(CollabError::NotEditor)
    );
    assert_eq!(
        s.lock(m(1), "a", None, 0, &mut ev),
        Err(CollabError::NotEditor)
    );
    assert_eq!(s.unlock(m(1), "a", 0, &mut ev), Err(CollabError::NotEditor));
    assert_eq!(
        s.update(m(9), "a", 2, b(1), "op25", 0, &mut ev),
        Err(CollabError::NotMember)
    );
    assert_eq!(
        s.lock(m(9), "a", None, 0, &mut ev),
        Err(CollabError::NotMember)
    );
    assert_eq!(
        (s.version("a"), s.version("b"), s.section_count()),
        (2, 1, 2)
    );
    check_invariants(&s, 0);
}

#[test]
fn export_import_round_trip() {
    let mut s = with_editors(cfg(), 2);
    let mut ev = Vec::new();
    s.update(m(0), "a", 0, data("a1"), "op26", 0, &mut ev)
        .unwrap();
    s.update(m(1), "a", 1, data("a2"), "op27", 0, &mut ev)
        .unwrap();
    s.update(m(1), "b", 0, data("b1"), "op28", 0, &mut ev)
        .unwrap();
    s.lock(m(0), "b", None, 1_000, &mut ev).unwrap();
    s.lock(m(1), "z", Some(Duration::from_secs(100)), 1_000, &mut ev)
        .unwrap();
    let export = s.export(5_000);
    assert_eq!(
        export.sections,
        vec![
            SectionExport {
                id: "a".into(),
                version: 2,
                data: data("a2"),
                writer: Some("u1".into()),
                lock: None,
            },
            SectionExport {
                id: "b".into(),
                version: 1,
                data: data("b1"),
                writer: Some("u1".into()),
                lock: Some(LockExport {
                    user: "u0".into(),
                    client: "c0".into(),
                    expires_in_ms: 1_000 + TTL - 5_000,
                }),
            },
            SectionExport {
                id: "z".into(),
                version: 0,
                data: Bytes::new(),
                writer: None,
                lock: Some(LockExport {
                    user: "u1".into(),
                    client: "c1".into(),
                    expires_in_ms: 96_000,
                }),
            },
        ]
    );

    // Reloaded on another clock: same sections, locks in grace.
    let mut imported = Story::import(cfg(), export.clone(), 50);
    assert_eq!(imported.skipped, 0);
    let r = &mut imported.story;
    assert_eq!(
        (r.version("a"), r.version("b"), r.bytes(), r.lock_count()),
        (2, 1, s.bytes(), 2)
    );
    assert_eq!(r.member_count(), 0);
    check_invariants(r, 50);
    assert_eq!(r.export(50).sections[0], export.sections[0]);
    // u0 comes back within the grace and takes its lock; u1 does not come
    // back, and its lock lapses with the grace even though its ttl is long.
    ev.clear();
    r.join(
        m(7),
        &who_of("u0", "new"),
        JoinAs::Editor,
        false,
        60,
        &mut ev,
    )
    .unwrap();
    assert_eq!(lock_events(&ev), vec![("b".into(), Some("new".into()))]);
    ev.clear();
    assert_eq!(r.tick(50 + GRACE, &mut ev), 1);
    assert_eq!(lock_events(&ev), vec![("z".into(), None)]);
    // Versions continue from the import.
    assert_eq!(
        r.update(m(7), "a", 2, data("a3"), "op29", 100, &mut ev),
        ok(3)
    );
    check_invariants(r, 100);
}

#[test]
fn import_skips_what_breaks_the_bounds() {
    let c = CollabConfig {
        max_sections: 3,
        max_section_bytes: 4,
        max_story_bytes: 6,
        ..cfg()
    };
    let sec = |id: &str, version: u64, len: usize| SectionExport {
        id: id.into(),
        version,
        data: Bytes::from(vec![b'x'; len]),
        writer: Some("u".into()),
        lock: None,
    };
    let export = StoryExport {
        sections: vec![
            sec("a", 1, 4),
            sec("a", 2, 1),       // duplicate id
            sec("", 1, 1),        // bad id
            sec("big", 1, 5),     // over max_section_bytes
            sec("b", 1, 3),       // over max_story_bytes (4 + 3)
            sec("c", 1 << 53, 1), // version beyond 2^53 - 1
            sec("d", 0, 1),       // data at version 0
            sec("e", 0, 0),       // nothing at all: dropped, not counted
            sec("f", 1, 1),
            sec("g", 1, 0),
            sec("h", 1, 0), // over max_sections
        ],
    };
    let imported = Story::import(c, export, 0);
    assert_eq!(imported.skipped, 7);
    let ids: Vec<_> = imported
        .story
        .export(0)
        .sections
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![Arc::from("a"), Arc::from("f"), Arc::from("g")]);
    check_invariants(&imported.story, 0);
}
