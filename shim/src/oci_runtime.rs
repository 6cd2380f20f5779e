//! The OCI runtime as the shim's service sees it: the calls it makes and
//! their typed outcomes. [`crate::runc::Runc`] implements it by running a
//! runc-compatible CLI; the service's unit tests implement it with plain
//! processes, so its logic (states, rollbacks, shutdown) is tested without
//! root. What a runtime's output means is decided by the implementation,
//! never by the service reading text.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

/// An OCI runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The binary could not be started.
    #[error("starting {bin}: {source}")]
    Spawn {
        /// The runtime binary.
        bin: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran longer than allowed and was killed.
    #[error("{bin} {cmd} timed out after {secs}s (runtime.oci_timeout): {stderr}")]
    Timeout {
        /// The runtime binary.
        bin: String,
        /// Which subcommand.
        cmd: String,
        /// The limit.
        secs: f64,
        /// What it printed.
        stderr: String,
    },
    /// The container has no running process to signal (it exited, or the
    /// runtime no longer knows it).
    #[error("container {id} is not running: {stderr}")]
    NotRunning {
        /// The container.
        id: String,
        /// What the runtime said.
        stderr: String,
    },
    /// It exited non-zero.
    #[error("{bin} {cmd} failed (exit {code}): {stderr}")]
    Failed {
        /// The runtime binary.
        bin: String,
        /// Which subcommand.
        cmd: String,
        /// Its exit code.
        code: i32,
        /// What it printed (or logged).
        stderr: String,
    },
}

/// The standard streams a runtime call hands to the process it starts.
pub struct Stdio {
    /// Its stdin (None: /dev/null).
    pub stdin: Option<OwnedFd>,
    /// Its stdout.
    pub stdout: OwnedFd,
    /// Its stderr.
    pub stderr: OwnedFd,
}

/// `create`: a container from a bundle, its init waiting for `start`.
pub struct CreateCall {
    /// The container id.
    pub id: String,
    /// The OCI bundle folder (holding config.json).
    pub bundle: PathBuf,
    /// Where the runtime writes the init's host pid.
    pub pid_file: PathBuf,
    /// The console socket path for a terminal container.
    pub console_socket: Option<String>,
    /// The init's stdio.
    pub stdio: Stdio,
    /// The runtime's own log file (its errors are read from there).
    pub log: PathBuf,
}

/// `exec --detach`: one more process in a running container.
pub struct ExecCall {
    /// The container id.
    pub id: String,
    /// The OCI process spec file.
    pub process: PathBuf,
    /// Where the runtime writes the process's host pid.
    pub pid_file: PathBuf,
    /// The console socket path for a terminal process.
    pub console_socket: Option<String>,
    /// The process's stdio.
    pub stdio: Stdio,
    /// The runtime's own log file.
    pub log: PathBuf,
}

/// The calls the shim makes of an OCI runtime. Every call is bounded by
/// [`OciRuntime::timeout`].
#[async_trait]
pub trait OciRuntime: Send + Sync {
    /// How long one call may take.
    fn timeout(&self) -> Duration;
    /// Creates a container; its init's pid is in `call.pid_file` after.
    async fn create(&self, call: CreateCall) -> Result<(), RuntimeError>;
    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Starts a process in a running container; its pid is in
    /// `call.pid_file` after.
    async fn exec(&self, call: ExecCall) -> Result<(), RuntimeError>;
    /// Signals a container's init, or with `all` every process in it;
    /// [`RuntimeError::NotRunning`] when there is nothing to signal.
    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError>;
    /// Applies the OCI `LinuxResources` JSON in `resources`.
    async fn update(&self, id: &str, resources: &Path) -> Result<(), RuntimeError>;
    /// Removes a container, killing what is left of it; one the runtime
    /// does not know is already deleted.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
}

/// The pid a runtime wrote to a `pid_file`.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok())
}
