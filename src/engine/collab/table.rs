//! A shard's stories: the [`Story`] of each collaborative channel this
//! shard is home for, at most `max_stories` of them.
//!
//! Stories are reached through a [`StoryMut`] guard. When the guard drops,
//! the table re-reads the story's next deadline (a lock lapsing, or the
//! moment it has been empty for `idle_evict`) and its counts, so
//! [`Stories::tick`] visits only the stories that are due (a `BTreeSet`
//! of `(deadline, channel)`), and the totals are exact without a scan.
//!
//! Memory: a story with no members for `idle_evict` is evicted at the next
//! tick (its state is in Redis, written behind by the caller, and comes
//! back with the next join). A new story beyond `max_stories` evicts the
//! story that has been empty longest, however briefly; with none empty it
//! is refused ([`CollabError::TooManyStories`]).

use std::collections::{BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::{CollabConfig, CollabError, CollabEvent, Story};

#[derive(Debug)]
struct Slot {
    channel: Arc<str>,
    story: Story,
    /// The deadline the story is listed under in `Index::due`.
    due: Option<u64>,
    /// The time the story is listed under in `Index::empty`.
    empty_since: Option<u64>,
}

/// The indexes and totals, apart from the map so a guard can hold both.
#[derive(Debug, Default)]
struct Index {
    idle_ms: u64,
    due: BTreeSet<(u64, Arc<str>)>,
    empty: BTreeSet<(u64, Arc<str>)>,
    members: usize,
    locks: usize,
    bytes: usize,
    evictions: u64,
    refused: u64,
}

/// A story's counts, to adjust the totals by the change.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    members: usize,
    locks: usize,
    bytes: usize,
}

impl Counts {
    fn of(story: &Story) -> Self {
        Self {
            members: story.member_count(),
            locks: story.lock_count(),
            bytes: story.bytes(),
        }
    }
}

impl Index {
    /// Brings the indexes and totals up to date with `slot`'s story, whose
    /// counts were `before`.
    fn refresh(&mut self, slot: &mut Slot, before: Counts) {
        let after = Counts::of(&slot.story);
        self.members = self.members - before.members + after.members;
        self.locks = self.locks - before.locks + after.locks;
        self.bytes = self.bytes - before.bytes + after.bytes;
        let story = &slot.story;
        let idle_at = story.empty_since().map(|t| t.saturating_add(self.idle_ms));
        let due = match (story.next_deadline(), idle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if due != slot.due {
            if let Some(old) = slot.due {
                self.due.remove(&(old, slot.channel.clone()));
            }
            if let Some(new) = due {
                self.due.insert((new, slot.channel.clone()));
            }
            slot.due = due;
        }
        let empty = story.empty_since();
        if empty != slot.empty_since {
            if let Some(old) = slot.empty_since {
                self.empty.remove(&(old, slot.channel.clone()));
            }
            if let Some(new) = empty {
                self.empty.insert((new, slot.channel.clone()));
            }
            slot.empty_since = empty;
        }
    }

    /// Forgets `slot` entirely (it is leaving the table).
    fn forget(&mut self, slot: &Slot) {
        let c = Counts::of(&slot.story);
        self.members -= c.members;
        self.locks -= c.locks;
        self.bytes -= c.bytes;
        if let Some(old) = slot.due {
            self.due.remove(&(old, slot.channel.clone()));
        }
        if let Some(old) = slot.empty_since {
            self.empty.remove(&(old, slot.channel.clone()));
        }
    }
}

/// A story borrowed from the table; dereferences to [`Story`]. Dropping
/// it updates the table's deadline index and totals.
#[derive(Debug)]
pub struct StoryMut<'a> {
    slot: &'a mut Slot,
    index: &'a mut Index,
    before: Counts,
}

impl<'a> StoryMut<'a> {
    fn new(slot: &'a mut Slot, index: &'a mut Index) -> Self {
        let before = Counts::of(&slot.story);
        Self {
            slot,
            index,
            before,
        }
    }

    /// The story's channel.
    pub fn channel(&self) -> &Arc<str> {
        &self.slot.channel
    }
}

impl Deref for StoryMut<'_> {
    type Target = Story;

    fn deref(&self) -> &Story {
        &self.slot.story
    }
}

impl DerefMut for StoryMut<'_> {
    fn deref_mut(&mut self) -> &mut Story {
        &mut self.slot.story
    }
}

impl Drop for StoryMut<'_> {
    fn drop(&mut self) {
        self.index.refresh(self.slot, self.before);
    }
}

/// A shard's stories, by channel.
#[derive(Debug)]
pub struct Stories {
    cfg: CollabConfig,
    slots: HashMap<Arc<str>, Slot>,
    index: Index,
    /// Reused buffer for a story's tick events.
    scratch: Vec<CollabEvent>,
    /// Reused buffer for the channels due in a tick.
    due_scratch: Vec<Arc<str>>,
    /// Stories evicted since the last [`Stories::take_evicted`].
    evicted: Vec<Arc<str>>,
}

