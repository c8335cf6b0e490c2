//! The durable-events sidecar: events that must not be lost when the
//! broker is slow or down are kept on local disk until the broker has
//! them, then sent in order.
//!
//! Layout: for now only the on-disk log itself, [`spill`] (synchronous,
//! owned by the worker thread); the worker and its broker come later.

pub mod spill;
