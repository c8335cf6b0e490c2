//! The shards: one monoio runtime per core, each with its own
//! SO_REUSEPORT listener, connections, subscriptions and home channels.
//!
//! Layout:
//! - `mod.rs`: starting shards (threads, pinning, driver choice) and the
//!   async loop that drives a [`core::Shard`].
//! - `core.rs`: the shard state and its loop turn: admitting, reading and
//!   the connection's phases (handshake, frames, close), ticks, deadlines.
//!   `core/tls_io.rs`: the same read path and write pass over TLS.
//! - `accept.rs`: the listener, gracefully at the descriptor and memory
//!   limits.
//! - `access.rs`: the `[access]` rules on connections (address filter,
//!   PROXY header, `X-Forwarded-For`, `Origin`, per-IP and per-user
//!   limits).
//! - `write.rs`: the write pass (one `writev` per connection per turn).
//! - `drain.rs`: the drain schedule.
//! - `live.rs`: the limits `SIGHUP` changes on running shards, and the
//!   loop-turn counters the watchdog reads.
//! - `held.rs`: commands held while a `connect` waits for its ticket.
//! - `peers.rs`: the other shards' inboxes and what is owed to them.
//! - `commands.rs`: connection-level commands (connect, ping, the rate
//!   limit) and `ShardOut`, the shell's side of the channel router
//!   (`engine::router::Output`).
//! - `api.rs`: server API calls on the shard, and the user index.
//! - `rpc.rs`: clients' backend calls (`rpc`, `send`) and their answers.
//! - `conn.rs`: per-connection state.
//! - `sys.rs`: the Linux calls (epoll, accept4, read, writev).
//! - `uring.rs`: the io_uring data path (`io = "uring"`): the shard's own
//!   ring, its provided buffer ring, send buffers and per-connection
//!   operation slots; `core/uring_io.rs` is its side of the loop turn.
//! - `tls/`: TLS over the raw socket (rustls, then kernel TLS).
//!
//! Why the socket path is ours: monoio 0.2.4 offers one-shot io_uring
//! operations only (no multishot poll/recv, no provided buffers), so an
//! idle connection awaiting a read costs an in-flight operation, a task
//! and at least ~5 KB of memory. Instead the shard does its socket I/O
//! itself, one of two ways (`io` in the configuration):
//!
//! - `epoll` (the default): each shard keeps its client sockets in its own
//!   epoll set; the monoio runtime waits on that one descriptor (an
//!   io_uring poll, or its own epoll on the fallback driver) together with
//!   its timer. Ready sockets are read with `read(2)` into one per-shard
//!   buffer and fed to the no-I/O decoder; each connection with output
//!   gets one `writev(2)` per turn. One syscall per socket per turn.
//! - `uring`: each shard owns an io_uring (the `io-uring` crate, beside
//!   monoio's ring) with a multishot accept on its listener, a multishot
//!   recv per connection drawing from one provided buffer ring per shard
//!   (an idle connection parks no buffer), and the write pass as one send
//!   per connection, all submitted with one `io_uring_enter` per turn. The
//!   ring's eventfd sits in the same epoll set, so the runtime's wait is
//!   unchanged. TLS connections stay on the epoll path.
//!
//! See docs/ARCHITECTURE.md, and bench/RESULTS.md ("io_uring data path")
//! for how the two compare.

use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{error, info};

use crate::bridge::Inbox;
use crate::config::{Config, Driver};
use crate::engine::namespace::Namespaces;
use crate::metrics::Metrics;

mod accept;
pub mod access;
mod api;
pub mod auth;
pub mod cluster;
mod commands;
mod conn;
pub mod core;
mod drain;
pub mod durable;
mod held;
pub mod live;
mod peers;
mod rpc;
mod sse;
mod story;
pub mod sys;
pub mod tls;
mod uring;
mod write;

pub use core::TlsServing;

