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

use crate::error::{Error, IoContext, Result};
use crate::spdy::{self, FLAG_FIN};

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

/// The error stream's content for an exit code (or a failure to run).
fn status_message(protocol: &str, exit: std::result::Result<i32, String>) -> Option<Vec<u8>> {
    let v4 = matches!(protocol, "v4.channel.k8s.io" | "v5.channel.k8s.io");
    let msg = match &exit {
        Ok(0) => None,
        Ok(code) => Some(format!("command terminated with non-zero exit code: exit status {code}")),
        Err(e) => Some(e.clone()),
    };
    if !v4 {
        return msg.map(String::into_bytes);
    }
    let status = match (&exit, msg) {
        (_, None) => serde_json::json!({"metadata": {}, "status": "Success"}),
        (Ok(code), Some(m)) => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": m, "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        (Err(_), Some(m)) => serde_json::json!({"metadata": {}, "status": "Failure", "message": m}),
    };
    Some(status.to_string().into_bytes())
}

/// Terminal sizes from the resize stream: JSON objects, one after another.
fn resizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut used = 0;
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    while let Some(Ok(v)) = it.next() {
        used = it.byte_offset();
        let (w, h) = (v["Width"].as_u64().unwrap_or(0), v["Height"].as_u64().unwrap_or(0));
        if w > 0 && h > 0 {
            out.push((w.min(u16::MAX as u64) as u16, h.min(u16::MAX as u64) as u16));
        }
    }
    buf.drain(..used);
    // What never parses is noise; do not let it grow without bound.
    if buf.len() > 64 * 1024 {
        buf.clear();
    }
    out
}

/// What goes to the client, whatever the transport.
#[derive(Debug)]
enum ServerEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The error channel's content, sent once before the end.
    Status(Option<Vec<u8>>),
}

/// Runs an exec or attach in the shim: what the client sends (as the shim's
/// own frames: stdin, stdin close, resize) in, output out, until the process
/// ends (its status is the last event) or the client goes (`from_client`
/// closes; the shim then ends an exec's process).
async fn run_in_shim(
    req: &ExecRequest,
    protocol: &'static str,
    mut from_client: tokio::sync::mpsc::Receiver<IoFrame>,
    to_client: tokio::sync::mpsc::Sender<ServerEvent>,
    log: &Logger,
) -> Result<()> {
    let net = |e: std::io::Error| Error::internal(format!("shim io: {e}"));
    let dial = protocol::socket_path::SocketPath::new(&req.io_socket)
        .ctx(|| format!("connecting to the shim at {}", req.io_socket.display()))?;
    let conn = tokio::net::UnixStream::connect(dial.path())
        .await
        .ctx(|| format!("connecting to the shim at {}", req.io_socket.display()))?;
    let (mut shim_rd, mut shim_wr) = conn.into_split();
    let mut start = protocol::shim::IoStart::new();
    start.container_id = req.container_id.clone();
    start.args = req.cmd.clone();
    start.tty = req.tty;
    start.stdin = req.stdin;
    start.attach = req.attach;
    let bytes = start.write_to_bytes().map_err(|e| Error::internal(format!("encoding IoStart: {e}")))?;
    write_frame(&mut shim_wr, &IoFrame::Start(bytes)).await.map_err(net)?;
    info!(log, "stream started"; "container_id" => &req.container_id, "protocol" => protocol,
          "tty" => req.tty, "attach" => req.attach);

    // Client → shim. When the client goes, dropping the write half tells
    // the shim.
    let inbound = tokio::spawn(async move {
        while let Some(f) = from_client.recv().await {
            if write_frame(&mut shim_wr, &f).await.is_err() {
                break;
            }
        }
    });
    let exit = loop {
        let ev = match read_frame(&mut shim_rd).await {
            Ok(Some(IoFrame::Stdout(d))) if req.stdout => ServerEvent::Stdout(d),
            // With a terminal there is one output stream.
            Ok(Some(IoFrame::Stderr(d))) if req.stderr || (req.tty && req.stdout) => {
                if req.tty {
                    ServerEvent::Stdout(d)
                } else {
                    ServerEvent::Stderr(d)
                }
            }
            // An attach ends well however the container did (as kubelet's).
            Ok(Some(IoFrame::Exit(code))) => break Ok(if req.attach { 0 } else { code }),
            Ok(Some(IoFrame::Error(e))) => break Err(e),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break Err("the shim closed the stream".to_string()),
        };
        if to_client.send(ev).await.is_err() {
            // The client is gone; keep reading until the shim has ended it.
            continue;
        }
    };
    inbound.abort();
    let _ = to_client.send(ServerEvent::Status(status_message(protocol, exit.clone()))).await;
    info!(log, "stream ended"; "container_id" => &req.container_id, "exit" => format!("{exit:?}"));
    Ok(())
}

