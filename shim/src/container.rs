//! One container as the shim sees it: its runtime state (the source of truth
//! berthd reads), its log sink, its runtime create (done once, at the first
//! Start; a failure ends it as a start error), and the task that turns its
//! init's exit into a Stopped state once every byte of its output is in the
//! log, then has the OCI runtime delete it (its state and cgroup), as
//! containerd deletes a task on its exit: RemoveContainer and
//! RemovePodSandbox then wait for no runtime call.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use protocol::cri_time::unix_nanos as nanos;
use protocol::shim::{ContainerState, Status};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::cri_log::LogSink;
use crate::error::ShimError;
use crate::launch::{self, Pending};
use crate::oci_runtime::{OciRuntime, RuntimeError};
use crate::reaper::{ExitStatus, Reaper};

/// The exit code of a container the runtime failed to create, as
/// containerd reports a StartError.
pub const START_ERROR_EXIT: i32 = 128;

/// How long to wait for a container's output pipes to close after its init
/// exited. A daemonized grandchild in a shared pid namespace can hold them
/// open for ever; the exit must still be reported.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runtime facts of a container.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// pid of the container's init on the host.
    pub pid: i32,
    /// Lifecycle state.
    pub status: Status,
    /// Exit code once stopped.
    pub exit_code: i32,
    /// Signal that ended it, 0 when it exited.
    pub exit_signal: i32,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Unix nanoseconds, 0 until started.
    pub started_at: i64,
    /// Unix nanoseconds, 0 until stopped.
    pub finished_at: i64,
    /// The OOM killer struck in the container's cgroup.
    pub oom_killed: bool,
    /// Why the runtime could not create it, when it could not.
    pub start_error: Option<String>,
}

/// A container held by the shim.
pub struct Container {
    /// Container id.
    pub id: String,
    /// OCI bundle folder.
    pub bundle: PathBuf,
    /// Where its output goes.
    pub log: Arc<LogSink>,
    /// The pty master of a TTY container (for resize and input), once the
    /// runtime has created it.
    pub pty: OnceLock<std::os::fd::OwnedFd>,
    /// The write end of the stdin pipe the shim holds open, when asked to.
    pub stdin: Mutex<Option<std::os::fd::OwnedFd>>,
    /// Close stdin when the first attach ends.
    pub stdin_once: bool,
    record: Mutex<Record>,
    /// What the runtime's create is handed, until it has run (or the
    /// container was deleted unstarted); held while it runs.
    pending: tokio::sync::Mutex<Option<Pending>>,
    exited: watch::Sender<bool>,
    /// Whether the OCI runtime has deleted it; held while it does, so one
    /// delete runs and the others wait for it.
    runtime_gone: tokio::sync::Mutex<bool>,
}

/// How a container's input is held.
#[derive(Default)]
pub struct Io {
    /// The write end of its stdin pipe.
    pub stdin: Option<std::os::fd::OwnedFd>,
    /// Close stdin after the first attach.
    pub stdin_once: bool,
}

impl Container {
    /// A container Create has prepared: Created, its runtime create
    /// `pending` until Start.
    pub fn new(id: String, bundle: PathBuf, log: Arc<LogSink>, io: Io, pending: Pending) -> Arc<Self> {
        let record = Record { status: Status::CREATED, created_at: nanos(SystemTime::now()), ..Default::default() };
        let (exited, _) = watch::channel(false);
        Arc::new(Container {
            id,
            bundle,
            log,
            pty: OnceLock::new(),
            stdin: Mutex::new(io.stdin),
            stdin_once: io.stdin_once,
            record: Mutex::new(record),
            pending: tokio::sync::Mutex::new(Some(pending)),
            exited,
            runtime_gone: tokio::sync::Mutex::new(false),
        })
    }

    /// Locks the record.
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state as the shim API reports it.
    pub fn state(&self) -> ContainerState {
        let r = self.record().clone();
        let mut s = ContainerState::new();
        s.id = self.id.clone();
        s.pid = u32::try_from(r.pid).unwrap_or(0);
        s.status = r.status.into();
        s.exit_code = r.exit_code;
        s.exit_signal = r.exit_signal;
        s.created_at = r.created_at;
        s.started_at = r.started_at;
        s.finished_at = r.finished_at;
        s.oom_killed = r.oom_killed;
        (s.log_bytes_written, s.log_bytes_dropped) = self.log.counts();
        if let Some(e) = self.log.error() {
            s.message = e;
        }
        if let Some(e) = r.start_error {
            s.message = e;
            s.start_failed = true;
        }
        s
    }

