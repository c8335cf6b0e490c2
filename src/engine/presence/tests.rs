//! Deterministic tests of [`Presence`] with virtual time.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn info(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: user.into(),
        info: None,
    }
}

fn name(s: &str) -> Arc<str> {
    s.into()
}

fn st(s: &str) -> Arc<str> {
    s.into()
}

/// The events of the one channel that has any (none: empty).
fn events(p: &mut Presence) -> Vec<PresenceEvent> {
    let mut all = p.take_events();
    assert!(all.len() <= 1, "{all:?}");
    all.pop().map(|(_, e)| e).unwrap_or_default()
}

/// `(client, state)` pairs sorted by client.
fn states(p: &Presence, channel: &str, now_ms: u64) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = p
        .snapshot(channel, now_ms)
        .into_iter()
        .map(|e| (e.info.client.to_string(), e.state.map(|s| s.to_string())))
        .collect();
    v.sort();
    v
}

fn state_ev(i: &ClientInfo, s: &str) -> PresenceEvent {
    PresenceEvent::State(i.clone(), st(s))
}

#[test]
fn join_and_leave() {
    let mut p = Presence::new();
    let c = name("chat:1");
    let a = info("a", "u1");
    assert!(p.join(&c, a.clone(), true));
    assert!(!p.join(&c, a.clone(), true), "already present");
    assert!(p.join(&c, info("b", "u2"), true));
    assert_eq!(p.members("chat:1"), 2);
    assert_eq!(p.stats("chat:1"), (2, 2));
    assert_eq!(p.len(), 1);
    assert_eq!(
        events(&mut p),
        vec![
            PresenceEvent::Join(a.clone()),
            PresenceEvent::Join(info("b", "u2"))
        ]
    );
    assert_eq!(p.leave("chat:1", "a", true), Some(a.clone()));
    assert_eq!(p.leave("chat:1", "a", true), None);
    assert_eq!(p.leave("other", "a", true), None);
    assert_eq!(events(&mut p), vec![PresenceEvent::Leave(a)]);
    assert_eq!(states(&p, "chat:1", 0), vec![("b".into(), None)]);
    p.leave("chat:1", "b", false);
    assert!(p.take_events().is_empty());
    assert!(p.is_empty(), "an empty channel is freed");
    assert_eq!(p.stats("chat:1"), (0, 0));
}

#[test]
fn users_counted_once_per_user_and_anonymous_once() {
    let mut p = Presence::new();
    let c = name("room");
    for (client, user) in [
        ("a1", "u1"),
        ("a2", "u1"),
        ("n1", ""),
        ("n2", ""),
        ("b", "u2"),
    ] {
        p.join(&c, info(client, user), false);
    }
    assert_eq!(p.stats("room"), (5, 3));
    p.leave("room", "a1", false);
    p.leave("room", "n1", false);
    assert_eq!(p.stats("room"), (3, 3));
    p.leave("room", "a2", false);
    assert_eq!(p.stats("room"), (2, 2));
    p.leave("room", "n2", false);
    assert_eq!(p.stats("room"), (1, 1));
    assert!(p.join(&c, info("a3", "u1"), false));
    assert_eq!(p.stats("room"), (2, 2));
}

