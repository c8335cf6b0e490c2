//! Live story state written behind to Redis, and read back on demand, by
//! a sidecar thread (`wsedge-stories`): never on a shard's path.
//!
//! A story (a channel of a `collaboration = true` namespace) lives at its
//! channel's home shard. After each accepted change the home calls
//! [`StoryClient::write`] with the change (a [`StoryWrite`] delta); when a
//! story it does not hold is joined it calls [`StoryClient::load`] and
//! later pops a [`ShardMsg::StoryLoaded`](crate::bridge::ShardMsg::StoryLoaded)
//! (through a [`StorySink`], which tests replace). Neither call blocks.
//!
//! # Redis layout
//!
//! One hash per story, `wsedge:story:<channel>` ([`codec`]):
//! - `s:<section>` = `{"v":<version>,"w":"<writer user>","d":<data>}`
//!   (`d` is the section's JSON value itself);
//! - `l:<section>` = `{"u":"<user>","c":"<client>","e":<expires, Unix ms>}`.
//!
//! A section change is `HSET s:<id>`, a lock `HSET l:<id>`, an unlock
//! `HDEL l:<id>`, a clear `DEL`. While a write says `active` (editors
//! present) the key has no TTL (`PERSIST`); a write that says not active
//! sets `PEXPIRE story_ttl`. A load is `HGETALL` + `PTTL`: a field that
//! cannot be read is skipped and counted, a field with another prefix
//! ignored; the loaded story is `active` if the key had no TTL.
//!
//! # The worker
//!
//! - Requests wait in one bounded queue (writes and loads in order, so a
//!   load sees the writes a shard made before it). A full queue drops the
//!   write at once, counted; the shard never waits.
//! - The worker drains the queue into per-story coalescing buffers
//!   ([`pending`]): many changes to one section collapse to the last.
//!   Buffers are flushed in batches of up to [`StoryOptions::batch_stories`]
//!   stories, [`StoryOptions::flush_interval`] after the oldest change (or
//!   at once when a batch is full or a load waits): one pipelined
//!   `MULTI`…`EXEC` per batch, one round trip, one batch at a time.
//! - A batch that fails (Redis down, no answer within
//!   [`StoryOptions::timeout`]) goes back under newer changes and is tried
//!   again after a backoff ([`StoryOptions::retry_min`] doubling to
//!   [`StoryOptions::retry_max`]); `ConnectionManager` reconnects by
//!   itself. What waits is bounded ([`StoryOptions::max_pending_stories`],
//!   [`StoryOptions::max_pending_bytes`]); past that the oldest story's
//!   changes are dropped, counted.
//! - A load is sent in the next batch, after that story's buffered
//!   changes (read-your-writes), ahead of other stories' writes. It is
//!   answered within [`StoryOptions::timeout`], with
//!   [`StoryStoreError::Unavailable`] if Redis did not answer by then, and
//!   at once while Redis is known to be down (backoff).
//!
//! # Convergence after a loss
//!
//! Any drop (a full queue, an overflowing buffer, a story Redis refused)
//! advances a node-wide *loss epoch*. Each story session keeps a
//! [`StorySync`] (the epoch of its last whole write); [`StoryClient::write`]
//! compares it with the epoch and, when anything was lost since, sends the
//! whole story ([`StoryWrite::whole`]: `DEL` then every field, atomically)
//! instead of the delta. So Redis converges on the next change of every
//! story once nothing is dropped any more. A story that never changes
//! again after a loss stays behind until the home writes it again:
//! sessions should send one last write (no changes, `active: false`) when
//! they are evicted, and may check [`StoryClient::is_behind`] on a slow
//! timer.
//!
//! Layout: [`codec`] (key and field JSON), [`pending`] (coalescing
//! buffers), [`worker`] (the thread's loop), [`metrics`].

pub mod codec;
pub mod metrics;
pub mod pending;
mod worker;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

pub use super::tickets::InboxSink;
use crate::bridge::ShardMsg;
pub use crate::bridge::{
    LockRecord, SectionRecord, StoryChange, StoryLoad, StoryLoadAnswer, StoryRecord,
    StoryStoreError, StoryWrite,
};
pub use metrics::{StoryDrop, StoryMetricParts, StoryMetrics, StoryWriteError};

