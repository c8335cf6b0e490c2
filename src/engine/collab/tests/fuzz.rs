//! Seeded random operation sequences (joins, role changes, leaves,
//! disconnects, locks, unlocks, updates with fresh, stale, future and
//! resent bases, bad op_ids, ticks) over 15 connection slots of 6 users
//! and 8 sections, under tight limits so every refusal happens. After
//! every operation the story's structure is checked
//! ([`check_invariants`]), and a client-side model built only from the
//! broadcast events must agree with the story: same members and roles,
//! same queue, same versions and data, same lock holders. Along the way:
//! never two holders of a section (a holder changes only through a
//! release, or a takeover by the same user after its connection closed),
//! versions only ever +1 per accepted non-duplicate update and each
//! `Update` event's version is the section's, queued members promoted in
//! line order, every queued member's place known from its join answer and
//! its `Queue` pushes (each a change), a user whose editor slot is held
//! getting it back at once, conflict alerts exactly when a live other
//! member's version was overwritten, and resends answered from an exact
//! model of the op_id window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::collab::{CollabError, ConflictPolicy, DirectedEvent, JoinAs, UpdateOk};
use crate::engine::wire::collab::MAX_OP_ID;

const SEEDS: u64 = 200;
const OPS: usize = 2_000;
const SLOTS: u32 = 15;
const SECTIONS: [&str; 8] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"];

fn fuzz_cfg(seed: u64) -> CollabConfig {
    CollabConfig {
        max_editors: 4,
        queue_max: 4,
        max_sections: 6,
        max_section_bytes: 16,
        max_story_bytes: 60,
        lock_ttl: Duration::from_millis(3_000),
        lock_ttl_max: Duration::from_millis(4_000),
        lock_grace: Duration::from_millis(2_000),
        conflict: if seed.is_multiple_of(3) {
            ConflictPolicy::Reject
        } else {
            ConflictPolicy::Lww
        },
        op_id_window: 16,
        max_stories: 1,
        idle_evict: Duration::from_secs(60),
    }
}

/// Slot 14 is anonymous; the others share six users.
fn user_of(slot: u32) -> String {
    if slot == SLOTS - 1 {
        String::new()
    } else {
        format!("u{}", slot % 6)
    }
}

/// What a client following the broadcast events knows.
#[derive(Default)]
struct Model {
    roles: HashMap<Arc<str>, Role>,
    queue: VecDeque<Arc<str>>,
    sections: HashMap<Arc<str>, (u64, Bytes)>,
    holders: HashMap<Arc<str>, ClientInfo>,
    /// The place in line each queued client was last told (its join's
    /// answer, then its `Queue` pushes).
    places: HashMap<Arc<str>, usize>,
    /// Each member's user, by client.
    users: HashMap<Arc<str>, Arc<str>>,
}

/// The op_id window as the contract describes it: the last `cap`
/// accepted updates that carried an op_id, per user (anonymous: per client).
struct OpModel {
    cap: usize,
    order: VecDeque<(String, String)>,
    applied: HashMap<(String, String), (Arc<str>, u64)>,
}

impl OpModel {
    fn key(who: &ClientInfo, op: &str) -> (String, String) {
        let owner = if who.user.is_empty() {
            format!("client:{}", who.client)
        } else {
            format!("user:{}", who.user)
        };
        (owner, op.to_string())
    }

    fn record(&mut self, key: (String, String), section: Arc<str>, version: u64) {
        self.order.push_back(key.clone());
        self.applied.insert(key, (section, version));
        while self.order.len() > self.cap {
            let old = self.order.pop_front().unwrap();
            self.applied.remove(&old);
        }
    }
}

struct Run {
    rng: StdRng,
    story: Story,
    now: u64,
    /// Connection generation per slot; a disconnect starts a new one.
    generation: Vec<u32>,
    model: Model,
    ops: OpModel,
    events: Vec<CollabEvent>,
    seed: u64,
    step: usize,
    /// The slot disconnected last, to come back soon (within the grace).
    last_gone: Option<u32>,
    /// A join's answered place in line, noted after the step's events.
    answered_place: Option<(Arc<str>, usize)>,
    /// Whether the step's join got its user's held slot back.
    slot_back: bool,
    /// How often each path was taken, across seeds.
    seen: HashMap<&'static str, usize>,
}