async fn exec_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    req: &ExecRequest,
    protocol: &'static str,
    log: &Logger,
) -> Result<()> {
    let (rd, wr) = tokio::io::split(io);
    let mut reader = spdy::Reader::new(rd);
    let writer = Arc::new(tokio::sync::Mutex::new(spdy::Writer::new(wr)));
    let net = |e: std::io::Error| Error::internal(format!("stream: {e}"));

    // The client opens one stream per channel; wait for all it must open.
    let mut want = vec!["error"];
    if req.stdin {
        want.push("stdin");
    }
    if req.stdout {
        want.push("stdout");
    }
    if req.stderr && !req.tty {
        want.push("stderr");
    }
    if req.tty && protocol != "channel.k8s.io" && protocol != "v2.channel.k8s.io" {
        want.push("resize");
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !want.iter().all(|w| ids.contains_key(*w)) {
        let f = tokio::time::timeout_at(deadline, reader.next())
            .await
            .map_err(|_| Error::new(crate::error::Kind::DeadlineExceeded, "the client did not open its streams"))?
            .map_err(net)?;
        match f {
            Some(spdy::Frame::SynStream { id, headers, .. }) => {
                if ids.len() >= MAX_EXEC_STREAMS {
                    return Err(Error::invalid("the client opened more streams than an exec has"));
                }
                let kind = headers.iter().find(|(k, _)| k == "streamtype").map(|(_, v)| v.clone()).unwrap_or_default();
                writer.lock().await.syn_reply(id, &[], 0).await.map_err(net)?;
                ids.insert(kind, id);
            }
            Some(spdy::Frame::Ping(p)) => writer.lock().await.ping(p).await.map_err(net)?,
            Some(_) => {}
            None => return Ok(()),
        }
    }

    let (client_tx, client_rx) = tokio::sync::mpsc::channel(16);
    let (server_tx, mut server_rx) = tokio::sync::mpsc::channel(16);
    let (stdin_id, resize_id) = (ids.get("stdin").copied(), ids.get("resize").copied());
    let w2 = Arc::clone(&writer);
    let inbound = tokio::spawn(async move {
        let mut resize_buf = Vec::new();
        while let Ok(Some(f)) = reader.next().await {
            let mut events = Vec::new();
            match f {
                spdy::Frame::Data { id, data, flags } if Some(id) == stdin_id => {
                    if !data.is_empty() {
                        events.push(IoFrame::Stdin(data));
                    }
                    if flags & FLAG_FIN != 0 {
                        events.push(IoFrame::StdinClose);
                    }
                }
                spdy::Frame::Data { id, data, .. } if Some(id) == resize_id => {
                    resize_buf.extend_from_slice(&data);
                    events.extend(resizes(&mut resize_buf).into_iter().map(|(w, h)| IoFrame::Resize(w, h)));
                }
                spdy::Frame::RstStream { id, .. } if Some(id) == stdin_id => events.push(IoFrame::StdinClose),
                spdy::Frame::Ping(p) => {
                    let _ = w2.lock().await.ping(p).await;
                }
                spdy::Frame::GoAway { .. } => break,
                _ => {}
            }
            for ev in events {
                if client_tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    let (out_id, err_id, error_id) =
        (ids.get("stdout").copied(), ids.get("stderr").copied(), ids.get("error").copied());
    let w3 = Arc::clone(&writer);
    let outbound = async move {
        while let Some(ev) = server_rx.recv().await {
            let mut w = w3.lock().await;
            match ev {
                ServerEvent::Stdout(d) => {
                    if let Some(id) = out_id {
                        let _ = w.data(id, &d, false).await;
                    }
                }
                ServerEvent::Stderr(d) => {
                    if let Some(id) = err_id {
                        let _ = w.data(id, &d, false).await;
                    }
                }
                ServerEvent::Status(msg) => {
                    for id in [out_id, err_id].into_iter().flatten() {
                        let _ = w.data(id, &[], true).await;
                    }
                    if let Some(id) = error_id {
                        if let Some(m) = msg {
                            let _ = w.data(id, &m, false).await;
                        }
                        let _ = w.data(id, &[], true).await;
                    }
                    let _ = w.go_away(0).await;
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    };
    let (r, ()) = tokio::join!(run_in_shim(req, protocol, client_rx, server_tx, log), outbound);
    linger(inbound).await;
    r
}

/// After the server has said everything, reads on until the client closes
/// (at most 2 s): closing a socket with unread input sends a reset, which
/// can destroy the last output before the client reads it.
async fn linger(inbound: tokio::task::JoinHandle<()>) {
    let abort = inbound.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), inbound).await.is_err() {
        abort.abort();
    }
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

/// The `port` query parameters of a WebSocket port-forward.
fn query_ports(query: &str) -> std::result::Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k != "port" {
            continue;
        }
        for p in v.split(',') {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("port {p:?} is not a TCP port (1-65535)")),
            }
        }
    }
    if ports.is_empty() {
        return Err("a WebSocket port-forward needs the query parameter port (port=80 or port=80,443)".into());
    }
    Ok(ports)
}

/// Port-forward over a WebSocket: port i has data channel 2i and error
/// channel 2i+1; each starts with the port (u16, little endian), then
/// carries the connection's bytes (data) or the failure's text (error).
async fn ws_port_forward_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    req: PortForwardRequest,
    ports: Vec<u16>,
    log: Logger,
) {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = ws_server(io).await;
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(Message::binary(m)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    info!(log, "port-forward stream started"; "sandbox_id" => &req.pod_id, "ports" => format!("{ports:?}"));
    let mut to_tcp = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let le = port.to_le_bytes();
        let _ = out_tx.send(vec![data, le[0], le[1]]).await;
        let _ = out_tx.send(vec![error, le[0], le[1]]).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        to_tcp.push(tx);
        let out = out_tx.clone();
        let (netns, pod, log) = (req.netns.clone(), req.pod_id.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = match connect_in(netns, port).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(log, "port-forward connect failed"; "sandbox_id" => &pod, "port" => port, "error" => %e);
                    let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                    let _ = out.send([&[error][..], msg.as_bytes()].concat()).await;
                    return;
                }
            };
            let (mut tr, mut tw) = tcp.into_split();
            let up = tokio::spawn(async move {
                while let Some(d) = rx.recv().await {
                    if tw.write_all(&d).await.is_err() {
                        break;
                    }
                }
                let _ = tw.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = tr.read(&mut buf).await {
                if n == 0 || out.send([&[data][..], &buf[..n]].concat()).await.is_err() {
                    break;
                }
            }
            up.abort();
        }));
    }
    drop(out_tx);
    let inbound = async {
        while let Some(Ok(m)) = stream.next().await {
            match ws_frame(m) {
                WsFrame::Data(ch, rest) if ch % 2 == 0 && !rest.is_empty() => {
                    if let Some(tx) = to_tcp.get(ch as usize / 2) {
                        let _ = tx.send(rest).await;
                    }
                }
                WsFrame::End => break,
                _ => {}
            }
        }
    };
    let all_done = futures::future::join_all(tasks.iter_mut());
    tokio::select! {
        _ = inbound => {}
        _ = all_done => {}
    }
    for t in &tasks {
        t.abort();
    }
    drop(to_tcp);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    info!(log, "port-forward stream ended"; "sandbox_id" => &req.pod_id);
}

