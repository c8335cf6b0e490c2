//! The story worker's loop, on the `wsedge-stories` thread: moves requests
//! from the queue into the coalescing buffers, sends one batch at a time
//! (a pipelined `MULTI`…`EXEC`), answers loads, backs off while Redis is
//! down. See the parent module for the rules.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle, JoinSet};

use super::codec::{decode_story, story_key};
use super::metrics::{StoryDrop, StoryMetrics, StoryWriteError};
use super::pending::{Bounds, Pending, StoryBuffer};
use super::{Request, StoryOptions, StorySink};
use crate::bridge::{StoryLoad, StoryLoadAnswer, StoryRecord, StoryStoreError};

/// Attempts to push an answer into a full inbox before dropping it (as
/// the ticket and API sidecars do).
const DELIVER_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const DELIVER_RETRY: Duration = Duration::from_millis(2);
/// Requests taken off the queue in one go before the timers are looked
/// at again.
const DRAIN_PER_TURN: usize = 4096;

/// Every command's reply, in order (`ignore_errors`: a command Redis
/// refused is an `Err` in its place).
type Replies = RedisResult<Vec<RedisResult<Value>>>;
type BatchOutput = Result<Replies, tokio::time::error::Elapsed>;

/// A load waiting for its batch (or in one).
struct Waiting {
    load: StoryLoad,
    deadline: Instant,
}

/// The batch Redis is working on.
struct InFlight {
    task: JoinHandle<BatchOutput>,
    /// The stories sent, to put back if the batch fails.
    stories: Vec<(Arc<str>, StoryBuffer)>,
    /// Each story's commands, as positions in the replies.
    ranges: Vec<Range<usize>>,
    /// Loads sent; `None` once answered at their deadline.
    loads: Vec<Option<Waiting>>,
    /// Position of the first load's `HGETALL` (its `PTTL` follows).
    first_load: usize,
    commands: usize,
    /// When the oldest change of the batch arrived.
    since: Instant,
    started: Instant,
}

pub(super) struct Worker {
    manager: ConnectionManager,
    rx: mpsc::Receiver<Request>,
    rx_open: bool,
    opts: StoryOptions,
    sink: Arc<dyn StorySink>,
    metrics: StoryMetrics,
    epoch: Arc<AtomicU64>,
    pending: Pending,
    loads: VecDeque<Waiting>,
    inflight: Option<InFlight>,
    /// No batch before this (Redis failed; loads are refused until then).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Whether the last batch reached Redis (logs only the changes).
    redis_up: bool,
    /// Whether an overflow was logged since Redis last answered.
    overflow_logged: bool,
    deliveries: JoinSet<()>,
}

impl Worker {
    pub(super) fn new(
        manager: ConnectionManager,
        rx: mpsc::Receiver<Request>,
        opts: StoryOptions,
        sink: Arc<dyn StorySink>,
        metrics: StoryMetrics,
        epoch: Arc<AtomicU64>,
    ) -> Self {
        let bounds = Bounds {
            max_stories: opts.max_pending_stories,
            max_bytes: opts.max_pending_bytes,
        };
        Self {
            manager,
            rx,
            rx_open: true,
            backoff: opts.retry_min,
            opts,
            sink,
            metrics,
            epoch,
            pending: Pending::new(bounds),
            loads: VecDeque::new(),
            inflight: None,
            retry_at: None,
            redis_up: true,
            overflow_logged: false,
            deliveries: JoinSet::new(),
        }
    }

    /// Runs until `stop` fires (or its sender is dropped), then flushes
    /// what it can within the timeout.
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let now = Instant::now();
            let wake = self.next_wake(now);
            let sleep_to = wake.unwrap_or(now + Duration::from_secs(3600));
            let in_flight = self.inflight.is_some();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                done = batch_done(&mut self.inflight), if in_flight => self.on_batch_done(done),
                req = self.rx.recv(), if self.rx_open => match req {
                    Some(req) => {
                        let now = Instant::now();
                        self.absorb(req, now);
                        for _ in 0..DRAIN_PER_TURN {
                            match self.rx.try_recv() {
                                Ok(req) => self.absorb(req, now),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.rx_open = false,
                },
                _ = tokio::time::sleep_until(sleep_to.into()), if wake.is_some() => {}
            }
            if !self.rx_open {
                break;
            }
            let now = Instant::now();
            self.expire_loads(now);
            if self.flush_due(now).is_some_and(|t| t <= now) {
                self.start_batch(now);
            }
            self.update_gauge();
            while self.deliveries.try_join_next().is_some() {}
        }
        self.finish().await;
    }

