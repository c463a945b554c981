//! The small HTTP server of a process: the worker's `/metrics` and
//! `/healthz` (read from its [`Status`]), and the routes of any other
//! command that serves HTTP. It owns the listening socket and the
//! connection limits; what each path answers is given by the caller.
//!
//! `/healthz` answers 200 when the worker is connected to the broker and no
//! running attempt is stalled, 503 otherwise, with a JSON body saying why
//! (see [`Status::health`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::status::Status;

/// How long one HTTP connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once.
const MAX_CONNECTIONS: usize = 32;

/// A response with a body in memory.
pub type Reply = Response<Full<Bytes>>;

/// A listening HTTP server; stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Listens on `addr` (port 0 picks a free one) and answers every
    /// request with `handler`, at most [`MAX_CONNECTIONS`] connections at
    /// once, each for at most [`CONNECTION_TIMEOUT`].
    pub async fn start<H, F>(addr: SocketAddr, handler: H) -> std::io::Result<HttpServer>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Reply> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "http: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let answer = handler(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                    drop(permit);
                });
            }
        });
        Ok(HttpServer { addr, task })
    }

    /// Serves a worker's `/metrics` and `/healthz` from `status`, which
    /// learns the address.
    pub async fn worker(addr: SocketAddr, status: Status) -> std::io::Result<HttpServer> {
        let routes = status.clone();
        let server = HttpServer::start(addr, move |req| {
            let answer = worker_route(&routes, req.method(), req.uri().path());
            async move { answer }
        })
        .await?;
        status.set_metrics_addr(server.addr());
        Ok(server)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response with status `code`, a `Content-Type` and `body`.
pub fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = code;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// A plain-text response.
pub fn text(code: StatusCode, body: impl Into<String>) -> Reply {
    reply(code, "text/plain; charset=utf-8", body.into())
}

/// The worker's answer to `method path`.
fn worker_route(status: &Status, method: &Method, path: &str) -> Reply {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match path {
        "/metrics" => {
            status.refresh_metrics();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                status.metrics().encode(),
            )
        }
        "/healthz" => {
            let health = status.health();
            let code = if health.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&health).unwrap_or_default() + "\n";
            reply(code, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        ),
    }
}
