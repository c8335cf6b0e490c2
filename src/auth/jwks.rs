//! JWKS key sets: the shared, swappable set the verifier reads, and the
//! sidecar thread that fetches it over HTTPS.
//!
//! The verify path never blocks and never does I/O: it loads the current
//! set with one atomic read ([`arc_swap`]), and on an unknown `kid` sets a
//! flag and wakes the refresher. The refresher (one thread with a tokio
//! current-thread runtime) fetches at start, every
//! [`RefreshOptions::interval`], and when woken, but never sooner than
//! [`RefreshOptions::min_interval`] after its previous fetch: a flood of
//! made-up `kid`s costs the JWKS server one request per 10 s. A failed
//! fetch keeps the previous set and is retried with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::keys::{ClaimRules, KeySet, parse_jwks};

/// The key set a verifier reads, shared with the refresher.
pub(crate) struct JwksShared {
    /// `None` until the first successful load.
    pub keys: ArcSwapOption<KeySet>,
    /// The URL to fetch, or `None` for a `jwks_file` (never refreshed).
    pub url: Option<String>,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub rules: ClaimRules,
    /// A verify call met an unknown `kid` since the last fetch began.
    wanted: AtomicBool,
    wake: Notify,
    fetch_ok: AtomicU64,
    fetch_failed: AtomicU64,
    refresh_requests: AtomicU64,
}

/// Counters of a JWKS source, for metrics and `/readyz`-style checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksStatus {
    /// Whether a key set is loaded (from the file, or fetched at least once).
    pub loaded: bool,
    /// Keys in the current set.
    pub keys: usize,
    /// Successful fetches of `jwks_url`.
    pub fetch_ok: u64,
    /// Failed fetches (network, TLS, HTTP status, size, no usable key).
    pub fetch_failed: u64,
    /// Refreshes asked for by tokens with an unknown `kid` (coalesced: one
    /// per flag raise, not one per token).
    pub refresh_requests: u64,
}

impl JwksShared {
    pub fn new(
        initial: Option<KeySet>,
        url: Option<String>,
        ca_pem: Option<Vec<u8>>,
        rules: ClaimRules,
    ) -> JwksShared {
        JwksShared {
            keys: ArcSwapOption::new(initial.map(Arc::new)),
            url,
            ca_pem,
            rules,
            wanted: AtomicBool::new(false),
            wake: Notify::new(),
            fetch_ok: AtomicU64::new(0),
            fetch_failed: AtomicU64::new(0),
            refresh_requests: AtomicU64::new(0),
        }
    }

    /// Asks the refresher for a fetch; returns at once. Repeated calls
    /// before the fetch starts are one request.
    pub fn request_refresh(&self) {
        if self.url.is_some() && !self.wanted.swap(true, Ordering::AcqRel) {
            self.refresh_requests.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    pub fn status(&self) -> JwksStatus {
        let set = self.keys.load();
        JwksStatus {
            loaded: set.is_some(),
            keys: set.as_ref().map_or(0, |s| s.keys.len()),
            fetch_ok: self.fetch_ok.load(Ordering::Relaxed),
            fetch_failed: self.fetch_failed.load(Ordering::Relaxed),
            refresh_requests: self.refresh_requests.load(Ordering::Relaxed),
        }
    }
}

/// Timing and size limits of the JWKS refresher.
#[derive(Debug, Clone)]
pub struct RefreshOptions {
    /// Periodic refresh. Default 5 min: a rotated key is picked up within
    /// minutes even if no token asks for it; Centrifugo caches for 1 h.
    pub interval: Duration,
    /// Least time between two fetches. Default 10 s: bounds what made-up
    /// `kid`s can cost the JWKS server; also the first retry after a
    /// failure (doubling up to `interval`).
    pub min_interval: Duration,
    /// Whole-request timeout (connect, TLS, body). Default 5 s.
    pub timeout: Duration,
    /// Largest JWKS body accepted. Default 1 MiB (a JWKS is a few KiB).
    pub max_bytes: usize,
}

impl Default for RefreshOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            min_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            max_bytes: 1 << 20,
        }
    }
}

