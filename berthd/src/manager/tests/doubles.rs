//! Doubles for the manager's seams: a host that records what it is asked
//! and knows which fake shim pids are alive, a pod network that records
//! ADD and DEL (and fails ADD when told), and shims served in-process over
//! the real ttrpc API on the real `<dir>/shim.sock`, each in a mode the test
//! can change: answering, refusing (another API version), hung (never
//! answers) or dead (socket gone, pid ended).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use protocol::shim::{self as api, API_VERSION};
use ttrpc::r#async::TtrpcContext;

use crate::cni::{CniError, Network, PodNetwork, PodRef};
use crate::host::Host;
use crate::rootfs::{MountError, Result as MountResult};
use crate::shim_client::{ShimCallError, ShimLaunch, ShimLauncher};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A host whose processes are the fake shims' pids.
#[derive(Default)]
pub struct FakeHost {
    calls: Mutex<Vec<String>>,
    alive: Mutex<HashMap<u32, String>>,
    exits: tokio::sync::Notify,
}

impl FakeHost {
    /// Everything asked of it, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }
    /// `pid` runs as the shim of `sandbox_id`.
    pub fn spawn(&self, pid: u32, sandbox_id: &str) {
        lock(&self.alive).insert(pid, sandbox_id.to_string());
    }
    /// `pid` has ended.
    pub fn end(&self, pid: u32) {
        lock(&self.alive).remove(&pid);
        self.exits.notify_waiters();
    }
}

#[async_trait]
impl Host for FakeHost {
    fn running(&self, pid: u32) -> bool {
        lock(&self.alive).contains_key(&pid)
    }
    fn is_shim_of(&self, pid: u32, sandbox_id: &str) -> bool {
        lock(&self.alive).get(&pid).is_some_and(|s| s == sandbox_id)
    }
    fn kill_shim_of(&self, pid: u32, sandbox_id: &str) -> bool {
        if !self.is_shim_of(pid, sandbox_id) {
            return false;
        }
        self.record(format!("kill {pid}"));
        self.end(pid);
        true
    }
    async fn shim_exited(&self, pid: u32, sandbox_id: &str) {
        loop {
            let ended = self.exits.notified();
            if !self.is_shim_of(pid, sandbox_id) {
                return;
            }
            ended.await;
        }
    }
    fn mount_overlay(&self, _lowers: &[PathBuf], _upper: &Path, _work: &Path, target: &Path) -> MountResult<()> {
        self.record(format!("mount {}", target.display()));
        // What the mount would show there: an empty root to build in.
        std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint { path: target.into(), source })
    }
    fn mount_overlay_idmapped(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
        _userns: &Path,
        _root: (u32, u32),
        _staging: &Path,
    ) -> MountResult<()> {
        self.record(format!("idmapped {}", target.display()));
        self.mount_overlay(lowers, upper, work, target)
    }
    fn bind_idmapped(&self, source: &Path, target: &Path, _userns: &Path) -> MountResult<()> {
        self.record(format!("bind-idmapped {} {}", source.display(), target.display()));
        std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint { path: target.into(), source })
    }
    fn mount_read_only(&self, _lowers: &[PathBuf], target: &Path) -> MountResult<()> {
        self.record(format!("mount-ro {}", target.display()));
        std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint { path: target.into(), source })
    }
    fn unmount(&self, target: &Path) -> MountResult<()> {
        self.record(format!("unmount {}", target.display()));
        Ok(())
    }
    fn unmount_all_under(&self, _dir: &Path) -> MountResult<()> {
        Ok(())
    }
    fn release_ns_dir(&self, dir: &Path) {
        self.record(format!("release {}", dir.display()));
    }
    async fn oci_runtime(&self, args: &[&str]) {
        self.record(format!("runtime {}", args.join(" ")));
    }
}

/// A pod network that records its calls.
#[derive(Default)]
pub struct FakeNetwork {
    calls: Mutex<Vec<String>>,
    /// ADD fails while set.
    pub fail_add: AtomicBool,
    conf_dir: PathBuf,
}