/// State shared by every shard: admission control and readiness. The only
/// mutable state shared between shards, all of it atomic.
#[derive(Debug)]
pub struct Shared {
    open: AtomicUsize,
    /// The limits `SIGHUP` may change (connection and memory caps among
    /// them).
    pub limits: live::LiveLimits,
    /// Every shard's loop-turn count (the watchdog's evidence).
    pub turns: live::TurnStamps,
    /// Set while the process RSS is above `max_memory`.
    pub memory_exceeded: AtomicBool,
    /// Shards that have started their loop.
    started: AtomicUsize,
    /// Shards the node runs.
    shards: usize,
    /// Set when draining starts (`/readyz` answers 503).
    pub draining: AtomicBool,
    /// Random per-process value that makes client ids unique across
    /// restarts.
    pub node_nonce: u32,
}

impl Shared {
    /// Shared state for `max_connections` (0 = derived from the fd limit).
    pub fn new(cfg: &Config) -> Self {
        Self {
            open: AtomicUsize::new(0),
            limits: live::LiveLimits::new(cfg),
            turns: live::TurnStamps::new(cfg.shard_count()),
            memory_exceeded: AtomicBool::new(false),
            started: AtomicUsize::new(0),
            shards: cfg.shard_count(),
            draining: AtomicBool::new(false),
            node_nonce: rand::random(),
        }
    }

    /// Whether every shard runs and the node is not draining.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) == self.shards
            && !self.draining.load(Ordering::Relaxed)
    }

    /// Takes a connection slot, if one is free.
    pub fn try_admit(&self) -> bool {
        let prev = self.open.fetch_add(1, Ordering::Relaxed);
        if prev >= self.limits.max_connections() {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives a connection slot back.
    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open connections, all shards.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections()
    }

    /// Samples the RSS against `max_memory`.
    pub fn check_memory(&self) {
        let max_memory = self.limits.max_memory();
        if max_memory == 0 {
            // Off (possibly just reloaded to off): nothing is exceeded.
            self.memory_exceeded.store(false, Ordering::Relaxed);
            return;
        }
        let over = sys::rss_bytes().is_some_and(|rss| rss > max_memory);
        self.memory_exceeded.store(over, Ordering::Relaxed);
    }
}

/// Descriptors kept free for the process itself (listeners, epoll,
/// eventfds, admin, logs, the accept spare).
pub const FD_RESERVE: u64 = 64;

/// The connection cap implied by an open-file limit.
pub fn default_max_connections(nofile: u64) -> usize {
    nofile.saturating_sub(FD_RESERVE).max(1) as usize
}

/// What every shard is given.
#[derive(Clone)]
pub struct ShardContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// Channel namespaces, resolved from the configuration once.
    pub namespaces: Arc<Namespaces>,
    /// Every shard's inbox, by shard index.
    pub inboxes: Arc<[Arc<Inbox>]>,
    /// Shared admission state.
    pub shared: Arc<Shared>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Token verification and the ticket worker, as `[auth]` asks.
    pub credentials: auth::Credentials,
    /// The `[access]` rules and the node-wide per-IP and per-user tables.
    pub access: Arc<access::NodeAccess>,
    /// The certificate and kTLS choice when `[tls]` is on (every
    /// connection is then TLS).
    pub tls: Option<TlsServing>,
    /// The story write-behind sidecar, when a namespace is collaborative
    /// and a Redis is configured (none: stories live in memory only).
    pub stories: Option<crate::sidecar::stories::StoryClient>,
    /// The cluster's shared state and the NATS worker's queue, when
    /// `[cluster] nats_url` is set.
    pub cluster: Option<(
        Arc<cluster::ClusterShared>,
        crate::sidecar::cluster::ClusterClient,
    )>,
    /// The durable namespaces' sinks, when a namespace is `durable`.
    pub durable: Option<Arc<durable::DurableRoutes>>,
    /// The backend call worker, when the node has a NATS for `rpc` and
    /// `send` (none: they answer error 127).
    pub rpc: Option<crate::sidecar::rpc::RpcClient>,
}

