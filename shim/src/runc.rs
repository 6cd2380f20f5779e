//! The OCI runtime as a runc-compatible CLI (runc by default). Every call
//! has a timeout and keeps the runtime's own error output in the error; the
//! runtime's words for "no such container" and "not running" are read here
//! and nowhere else. Processes are spawned through the [`Reaper`], never
//! waited on directly.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::oci_runtime::{self, CreateCall, ExecCall, OciRuntime, RuntimeError};
use crate::reaper::{ExitStatus, Reaper};

/// Where a spawned runtime process's stdout and stderr go.
enum Output {
    /// Captured, and returned (stderr) in errors.
    Capture,
    /// Given to the process (and so to a container it starts); errors are
    /// read from the runtime's `--log` file instead.
    PassThrough {
        /// The process's stdin (None: /dev/null).
        stdin: Option<OwnedFd>,
        /// The process's stdout.
        stdout: OwnedFd,
        /// The process's stderr.
        stderr: OwnedFd,
        /// Its JSON log file.
        log: PathBuf,
    },
}

/// A runc-compatible OCI runtime.
#[derive(Clone)]
pub struct Runc {
    bin: PathBuf,
    root: PathBuf,
    systemd_cgroup: bool,
    timeout: Duration,
    reaper: Reaper,
}

impl Runc {
    /// `bin` is the runtime binary, `root` its state folder (`runc --root`);
    /// `systemd_cgroup` makes every call use runc's systemd cgroup driver;
    /// a call running longer than `timeout` is killed.
    pub fn new(bin: PathBuf, root: PathBuf, systemd_cgroup: bool, timeout: Duration, reaper: Reaper) -> Self {
        Runc { bin, root, systemd_cgroup, timeout, reaper }
    }

    /// Runs `runc --root ROOT args...` and returns its stdout.
    async fn run(&self, args: &[&str], output: Output) -> Result<Vec<u8>, RuntimeError> {
        let timeout = self.timeout;
        let bin = self.bin.display().to_string();
        let cmd_name = args.first().copied().unwrap_or("").to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        let log_path = match &output {
            Output::PassThrough { log, .. } => {
                cmd.arg("--log").arg(log).arg("--log-format").arg("json");
                Some(log.clone())
            }
            Output::Capture => None,
        };
        cmd.args(args).stdin(Stdio::null());
        match output {
            Output::Capture => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Output::PassThrough { stdin, stdout, stderr, .. } => {
                if let Some(i) = stdin {
                    cmd.stdin(Stdio::from(i));
                }
                cmd.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
            }
        }
        let (mut child, exit) =
            self.reaper.spawn(&mut cmd).map_err(|source| RuntimeError::Spawn { bin: bin.clone(), source })?;
        // Drop our copies of pass-through fds now, so the container's pipes
        // close when the container (not the shim) closes them.
        drop(cmd);
        let pid = crate::reaper::pid_of(&child);
        let stdout = child.stdout.take().and_then(|s| tokio::net::unix::pipe::Receiver::from_owned_fd(s.into()).ok());
        let stderr = child.stderr.take().and_then(|s| tokio::net::unix::pipe::Receiver::from_owned_fd(s.into()).ok());
        let work = async {
            let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), exit);
            (out, err, status)
        };
        let (out, mut err, status) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(RuntimeError::Timeout {
                    bin,
                    cmd: cmd_name,
                    secs: timeout.as_secs_f64(),
                    stderr: log_path.map(|p| read_log(&p)).unwrap_or_default(),
                });
            }
        };
        let status: ExitStatus = status.unwrap_or(ExitStatus { code: -1, signal: 0, at: std::time::SystemTime::now() });
        if status.code != 0 {
            if let Some(p) = &log_path {
                err = read_log(p).into_bytes();
            }
            return Err(RuntimeError::Failed {
                bin,
                cmd: cmd_name,
                code: status.code,
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            });
        }
        Ok(out)
    }
}

impl Output {
    fn pass(stdio: oci_runtime::Stdio, log: &Path) -> Self {
        Output::PassThrough { stdin: stdio.stdin, stdout: stdio.stdout, stderr: stdio.stderr, log: log.to_path_buf() }
    }
}

#[async_trait]
impl OciRuntime for Runc {
    fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn create(&self, call: CreateCall) -> Result<(), RuntimeError> {
        let bundle = call.bundle.to_string_lossy();
        let pid_file = call.pid_file.to_string_lossy();
        let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pid_file];
        if let Some(sock) = &call.console_socket {
            args.extend(["--console-socket", sock]);
        }
        args.push(&call.id);
        self.run(&args, Output::pass(call.stdio, &call.log)).await.map(|_| ())
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["start", id], Output::Capture).await.map(|_| ())
    }

    async fn exec(&self, call: ExecCall) -> Result<(), RuntimeError> {
        let process = call.process.to_string_lossy();
        let pid_file = call.pid_file.to_string_lossy();
        let mut args = vec!["exec", "--detach", "--pid-file", &pid_file, "--process", &process];
        if let Some(sock) = &call.console_socket {
            args.extend(["--console-socket", sock]);
        }
        args.push(&call.id);
        self.run(&args, Output::pass(call.stdio, &call.log)).await.map(|_| ())
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        match self.run(&args, Output::Capture).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Failed { stderr, .. }) if is_not_found(&stderr) || stderr.contains("not running") => {
                Err(RuntimeError::NotRunning { id: id.to_string(), stderr })
            }
            Err(e) => Err(e),
        }
    }

    async fn update(&self, id: &str, resources: &Path) -> Result<(), RuntimeError> {
        let f = resources.to_string_lossy();
        self.run(&["update", "--resources", &f, id], Output::Capture).await.map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run(&["delete", "--force", id], Output::Capture).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Failed { stderr, .. }) if is_not_found(&stderr) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether runc said the container does not exist.
fn is_not_found(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("not found")
}

async fn read_all(pipe: Option<tokio::net::unix::pipe::Receiver>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf).await;
    }
    buf
}

/// The messages of a runc JSON log (`{"level":"error","msg":"..."}` lines).
fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()).is_some_and(|l| l == "error" || l == "fatal"))
        .filter_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .collect();
    if msgs.is_empty() {
        text.trim().to_string()
    } else {
        msgs.join("; ")
    }
}