/// WebSocket subprotocols for exec and attach, most preferred first.
pub const WS_EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Exec or attach over a WebSocket: every binary message starts with its
/// channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize); on v5, a
/// message `255, 0` closes stdin.
async fn ws_exec_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    req: &ExecRequest,
    protocol: &'static str,
    log: &Logger,
) -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = ws_server(io).await;
    let (mut sink, mut stream) = ws.split();
    let (client_tx, client_rx) = tokio::sync::mpsc::channel(16);
    let (server_tx, mut server_rx) = tokio::sync::mpsc::channel(16);
    let v5 = protocol == "v5.channel.k8s.io";
    let inbound = tokio::spawn(async move {
        let mut resize_buf = Vec::new();
        while let Some(Ok(m)) = stream.next().await {
            let (ch, rest) = match ws_frame(m) {
                WsFrame::Data(ch, rest) => (ch, rest),
                WsFrame::End => break,
                WsFrame::Skip => continue,
            };
            let events = match ch {
                0 if !rest.is_empty() => vec![IoFrame::Stdin(rest)],
                4 => {
                    resize_buf.extend_from_slice(&rest);
                    resizes(&mut resize_buf).into_iter().map(|(w, h)| IoFrame::Resize(w, h)).collect()
                }
                255 if v5 && rest.first() == Some(&0) => vec![IoFrame::StdinClose],
                _ => Vec::new(),
            };
            for ev in events {
                if client_tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    let outbound = async move {
        while let Some(ev) = server_rx.recv().await {
            let (ch, data) = match ev {
                ServerEvent::Stdout(d) => (1u8, d),
                ServerEvent::Stderr(d) => (2, d),
                ServerEvent::Status(msg) => {
                    if let Some(m) = msg {
                        let _ = sink.send(Message::binary([&[3u8][..], &m].concat())).await;
                    }
                    let _ = sink.close().await;
                    return;
                }
            };
            if sink.send(Message::binary([&[ch][..], &data].concat())).await.is_err() {
                // Gone: keep draining so the shim side can finish.
                continue;
            }
        }
    };
    let (r, ()) = tokio::join!(run_in_shim(req, protocol, client_rx, server_tx, log), outbound);
    linger(inbound).await;
    r
}

/// Connects to `port` on loopback inside `netns` (the caller's namespace
/// when None), trying IPv4 then IPv6 as kubelet's server does.
async fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for ip in [std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)] {
        let addr = SocketAddr::new(ip, port);
        let attempt = async {
            match &netns {
                Some(ns) => {
                    let fd = crate::netns_socket::tcp_socket_in(ns, ip.is_ipv6()).await?;
                    tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)).connect(addr).await
                }
                None => tokio::net::TcpStream::connect(addr).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr} timed out"))
            }
        }
    }
    Err(last)
}

