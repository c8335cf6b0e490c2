//! Admin HTTP on its own thread (tokio current-thread + hyper), never on
//! the client port: `/healthz` (process alive), `/readyz` (accepting
//! clients; 503 while starting or draining), `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{debug, error};

use crate::metrics::Metrics;
use crate::shard::Shared;

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n",
        ));
    }
    Ok(match req.uri().path() {
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
    })
}

/// Starts the admin server on its own thread; returns the bound address.
pub fn start(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("wsedge-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let (stream, _) = match listener.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(error = %e, "admin accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let (metrics, shared) = (metrics.clone(), shared.clone());
                    tokio::spawn(async move {
                        let svc =
                            service_fn(move |req| handle(req, metrics.clone(), shared.clone()));
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            debug!(error = %e, "admin connection error");
                        }
                    });
                }
            });
        })?;
    Ok(addr)
}
