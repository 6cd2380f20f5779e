//! The shim API served over ttrpc: validates each call and drives the OCI
//! runtime, the container records and the log sinks.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protocol::shim::{
    ConnectRequest, ConnectResponse, ContainerRequest, ContainerState, CreateRequest, Empty, ExecSyncRequest,
    ExecSyncResponse, KillRequest, ListResponse, Shim, StatsRequest, Status, API_VERSION,
};
use slog::{info, warn, Logger};
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

use crate::container::Container;
use crate::cri_log::LogSink;
use crate::error::ShimError;
use crate::exec;
use crate::namespaces::{self, Pinned};
use crate::launch;
use crate::oci_runtime::{OciRuntime, RuntimeError};
use crate::reaper::Reaper;

type TResult<T> = ttrpc::Result<T>;

/// How long Shutdown waits for killed containers to be reaped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// The shim's service state.
pub struct ShimService {
    /// Sandbox this shim owns.
    pub sandbox_id: String,
    /// The OCI runtime.
    pub runtime: Arc<dyn OciRuntime>,
    /// The reaper.
    pub reaper: Reaper,
    /// Pinned namespaces.
    pub pinned: Mutex<Pinned>,
    /// Longest log line before splitting.
    pub max_log_line: usize,
    /// Woken when Shutdown has cleaned up and the process may exit.
    pub shutdown: Arc<Notify>,
    /// Structured log.
    pub log: Logger,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Numbers exec files apart.
    pub(crate) exec_seq: AtomicU64,
}

impl ShimService {
    /// A service for `sandbox_id`.
    pub fn new(
        sandbox_id: String,
        runtime: Arc<dyn OciRuntime>,
        reaper: Reaper,
        pinned: Pinned,
        max_log_line: usize,
        log: Logger,
    ) -> Self {
        ShimService {
            sandbox_id,
            runtime,
            reaper,
            pinned: Mutex::new(pinned),
            max_log_line,
            shutdown: Arc::new(Notify::new()),
            log,
            containers: Mutex::new(HashMap::new()),
            exec_seq: AtomicU64::new(0),
        }
    }

    /// A container by id (NotFound otherwise).
    pub(crate) fn get(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound { id: id.to_string(), sandbox_id: self.sandbox_id.clone() })
    }

    fn all(&self) -> Vec<Arc<Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    async fn do_create(&self, req: &CreateRequest) -> TResult<Arc<Container>> {
        let id = req.id.as_str();
        if id.is_empty()
            || id.len() > 128
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(ShimError::Invalid(format!("invalid container id {id:?}")).into());
        }
        if self.containers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id) {
            return Err(ShimError::Exists(id.to_string()).into());
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.join("config.json").is_file() {
            return Err(ShimError::Invalid(format!("bundle {} has no config.json", bundle.display())).into());
        }
        let log_path = (!req.log_path.is_empty()).then(|| PathBuf::from(&req.log_path));
        let log_root = (!req.log_root.is_empty()).then(|| PathBuf::from(&req.log_root));
        let sink = LogSink::open(log_path, log_root, self.max_log_line)
            .map_err(|e| ShimError::os(format!("opening log file {}", req.log_path), e))?;
        let sink = Arc::new(sink);
        let (pending, io) = launch::prepare(req, &bundle, &sink)?;
        let c = Container::new(id.to_string(), bundle, sink, io, pending);
        self.containers.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), Arc::clone(&c));
        info!(self.log, "container prepared (the runtime creates it at start)"; "container_id" => id);
        Ok(c)
    }
}