/// The running JWKS refresher. Dropping it stops the thread (waiting for
/// it to finish, which an in-flight fetch does not delay).
pub struct JwksRefresher {
    shared: Arc<JwksShared>,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl JwksRefresher {
    /// Starts the thread `wsedge-jwks`. The HTTPS client (and its CA file)
    /// is set up here so configuration errors are reported at start.
    pub(crate) fn spawn(
        shared: Arc<JwksShared>,
        opts: RefreshOptions,
    ) -> Result<JwksRefresher, String> {
        let url = shared
            .url
            .clone()
            .ok_or("no auth.jwks_url configured: nothing to refresh")?;
        let client = build_client(shared.ca_pem.as_deref(), &opts)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("JWKS refresher runtime: {e}"))?;
        let stop = Arc::new(Notify::new());
        let thread = std::thread::Builder::new()
            .name("wsedge-jwks".into())
            .spawn({
                let shared = shared.clone();
                let stop = stop.clone();
                move || rt.block_on(refresh_loop(shared, client, url, opts, stop))
            })
            .map_err(|e| format!("JWKS refresher thread: {e}"))?;
        Ok(JwksRefresher {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits up to `timeout` for the first key set (for start-up: a node
    /// may prefer to serve only once it can check tokens). Returns whether
    /// a set is loaded. Polls every 10 ms; not for the shard threads.
    pub fn wait_loaded(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.shared.keys.load().is_some() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The source's counters.
    pub fn status(&self) -> JwksStatus {
        self.shared.status()
    }
}

impl Drop for JwksRefresher {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn build_client(ca_pem: Option<&[u8]>, opts: &RefreshOptions) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .https_only(true)
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("wsedge/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("auth.jwks_ca_file: {}", error_chain(&e)))?;
        if certs.is_empty() {
            return Err("auth.jwks_ca_file holds no certificate".into());
        }
        b = b.tls_certs_only(certs);
    }
    b.build()
        .map_err(|e| format!("JWKS HTTPS client: {}", error_chain(&e)))
}

async fn refresh_loop(
    shared: Arc<JwksShared>,
    client: reqwest::Client,
    url: String,
    opts: RefreshOptions,
    stop: Arc<Notify>,
) {
    let mut failures: u32 = 0;
    loop {
        // Cleared before the fetch: a kid first seen while it runs asks
        // again, and is served after `min_interval`.
        shared.wanted.store(false, Ordering::Release);
        let started = Instant::now();
        let result = tokio::select! {
            r = fetch(&client, &url, opts.max_bytes) => r,
            _ = stop.notified() => return,
        };
        let result = result.and_then(|body| parse_jwks(&body, &shared.rules));
        let next = match result {
            Ok(set) => {
                failures = 0;
                shared.fetch_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    url = %url,
                    keys = set.keys.len(),
                    skipped = set.skipped.len(),
                    "JWKS loaded"
                );
                for why in &set.skipped {
                    tracing::warn!(url = %url, "JWKS key skipped: {why}");
                }
                shared.keys.store(Some(Arc::new(set)));
                opts.interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                shared.fetch_failed.fetch_add(1, Ordering::Relaxed);
                let backoff = opts
                    .min_interval
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(opts.interval);
                tracing::warn!(
                    url = %url,
                    retry_in = ?backoff,
                    "JWKS fetch failed, keeping the previous keys: {e}"
                );
                backoff
            }
        };
        let periodic = started + next;
        let earliest = started + opts.min_interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(periodic) => break,
                _ = stop.notified() => return,
                _ = shared.wake.notified() => {
                    if !shared.wanted.load(Ordering::Acquire) {
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(earliest) => break,
                        _ = stop.notified() => return,
                    }
                }
            }
        }
    }
}

/// GET `url`, refusing bodies above `max` bytes.
async fn fetch(client: &reqwest::Client, url: &str, max: usize) -> Result<Vec<u8>, String> {
    let mut resp = client
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("body larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("body larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line (reqwest's own text omits the TLS
/// or DNS cause that says what to fix).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
