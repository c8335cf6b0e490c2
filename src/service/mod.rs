//! Running under a service manager: systemd's notifications and watchdog,
//! the shard-loop liveness check behind them, and `SIGHUP` reloads. Used by
//! the `wsedge` binary's main thread; nothing here runs on a shard.
//!
//! Layout:
//! - `notify.rs`: [`Notifier`], `sd_notify(3)` through the `sd-notify`
//!   crate (a no-op without `NOTIFY_SOCKET`).
//! - `liveness.rs`: deciding from the shards' loop-turn counters whether
//!   every shard turns, and when to ping the watchdog (no I/O, no clock).
//! - `watch.rs`: [`Watch`], the main thread's periodic look that ties the
//!   two to the logs and metrics.
//! - `reload.rs`: [`Reloader`], what `SIGHUP` changes on a running node.

pub mod liveness;
pub mod notify;
pub mod reload;
pub mod watch;

pub use notify::Notifier;
pub use reload::{LogFilterReload, Reloader};
pub use watch::Watch;
