//! ExecSync: runs a command in a running container (`runc exec --detach`, so
//! the process becomes the shim's child and the reaper reports its exit),
//! collects its output up to a cap, and enforces the timeout by killing it.
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::container::Container;
use crate::oci_runtime::{self, ExecCall, OciRuntime, RuntimeError};
use crate::reaper::Reaper;

/// Output kept per stream; the rest is read and dropped (as containerd and
/// CRI-O do, after CVE-2022-1708).
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// After the process exits, how long to keep reading output a grandchild may
/// still be writing.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// What an exec produced.
pub struct ExecResult {
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Exit code (137 when killed at the timeout).
    pub exit_code: i32,
    /// Whether the timeout killed it.
    pub timed_out: bool,
}

/// An exec could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Preparing the process spec failed.
    #[error("preparing exec: {0}")]
    Prepare(String),
    /// The OCI runtime refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub fn pipe_pair() -> Result<(OwnedFd, OwnedFd), ExecError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ExecError::Prepare(format!("pipe: {e}")))
}

fn collect(fd: OwnedFd) -> (Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&buf);
    let task = tokio::spawn(async move {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return };
        let mut chunk = vec![0u8; 32 * 1024];
        while let Ok(n) = pipe.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let mut b = out.lock().unwrap_or_else(|e| e.into_inner());
            let room = OUTPUT_CAP.saturating_sub(b.len());
            b.extend_from_slice(&chunk[..n.min(room)]);
        }
    });
    (buf, task)
}

/// SIGKILLs `pid` and its descendants. Children are collected before their
/// parent dies (after that they are reparented and lost from the tree), and
/// every process is stopped first so none can fork past the walk.
pub fn kill_tree(pid: i32) {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let _ = kill(Pid::from_raw(all[i]), Signal::SIGSTOP);
        all.extend(children(all[i]));
        i += 1;
    }
    for p in all {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Direct children of `pid`, from /proc/<pid>/task/*/children.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|x| x.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// Writes the process spec of an exec: it runs as the container's process
/// does (user, env, cwd, capabilities), with its own args and terminal.
pub fn write_process_spec(
    c: &Container,
    args: &[String],
    tty: bool,
    spec_path: &std::path::Path,
) -> Result<(), ExecError> {
    let config = std::fs::read(c.bundle.join("config.json"))
        .map_err(|e| ExecError::Prepare(format!("reading config.json: {e}")))?;
    let config: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| ExecError::Prepare(format!("parsing config.json: {e}")))?;
    let mut process = config.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    if let Some(p) = process.as_object_mut() {
        p.remove("consoleSize");
    }
    std::fs::write(spec_path, serde_json::to_vec(&process).unwrap_or_default())
        .map_err(|e| ExecError::Prepare(format!("writing process spec: {e}")))
}

/// Runs `args` in container `c` and waits for it (at most `timeout`).
pub async fn exec_sync(
    runtime: &dyn OciRuntime,
    reaper: &Reaper,
    c: &Container,
    seq: u64,
    args: &[String],
    timeout: Option<Duration>,
) -> Result<ExecResult, ExecError> {
    let spec_path = c.bundle.join(format!("exec-{seq}.json"));
    let pid_path = c.bundle.join(format!("exec-{seq}.pid"));
    let log_path = c.bundle.join(format!("exec-{seq}.log"));
    let cleanup = || {
        for p in [&spec_path, &pid_path, &log_path] {
            let _ = std::fs::remove_file(p);
        }
    };
    let result = run(runtime, reaper, c, args, timeout, &spec_path, &pid_path, &log_path).await;
    cleanup();
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    runtime: &dyn OciRuntime,
    reaper: &Reaper,
    c: &Container,
    args: &[String],
    timeout: Option<Duration>,
    spec_path: &std::path::Path,
    pid_path: &std::path::Path,
    log_path: &std::path::Path,
) -> Result<ExecResult, ExecError> {
    write_process_spec(c, args, false, spec_path)?;

    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let (stdout, out_task) = collect(out_r);
    let (stderr, err_task) = collect(err_r);
    runtime
        .exec(ExecCall {
            id: c.id.clone(),
            process: spec_path.to_path_buf(),
            pid_file: pid_path.to_path_buf(),
            console_socket: None,
            stdio: oci_runtime::Stdio { stdin: None, stdout: out_w, stderr: err_w },
            log: log_path.to_path_buf(),
        })
        .await?;
    let pid =
        oci_runtime::read_pid(pid_path).ok_or_else(|| ExecError::Prepare("the runtime wrote no exec pid".into()))?;
    let mut exit = reaper.subscribe(pid);
    let mut timed_out = false;
    let status = match timeout {
        Some(t) => match tokio::time::timeout(t, &mut exit).await {
            Ok(s) => s.ok(),
            Err(_) => {
                timed_out = true;
                // The command and everything it started: a shell's children
                // would otherwise outlive the timeout.
                kill_tree(pid);
                exit.await.ok()
            }
        },
        None => exit.await.ok(),
    };
    let drain = async {
        let _ = out_task.await;
        let _ = err_task.await;
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
    let take = |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(ExecResult {
        stdout: take(&stdout),
        stderr: take(&stderr),
        exit_code: status.map(|s| s.code).unwrap_or(255),
        timed_out,
    })
}
