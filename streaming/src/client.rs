//! The client side of the streaming protocols, as kubectl and crictl speak
//! them: an HTTP upgrade to SPDY/3.1 on the URL CRI Exec or PortForward
//! returned, then one stream per exec channel (error, stdin, stdout, stderr,
//! resize), or a data and an error stream per forwarded connection. Used by
//! berthctl and the tests.
use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::spdy::{self, FLAG_FIN};
use berth_core::error::{Error, Result};

/// What arrives from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Output on stdout (the terminal, with a tty).
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// The error stream's whole content (a Status JSON on v4), at its end.
    Status(Vec<u8>),
    /// The connection ended.
    Closed,
}

/// Channels a client opens.
#[derive(Clone, Copy, Debug, Default)]
pub struct Channels {
    /// Send stdin.
    pub stdin: bool,
    /// Receive stdout.
    pub stdout: bool,
    /// Receive stderr.
    pub stderr: bool,
    /// A terminal (adds the resize channel).
    pub tty: bool,
}

type WsSink =
    futures::stream::SplitSink<tokio_tungstenite::WebSocketStream<Conn>, tokio_tungstenite::tungstenite::Message>;

/// The sending side of an exec stream, by transport.
enum Sender {
    Spdy { writer: spdy::Writer<WriteHalf<Conn>>, stdin: Option<u32>, resize: Option<u32> },
    Ws { sink: WsSink },
}

/// An exec stream in progress.
pub struct ExecStream {
    sender: Sender,
    events: mpsc::Receiver<Event>,
    reader: tokio::task::JoinHandle<()>,
    /// The subprotocol the server chose.
    pub protocol: String,
}

impl Drop for ExecStream {
    /// Dropping the stream closes the connection (both halves), which is
    /// how the server learns the client has gone.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn net(e: std::io::Error) -> Error {
    Error::new(berth_core::error::Kind::Unavailable, format!("exec stream: {e}"))
}

