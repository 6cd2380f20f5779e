//! The Prometheus endpoint: plain HTTP/1.1 on `[metrics] address`, `GET
//! /metrics` only. Each scrape asks the manager for the node's state (one
//! List call per pod) and encodes it with berthd's counters.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use slog::{warn, Logger};

use crate::manager::Manager;
use berth_core::error::{Error, Result};

/// How long a scrape may take before the client gets an error.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to send its request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves scrapes in a task of its own; returns the
/// address bound (port 0 picks one).
pub async fn start(addr: SocketAddr, mgr: Arc<Manager>, log: Logger) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid(format!("metrics address {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::internal(format!("metrics address: {e}")))?;
    tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok((c, _)) => c,
                Err(e) => {
                    warn!(log, "metrics accept failed"; "error" => %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mgr = mgr.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| scrape(req, mgr.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn scrape(
    req: Request<hyper::body::Incoming>,
    mgr: Arc<Manager>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "berthd serves /metrics only\n".into());
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, mgr.metrics_snapshot()).await {
        Ok(snap) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", mgr.metrics().encode(snap)),
        Err(_) => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the node's state took too long to gather\n".into())
        }
    }
}
