//! What the sidecar HTTP servers share: one thread running a tokio
//! current-thread runtime that accepts on a std listener and serves each
//! connection with hyper's HTTP/1.1, plus the response builder.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{debug, error};

/// A complete response body.
pub type Body = Full<Bytes>;

/// A response with `status`, a `content-type` and `body`.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Serves HTTP/1.1 on `listener` from a new thread named `name`, answering
/// every request with `handler`; returns the bound address. Errors (runtime
/// or thread creation) surface here, before anything is served; a failed
/// accept is logged and retried after 100 ms (e.g. out of descriptors).
pub fn serve<H, F>(
    name: &'static str,
    listener: std::net::TcpListener,
    handler: H,
) -> std::io::Result<SocketAddr>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        error!(server = name, error = %e, "listener failed");
                        return;
                    }
                };
                loop {
                    let (stream, _) = match listener.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(server = name, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let reply = handler(req);
                            async move { Ok::<_, std::convert::Infallible>(reply.await) }
                        });
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            debug!(server = name, error = %e, "connection error");
                        }
                    });
                }
            });
        })?;
    Ok(addr)
}
