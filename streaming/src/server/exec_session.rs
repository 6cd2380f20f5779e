//! Exec and attach sessions: the client's streams (SPDY or WebSocket
//! channels) joined to the process's io in the pod's shim, resizes passed
//! on, and the exit status reported in the protocol version's own way.
use super::*;

/// The error stream's content for an exit code (or a failure to run).
pub(super) fn status_message(protocol: &str, exit: std::result::Result<i32, String>) -> Option<Vec<u8>> {
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
pub(super) fn resizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut used = 0;
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    while let Some(Ok(v)) = it.next() {
        used = it.byte_offset();
        let (w, h) = (v["Width"].as_u64().unwrap_or(0), v["Height"].as_u64().unwrap_or(0));
        if w > 0 && h > 0 {
            out.push((u16::try_from(w).unwrap_or(u16::MAX), u16::try_from(h).unwrap_or(u16::MAX)));
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
pub(super) enum ServerEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The error channel's content, sent once before the end.
    Status(Option<Vec<u8>>),
}

/// Runs an exec or attach in the shim: what the client sends (as the shim's
/// own frames: stdin, stdin close, resize) in, output out, until the process
/// ends (its status is the last event) or the client goes (`from_client`
/// closes; the shim then ends an exec's process).
pub(super) async fn run_in_shim(
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

pub(super) async fn exec_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
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
            .map_err(|_| Error::new(berth_core::error::Kind::DeadlineExceeded, "the client did not open its streams"))?
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
pub(super) async fn linger(inbound: tokio::task::JoinHandle<()>) {
    let abort = inbound.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), inbound).await.is_err() {
        abort.abort();
    }
}

/// Exec or attach over a WebSocket: every binary message starts with its
/// channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize); on v5, a
/// message `255, 0` closes stdin.
pub(super) async fn ws_exec_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
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