    /// Takes one request off the queue.
    fn absorb(&mut self, req: Request, now: Instant) {
        match req {
            Request::Write(w) => {
                let applied = self.pending.apply(w, now);
                if applied.invalid > 0 {
                    self.metrics
                        .count_drop(StoryDrop::Invalid, u64::from(applied.invalid));
                    tracing::debug!(
                        sections = applied.invalid,
                        "story sections not written: data is not one JSON value, or no section id"
                    );
                }
                self.lost(StoryDrop::PendingOverflow, applied.evicted);
            }
            Request::Load(load) => {
                if self.retry_at.is_some_and(|t| now < t) {
                    self.answer(load, Err(StoryStoreError::Unavailable));
                } else if self.loads.len() >= self.opts.max_waiting_loads {
                    self.answer(load, Err(StoryStoreError::Busy));
                } else {
                    self.loads.push_back(Waiting {
                        load,
                        deadline: now + self.opts.timeout,
                    });
                }
            }
        }
    }

    /// Counts `n` stories' changes lost and advances the loss epoch, so
    /// every story's next write is whole.
    fn lost(&mut self, reason: StoryDrop, n: u32) {
        if n == 0 {
            return;
        }
        self.metrics.count_drop(reason, u64::from(n));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if reason == StoryDrop::PendingOverflow && !self.overflow_logged {
            self.overflow_logged = true;
            tracing::warn!(
                max_stories = self.opts.max_pending_stories,
                max_bytes = self.opts.max_pending_bytes,
                "story changes waiting for Redis exceed the bound: the oldest are dropped \
                 (wsedge_story_writes_dropped_total{{reason=\"pending_overflow\"}}); stories are \
                 rewritten whole on their next change"
            );
        }
    }

    /// When the next batch may start, if one is wanted.
    fn flush_due(&self, now: Instant) -> Option<Instant> {
        if self.inflight.is_some() {
            return None;
        }
        let due = if !self.loads.is_empty() || self.pending.len() >= self.opts.batch_stories {
            Some(now)
        } else {
            self.pending.since().map(|s| s + self.opts.flush_interval)
        }?;
        Some(self.retry_at.map_or(due, |r| due.max(r)))
    }