/// Running shards.
pub struct Shards {
    /// Their threads.
    pub threads: Vec<JoinHandle<()>>,
    /// Their inboxes.
    pub inboxes: Arc<[Arc<Inbox>]>,
    /// The address clients connect to (resolved if port 0 was asked).
    pub local_addr: std::net::SocketAddr,
}

/// One inbox per shard (created before the shards, so the sidecars that
/// answer into them can start first).
pub fn inboxes(config: &Config) -> std::io::Result<Arc<[Arc<Inbox>]>> {
    (0..config.shard_count())
        .map(|_| Inbox::new(config.inbox_capacity).map(Arc::new))
        .collect::<std::io::Result<Vec<_>>>()
        .map(Into::into)
}

/// Binds every shard's listener (so address errors surface before any
/// thread starts) and starts the shard threads.
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: Arc<Config>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    inboxes: Arc<[Arc<Inbox>]>,
    credentials: auth::Credentials,
    tls: Option<TlsServing>,
    stories: Option<crate::sidecar::stories::StoryClient>,
    cluster: Option<(
        Arc<cluster::ClusterShared>,
        crate::sidecar::cluster::ClusterClient,
    )>,
    durable: Option<Arc<durable::DurableRoutes>>,
    rpc: Option<crate::sidecar::rpc::RpcClient>,
) -> std::io::Result<Shards> {
    let n = inboxes.len();
    let opts = sys::ListenOpts {
        backlog: config.backlog,
        // The same bound the server puts on the upgrade itself.
        defer_accept: config.handshake_timeout,
        // A peer that acknowledges nothing for this long would also have
        // missed a ping and its pong deadline.
        user_timeout: config.ping_interval + config.pong_timeout,
    };
    let first = sys::listener(config.listen, opts)?;
    let local_addr = first
        .local_addr()?
        .as_socket()
        .expect("TCP listener has an IP address");
    let mut listeners = vec![first];
    for _ in 1..n {
        // With port 0, the other shards join the port the first one got.
        listeners.push(sys::listener(local_addr, opts)?);
    }
    let namespaces = Namespaces::from_config(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let access = access::NodeAccess::new(&config.access)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let ctx = ShardContext {
        access: Arc::new(access),
        namespaces: Arc::new(namespaces),
        config: config.clone(),
        inboxes: inboxes.clone(),
        shared,
        metrics,
        credentials,
        tls,
        stories,
        cluster,
        durable,
        rpc,
    };
    let cpus = allowed_cpus();
    let mut threads = Vec::with_capacity(n);
    for (id, l) in listeners.into_iter().enumerate() {
        let ctx = ctx.clone();
        let listener: OwnedFd = l.into();
        let core = cpus[id % cpus.len()];
        let t = std::thread::Builder::new()
            .name(format!("wsedge-shard-{id}"))
            .spawn(move || run_thread(id, core, ctx, listener))?;
        threads.push(t);
    }
    Ok(Shards {
        threads,
        inboxes,
        local_addr,
    })
}

/// The CPUs this process may run on (its affinity mask, as set by
/// `taskset`, a cpuset or systemd's `CPUAffinity=`), in ascending order.
/// Shard i is pinned to the i-th of them, so a node confined to CPUs 4-7
/// runs its shards there and not on CPUs 0-3.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size matches the set.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<usize> = if r == 0 {
        // SAFETY: CPU_ISSET reads the set within its size.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    cpus
}

fn run_thread(id: usize, core: usize, ctx: ShardContext, listener: OwnedFd) {
    if let Err(e) = monoio::utils::bind_to_cpu_set([core]) {
        info!(shard = id, core, error = ?e, "could not pin shard to its core");
    }
    let use_uring = match ctx.config.driver {
        Driver::Epoll => false,
        Driver::Uring => true,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    let result = if use_uring {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(shard_main(id, core, "io_uring", ctx.clone(), listener)))
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(shard_main(id, core, "epoll", ctx.clone(), listener)))
    };
    if let Err(e) = result {
        error!(shard = id, error = %e, "shard runtime failed to start");
        std::process::exit(1);
    }
}

