//! The worker process: holds many client connections on one
//! single-threaded tokio runtime, each connection a task, and answers the
//! driver's commands on stdin/stdout.
//!
//! Modes ([`Mode`]): `subscribe` (idle, fanout, compression: subscribe and
//! count pushes), `rooms` (subscribe to a room and publish to it at a fixed
//! rate), `storm` (subscribe; on [`Command::Drop`] drop every connection
//! at once and reconnect), `recover` (`storm` with recovery: reconnect
//! on [`Command::Reconnect`] and resubscribe from the last position seen)
//! and `collab` (join a story as an editor or a viewer; editors send
//! versioned updates when told).

mod collab;
mod recover;
mod storm;

use storm::storm_member;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::LocalSet;

use crate::clock::{mono_ns, to_instant};
use crate::collab::proto::JoinRole;
use crate::conn::{Conn, Control, SubOpts, handle_control, open_with};
use crate::ipc::{Command, Event, Ready, Report, Stats, StormStatus};
use crate::payload::build_publish;
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::wsclient::OP_TEXT;

/// What the connections of a worker do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Subscribe, then only receive (`idle`, `fanout`, `compression`).
    Subscribe,
    /// Subscribe to `{channel}{g % channels}` and publish to it when told
    /// ([`Command::Publish`]).
    Rooms,
    /// Subscribe; on [`Command::Drop`] drop and re-establish everything.
    Storm,
    /// `Storm` with recovery: after the drop, wait for
    /// [`Command::Reconnect`], then resubscribe with `recover` from the last
    /// position seen and check the replayed publications.
    Recover,
    /// `Recover` without a drop command: the server itself goes away (a
    /// cluster node killed). A connection that loses its server (EOF,
    /// reset, or a close such as 3004) reconnects at once to one of
    /// `--reconnect-to` (alternating),
    /// `connect`s, then subscribes with `recover` from the last position
    /// seen, trying again on the same connection after a temporary (100)
    /// refusal (`cluster-storm`).
    Failover,
    /// Join story `{channel}{g % channels}` (or `channel` when `channels`
    /// is 0) with `collab_join`: the first `--collab-editors` members of
    /// each story as editors, the others as viewers. Editors send
    /// `update`s to their own section when told ([`Command::Publish`]);
    /// viewers time the update events.
    Collab,
}

/// Worker settings (given by the driver on the command line).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Server client address.
    #[arg(long)]
    pub server: SocketAddr,
    /// Source address every socket binds to before connecting.
    #[arg(long)]
    pub src: IpAddr,
    /// Connections to open.
    #[arg(long)]
    pub conns: u64,
    /// Global index of this worker's first connection.
    #[arg(long, default_value_t = 0)]
    pub base: u64,
    /// Connections over all workers (spreads the `rooms` publish phases).
    #[arg(long, default_value_t = 0)]
    pub total: u64,
    /// Channel name, or prefix when `--channels` > 0.
    #[arg(long)]
    pub channel: String,
    /// 0: every connection subscribes to `--channel`; K > 0: connection i
    /// subscribes to `{channel}{i % K}`.
    #[arg(long, default_value_t = 0)]
    pub channels: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds a connection may take from connect to subscribe reply.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    /// Offer `permessage-deflate` (and inflate compressed pushes).
    #[arg(long)]
    pub deflate: bool,
    /// What the connections do.
    #[arg(long, value_enum, default_value_t = Mode::Subscribe)]
    pub mode: Mode,
    /// With `--deflate`, subscriber i inflates and verifies pushes only if
    /// i % N == 0; the others count them by arrival time without inflating
    /// (so a flat-out compression run measures the server, not the
    /// generator's inflate).
    #[arg(long, default_value_t = 1)]
    pub inflate_every: u64,
    /// `collab` mode: editors per story (the first members of each).
    #[arg(long, default_value_t = 0)]
    pub collab_editors: u64,
    /// `failover` mode: where connections reconnect (comma-separated;
    /// connection g to the ((g + g / channels) mod n)-th, so that every
    /// channel's clients alternate too); default `--server`.
    #[arg(long, value_delimiter = ',')]
    pub reconnect_to: Vec<SocketAddr>,
}