    /// The next time the loop must look: a batch due, or a load deadline.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let deadlines = self.loads.front().map(|w| w.deadline).into_iter().chain(
            self.inflight.iter().flat_map(|f| {
                f.loads
                    .iter()
                    .flatten()
                    .map(|w| w.deadline)
                    .min()
                    .into_iter()
            }),
        );
        self.flush_due(now).into_iter().chain(deadlines).min()
    }

    /// Answers loads whose deadline has passed with `Unavailable`.
    fn expire_loads(&mut self, now: Instant) {
        let mut expired = Vec::new();
        while self.loads.front().is_some_and(|w| w.deadline <= now) {
            expired.extend(self.loads.pop_front());
        }
        if let Some(f) = &mut self.inflight {
            for slot in &mut f.loads {
                if slot.as_ref().is_some_and(|w| w.deadline <= now) {
                    expired.extend(slot.take());
                }
            }
        }
        for w in expired {
            self.answer(w.load, Err(StoryStoreError::Unavailable));
        }
    }

    /// Sends the next batch: the waiting loads' stories' changes first,
    /// then the oldest, then the loads.
    fn start_batch(&mut self, now: Instant) {
        let n_loads = self.loads.len().min(self.opts.batch_stories);
        let loads: Vec<Waiting> = self.loads.drain(..n_loads).collect();
        let first: Vec<Arc<str>> = loads.iter().map(|w| w.load.channel.clone()).collect();
        let since = self.pending.since().unwrap_or(now);
        let stories = self.pending.take(self.opts.batch_stories, &first);
        if stories.is_empty() && loads.is_empty() {
            return;
        }
        let ttl_ms = u64::try_from(self.opts.story_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        let mut n = 0;
        let mut ranges = Vec::with_capacity(stories.len());
        for (channel, buf) in &stories {
            let start = n;
            n += add_story(&mut pipe, channel, buf, ttl_ms);
            ranges.push(start..n);
        }
        let first_load = n;
        for w in &loads {
            let key = story_key(&w.load.channel);
            pipe.cmd("HGETALL").arg(&key);
            pipe.cmd("PTTL").arg(&key);
            n += 2;
        }
        let mut con = self.manager.clone();
        let timeout = self.opts.timeout;
        let task = tokio::spawn(async move {
            tokio::time::timeout(
                timeout,
                pipe.query_async::<Vec<RedisResult<Value>>>(&mut con),
            )
            .await
        });
        self.inflight = Some(InFlight {
            task,
            stories,
            ranges,
            loads: loads.into_iter().map(Some).collect(),
            first_load,
            commands: n,
            since,
            started: now,
        });
    }

    fn on_batch_done(&mut self, done: Result<BatchOutput, JoinError>) {
        let Some(f) = self.inflight.take() else {
            return;
        };
        let now = Instant::now();
        self.metrics
            .observe_batch(now.duration_since(f.started).as_secs_f64());
        let replies = match done {
            Ok(Ok(Ok(replies))) if replies.len() == f.commands => Ok(replies),
            Ok(Ok(Ok(replies))) => Err(format!(
                "{} replies to {} commands",
                replies.len(),
                f.commands
            )),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_elapsed)) => Err(format!("no answer within {:?}", self.opts.timeout)),
            Err(e) => Err(format!("the batch task failed: {e}")),
        };
        match replies {
            Ok(replies) => self.batch_ok(f, &replies),
            Err(why) => self.batch_failed(f, &why, now),
        }
    }

    fn batch_ok(&mut self, f: InFlight, replies: &[RedisResult<Value>]) {
        if !self.redis_up {
            self.redis_up = true;
            tracing::info!("story state: Redis answers again");
        }
        self.retry_at = None;
        self.backoff = self.opts.retry_min;
        self.overflow_logged = false;
        let mut written = 0;
        let mut refused = 0;
        for ((channel, _), range) in f.stories.iter().zip(&f.ranges) {
            match replies[range.clone()].iter().find_map(|r| r.as_ref().err()) {
                None => written += 1,
                Some(e) => {
                    refused += 1;
                    self.metrics.count_write_error(StoryWriteError::Refused);
                    tracing::warn!(
                        channel = %channel,
                        error = %e,
                        "Redis refused a story's write; its changes are dropped and it is \
                         rewritten whole on its next change"
                    );
                }
            }
        }
        self.metrics.count_writes(written);
        self.lost(StoryDrop::Refused, refused);
        for (i, slot) in f.loads.into_iter().enumerate() {
            let Some(w) = slot else {
                continue;
            };
            let k = f.first_load + 2 * i;
            let (result, malformed) = load_result(
                &w.load.channel,
                &replies[k],
                &replies[k + 1],
                self.opts.max_load_fields,
            );
            self.metrics.count_malformed(malformed);
            self.answer(w.load, result);
        }
    }

    fn batch_failed(&mut self, f: InFlight, why: &str, now: Instant) {
        if !f.stories.is_empty() {
            self.metrics.count_write_error(StoryWriteError::Unavailable);
        }
        if self.redis_up {
            self.redis_up = false;
            tracing::warn!(
                error = %why,
                "story state: Redis is unreachable; changes wait (bounded) and are written \
                 when it is back, loads fail meanwhile (wsedge_story_write_errors_total)"
            );
        }
        let evicted = self.pending.restore(f.stories, f.since);
        self.lost(StoryDrop::PendingOverflow, evicted);
        let waiting = std::mem::take(&mut self.loads);
        for w in f.loads.into_iter().flatten().chain(waiting) {
            self.answer(w.load, Err(StoryStoreError::Unavailable));
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.opts.retry_max);
    }

    /// Counts and delivers a load's answer; a full inbox is retried on a
    /// task of its own so the loop goes on.
    fn answer(&mut self, load: StoryLoad, result: Result<Option<StoryRecord>, StoryStoreError>) {
        self.metrics
            .count_load(result.as_ref().map(Option::is_some).map_err(|e| *e));
        let shard = load.shard;
        let answer = Box::new(StoryLoadAnswer {
            request: load.request,
            channel: load.channel,
            result,
        });
        let Err(mut answer) = self.sink.deliver(shard, answer) else {
            return;
        };
        let sink = self.sink.clone();
        let metrics = self.metrics.clone();
        self.deliveries.spawn(async move {
            for _ in 1..DELIVER_ATTEMPTS {
                tokio::time::sleep(DELIVER_RETRY).await;
                match sink.deliver(shard, answer) {
                    Ok(()) => return,
                    Err(back) => answer = back,
                }
            }
            metrics.count_answer_dropped();
            tracing::debug!(
                shard,
                request = answer.request,
                "story load answer dropped: the shard's inbox stayed full"
            );
        });
    }

    fn update_gauge(&self) {
        let in_flight = self.inflight.as_ref().map_or(0, |f| f.stories.len());
        self.metrics.set_pending(self.pending.len() + in_flight);
    }

    /// Shutdown: nothing new gets in; queued loads fail, queued writes
    /// join the buffers, which are flushed for at most the timeout.
    async fn finish(mut self) {
        self.rx.close();
        let now = Instant::now();
        while let Ok(req) = self.rx.try_recv() {
            match req {
                Request::Write(_) => self.absorb(req, now),
                Request::Load(load) => self.answer(load, Err(StoryStoreError::Unavailable)),
            }
        }
        for w in std::mem::take(&mut self.loads) {
            self.answer(w.load, Err(StoryStoreError::Unavailable));
        }
        let deadline = now + self.opts.timeout;
        loop {
            if let Some(f) = &mut self.inflight {
                match tokio::time::timeout_at(deadline.into(), &mut f.task).await {
                    Ok(done) => self.on_batch_done(done),
                    Err(_) => {
                        let f = self.inflight.take().expect("in flight");
                        f.task.abort();
                        self.metrics
                            .count_drop(StoryDrop::Stopped, f.stories.len() as u64);
                        for w in f.loads.into_iter().flatten() {
                            self.answer(w.load, Err(StoryStoreError::Unavailable));
                        }
                        break;
                    }
                }
                continue;
            }
            // One attempt even if an earlier batch failed (Redis may be
            // back); none after a failure here.
            let now = Instant::now();
            if self.pending.is_empty() || self.retry_at.is_some_and(|t| t > now) || now >= deadline
            {
                break;
            }
            self.start_batch(now);
        }
        let left = self.pending.drain_count();
        if left > 0 {
            self.metrics.count_drop(StoryDrop::Stopped, left as u64);
            tracing::warn!(
                stories = left,
                "story worker stopped with changes not written to Redis"
            );
        }
        self.metrics.set_pending(0);
        while self.deliveries.join_next().await.is_some() {}
    }
}

