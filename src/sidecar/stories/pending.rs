//! The worker's coalescing buffers: per story, what Redis has not yet been
//! told. Pure (time is an input), so coalescing, merging a failed batch
//! back and the bounds are unit-tested without Redis.
//!
//! A story's buffer is a map from hash field to its newest value (or to
//! "delete"), a `clear` flag (delete the key first) and the newest
//! `active` flag. Many changes to one field collapse to the last; a
//! [`StoryChange::Clear`] empties the map and sets `clear`. Buffers are
//! kept oldest first; past [`Bounds`] the oldest are dropped (and the
//! caller counts them).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::codec::{encode_lock, encode_section, lock_field, section_field};
use crate::bridge::{LockRecord, StoryChange, StoryWrite};

/// Bytes counted per buffered field beyond its name and value (map entry,
/// allocation headers): keeps the byte bound honest for tiny fields.
const FIELD_OVERHEAD: usize = 48;
/// Bytes counted per buffered story beyond its channel name.
const STORY_OVERHEAD: usize = 128;

/// What may be buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Stories with changes waiting.
    pub max_stories: usize,
    /// Bytes of those changes (names, values and overheads).
    pub max_bytes: usize,
}

/// One story's changes not yet sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryBuffer {
    /// Position in the oldest-first order (smaller is older).
    seq: u64,
    /// Delete the key before setting `fields`.
    pub clear: bool,
    /// Field → newest value, `None` = delete the field.
    pub fields: HashMap<String, Option<Vec<u8>>>,
    /// Whether editors are present (decides the TTL).
    pub active: bool,
    bytes: usize,
}

impl StoryBuffer {
    fn new(seq: u64, channel: &str) -> Self {
        Self {
            seq,
            clear: false,
            fields: HashMap::new(),
            active: false,
            bytes: STORY_OVERHEAD + channel.len(),
        }
    }

    fn field_bytes(name: &str, value: &Option<Vec<u8>>) -> usize {
        FIELD_OVERHEAD + name.len() + value.as_ref().map_or(0, Vec::len)
    }

    fn set(&mut self, name: String, value: Option<Vec<u8>>) {
        self.bytes += Self::field_bytes(&name, &value);
        if let Some(old) = self.fields.get(&name) {
            self.bytes -= Self::field_bytes(&name, old);
        }
        self.fields.insert(name, value);
    }

    fn clear_all(&mut self) {
        let dropped: usize = self
            .fields
            .iter()
            .map(|(n, v)| Self::field_bytes(n, v))
            .sum();
        self.bytes -= dropped;
        self.fields.clear();
        self.clear = true;
    }

    /// Puts `older` (changes made before this buffer's) underneath: this
    /// buffer's fields win, `older`'s fill in, and `older`'s clear
    /// applies unless this buffer clears anyway.
    pub fn merge_under(&mut self, older: StoryBuffer) {
        self.seq = self.seq.min(older.seq);
        if self.clear {
            return;
        }
        self.clear = older.clear;
        for (name, value) in older.fields {
            if !self.fields.contains_key(&name) {
                self.set(name, value);
            }
        }
    }

    /// Bytes this buffer counts against [`Bounds::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What [`Pending::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes not buffered: a section whose data is not one JSON value,
    /// or a section, lock or unlock without a section id.
    pub invalid: u32,
    /// Stories dropped, oldest first, to stay within the bounds.
    pub evicted: u32,
}

/// Every story's buffer, oldest first.
#[derive(Debug)]
pub struct Pending {
    stories: HashMap<Arc<str>, StoryBuffer>,
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    bytes: usize,
    bounds: Bounds,
    /// When the oldest change still waiting arrived (the batch timer).
    since: Option<Instant>,
}

