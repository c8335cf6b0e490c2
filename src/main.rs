//! The `wsedge` binary: command line, logging and process lifecycle only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use wsedge::auth::{AuthMode, JwksRefresher, RefreshOptions, Verifier};
use wsedge::bridge::ShardMsg;
use wsedge::config::{Config, Driver, LogFormat, Overrides, SocketIo};
use wsedge::metrics::Metrics;
use wsedge::service::{LogFilterReload, Notifier, Reloader, Watch};
use wsedge::shard::auth::Credentials;
use wsedge::shard::cluster::{ClusterShared, ShardSink};
use wsedge::shard::tls::ktls::ktls_supported;
use wsedge::shard::{self, Shared, TlsServing};
use wsedge::sidecar::cluster::{ClusterWorker, spawn_cluster_worker};
use wsedge::sidecar::stories::{StoryOptions, StoryWorker, spawn_story_worker};
use wsedge::sidecar::tickets::{InboxSink, TicketOptions, TicketWorker, spawn_ticket_worker};
use wsedge::sidecar::{admin, api};
use wsedge::tls::{KtlsMode, TlsAcceptorConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring WebSocket edge node.
#[derive(Parser, Debug)]
#[command(name = "wsedge", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// TOML configuration file.
    #[arg(long, global = true, env = "WSEDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Client WebSocket listen address.
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Admin HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, global = true)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Number of shards (0 = one per core).
    #[arg(long, global = true)]
    shards: Option<usize>,
    /// io driver.
    #[arg(long, global = true, value_enum)]
    driver: Option<Driver>,
    /// Socket I/O of the shards (readiness or io_uring completions).
    #[arg(long, global = true, value_enum)]
    io: Option<SocketIo>,
    /// Enable the echo endpoint at this path (conformance testing).
    #[arg(long, global = true)]
    echo_path: Option<String>,
    /// Largest client message in bytes (1009 beyond it).
    #[arg(long, global = true)]
    max_message_size: Option<usize>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the edge node (the default).
    Run,
    /// Validate the configuration and print the effective values.
    CheckConfig,
    /// Check this machine's kernel settings for a connection count.
    Tune {
        /// Report what falls short (the only mode).
        #[arg(long)]
        check: bool,
        /// Connections the node should hold.
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
    },
}

/// Installs the global log subscriber; returns what replaces its filter on
/// `SIGHUP` (`log_level`).
fn init_logging(cfg: &Config) -> LogFilterReload {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log_level);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            filter_reload(handle)
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            filter_reload(handle)
        }
    }
}