impl Stories {
    /// An empty table; new stories get `cfg`.
    pub fn new(cfg: CollabConfig) -> Self {
        Self {
            cfg,
            slots: HashMap::new(),
            index: Index {
                idle_ms: cfg.idle_evict_ms(),
                ..Index::default()
            },
            scratch: Vec::new(),
            due_scratch: Vec::new(),
            evicted: Vec::new(),
        }
    }

    /// The configuration new stories get.
    pub fn config(&self) -> &CollabConfig {
        &self.cfg
    }

    /// The story of `channel`, if it is in memory.
    pub fn get(&self, channel: &str) -> Option<&Story> {
        self.slots.get(channel).map(|s| &s.story)
    }

    /// The story of `channel` to change, if it is in memory.
    pub fn get_mut(&mut self, channel: &str) -> Option<StoryMut<'_>> {
        let slot = self.slots.get_mut(channel)?;
        Some(StoryMut::new(slot, &mut self.index))
    }

    /// The story of `channel`, created empty at `now_ms` if it is not in
    /// memory (the caller loads a stored one with [`Stories::insert`]).
    pub fn open(&mut self, channel: &Arc<str>, now_ms: u64) -> Result<StoryMut<'_>, CollabError> {
        if !self.slots.contains_key(&**channel) {
            let story = Story::new(self.cfg, now_ms);
            self.admit(channel.clone(), story)?;
        }
        self.get_mut(channel).ok_or(CollabError::TooManyStories)
    }

    /// Puts `story` (e.g. imported from Redis) in the table as `channel`'s,
    /// replacing any story it had.
    pub fn insert(&mut self, channel: Arc<str>, story: Story) -> Result<StoryMut<'_>, CollabError> {
        self.remove(&channel);
        self.admit(channel.clone(), story)?;
        self.get_mut(&channel).ok_or(CollabError::TooManyStories)
    }

    /// Takes `channel`'s story out of the table.
    pub fn remove(&mut self, channel: &str) -> Option<Story> {
        let slot = self.slots.remove(channel)?;
        self.index.forget(&slot);
        Some(slot.story)
    }

    /// Releases what lapsed by `now_ms` in the stories that are due,
    /// appending their events with their channel to `out`, and evicts the
    /// stories idle for `idle_evict`. Returns how many were evicted.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<(Arc<str>, CollabEvent)>) -> usize {
        // Take the due stories out of the index first: each is listed again
        // (later) when its guard drops, so the loop cannot revisit one.
        let mut due = std::mem::take(&mut self.due_scratch);
        while let Some((at, _)) = self.index.due.first() {
            if *at > now_ms {
                break;
            }
            let (_, channel) = self.index.due.pop_first().expect("first checked");
            if let Some(slot) = self.slots.get_mut(&channel) {
                slot.due = None;
            }
            due.push(channel);
        }
        let mut evicted = 0;
        for channel in due.drain(..) {
            let Some(slot) = self.slots.get_mut(&channel) else {
                continue;
            };
            if slot.story.is_idle(now_ms) {
                self.remove(&channel);
                self.index.evictions += 1;
                self.evicted.push(channel.clone());
                evicted += 1;
                continue;
            }
            let mut story = StoryMut::new(slot, &mut self.index);
            story.tick(now_ms, &mut self.scratch);
            drop(story);
            out.extend(self.scratch.drain(..).map(|e| (channel.clone(), e)));
        }
        self.due_scratch = due;
        evicted
    }

    /// The channels whose stories were evicted (idle, or to make room)
    /// since the last call, oldest first.
    pub fn take_evicted(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.evicted)
    }

    /// When [`Stories::tick`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.index.due.first().map(|(at, _)| *at)
    }

    /// Stories in memory.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no story is in memory.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Members of all stories.
    pub fn members(&self) -> usize {
        self.index.members
    }

    /// Locks held in all stories (including those in grace).
    pub fn locks(&self) -> usize {
        self.index.locks
    }

    /// Bytes of section data in all stories.
    pub fn bytes(&self) -> usize {
        self.index.bytes
    }

    /// Stories evicted so far (idle, or to make room).
    pub fn evictions(&self) -> u64 {
        self.index.evictions
    }

    /// New stories refused so far for `max_stories`.
    pub fn refused(&self) -> u64 {
        self.index.refused
    }

    /// Makes room for one more story if needed and adds `story`.
    fn admit(&mut self, channel: Arc<str>, story: Story) -> Result<(), CollabError> {
        if self.slots.len() >= self.cfg.max_stories {
            let Some((_, victim)) = self.index.empty.first().cloned() else {
                self.index.refused += 1;
                return Err(CollabError::TooManyStories);
            };
            self.remove(&victim);
            self.index.evictions += 1;
            self.evicted.push(victim);
        }
        let mut slot = Slot {
            channel: channel.clone(),
            story,
            due: None,
            empty_since: None,
        };
        self.index.refresh(&mut slot, Counts::default());
        self.slots.insert(channel, slot);
        Ok(())
    }
}
