//! Connecting to a CRI endpoint (`unix:///path` or a bare path) as a gRPC
//! client: used by berthctl and the tests, and works against any CRI runtime.
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {endpoint}: {source}")]
pub struct ConnectError {
    endpoint: String,
    source: tonic::transport::Error,
}

/// Opens a channel to a unix-socket CRI endpoint.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint).to_string();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::try_from("http://[::]:50051")
        .map_err(|source| ConnectError { endpoint: endpoint.to_string(), source })?
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let dial = crate::socket_path::SocketPath::new(std::path::Path::new(&path))?;
                tokio::net::UnixStream::connect(dial.path()).await.map(TokioIo::new)
            }
        }))
        .await
        .map_err(|source| ConnectError { endpoint: endpoint.to_string(), source })
}
