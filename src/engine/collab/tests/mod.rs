//! Tests of live stories, all in virtual time: membership and the queue,
//! locks, versioned updates and conflicts, export/import, the shard table,
//! and a seeded fuzz of random operation sequences.

use std::sync::Arc;

use super::{CollabConfig, CollabEvent, MemberId, Role, Story};
use crate::engine::subs::ConnRef;
use crate::engine::wire::ClientInfo;

mod edit;
mod fuzz;
mod membership;
mod table;

/// Member `i` (on shard `i % 2`), connection generation `generation`.
pub(super) fn member_gen(i: u32, generation: u32) -> MemberId {
    MemberId {
        shard: (i % 2) as usize,
        conn: ConnRef { idx: i, generation },
    }
}

/// Member `i`, first connection.
pub(super) fn m(i: u32) -> MemberId {
    member_gen(i, 1)
}

/// Identity with user `user` and client `client`.
pub(super) fn who_of(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: user.into(),
        info: Some(bytes::Bytes::from_static(b"{\"name\":\"x\"}")),
    }
}

/// Identity of member `i`: user `u<i>`, client `c<i>`.
pub(super) fn who(i: u32) -> ClientInfo {
    who_of(&format!("u{i}"), &format!("c{i}"))
}

/// A story with `cfg` at time 0.
pub(super) fn story(cfg: CollabConfig) -> Story {
    cfg.validate().expect("test config is valid");
    Story::new(cfg, 0)
}

/// The section ids of the `Lock` events in `events`, with the holder's
/// client (`None`: released).
pub(super) fn lock_events(events: &[CollabEvent]) -> Vec<(Arc<str>, Option<Arc<str>>)> {
    events
        .iter()
        .filter_map(|e| match e {
            CollabEvent::Lock { section, holder } => {
                Some((section.clone(), holder.as_ref().map(|h| h.client.clone())))
            }
            _ => None,
        })
        .collect()
}

/// Structural invariants of a story at `now_ms`, checked by the unit tests
/// after their steps and by the fuzz after every operation.
pub(super) fn check_invariants(s: &Story, now_ms: u64) {
    let cfg = &s.cfg;
    // Roles and their indexes agree.
    let editors = s
        .members
        .values()
        .filter(|m| m.role == Role::Editor)
        .count();
    let viewers = s
        .members
        .values()
        .filter(|m| m.role == Role::Viewer)
        .count();
    let queued = s
        .members
        .values()
        .filter(|m| m.role == Role::Queued)
        .count();
    assert_eq!(editors, s.editors.len(), "editor list");
    assert!(
        s.editors.len() + s.held.len() <= cfg.max_editors,
        "editors and held slots over the cap"
    );
    // Held slots: named users only, in their grace.
    for h in &s.held {
        assert!(!h.user.is_empty(), "a slot held for an anonymous user");
        assert!(h.until > now_ms, "a lapsed slot is still held");
        assert!(h.until <= now_ms + cfg.lock_grace.as_millis() as u64);
    }
    assert_eq!(viewers, s.viewers, "viewer count");
    assert_eq!(queued, s.queue.len(), "queue length");
    assert!(s.queue.len() <= cfg.queue_max, "queue over its cap");
    for e in &s.editors {
        assert_eq!(s.members[e].role, Role::Editor);
    }
    for q in &s.queue {
        assert_eq!(s.members[q].role, Role::Queued);
    }
    // Nobody waits while a slot is free (neither an editor's nor held).
    if !s.queue.is_empty() {
        assert_eq!(
            s.editors.len() + s.held.len(),
            cfg.max_editors,
            "a slot is free with a queue"
        );
    }
    assert!(s.queue_moved.is_none(), "a move in line not announced");
    assert_eq!(
        s.members.is_empty() && s.held.is_empty(),
        s.empty_since.is_some(),
        "empty_since"
    );
    // A slot held for a user never leaves that user's connection in line.
    for q in &s.queue {
        let user = &s.members[q].who.user;
        assert!(
            !s.held.iter().any(|h| &h.user == user),
            "{user:?} waits in line beside its own held slot"
        );
    }
    // Sections, bytes and locks.
    assert!(
        s.sections.len() <= cfg.max_sections,
        "sections over the cap"
    );
    let mut bytes = 0;
    let mut locks = 0;
    let mut grace = 0;
    for (id, sec) in &s.sections {
        assert_eq!(id, &sec.id);
        assert!(sec.is_kept(), "a never-written section without a lock");
        assert!(sec.data.len() <= cfg.max_section_bytes);
        assert_eq!(sec.version == 0, sec.writer.is_none(), "writer iff written");
        bytes += sec.data.len();
        if let Some(l) = &sec.lock {
            locks += 1;
            assert!(l.holds_at(now_ms), "a lapsed lock is still held");
            match l.member {
                Some(holder) => {
                    // A holder is an editor, and the lock names it.
                    let mem = s.members.get(&holder).expect("holder is a member");
                    assert_eq!(mem.role, Role::Editor, "holder is not an editor");
                    assert_eq!(mem.who, l.holder, "holder identity");
                    assert!(l.grace_until.is_none());
                }
                None => {
                    grace += 1;
                    assert!(l.grace_until.is_some(), "memberless lock not in grace");
                }
            }
        }
    }
    assert_eq!(bytes, s.bytes, "byte count");
    assert!(s.bytes <= cfg.max_story_bytes, "story over its byte cap");
    assert_eq!(locks, s.locks, "lock count");
    assert_eq!(grace, s.grace_locks, "grace lock count");
    // The timers: the top is live and exact, and the heap is bounded.
    let next = s
        .sections
        .values()
        .filter_map(|sec| sec.lock.as_ref().map(|l| l.deadline()))
        .chain(s.held.iter().map(|h| h.until))
        .min();
    assert_eq!(s.next_deadline(), next, "next deadline");
    assert!(s.timers.len() <= 2 * s.locks + 64, "timer heap unbounded");
    assert!(s.ops.len() <= cfg.op_id_window, "op window over its cap");
}