/// A connection to the streaming server, plain or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// Connects to the server of an `http://` or `https://` URL; with https the
/// server's certificate must chain to `ca`, or to the system's roots.
/// Returns the connection, the host, the path and whether it is TLS.
async fn dial(url: &str, ca: Option<&std::path::Path>) -> Result<(Conn, String, String, bool)> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(Error::invalid(format!("{url}: not an http:// or https:// URL"))),
    };
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let tcp = TcpStream::connect(host).await.map_err(net)?;
    if !tls {
        return Ok((Box::new(tcp), host.to_string(), path, false));
    }
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            let bad = |e: &dyn std::fmt::Display| Error::invalid(format!("CA {}: {e}", ca.display()));
            for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_start_matches('[').trim_end_matches(']');
    let server_name =
        rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| Error::invalid(format!("{url}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| Error::new(berth_core::error::Kind::Unavailable, format!("TLS with {host}: {e}")))?;
    Ok((Box::new(stream), host.to_string(), path, true))
}

/// Sends an upgrade request for `url` and returns the response's status,
/// headers and (for a refusal) body.
async fn upgrade(
    url: &str,
    protocols: &[&str],
    ca: Option<&std::path::Path>,
) -> Result<(Conn, u16, HashMap<String, String>, String)> {
    let (mut conn, host, path, _) = dial(url, ca).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.map_err(net)?;
    // Byte by byte up to the blank line: what follows is SPDY, not ours.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if conn.read(&mut b).await.map_err(net)? == 0 {
            return Err(Error::new(berth_core::error::Kind::Unavailable, "the streaming server closed the connection"));
        }
        head.push(b[0]);
        if head.len() > 64 * 1024 {
            return Err(Error::internal("response head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: HashMap<String, String> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string())).collect();
    let mut body = String::new();
    if status != 101 {
        let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0).min(64 * 1024);
        let mut b = vec![0u8; len];
        let _ = conn.read_exact(&mut b).await;
        body = String::from_utf8_lossy(&b).trim().to_string();
    }
    Ok((conn, status, headers, body))
}

impl ExecStream {
    /// Upgrades `url`, offering `protocols` (most wanted first), and opens
    /// the channels.
    pub async fn connect(url: &str, protocols: &[&str], ch: Channels) -> Result<Self> {
        Self::connect_tls(url, protocols, ch, None).await
    }

    /// As [`ExecStream::connect`], trusting `ca` for an https URL.
    pub async fn connect_tls(
        url: &str,
        protocols: &[&str],
        ch: Channels,
        ca: Option<&std::path::Path>,
    ) -> Result<Self> {
        let (conn, status, headers, body) = upgrade(url, protocols, ca).await?;
        if status != 101 {
            let kind = match status {
                404 => berth_core::error::Kind::NotFound,
                400 | 403 => berth_core::error::Kind::InvalidArgument,
                _ => berth_core::error::Kind::Unavailable,
            };
            return Err(Error::new(kind, format!("streaming server answered {status}: {body}")));
        }
        let protocol = headers.get("x-stream-protocol-version").cloned().unwrap_or_default();
        let (rd, wr) = tokio::io::split(conn);
        let mut writer = spdy::Writer::new(wr);
        let mut names: HashMap<u32, &'static str> = HashMap::new();
        let mut next = 1u32;
        let mut open = |kind: &'static str, names: &mut HashMap<u32, &'static str>| {
            let id = next;
            next += 2;
            names.insert(id, kind);
            id
        };
        let mut order = vec!["error"];
        if ch.stdin {
            order.push("stdin");
        }
        if ch.stdout {
            order.push("stdout");
        }
        if ch.stderr && !ch.tty {
            order.push("stderr");
        }
        if ch.tty {
            order.push("resize");
        }
        let (mut stdin, mut resize) = (None, None);
        for kind in order {
            let id = open(kind, &mut names);
            writer.syn_stream(id, &[("streamtype", kind)], 0).await.map_err(net)?;
            match kind {
                "stdin" => stdin = Some(id),
                "resize" => resize = Some(id),
                _ => {}
            }
        }
        let (tx, events) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            let mut reader = spdy::Reader::new(rd);
            let mut status = Vec::new();
            while let Ok(Some(f)) = reader.next().await {
                if let spdy::Frame::Data { id, data, flags } = f {
                    let ev = match names.get(&id).copied() {
                        Some("stdout") if !data.is_empty() => Some(Event::Stdout(data)),
                        Some("stderr") if !data.is_empty() => Some(Event::Stderr(data)),
                        Some("error") => {
                            status.extend_from_slice(&data);
                            (flags & FLAG_FIN != 0).then(|| Event::Status(std::mem::take(&mut status)))
                        }
                        _ => None,
                    };
                    if let Some(ev) = ev {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Event::Closed).await;
        });
        Ok(ExecStream { sender: Sender::Spdy { writer, stdin, resize }, events, reader, protocol })
    }

    /// Connects over a WebSocket instead (`v5.channel.k8s.io` or
    /// `v4.channel.k8s.io`): one binary message per chunk, its first byte
    /// the channel.
    pub async fn connect_ws(url: &str, protocols: &[&str]) -> Result<Self> {
        Self::connect_ws_tls(url, protocols, None).await
    }

    /// As [`ExecStream::connect_ws`], trusting `ca` for an https URL.
    pub async fn connect_ws_tls(url: &str, protocols: &[&str], ca: Option<&std::path::Path>) -> Result<Self> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let (conn, host, path, tls) = dial(url, ca).await?;
        let scheme = if tls { "wss" } else { "ws" };
        let mut req = format!("{scheme}://{host}{path}")
            .into_client_request()
            .map_err(|e| Error::invalid(format!("{url}: {e}")))?;
        let offered = protocols.join(", ");
        req.headers_mut()
            .insert("sec-websocket-protocol", offered.parse().map_err(|_| Error::invalid("bad protocol list"))?);
        let (ws, resp) = tokio_tungstenite::client_async(req, conn).await.map_err(|e| {
            use tokio_tungstenite::tungstenite::Error as WsError;
            match e {
                WsError::Http(r) => {
                    let body =
                        r.body().as_ref().map(|b| String::from_utf8_lossy(b).trim().to_string()).unwrap_or_default();
                    let kind = match r.status().as_u16() {
                        404 => berth_core::error::Kind::NotFound,
                        400 | 403 => berth_core::error::Kind::InvalidArgument,
                        _ => berth_core::error::Kind::Unavailable,
                    };
                    Error::new(kind, format!("streaming server answered {}: {body}", r.status()))
                }
                other => Error::new(berth_core::error::Kind::Unavailable, format!("websocket: {other}")),
            }
        })?;
        let protocol =
            resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (sink, mut stream) = ws.split();
        let (tx, events) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            let mut status = Vec::new();
            while let Some(Ok(m)) = stream.next().await {
                let (ch, rest) = match crate::server::ws_frame(m) {
                    crate::server::WsFrame::Data(ch, rest) => (ch, rest),
                    crate::server::WsFrame::End => break,
                    crate::server::WsFrame::Skip => continue,
                };
                let ev = match ch {
                    1 if !rest.is_empty() => Event::Stdout(rest),
                    2 if !rest.is_empty() => Event::Stderr(rest),
                    3 => {
                        status.extend_from_slice(&rest);
                        continue;
                    }
                    _ => continue,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Status(status)).await;
            let _ = tx.send(Event::Closed).await;
        });
        Ok(ExecStream { sender: Sender::Ws { sink }, events, reader, protocol })
    }

    async fn ws_send(sink: &mut WsSink, data: Vec<u8>) -> Result<()> {
        use futures::SinkExt;
        sink.send(tokio_tungstenite::tungstenite::Message::binary(data))
            .await
            .map_err(|e| Error::new(berth_core::error::Kind::Unavailable, format!("websocket: {e}")))
    }

    /// Sends stdin bytes.
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.sender {
            Sender::Spdy { writer, stdin, .. } => {
                let id = stdin.ok_or_else(|| Error::invalid("no stdin channel"))?;
                writer.data(id, data, false).await.map_err(net)
            }
            Sender::Ws { sink } => Self::ws_send(sink, [&[0u8][..], data].concat()).await,
        }
    }

    /// Closes stdin (on v4 WebSocket there is no way to say it; nothing is sent).
    pub async fn close_stdin(&mut self) -> Result<()> {
        match &mut self.sender {
            Sender::Spdy { writer, stdin, .. } => {
                let id = stdin.ok_or_else(|| Error::invalid("no stdin channel"))?;
                writer.data(id, &[], true).await.map_err(net)
            }
            Sender::Ws { sink } if self.protocol == "v5.channel.k8s.io" => Self::ws_send(sink, vec![255, 0]).await,
            Sender::Ws { .. } => Ok(()),
        }
    }

    /// Sends a terminal size.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
        match &mut self.sender {
            Sender::Spdy { writer, resize, .. } => {
                let id = resize.ok_or_else(|| Error::invalid("no resize channel"))?;
                writer.data(id, msg.as_bytes(), false).await.map_err(net)
            }
            Sender::Ws { sink } => Self::ws_send(sink, [&[4u8][..], msg.as_bytes()].concat()).await,
        }
    }

    /// The next event (Closed once, then None).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Reads to the end: stdout, stderr and the error stream's content.
    pub async fn collect(mut self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(ev) = self.next().await {
            match ev {
                Event::Stdout(d) => out.extend(d),
                Event::Stderr(d) => err.extend(d),
                Event::Status(s) => status = s,
                Event::Closed => break,
            }
        }
        (out, err, status)
    }
}