/// Largest latency the histogram records (1 hour in ns); larger values saturate.
pub const HIST_MAX_NS: u64 = 3_600_000_000_000;

/// A new latency histogram (ns, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// A histogram as `(value, count)` pairs, for the driver.
pub fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

const MAX_ERRORS: usize = 5;

/// The `rooms` publishing schedule.
#[derive(Debug, Clone, Copy)]
struct PubPlan {
    start_ns: u64,
    end_ns: u64,
    period_ns: f64,
    payload: usize,
}

/// Storm bookkeeping.
struct Storm {
    /// Drop generation: bumped by [`Command::Drop`].
    drop_tx: watch::Sender<u64>,
    /// Reconnect generation: bumped when every connection is closed.
    reconnect_tx: watch::Sender<u64>,
    status: RefCell<StormStatus>,
    sub_hist: RefCell<Histogram<u64>>,
    recv_hist: RefCell<Histogram<u64>>,
}

struct State {
    args: WorkerArgs,
    window: Cell<(u64, u64)>,
    ok: Cell<u64>,
    failed: Cell<u64>,
    first_ns: Cell<u64>,
    last_ns: Cell<u64>,
    live: Cell<u64>,
    received: Cell<u64>,
    in_window: Cell<u64>,
    during_window: Cell<u64>,
    bytes: Cell<u64>,
    bytes_during: Cell<u64>,
    deflate_conns: Cell<u64>,
    compressed: Cell<u64>,
    verifiers: Cell<u64>,
    no_t: Cell<u64>,
    gaps: Cell<u64>,
    ooo: Cell<u64>,
    min_off: Cell<u64>,
    max_off: Cell<u64>,
    closed: Cell<u64>,
    frames: Cell<u64>,
    other_pushes: Cell<u64>,
    other_push_bytes: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
    errors: RefCell<Vec<String>>,
    closes: RefCell<BTreeMap<String, u64>>,
    setup_done: Notify,
    // rooms
    plan_tx: watch::Sender<Option<PubPlan>>,
    room_pubs: RefCell<Vec<u64>>,
    room_members: RefCell<Vec<u64>>,
    pubs_sent: Cell<u64>,
    pubs_sent_in_window: Cell<u64>,
    pubs_acked: Cell<u64>,
    pub_errors: Cell<u64>,
    // storm
    storm: Storm,
    // collab
    collab: collab::CollabState,
    // failover: per channel (`g % channels`), recovering replies that
    // recovered / did not
    chan_recovered: RefCell<Vec<u64>>,
    chan_not_recovered: RefCell<Vec<u64>>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl State {
    fn note_error(&self, e: String) {
        let mut errs = self.errors.borrow_mut();
        if errs.len() < MAX_ERRORS && !errs.contains(&e) {
            errs.push(e);
        }
    }

    fn setup_finished(&self) {
        if self.ok.get() + self.failed.get() == self.args.conns {
            self.setup_done.notify_one();
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            received: self.received.get(),
            received_in_window: self.in_window.get(),
            received_during_window: self.during_window.get(),
            closed: self.closed.get(),
            bytes: self.bytes.get(),
            bytes_during_window: self.bytes_during.get(),
            verifiers: self.verifiers.get(),
            frames: self.frames.get(),
            other_pushes: self.other_pushes.get(),
            other_push_bytes: self.other_push_bytes.get(),
        }
    }

    fn report(&self) -> Report {
        let any = self.in_window.get() > 0;
        Report {
            stats: self.stats(),
            gaps: self.gaps.get(),
            out_of_order: self.ooo.get(),
            no_t: self.no_t.get(),
            min_offset: any.then(|| self.min_off.get()),
            max_offset: any.then(|| self.max_off.get()),
            hist: hist_pairs(&self.hist.borrow()),
            closes: self
                .closes
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            errors: self.errors.borrow().clone(),
            deflate_conns: self.deflate_conns.get(),
            compressed_msgs: self.compressed.get(),
            room_pubs: self.room_pubs.borrow().clone(),
            room_members: self.room_members.borrow().clone(),
            pubs_sent: self.pubs_sent.get(),
            pubs_sent_in_window: self.pubs_sent_in_window.get(),
            pubs_acked: self.pubs_acked.get(),
            pub_errors: self.pub_errors.get(),
            collab: self.collab.report(),
            channel_recovered: self.chan_recovered.borrow().clone(),
            channel_not_recovered: self.chan_not_recovered.borrow().clone(),
        }
    }

    fn storm_status(&self) -> StormStatus {
        let mut s = self.storm.status.borrow().clone();
        s.sub_hist = hist_pairs(&self.storm.sub_hist.borrow());
        s.recv_hist = hist_pairs(&self.storm.recv_hist.borrow());
        s.errors = self.errors.borrow().clone();
        s.gaps = self.gaps.get();
        s.dups = self.ooo.get();
        s
    }

    /// Counts one `pub` push received at `now` (a read's timestamp).
    fn on_pub(&self, last: &mut u64, offset: u64, t: Option<u64>, now: u64) {
        self.on_unverified_pub(now);
        let (ws, we) = self.window.get();
        if offset > *last + 1 {
            bump(&self.gaps, offset - *last - 1);
        } else if offset <= *last {
            bump(&self.ooo, 1);
        }
        *last = (*last).max(offset);
        match t {
            Some(t) if t >= ws && t < we => {
                bump(&self.in_window, 1);
                self.hist
                    .borrow_mut()
                    .saturating_record(now.saturating_sub(t).max(1));
                self.min_off.set(self.min_off.get().min(offset));
                self.max_off.set(self.max_off.get().max(offset));
            }
            Some(_) => {}
            None => bump(&self.no_t, 1),
        }
    }

    /// Counts a push by its arrival time only (a non-verifying subscriber).
    fn on_unverified_pub(&self, now: u64) {
        bump(&self.received, 1);
        let (ws, we) = self.window.get();
        if now >= ws && now < we {
            bump(&self.during_window, 1);
        }
    }
}

/// Per-connection read bookkeeping: one receive timestamp per socket read
/// (frames that came in one read arrived together, and `clock_gettime`
/// per frame is measurable), and the bytes each read brought.
struct ReadStamp {
    reads: u64,
    bytes: u64,
    inflated: u64,
    now: u64,
}

impl ReadStamp {
    fn new(c: &Conn) -> Self {
        Self {
            reads: c.reader.reads(),
            bytes: c.reader.bytes(),
            inflated: c.reader.inflated(),
            now: mono_ns(),
        }
    }