struct Forward {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

async fn port_forward_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    req: PortForwardRequest,
    log: Logger,
) {
    let (rd, wr) = tokio::io::split(io);
    let mut reader = spdy::Reader::new(rd);
    let writer = Arc::new(tokio::sync::Mutex::new(spdy::Writer::new(wr)));
    let mut pairs: HashMap<String, Forward> = HashMap::new();
    let mut inbound: HashMap<u32, tokio::sync::mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut tasks = Vec::new();
    info!(log, "port-forward stream started"; "sandbox_id" => &req.pod_id);
    while let Ok(Some(f)) = reader.next().await {
        match f {
            spdy::Frame::SynStream { id, headers, .. } => {
                let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
                let (kind, port, request) = (get("streamtype"), get("port"), get("requestid"));
                let mut w = writer.lock().await;
                inbound.retain(|_, tx| !tx.is_closed());
                if pairs.len() + inbound.len() >= MAX_FORWARD_STREAMS {
                    let _ = w.rst_stream(id, 7).await; // REFUSED_STREAM
                    continue;
                }
                let Ok(port) = port.parse::<u16>().map_err(|_| ()).and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
                else {
                    let _ = w.rst_stream(id, 1).await;
                    continue;
                };
                let _ = w.syn_reply(id, &[], 0).await;
                drop(w);
                // Old clients send no request id: pair by port.
                let key = if request.is_empty() { format!("port-{port}") } else { request };
                let pair = pairs.entry(key.clone()).or_insert(Forward { port, error: None, data: None });
                match kind.as_str() {
                    "error" => pair.error = Some(id),
                    "data" => pair.data = Some(id),
                    _ => continue,
                }
                if let (Some(error), Some(data)) = (pair.error, pair.data) {
                    let port = pair.port;
                    pairs.remove(&key);
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    inbound.insert(data, tx);
                    let netns = req.netns.clone();
                    let (w, log, pod) = (Arc::clone(&writer), log.clone(), req.pod_id.clone());
                    tasks.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                    tasks.push(tokio::spawn(forward(netns, port, data, error, rx, w, log, pod)));
                }
            }
            spdy::Frame::Data { id, data, flags } => {
                if let Some(tx) = inbound.get(&id) {
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        inbound.remove(&id);
                        continue;
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = tx.send(None).await;
                        inbound.remove(&id);
                    }
                }
            }
            spdy::Frame::RstStream { id, .. } => {
                inbound.remove(&id);
            }
            spdy::Frame::Ping(p) => {
                let _ = writer.lock().await.ping(p).await;
            }
            spdy::Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    // The client is gone: every forwarded connection goes with it.
    for t in tasks {
        t.abort();
    }
    info!(log, "port-forward stream ended"; "sandbox_id" => &req.pod_id);
}

#[allow(clippy::too_many_arguments)]
async fn forward<W: AsyncWrite + Unpin + Send + 'static>(
    netns: Option<PathBuf>,
    port: u16,
    data: u32,
    error: u32,
    mut from_client: tokio::sync::mpsc::Receiver<Option<Vec<u8>>>,
    writer: Arc<tokio::sync::Mutex<spdy::Writer<W>>>,
    log: Logger,
    pod: String,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = match connect_in(netns, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            warn!(log, "port-forward connect failed"; "sandbox_id" => &pod, "port" => port, "error" => %e);
            let mut w = writer.lock().await;
            let _ = w.data(error, msg.as_bytes(), true).await;
            let _ = w.data(data, &[], true).await;
            return;
        }
    };
    let (mut tr, mut tw) = tcp.into_split();
    let up = tokio::spawn(async move {
        while let Some(msg) = from_client.recv().await {
            match msg {
                Some(d) => {
                    if tw.write_all(&d).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = tw.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match tr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.lock().await.data(data, &buf[..n], false).await.is_err() {
                    break;
                }
            }
        }
    }
    let mut w = writer.lock().await;
    let _ = w.data(data, &[], true).await;
    let _ = w.data(error, &[], true).await;
    drop(w);
    let _ = up.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_are_split_and_kept_when_partial() {
        let mut b = br#"{"Width":80,"Height":24}{"Width":100,"Hei"#.to_vec();
        assert_eq!(resizes(&mut b), vec![(80, 24)]);
        b.extend_from_slice(br#"ght":30}"#);
        assert_eq!(resizes(&mut b), vec![(100, 30)]);
        assert!(b.is_empty());
    }

    #[test]
    fn v4_reports_the_exit_code_in_a_status() {
        assert_eq!(
            status_message("v4.channel.k8s.io", Ok(0)).unwrap(),
            br#"{"metadata":{},"status":"Success"}"#.to_vec()
        );
        let v: serde_json::Value =
            serde_json::from_slice(&status_message("v4.channel.k8s.io", Ok(3)).unwrap()).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(status_message("v3.channel.k8s.io", Ok(0)), None);
        assert!(String::from_utf8(status_message("channel.k8s.io", Ok(2)).unwrap()).unwrap().contains("exit status 2"));
    }
}
