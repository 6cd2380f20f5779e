//! Interactive processes over `<sandbox dir>/io.sock` (0600): berthd's
//! streaming server connects once per exec or attach, sends an `IoStart`,
//! then relays stdin and terminal sizes while the shim sends output and,
//! last, the exit code.
//!
//! An exec's process is the shim's child (`runc exec --detach`), reaped by
//! the shim's reaper; a connection that ends before the process does takes
//! the process (and what it started) with it, as kubelet's server does. An
//! attach joins the container's own stdio: it gets a copy of the output
//! the log receives, its stdin goes to the container, and its end leaves
//! the container running (closing stdin first with stdin_once).
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message;
use protocol::io_stream::{read_frame, write_frame, Frame};
use protocol::shim::IoStart;
use slog::{info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::exec::{kill_tree, pipe_pair, write_process_spec};
use crate::oci_runtime::{self, ExecCall};
use crate::service::ShimService;

/// After the process exits, how long to keep relaying output a grandchild
/// may still be writing.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// Accepts io connections until the shim ends.
pub async fn serve(listener: tokio::net::UnixListener, svc: Arc<ShimService>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        let svc = Arc::clone(&svc);
        tokio::spawn(async move {
            let (mut rd, mut wr) = conn.into_split();
            let start = match read_frame(&mut rd).await {
                Ok(Some(Frame::Start(b))) => IoStart::parse_from_bytes(&b).ok(),
                _ => None,
            };
            let Some(start) = start else {
                let _ = write_frame(&mut wr, &Frame::Error("expected a start frame".into())).await;
                return;
            };
            let r = if start.attach {
                attach(&svc, start, rd, &mut wr).await
            } else {
                exec(&svc, start, rd, &mut wr).await
            };
            if let Err(e) = r {
                warn!(svc.log, "interactive exec failed"; "error" => &e);
                let _ = write_frame(&mut wr, &Frame::Error(e)).await;
            }
        });
    }
}

/// A container that is running, or why not.
fn running(svc: &ShimService, id: &str) -> Result<Arc<crate::container::Container>, String> {
    let c = svc.get(id).map_err(|e| e.to_string())?;
    if c.record().status != protocol::shim::Status::RUNNING {
        return Err(format!("container {id} is not running"));
    }
    Ok(c)
}

struct Files {
    spec: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    console: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        for p in [&self.spec, &self.pid, &self.log, &self.console] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn output_task<R: AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    tx: mpsc::Sender<Frame>,
    stderr: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        // A pty reports EIO once its last writer is gone: that is its end.
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let data = buf[..n].to_vec();
            let f = if stderr { Frame::Stderr(data) } else { Frame::Stdout(data) };
            if tx.send(f).await.is_err() {
                break;
            }
        }
    })
}

async fn exec(
    svc: &ShimService,
    start: IoStart,
    mut rd: tokio::net::unix::OwnedReadHalf,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<(), String> {
    let c = running(svc, &start.container_id)?;
    if start.args.is_empty() {
        return Err("exec needs a command".into());
    }
    let seq = svc.exec_seq.fetch_add(1, Ordering::Relaxed);
    let files = Files {
        spec: c.bundle.join(format!("iexec-{seq}.json")),
        pid: c.bundle.join(format!("iexec-{seq}.pid")),
        log: c.bundle.join(format!("iexec-{seq}.log")),
        console: c.bundle.join(format!("iexec-{seq}.sock")),
    };
    write_process_spec(&c, &start.args, start.tty, &files.spec).map_err(|e| e.to_string())?;
    let mut console_socket = None;
    let (tx, mut out_rx) = mpsc::channel::<Frame>(16);
    let mut outputs = Vec::new();
    let mut stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = None;
    let mut pty: Option<OwnedFd> = None;
    // The process's stdio: a terminal (its output read from the master once
    // it arrives), or pipes read from now on.
    let (console, stdin_r, out_w, err_w) = if start.tty {
        let console =
            crate::console::ConsoleSocket::listen(&files.console).map_err(|e| format!("console socket: {e}"))?;
        console_socket = Some(console.runtime_path());
        let (o, e) = crate::console::null_stdio().map_err(|e| e.to_string())?;
        (Some(console), None, o, e)
    } else {
        let (out_r, out_w) = pipe_pair().map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe_pair().map_err(|e| e.to_string())?;
        for (fd, is_err) in [(out_r, false), (err_r, true)] {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|e| format!("output pipe: {e}"))?;
            outputs.push(output_task(rx, tx.clone(), is_err));
        }
        let mut stdin_r = None;
        if start.stdin {
            let (r, w) = pipe_pair().map_err(|e| e.to_string())?;
            stdin_r = Some(r);
            stdin = Some(writer_of(&w, false)?);
        }
        (None, stdin_r, out_w, err_w)
    };
    svc.runtime
        .exec(ExecCall {
            id: c.id.clone(),
            process: files.spec.clone(),
            pid_file: files.pid.clone(),
            console_socket,
            stdio: oci_runtime::Stdio { stdin: stdin_r, stdout: out_w, stderr: err_w },
            log: files.log.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
    if let Some(console) = console {
        let master = console.master().await?;
        let reader = crate::console::PtyReader::new(master.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        outputs.push(output_task(reader, tx.clone(), false));
        if start.stdin {
            stdin = Some(writer_of(&master, true)?);
        }
        pty = Some(master);
    }
    drop(tx);
    let pid = oci_runtime::read_pid(&files.pid).ok_or_else(|| "the runtime wrote no exec pid".to_string())?;
    let mut exit = svc.reaper.subscribe(pid);
    info!(svc.log, "interactive exec started"; "container_id" => &c.id, "pid" => pid, "tty" => start.tty);

    // The client's frames are read by a task of their own, which also
    // writes stdin: a write the process is not reading yet then holds up
    // only further input, never the output (the process may write all its
    // output before it reads any input, and both would stall).
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let resize_pty = pty.as_ref().and_then(|p| p.try_clone().ok());
    let mut stdin_writer = stdin.take();
    let input = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await {
                Ok(Some(Frame::Stdin(data))) => {
                    if let Some(w) = stdin_writer.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            stdin_writer = None;
                        }
                    }
                }
                Ok(Some(Frame::StdinClose)) => stdin_writer = None,
                Ok(Some(Frame::Resize(w, h))) => {
                    if let Some(p) = &resize_pty {
                        let _ = crate::console::resize(p, w, h);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let _ = gone_tx.send(());
                    return;
                }
            }
        }
    });
    // Relay output until the process exits; the client going away ends it.
    let mut client_open = true;
    let status = loop {
        tokio::select! {
            s = &mut exit => break s.ok(),
            Some(f) = out_rx.recv() => {
                if write_frame(wr, &f).await.is_err() {
                    kill_tree(pid);
                    client_open = false;
                }
            }
            _ = &mut gone, if client_open => {
                info!(svc.log, "exec client went away: ending the process"; "container_id" => &c.id, "pid" => pid);
                kill_tree(pid);
                client_open = false;
            }
        }
    };
    // The process is gone: its stdin goes with the input task.
    input.abort();
    drop(stdin);
    // Output written just before the exit is still in the pipes.
    let relay = async {
        while let Some(f) = out_rx.recv().await {
            if write_frame(wr, &f).await.is_err() {
                break;
            }
        }
    };
    if tokio::time::timeout(DRAIN_LIMIT, relay).await.is_err() {
        for t in &outputs {
            t.abort();
        }
    }
    drop(pty);
    let code = status.map(|s| s.code).unwrap_or(255);
    let _ = write_frame(wr, &Frame::Exit(code)).await;
    let _ = wr.shutdown().await;
    Ok(())
}

