//! The worker's loop, on the `wsedge-durable` thread: one owner of the
//! queue's receiving end, the spill, the connection and the batch in
//! flight. Each turn first moves the state on ([`Worker::advance`]:
//! connect, send a batch, spill, replay), then waits for the next thing
//! to happen (records, a batch landing, a connection made or lost, a
//! deadline, the stop). See the parent module for the rules.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::transport::{Connecting, Done, Failure, Landed, Landing, Outgoing, Transport};
use super::{AckSender, DurableError, DurableOptions, Item, unix_ms};
use crate::sidecar::durable::metrics::DurableMetrics;
use crate::sidecar::durable::record::DurableRecord;
use crate::sidecar::durable::spill::{Seq, Spill, SpillError};

/// How often the loop looks at its timers when nothing else happens:
/// the spill's interval fsync, the gauges, a slow batch to move to the
/// spill.
const TICK: Duration = Duration::from_millis(20);

/// Longest the spill's cursor lags behind what the broker acknowledged
/// while the replay is behind (each move costs two fsyncs). A crash
/// resends at most this much, as duplicates. The cursor catches up at
/// once when the replay does, at a failure and at the stop.
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// What [`super::start`] hands the loop.
pub(super) struct Setup<T> {
    pub(super) opts: DurableOptions,
    pub(super) transport: T,
    pub(super) rx: mpsc::Receiver<Item>,
    pub(super) full: Arc<AtomicBool>,
    pub(super) metrics: Arc<DurableMetrics>,
    pub(super) spill: Spill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The spill is empty: batches go from the queue to the broker.
    Direct,
    /// Records go to the spill; the replay sends them from there.
    Spill,
}

/// What a batch in flight carries.
enum Cargo {
    /// Records taken off the queue (direct mode), with their waiters.
    Direct(Vec<Item>),
    /// The spill's records with these seqs.
    Replay(Vec<Seq>),
    /// A direct batch written to the spill while in flight (the broker
    /// was slow, or the worker stops): each record's seq there (`None`:
    /// not written). What lands counts as done in the spill, so the
    /// replay does not send it again: a second copy on the same Kafka
    /// producer would be a new record to the broker, not a retry.
    Spilled(Vec<Option<Seq>>),
}

/// The batch in flight.
struct Flight {
    cargo: Cargo,
    landing: Landing,
}

/// Why a record could not be written to the spill.
enum Unwritten {
    /// Full, or a write failed: it waits in memory.
    Blocked,
    /// It can never be written (no encoding, too large): lost, logged.
    Lost(String),
}

pub(super) struct Worker<T: Transport> {
    opts: DurableOptions,
    transport: T,
    rx: mpsc::Receiver<Item>,
    /// The queue is closed and empty.
    queue_closed: bool,
    /// The clients' refusal flag: set while `held` is not empty.
    full: Arc<AtomicBool>,
    metrics: Arc<DurableMetrics>,
    spill: Spill,
    mode: Mode,
    /// Direct mode: taken off the queue, waiting for their batch.
    batch: Vec<Item>,
    /// When `batch` must go, full or not.
    linger_until: Option<Instant>,
    /// Taken off the queue, waiting for room in the spill: at most
    /// `batch_max` (nothing more is taken while it is not empty, and it
    /// is filled by one take, or by a direct batch in flight and the
    /// next one, which together are at most `batch_max`).
    held: VecDeque<Item>,
    /// When to try `held` again after a failed write (a full spill is
    /// tried at every turn: the check costs nothing).
    held_retry_at: Option<Instant>,
    flight: Option<Flight>,
    session: Option<T::Session>,
    connecting: Option<Connecting<T::Session>>,
    /// No connection attempt before this.
    connect_at: Option<Instant>,
    /// No replay before this (backoff after a failure).
    send_at: Option<Instant>,
    /// The next backoff pause (before jitter).
    backoff: Duration,
    /// Records in the next batch at most (slow start).
    window: usize,
    /// The last spilled record the broker has (stored or dead-lettered):
    /// the replay goes on after it; the spill's cursor follows it
    /// ([`ACK_INTERVAL`]).
    done_upto: Seq,
    /// When the spill's cursor last moved.
    acked_at: Instant,
    /// When the spill's oldest record not yet done was queued.
    spill_head_ms: Option<u64>,
    /// Stopping: the stop gives up on `held` at this instant.
    stop_by: Option<Instant>,
    /// The broker being down has been logged at warn.
    down_logged: bool,
}