/// The exit code a v4 status reports (0 for Success).
pub fn exit_code(status: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v["status"] == "Success" {
        return Some(0);
    }
    v["details"]["causes"]
        .as_array()?
        .iter()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok())
}

type SharedWriter = Arc<tokio::sync::Mutex<spdy::Writer<WriteHalf<Conn>>>>;
type Routes = Arc<std::sync::Mutex<HashMap<u32, mpsc::Sender<Option<Vec<u8>>>>>>;

/// A port-forward session (`portforward.k8s.io`): each connection is a
/// pair of streams, data and error, named by a request id.
pub struct PortForward {
    writer: SharedWriter,
    routes: Routes,
    next_id: u32,
    next_request: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One forwarded connection.
pub struct ForwardConn {
    writer: SharedWriter,
    data_id: u32,
    data: mpsc::Receiver<Option<Vec<u8>>>,
    error: mpsc::Receiver<Option<Vec<u8>>>,
}

impl PortForward {
    /// Upgrades the URL CRI PortForward returned.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_tls(url, None).await
    }

    /// As [`PortForward::connect`], trusting `ca` for an https URL.
    pub async fn connect_tls(url: &str, ca: Option<&std::path::Path>) -> Result<Self> {
        let (conn, status, _, body) = upgrade(url, &[crate::server::PORT_FORWARD_PROTOCOL], ca).await?;
        if status != 101 {
            let kind =
                if status == 404 { berth_core::error::Kind::NotFound } else { berth_core::error::Kind::Unavailable };
            return Err(Error::new(kind, format!("streaming server answered {status}: {body}")));
        }
        let (rd, wr) = tokio::io::split(conn);
        let writer = Arc::new(tokio::sync::Mutex::new(spdy::Writer::new(wr)));
        let routes: Routes = Arc::default();
        let r = Arc::clone(&routes);
        let reader = tokio::spawn(async move {
            let mut reader = spdy::Reader::new(rd);
            while let Ok(Some(f)) = reader.next().await {
                let (id, data, fin) = match f {
                    spdy::Frame::Data { id, data, flags } => (id, data, flags & FLAG_FIN != 0),
                    spdy::Frame::RstStream { id, .. } => (id, Vec::new(), true),
                    _ => continue,
                };
                let tx = r.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                if let Some(tx) = tx {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data)).await;
                    }
                    if fin {
                        let _ = tx.send(None).await;
                        r.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    }
                }
            }
            // The session ended: every connection sees its end.
            r.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(PortForward { writer, routes, next_id: 1, next_request: 0, reader })
    }

    /// Opens a connection to `port` in the pod.
    pub async fn open(&mut self, port: u16) -> Result<ForwardConn> {
        let request = self.next_request.to_string();
        self.next_request += 1;
        let port_s = port.to_string();
        let (error_id, data_id) = (self.next_id, self.next_id + 2);
        self.next_id += 4;
        let (etx, error) = mpsc::channel(4);
        let (dtx, data) = mpsc::channel(64);
        {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes.insert(error_id, etx);
            routes.insert(data_id, dtx);
        }
        let mut w = self.writer.lock().await;
        for (id, kind) in [(error_id, "error"), (data_id, "data")] {
            let headers = [("streamtype", kind), ("port", port_s.as_str()), ("requestid", request.as_str())];
            w.syn_stream(id, &headers, 0).await.map_err(net)?;
        }
        // The client never writes on the error stream.
        w.data(error_id, &[], true).await.map_err(net)?;
        drop(w);
        Ok(ForwardConn { writer: Arc::clone(&self.writer), data_id, data, error })
    }
}

impl ForwardConn {
    /// Sends bytes to the pod's port.
    pub async fn send(&self, data: &[u8]) -> Result<()> {
        self.writer.lock().await.data(self.data_id, data, false).await.map_err(net)
    }

    /// Ends what this side sends.
    pub async fn close_write(&self) -> Result<()> {
        self.writer.lock().await.data(self.data_id, &[], true).await.map_err(net)
    }

    /// The next bytes from the pod; None at the end.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.data.recv().await.flatten()
    }

    /// The error stream's text, once it ended (empty when all went well).
    pub async fn error(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(Some(d)) = self.error.recv().await {
            out.extend(d);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