impl FakeNetwork {
    /// Its calls: `ADD <id>`, `DEL <id>`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

#[async_trait]
impl PodNetwork for FakeNetwork {
    fn load(&self) -> std::result::Result<Option<Network>, CniError> {
        Ok(Some(Network { name: "fake".into(), cni_version: "1.0.0".into(), plugins: vec![serde_json::json!({})] }))
    }
    fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }
    async fn add(&self, _net: &Network, pod: &PodRef<'_>) -> std::result::Result<serde_json::Value, CniError> {
        lock(&self.calls).push(format!("ADD {}", pod.id));
        if self.fail_add.load(Ordering::SeqCst) {
            return Err(CniError::Failed {
                plugin: "fake".into(),
                command: "ADD".into(),
                message: "as the test asked".into(),
            });
        }
        Ok(serde_json::json!({"ips": [{"address": "10.0.0.2/24"}]}))
    }
    async fn del(
        &self,
        _net: &Network,
        pod: &PodRef<'_>,
        _result: Option<&serde_json::Value>,
    ) -> std::result::Result<(), CniError> {
        lock(&self.calls).push(format!("DEL {}", pod.id));
        Ok(())
    }
}

/// How a fake shim behaves now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers every call.
    Answering,
    /// Speaks another shim API version.
    Refusing,
    /// Never answers.
    Hung,
    /// Its socket is gone and its pid ended.
    Dead,
}

/// One fake shim.
pub struct FakeShim {
    sandbox_id: String,
    dir: PathBuf,
    pid: u32,
    host: Arc<FakeHost>,
    mode: Mutex<Mode>,
    calls: Mutex<Vec<String>>,
    containers: Mutex<HashMap<String, api::ContainerState>>,
    /// Create fails (as `runc create` would) while set.
    pub fail_create: AtomicBool,
}

impl FakeShim {
    /// Its calls, by method name (`Connect`, `Shutdown`, `Delete <id>`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
    /// Changes how it behaves; Dead ends it for good.
    pub fn set(&self, mode: Mode) {
        *lock(&self.mode) = mode;
        if mode == Mode::Dead {
            self.die();
        }
    }
    fn die(&self) {
        let _ = std::fs::remove_file(self.dir.join("shim.sock"));
        self.host.end(self.pid);
    }
    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }
    async fn gate(&self) {
        if *lock(&self.mode) == Mode::Hung {
            std::future::pending::<()>().await;
        }
    }
}

fn state(id: &str, pid: u32, status: api::Status) -> api::ContainerState {
    let mut s = api::ContainerState::new();
    s.id = id.to_string();
    s.pid = pid;
    s.status = status.into();
    s
}

#[async_trait]
impl api::shim_ttrpc::Shim for FakeShim {
    async fn connect(&self, _: &TtrpcContext, _: api::ConnectRequest) -> ttrpc::Result<api::ConnectResponse> {
        self.record("Connect".into());
        self.gate().await;
        let mut r = api::ConnectResponse::new();
        r.api_version = if *lock(&self.mode) == Mode::Refusing { API_VERSION + 1 } else { API_VERSION };
        r.shim_pid = self.pid;
        Ok(r)
    }
    async fn create(&self, _: &TtrpcContext, req: api::CreateRequest) -> ttrpc::Result<api::ContainerState> {
        self.record(format!("Create {}", req.id));
        self.gate().await;
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                "runc create failed (as the test asked)",
            )));
        }
        let s = state(&req.id, self.pid + 1000, api::Status::CREATED);
        lock(&self.containers).insert(req.id.clone(), s.clone());
        Ok(s)
    }
    async fn state(&self, _: &TtrpcContext, req: api::ContainerRequest) -> ttrpc::Result<api::ContainerState> {
        self.gate().await;
        lock(&self.containers).get(&req.id).cloned().ok_or_else(|| not_found(&req.id))
    }
    async fn list(&self, _: &TtrpcContext, _: api::Empty) -> ttrpc::Result<api::ListResponse> {
        self.gate().await;
        let mut r = api::ListResponse::new();
        r.containers = lock(&self.containers).values().cloned().collect();
        Ok(r)
    }
    async fn wait(&self, _: &TtrpcContext, _: api::ContainerRequest) -> ttrpc::Result<api::ContainerState> {
        std::future::pending().await
    }
    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        self.record(format!("Kill {}", req.id));
        self.gate().await;
        Ok(api::Empty::new())
    }
    async fn delete(&self, _: &TtrpcContext, req: api::ContainerRequest) -> ttrpc::Result<api::ContainerState> {
        self.record(format!("Delete {}", req.id));
        self.gate().await;
        let s = lock(&self.containers).remove(&req.id).ok_or_else(|| not_found(&req.id))?;
        Ok(s)
    }
    async fn shutdown(&self, _: &TtrpcContext, _: api::Empty) -> ttrpc::Result<api::Empty> {
        self.record("Shutdown".into());
        self.gate().await;
        self.die();
        Ok(api::Empty::new())
    }
}