    /// Has the OCI runtime create the container, unless it has (Start's
    /// first step). On failure the container has ended: Stopped, with the
    /// error as its start error, and nothing of it left in the runtime.
    pub async fn launch(self: &Arc<Self>, runtime: &Arc<dyn OciRuntime>, reaper: &Reaper) -> Result<(), ShimError> {
        let mut pending = self.pending.lock().await;
        let Some(p) = pending.take() else { return Ok(()) };
        match launch::create(p, &self.id, &self.bundle, &**runtime, &self.log).await {
            Ok(made) => {
                let exit = reaper.subscribe(made.pid);
                self.record().pid = made.pid;
                if let Some(pty) = made.pty {
                    let _ = self.pty.set(pty);
                }
                self.monitor(exit, made.forwarders, Arc::clone(runtime), made.kill_rest);
                Ok(())
            }
            Err(e) => {
                // A create that failed half-way (or was killed at its
                // timeout) may have left an init waiting, or runtime state.
                let _ = self.delete_in_runtime(&**runtime).await;
                self.end_unstarted(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Ends a container whose runtime create never ran (Delete and Shutdown
    /// of a container never started): nothing runs, and the runtime has
    /// nothing to delete. False when the runtime has created it.
    pub async fn abandon(&self) -> bool {
        let Some(p) = self.pending.lock().await.take() else { return false };
        // Its pipes close with it, so its forwarders end.
        drop(p);
        *self.runtime_gone.lock().await = true;
        self.end_unstarted(None);
        true
    }

    fn end_unstarted(&self, start_error: Option<String>) {
        {
            let mut r = self.record();
            r.status = Status::STOPPED;
            r.finished_at = nanos(SystemTime::now());
            if start_error.is_some() {
                r.exit_code = START_ERROR_EXIT;
            }
            r.start_error = start_error;
        }
        self.exited.send_replace(true);
    }

    /// Marks the container running, unless it already stopped. `at` is
    /// taken before the runtime started it: a container that exits at once
    /// may be reaped before the start call returns, and its finish must not
    /// come before its start.
    pub fn mark_started(&self, at: SystemTime) {
        let mut r = self.record();
        r.started_at = nanos(at);
        if r.status == Status::CREATED {
            r.status = Status::RUNNING;
        }
    }

    /// Has the OCI runtime delete the container, unless it already has (a
    /// delete in flight is waited for).
    pub async fn delete_in_runtime(&self, runtime: &dyn OciRuntime) -> Result<(), RuntimeError> {
        let mut gone = self.runtime_gone.lock().await;
        if !*gone {
            runtime.delete(&self.id).await?;
            *gone = true;
        }
        Ok(())
    }

    /// Waits until the container has stopped.
    pub async fn wait(&self) {
        let mut rx = self.exited.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    /// Watches the init's exit: once it exits and its output is drained,
    /// records the exit and wakes waiters.
    ///
    /// With `kill_rest` (a container without a pid namespace of its own),
    /// the processes left in it are killed once the init exits, as they would
    /// be by the kernel in a private pid namespace: a container's exit is the
    /// end of all of it, and a leftover would hold its output open. Once the
    /// exit is recorded, `runtime` deletes the container; should that fail,
    /// the shim's Delete tries again and reports why.
    pub fn monitor(
        self: &Arc<Self>,
        exit: oneshot::Receiver<ExitStatus>,
        forwarders: Vec<JoinHandle<()>>,
        runtime: Arc<dyn OciRuntime>,
        kill_rest: bool,
    ) {
        let c = Arc::clone(self);
        // Found now, while the init lives; read after it exits, before the
        // runtime deletes the cgroup, so even an OOM at start is seen.
        let cgroups = crate::cgroup::Cgroups::of(self.record().pid);
        let oom_before = cgroups.as_ref().map(|cg| cg.oom_kills()).unwrap_or(0);
        tokio::spawn(async move {
            let status = exit.await.ok();
            if kill_rest {
                // Fails harmlessly when nothing is left (or runc already
                // deleted the container).
                let _ = runtime.kill(&c.id, libc::SIGKILL, true).await;
            }
            let oom = cgroups.as_ref().is_some_and(|cg| cg.oom_kills() > oom_before);
            let drain = async {
                for f in forwarders {
                    let _ = f.await;
                }
            };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
            {
                let mut r = c.record();
                r.status = Status::STOPPED;
                r.oom_killed = oom;
                match status {
                    Some(s) => {
                        r.exit_code = s.code;
                        r.exit_signal = s.signal;
                        r.finished_at = nanos(s.at);
                    }
                    None => {
                        r.exit_code = 255;
                        r.finished_at = nanos(SystemTime::now());
                    }
                }
            }
            // send_replace: the value must change even when nobody waits yet.
            c.exited.send_replace(true);
            let _ = c.delete_in_runtime(&*runtime).await;
        });
    }
}