fn filter_reload<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> LogFilterReload {
    Box::new(move |level| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        shards: cli.shards,
        driver: cli.driver,
        io: cli.io,
        echo_path: cli.echo_path.clone(),
        max_message_size: cli.max_message_size,
        log_format: cli.log_format,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsedge: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Some(Cmd::CheckConfig) => {
            // The certificate and key are part of the configuration: a
            // file `run` would refuse fails the check too.
            if config.tls.enabled()
                && let Err(e) = TlsAcceptorConfig::new(&config.tls)
            {
                eprintln!("wsedge: invalid configuration: tls: {e}");
                return ExitCode::from(2);
            }
            // So is `io = "uring"` on a kernel that cannot run it;
            // `io = "auto"` is valid either way, and the check says which.
            if let Err(e) = uring_check(&config) {
                eprintln!("wsedge: invalid configuration: {e}");
                return ExitCode::from(2);
            }
            if config.io == SocketIo::Auto {
                match SocketIo::Auto.resolve(config.tls.enabled(), uring_probe) {
                    (SocketIo::Uring, _) => eprintln!("wsedge: io = \"auto\" will use io_uring"),
                    (_, Some(e)) => {
                        eprintln!("wsedge: io = \"auto\" will use epoll (io_uring: {e})")
                    }
                    _ => eprintln!("wsedge: io = \"auto\" will use epoll (TLS)"),
                }
            }
            print!("{}", config.to_toml());
            eprintln!("wsedge: configuration is valid");
            ExitCode::SUCCESS
        }
        Some(Cmd::Tune { connections, .. }) => {
            let findings = wsedge::tune::check(
                &wsedge::tune::read_kernel(),
                connections,
                config.backlog as u64,
            );
            let (text, ok) = wsedge::tune::report(&findings, connections);
            print!("{text}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Some(Cmd::Run) | None => run(config, cli.config, overrides),
    }
}

/// What `[auth]` asks for: the JWT verifier (and its JWKS refresher), the
/// Redis ticket worker; and a loud warning when a node reachable from
/// elsewhere takes anyone.
fn credentials(
    config: &Config,
    inboxes: &Arc<[Arc<wsedge::bridge::Inbox>]>,
    metrics: &Arc<Metrics>,
) -> Result<(Credentials, Option<JwksRefresher>, Option<TicketWorker>), String> {
    let auth = &config.auth;
    let mut credentials = Credentials::default();
    let mut jwks = None;
    let mut worker = None;
    if matches!(auth.mode, AuthMode::Jwt | AuthMode::JwtOrTicket) {
        let verifier = Arc::new(Verifier::new(auth)?);
        jwks = verifier.spawn_jwks_refresh(RefreshOptions::default())?;
        credentials.verifier = Some(verifier);
    }
    if matches!(auth.mode, AuthMode::Ticket | AuthMode::JwtOrTicket) {
        let url = auth
            .redis_url
            .as_deref()
            .ok_or("auth.redis_url is required by the ticket modes")?;
        let w = spawn_ticket_worker(
            url,
            TicketOptions::default(),
            InboxSink(inboxes.clone()),
            metrics.tickets(),
        )
        .map_err(|e| format!("ticket worker: {e}"))?;
        credentials.tickets = Some(w.client());
        worker = Some(w);
    }
    if auth.mode == AuthMode::None && !config.listen.ip().is_loopback() {
        warn!(
            listen = %config.listen,
            "AUTHENTICATION IS OFF (auth.mode = \"none\") on a non-loopback address: \
             anyone who reaches this port may connect as any user and use every channel"
        );
    }
    Ok((credentials, jwks, worker))
}

/// The story write-behind worker (`wsedge-stories`), when a Redis is
/// configured (`[collab] redis_url`, else `[auth] redis_url`); without one
/// live story state stays in memory only, and the log says so once.
fn story_worker(
    config: &Config,
    inboxes: &Arc<[Arc<wsedge::bridge::Inbox>]>,
    metrics: &Arc<Metrics>,
) -> Result<Option<StoryWorker>, String> {
    if !config.namespace.iter().any(|n| n.collaboration) {
        return Ok(None);
    }
    let Some(url) = config.story_redis_url() else {
        info!(
            "no [collab] or [auth] redis_url: live story state stays in memory only and does \
             not survive a restart of its home shard's node"
        );
        return Ok(None);
    };
    let opts = StoryOptions {
        story_ttl: config.collab.story_ttl,
        ..StoryOptions::default()
    };
    let worker = spawn_story_worker(url, opts, InboxSink(inboxes.clone()), metrics.stories())
        .map_err(|e| format!("story worker: {e}"))?;
    info!(
        story_ttl = ?config.collab.story_ttl,
        from = if config.collab.redis_url.is_some() { "collab.redis_url" } else { "auth.redis_url" },
        "live story state is written behind to Redis"
    );
    Ok(Some(worker))
}

/// The cluster worker (`wsedge-cluster`), when `[cluster] nats_url` is
/// set: NATS joins this node to the others.
fn cluster_worker(
    config: &Config,
    inboxes: &Arc<[Arc<wsedge::bridge::Inbox>]>,
    metrics: &Arc<Metrics>,
) -> Result<Option<(ClusterWorker, Arc<ClusterShared>)>, String> {
    let Some(mut opts) = config.cluster.options() else {
        return Ok(None);
    };
    opts.history_streams = history_streams(config)?;
    let shared = ClusterShared::new(opts.node_name.clone(), opts.request_timeout);
    let sink = ShardSink::new(shared.clone(), inboxes.clone(), metrics.cluster());
    let (node, cluster) = (opts.node_name.clone(), opts.cluster_name.clone());
    let worker = spawn_cluster_worker(opts, inboxes.len() as u16, sink, metrics.cluster())
        .map_err(|e| format!("cluster worker: {e}"))?;
    info!(node = %node, cluster = %cluster, "joining the cluster through NATS");
    Ok(Some((worker, shared)))
}

/// The JetStream stream of each namespace with `history_backend =
/// "jetstream"`, by the namespace index the shards use.
fn history_streams(
    config: &Config,
) -> Result<Vec<Option<wsedge::sidecar::cluster::HistoryStream>>, String> {
    use wsedge::engine::namespace::{HistoryBackend, Namespaces};
    let namespaces = Namespaces::from_config(config).map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for (id, name, o) in namespaces.iter() {
        if streams.len() <= id.index() {
            streams.resize(id.index() + 1, None);
        }
        if o.history_backend == HistoryBackend::Jetstream {
            streams[id.index()] = Some(wsedge::sidecar::cluster::HistoryStream {
                namespace: std::sync::Arc::from(name),
                size: o.history_size,
                ttl: std::time::Duration::from_millis(o.history_ttl_ms),
                members: o.mirrors_members(),
            });
        }
    }
    Ok(streams)
}

/// What `[tls]` asks for: the certificate loaded (a bad file stops the
/// node) and, with `ktls = "auto"`, the kernel probed for kTLS once, here
/// on the main thread rather than on a shard's first connection.
fn tls_serving(config: &Config, metrics: &Metrics) -> Result<Option<TlsServing>, String> {
    if !config.tls.enabled() {
        return Ok(None);
    }
    let acceptor = TlsAcceptorConfig::new(&config.tls).map_err(|e| format!("tls: {e}"))?;
    let ktls = config.tls.ktls == KtlsMode::Auto && {
        let support = ktls_supported();
        if let Some(reason) = support.unavailable_reason() {
            info!(
                reason = %reason,
                "kernel TLS unavailable: TLS records are encrypted in user space (rustls); \
                 `modprobe tls` enables it"
            );
        }
        support.available()
    };
    metrics.set_ktls(ktls);
    info!(
        min_version = ?config.tls.min_version,
        ktls,
        handshakes_per_turn = config.tls.handshakes_per_turn,
        "TLS on: clients connect with wss://"
    );
    Ok(Some(TlsServing {
        acceptor: Arc::new(acceptor),
        ktls,
    }))
}

/// `io = "uring"` on plain connections needs a kernel that can run the
/// shards' rings: probed once, here, so a node that cannot exits at start
/// with the reason (it does not fall back to `epoll` on its own). With
/// `[tls]` the shards use epoll whatever `io` says.
fn uring_check(config: &Config) -> Result<(), std::io::Error> {
    if config.io != SocketIo::Uring || config.tls.enabled() {
        return Ok(());
    }
    uring_probe()
}

/// The kernel's answer to "can the shards run io_uring rings?".
/// Test-only (feature `test-hooks`): `EDGE_TEST_URING_UNAVAILABLE=1`
/// answers no, as a kernel with `kernel.io_uring_disabled` would.
fn uring_probe() -> Result<(), std::io::Error> {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("EDGE_TEST_URING_UNAVAILABLE").is_some() {
        return Err(std::io::Error::other(
            "io_uring unavailable (EDGE_TEST_URING_UNAVAILABLE)",
        ));
    }
    shard::uring_probe()
}

/// Turns `io = "auto"` into the path the shards take, saying which in the
/// log; `epoll` and `uring` pass unchanged.
fn resolve_io(config: &mut Config) {
    let asked = config.io;
    let (io, why_not) = asked.resolve(config.tls.enabled(), uring_probe);
    config.io = io;
    if asked != SocketIo::Auto {
        return;
    }
    match why_not {
        None if io == SocketIo::Uring => info!("io auto: the shards use io_uring"),
        None => info!("io auto: TLS is on, the shards use epoll"),
        Some(e) => warn!(
            reason = %e,
            "io auto: io_uring is unavailable here, the shards use epoll"
        ),
    }
}

fn run(mut config: Config, file: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let log_filter = init_logging(&config);
    // SIGHUP compares the file with this (`io = "auto"` as written, not
    // the path it resolved to: else every reload would report `io` changed).
    let as_configured = config.clone();
    resolve_io(&mut config);
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::new(&config));
    let tls = match tls_serving(&config, &metrics) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot load the TLS certificate");
            eprintln!("wsedge: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = uring_check(&config) {
        error!(error = %e, "cannot start the io_uring data path");
        eprintln!("wsedge: {e}");
        return ExitCode::from(2);
    }
    // Signals are blocked into the iterator before any thread starts.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match shard::sys::http_listener(config.admin_listen) {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %config.admin_listen, error = %e, "cannot bind the admin listener");
            return ExitCode::FAILURE;
        }
    };
    let api_listener = match shard::sys::http_listener(config.api_listen) {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %config.api_listen, error = %e, "cannot bind the server API listener");
            return ExitCode::FAILURE;
        }
    };
    let inboxes = match shard::inboxes(&config) {
        Ok(i) => i,
        Err(e) => {
            error!(error = %e, "cannot create the shard inboxes");
            return ExitCode::FAILURE;
        }
    };
    // Kept alive for the life of the node (dropping them stops them).
    let (credentials, _jwks, _tickets) = match credentials(&config, &inboxes, &metrics) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot set up authentication");
            return ExitCode::FAILURE;
        }
    };
    // Kept alive for the life of the node; shards get `StoryWorker::client`.
    let stories = match story_worker(&config, &inboxes, &metrics) {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, "cannot start the story worker");
            return ExitCode::FAILURE;
        }
    };
    // Kept alive for the life of the node; shards get its queue.
    let cluster = match cluster_worker(&config, &inboxes, &metrics) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot start the cluster worker");
            return ExitCode::FAILURE;
        }
    };
    // Before the shards: a durable namespace's publication is refused
    // unless its worker (and spill) is running. Stopped after the shards
    // drained, so every event they queued reaches the spill.
    let durable = match shard::durable::DurableRoutes::start(&config) {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "cannot start the durable events worker");
            return ExitCode::FAILURE;
        }
    };
    // Kept alive for the life of the node; shards get `RpcWorker::client`.
    let rpc = match wsedge::sidecar::rpc::start(&config, &inboxes, metrics.rpc()) {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, "cannot start the rpc worker");
            return ExitCode::FAILURE;
        }
    };
    if let Some((routes, _)) = &durable {
        metrics.durable_sinks(routes.sinks());
    }
    let (durable_routes, durable_workers) = match durable {
        Some((r, w)) => (Some(Arc::new(r)), Some(w)),
        None => (None, None),
    };
    let shards = match shard::start(
        config.clone(),
        shared.clone(),
        metrics.clone(),
        inboxes,
        credentials,
        tls.clone(),
        stories.as_ref().map(StoryWorker::client),
        cluster.as_ref().map(|(w, s)| (s.clone(), w.client())),
        durable_routes,
        rpc.as_ref().map(wsedge::sidecar::rpc::RpcWorker::client),
    ) {
        Ok(s) => s,
        Err(e) => {
            error!(addr = %config.listen, error = %e, "cannot start the shards");
            return ExitCode::FAILURE;
        }
    };
    // Before the admin server: its per-shard series exist from the first
    // scrape that can see the node ready.
    let mut watch = Watch::new(
        shared.clone(),
        &metrics,
        Notifier::from_env(),
        Instant::now(),
    );
    let admin_addr = match admin::start(admin_listener, metrics.clone(), shared.clone()) {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "cannot start the admin server");
            return ExitCode::FAILURE;
        }
    };
    let api_addr = match api::start(
        api_listener,
        &config,
        shards.inboxes.clone(),
        shared.clone(),
        &metrics,
        cluster.as_ref().map(|(w, _)| w),
    ) {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "cannot start the server API");
            return ExitCode::FAILURE;
        }
    };
    if config.api_key.is_none() {
        warn!("no api_key configured: every server API call is refused with 401");
    }
    // Backend events to users: stopped first at a drain, so its group
    // hands the partitions to the other nodes.
    let consuming = match wsedge::sidecar::durable::consume::start(
        &config,
        shards.inboxes.clone(),
        shared.clone(),
    ) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot start the durable consumer");
            return ExitCode::FAILURE;
        }
    };
    if let Some(c) = &consuming {
        metrics.durable_consumers(&c.sources);
    }
    info!(
        client = %shards.local_addr,
        admin = %admin_addr,
        api = %api_addr,
        shards = shards.threads.len(),
        max_connections = shared.max_connections(),
        tls = tls.is_some(),
        "listening"
    );

    let mut reloader = Reloader::new(
        file,
        overrides,
        as_configured,
        Some(log_filter),
        shared.clone(),
        metrics.clone(),
        tls,
    );

    // Run until a signal, or until a shard dies (then exit non-zero so the
    // supervisor restarts the node).
    loop {
        let mut stop = None;
        for sig in signals.pending() {
            if sig == SIGHUP {
                watch.reloading();
                let outcome = reloader.reload();
                watch.reloaded(&outcome.summary());
            } else {
                stop = Some(sig);
            }
        }
        if let Some(sig) = stop {
            info!(signal = sig, "signal received: draining");
            break;
        }
        if let Some(i) = shards.threads.iter().position(|t| t.is_finished()) {
            error!(shard = i, "a shard stopped unexpectedly; exiting");
            return ExitCode::FAILURE;
        }
        watch.tick(Instant::now(), |_| false);
        std::thread::sleep(Duration::from_millis(50));
    }

    watch.stopping();
    if let Some(c) = consuming {
        c.shutdown();
    }
    shared.draining.store(true, Ordering::Relaxed);
    for (i, inbox) in shards.inboxes.iter().enumerate() {
        // Drain must get through even if an inbox is momentarily full; a
        // shard that stays full for a second is beyond help.
        let give_up = Instant::now() + Duration::from_secs(1);
        let mut msg = ShardMsg::Drain;
        while let Err(back) = inbox.push(msg) {
            if Instant::now() > give_up {
                warn!(shard = i, "inbox full: cannot ask the shard to drain");
                break;
            }
            msg = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // A second stop signal exits at once; SIGHUP still reloads.
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                reloader.reload();
                continue;
            }
            warn!(signal = sig, "second signal: exiting now");
            std::process::exit(1);
        }
    });
    // Wait for every shard to drain, still watching the ones that have
    // not finished (the watchdog keeps its pings while they turn).
    let grace = config.drain_timeout + Duration::from_secs(5);
    let deadline = Instant::now() + grace;
    let threads = shards.threads;
    loop {
        let now = Instant::now();
        if threads.iter().all(|t| t.is_finished()) {
            break;
        }
        if now >= deadline {
            warn!("a shard did not finish draining in time");
            break;
        }
        watch.tick(now, |i| threads[i].is_finished());
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
    // The stories' last changes reach Redis before the process goes (the
    // worker flushes for at most its timeout, 2 s).
    if let Some(w) = stories {
        w.shutdown();
    }
    if let Some((w, _)) = cluster {
        w.shutdown();
    }
    if let Some(w) = durable_workers {
        w.shutdown();
    }
    if let Some(w) = rpc {
        w.shutdown();
    }
    info!("drained; exiting");
    ExitCode::SUCCESS
}