#[test]
fn set_and_clear_state() {
    let mut p = Presence::new();
    let c = name("doc");
    let a = info("a", "u");
    assert_eq!(
        p.set_state("doc", "a", st("typing"), None, 0),
        Err(NotPresent)
    );
    p.join(&c, a.clone(), false);
    assert_eq!(
        p.set_state("doc", "zz", st("typing"), None, 0),
        Err(NotPresent)
    );
    p.set_state("doc", "a", st("editing:intro"), None, 0)
        .unwrap();
    assert_eq!(
        states(&p, "doc", 1_000_000),
        vec![("a".into(), Some("editing:intro".into()))]
    );
    assert_eq!(events(&mut p), vec![state_ev(&a, "editing:intro")]);
    p.set_state("doc", "a", st(""), None, 5).unwrap();
    assert_eq!(states(&p, "doc", 5), vec![("a".into(), None)]);
    assert_eq!(events(&mut p), vec![state_ev(&a, "")]);
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn state_expires_exactly_at_ttl() {
    let mut p = Presence::new();
    let c = name("doc");
    let a = info("a", "u");
    p.join(&c, a.clone(), false);
    p.set_state("doc", "a", st("typing"), Some(500), 1000)
        .unwrap();
    assert_eq!(events(&mut p), vec![state_ev(&a, "typing")]);
    assert_eq!(p.next_deadline(), Some(1500));
    assert_eq!(
        states(&p, "doc", 1499),
        vec![("a".into(), Some("typing".into()))]
    );
    assert_eq!(
        states(&p, "doc", 1500),
        vec![("a".into(), None)],
        "filtered before expire runs"
    );
    assert_eq!(p.expire(1499), 0);
    assert!(p.take_events().is_empty());
    assert_eq!(p.expire(1500), 1);
    assert_eq!(events(&mut p), vec![state_ev(&a, "")]);
    assert_eq!(states(&p, "doc", 0), vec![("a".into(), None)]);
    assert_eq!(p.next_deadline(), None);
    assert_eq!(p.expire(10_000), 0);
}

#[test]
fn state_set_after_expiry_in_the_same_tick_wins() {
    let mut p = Presence::new();
    let c = name("doc");
    let a = info("a", "u");
    p.join(&c, a.clone(), false);
    p.set_state("doc", "a", st("typing"), Some(0), 7).unwrap();
    p.take_events();
    assert_eq!(p.expire(7), 1, "a zero TTL expires at the next expire");
    p.set_state("doc", "a", st("viewing"), None, 7).unwrap();
    assert_eq!(events(&mut p), vec![state_ev(&a, "viewing")]);
}

#[test]
fn leave_clears_state_without_a_state_event() {
    let mut p = Presence::new();
    let c = name("doc");
    let a = info("a", "u");
    p.join(&c, a.clone(), true);
    p.join(&c, info("b", "u"), true);
    p.take_events();
    p.set_state("doc", "a", st("typing"), Some(100), 0).unwrap();
    p.leave("doc", "a", true);
    assert_eq!(events(&mut p), vec![PresenceEvent::Leave(a.clone())]);
    assert_eq!(p.next_deadline(), None);
    assert_eq!(
        p.expire(1000),
        0,
        "the departed state does not expire later"
    );
    assert!(p.take_events().is_empty());
    p.join(&c, a.clone(), true);
    assert_eq!(
        states(&p, "doc", 0),
        vec![("a".into(), None), ("b".into(), None)]
    );
}

#[test]
fn silent_leave_clears_a_known_state() {
    let mut p = Presence::new();
    let c = name("doc");
    let a = info("a", "u");
    p.join(&c, a.clone(), false);
    p.join(&c, info("b", "u"), false);
    p.set_state("doc", "a", st("typing"), None, 0).unwrap();
    p.take_events();
    // Without join/leave pushes, observers only learn states: the leave
    // must tell them the state is gone.
    p.leave("doc", "a", false);
    assert_eq!(events(&mut p), vec![state_ev(&a, "")]);
    // No state, nothing to clear.
    p.leave("doc", "b", false);
    assert!(p.take_events().is_empty());
    assert!(p.is_empty());
    // Silent leave, silent re-join and leave again: the clear stays owed.
    p.join(&c, a.clone(), false);
    p.set_state("doc", "a", st("typing"), None, 0).unwrap();
    p.take_events();
    p.leave("doc", "a", false);
    p.join(&c, a.clone(), false);
    p.set_state("doc", "a", st("viewing"), None, 0).unwrap();
    p.leave("doc", "a", false);
    assert_eq!(events(&mut p), vec![state_ev(&a, "")]);
    // A re-join that sets a state replaces the owed clear.
    p.join(&c, a.clone(), false);
    p.set_state("doc", "a", st("typing"), None, 0).unwrap();
    p.take_events();
    p.leave("doc", "a", false);
    p.join(&c, a.clone(), false);
    p.set_state("doc", "a", st("viewing"), None, 0).unwrap();
    assert_eq!(events(&mut p), vec![state_ev(&a, "viewing")]);
}

#[test]
fn join_then_leave_in_a_tick_is_nothing() {
    let mut p = Presence::new();
    let c = name("room");
    p.join(&c, info("a", "u"), true);
    p.set_state("room", "a", st("typing"), Some(10), 0).unwrap();
    p.leave("room", "a", true);
    assert!(p.is_empty(), "freed at once: nothing to say");
    assert!(p.take_events().is_empty());
    assert_eq!(p.next_deadline(), None);
    // Also when the join was not emitted but the leave would be.
    p.join(&c, info("keep", "u"), true);
    p.take_events();
    p.join(&c, info("a", "u"), false);
    p.leave("room", "a", true);
    assert!(p.take_events().is_empty());
}

#[test]
fn leave_then_rejoin_in_a_tick_is_leave_then_join() {
    let mut p = Presence::new();
    let c = name("room");
    let old = info("a", "u");
    p.join(&c, old.clone(), true);
    p.set_state("room", "a", st("typing"), None, 0).unwrap();
    p.take_events();
    p.leave("room", "a", true);
    let new = ClientInfo {
        info: Some(Bytes::from_static(b"{\"tab\":2}")),
        ..old.clone()
    };
    p.join(&c, new.clone(), true);
    assert_eq!(
        events(&mut p),
        vec![
            PresenceEvent::Leave(old.clone()),
            PresenceEvent::Join(new.clone())
        ]
    );
    assert_eq!(states(&p, "room", 0), vec![("a".into(), None)]);
    // Leave, re-join, leave: only the first leave is left.
    p.leave("room", "a", true);
    p.join(&c, old.clone(), true);
    p.leave("room", "a", true);
    assert_eq!(events(&mut p), vec![PresenceEvent::Leave(new)]);
    assert!(p.is_empty());
}

#[test]
fn only_the_last_state_of_a_tick() {
    let mut p = Presence::new();
    let c = name("room");
    let a = info("a", "u");
    let b = info("b", "v");
    p.join(&c, a.clone(), true);
    p.join(&c, b.clone(), false);
    p.set_state("room", "a", st("typing"), None, 0).unwrap();
    p.set_state("room", "b", st("viewing"), None, 0).unwrap();
    p.set_state("room", "a", st(""), None, 0).unwrap();
    p.set_state("room", "a", st("editing:2"), Some(50), 0)
        .unwrap();
    assert_eq!(
        events(&mut p),
        vec![
            PresenceEvent::Join(a.clone()),
            state_ev(&a, "editing:2"),
            state_ev(&b, "viewing"),
        ],
        "join before state; clients in first-touch order; not-emitted join is absent"
    );
    // State then leave: only the leave.
    p.set_state("room", "a", st("typing"), None, 1).unwrap();
    p.leave("room", "a", true);
    assert_eq!(events(&mut p), vec![PresenceEvent::Leave(a)]);
}

#[test]
fn leave_without_emit_records_no_leave() {
    let mut p = Presence::new();
    let c = name("room");
    p.join(&c, info("a", "u"), true);
    p.join(&c, info("b", "u"), true);
    p.take_events();
    p.leave("room", "a", false);
    assert!(p.take_events().is_empty());
    assert_eq!(p.members("room"), 1);
}

#[test]
fn a_channel_with_events_pending_is_kept_until_taken() {
    let mut p = Presence::new();
    let c = name("room");
    let a = info("a", "u");
    p.join(&c, a.clone(), true);
    p.take_events();
    p.leave("room", "a", true);
    assert_eq!(p.len(), 1);
    assert_eq!(p.stats("room"), (0, 0));
    // Re-created while its leave is pending: one batch, in order.
    p.join(&c, a.clone(), true);
    p.leave("room", "a", true);
    assert_eq!(
        p.take_events(),
        vec![(name("room"), vec![PresenceEvent::Leave(a)])]
    );
    assert!(p.is_empty());
}

#[test]
fn remove_channel_drops_members_events_and_deadlines() {
    let mut p = Presence::new();
    let c = name("room");
    let d = name("other");
    p.join(&c, info("a", "u"), true);
    p.set_state("room", "a", st("typing"), Some(10), 0).unwrap();
    p.join(&d, info("b", "u"), false);
    p.set_state("other", "b", st("typing"), Some(20), 0)
        .unwrap();
    assert_eq!(p.next_deadline(), Some(10));
    assert!(p.remove_channel("room"));
    assert!(!p.remove_channel("room"));
    assert_eq!(p.next_deadline(), Some(20));
    let taken = p.take_events();
    assert_eq!(taken.len(), 1);
    assert_eq!(&*taken[0].0, "other");
    assert_eq!(p.len(), 1);
}

#[test]
fn next_deadline_after_overwrites_and_leaves() {
    let mut p = Presence::new();
    let c = name("doc");
    p.join(&c, info("a", "u"), false);
    p.join(&c, info("b", "u"), false);
    p.set_state("doc", "a", st("typing"), Some(100), 0).unwrap();
    assert_eq!(p.next_deadline(), Some(100));
    p.set_state("doc", "a", st("typing"), Some(500), 0).unwrap();
    assert_eq!(p.next_deadline(), Some(500), "overwritten expiry is gone");
    p.set_state("doc", "a", st("typing"), Some(50), 10).unwrap();
    assert_eq!(p.next_deadline(), Some(60), "shorter overwrite");
    p.set_state("doc", "a", st("viewing"), None, 20).unwrap();
    assert_eq!(p.next_deadline(), None, "no TTL, no deadline");
    p.set_state("doc", "a", st("typing"), Some(300), 20)
        .unwrap();
    p.set_state("doc", "b", st("typing"), Some(180), 20)
        .unwrap();
    assert_eq!(p.next_deadline(), Some(200));
    p.leave("doc", "b", false);
    assert_eq!(p.next_deadline(), Some(320));
    p.set_state("doc", "a", st(""), None, 30).unwrap();
    assert_eq!(p.next_deadline(), None);
    assert_eq!(p.expire(u64::MAX), 0);
}

#[test]
fn refreshing_a_ttl_state_keeps_the_heap_small() {
    let mut p = Presence::new();
    let c = name("doc");
    p.join(&c, info("a", "u"), false);
    p.join(&c, info("b", "u"), false);
    p.set_state("doc", "b", st("viewing"), Some(1_000_000), 0)
        .unwrap();
    for now in 0..10_000 {
        p.set_state("doc", "a", st("typing"), Some(5_000), now)
            .unwrap();
    }
    assert!(
        p.deadlines.len() <= 2 * COMPACT_MIN + 2,
        "{}",
        p.deadlines.len()
    );
    assert_eq!(p.next_deadline(), Some(9_999 + 5_000));
    assert_eq!(p.expire(14_999), 1);
    assert_eq!(p.next_deadline(), Some(1_000_000));
}

const CHANNELS: [&str; 3] = ["c0", "c1", "c2"];
const USERS: [&str; 4] = ["", "u1", "u2", "u3"];
const STATES: [&str; 4] = ["", "typing", "viewing", "editing:intro"];

#[derive(Clone, Copy, PartialEq)]
enum Emit {
    Always,
    Never,
    Random,
}

/// A member in the model: info and `(state, expires_at)`.
type ModelMember = (ClientInfo, Option<(Arc<str>, Option<u64>)>);

/// What an observer of the events believes: client → (info, state).
type View = BTreeMap<Arc<str>, (Option<ClientInfo>, Option<Arc<str>>)>;

/// Applies one tick's events of a channel to an observer's view, checking
/// they are coalesced (at most one of each kind per client, in order).
fn observe(view: &mut View, events: &[PresenceEvent], emit: Emit) {
    let mut seen: BTreeMap<Arc<str>, u8> = BTreeMap::new();
    for e in events {
        let (client, rank) = match e {
            PresenceEvent::Leave(i) => (&i.client, 1),
            PresenceEvent::Join(i) => (&i.client, 2),
            PresenceEvent::State(i, _) => (&i.client, 4),
        };
        let mask = seen.entry(client.clone()).or_default();
        assert!(*mask < rank, "not coalesced: {events:?}");
        *mask |= rank;
        if emit == Emit::Random {
            // Toggling emits leave observers inconsistent by design.
            continue;
        }
        match e {
            PresenceEvent::Join(i) => {
                assert!(emit != Emit::Never);
                assert!(
                    view.insert(i.client.clone(), (Some(i.clone()), None))
                        .is_none()
                );
            }
            PresenceEvent::Leave(i) => {
                assert!(emit != Emit::Never);
                let (was, _) = view.remove(&i.client).expect("left without joining");
                assert_eq!(was.as_ref(), Some(i));
            }
            PresenceEvent::State(i, s) if emit == Emit::Always => {
                let m = view.get_mut(&i.client).expect("state of a non-member");
                assert_eq!(m.0.as_ref(), Some(i));
                m.1 = (!s.is_empty()).then(|| s.clone());
            }
            PresenceEvent::State(i, s) => {
                if s.is_empty() {
                    view.remove(&i.client);
                } else {
                    view.insert(i.client.clone(), (None, Some(s.clone())));
                }
            }
        }
    }
}

/// 1,000 random operations in ticks, checked after every tick against a
/// model (snapshot, stats, next deadline, channels held) and, when emits
/// are consistent, against what an observer of the events believes.
fn churn(seed: u64, emit: Emit) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = Presence::new();
    let mut model: BTreeMap<&str, BTreeMap<Arc<str>, ModelMember>> = BTreeMap::new();
    let mut views: BTreeMap<&str, View> = BTreeMap::new();
    let mut now = 0u64;
    let mut ops = 0;
    while ops < 1000 {
        for _ in 0..rng.random_range(1..=8) {
            ops += 1;
            now += rng.random_range(0..3);
            let chan = CHANNELS[rng.random_range(0..CHANNELS.len())];
            let k = rng.random_range(0..10usize);
            let client: Arc<str> = format!("cl{k}").into();
            let members = model.entry(chan).or_default();
            let flag = match emit {
                Emit::Always => true,
                Emit::Never => false,
                Emit::Random => rng.random_bool(0.5),
            };
            match rng.random_range(0..10) {
                0..4 => {
                    let i = ClientInfo {
                        client: client.clone(),
                        user: USERS[k % USERS.len()].into(),
                        info: rng
                            .random_bool(0.5)
                            .then(|| Bytes::from(format!("{{\"n\":{ops}}}"))),
                    };
                    let fresh = !members.contains_key(&client);
                    assert_eq!(p.join(&name(chan), i.clone(), flag), fresh);
                    if fresh {
                        members.insert(client, (i, None));
                    }
                }
                4..6 => {
                    let want = members.remove(&client).map(|m| m.0);
                    assert_eq!(p.leave(chan, &client, flag), want);
                }
                _ => {
                    let s = st(STATES[rng.random_range(0..STATES.len())]);
                    let ttl = rng.random_bool(0.6).then(|| rng.random_range(0..30));
                    let got = p.set_state(chan, &client, s.clone(), ttl, now);
                    match members.get_mut(&client) {
                        Some(m) => {
                            assert_eq!(got, Ok(()));
                            m.1 = (!s.is_empty()).then(|| (s, ttl.map(|t| now + t)));
                        }
                        None => assert_eq!(got, Err(NotPresent)),
                    }
                }
            }
        }
        // Before expire runs, snapshots already hide expired states.
        for chan in CHANNELS {
            assert_eq!(states(&p, chan, now), model_states(&model, chan, now));
        }
        now += rng.random_range(0..10);
        let mut due = 0;
        for members in model.values_mut() {
            for m in members.values_mut() {
                if m.1
                    .as_ref()
                    .is_some_and(|(_, at)| at.is_some_and(|at| at <= now))
                {
                    m.1 = None;
                    due += 1;
                }
            }
        }
        assert_eq!(p.expire(now), due);
        let taken = p.take_events();
        for (chan, events) in &taken {
            assert!(!events.is_empty());
            let view = views.entry(CHANNELS.iter().find(|c| **c == &**chan).unwrap());
            observe(view.or_default(), events, emit);
        }
        model.retain(|_, members| !members.is_empty());
        check_against_model(&p, &model, &views, emit, now);
    }
}