impl Pending {
    /// Empty buffers within `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            stories: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
            bounds,
            since: None,
        }
    }

    /// Stories with changes waiting.
    pub fn len(&self) -> usize {
        self.stories.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.stories.is_empty()
    }

    /// Bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest waiting change arrived.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Whether `channel` has changes waiting.
    pub fn contains(&self, channel: &str) -> bool {
        self.stories.contains_key(channel)
    }

    /// The buffered changes of `channel` (tests and inspection).
    pub fn get(&self, channel: &str) -> Option<&StoryBuffer> {
        self.stories.get(channel)
    }

    /// Adds a shard's write, received at `now`, to its story's buffer.
    pub fn apply(&mut self, write: StoryWrite, now: Instant) -> Applied {
        let mut applied = Applied::default();
        let StoryWrite {
            channel,
            changes,
            active,
        } = write;
        self.since.get_or_insert(now);
        let seq = self.next_seq;
        let buf = match self.stories.get_mut(&channel) {
            Some(b) => b,
            None => {
                self.next_seq += 1;
                self.order.insert(seq, channel.clone());
                let b = StoryBuffer::new(seq, &channel);
                self.bytes += b.bytes;
                self.stories.entry(channel).or_insert(b)
            }
        };
        let before = buf.bytes;
        for change in changes {
            match change {
                StoryChange::Section(s) if s.id.is_empty() => applied.invalid += 1,
                StoryChange::Lock(LockRecord { section, .. }) | StoryChange::Unlock { section }
                    if section.is_empty() =>
                {
                    applied.invalid += 1
                }
                StoryChange::Section(s) => match encode_section(&s) {
                    Ok(v) => buf.set(section_field(&s.id), Some(v)),
                    Err(_) => applied.invalid += 1,
                },
                StoryChange::Lock(l) => buf.set(lock_field(&l.section), Some(encode_lock(&l))),
                StoryChange::Unlock { section } => buf.set(lock_field(&section), None),
                StoryChange::Clear => buf.clear_all(),
            }
        }
        buf.active = active;
        self.bytes = self.bytes + buf.bytes - before;
        applied.evicted = self.enforce();
        applied
    }

    /// Takes up to `max` stories for a batch: first those in `first` that
    /// have changes waiting (loads need them flushed), then the oldest.
    pub fn take(&mut self, max: usize, first: &[Arc<str>]) -> Vec<(Arc<str>, StoryBuffer)> {
        let mut out = Vec::with_capacity(max.min(self.stories.len()));
        for channel in first {
            if out.len() == max {
                break;
            }
            if let Some(b) = self.remove(channel) {
                out.push((channel.clone(), b));
            }
        }
        while out.len() < max {
            let Some((_, channel)) = self.order.first_key_value() else {
                break;
            };
            let channel = channel.clone();
            let b = self.remove(&channel).expect("order and stories agree");
            out.push((channel, b));
        }
        if self.stories.is_empty() {
            self.since = None;
        }
        out
    }

    /// Puts a batch that failed back, under whatever arrived since, and
    /// returns how many stories were dropped to stay within the bounds
    /// (the oldest, so likely these). `since` is when the batch's oldest
    /// change arrived.
    pub fn restore(&mut self, batch: Vec<(Arc<str>, StoryBuffer)>, since: Instant) -> u32 {
        for (channel, older) in batch {
            match self.stories.get_mut(&channel) {
                Some(newer) => {
                    let before = newer.bytes;
                    self.order.remove(&newer.seq);
                    newer.merge_under(older);
                    self.order.insert(newer.seq, channel.clone());
                    self.bytes = self.bytes + newer.bytes - before;
                }
                None => {
                    self.bytes += older.bytes;
                    self.order.insert(older.seq, channel.clone());
                    self.stories.insert(channel, older);
                }
            }
        }
        if !self.stories.is_empty() {
            self.since = Some(self.since.map_or(since, |s| s.min(since)));
        }
        self.enforce()
    }

    /// Drops every buffer (shutdown); returns how many there were.
    pub fn drain_count(&mut self) -> usize {
        let n = self.stories.len();
        self.stories.clear();
        self.order.clear();
        self.bytes = 0;
        self.since = None;
        n
    }

    fn remove(&mut self, channel: &str) -> Option<StoryBuffer> {
        let b = self.stories.remove(channel)?;
        self.order.remove(&b.seq);
        self.bytes -= b.bytes;
        Some(b)
    }

    /// Drops the oldest stories until within the bounds.
    fn enforce(&mut self) -> u32 {
        let mut evicted = 0;
        while self.stories.len() > self.bounds.max_stories || self.bytes > self.bounds.max_bytes {
            let Some((_, channel)) = self.order.first_key_value() else {
                break;
            };
            let channel = channel.clone();
            self.remove(&channel);
            evicted += 1;
        }
        if self.stories.is_empty() {
            self.since = None;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::bridge::SectionRecord;

    const WIDE: Bounds = Bounds {
        max_stories: 1000,
        max_bytes: 1 << 30,
    };

    fn sec(id: &str, version: u64) -> StoryChange {
        StoryChange::Section(SectionRecord {
            id: id.into(),
            version,
            data: Bytes::from(format!("{{\"v\":{version}}}")),
            writer: "w".into(),
        })
    }

    fn lock(id: &str) -> StoryChange {
        StoryChange::Lock(LockRecord {
            section: id.into(),
            user: "u".into(),
            client: "c".into(),
            expires_ms: 1,
        })
    }

    fn write(channel: &str, changes: Vec<StoryChange>, active: bool) -> StoryWrite {
        StoryWrite {
            channel: channel.into(),
            changes,
            active,
        }
    }

    fn version_of(p: &Pending, channel: &str, id: &str) -> Option<u64> {
        let v = p.get(channel)?.fields.get(&section_field(id))?.as_ref()?;
        super::super::codec::decode_section(id, v).map(|s| s.version)
    }

    /// The byte count always equals the sum over the buffers.
    fn check_bytes(p: &Pending) {
        let sum: usize = p.stories.values().map(|b| b.bytes).sum();
        assert_eq!(p.bytes, sum);
        for (c, b) in &p.stories {
            let fields: usize = b
                .fields
                .iter()
                .map(|(n, v)| StoryBuffer::field_bytes(n, v))
                .sum();
            assert_eq!(b.bytes, STORY_OVERHEAD + c.len() + fields);
        }
        assert_eq!(p.order.len(), p.stories.len());
    }

    #[test]
    fn changes_to_one_field_collapse_to_the_last() {
        let now = Instant::now();
        let mut p = Pending::new(WIDE);
        for v in 1..=1000 {
            p.apply(write("s", vec![sec("a", v)], true), now);
        }
        p.apply(write("s", vec![lock("a"), sec("b", 1)], true), now);
        p.apply(
            write(
                "s",
                vec![StoryChange::Unlock {
                    section: "a".into(),
                }],
                false,
            ),
            now,
        );
        assert_eq!(p.len(), 1);
        let b = p.get("s").unwrap();
        assert_eq!(b.fields.len(), 3);
        assert_eq!(version_of(&p, "s", "a"), Some(1000));
        assert_eq!(b.fields[&lock_field("a")], None, "unlock = delete");
        assert!(!b.active, "the last write's flag");
        assert!(!b.clear);
        check_bytes(&p);
    }

    #[test]
    fn clear_drops_what_came_before() {
        let now = Instant::now();
        let mut p = Pending::new(WIDE);
        p.apply(write("s", vec![sec("a", 1), lock("a")], true), now);
        p.apply(write("s", vec![StoryChange::Clear, sec("b", 4)], true), now);
        let b = p.get("s").unwrap();
        assert!(b.clear);
        assert_eq!(b.fields.keys().collect::<Vec<_>>(), ["s:b"]);
        check_bytes(&p);
    }

    #[test]
    fn invalid_data_is_counted_not_buffered() {
        let mut p = Pending::new(WIDE);
        let bad = StoryChange::Section(SectionRecord {
            id: "x".into(),
            version: 1,
            data: Bytes::from_static(b"{oops"),
            writer: "w".into(),
        });
        let a = p.apply(write("s", vec![bad, sec("y", 1)], true), Instant::now());
        assert_eq!(a.invalid, 1);
        assert_eq!(p.get("s").unwrap().fields.len(), 1);
    }

    #[test]
    fn take_puts_load_channels_first_then_the_oldest() {
        let now = Instant::now();
        let mut p = Pending::new(WIDE);
        for c in ["a", "b", "c", "d"] {
            p.apply(write(c, vec![sec("x", 1)], true), now);
        }
        assert_eq!(p.since(), Some(now));
        let batch = p.take(2, &["c".into(), "zz".into()]);
        let names: Vec<&str> = batch.iter().map(|(c, _)| &**c).collect();
        assert_eq!(names, ["c", "a"]);
        let rest = p.take(10, &[]);
        let names: Vec<&str> = rest.iter().map(|(c, _)| &**c).collect();
        assert_eq!(names, ["b", "d"]);
        assert!(p.is_empty());
        assert_eq!(p.since(), None);
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn a_failed_batch_goes_back_under_newer_changes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut p = Pending::new(WIDE);
        p.apply(write("s", vec![sec("a", 1), sec("b", 1)], true), t0);
        p.apply(write("t", vec![StoryChange::Clear, sec("z", 1)], true), t0);
        let batch = p.take(10, &[]);
        assert!(p.is_empty());
        // Newer changes arrive while the batch is out.
        p.apply(write("s", vec![sec("a", 2)], false), t1);
        p.apply(write("u", vec![sec("q", 1)], true), t1);
        assert_eq!(p.restore(batch, t0), 0);
        assert_eq!(p.since(), Some(t0));
        assert_eq!(version_of(&p, "s", "a"), Some(2), "the newer change wins");
        assert_eq!(version_of(&p, "s", "b"), Some(1), "the older fills in");
        assert!(!p.get("s").unwrap().active, "the newer flag");
        assert!(p.get("t").unwrap().clear, "a restored clear is kept");
        // The restored stories are the oldest again.
        let names: Vec<Arc<str>> = p.take(10, &[]).into_iter().map(|(c, _)| c).collect();
        assert_eq!(
            names.iter().map(|c| &**c).collect::<Vec<_>>(),
            ["s", "t", "u"]
        );
    }

    #[test]
    fn merge_under_a_clear_keeps_only_the_newer() {
        let now = Instant::now();
        let mut p = Pending::new(WIDE);
        p.apply(write("s", vec![sec("a", 1), sec("b", 1)], true), now);
        let batch = p.take(1, &[]);
        p.apply(write("s", vec![StoryChange::Clear, sec("c", 1)], true), now);
        p.restore(batch, now);
        let b = p.get("s").unwrap();
        assert!(b.clear);
        assert_eq!(b.fields.keys().collect::<Vec<_>>(), ["s:c"]);
        check_bytes(&p);
    }

    #[test]
    fn past_the_story_bound_the_oldest_go() {
        let now = Instant::now();
        let mut p = Pending::new(Bounds {
            max_stories: 3,
            max_bytes: 1 << 30,
        });
        let mut evicted = 0;
        for i in 0..10 {
            evicted += p
                .apply(write(&format!("c{i}"), vec![sec("x", 1)], true), now)
                .evicted;
        }
        assert_eq!(evicted, 7);
        assert_eq!(p.len(), 3);
        for i in 7..10 {
            assert!(p.contains(&format!("c{i}")), "c{i} kept");
        }
        // Writing to a buffered story does not move it in the order.
        p.apply(write("c7", vec![sec("y", 1)], true), now);
        assert_eq!(p.apply(write("new", vec![], true), now).evicted, 1);
        assert!(!p.contains("c7"));
        check_bytes(&p);
    }

    #[test]
    fn past_the_byte_bound_the_oldest_go() {
        let now = Instant::now();
        let mut p = Pending::new(Bounds {
            max_stories: 1000,
            max_bytes: 4096,
        });
        let big = |c: &str| {
            write(
                c,
                vec![StoryChange::Section(SectionRecord {
                    id: "x".into(),
                    version: 1,
                    data: Bytes::from(format!("\"{}\"", "a".repeat(1500))),
                    writer: "w".into(),
                })],
                true,
            )
        };
        let mut evicted = 0;
        for i in 0..5 {
            evicted += p.apply(big(&format!("c{i}")), now).evicted;
            assert!(p.bytes() <= 4096);
            check_bytes(&p);
        }
        assert_eq!(evicted, 3);
        assert!(p.contains("c3") && p.contains("c4"));
        // One story larger than the whole bound cannot be kept.
        let huge = write(
            "huge",
            vec![StoryChange::Section(SectionRecord {
                id: "x".into(),
                version: 1,
                data: Bytes::from(format!("\"{}\"", "a".repeat(5000))),
                writer: "w".into(),
            })],
            true,
        );
        assert_eq!(p.apply(huge, now).evicted, 3);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
    }

    /// Seeded random operations: the byte count and the order stay
    /// consistent, the bounds hold after every step, and nothing panics.
    #[test]
    fn random_operations_keep_the_books() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(99);
        let bounds = Bounds {
            max_stories: 8,
            max_bytes: 6000,
        };
        let mut p = Pending::new(bounds);
        let now = Instant::now();
        let mut out: Vec<Vec<(Arc<str>, StoryBuffer)>> = Vec::new();
        for _ in 0..5000 {
            match rng.random_range(0..10) {
                0..=5 => {
                    let c = format!("c{}", rng.random_range(0..12));
                    let changes = (0..rng.random_range(0..4))
                        .map(|_| {
                            let id = format!("s{}", rng.random_range(0..5));
                            match rng.random_range(0..8) {
                                0 => StoryChange::Clear,
                                1 => lock(&id),
                                2 => StoryChange::Unlock { section: id.into() },
                                _ => sec(&id, rng.random_range(0..100_000)),
                            }
                        })
                        .collect();
                    p.apply(write(&c, changes, rng.random()), now);
                }
                6 | 7 => out.push(p.take(rng.random_range(1..4), &["c1".into()])),
                _ => {
                    if let Some(b) = out.pop() {
                        p.restore(b, now);
                    }
                }
            }
            assert!(p.len() <= bounds.max_stories && p.bytes() <= bounds.max_bytes);
            assert_eq!(p.is_empty(), p.since().is_none());
            check_bytes(&p);
        }
    }
}
