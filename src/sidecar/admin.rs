//! Admin HTTP on its own thread (tokio current-thread + hyper), never on
//! the client port: `/healthz` (process alive), `/readyz` (accepting
//! clients; 503 while starting or draining), `/metrics` (Prometheus text,
//! with a few node-wide gauges read at the scrape).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::http::{Body, respond};
use crate::metrics::Metrics;
use crate::shard::{Shared, sys};

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if shared.ready() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/metrics" => {
            let mut text = metrics.encode();
            text.insert_str(0, &node_gauges(&shared));
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Node-wide gauges that belong to no shard, read at the scrape: the
/// connection cap, readiness (as `/readyz`), and descriptors in use
/// against the limit (fd headroom).
fn node_gauges(shared: &Shared) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge(
        "wsedge_connections_max",
        "Connection cap in force.",
        shared.max_connections() as u64,
    );
    gauge(
        "wsedge_ready",
        "1 while /readyz answers 200 (every shard serves, not draining), else 0.",
        shared.ready() as u64,
    );
    if let Some(open) = sys::open_fds() {
        gauge(
            "wsedge_process_open_fds",
            "File descriptors the process has open.",
            open,
        );
    }
    gauge(
        "wsedge_process_max_fds",
        "The process's soft open-file limit (RLIMIT_NOFILE).",
        sys::nofile_limit(),
    );
    out
}

/// Starts the admin server on its own thread; returns the bound address.
pub fn start(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> std::io::Result<SocketAddr> {
    super::http::serve("wsedge-admin", listener, move |req| {
        handle(req, metrics.clone(), shared.clone())
    })
}