/// A dup of `fd` as an async writer: a pipe, or a pty master (typed input
/// is small, a plain file write on the master will do).
fn writer_of(fd: &OwnedFd, pty: bool) -> Result<Box<dyn tokio::io::AsyncWrite + Unpin + Send>, String> {
    let dup = fd.try_clone().map_err(|e| e.to_string())?;
    if pty {
        Ok(Box::new(tokio::fs::File::from_std(std::fs::File::from(dup))))
    } else {
        let tx = tokio::net::unix::pipe::Sender::from_owned_fd(dup).map_err(|e| format!("stdin pipe: {e}"))?;
        Ok(Box::new(tx))
    }
}

async fn attach(
    svc: &ShimService,
    start: IoStart,
    mut rd: tokio::net::unix::OwnedReadHalf,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<(), String> {
    let c = running(svc, &start.container_id)?;
    let mut output = c.log.attach();
    let mut stdin = None;
    if start.stdin {
        stdin = match (c.pty.get(), c.stdin.lock().unwrap_or_else(|e| e.into_inner()).as_ref()) {
            (Some(p), _) => Some(writer_of(p, true)?),
            (None, Some(fd)) => Some(writer_of(fd, false)?),
            (None, None) => return Err(format!("container {} was not created with stdin", c.id)),
        };
    }
    info!(svc.log, "attached"; "container_id" => &c.id, "stdin" => start.stdin);
    let exited = c.wait();
    tokio::pin!(exited);
    let mut container_ended = false;
    loop {
        tokio::select! {
            _ = &mut exited => { container_ended = true; break; }
            m = output.recv() => match m {
                Ok((stream, data)) => {
                    let f = match stream {
                        crate::cri_log::Stream::Stdout => Frame::Stdout(data),
                        crate::cri_log::Stream::Stderr => Frame::Stderr(data),
                    };
                    if write_frame(wr, &f).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            f = read_frame(&mut rd) => match f {
                Ok(Some(Frame::Stdin(data))) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Some(Frame::StdinClose)) => {
                    stdin = None;
                    if c.stdin_once {
                        break;
                    }
                }
                Ok(Some(Frame::Resize(w, h))) => {
                    if let Some(p) = c.pty.get() {
                        let _ = crate::console::resize(p, w, h);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    drop(stdin);
    if start.stdin && c.stdin_once {
        // The first attach is over: the container sees the end of its input.
        c.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
    if container_ended {
        // The monitor reports the exit only after the output is drained.
        while let Ok((stream, data)) = output.try_recv() {
            let f = match stream {
                crate::cri_log::Stream::Stdout => Frame::Stdout(data),
                crate::cri_log::Stream::Stderr => Frame::Stderr(data),
            };
            let _ = write_frame(wr, &f).await;
        }
    }
    let code = c.record().exit_code;
    let _ = write_frame(wr, &Frame::Exit(code)).await;
    let _ = wr.shutdown().await;
    info!(svc.log, "detached"; "container_id" => &c.id, "container_ended" => container_ended);
    Ok(())
}
