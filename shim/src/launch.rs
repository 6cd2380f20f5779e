//! A container's runtime create, deferred from Create to Start as
//! containerd creates its task at StartContainer. Create prepares what the
//! container will be handed (its stdio pipes or terminal socket, and the
//! forwarders that write its output to the log) and checks its bundle;
//! Start has the OCI runtime create the container, then start it.
//! CreateContainer then costs no runtime call, and a container created and
//! never started holds no process, cgroup or runtime state.
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use protocol::shim::CreateRequest;
use tokio::task::JoinHandle;

use crate::console::ConsoleSocket;
use crate::container::Io;
use crate::cri_log::{LogSink, Stream};
use crate::error::ShimError;
use crate::log_forwarder::{self, Source};
use crate::oci_runtime::{self, CreateCall, OciRuntime};

/// What Create prepared for the runtime's create: the ends the container's
/// init gets, and the forwarders already reading the other ends.
pub struct Pending {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    console: Option<ConsoleSocket>,
    forwarders: Vec<JoinHandle<()>>,
}

/// What the runtime made of a pending container.
pub struct Launched {
    /// Its init's host pid.
    pub pid: i32,
    /// The pty master of a terminal container.
    pub pty: Option<OwnedFd>,
    /// The tasks writing its output to the log.
    pub forwarders: Vec<JoinHandle<()>>,
    /// It shares a pid namespace (the pod's or the host's): its leftovers
    /// are killed when its init exits.
    pub kill_rest: bool,
}

/// Prepares a container's stdio for `req`, writing its output to `sink`:
/// the pending create and the ends the shim keeps (stdin's write end).
pub fn prepare(req: &CreateRequest, bundle: &Path, sink: &Arc<LogSink>) -> Result<(Pending, Io), ShimError> {
    let pipe = || -> Result<(OwnedFd, OwnedFd), ShimError> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ShimError::os("pipe", e))
    };
    let mut io = Io { stdin_once: req.stdin_once, ..Default::default() };
    let mut stdin = None;
    if req.stdin && !req.terminal {
        // The shim holds the write end, so the container's stdin stays open
        // until CloseIO (or the first attach ends, with stdin_once).
        let (r, w) = pipe()?;
        stdin = Some(r);
        io.stdin = Some(w);
    }
    let mut forwarders = Vec::new();
    let (stdout, stderr, console) = if req.terminal {
        let console =
            ConsoleSocket::listen(&bundle.join("console.sock")).map_err(|e| ShimError::os("console socket", e))?;
        let (o, e) = crate::console::null_stdio().map_err(|e| ShimError::os("/dev/null", e))?;
        (o, e, Some(console))
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for (stream, fd) in [(Stream::Stdout, out_r), (Stream::Stderr, err_r)] {
            forwarders.push(tokio::spawn(log_forwarder::forward(stream, fd, Source::Pipe, Arc::clone(sink))));
        }
        (out_w, err_w, None)
    };
    Ok((Pending { stdin, stdout, stderr, console, forwarders }, io))
}

/// Has `runtime` create container `id` from `bundle` with what `p` holds.
pub async fn create(
    p: Pending,
    id: &str,
    bundle: &Path,
    runtime: &dyn OciRuntime,
    sink: &Arc<LogSink>,
) -> Result<Launched, ShimError> {
    let Pending { stdin, stdout, stderr, console, mut forwarders } = p;
    let pid_file = bundle.join("init.pid");
    let created = runtime
        .create(CreateCall {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            pid_file: pid_file.clone(),
            console_socket: console.as_ref().map(|c| c.runtime_path()),
            stdio: oci_runtime::Stdio { stdin, stdout, stderr },
            log: bundle.join("runc.log"),
        })
        .await;
    // A failed create drops the console socket, which stops its wait.
    created.map_err(ShimError::Runtime)?;
    let mut pty = None;
    if let Some(console) = console {
        let master = console.master().await.map_err(ShimError::Internal)?;
        let reader_fd = master.try_clone().map_err(|e| ShimError::os("dup terminal", e))?;
        forwarders.push(tokio::spawn(log_forwarder::forward(Stream::Stdout, reader_fd, Source::Pty, Arc::clone(sink))));
        pty = Some(master);
    }
    let pid = oci_runtime::read_pid(&pid_file)
        .ok_or_else(|| ShimError::Internal("the OCI runtime wrote no container pid".into()))?;
    Ok(Launched { pid, pty, forwarders, kill_rest: !own_pid_namespace(bundle) })
}

/// Whether the bundle gives the container a new pid namespace of its own
/// (a `pid` entry without a path); joining the pod's, or the host's, is not.
fn own_pid_namespace(bundle: &Path) -> bool {
    let Ok(data) = std::fs::read(bundle.join("config.json")) else { return true };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&data) else { return true };
    spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|ns| ns.iter().any(|n| n["type"] == "pid" && n["path"].as_str().is_none_or(str::is_empty)))
}
