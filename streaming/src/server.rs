//! berthd's CRI streaming server: CRI Exec and PortForward answer with a URL
//! on it; the URL's single-use token (one minute by default) names the
//! prepared request. A client (kubelet's proxy, crictl, berthctl) upgrades
//! the HTTP request to SPDY/3.1 and speaks Kubernetes' remotecommand protocol
//! (`v4.channel.k8s.io` down to `channel.k8s.io`: stdin, stdout, stderr,
//! error and resize streams) or `portforward.k8s.io` (a data and an error
//! stream per connection). An exec's process runs in the shim, reached
//! through the sandbox's io socket; a forwarded connection is made inside
//! the pod's network namespace.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use protobuf::Message;
use protocol::io_stream::{read_frame, write_frame, Frame as IoFrame};
use slog::{info, warn, Logger};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::spdy::{self, FLAG_FIN};
use berth_core::error::{Error, IoContext, Result};

mod exec_session;
mod port_forward;

use exec_session::{exec_session, ws_exec_session};
use port_forward::{port_forward_session, query_ports, ws_port_forward_session};

/// remotecommand subprotocols, most preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// How long a client has to open its streams after the upgrade.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A prepared interactive exec.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    /// Container to run in.
    pub container_id: String,
    /// Command.
    pub cmd: Vec<String>,
    /// Terminal.
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr.
    pub stderr: bool,
    /// The shim's io socket.
    pub io_socket: PathBuf,
    /// Attach to the container's own stdio (`cmd` is empty).
    pub attach: bool,
}

/// A prepared port-forward.
#[derive(Clone, Debug)]
pub struct PortForwardRequest {
    /// Pod sandbox id.
    pub pod_id: String,
    /// Its pinned network namespace; None for a host-network pod.
    pub netns: Option<PathBuf>,
}

/// What a token stands for.
#[derive(Clone, Debug)]
enum Target {
    Exec(ExecRequest),
    PortForward(PortForwardRequest),
}

/// The port-forward subprotocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Connections served at once by default (`stream.max_connections`); more
/// are closed as they come.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a client may take for its TLS handshake and request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one port-forward session may have open (kubelet opens two per
/// forwarded connection).
pub const MAX_FORWARD_STREAMS: usize = 512;

/// Streams an exec or attach session may open (it needs five at most).
const MAX_EXEC_STREAMS: usize = 16;

/// The streaming server.
pub struct StreamServer {
    addr: SocketAddr,
    scheme: &'static str,
    ttl: Duration,
    /// A stream with no traffic either way for this long is closed.
    idle: Duration,
    pending: Mutex<HashMap<String, (Instant, Target)>>,
    log: Logger,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r
}