/// Bounds and timings of the story worker. Every default states its
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryOptions {
    /// How long a story's key lives after the write that says no editor
    /// is present (`[collab] story_ttl`). Default 1 h: a story reopened
    /// within the hour reloads at once; an abandoned one leaves Redis.
    pub story_ttl: Duration,
    /// Requests (writes and loads) waiting for the worker. Default
    /// 16,384: the worker only moves them into its buffers, so the queue
    /// fills only if the thread is starved; about 1.5 MB at most.
    pub queue_capacity: usize,
    /// Stories per batch (one `MULTI`…`EXEC` round trip). Default 256:
    /// a few hundred small `HSET`s keep Redis busy well under a
    /// millisecond, so other clients are not held up.
    pub batch_stories: usize,
    /// Longest a change waits for its batch. Default 10 ms: well under
    /// what an editor notices, long enough to coalesce bursts of typing.
    pub flush_interval: Duration,
    /// Stories whose changes may wait for Redis. Default 10,000: the
    /// stories of a busy node through an outage of any length.
    pub max_pending_stories: usize,
    /// Bytes those changes may take. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// Longest wait for a batch's answer, and for a load's. Default 2 s:
    /// well above a healthy round trip, short enough that a join waiting
    /// on a load answers promptly.
    pub timeout: Duration,
    /// Loads waiting for their batch. Default 1,024: beyond it a load is
    /// refused at once ([`StoryStoreError::Busy`]).
    pub max_waiting_loads: usize,
    /// Most hash fields a loaded story may have; a larger one is
    /// [`StoryStoreError::Malformed`]. Default 10,000: far above any
    /// story this node writes (the engine bounds sections per story).
    pub max_load_fields: usize,
    /// First pause after a failed batch. Default 50 ms.
    pub retry_min: Duration,
    /// Longest pause between attempts while Redis is down. Default 1 s:
    /// state arrives within about a second of Redis coming back.
    pub retry_max: Duration,
}

impl Default for StoryOptions {
    fn default() -> Self {
        Self {
            story_ttl: Duration::from_secs(3600),
            queue_capacity: 16_384,
            batch_stories: 256,
            flush_interval: Duration::from_millis(10),
            max_pending_stories: 10_000,
            max_pending_bytes: 64 << 20,
            timeout: Duration::from_secs(2),
            max_waiting_loads: 1024,
            max_load_fields: 10_000,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
        }
    }
}

impl StoryOptions {
    fn validate(&self) -> Result<(), String> {
        if self.story_ttl < Duration::from_millis(1) {
            return Err("story_ttl must be at least 1ms".into());
        }
        for (name, v) in [
            ("queue_capacity", self.queue_capacity),
            ("batch_stories", self.batch_stories),
            ("max_pending_stories", self.max_pending_stories),
            ("max_pending_bytes", self.max_pending_bytes),
            ("max_waiting_loads", self.max_waiting_loads),
            ("max_load_fields", self.max_load_fields),
        ] {
            if v == 0 {
                return Err(format!("story worker {name} must be at least 1"));
            }
        }
        if self.timeout.is_zero() || self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err(
                "story worker timeout and retry_min must be above 0, retry_max ≥ retry_min".into(),
            );
        }
        Ok(())
    }
}

/// What travels on the queue.
#[derive(Debug)]
enum Request {
    Write(StoryWrite),
    Load(StoryLoad),
}

/// What a story session keeps for persistence: the loss epoch of its last
/// whole write. 8 bytes, `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorySync {
    epoch: u64,
}

impl StorySync {
    /// A story Redis may not hold as the session does (new from a failed
    /// load, or just created while Redis may hold an older one): the next
    /// write rewrites it whole.
    pub const DIRTY: StorySync = StorySync { epoch: u64::MAX };
}

/// What [`StoryClient::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoryWriteOutcome {
    /// The delta was queued.
    Queued,
    /// The whole story was queued (something was lost since its last
    /// whole write, or the delta was whole).
    QueuedWhole,
    /// Nothing was queued (counted): [`StoryDrop::QueueFull`] (the next
    /// write of every story will be whole) or [`StoryDrop::Stopped`].
    Dropped(StoryDrop),
}

/// A load [`StoryClient::load`] refused at once: the caller answers it
/// itself ([`StoryLoadRefused::into_answer`]); it has been counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryLoadRefused {
    /// The request, given back.
    pub load: StoryLoad,
    /// [`StoryStoreError::Busy`] (queue full) or
    /// [`StoryStoreError::Unavailable`] (the worker has stopped).
    pub error: StoryStoreError,
}