    /// Updates the timestamp and the byte counters if a read happened.
    fn update(&mut self, c: &Conn, st: &State) {
        if c.reader.reads() == self.reads {
            return;
        }
        self.reads = c.reader.reads();
        self.now = mono_ns();
        let b = c.reader.bytes();
        let delta = b - self.bytes;
        self.bytes = b;
        bump(&st.bytes, delta);
        let (ws, we) = st.window.get();
        if self.now >= ws && self.now < we {
            bump(&st.bytes_during, delta);
        }
        let i = c.reader.inflated();
        bump(&st.compressed, i - self.inflated);
        self.inflated = i;
    }
}

fn emit(ev: &Event) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, ev)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Runs a worker until the driver says [`Command::Exit`] or closes stdin.
pub fn run(args: WorkerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    LocalSet::new().block_on(&rt, main_loop(args))
}

async fn main_loop(args: WorkerArgs) -> Result<()> {
    let rooms = if matches!(args.mode, Mode::Rooms | Mode::Collab) {
        args.channels.max(1) as usize
    } else {
        0
    };
    let per_channel = if args.mode == Mode::Failover {
        args.channels as usize
    } else {
        0
    };
    let st = Rc::new(State {
        args: args.clone(),
        window: Cell::new((u64::MAX, 0)),
        ok: Cell::new(0),
        failed: Cell::new(0),
        first_ns: Cell::new(u64::MAX),
        last_ns: Cell::new(0),
        live: Cell::new(0),
        received: Cell::new(0),
        in_window: Cell::new(0),
        during_window: Cell::new(0),
        bytes: Cell::new(0),
        bytes_during: Cell::new(0),
        deflate_conns: Cell::new(0),
        compressed: Cell::new(0),
        verifiers: Cell::new(0),
        no_t: Cell::new(0),
        gaps: Cell::new(0),
        ooo: Cell::new(0),
        min_off: Cell::new(u64::MAX),
        max_off: Cell::new(0),
        closed: Cell::new(0),
        frames: Cell::new(0),
        other_pushes: Cell::new(0),
        other_push_bytes: Cell::new(0),
        hist: RefCell::new(new_histogram()),
        errors: RefCell::new(Vec::new()),
        closes: RefCell::new(BTreeMap::new()),
        setup_done: Notify::new(),
        plan_tx: watch::Sender::new(None),
        room_pubs: RefCell::new(vec![0; rooms]),
        room_members: RefCell::new(vec![0; rooms]),
        pubs_sent: Cell::new(0),
        pubs_sent_in_window: Cell::new(0),
        pubs_acked: Cell::new(0),
        pub_errors: Cell::new(0),
        storm: Storm {
            drop_tx: watch::Sender::new(0),
            reconnect_tx: watch::Sender::new(0),
            status: RefCell::new(StormStatus::default()),
            sub_hist: RefCell::new(new_histogram()),
            recv_hist: RefCell::new(new_histogram()),
        },
        collab: collab::CollabState::new(),
        chan_recovered: RefCell::new(vec![0; per_channel]),
        chan_not_recovered: RefCell::new(vec![0; per_channel]),
    });
    let sem = Rc::new(Semaphore::new(args.concurrency.max(1)));
    for i in 0..args.conns {
        let g = args.base + i;
        let channel = if args.channels > 0 {
            format!("{}{}", args.channel, g % args.channels)
        } else {
            args.channel.clone()
        };
        tokio::task::spawn_local(conn_task(g, channel, st.clone(), sem.clone()));
    }
    if args.conns > 0 {
        st.setup_done.notified().await;
    }
    emit(&Event::Ready(Ready {
        ok: st.ok.get(),
        failed: st.failed.get(),
        first_connect_ns: st.first_ns.get(),
        last_ready_ns: st.last_ns.get(),
        errors: st.errors.borrow().clone(),
    }))?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        let cmd: Command =
            serde_json::from_str(&line).with_context(|| format!("bad command {line:?}"))?;
        match cmd {
            Command::Window { start_ns, end_ns } => {
                st.window.set((start_ns, end_ns));
                emit(&Event::Ack)?;
            }
            Command::Publish {
                start_ns,
                end_ns,
                rate_per_conn,
                payload,
            } => {
                st.plan_tx.send_replace(Some(PubPlan {
                    start_ns,
                    end_ns,
                    period_ns: 1e9 / rate_per_conn.max(1e-9),
                    payload,
                }));
                emit(&Event::Ack)?;
            }
            Command::Drop => {
                {
                    let mut s = st.storm.status.borrow_mut();
                    s.drop_ns = mono_ns();
                    s.live_at_drop = st.live.get();
                    if s.live_at_drop == 0 {
                        s.closed_all_ns = s.drop_ns;
                    }
                }
                st.storm.drop_tx.send_modify(|g| *g += 1);
                if st.live.get() == 0 && st.args.mode == Mode::Storm {
                    st.storm.reconnect_tx.send_modify(|g| *g += 1);
                }
                emit(&Event::Ack)?;
            }
            Command::Reconnect => {
                st.storm.status.borrow_mut().reconnect_ns = mono_ns();
                st.storm.reconnect_tx.send_modify(|g| *g += 1);
                emit(&Event::Ack)?;
            }
            Command::StormStatus => emit(&Event::Storm(st.storm_status()))?,
            Command::Stats => emit(&Event::Stats(st.stats()))?,
            Command::Report => emit(&Event::Report(st.report()))?,
            Command::Exit => break,
        }
    }
    Ok(())
}