impl StreamServer {
    /// Binds `addr` (port 0 picks one) and serves in the background, over
    /// TLS when `tls` gives a PEM certificate chain and key.
    pub async fn start(
        addr: SocketAddr,
        ttl: Duration,
        idle: Duration,
        max_connections: usize,
        tls: Option<(PathBuf, PathBuf)>,
        log: Logger,
    ) -> Result<Arc<Self>> {
        let acceptor = match &tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener =
            tokio::net::TcpListener::bind(addr).await.ctx(|| format!("binding the streaming server on {addr}"))?;
        let addr = listener.local_addr().ctx(|| "streaming server address".into())?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let me = Arc::new(StreamServer { addr, scheme, ttl, idle, pending: Mutex::new(HashMap::new()), log });
        let server = Arc::clone(&me);
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of fds, say: wait rather than spin on the error.
                        warn!(server.log, "streaming accept failed"; "error" => %e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Past the cap a connection is closed at once.
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    warn!(server.log, "streaming connections at their cap; refusing one"; "cap" => max_connections);
                    continue;
                };
                let s = Arc::clone(&server);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let svc = hyper::service::service_fn(move |req| {
                        let s = Arc::clone(&s);
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req)) }
                    });
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                    match acceptor {
                        Some(a) => {
                            // A failed or slow handshake is the client's problem; it gets no URL use.
                            let Ok(Ok(tls)) = tokio::time::timeout(HEADER_TIMEOUT, a.accept(conn)).await else {
                                return;
                            };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).with_upgrades().await;
                        }
                        None => {
                            let _ =
                                http.serve_connection(hyper_util::rt::TokioIo::new(conn), svc).with_upgrades().await;
                        }
                    }
                });
            }
        });
        info!(me.log, "streaming server listening"; "address" => addr.to_string(), "tls" => tls.is_some());
        Ok(me)
    }

    fn url(&self, kind: &str, target: Target) -> String {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        pending.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        pending.insert(token.clone(), (now, target));
        format!("{}://{}/{kind}/{token}", self.scheme, self.addr)
    }

    /// Stores a prepared exec and returns its URL.
    pub fn exec_url(&self, req: ExecRequest) -> String {
        self.url("exec", Target::Exec(req))
    }

    /// Stores a prepared attach and returns its URL.
    pub fn attach_url(&self, req: ExecRequest) -> String {
        self.url("attach", Target::Exec(req))
    }

    /// Stores a prepared port-forward and returns its URL.
    pub fn port_forward_url(&self, req: PortForwardRequest) -> String {
        self.url("portforward", Target::PortForward(req))
    }

    /// Takes a token's request: once, and only before it expires.
    fn take(&self, token: &str) -> Option<Target> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (at, req) = pending.remove(token)?;
        (at.elapsed() < self.ttl).then_some(req)
    }

    fn handle(self: &Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let (kind, token) = path.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
        let supported: &[&'static str] = match kind {
            "exec" | "attach" => EXEC_PROTOCOLS,
            "portforward" => &[PORT_FORWARD_PROTOCOL],
            _ => &[],
        };
        if supported.is_empty() || token.is_empty() || token.contains('/') {
            return text(StatusCode::NOT_FOUND, format!("no such stream endpoint {path}"));
        }
        let header = |name: &str| {
            req.headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
        };
        let upgrade = header("upgrade");
        let connection = header("connection");
        let websocket = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
        let spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
        if !(websocket || spdy) || !connection.iter().any(|c| c.eq_ignore_ascii_case("upgrade")) {
            // Checked before the token is used, so a bad request spends nothing.
            return text(
                StatusCode::BAD_REQUEST,
                "this endpoint needs an HTTP upgrade (Connection: Upgrade) to SPDY/3.1 or websocket",
            );
        }
        let (offered, supported) = if websocket {
            let ws: &[&'static str] = if kind == "portforward" { WS_PORT_FORWARD_PROTOCOLS } else { WS_EXEC_PROTOCOLS };
            (header("sec-websocket-protocol"), ws)
        } else {
            (header("x-stream-protocol-version"), supported)
        };
        let ws_key = header("sec-websocket-key").into_iter().next();
        if websocket && ws_key.is_none() {
            return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade needs Sec-WebSocket-Key");
        }
        // A WebSocket port-forward names its ports in the query (`port=80&port=443` or `port=80,443`).
        let ws_ports = if websocket && kind == "portforward" {
            match query_ports(req.uri().query().unwrap_or("")) {
                Ok(p) => p,
                Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
            }
        } else {
            Vec::new()
        };
        let protocol: &'static str = if offered.is_empty() && (!websocket || kind == "portforward") {
            // Clients from before protocol negotiation speak the oldest
            // (for a WebSocket port-forward: no subprotocol at all).
            if websocket {
                ""
            } else {
                supported[supported.len() - 1]
            }
        } else {
            match supported.iter().find(|p| offered.iter().any(|o| o == *p)) {
                Some(p) => p,
                None => {
                    return text(
                        StatusCode::FORBIDDEN,
                        format!("none of the offered protocols {offered:?} is supported: {supported:?}"),
                    )
                }
            }
        };
        let target = match self.take(token) {
            Some(Target::Exec(e)) if (kind == "attach") == e.attach => Target::Exec(e),
            Some(t @ Target::PortForward(_)) if kind == "portforward" => t,
            _ => return text(StatusCode::NOT_FOUND, "unknown, used or expired stream token"),
        };
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let up = match hyper::upgrade::on(req).await {
                Ok(up) => crate::idle_timeout::IdleTimeout::new(hyper_util::rt::TokioIo::new(up), me.idle),
                Err(e) => return warn!(me.log, "upgrade failed"; "error" => %e),
            };
            match target {
                Target::Exec(exec) => {
                    let r = if websocket {
                        ws_exec_session(up, &exec, protocol, &me.log).await
                    } else {
                        exec_session(up, &exec, protocol, &me.log).await
                    };
                    if let Err(e) = r {
                        warn!(me.log, "exec stream ended with an error"; "container_id" => &exec.container_id, "error" => %e);
                    }
                }
                Target::PortForward(pf) if websocket => ws_port_forward_session(up, pf, ws_ports, me.log.clone()).await,
                Target::PortForward(pf) => port_forward_session(up, pf, me.log.clone()).await,
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        let value = hyper::header::HeaderValue::from_static;
        h.insert("connection", value("Upgrade"));
        if let Some(key) = ws_key {
            h.insert("upgrade", value("websocket"));
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
                h.insert("sec-websocket-accept", v);
            }
            if !protocol.is_empty() {
                h.insert("sec-websocket-protocol", value(protocol));
            }
        } else {
            h.insert("upgrade", value("SPDY/3.1"));
            h.insert("x-stream-protocol-version", value(protocol));
        }
        r
    }
}

/// A TLS acceptor for a PEM certificate chain and key.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::invalid(format!("streaming TLS certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!("streaming TLS certificate {} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::invalid(format!("streaming TLS key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::invalid(format!("streaming TLS certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The server side of an upgraded WebSocket connection.
async fn ws_server<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) -> tokio_tungstenite::WebSocketStream<IO> {
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await
}

/// A message of the WebSocket channel protocols.
pub enum WsFrame {
    /// A channel's bytes.
    Data(u8, Vec<u8>),
    /// The peer closed.
    End,
    /// Nothing for the channels (ping, text, empty).
    Skip,
}

/// A WebSocket message (tungstenite's), for callers of [`ws_frame`].
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Splits a WebSocket message into its channel and payload.
pub fn ws_frame(m: tokio_tungstenite::tungstenite::Message) -> WsFrame {
    use tokio_tungstenite::tungstenite::Message;
    match m {
        Message::Binary(b) => match b.split_first() {
            Some((&ch, rest)) => WsFrame::Data(ch, rest.to_vec()),
            None => WsFrame::Skip,
        },
        Message::Close(_) => WsFrame::End,
        _ => WsFrame::Skip,
    }
}

/// WebSocket subprotocols for port-forward (a client may also offer none).
pub const WS_PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

/// WebSocket subprotocols for exec and attach, most preferred first.
pub const WS_EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