impl StoryLoadRefused {
    /// The answer the waiting session gets.
    pub fn into_answer(self) -> StoryLoadAnswer {
        StoryLoadAnswer {
            request: self.load.request,
            channel: self.load.channel,
            result: Err(self.error),
        }
    }
}

/// Where load answers go: each shard's inbox in the node ([`InboxSink`]),
/// a closure in tests.
pub trait StorySink: Send + Sync + 'static {
    /// Queues `answer` for `shard` without blocking; gives it back when it
    /// cannot be queued now.
    fn deliver(
        &self,
        shard: usize,
        answer: Box<StoryLoadAnswer>,
    ) -> Result<(), Box<StoryLoadAnswer>>;
}

impl<F> StorySink for F
where
    F: Fn(usize, Box<StoryLoadAnswer>) -> Result<(), Box<StoryLoadAnswer>> + Send + Sync + 'static,
{
    fn deliver(
        &self,
        shard: usize,
        answer: Box<StoryLoadAnswer>,
    ) -> Result<(), Box<StoryLoadAnswer>> {
        self(shard, answer)
    }
}

impl StorySink for InboxSink {
    fn deliver(
        &self,
        shard: usize,
        answer: Box<StoryLoadAnswer>,
    ) -> Result<(), Box<StoryLoadAnswer>> {
        let Some(inbox) = self.0.get(shard) else {
            return Err(answer);
        };
        match inbox.push(ShardMsg::StoryLoaded(answer)) {
            Ok(()) => Ok(()),
            Err(ShardMsg::StoryLoaded(answer)) => Err(answer),
            Err(_) => unreachable!("Inbox::push gives back the message it was given"),
        }
    }
}

/// A shard's handle on the worker: cheap to clone, never blocks.
#[derive(Clone)]
pub struct StoryClient {
    tx: mpsc::Sender<Request>,
    epoch: Arc<AtomicU64>,
    metrics: StoryMetrics,
}

impl StoryClient {
    /// A [`StorySync`] for a story Redis holds as the session does (just
    /// loaded, or known absent): deltas suffice until the next loss.
    pub fn synced(&self) -> StorySync {
        StorySync {
            epoch: self.loss_epoch(),
        }
    }

    /// The node-wide loss epoch: advances on every drop.
    pub fn loss_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the story's next write will be whole (something was lost
    /// since its last whole write).
    pub fn is_behind(&self, sync: &StorySync) -> bool {
        sync.epoch != self.loss_epoch()
    }

    /// Queues a story's changes. Sends `delta` when nothing was lost since
    /// this story's last whole write, else the whole story (`whole()`,
    /// called only then). Never blocks: a full queue drops the write,
    /// counts it and advances the loss epoch, so the story's next write is
    /// whole.
    pub fn write(
        &self,
        sync: &mut StorySync,
        delta: StoryWrite,
        whole: impl FnOnce() -> StoryRecord,
    ) -> StoryWriteOutcome {
        let epoch = self.loss_epoch();
        let write = if sync.epoch == epoch || delta.is_whole() {
            delta
        } else {
            StoryWrite::whole(whole())
        };
        let is_whole = write.is_whole();
        match self.tx.try_send(Request::Write(write)) {
            Ok(()) if is_whole => {
                sync.epoch = epoch;
                StoryWriteOutcome::QueuedWhole
            }
            Ok(()) => StoryWriteOutcome::Queued,
            Err(TrySendError::Full(_)) => {
                self.metrics.count_drop(StoryDrop::QueueFull, 1);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                StoryWriteOutcome::Dropped(StoryDrop::QueueFull)
            }
            Err(TrySendError::Closed(_)) => {
                self.metrics.count_drop(StoryDrop::Stopped, 1);
                StoryWriteOutcome::Dropped(StoryDrop::Stopped)
            }
        }
    }

    /// Queues a load; its answer arrives later through the sink. Refuses
    /// at once, and counts, a full queue (`Busy`) or a stopped worker
    /// (`Unavailable`).
    pub fn load(&self, load: StoryLoad) -> Result<(), StoryLoadRefused> {
        self.tx.try_send(Request::Load(load)).map_err(|e| {
            let (load, error) = match e {
                TrySendError::Full(Request::Load(l)) => (l, StoryStoreError::Busy),
                TrySendError::Closed(Request::Load(l)) => (l, StoryStoreError::Unavailable),
                _ => unreachable!("try_send gives back the request it was given"),
            };
            self.metrics.count_load(Err(error));
            StoryLoadRefused { load, error }
        })
    }
}

