//! Sidecar threads: work that must never run on a shard (slow or
//! blocking I/O): the admin HTTP server and the server HTTP API, each on
//! its own thread; the one-time ticket redemption through Redis on its
//! own; live story state written behind to Redis on its own; the cluster's
//! NATS transport on its own ([`cluster`]); clients' backend calls over
//! NATS on their own ([`rpc`]); other broker workers (JetStream, Kafka)
//! join here.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod durable;
pub mod http;
pub mod rpc;
pub mod stories;
pub mod tickets;

use std::future::Future;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

/// A sidecar thread running one future on its own current-thread tokio
/// runtime until told to stop. Dropping the handle stops the thread
/// without waiting; [`WorkerThread::shutdown`] stops it and waits.
pub struct WorkerThread {
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerThread {
    /// Starts thread `name` running `work(stop)` on `runtime`; `stop`
    /// resolves when the handle is shut down or dropped.
    pub fn spawn<F>(
        name: &'static str,
        runtime: tokio::runtime::Runtime,
        work: impl FnOnce(oneshot::Receiver<()>) -> F + Send + 'static,
    ) -> io::Result<Self>
    where
        F: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || runtime.block_on(work(stop_rx)))?;
        Ok(Self {
            name,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Tells the worker to stop and waits for its thread (the worker's own
    /// stop path bounds how long that takes).
    pub fn shutdown(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(thread = self.name, "a sidecar worker thread panicked");
        }
    }
}

/// A Redis connection manager for a sidecar on `runtime`: it connects on
/// first use; a reconnect tries twice more, quickly (50 ms, then up to
/// 500 ms); every command answers within `timeout`. The worker's own
/// backoff paces what it sends while Redis is down.
pub(crate) fn redis_manager(
    runtime: &tokio::runtime::Runtime,
    client: redis::Client,
    timeout: Duration,
) -> io::Result<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let _in_runtime = runtime.enter();
    redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(io::Error::other)
}