/// The batch in flight's outcome; never resolves when there is none.
async fn batch_done(inflight: &mut Option<InFlight>) -> Result<BatchOutput, JoinError> {
    match inflight {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}

/// Appends one story's commands; returns how many.
fn add_story(pipe: &mut redis::Pipeline, channel: &str, buf: &StoryBuffer, ttl_ms: u64) -> usize {
    let key = story_key(channel);
    let mut n = 0;
    if buf.clear {
        pipe.cmd("DEL").arg(&key);
        n += 1;
    }
    let mut sets = buf
        .fields
        .iter()
        .filter_map(|(f, v)| v.as_ref().map(|v| (f, v)))
        .peekable();
    if sets.peek().is_some() {
        pipe.cmd("HSET").arg(&key);
        for (f, v) in sets {
            pipe.arg(f.as_str()).arg(v.as_slice());
        }
        n += 1;
    }
    if !buf.clear {
        let mut dels = buf
            .fields
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(f, _)| f)
            .peekable();
        if dels.peek().is_some() {
            pipe.cmd("HDEL").arg(&key);
            for f in dels {
                pipe.arg(f.as_str());
            }
            n += 1;
        }
    }
    if buf.active {
        pipe.cmd("PERSIST").arg(&key);
    } else {
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms);
    }
    n + 1
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A load's answer from its `HGETALL` and `PTTL` replies, and how many
/// fields were skipped as malformed.
fn load_result(
    channel: &Arc<str>,
    hgetall: &RedisResult<Value>,
    pttl: &RedisResult<Value>,
    max_fields: usize,
) -> (Result<Option<StoryRecord>, StoryStoreError>, u64) {
    let value = match hgetall {
        Ok(v) => v,
        Err(e) if e.code() == Some("WRONGTYPE") => return (Err(StoryStoreError::Malformed), 0),
        Err(_) => return (Err(StoryStoreError::Unavailable), 0),
    };
    let items: Vec<(&Value, &Value)> = match value {
        Value::Array(items) if items.len() % 2 == 0 => {
            items.chunks_exact(2).map(|c| (&c[0], &c[1])).collect()
        }
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Nil => Vec::new(),
        _ => return (Err(StoryStoreError::Malformed), 0),
    };
    if items.is_empty() {
        return (Ok(None), 0);
    }
    if items.len() > max_fields {
        return (Err(StoryStoreError::Malformed), 0);
    }
    let mut unreadable = 0;
    let fields: Vec<(&[u8], &[u8])> = items
        .into_iter()
        .filter_map(|(k, v)| {
            let pair = bytes_of(k).zip(bytes_of(v));
            unreadable += u64::from(pair.is_none());
            pair
        })
        .collect();
    let active = matches!(pttl, Ok(Value::Int(-1)));
    let d = decode_story(channel.clone(), fields, active);
    (Ok(Some(d.record)), unreadable + u64::from(d.malformed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn load_results_from_replies() {
        let c: Arc<str> = "s".into();
        let sec = br#"{"v":3,"w":"u","d":[1]}"#;
        let arr = Value::Array(vec![
            bulk(b"s:a"),
            bulk(sec),
            bulk(b"s:b"),
            bulk(b"junk"),
            bulk(b"zz"),
            bulk(b"ignored"),
        ]);
        let (r, bad) = load_result(&c, &Ok(arr), &Ok(Value::Int(-1)), 100);
        let rec = r.unwrap().unwrap();
        assert_eq!(bad, 1);
        assert!(rec.active, "no TTL: editors were present");
        assert_eq!(rec.sections.len(), 1);
        assert_eq!(rec.sections[0].version, 3);
        // RESP3 maps read the same; a TTL means inactive.
        let map = Value::Map(vec![(bulk(b"s:a"), bulk(sec)), (Value::Int(4), bulk(sec))]);
        let (r, bad) = load_result(&c, &Ok(map), &Ok(Value::Int(5000)), 100);
        assert!(!r.unwrap().unwrap().active);
        assert_eq!(bad, 1, "a field that is not a string");
        // Nothing stored.
        let (r, _) = load_result(&c, &Ok(Value::Array(vec![])), &Ok(Value::Int(-2)), 100);
        assert_eq!(r, Ok(None));
        // Too many fields, an odd array, a non-hash reply.
        let many = Value::Array(vec![bulk(b"s:a"), bulk(sec), bulk(b"s:b"), bulk(sec)]);
        assert_eq!(
            load_result(&c, &Ok(many), &Ok(Value::Int(-1)), 1).0,
            Err(StoryStoreError::Malformed)
        );
        let odd = Value::Array(vec![bulk(b"s:a")]);
        assert_eq!(
            load_result(&c, &Ok(odd), &Ok(Value::Int(-1)), 9).0,
            Err(StoryStoreError::Malformed)
        );
        assert_eq!(
            load_result(&c, &Ok(Value::Int(1)), &Ok(Value::Int(-1)), 9).0,
            Err(StoryStoreError::Malformed)
        );
    }

    fn command_names(pipe: &redis::Pipeline) -> Vec<String> {
        pipe.cmd_iter()
            .map(|c| match c.args_iter().next() {
                Some(redis::Arg::Simple(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn a_story_becomes_these_commands() {
        let mut p = Pending::new(Bounds {
            max_stories: 10,
            max_bytes: 1 << 20,
        });
        let now = Instant::now();
        let sec = |id: &str| {
            crate::bridge::StoryChange::Section(crate::bridge::SectionRecord {
                id: id.into(),
                version: 1,
                data: bytes::Bytes::from_static(b"1"),
                writer: "w".into(),
            })
        };
        p.apply(
            crate::bridge::StoryWrite {
                channel: "c".into(),
                changes: vec![
                    sec("a"),
                    sec("b"),
                    crate::bridge::StoryChange::Unlock {
                        section: "a".into(),
                    },
                ],
                active: false,
            },
            now,
        );
        let batch = p.take(1, &[]);
        let mut pipe = redis::pipe();
        assert_eq!(add_story(&mut pipe, "c", &batch[0].1, 3_600_000), 3);
        assert_eq!(command_names(&pipe), ["HSET", "HDEL", "PEXPIRE"]);
        // A clear drops the HDEL (the key is gone anyway) and comes first.
        p.apply(
            crate::bridge::StoryWrite {
                channel: "c".into(),
                changes: vec![
                    crate::bridge::StoryChange::Unlock {
                        section: "a".into(),
                    },
                    crate::bridge::StoryChange::Clear,
                    sec("z"),
                ],
                active: true,
            },
            now,
        );
        let batch = p.take(1, &[]);
        let mut pipe = redis::pipe();
        assert_eq!(add_story(&mut pipe, "c", &batch[0].1, 1), 3);
        assert_eq!(command_names(&pipe), ["DEL", "HSET", "PERSIST"]);
    }
}