impl Run {
    fn member(&self, slot: u32) -> MemberId {
        member_gen(slot, self.generation[slot as usize])
    }

    fn who(&self, slot: u32) -> ClientInfo {
        let g = self.generation[slot as usize];
        who_of(&user_of(slot), &format!("c{slot}-{g}"))
    }

    fn ctx(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn step(&mut self) {
        self.now += self.rng.random_range(0..700);
        self.events.clear();
        self.slot_back = false;
        let held_before = self.story.held_count();
        let slot = self.rng.random_range(0..SLOTS);
        let section = SECTIONS[self.rng.random_range(0..SECTIONS.len())];
        match self.rng.random_range(0..100) {
            0..25 => {
                let slot = match self.last_gone.take() {
                    Some(gone) if self.rng.random_bool(0.5) => gone,
                    _ => slot,
                };
                self.join(slot)
            }
            25..33 => {
                let member = self.member(slot);
                self.story.leave(member, self.now, &mut self.events);
            }
            33..41 => {
                let member = self.member(slot);
                self.story.disconnect(member, self.now, &mut self.events);
                self.generation[slot as usize] += 1;
                self.last_gone = Some(slot);
            }
            41..61 => {
                let slot = self.pick_slot();
                self.lock(slot, section)
            }
            61..68 => {
                let slot = self.pick_slot();
                self.unlock(slot, section)
            }
            68..95 => {
                let slot = self.pick_slot();
                self.update(slot, section)
            }
            _ => {
                self.story.tick(self.now, &mut self.events);
            }
        }
        self.apply_events();
        if let Some((client, place)) = self.answered_place.take() {
            self.model.places.insert(client, place);
        }
        let held_after = self.story.held_count();
        if self.slot_back {
            *self.seen.entry("slot_back").or_default() += 1;
        } else if held_after < held_before {
            *self.seen.entry("slot_lapsed").or_default() += 1;
        }
        check_invariants(&self.story, self.now);
        self.compare();
    }

    /// Mostly a member (editors first), so that most operations get past
    /// the membership checks; sometimes anyone.
    fn pick_slot(&mut self) -> u32 {
        let editors = &self.story.editors;
        if !editors.is_empty() && self.rng.random_bool(0.6) {
            return editors[self.rng.random_range(0..editors.len())].conn.idx;
        }
        self.rng.random_range(0..SLOTS)
    }

    fn join(&mut self, slot: u32) {
        let role = if self.rng.random_bool(0.6) {
            JoinAs::Editor
        } else {
            JoinAs::Viewer
        };
        let queue = self.rng.random_bool(0.5);
        let (member, who) = (self.member(slot), self.who(slot));
        let before = self.story.role(member);
        // A slot held for this user (and not lapsing now) is its own.
        let held = !who.user.is_empty()
            && self
                .story
                .held
                .iter()
                .any(|h| h.user == who.user && h.until > self.now);
        let held_before = self.story.held_count();
        match self
            .story
            .join(member, &who, role, queue, self.now, &mut self.events)
        {
            Ok(ok) => {
                assert_eq!(Some(ok.role), self.story.role(member), "{}", self.ctx());
                assert_eq!(
                    ok.position.is_some(),
                    ok.role == Role::Queued,
                    "{}",
                    self.ctx()
                );
                assert_eq!(ok.sections.len(), self.story.section_count());
                assert_eq!(ok.queued, self.story.queued_count(), "{}", self.ctx());
                if let Some(place) = ok.position {
                    self.answered_place = Some((who.client.clone(), place));
                }
                let asked = role == JoinAs::Editor && matches!(before, None | Some(Role::Viewer));
                if held && asked {
                    assert_eq!(
                        ok.role,
                        Role::Editor,
                        "held slot not given back {}",
                        self.ctx()
                    );
                    assert!(self.story.held_count() < held_before, "{}", self.ctx());
                    self.slot_back = true;
                }
            }
            Err(e) => {
                assert!(
                    matches!(e, CollabError::EditorsFull | CollabError::QueueFull),
                    "{e:?} {}",
                    self.ctx()
                );
                assert_eq!(
                    before,
                    self.story.role(member),
                    "refused join changed the role"
                );
                self.refused(&e);
            }
        }
    }

    fn lock(&mut self, slot: u32, section: &str) {
        let ttl = match self.rng.random_range(0..4) {
            0 => None,
            1 => Some(Duration::ZERO),
            _ => Some(Duration::from_millis(self.rng.random_range(1..6_000))),
        };
        let member = self.member(slot);
        let prior = self.live_lock(section);
        match self
            .story
            .lock(member, section, ttl, self.now, &mut self.events)
        {
            Ok(ok) => {
                assert_eq!(ok.holder, self.who(slot), "{}", self.ctx());
                assert!(ok.expires_ms > self.now && ok.expires_ms <= self.now + 4_000);
                assert!(
                    prior.is_none_or(|(m, _)| m == Some(member)),
                    "lock granted over another holder {}",
                    self.ctx()
                );
            }
            Err(e) => {
                self.check_locked(&e, prior, member);
                self.refused(&e);
            }
        }
    }

    fn unlock(&mut self, slot: u32, section: &str) {
        let member = self.member(slot);
        let prior = self.live_lock(section);
        match self
            .story
            .unlock(member, section, self.now, &mut self.events)
        {
            Ok(true) => assert_eq!(prior.map(|p| p.0), Some(Some(member)), "{}", self.ctx()),
            Ok(false) => assert!(prior.is_none(), "{}", self.ctx()),
            Err(e) => {
                if let CollabError::NotHolder { holder } = &e {
                    let (m, h) = prior.clone().expect("not holder of a free section");
                    assert!(m != Some(member) && *holder == h, "{}", self.ctx());
                }
                self.refused(&e);
            }
        }
    }

    /// The lock of `section` that holds now: its member and holder.
    fn live_lock(&self, section: &str) -> Option<(Option<MemberId>, ClientInfo)> {
        let lock = self.story.sections.get(section)?.lock.as_ref()?;
        lock.holds_at(self.now)
            .then(|| (lock.member, lock.holder.clone()))
    }

    /// A `SectionLocked` refusal names a live lock held by someone else.
    fn check_locked(
        &self,
        e: &CollabError,
        prior: Option<(Option<MemberId>, ClientInfo)>,
        member: MemberId,
    ) {
        if let CollabError::SectionLocked { holder } = e {
            let (m, h) = prior.expect("section locked without a lock");
            assert!(m != Some(member) && *holder == h, "{}", self.ctx());
        }
    }

    fn update(&mut self, slot: u32, section: &str) {
        // What lapsed by now goes first (the update's own leading tick
        // then finds nothing), so every event after this is the update's.
        self.story.tick(self.now, &mut self.events);
        let first = self.events.len();
        let member = self.member(slot);
        let who = self.who(slot);
        let current = self.story.version(section);
        let base = match self.rng.random_range(0..10) {
            0..6 => current,
            6..9 => self.rng.random_range(0..=current),
            _ => current + 1,
        };
        let len = self.rng.random_range(0..20);
        let data = Bytes::from(format!("{:0>len$}", self.step % 1000, len = len));
        let op = match self.rng.random_range(0..50) {
            0 => String::new(),
            1 => "o".repeat(MAX_OP_ID + 1),
            _ => format!("op{}", self.rng.random_range(0..40)),
        };
        // What the contract predicts, read before the call.
        let prev = self.story.sections.get(section).map(|s| {
            let writer = s.writer.as_ref().and_then(|w| w.member);
            (s.data.clone(), writer)
        });
        let key = OpModel::key(&who, &op);
        let remembered = self.ops.applied.get(&key).cloned();
        let prior = self.live_lock(section);
        let result = self.story.update(
            member,
            section,
            base,
            data.clone(),
            &op,
            self.now,
            &mut self.events,
        );
        let own: Vec<&CollabEvent> = self.events[first..].iter().collect();
        match result {
            Ok(UpdateOk {
                version,
                duplicate: true,
            }) => {
                *self.seen.entry("duplicate").or_default() += 1;
                let (s, v) = remembered.expect("a duplicate the window does not hold");
                assert_eq!((&*s, v), (section, version), "{}", self.ctx());
                assert!(own.is_empty(), "a duplicate sent events {}", self.ctx());
            }
            Ok(UpdateOk {
                version,
                duplicate: false,
            }) => {
                assert!(
                    remembered.is_none(),
                    "a resend applied twice {}",
                    self.ctx()
                );
                assert!(
                    prior.is_none_or(|(m, _)| m == Some(member)),
                    "update over another's lock {}",
                    self.ctx()
                );
                assert_eq!(version, current + 1, "versions go +1 {}", self.ctx());
                assert_eq!(self.story.version(section), version);
                let stale = base < current;
                assert!(!stale || self.story.cfg.conflict == ConflictPolicy::Lww);
                let alert_to = prev
                    .as_ref()
                    .and_then(|(_, w)| *w)
                    .filter(|w| stale && *w != member && self.story.role(*w).is_some());
                let mut expected = vec![CollabEvent::Update {
                    section: section.into(),
                    version,
                    data,
                    by: who.clone(),
                }];
                if let Some(to) = alert_to {
                    expected.push(CollabEvent::Directed {
                        to,
                        event: DirectedEvent::Conflict {
                            section: section.into(),
                            version,
                            overwritten: prev.clone().unwrap().0,
                            by: who,
                        },
                    });
                }
                let own: Vec<CollabEvent> = own.into_iter().cloned().collect();
                assert_eq!(own, expected, "{}", self.ctx());
                self.ops.record(key, section.into(), version);
            }
            Err(e) => {
                assert!(own.is_empty(), "a refusal sent events {}", self.ctx());
                self.check_locked(&e, prior, member);
                match &e {
                    CollabError::OpIdReused => {
                        let (s, _) = remembered.expect("reuse of an op_id not held");
                        assert_ne!(&*s, section);
                    }
                    CollabError::NotMember
                    | CollabError::NotEditor
                    | CollabError::BadSection
                    | CollabError::BadOpId => {}
                    other => {
                        assert!(
                            remembered.is_none(),
                            "{other:?} for a resend {}",
                            self.ctx()
                        );
                    }
                }
                match &e {
                    CollabError::BadVersion { version, .. } => {
                        assert!(base > current && *version == current);
                    }
                    CollabError::VersionConflict { version, data } => {
                        assert_eq!(self.story.cfg.conflict, ConflictPolicy::Reject);
                        assert!(base < current && *version == current);
                        assert_eq!(Some(data), prev.as_ref().map(|p| &p.0));
                    }
                    _ => {}
                }
                assert_eq!(self.story.version(section), current);
                self.refused(&e);
            }
        }
    }

    /// Every refusal is one of the documented ones, for a reason that holds.
    fn refused(&mut self, e: &CollabError) {
        *self.seen.entry(e.label()).or_default() += 1;
        assert!(!e.to_string().is_empty());
        let code = e.code().code();
        assert!((107..=121).contains(&code), "{e:?}");
    }

    /// Applies the broadcast events to the model, checking each against it.
    fn apply_events(&mut self) {
        let ctx = self.ctx();
        for e in &self.events {
            let path = match e {
                CollabEvent::Update { .. } => "update",
                CollabEvent::Directed {
                    event: DirectedEvent::Conflict { .. },
                    ..
                } => "conflict",
                CollabEvent::Directed {
                    event: DirectedEvent::Queue { .. },
                    ..
                } => "queue",
                CollabEvent::Directed { .. } => "promoted",
                CollabEvent::Lock {
                    holder: Some(_), ..
                } => "lock",
                CollabEvent::Lock { holder: None, .. } => "release",
                CollabEvent::Join { .. } => "join",
                CollabEvent::Leave { .. } => "leave",
            };
            *self.seen.entry(path).or_default() += 1;
        }
        let mut last_editor_join: Option<Arc<str>> = None;
        // The user of the editor whose connection closed in the event just
        // before: its first connection in line inherits the slot.
        let mut heir_of: Option<Arc<str>> = None;
        for e in &self.events {
            let m = &mut self.model;
            let closing = heir_of.take();
            match e {
                CollabEvent::Join { who, role } => {
                    m.users.insert(who.client.clone(), who.user.clone());
                    let queued = m.queue.iter().position(|c| *c == who.client);
                    match (role, queued) {
                        (Role::Queued, None) => m.queue.push_back(who.client.clone()),
                        (Role::Queued, Some(_)) => panic!("queued twice {ctx}"),
                        (Role::Editor, Some(i)) => {
                            let first_of_user = m
                                .queue
                                .iter()
                                .position(|c| m.users.get(c) == Some(&who.user));
                            if i != 0 || closing.as_ref() == Some(&who.user) {
                                *self.seen.entry("inherit").or_default() += 1;
                                assert!(
                                    !who.user.is_empty()
                                        && closing.as_ref() == Some(&who.user)
                                        && first_of_user == Some(i),
                                    "promoted out of line order {ctx}"
                                );
                            }
                            m.queue.remove(i);
                        }
                        (_, Some(i)) => {
                            m.queue.remove(i);
                        }
                        (_, None) => {}
                    }
                    last_editor_join = (*role == Role::Editor).then(|| who.client.clone());
                    m.roles.insert(who.client.clone(), *role);
                }
                CollabEvent::Leave { who, role } => {
                    assert!(
                        m.roles.remove(&who.client).is_some(),
                        "leave of a stranger {ctx}"
                    );
                    m.users.remove(&who.client);
                    m.queue.retain(|c| *c != who.client);
                    if *role == Role::Editor && !who.user.is_empty() {
                        heir_of = Some(who.user.clone());
                    }
                    last_editor_join = None;
                }
                CollabEvent::Lock { section, holder } => match holder {
                    Some(h) => {
                        if let Some(old) = m.holders.get(section) {
                            // Only a takeover of a closed connection's lock
                            // by the same (named) user.
                            *self.seen.entry("takeover").or_default() += 1;
                            assert!(
                                !old.user.is_empty()
                                    && old.user == h.user
                                    && !m.roles.contains_key(&old.client),
                                "two holders of {section}: {old:?} and {h:?} {ctx}"
                            );
                        }
                        assert_eq!(m.roles.get(&h.client), Some(&Role::Editor), "{ctx}");
                        m.holders.insert(section.clone(), h.clone());
                    }
                    None => {
                        assert!(
                            m.holders.remove(section).is_some(),
                            "release of a free lock {ctx}"
                        );
                    }
                },
                CollabEvent::Update {
                    section,
                    version,
                    data,
                    by,
                } => {
                    let entry = m
                        .sections
                        .entry(section.clone())
                        .or_insert((0, Bytes::new()));
                    assert_eq!(*version, entry.0 + 1, "version jumped {ctx}");
                    *entry = (*version, data.clone());
                    assert_eq!(m.roles.get(&by.client), Some(&Role::Editor), "{ctx}");
                    // The version the event announces is the section's now.
                    assert_eq!(self.story.version(section), *version, "{ctx}");
                }
                CollabEvent::Directed { to, event } => {
                    // A member promoted as the call's held slot lapsed may
                    // be gone by its end (its own leave or disconnect).
                    let target = match self.story.members.get(to) {
                        Some(t) => t.who.clone(),
                        None => {
                            assert!(
                                matches!(event, DirectedEvent::Promoted { .. }),
                                "{event:?} to a non-member {ctx}"
                            );
                            let (slot, generation) = (to.conn.idx, to.conn.generation);
                            who_of(&user_of(slot), &format!("c{slot}-{generation}"))
                        }
                    };
                    match event {
                        DirectedEvent::Promoted { role } => {
                            assert_eq!(*role, Role::Editor);
                            assert_eq!(
                                last_editor_join.as_ref(),
                                Some(&target.client),
                                "promoted without its join {ctx}"
                            );
                        }
                        DirectedEvent::Conflict { by, .. } => {
                            assert_ne!(by.client, target.client, "alert to oneself {ctx}");
                        }
                        DirectedEvent::Queue { position } => {
                            let client = &target.client;
                            let at = m.queue.iter().position(|c| c == client);
                            assert_eq!(at.map(|i| i + 1), Some(*position), "wrong place {ctx}");
                            let told = m.places.insert(client.clone(), *position);
                            assert_ne!(told, Some(*position), "a place that did not change {ctx}");
                        }
                    }
                }
            }
        }
    }

    /// The model built from events equals the story.
    fn compare(&self) {
        let ctx = self.ctx();
        let s = &self.story;
        let m = &self.model;
        assert_eq!(m.roles.len(), s.members.len(), "{ctx}");
        for mem in s.members.values() {
            assert_eq!(m.roles.get(&mem.who.client), Some(&mem.role), "{ctx}");
        }
        let queue: Vec<Arc<str>> = s
            .queue
            .iter()
            .map(|q| s.members[q].who.client.clone())
            .collect();
        assert_eq!(queue, Vec::from(m.queue.clone()), "{ctx}");
        // Every queued member knows its place: none moved untold.
        for (i, c) in queue.iter().enumerate() {
            assert_eq!(m.places.get(c), Some(&(i + 1)), "place of {c} {ctx}");
        }
        for (id, sec) in &s.sections {
            let (v, d) = m.sections.get(id).cloned().unwrap_or((0, Bytes::new()));
            assert_eq!((sec.version, &sec.data), (v, &d), "{id} {ctx}");
            let holder = sec.lock.as_ref().map(|l| l.holder.client.clone());
            assert_eq!(
                holder,
                m.holders.get(id).map(|h| h.client.clone()),
                "{id} {ctx}"
            );
        }
        for (id, (v, _)) in &m.sections {
            assert_eq!(s.version(id), *v, "{ctx}");
        }
        assert_eq!(m.holders.len(), s.lock_count(), "{ctx}");
    }
}

#[test]
fn random_sequences_keep_the_invariants() {
    let mut seen = HashMap::new();
    for seed in 0..SEEDS {
        let cfg = fuzz_cfg(seed);
        let mut run = Run {
            rng: StdRng::seed_from_u64(seed),
            story: story(cfg),
            now: 0,
            generation: vec![1; SLOTS as usize],
            model: Model::default(),
            ops: OpModel {
                cap: cfg.op_id_window,
                order: VecDeque::new(),
                applied: HashMap::new(),
            },
            events: Vec::new(),
            seed,
            step: 0,
            last_gone: None,
            answered_place: None,
            slot_back: false,
            seen,
        };
        for step in 0..OPS {
            run.step = step;
            run.step();
        }
        seen = run.seen;
    }
    // The sequences reach every path worth checking.
    let paths = [
        "update",
        "conflict",
        "promoted",
        "lock",
        "release",
        "join",
        "leave",
        "duplicate",
        "takeover",
        "not_member",
        "not_editor",
        "bad_ttl",
        "op_id_reused",
        "editors_full",
        "queue_full",
        "section_locked",
        "not_holder",
        "version_conflict",
        "bad_version",
        "too_many_sections",
        "too_large",
        "bad_op_id",
        "queue",
        "slot_back",
        "slot_lapsed",
        "inherit",
    ];
    for p in paths {
        assert!(seen.get(p).copied().unwrap_or(0) >= 50, "{p}: {seen:?}");
    }
}
