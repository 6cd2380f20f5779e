//! Port-forward sessions: each stream pair (SPDY) or channel pair
//! (WebSocket) is one TCP connection to a port inside the pod's network
//! namespace.
use super::*;

/// The `port` query parameters of a WebSocket port-forward.
/// Ports one WebSocket port-forward may name: port i takes channels 2i and
/// 2i+1, and a channel is one byte.
pub(super) const MAX_WS_PORTS: usize = 128;

pub(super) fn query_ports(query: &str) -> std::result::Result<Vec<u16>, String> {
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
    if ports.len() > MAX_WS_PORTS {
        return Err(format!(
            "{} ports asked for; a WebSocket port-forward takes at most {MAX_WS_PORTS} ports (two one-byte channels each)",
            ports.len()
        ));
    }
    if ports.is_empty() {
        return Err("a WebSocket port-forward needs the query parameter port (port=80 or port=80,443)".into());
    }
    Ok(ports)
}

/// Port-forward over a WebSocket: port i has data channel 2i and error
/// channel 2i+1; each starts with the port (u16, little endian), then
/// carries the connection's bytes (data) or the failure's text (error).
pub(super) async fn ws_port_forward_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
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
        // query_ports keeps i below MAX_WS_PORTS, so both fit a byte.
        let (Ok(data), Ok(error)) = (u8::try_from(2 * i), u8::try_from(2 * i + 1)) else { break };
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

/// Connects to `port` on loopback inside `netns` (the caller's namespace
/// when None), trying IPv4 then IPv6 as kubelet's server does.
pub(super) async fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
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

pub(super) struct Forward {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

pub(super) async fn port_forward_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
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
pub(super) async fn forward<W: AsyncWrite + Unpin + Send + 'static>(
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
    fn websocket_ports_must_fit_one_byte_channels() {
        let many = |n: usize| format!("port={}", vec!["80"; n].join(","));
        assert_eq!(query_ports(&many(MAX_WS_PORTS)).map(|p| p.len()), Ok(MAX_WS_PORTS));
        // Port 128 would get data channel 256, which is channel 0 again.
        let e = query_ports(&many(MAX_WS_PORTS + 1)).unwrap_err();
        assert!(e.contains("at most 128 ports"), "{e}");
        assert!(query_ports("port=0").is_err() && query_ports("").is_err());
    }
}
