//! Admin HTTP on its own thread (tokio current-thread + hyper), never on
//! the client port: `/healthz` (process alive), `/readyz` (accepting
//! clients; 503 while starting or draining), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::http::{Body, respond};
use crate::metrics::Metrics;
use crate::shard::Shared;

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
            // Node-wide gauges that belong to no shard.
            text.insert_str(
                0,
                &format!(
                    "# HELP wsedge_connections_max Connection cap in force.\n# TYPE wsedge_connections_max gauge\nwsedge_connections_max {}\n",
                    shared.max_connections()
                ),
            );
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
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
