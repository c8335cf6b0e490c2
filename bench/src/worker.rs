//! The worker process: holds many client connections on one
//! single-threaded tokio runtime, each connection a task, and answers the
//! driver's commands on stdin/stdout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, Semaphore};
use tokio::task::LocalSet;

use crate::clock::mono_ns;
use crate::conn::{Conn, Control, handle_control, open};
use crate::ipc::{Command, Event, Ready, Report, Stats};
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::wsclient::OP_TEXT;

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
}

/// Largest latency the histogram records (1 hour in ns); larger values saturate.
pub const HIST_MAX_NS: u64 = 3_600_000_000_000;

/// A new latency histogram (ns, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

const MAX_ERRORS: usize = 5;

struct State {
    total: u64,
    window: Cell<(u64, u64)>,
    ok: Cell<u64>,
    failed: Cell<u64>,
    first_ns: Cell<u64>,
    last_ns: Cell<u64>,
    received: Cell<u64>,
    in_window: Cell<u64>,
    during_window: Cell<u64>,
    no_t: Cell<u64>,
    gaps: Cell<u64>,
    ooo: Cell<u64>,
    min_off: Cell<u64>,
    max_off: Cell<u64>,
    closed: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
    errors: RefCell<Vec<String>>,
    closes: RefCell<BTreeMap<String, u64>>,
    setup_done: Notify,
}

impl State {
    fn note_error(&self, e: String) {
        let mut errs = self.errors.borrow_mut();
        if errs.len() < MAX_ERRORS && !errs.contains(&e) {
            errs.push(e);
        }
    }

    fn setup_finished(&self) {
        if self.ok.get() + self.failed.get() == self.total {
            self.setup_done.notify_one();
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            received: self.received.get(),
            received_in_window: self.in_window.get(),
            received_during_window: self.during_window.get(),
            closed: self.closed.get(),
        }
    }

    fn report(&self) -> Report {
        let hist = self.hist.borrow();
        let any = self.in_window.get() > 0;
        Report {
            stats: self.stats(),
            gaps: self.gaps.get(),
            out_of_order: self.ooo.get(),
            no_t: self.no_t.get(),
            min_offset: any.then(|| self.min_off.get()),
            max_offset: any.then(|| self.max_off.get()),
            hist: hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            closes: self
                .closes
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            errors: self.errors.borrow().clone(),
        }
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
    let st = Rc::new(State {
        total: args.conns,
        window: Cell::new((u64::MAX, 0)),
        ok: Cell::new(0),
        failed: Cell::new(0),
        first_ns: Cell::new(u64::MAX),
        last_ns: Cell::new(0),
        received: Cell::new(0),
        in_window: Cell::new(0),
        during_window: Cell::new(0),
        no_t: Cell::new(0),
        gaps: Cell::new(0),
        ooo: Cell::new(0),
        min_off: Cell::new(u64::MAX),
        max_off: Cell::new(0),
        closed: Cell::new(0),
        hist: RefCell::new(new_histogram()),
        errors: RefCell::new(Vec::new()),
        closes: RefCell::new(BTreeMap::new()),
        setup_done: Notify::new(),
    });
    let sem = Rc::new(Semaphore::new(args.concurrency.max(1)));
    for i in 0..args.conns {
        let g = args.base + i;
        let channel = if args.channels > 0 {
            format!("{}{}", args.channel, g % args.channels)
        } else {
            args.channel.clone()
        };
        tokio::task::spawn_local(conn_task(g, channel, args.clone(), st.clone(), sem.clone()));
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
            Command::Stats => emit(&Event::Stats(st.stats()))?,
            Command::Report => emit(&Event::Report(st.report()))?,
            Command::Exit => break,
        }
    }
    Ok(())
}

async fn conn_task(g: u64, channel: String, args: WorkerArgs, st: Rc<State>, sem: Rc<Semaphore>) {
    let permit = sem.acquire().await.expect("semaphore never closed");
    let t0 = mono_ns();
    if t0 < st.first_ns.get() {
        st.first_ns.set(t0);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(args.timeout_s),
        open(args.server, Some(args.src), g + 1, Some(&channel)),
    )
    .await;
    drop(permit);
    let conn = match res {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            st.note_error(format!("{e:#}"));
            st.failed.set(st.failed.get() + 1);
            st.setup_finished();
            return;
        }
        Err(_) => {
            st.note_error(format!("setup timed out after {} s", args.timeout_s));
            st.failed.set(st.failed.get() + 1);
            st.setup_finished();
            return;
        }
    };
    st.last_ns.set(st.last_ns.get().max(mono_ns()));
    st.ok.set(st.ok.get() + 1);
    st.setup_finished();
    let how = match subscriber(conn, &st).await {
        Ok(code) => format!("close {code}"),
        Err(e) => {
            let e = format!("{e:#}");
            st.note_error(e.clone());
            e
        }
    };
    st.closed.set(st.closed.get() + 1);
    *st.closes.borrow_mut().entry(how).or_insert(0) += 1;
}

/// The steady-state loop of one subscriber: answers pings, scans pushes.
/// Returns the close code when the server closes.
async fn subscriber(mut c: Conn, st: &State) -> Result<u16> {
    let mut last = c.sub_offset.unwrap_or(0);
    // Receive time, taken once per read: frames that came in one read
    // arrived together (and clock_gettime per frame is measurable).
    let mut now = 0;
    let mut stamped_read = u64::MAX;
    loop {
        let h = c.reader.next_frame().await?;
        if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
            match ctl {
                Control::Closed(code) => return Ok(code),
                Control::Handled => continue,
            }
        }
        if h.opcode == OP_TEXT {
            if c.reader.reads() != stamped_read {
                stamped_read = c.reader.reads();
                now = mono_ns();
            }
            let (ws, we) = st.window.get();
            let now_in_window = now >= ws && now < we;
            for_each_object(c.reader.payload(&h), |o| match classify(o) {
                ServerMsg::Pub { offset, t } => {
                    st.received.set(st.received.get() + 1);
                    if now_in_window {
                        st.during_window.set(st.during_window.get() + 1);
                    }
                    if offset > last + 1 {
                        st.gaps.set(st.gaps.get() + (offset - last - 1));
                    } else if offset <= last {
                        st.ooo.set(st.ooo.get() + 1);
                    }
                    last = last.max(offset);
                    match t {
                        Some(t) if t >= ws && t < we => {
                            st.in_window.set(st.in_window.get() + 1);
                            st.hist
                                .borrow_mut()
                                .saturating_record(now.saturating_sub(t).max(1));
                            st.min_off.set(st.min_off.get().min(offset));
                            st.max_off.set(st.max_off.get().max(offset));
                        }
                        Some(_) => {}
                        None => st.no_t.set(st.no_t.get() + 1),
                    }
                }
                ServerMsg::Disconnect { code } => {
                    *st.closes
                        .borrow_mut()
                        .entry(format!("disconnect push {code}"))
                        .or_insert(0) += 1;
                }
                ServerMsg::Error { code, .. } => st.note_error(format!("error reply {code}")),
                _ => {}
            });
        }
        c.reader.consume(&h);
    }
}
