//! Streams into containers: exec, attach, port-forward (through the runtime's streaming server) and logs (from the CRI log file).
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use protocol::cri;

use crate::cli::*;
use crate::ctl::*;
use crate::log_printer;

/// Runs one of this file's commands.
pub(crate) async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Exec { sync: false, interactive, tty, transport, container, cmd, .. } => {
            let id = c.container_id(&container).await?;
            let url =
                c.rt.exec(c.req(cri::ExecRequest {
                    container_id: id,
                    cmd,
                    tty,
                    stdin: interactive,
                    stdout: true,
                    stderr: !tty,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .url;
            return exec_stream(&url, interactive, tty, transport, c.stream_ca.as_deref()).await;
        }
        Cmd::Attach { container, interactive, tty, transport } => {
            let id = c.container_id(&container).await?;
            let url =
                c.rt.attach(c.req(cri::AttachRequest {
                    container_id: id,
                    stdin: interactive,
                    tty,
                    stdout: true,
                    stderr: !tty,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .url;
            return exec_stream(&url, interactive, tty, transport, c.stream_ca.as_deref()).await;
        }
        Cmd::PortForward { pod, ports, address } => {
            let id = c.pod_id(&pod).await?;
            let mut pairs = Vec::new();
            for p in &ports {
                let (local, remote) = p.split_once(':').unwrap_or((p, p));
                let parse = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
                match (parse(local), parse(remote)) {
                    (Some(l), Some(r)) => pairs.push((l, r)),
                    _ => bail!("{p:?}: give LOCAL:REMOTE or PORT (1-65535)"),
                }
            }
            let remotes = pairs.iter().map(|(_, r)| *r as i32).collect();
            let url =
                c.rt.port_forward(c.req(cri::PortForwardRequest { pod_sandbox_id: id, port: remotes }))
                    .await?
                    .into_inner()
                    .url;
            port_forward(&url, address, &pairs, c.stream_ca.as_deref()).await?;
        }
        Cmd::Exec { sync: true, exec_timeout, container, cmd, .. } => {
            let id = c.container_id(&container).await?;
            let r =
                c.rt.exec_sync(c.req(cri::ExecSyncRequest { container_id: id, cmd, timeout: exec_timeout }))
                    .await?
                    .into_inner();
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            return Ok(r.exit_code);
        }
        Cmd::Logs { container, follow, timestamps, tail, since, limit_bytes, stream } => {
            let now = protocol::cri_time::now_nanos();
            let since = match since {
                Some(s) => Some(
                    log_printer::parse_since(&s, now)
                        .with_context(|| format!("--since {s:?}: give RFC3339, a duration like 5m, or Unix seconds"))?,
                ),
                None => None,
            };
            let stream = match stream.as_str() {
                "all" | "" => log_printer::StreamFilter::All,
                "stdout" => log_printer::StreamFilter::Stdout,
                "stderr" => log_printer::StreamFilter::Stderr,
                other => bail!("--stream {other:?}: stdout, stderr or all"),
            };
            c.logs(&container, follow, log_printer::Options { tail, since, timestamps, limit_bytes, stream }).await?
        }
        other => bail!("{other:?} is not a streams command"),
    }
    Ok(0)
}

/// Listens on each local port and forwards every connection through one
/// port-forward session, until interrupted or the session ends.
pub(crate) async fn port_forward(
    url: &str,
    address: std::net::IpAddr,
    pairs: &[(u16, u16)],
    ca: Option<&Path>,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let session =
        berth_streaming::client::PortForward::connect_tls(url, ca).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let session = std::sync::Arc::new(tokio::sync::Mutex::new(session));
    let mut listeners = Vec::new();
    for (local, remote) in pairs {
        let l = tokio::net::TcpListener::bind((address, *local))
            .await
            .with_context(|| format!("listening on {address}:{local}"))?;
        eprintln!("Forwarding from {} -> {remote}", l.local_addr()?);
        listeners.push((l, *remote));
    }
    let mut tasks = Vec::new();
    for (l, remote) in listeners {
        let session = std::sync::Arc::clone(&session);
        tasks.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let conn = session.lock().await.open(remote).await;
                let Ok(mut conn) = conn else { break };
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tcp.into_split();
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        tokio::select! {
                            n = rd.read(&mut buf) => match n {
                                Ok(0) | Err(_) => { let _ = conn.close_write().await; break; }
                                Ok(n) => if conn.send(&buf[..n]).await.is_err() { break },
                            },
                            d = conn.recv() => match d {
                                Some(d) => if wr.write_all(&d).await.is_err() { break },
                                None => break,
                            },
                        }
                    }
                    // Whatever the pod still sends after our side closed.
                    while let Some(d) = conn.recv().await {
                        if wr.write_all(&d).await.is_err() {
                            break;
                        }
                    }
                    let err = conn.error().await;
                    if !err.is_empty() {
                        eprintln!("{err}");
                    }
                });
            }
        }));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures::future::join_all(tasks) => {}
    }
    Ok(())
}

/// Runs an exec through the streaming server: this process's stdin and
/// terminal on one side, the command on the other. Returns its exit code.
pub(crate) async fn exec_stream(
    url: &str,
    interactive: bool,
    tty: bool,
    transport: Transport,
    ca: Option<&Path>,
) -> Result<i32> {
    use berth_streaming::client::{exit_code, Channels, Event, ExecStream};
    use std::os::fd::AsFd;
    let ch = Channels { stdin: interactive, stdout: true, stderr: !tty, tty };
    let mut s = match transport {
        Transport::Spdy => ExecStream::connect_tls(url, berth_streaming::server::EXEC_PROTOCOLS, ch, ca).await,
        Transport::Websocket => ExecStream::connect_ws_tls(url, berth_streaming::server::WS_EXEC_PROTOCOLS, ca).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stdin_fd = std::io::stdin();
    let _raw = if tty && interactive { crate::terminal::RawMode::enable(stdin_fd.as_fd()) } else { None };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    if tty {
        if let Some((w, h)) = crate::terminal::size(std::io::stdout()) {
            s.resize(w, h).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    if interactive {
        // A plain thread: reading a terminal blocks, and the process exits
        // with the command whatever this thread is doing.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        drop(in_tx);
    }
    let mut stdin_open = interactive;
    let mut status = Vec::new();
    loop {
        tokio::select! {
            ev = s.next() => match ev {
                Some(Event::Stdout(d)) => { let mut o = std::io::stdout(); o.write_all(&d)?; o.flush()?; }
                Some(Event::Stderr(d)) => { let mut o = std::io::stderr(); o.write_all(&d)?; o.flush()?; }
                Some(Event::Status(st)) => status = st,
                Some(Event::Closed) | None => break,
            },
            data = in_rx.recv(), if stdin_open => match data {
                Some(d) => s.send_stdin(&d).await.map_err(|e| anyhow::anyhow!("{e}"))?,
                None => {
                    stdin_open = false;
                    s.close_stdin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            },
            _ = winch.recv(), if tty => {
                if let Some((w, h)) = crate::terminal::size(std::io::stdout()) {
                    let _ = s.resize(w, h).await;
                }
            }
        }
    }
    Ok(match exit_code(&status) {
        Some(code) => code,
        None if status.is_empty() => 0,
        None => {
            eprintln!("{}", String::from_utf8_lossy(&status));
            1
        }
    })
}
