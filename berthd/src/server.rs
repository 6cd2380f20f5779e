//! Serving the CRI on a unix socket.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use protocol::cri::image_service_server::ImageServiceServer;
use protocol::cri::runtime_service_server::RuntimeServiceServer;
use protocol::images::images_server::ImagesServer;
use slog::Logger;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::cri_server::CriServer;
use crate::h2_authority::AuthorityFix;
use crate::manager::Manager;
use berth_core::error::{Error, IoContext, Result};

/// Largest message accepted or sent (kubelet uses 16 MiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// How long connected clients get to finish their calls once berthd is
/// asked to stop; a client that never lets go does not hold berthd.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds `listen` (0660), says so on `ready`, and serves until `shutdown`
/// resolves.
pub async fn serve(
    listen: &Path,
    mgr: Arc<Manager>,
    stream: Arc<berth_streaming::server::StreamServer>,
    log: Logger,
    ready: tokio::sync::oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if let Some(dir) = listen.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(listen) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::internal(format!("removing stale socket {}: {e}", listen.display())))
        }
        _ => {}
    }
    let listener = protocol::socket_path::SocketPath::new(listen)
        .and_then(|p| tokio::net::UnixListener::bind(p.path()))
        .ctx(|| format!("binding {}", listen.display()))?;
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o660))
        .ctx(|| format!("chmod {}", listen.display()))?;
    let metrics = mgr.metrics().clone();
    let svc = CriServer::new(mgr, stream, log.clone());
    let stopping = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.notify_one();
        }
    };
    // Connections queue on the bound socket until the server below accepts them.
    let _ = ready.send(());
    let server = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| CallMetrics { inner, metrics: metrics.clone() }))
        .add_service(
            RuntimeServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(ImagesServer::new(svc))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new)),
            shutdown,
        );
    tokio::select! {
        r = server => r.map_err(|e| Error::internal(format!("serving CRI: {e}")))?,
        _ = async { stopping.notified().await; tokio::time::sleep(DRAIN).await } => {
            slog::warn!(log, "clients still connected after the drain time; stopping anyway"; "drain_s" => DRAIN.as_secs());
        }
    }
    let _ = std::fs::remove_file(listen);
    Ok(())
}

/// Counts every CRI call by method and gRPC code, with its latency (until
/// the response's headers, which carry the code of a failed unary call).
#[derive(Clone)]
struct CallMetrics<S> {
    inner: S,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for CallMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, std::result::Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = crate::metrics::method_of(req.uri().path()).to_string();
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .map(tonic::Code::from)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Internal,
            };
            let name = if code == tonic::Code::Ok { "OK".to_string() } else { format!("{code:?}") };
            metrics.observe_call(&method, &name, started.elapsed().as_secs_f64());
            r
        })
    }
}