/// Yields to the runtime once (lets it poll the driver and other tasks).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Whether the kernel can run `io = "uring"` (checked once at start and by
/// `check-config`, so a node that cannot exits with the reason before any
/// shard starts, rather than from a shard).
pub fn uring_probe() -> std::io::Result<()> {
    uring::probe()
}

async fn shard_main(id: usize, core: usize, driver: &str, ctx: ShardContext, listener: OwnedFd) {
    let shared = ctx.shared.clone();
    let mut shard = match core::Shard::new(id, ctx, listener) {
        Ok(s) => s,
        Err(e) => {
            error!(shard = id, error = %e, "shard failed to start");
            std::process::exit(1);
        }
    };
    // The runtime waits for readiness of the shard's epoll set through its
    // own driver. The wrapper only borrows the descriptor; the shard owns
    // and closes it.
    // SAFETY: the descriptor is valid for the shard's lifetime; the
    // std UnixStream wrapper is never used for I/O and is turned into a
    // monoio wrapper whose only use is `readable()`.
    let std_wrapper =
        unsafe { std::os::unix::net::UnixStream::from_raw_fd(libc::dup(shard.epoll_fd())) };
    let ready = match monoio::net::UnixStream::from_std(std_wrapper) {
        Ok(r) => r,
        Err(e) => {
            error!(shard = id, error = %e, "cannot watch the shard's epoll set");
            std::process::exit(1);
        }
    };
    #[cfg(feature = "test-hooks")]
    live::test_start_delay(id);
    info!(
        shard = id,
        core,
        driver,
        io = shard.io_name(),
        "shard started"
    );
    shared.started.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "test-hooks")]
    let mut stall = live::TestStall::for_shard(id);
    let mut turns: u64 = 0;
    loop {
        // The watchdog's evidence that this loop turns: one plain store.
        turns += 1;
        shared.turns.record(id, turns);
        #[cfg(feature = "test-hooks")]
        if stall.as_ref().is_some_and(live::TestStall::maybe_stall) {
            stall = None;
        }
        let more = shard.turn();
        if shard.stopped() {
            break;
        }
        let now = Instant::now();
        if now >= shard.next_tick() {
            shard.tick();
            if shard.stopped() {
                break;
            }
            continue;
        }
        if more {
            YieldNow(false).await;
            continue;
        }
        let wait = shard.next_wake().saturating_duration_since(now);
        monoio::select! {
            r = ready.readable(false) => {
                if let Err(e) = r {
                    error!(shard = id, error = %e, "waiting on the epoll set failed");
                }
            }
            _ = monoio::time::sleep(wait) => {}
        }
    }
    if let Some(s) = shard.uring_summary() {
        info!(
            shard = id,
            enters = s.enters,
            sqes = s.sqes,
            cqes = s.cqes,
            enobufs = s.enobufs,
            rearms = s.rearms,
            cq_overflows = s.cq_overflows,
            short_sends = s.short_sends,
            send_errors = s.send_errors,
            recv_errors = s.recv_errors,
            accept_errors = s.accept_errors,
            unexpected = s.unexpected,
            "io_uring counts"
        );
    }
    info!(shard = id, "shard stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_placed_on_the_cpus_the_process_may_use() {
        let all = allowed_cpus();
        assert!(!all.is_empty());
        let last = *all.last().unwrap();
        // Confine a thread to its last allowed CPU, as `taskset -c N` would.
        let seen = std::thread::spawn(move || {
            // SAFETY: a zeroed set is empty; CPU_SET stays within it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(last, &mut set) };
            // SAFETY: pid 0 is this thread; the size matches the set.
            let r =
                unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
            assert_eq!(r, 0);
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
    }
}