impl<T: Transport> Worker<T> {
    pub(super) fn new(setup: Setup<T>) -> Self {
        let Setup {
            opts,
            transport,
            rx,
            full,
            metrics,
            spill,
        } = setup;
        Worker {
            done_upto: spill.acked(),
            acked_at: Instant::now(),
            backoff: opts.retry_min,
            opts,
            transport,
            rx,
            queue_closed: false,
            full,
            metrics,
            spill,
            mode: Mode::Direct,
            batch: Vec::new(),
            linger_until: None,
            held: VecDeque::new(),
            held_retry_at: None,
            flight: None,
            session: None,
            connecting: None,
            connect_at: None,
            send_at: None,
            window: 1,
            spill_head_ms: None,
            stop_by: None,
            down_logged: false,
        }
    }

    /// Runs until `stop` fires (or its sender is dropped), then writes
    /// what is in memory to the spill.
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        if self.spill.pending_records() > 0 {
            tracing::info!(
                records = self.spill.pending_records(),
                "durable: the spill holds records from before; sending them first"
            );
            self.mode = Mode::Spill;
            self.peek_spill_head();
        }
        self.refresh_gauges();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut taken = Vec::new();
        loop {
            let now = Instant::now();
            self.advance(now);
            if self.finished(now) {
                break;
            }
            let take = self.can_take();
            let wake = self.next_wake().unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut stop, if self.stop_by.is_none() => self.begin_stop(Instant::now()),
                n = self.rx.recv_many(&mut taken, take), if take > 0 => self.take(&mut taken, n),
                landed = wait_landing(&mut self.flight) => self.landed(landed, Instant::now()),
                outcome = wait_connected(&mut self.connecting) => self.connected(outcome, Instant::now()),
                reason = wait_lost::<T>(&mut self.session) => self.lost(reason, Instant::now()),
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = tick.tick() => self.housekeeping(Instant::now()),
            }
        }
        self.finish();
    }

    /// Moves the state on as far as it goes without waiting.
    fn advance(&mut self, now: Instant) {
        if self.session.is_none()
            && self.connecting.is_none()
            && self.connect_at.is_none_or(|t| now >= t)
            && self.stop_by.is_none()
        {
            self.start_connect(now);
        }
        if self.mode == Mode::Direct && self.flight.is_none() && !self.batch.is_empty() {
            let due = self.batch.len() >= self.opts.batch_max
                || self.linger_until.is_none_or(|t| now >= t)
                || self.stop_by.is_some();
            if due {
                if self.session.is_some() && self.stop_by.is_none() {
                    self.launch_direct(now);
                } else {
                    // No connection: the spill takes the batch.
                    let batch = std::mem::take(&mut self.batch);
                    let _ = self.enter_spill(batch);
                }
            }
        }
        if self.mode == Mode::Spill {
            self.place_held(now);
            if self.flight.is_none() {
                if self.spill.pending_records() == 0
                    && self.held.is_empty()
                    && self.stop_by.is_none()
                {
                    tracing::debug!("durable: the spill is empty; back to direct sending");
                    self.mode = Mode::Direct;
                } else if self.replay_wanted()
                    && self.session.is_some()
                    && self.send_at.is_none_or(|t| now >= t)
                {
                    self.send_at = None;
                    self.launch_replay();
                }
            }
        }
    }

    /// Whether the spill should be sent from now (while stopping, only to
    /// make room for what waits in memory).
    fn replay_wanted(&self) -> bool {
        self.unsent() && (self.stop_by.is_none() || !self.held.is_empty())
    }

    /// The first spilled record the broker does not have yet.
    fn first_unsent(&self) -> Seq {
        Seq(self.done_upto.max(self.spill.acked()).0 + 1)
    }

    /// Whether the spill holds records the broker does not have yet.
    fn unsent(&self) -> bool {
        self.first_unsent() < self.spill.next_seq()
    }

    /// Moves the spill's cursor up to `done_upto` when it is due (or
    /// `now_anyway`).
    fn ack_spill(&mut self, now: Instant, now_anyway: bool) {
        let due = now_anyway || !self.unsent() || now >= self.acked_at + ACK_INTERVAL;
        if self.done_upto <= self.spill.acked() || !due {
            return;
        }
        match self.spill.ack(self.done_upto) {
            Ok(()) => self.acked_at = now,
            Err(e) => {
                tracing::warn!(error = %e, "durable: cannot acknowledge the spill; trying again")
            }
        }
        self.refresh_gauges();
    }

    /// Records the next `recv_many` may take.
    fn can_take(&self) -> usize {
        if self.queue_closed {
            return 0;
        }
        match self.mode {
            // A batch in flight and the next one together stay within
            // `batch_max`: all that can wait for room if the spill
            // takes over when it is full.
            Mode::Direct => {
                let flying = match &self.flight {
                    Some(Flight {
                        cargo: Cargo::Direct(items),
                        ..
                    }) => items.len(),
                    _ => 0,
                };
                self.opts
                    .batch_max
                    .saturating_sub(self.batch.len() + flying)
            }
            Mode::Spill if self.held.is_empty() => self.opts.batch_max,
            Mode::Spill => 0,
        }
    }

    /// The earliest deadline that will change something.
    fn next_wake(&self) -> Option<Instant> {
        let idle = self.flight.is_none();
        [
            self.linger_until
                .filter(|_| self.mode == Mode::Direct && idle && !self.batch.is_empty()),
            self.connect_at
                .filter(|_| self.session.is_none() && self.connecting.is_none()),
            self.send_at.filter(|_| {
                self.mode == Mode::Spill && idle && self.session.is_some() && self.replay_wanted()
            }),
            self.held_retry_at.filter(|_| !self.held.is_empty()),
            self.stop_by,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn finished(&self, now: Instant) -> bool {
        self.stop_by.is_some_and(|by| {
            (self.queue_closed && self.held.is_empty() && self.flight.is_none()) || now >= by
        })
    }

    /// Records taken off the queue (`n == 0`: it is closed and empty).
    fn take(&mut self, taken: &mut Vec<Item>, n: usize) {
        if n == 0 {
            self.queue_closed = true;
            return;
        }
        match self.mode {
            Mode::Direct => {
                // A waiter (`durable_ack`) is not kept waiting for more
                // records: its batch goes as soon as nothing is in flight
                // (records arriving meanwhile still batch behind it).
                if taken.iter().any(|i| i.done.is_some()) {
                    self.linger_until = Some(Instant::now());
                } else if self.batch.is_empty() {
                    self.linger_until = Some(Instant::now() + self.opts.linger);
                }
                self.batch.append(taken);
            }
            Mode::Spill => {
                let items = std::mem::take(taken);
                let _ = self.enter_spill(items);
            }
        }
    }

    fn start_connect(&mut self, now: Instant) {
        self.connect_at = None;
        match self.transport.connect() {
            Ok(c) => self.connecting = Some(c),
            Err(e) => {
                tracing::error!(broker = T::BROKER, error = %e, "durable: cannot start a connection");
                self.connect_at = Some(now + self.next_backoff());
            }
        }
    }

    fn connected(&mut self, outcome: Result<T::Session, String>, now: Instant) {
        match outcome {
            Ok(session) => {
                tracing::info!(
                    broker = T::BROKER,
                    pending = self.spill.pending_records(),
                    "durable: connected"
                );
                self.session = Some(session);
                self.window = 1;
                self.down_logged = false;
                self.metrics.up.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                DurableMetrics::add(&self.metrics.retries, 1);
                if !self.down_logged {
                    self.down_logged = true;
                    tracing::warn!(broker = T::BROKER, error = %e, "durable: cannot connect; records go to the spill until the broker answers");
                } else {
                    tracing::debug!(broker = T::BROKER, error = %e, "durable: cannot connect");
                }
                self.connect_at = Some(now + self.next_backoff());
            }
        }
    }

    /// The connection was lost (no batch in flight, or the batch's
    /// records are handled here too).
    fn lost(&mut self, reason: String, now: Instant) {
        match self.flight.take() {
            Some(flight) => self.flight_failed(flight.cargo, Failure::Connection(reason), now),
            None => {
                self.drop_session(&reason);
                self.connect_at = Some(now + self.next_backoff());
            }
        }
    }

    fn drop_session(&mut self, reason: &str) {
        if let Some(session) = self.session.take() {
            self.transport.retire(session);
            self.metrics.up.store(false, Ordering::Relaxed);
            if !self.down_logged {
                self.down_logged = true;
                tracing::warn!(
                    broker = T::BROKER,
                    reason,
                    "durable: connection dropped; records go to the spill until the broker is back"
                );
            }
        }
    }

    /// The next pause, with jitter (between half and all of it), and
    /// the one after doubled up to `retry_max`.
    fn next_backoff(&mut self) -> Duration {
        let pause = self.backoff.mul_f64(rand::random_range(0.5..=1.0));
        self.backoff = (self.backoff * 2).min(self.opts.retry_max);
        pause
    }

    fn launch_direct(&mut self, now: Instant) {
        let Some(session) = &self.session else { return };
        let n = self.batch.len().min(self.window);
        let items: Vec<Item> = self.batch.drain(..n).collect();
        // What is left has waited its linger already.
        self.linger_until = (!self.batch.is_empty()).then_some(now);
        let out = items
            .iter()
            .map(|i| Outgoing {
                subject: i.record.subject.clone(),
                key: i.record.key.clone(),
                msg_id: i.record.msg_id.clone(),
                payload: i.record.payload.clone(),
                reject: None,
            })
            .collect();
        let landing = self.transport.fly(session, out);
        self.flight = Some(Flight {
            cargo: Cargo::Direct(items),
            landing,
        });
    }

    fn launch_replay(&mut self) {
        let Some(session) = &self.session else { return };
        let from = self.first_unsent();
        let records = match self.spill.read(from, self.window, self.opts.batch_bytes) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                match self.spill.read(from, 1, 0) {
                    Ok(r) => r,
                    Err(e) => return self.skip_damaged(from, &e),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "durable: cannot read the spill; trying again");
                self.send_at = Some(Instant::now() + self.next_backoff());
                return;
            }
        };
        let mut seqs = Vec::with_capacity(records.len());
        let mut out = Vec::with_capacity(records.len());
        for (i, (seq, bytes)) in records.into_iter().enumerate() {
            seqs.push(seq);
            let bytes = Bytes::from(bytes);
            out.push(match DurableRecord::decode(bytes.clone()) {
                Ok((r, queued_ms)) => {
                    if i == 0 {
                        self.spill_head_ms = Some(queued_ms);
                    }
                    Outgoing {
                        subject: r.subject,
                        key: r.key,
                        msg_id: r.msg_id,
                        payload: r.payload,
                        reject: None,
                    }
                }
                Err(e) => Outgoing {
                    subject: String::new(),
                    key: String::new(),
                    msg_id: format!("spill-seq-{seq}"),
                    payload: bytes,
                    reject: Some(format!("a spilled record does not decode: {e}")),
                },
            });
        }
        if out.is_empty() {
            return;
        }
        let landing = self.transport.fly(session, out);
        self.flight = Some(Flight {
            cargo: Cargo::Replay(seqs),
            landing,
        });
    }

    /// Record `seq` cannot be read back (damaged on disk since the spill
    /// was opened): it counts as done, so the rest can go; lost, logged.
    fn skip_damaged(&mut self, seq: Seq, e: &std::io::Error) {
        tracing::error!(%seq, error = %e, "durable: a spilled record is damaged; skipped (lost)");
        DurableMetrics::add(&self.metrics.lost, 1);
        self.done_upto = seq;
        self.ack_spill(Instant::now(), true);
    }

    /// A batch came back.
    fn landed(&mut self, landed: Landed, now: Instant) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        let n = landed.done.len();
        for done in &landed.done {
            match done {
                Done::Stored { duplicate } => {
                    DurableMetrics::add(&self.metrics.sent, 1);
                    if *duplicate {
                        DurableMetrics::add(&self.metrics.duplicates, 1);
                    }
                }
                Done::DeadLettered(_) => DurableMetrics::add(&self.metrics.dead_lettered, 1),
            }
        }
        let cargo = match flight.cargo {
            Cargo::Direct(mut items) => {
                for (item, done) in items.iter_mut().zip(&landed.done) {
                    item.answer(match done {
                        Done::Stored { .. } => Ok(()),
                        Done::DeadLettered(r) => Err(DurableError::DeadLettered(r.clone())),
                    });
                }
                self.metrics.dequeued(n as u64);
                Cargo::Direct(items.split_off(n))
            }
            Cargo::Replay(mut seqs) => {
                if n > 0 {
                    self.done_upto = seqs[n - 1];
                    self.peek_spill_head();
                }
                self.ack_spill(now, landed.failure.is_some());
                Cargo::Replay(seqs.split_off(n))
            }
            Cargo::Spilled(mut seqs) => {
                let n = n.min(seqs.len());
                if let Some(&last) = seqs[..n].iter().rev().flatten().next() {
                    self.done_upto = self.done_upto.max(last);
                    self.peek_spill_head();
                }
                self.ack_spill(now, landed.failure.is_some());
                Cargo::Spilled(seqs.split_off(n))
            }
        };
        match landed.failure {
            Some(failure) => self.flight_failed(cargo, failure, now),
            None => {
                self.window = (self.window * 2).min(self.opts.batch_max);
                self.backoff = self.opts.retry_min;
            }
        }
        self.refresh_gauges();
    }

    /// A batch failed: its records not done go to the spill (direct) or
    /// stay there (replay); the replay waits a backoff; a suspect
    /// connection is dropped.
    fn flight_failed(&mut self, cargo: Cargo, failure: Failure, now: Instant) {
        DurableMetrics::add(&self.metrics.retries, 1);
        self.window = 1;
        let pause = self.next_backoff();
        self.send_at = Some(now + pause);
        match &failure {
            Failure::Connection(reason) => {
                tracing::debug!(reason, "durable: a batch failed; dropping the connection");
                self.drop_session(reason);
                self.connect_at = Some(now + pause);
            }
            Failure::Broker(reason) => {
                tracing::debug!(reason, "durable: a batch was refused for now; retrying")
            }
        }
        if let Cargo::Direct(rest) = cargo {
            let _ = self.enter_spill(rest);
        }
    }

    /// Direct mode ends: `first` (the records of a batch not done, or
    /// taken back), then the batch being collected, go to the spill, in
    /// that order. Returns the seqs `first`'s records got there.
    fn enter_spill(&mut self, first: Vec<Item>) -> Vec<Option<Seq>> {
        let n = first.len();
        let mut seqs = if self.mode == Mode::Direct {
            self.mode = Mode::Spill;
            self.linger_until = None;
            let rest = std::mem::take(&mut self.batch);
            self.spill_items(first.into_iter().chain(rest))
        } else {
            self.spill_items(first)
        };
        seqs.truncate(n);
        seqs
    }

    /// A direct batch in flight goes to the spill, with the batch being
    /// collected behind it, and keeps flying ([`Cargo::Spilled`]) when
    /// its records are the first the spill has to send; otherwise it is
    /// let go (its records may then reach the sink twice, same id).
    /// Returns whether there was a direct batch in flight.
    fn spill_in_flight(&mut self) -> bool {
        if !matches!(
            self.flight,
            Some(Flight {
                cargo: Cargo::Direct(_),
                ..
            })
        ) {
            return false;
        }
        let Some(Flight {
            cargo: Cargo::Direct(items),
            landing,
        }) = self.flight.take()
        else {
            unreachable!("checked above")
        };
        let first = self.first_unsent();
        let seqs = self.enter_spill(items);
        if seqs.iter().flatten().next() == Some(&first) {
            self.flight = Some(Flight {
                cargo: Cargo::Spilled(seqs),
                landing,
            });
        }
        true
    }

    /// Appends `items` in order behind what waits in `held`; answers the
    /// waiters of those written once a sync covers them. Returns each
    /// item's seq in the spill (`None`: waiting for room, or lost).
    fn spill_items(&mut self, items: impl IntoIterator<Item = Item>) -> Vec<Option<Seq>> {
        let mut waiters: Vec<AckSender> = Vec::new();
        let mut seqs = Vec::new();
        for mut item in items {
            if !self.held.is_empty() {
                self.held.push_back(item);
                seqs.push(None);
                continue;
            }
            match self.write(&item) {
                Ok(seq) => {
                    seqs.push(Some(seq));
                    self.metrics.dequeued(1);
                    DurableMetrics::add(&self.metrics.spilled, 1);
                    self.spill_head_ms.get_or_insert(item.queued_ms);
                    waiters.extend(item.done.take());
                }
                Err(Unwritten::Blocked) => {
                    self.held.push_back(item);
                    seqs.push(None);
                }
                Err(Unwritten::Lost(reason)) => {
                    seqs.push(None);
                    tracing::error!(msg_id = %item.record.msg_id, reason, "durable: a record cannot be spilled; lost");
                    self.metrics.dequeued(1);
                    DurableMetrics::add(&self.metrics.lost, 1);
                    item.answer(Err(DurableError::Lost(reason)));
                }
            }
        }
        // Into the kernel now (not only the spill's buffer): a kill of the
        // process loses none of them; the fsync policy covers power cuts.
        if let Err(e) = self.spill.write_out() {
            tracing::warn!(error = %e, "durable: writing to the spill failed; retried with the next records");
        }
        self.full.store(!self.held.is_empty(), Ordering::Release);
        let synced = match waiters.is_empty() {
            true => Ok(()),
            false => self.spill.sync().map_err(|e| {
                tracing::warn!(error = %e, "durable: the spill's sync failed");
                DurableError::Unsynced(e.to_string())
            }),
        };
        self.refresh_gauges();
        for w in waiters {
            let _ = w.send(synced.clone());
        }
        seqs
    }

    fn write(&mut self, item: &Item) -> Result<Seq, Unwritten> {
        let bytes = item
            .record
            .encode(item.queued_ms)
            .map_err(|e| Unwritten::Lost(e.to_string()))?;
        match self.spill.append(&bytes) {
            Ok(seq) => Ok(seq),
            Err(SpillError::Full) => Err(Unwritten::Blocked),
            Err(SpillError::Io(e)) => {
                tracing::warn!(error = %e, "durable: a spill write failed; the record waits in memory");
                self.held_retry_at = Some(Instant::now() + self.opts.retry_min);
                Err(Unwritten::Blocked)
            }
            Err(e @ SpillError::TooLarge { .. }) => Err(Unwritten::Lost(e.to_string())),
        }
    }

    /// Tries the records waiting for room again.
    fn place_held(&mut self, now: Instant) {
        if self.held.is_empty() || self.held_retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.held_retry_at = None;
        let held = std::mem::take(&mut self.held);
        let _ = self.spill_items(held);
    }

    /// The stop: take nothing new; what is in memory goes to the spill.
    /// A batch in flight is awaited (within the grace) so that what it
    /// landed is not sent again by the next start.
    fn begin_stop(&mut self, now: Instant) {
        tracing::info!("durable: stopping; writing what is in memory to the spill");
        self.stop_by = Some(now + self.opts.shutdown_grace);
        self.rx.close();
        let _ = self.spill_in_flight();
        let _ = self.enter_spill(Vec::new());
    }

    fn housekeeping(&mut self, now: Instant) {
        self.ack_spill(now, false);
        if let Err(e) = self.spill.sync_if_due(now) {
            tracing::warn!(error = %e, "durable: the spill's interval sync failed");
        }
        // A batch in flight while the queue fills: the broker is slow;
        // the spill takes the load (what the batch lands counts as done
        // there; the rest is sent again from there).
        if self.mode == Mode::Direct
            && self.rx.len() >= self.opts.queue_capacity / 2
            && self.spill_in_flight()
        {
            tracing::debug!("durable: the broker is slow; the spill took over");
        }
        self.refresh_gauges();
    }

    /// Reads when the spill's oldest unacknowledged record was queued.
    fn peek_spill_head(&mut self) {
        self.spill_head_ms = None;
        if !self.unsent() {
            return;
        }
        let from = self.first_unsent();
        if let Ok(r) = self.spill.read(from, 1, 0)
            && let Some((_, bytes)) = r.into_iter().next()
            && let Ok((_, ms)) = DurableRecord::decode(Bytes::from(bytes))
        {
            self.spill_head_ms = Some(ms);
        }
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        DurableMetrics::set(&m.in_spill_records, self.spill.pending_records());
        DurableMetrics::set(&m.spill_bytes, self.spill.disk_bytes());
        let in_flight = match &self.flight {
            Some(Flight {
                cargo: Cargo::Direct(items),
                ..
            }) => items.first().map(|i| i.queued_ms),
            _ => None,
        };
        let oldest = [
            self.spill_head_ms.filter(|_| self.unsent()),
            in_flight,
            self.batch.first().map(|i| i.queued_ms),
            self.held.front().map(|i| i.queued_ms),
        ]
        .into_iter()
        .flatten()
        .min();
        let age = oldest.map_or(0, |ms| unix_ms().saturating_sub(ms));
        DurableMetrics::set(&m.oldest_unsent_age_ms, age);
    }

    /// After the loop: what could not be written is lost (counted,
    /// logged, its waiters told); the spill is synced.
    fn finish(&mut self) {
        self.flight = None;
        self.ack_spill(Instant::now(), true);
        let mut lost = std::mem::take(&mut self.held);
        while let Ok(item) = self.rx.try_recv() {
            lost.push_back(item);
        }
        if !lost.is_empty() {
            tracing::error!(
                records = lost.len(),
                "durable: the spill was still full at the stop; records lost"
            );
            self.metrics.dequeued(lost.len() as u64);
            DurableMetrics::add(&self.metrics.lost, lost.len() as u64);
            for mut item in lost {
                item.answer(Err(DurableError::Lost(
                    "the spill was full when the worker stopped".into(),
                )));
            }
        }
        if let Err(e) = self.spill.sync() {
            tracing::error!(error = %e, "durable: the spill's last sync failed");
        }
        if let Some(session) = self.session.take() {
            self.transport.retire(session);
        }
        self.connecting = None;
        self.metrics.up.store(false, Ordering::Relaxed);
        self.refresh_gauges();
        tracing::info!(in_spill = self.spill.pending_records(), "durable: stopped");
    }
}

/// The batch in flight landing (never, when there is none).
async fn wait_landing(flight: &mut Option<Flight>) -> Landed {
    match flight {
        Some(f) => f.landing.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The connection attempt's outcome (never, when there is none). Takes
/// the attempt once it is done.
async fn wait_connected<S>(connecting: &mut Option<Connecting<S>>) -> Result<S, String> {
    let Some(c) = connecting else {
        return std::future::pending().await;
    };
    let outcome = c.as_mut().await;
    *connecting = None;
    outcome
}

/// The session ending (never, when there is none).
async fn wait_lost<T: Transport>(session: &mut Option<T::Session>) -> String {
    match session {
        Some(s) => T::lost(s).await,
        None => std::future::pending().await,
    }
}