fn not_found(id: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::NOT_FOUND, format!("container {id} not found")))
}

/// Starts fake shims, as berth-shim processes would be started.
pub struct FakeShims {
    host: Arc<FakeHost>,
    next_pid: AtomicU32,
    /// Start fails while set.
    pub fail_start: AtomicBool,
    /// New shims refuse Connect (another API version) while set.
    pub refuse_new: AtomicBool,
    shims: Mutex<HashMap<String, Arc<FakeShim>>>,
    servers: Mutex<Vec<ttrpc::r#async::Server>>,
}

impl FakeShims {
    /// Fake shims whose pids live on `host`.
    pub fn new(host: Arc<FakeHost>) -> Self {
        FakeShims {
            host,
            next_pid: AtomicU32::new(4_000_000),
            fail_start: AtomicBool::new(false),
            refuse_new: AtomicBool::new(false),
            shims: Mutex::new(HashMap::new()),
            servers: Mutex::new(Vec::new()),
        }
    }
    /// Every shim started.
    pub fn all(&self) -> Vec<Arc<FakeShim>> {
        lock(&self.shims).values().cloned().collect()
    }

    /// The shim of `sandbox_id`.
    pub fn of(&self, sandbox_id: &str) -> Arc<FakeShim> {
        lock(&self.shims).get(sandbox_id).cloned().unwrap_or_else(|| panic!("no fake shim for {sandbox_id}"))
    }
}

#[async_trait]
impl ShimLauncher for FakeShims {
    async fn start(&self, l: &ShimLaunch) -> std::result::Result<u32, ShimCallError> {
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(ShimCallError::StartFailed("(as the test asked)".into()));
        }
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        let mode = if self.refuse_new.load(Ordering::SeqCst) { Mode::Refusing } else { Mode::Answering };
        let shim = Arc::new(FakeShim {
            sandbox_id: l.args.id.clone(),
            dir: l.args.dir.clone(),
            pid,
            host: Arc::clone(&self.host),
            mode: Mutex::new(mode),
            calls: Mutex::new(Vec::new()),
            containers: Mutex::new(HashMap::new()),
            fail_create: AtomicBool::new(false),
        });
        let sock = l.args.dir.join("shim.sock");
        // A long state folder makes a long path: bound as berth-shim binds it.
        let listener = protocol::socket_path::SocketPath::new(&sock)
            .and_then(|p| tokio::net::UnixListener::bind(p.path()))
            .map_err(|e| ShimCallError::StartFailed(format!("binding {}: {e}", sock.display())))?;
        std::fs::write(l.args.dir.join("shim.pid"), pid.to_string())
            .map_err(|e| ShimCallError::StartFailed(e.to_string()))?;
        let service: Arc<dyn api::shim_ttrpc::Shim + Send + Sync> = shim.clone();
        let mut server =
            ttrpc::r#async::Server::new().add_listener(listener.into()).register_service(api::create_shim(service));
        server.start().await.map_err(|e| ShimCallError::StartFailed(e.to_string()))?;
        lock(&self.servers).push(server);
        self.host.spawn(pid, &shim.sandbox_id);
        lock(&self.shims).insert(l.args.id.clone(), shim);
        Ok(pid)
    }
}