/// Opens one connection to `addr` (under the handshake semaphore and the
/// timeout), subscribed to `channel` if given.
async fn connect_one(
    addr: SocketAddr,
    seed: u64,
    channel: Option<&str>,
    st: &State,
    sem: &Semaphore,
    sub: &SubOpts,
) -> Result<Conn> {
    let args = &st.args;
    let permit = sem.acquire().await.expect("semaphore never closed");
    let t0 = mono_ns();
    if t0 < st.first_ns.get() {
        st.first_ns.set(t0);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(args.timeout_s),
        open_with(addr, Some(args.src), seed, channel, args.deflate, sub),
    )
    .await;
    drop(permit);
    match res {
        Ok(Ok(c)) => {
            if c.reader.deflate() {
                bump(&st.deflate_conns, 1);
            }
            Ok(c)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => anyhow::bail!("setup timed out after {} s", args.timeout_s),
    }
}

async fn conn_task(g: u64, channel: String, st: Rc<State>, sem: Rc<Semaphore>) {
    let seat = crate::collab::proto::seat(g, st.args.channels, st.args.collab_editors);
    let sub = SubOpts {
        detail: matches!(st.args.mode, Mode::Recover | Mode::Failover),
        recover: None,
        collab: (st.args.mode == Mode::Collab).then_some(if seat.editor {
            JoinRole::Editor
        } else {
            JoinRole::Viewer
        }),
        user: (st.args.mode == Mode::Collab).then(|| format!("b{g}")),
    };
    let conn = match connect_one(st.args.server, g + 1, Some(&channel), &st, &sem, &sub).await {
        Ok(c) => c,
        Err(e) => {
            st.note_error(format!("{e:#}"));
            bump(&st.failed, 1);
            st.setup_finished();
            return;
        }
    };
    st.last_ns.set(st.last_ns.get().max(mono_ns()));
    bump(&st.ok, 1);
    bump(&st.live, 1);
    if st.args.mode == Mode::Rooms || (st.args.mode == Mode::Collab && !seat.editor) {
        let room = (g % st.args.channels.max(1)) as usize;
        st.room_members.borrow_mut()[room] += 1;
    }
    st.setup_finished();
    let res = match st.args.mode {
        Mode::Subscribe => {
            let verify = !st.args.deflate || g.is_multiple_of(st.args.inflate_every.max(1));
            if verify {
                bump(&st.verifiers, 1);
            }
            subscriber(conn, &st, verify).await
        }
        Mode::Rooms => member(conn, &st, g, &channel).await,
        Mode::Storm | Mode::Recover | Mode::Failover => {
            storm_member(conn, &st, g, &channel, &sem).await
        }
        Mode::Collab => collab::collab_member(conn, &st, g, &channel, seat).await,
    };
    let how = match res {
        Ok(code) => format!("close {code}"),
        Err(e) => {
            let e = format!("{e:#}");
            st.note_error(e.clone());
            e
        }
    };
    bump(&st.closed, 1);
    st.live.set(st.live.get().saturating_sub(1));
    *st.closes.borrow_mut().entry(how).or_insert(0) += 1;
}

/// Scans one text payload for pushes; replies and errors go to `on_reply`.
fn scan_text(
    payload: &[u8],
    st: &State,
    last: &mut u64,
    now: u64,
    mut on_reply: impl FnMut(u64, bool),
) {
    for_each_object(payload, |o| match classify(o) {
        ServerMsg::Pub { offset, t } => st.on_pub(last, offset, t, now),
        ServerMsg::Disconnect { code } => {
            *st.closes
                .borrow_mut()
                .entry(format!("disconnect push {code}"))
                .or_insert(0) += 1;
        }
        ServerMsg::Error { id, code } => {
            st.note_error(format!("error reply {code}"));
            on_reply(id, false);
        }
        ServerMsg::Reply { id, .. } => on_reply(id, true),
        ServerMsg::OtherPush => {
            bump(&st.other_pushes, 1);
            bump(&st.other_push_bytes, o.len() as u64);
        }
        _ => {}
    });
}

/// The steady-state loop of one subscriber: answers pings, scans pushes.
/// Returns the close code when the server closes.
/// A non-verifying subscriber (`verify` false) counts compressed pushes
/// without inflating them.
async fn subscriber(mut c: Conn, st: &State, verify: bool) -> Result<u16> {
    let mut last = c.sub_offset.unwrap_or(0);
    let mut rs = ReadStamp::new(&c);
    if !verify {
        c.reader.skip_inflate();
    }
    loop {
        let h = c.reader.next_frame().await?;
        if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
            match ctl {
                Control::Closed(code) => return Ok(code),
                Control::Handled => continue,
            }
        }
        if h.opcode == OP_TEXT {
            rs.update(&c, st);
            bump(&st.frames, 1);
            if h.rsv1 && !verify {
                st.on_unverified_pub(rs.now);
            } else {
                scan_text(c.reader.payload(&h), st, &mut last, rs.now, |_, _| {});
            }
        }
        c.reader.consume(&h);
    }
}