/// The running worker thread. Dropping it stops the worker (without
/// waiting); [`StoryWorker::shutdown`] stops it and waits.
pub struct StoryWorker {
    client: StoryClient,
    worker: super::WorkerThread,
}

impl StoryWorker {
    /// A handle for a shard.
    pub fn client(&self) -> StoryClient {
        self.client.clone()
    }

    /// Stops taking requests, answers waiting loads with `Unavailable`,
    /// flushes what is buffered for at most [`StoryOptions::timeout`]
    /// (counting the rest as [`StoryDrop::Stopped`]) and joins the thread.
    pub fn shutdown(self) {
        self.worker.shutdown();
    }
}

/// Starts the story worker thread (`wsedge-stories`) on a current-thread
/// tokio runtime, connected lazily to `redis_url`
/// (`redis://[:password@]host:port[/db]`): a Redis that is down at start
/// only delays the writes and fails the loads until it is up.
pub fn spawn_story_worker(
    redis_url: &str,
    opts: StoryOptions,
    sink: impl StorySink,
    metrics: StoryMetrics,
) -> io::Result<StoryWorker> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    opts.validate().map_err(invalid)?;
    let client = redis::Client::open(redis_url)
        .map_err(|e| invalid(format!("redis_url is not a Redis URL: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let manager = super::redis_manager(&runtime, client, opts.timeout)?;
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let epoch = Arc::new(AtomicU64::new(0));
    let worker = worker::Worker::new(
        manager,
        rx,
        opts,
        Arc::new(sink),
        metrics.clone(),
        epoch.clone(),
    );
    let worker =
        super::WorkerThread::spawn("wsedge-stories", runtime, move |stop| worker.run(stop))?;
    Ok(StoryWorker {
        client: StoryClient { tx, epoch, metrics },
        worker,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::bridge::Inbox;

    fn record(channel: &str, version: u64) -> StoryRecord {
        StoryRecord {
            channel: channel.into(),
            sections: vec![SectionRecord {
                id: "a".into(),
                version,
                data: Bytes::from_static(b"{}"),
                writer: "w".into(),
            }],
            locks: vec![],
            active: true,
        }
    }

    fn delta(channel: &str, version: u64) -> StoryWrite {
        StoryWrite {
            channel: channel.into(),
            changes: vec![StoryChange::Section(
                record(channel, version).sections[0].clone(),
            )],
            active: true,
        }
    }

    /// A client over a queue nobody drains: deterministic "full".
    fn undrained(capacity: usize) -> (StoryClient, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(capacity);
        let client = StoryClient {
            tx,
            epoch: Arc::new(AtomicU64::new(0)),
            metrics: StoryMetrics::default(),
        };
        (client, rx)
    }

    #[test]
    fn a_full_queue_drops_counts_and_makes_the_next_write_whole() {
        let (client, mut rx) = undrained(2);
        let mut sync = client.synced();
        let mut wholes = 0;
        let mut whole = || {
            wholes += 1;
            record("s", 9)
        };
        assert_eq!(
            client.write(&mut sync, delta("s", 1), &mut whole),
            StoryWriteOutcome::Queued
        );
        assert_eq!(
            client.write(&mut sync, delta("s", 2), &mut whole),
            StoryWriteOutcome::Queued
        );
        let start = std::time::Instant::now();
        for v in 3..1003 {
            assert_eq!(
                client.write(&mut sync, delta("s", v), &mut whole),
                StoryWriteOutcome::Dropped(StoryDrop::QueueFull)
            );
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never blocks");
        assert_eq!(client.metrics.dropped(StoryDrop::QueueFull), 1000);
        assert!(client.is_behind(&sync));
        // Room again: the next write is the whole story, then deltas.
        rx.try_recv().unwrap();
        assert_eq!(
            client.write(&mut sync, delta("s", 1003), &mut whole),
            StoryWriteOutcome::QueuedWhole
        );
        assert!(!client.is_behind(&sync));
        rx.try_recv().unwrap();
        match rx.try_recv().unwrap() {
            Request::Write(w) => {
                assert!(w.is_whole());
                assert_eq!(w.changes.len(), 2);
            }
            other => panic!("expected a write, got {other:?}"),
        }
        assert_eq!(
            client.write(&mut sync, delta("s", 1004), &mut whole),
            StoryWriteOutcome::Queued
        );
        // `whole` ran for every write after the first drop (each was
        // whole, and each was dropped until the queue had room), never for
        // a delta.
        assert_eq!(wholes, 999 + 1);
    }

    #[test]
    fn dirty_sync_and_explicit_whole_writes() {
        let (client, mut rx) = undrained(8);
        let mut sync = StorySync::DIRTY;
        assert!(client.is_behind(&sync));
        let out = client.write(&mut sync, delta("s", 1), || record("s", 1));
        assert_eq!(out, StoryWriteOutcome::QueuedWhole);
        assert!(!client.is_behind(&sync));
        // A whole delta is sent as is, and syncs.
        let mut other = StorySync::DIRTY;
        let out = client.write(&mut other, StoryWrite::whole(record("t", 4)), || {
            panic!("not asked")
        });
        assert_eq!(out, StoryWriteOutcome::QueuedWhole);
        assert_eq!(other, client.synced());
        rx.close();
        while rx.try_recv().is_ok() {}
        let out = client.write(&mut sync, delta("s", 2), || record("s", 2));
        assert_eq!(out, StoryWriteOutcome::Dropped(StoryDrop::Stopped));
        assert_eq!(client.metrics.dropped(StoryDrop::Stopped), 1);
        assert!(
            !client.is_behind(&sync),
            "a stopped worker loses nothing more"
        );
    }

    #[test]
    fn refused_loads_are_counted_and_answerable() {
        let (client, mut rx) = undrained(1);
        let load = |request| StoryLoad {
            shard: 0,
            request,
            channel: "s".into(),
        };
        client.load(load(1)).unwrap();
        let r = client.load(load(2)).unwrap_err();
        assert_eq!(r.error, StoryStoreError::Busy);
        let a = r.into_answer();
        assert_eq!((a.request, &*a.channel), (2, "s"));
        assert_eq!(a.result, Err(StoryStoreError::Busy));
        rx.close();
        let r = client.load(load(3)).unwrap_err();
        assert_eq!(r.error, StoryStoreError::Unavailable);
        assert_eq!(client.metrics.loads(Err(StoryStoreError::Busy)), 1);
        assert_eq!(client.metrics.loads(Err(StoryStoreError::Unavailable)), 1);
    }

    #[test]
    fn bad_options_are_refused() {
        let sink = |_: usize, _: Box<StoryLoadAnswer>| Ok(());
        for opts in [
            StoryOptions {
                queue_capacity: 0,
                ..Default::default()
            },
            StoryOptions {
                batch_stories: 0,
                ..Default::default()
            },
            StoryOptions {
                timeout: Duration::ZERO,
                ..Default::default()
            },
            StoryOptions {
                story_ttl: Duration::ZERO,
                ..Default::default()
            },
            StoryOptions {
                retry_max: Duration::from_millis(1),
                ..Default::default()
            },
        ] {
            let e = spawn_story_worker("redis://127.0.0.1:1", opts, sink, Default::default())
                .err()
                .expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        let e = spawn_story_worker("http://x", Default::default(), sink, Default::default())
            .err()
            .expect("not a Redis URL");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn inbox_sink_pushes_story_answers() {
        let inboxes: Arc<[Arc<Inbox>]> = vec![Arc::new(Inbox::new(1).unwrap())].into();
        let sink = InboxSink(inboxes.clone());
        let answer = || {
            Box::new(StoryLoadAnswer {
                request: 5,
                channel: "s".into(),
                result: Ok(None),
            })
        };
        assert!(StorySink::deliver(&sink, 0, answer()).is_ok());
        let back = StorySink::deliver(&sink, 0, answer()).expect_err("the inbox is full");
        assert_eq!(back.request, 5);
        assert!(
            StorySink::deliver(&sink, 1, answer()).is_err(),
            "no such shard"
        );
        match inboxes[0].pop() {
            Some(ShardMsg::StoryLoaded(a)) => assert_eq!(a.request, 5),
            other => panic!("expected a story answer, got {other:?}"),
        }
    }
}