#[async_trait]
impl Shim for ShimService {
    async fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> TResult<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.api_version = API_VERSION;
        r.shim_pid = std::process::id();
        r.sandbox_id = self.sandbox_id.clone();
        r.runtime_timeout_ms = u64::try_from(self.runtime.timeout().as_millis()).unwrap_or(u64::MAX);
        r.pod_init_pid =
            u32::try_from(self.pinned.lock().unwrap_or_else(|e| e.into_inner()).pod_init.unwrap_or(0)).unwrap_or(0);
        Ok(r)
    }

    async fn create(&self, _ctx: &TtrpcContext, req: CreateRequest) -> TResult<ContainerState> {
        Ok(self.do_create(&req).await?.state())
    }

    async fn start(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> TResult<ContainerState> {
        let c = self.get(&req.id)?;
        let st = c.record().status;
        if st != Status::CREATED {
            return Err(ShimError::WrongState(format!("container {} is {:?}, not created", req.id, st)).into());
        }
        c.launch(&self.runtime, &self.reaper).await?;
        let at = std::time::SystemTime::now();
        self.runtime.start(&req.id).await.map_err(ShimError::Runtime)?;
        c.mark_started(at);
        info!(self.log, "container started"; "container_id" => &req.id);
        Ok(c.state())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let c = self.get(&req.id)?;
        if c.record().status == Status::STOPPED {
            return Ok(Empty::new());
        }
        let signal = i32::try_from(req.signal)
            .map_err(|_| ShimError::Invalid(format!("signal {} is not a signal", req.signal)))?;
        match self.runtime.kill(&req.id, signal, req.all).await {
            // The container may have exited between the check and the kill.
            Ok(()) | Err(RuntimeError::NotRunning { .. }) => Ok(Empty::new()),
            Err(_) if c.record().status == Status::STOPPED => Ok(Empty::new()),
            Err(e) => Err(ShimError::Runtime(e).into()),
        }
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> TResult<ContainerState> {
        let c = self.get(&req.id)?;
        c.wait().await;
        Ok(c.state())
    }

    async fn state(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> TResult<ContainerState> {
        Ok(self.get(&req.id)?.state())
    }

    async fn list(&self, _ctx: &TtrpcContext, _req: Empty) -> TResult<ListResponse> {
        let mut r = ListResponse::new();
        r.containers = self.all().iter().map(|c| c.state()).collect();
        Ok(r)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> TResult<ContainerState> {
        let c = match self.get(&req.id) {
            Ok(c) => c,
            Err(_) => {
                // Unknown to the shim (a crash between steps): make sure the
                // runtime forgets it too.
                self.runtime.delete(&req.id).await.map_err(ShimError::Runtime)?;
                let mut s = ContainerState::new();
                s.id = req.id.clone();
                s.status = Status::STOPPED.into();
                return Ok(s);
            }
        };
        if c.record().status == Status::RUNNING {
            return Err(ShimError::WrongState(format!("container {} is running; stop it first", req.id)).into());
        }
        if !c.abandon().await {
            // Done already when it exited (then this waits for no runtime call).
            c.delete_in_runtime(&*self.runtime).await.map_err(ShimError::Runtime)?;
            // A created container's init is killed by the delete; wait for it
            // so its exit is recorded and its pipes are drained.
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, c.wait()).await;
        }
        self.containers.lock().unwrap_or_else(|e| e.into_inner()).remove(&req.id);
        info!(self.log, "container deleted"; "container_id" => &req.id);
        Ok(c.state())
    }

    async fn exec_sync(&self, _ctx: &TtrpcContext, req: ExecSyncRequest) -> TResult<ExecSyncResponse> {
        let c = self.get(&req.id)?;
        if c.record().status != Status::RUNNING {
            return Err(ShimError::WrongState(format!("container {} is not running", req.id)).into());
        }
        if req.args.is_empty() {
            return Err(ShimError::Invalid("exec needs a command".into()).into());
        }
        let seq = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let timeout = u64::try_from(req.timeout_ms).ok().filter(|ms| *ms > 0).map(Duration::from_millis);
        let r = exec::exec_sync(&*self.runtime, &self.reaper, &c, seq, &req.args, timeout)
            .await
            .map_err(ShimError::Exec)?;
        let mut resp = ExecSyncResponse::new();
        resp.stdout = r.stdout;
        resp.stderr = r.stderr;
        resp.exit_code = r.exit_code;
        resp.timed_out = r.timed_out;
        Ok(resp)
    }

    async fn reopen_log(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> TResult<Empty> {
        let c = self.get(&req.id)?;
        c.log.reopen().map_err(|e| ShimError::os("reopening log", e))?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: protocol::shim::ResizePtyRequest) -> TResult<Empty> {
        let c = self.get(&req.id)?;
        let pty =
            c.pty.get().ok_or_else(|| ShimError::WrongState(format!("container {} has no terminal", req.id)))?;
        let (w, h) = (u16::try_from(req.width), u16::try_from(req.height));
        let (Ok(w), Ok(h)) = (w, h) else {
            return Err(ShimError::Invalid("terminal size out of range".into()).into());
        };
        crate::console::resize(pty, w, h).map_err(|e| ShimError::os("resizing terminal", e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> TResult<Empty> {
        let c = self.get(&req.id)?;
        c.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TResult<protocol::shim::StatsResponse> {
        let c = self.get(&req.id)?;
        let (pid, st) = {
            let r = c.record();
            (r.pid, r.status)
        };
        if st != Status::RUNNING {
            return Err(ShimError::WrongState(format!("container {} is not running", req.id)).into());
        }
        let cg = crate::cgroup::Cgroups::of(pid)
            .ok_or_else(|| ShimError::Missing(format!("no cgroups for container {}", req.id)))?;
        let mut r = protocol::shim::StatsResponse::new();
        r.cpu_nanos = cg.cpu_nanos().unwrap_or(0);
        if let Some((usage, working_set)) = cg.memory() {
            r.memory_usage = usage;
            r.memory_working_set = working_set;
        }
        // Inline on the shim's one thread, bounded: a blocking thread would
        // cost every shim ~56 kB for good (glibc keeps a finished thread's
        // stack for reuse), once kubelet has polled stats.
        if !req.counts {
            return Ok(r);
        }
        let p = crate::process_stats::count(&cg);
        (r.processes, r.threads, r.file_descriptors, r.sockets, r.threads_max) =
            (p.processes, p.threads, p.file_descriptors, p.sockets, p.threads_max);
        r.interfaces = crate::process_stats::interfaces(pid);
        Ok(r)
    }

    async fn update(&self, _ctx: &TtrpcContext, req: protocol::shim::UpdateRequest) -> TResult<Empty> {
        let c = self.get(&req.id)?;
        if c.record().status != Status::RUNNING {
            return Err(ShimError::WrongState(format!("container {} is not running", req.id)).into());
        }
        let file = c.bundle.join("update.json");
        std::fs::write(&file, &req.resources).map_err(|e| ShimError::os(format!("writing {}", file.display()), e))?;
        let result = self.runtime.update(&req.id, &file).await;
        let _ = std::fs::remove_file(&file);
        result.map_err(ShimError::Runtime)?;
        info!(self.log, "container resources updated"; "container_id" => &req.id);
        Ok(Empty::new())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: Empty) -> TResult<Empty> {
        for c in self.all() {
            if c.abandon().await {
                continue;
            }
            if c.record().status != Status::STOPPED {
                if let Err(e) = self.runtime.kill(&c.id, libc::SIGKILL, true).await {
                    warn!(self.log, "kill on shutdown"; "container_id" => &c.id, "error" => %e);
                }
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, c.wait()).await;
            }
            if let Err(e) = c.delete_in_runtime(&*self.runtime).await {
                warn!(self.log, "delete on shutdown"; "container_id" => &c.id, "error" => %e);
            }
        }
        self.containers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        namespaces::release(&self.pinned.lock().unwrap_or_else(|e| e.into_inner()));
        info!(self.log, "sandbox released, shim exiting");
        self.shutdown.notify_one();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests;