/// A `rooms` member: receives like [`subscriber`] and, once the plan
/// arrives, publishes to its own room at the planned rate (phase spread by
/// its global index `g`).
async fn member(mut c: Conn, st: &State, g: u64, channel: &str) -> Result<u16> {
    let mut last = c.sub_offset.unwrap_or(0);
    let mut rs = ReadStamp::new(&c);
    let room = (g % st.args.channels.max(1)) as usize;
    let channel_json = serde_json::to_string(channel)?;
    let mut plan_rx = st.plan_tx.subscribe();
    let mut waiting = true;
    let mut plan: Option<PubPlan> = None;
    let mut k: u64 = 0; // next slot
    let mut next_id: u64 = 3; // 1 and 2 were connect and subscribe
    let (mut first_win_id, mut last_win_id) = (u64::MAX, 0u64);
    let mut msg = Vec::with_capacity(256);
    let sleep = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(sleep);
    let phase = |p: &PubPlan, k: u64| -> u64 {
        let total = st.args.total.max(1) as f64;
        p.start_ns + ((g as f64 / total + k as f64) * p.period_ns) as u64
    };
    loop {
        tokio::select! {
            biased;
            h = c.reader.next_frame() => {
                let h = h?;
                if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                    match ctl {
                        Control::Closed(code) => return Ok(code),
                        Control::Handled => continue,
                    }
                }
                if h.opcode == OP_TEXT {
                    rs.update(&c, st);
                    scan_text(c.reader.payload(&h), st, &mut last, rs.now, |id, ok| {
                        if id < 3 {
                            return;
                        }
                        if ok {
                            bump(&st.pubs_acked, 1);
                            if id >= first_win_id && id <= last_win_id {
                                st.room_pubs.borrow_mut()[room] += 1;
                            }
                        } else {
                            bump(&st.pub_errors, 1);
                        }
                    });
                }
                c.reader.consume(&h);
            }
            r = plan_rx.changed(), if waiting => {
                if r.is_err() {
                    waiting = false;
                    continue;
                }
                if let Some(p) = *plan_rx.borrow_and_update() {
                    waiting = false;
                    plan = Some(p);
                    k = 0;
                    sleep.as_mut().reset(to_instant(phase(&p, 0)));
                }
            }
            () = &mut sleep, if plan.is_some() => {
                let p = plan.expect("guarded");
                let t = mono_ns();
                if t >= p.end_ns {
                    plan = None;
                    continue;
                }
                msg.clear();
                build_publish(&mut msg, next_id, &channel_json, t, p.payload);
                c.writer.send(OP_TEXT, &msg).await?;
                bump(&st.pubs_sent, 1);
                let (ws, we) = st.window.get();
                if t >= ws && t < we {
                    first_win_id = first_win_id.min(next_id);
                    last_win_id = next_id;
                    bump(&st.pubs_sent_in_window, 1);
                }
                next_id += 1;
                k += 1;
                let next = phase(&p, k);
                if next >= p.end_ns {
                    plan = None;
                } else {
                    sleep.as_mut().reset(to_instant(next));
                }
            }
        }
    }
}