fn model_states(
    model: &BTreeMap<&str, BTreeMap<Arc<str>, ModelMember>>,
    chan: &str,
    now: u64,
) -> Vec<(String, Option<String>)> {
    model.get(chan).map_or_else(Vec::new, |members| {
        members
            .iter()
            .map(|(c, (_, s))| {
                let s = s.as_ref().filter(|(_, at)| at.is_none_or(|at| now < at));
                (c.to_string(), s.map(|(s, _)| s.to_string()))
            })
            .collect()
    })
}

fn check_against_model(
    p: &Presence,
    model: &BTreeMap<&str, BTreeMap<Arc<str>, ModelMember>>,
    views: &BTreeMap<&str, View>,
    emit: Emit,
    now: u64,
) {
    assert_eq!(p.len(), model.len(), "only channels with members are held");
    let mut earliest = None::<u64>;
    for chan in CHANNELS {
        let want = model_states(model, chan, now);
        assert_eq!(states(p, chan, now), want);
        let members = model.get(chan);
        let users: std::collections::BTreeSet<_> = members
            .iter()
            .flat_map(|m| m.values().map(|(i, _)| i.user.clone()))
            .collect();
        assert_eq!(
            p.stats(chan),
            (members.map_or(0, BTreeMap::len), users.len())
        );
        let entries = p.snapshot(chan, now);
        for e in &entries {
            assert_eq!(
                Some(&e.info),
                members.and_then(|m| m.get(&e.info.client)).map(|m| &m.0)
            );
        }
        for (_, s) in members.into_iter().flat_map(BTreeMap::values) {
            if let Some(at) = s.as_ref().and_then(|(_, at)| *at) {
                assert!(at > now);
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        let empty = View::new();
        let view = views.get(chan).unwrap_or(&empty);
        match emit {
            Emit::Always => {
                let believed: BTreeMap<_, _> = view
                    .iter()
                    .map(|(c, (i, s))| (c.clone(), (i.clone(), s.clone())))
                    .collect();
                let actual: BTreeMap<_, _> = entries
                    .into_iter()
                    .map(|e| (e.info.client.clone(), (Some(e.info), e.state)))
                    .collect();
                assert_eq!(believed, actual);
            }
            Emit::Never => {
                let believed: Vec<_> = view
                    .iter()
                    .map(|(c, (_, s))| (c.to_string(), s.as_ref().map(|s| s.to_string())))
                    .collect();
                let actual: Vec<_> = want.into_iter().filter(|(_, s)| s.is_some()).collect();
                assert_eq!(believed, actual);
            }
            Emit::Random => {}
        }
    }
    assert_eq!(p.next_deadline(), earliest);
}

#[test]
fn churn_matches_model_and_observers_with_join_leave_on() {
    churn(0x5eed_0001, Emit::Always);
}

#[test]
fn churn_matches_model_and_observers_with_join_leave_off() {
    churn(0x5eed_0002, Emit::Never);
}

#[test]
fn churn_matches_model_with_join_leave_toggling() {
    churn(0x5eed_0003, Emit::Random);
}

#[test]
fn restored_members_come_back_silently_with_their_origin_and_expiring_state() {
    let mut p = Presence::new();
    let ch = name("feed:1");
    let origin = Origin {
        from: 3,
        conn: ConnRef {
            idx: 9,
            generation: 2,
        },
    };
    assert!(p.restore(
        &ch,
        info("c1", "ann"),
        origin,
        Some((st("typing"), Some(500)))
    ));
    assert!(p.restore(&ch, info("c2", "ann"), origin, None));
    assert!(
        !p.restore(&ch, info("c2", "bob"), origin, None),
        "already a member"
    );
    assert!(
        events(&mut p).is_empty(),
        "no join events for restored members"
    );
    assert_eq!(p.stats("feed:1"), (2, 1));
    let m = p.member("feed:1", "c1").expect("restored");
    assert_eq!(m.origin, Some(origin));
    assert_eq!(
        m.state.map(|(s, at)| (s.to_string(), at)),
        Some(("typing".into(), Some(500)))
    );
    assert_eq!(p.next_deadline(), Some(500));
    // The restored state expires like any other, with its event.
    assert_eq!(p.expire(500), 1);
    assert_eq!(
        events(&mut p),
        vec![PresenceEvent::State(info("c1", "ann"), st(""))]
    );
    // A member joined with an origin keeps it; one joined without has none.
    p.join_from(&ch, info("c3", "cy"), false, Some(origin));
    p.join(&ch, info("c4", "di"), false);
    assert_eq!(p.member("feed:1", "c3").unwrap().origin, Some(origin));
    assert_eq!(p.member("feed:1", "c4").unwrap().origin, None);
    let mut clients: Vec<String> = p.clients("feed:1").iter().map(|c| c.to_string()).collect();
    clients.sort();
    assert_eq!(clients, ["c1", "c2", "c3", "c4"]);
    assert!(p.member("feed:1", "nobody").is_none());
    assert!(p.clients("feed:2").is_empty());
}
