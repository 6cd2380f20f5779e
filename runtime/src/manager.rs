//! The manager: Berth's view of sandboxes and containers. It validates
//! requests, keeps durable metadata, prepares bundles and root filesystems,
//! and forwards lifecycle calls to each sandbox's shim, which is the source
//! of truth for what runs. Data flows one way: request → manager → shim.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use protocol::cri;
use protocol::shim::{self as api, Status};
use serde::{Deserialize, Serialize};
use slog::{debug, error, info, warn, Logger};

use crate::error::{Error, IoContext, Kind, Result};
use crate::failpoint;
use crate::ids;
use crate::images::ImageStore;
use crate::pod_files;
use crate::rootfs;
use crate::shim_client::{self, Shim, ShimLaunch, CALL_TIMEOUT};
use crate::spec::{self, ImageDefaults, SandboxView};
use crate::store::{Db, Store};

/// Events kept for a slow GetContainerEvents client before it misses some
/// (it must then resync by listing, as kubelet does).
const EVENT_BACKLOG: usize = 1024;

/// How often berthd checks that a shim is alive where it cannot watch it
/// through a pidfd (Linux before 5.3).
const SHIM_CHECK: Duration = Duration::from_millis(200);

/// How old a disk usage figure may get before it is walked again (kubelet
/// asks for stats every 10 s or so).
const USAGE_MAX_AGE: Duration = Duration::from_secs(10);

/// How long StopContainer waits for SIGKILL to take effect.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Daemon settings the manager needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Persistent root (`--root`).
    pub root: PathBuf,
    /// Runtime state (`--state`).
    pub state: PathBuf,
    /// berth-shim binary.
    pub shim_binary: PathBuf,
    /// OCI runtime binary.
    pub runtime: PathBuf,
    /// Longest one OCI runtime call may take (the shim enforces it).
    pub runtime_timeout: Duration,
    /// Longest log line before the shim splits it.
    pub max_log_line: usize,
    /// berthd-side log rotation (None: leave it to kubelet).
    pub log_rotation: Option<crate::log_rotation::Policy>,
    /// How often logs are checked for rotation.
    pub log_check_interval: Duration,
    /// CNI configuration and plugins.
    pub cni: crate::cni::Cni,
    /// Registry settings.
    pub file: crate::registry_config::FileConfig,
    /// How container cgroups are named (kubelet's cgroupDriver).
    pub cgroup_driver: crate::settings::CgroupDriver,
}

/// Where an object is in its life. Creating and Removing records exist
/// only while a call is between its side effects; after a crash, berthd
/// rolls a Creating object back and finishes removing a Removing one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Being created; not visible to clients.
    Creating,
    /// Fully created.
    #[default]
    Ready,
    /// Being removed.
    Removing,
}

/// Durable record of a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxMeta {
    /// Sandbox id.
    pub id: String,
    /// The config it was created with (returned unchanged in statuses).
    pub config: cri::PodSandboxConfig,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Runtime handler asked for.
    pub runtime_handler: String,
    /// Stopped by StopPodSandbox.
    pub stopped: bool,
    /// State folder.
    pub dir: PathBuf,
    /// Namespaces the shim pinned.
    pub pinned: Vec<String>,
    /// Hostname inside the pod.
    pub hostname: String,
    /// The shim's pid.
    pub shim_pid: u32,
    /// pid 1 of the pod's pid namespace (0: none).
    #[serde(default)]
    pub pod_init_pid: u32,
    /// Life phase.
    #[serde(default)]
    pub phase: Phase,
    /// The CNI ADD result, when the pod has CNI networking.
    #[serde(default)]
    pub network: Option<serde_json::Value>,
    /// The pod's IPs from CNI.
    #[serde(default)]
    pub ips: Vec<String>,
    /// CNI DEL has run (on stop).
    #[serde(default)]
    pub network_released: bool,
    /// The CNI configuration ADD ran with; DEL runs with it.
    #[serde(default)]
    pub network_config: Option<crate::cni::Network>,
}

/// Durable record of a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// Container id.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// The config it was created with.
    pub config: cri::ContainerConfig,
    /// Image id (`sha256:...`).
    pub image_id: String,
    /// Image as ContainerStatus names it: as the client asked, or a repo
    /// tag when it asked by id.
    pub image_name: String,
    /// A repo digest of the image (`repo@sha256:<manifest>`); empty in
    /// records from before it was kept (the image id stands in).
    #[serde(default)]
    pub image_ref: String,
    /// Layers its rootfs stacks (kept from garbage collection).
    pub layers: Vec<String>,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Absolute log file path, when it logs.
    pub log_path: Option<PathBuf>,
    /// OCI bundle folder.
    pub bundle: PathBuf,
    /// Signal that asks it to stop.
    pub stop_signal: i32,
    /// Life phase.
    #[serde(default)]
    pub phase: Phase,
    /// The identity its process runs with (uid, gid, every group), as the
    /// spec was built; None in records from before it was kept.
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
}

/// What one pod's shim says of its containers.
enum ShimView {
    /// It answered: its containers' states.
    Listed(HashMap<String, RuntimeState>),
    /// It runs but does not answer (the error it gave).
    Silent(String),
    /// It is gone (since then, unix nanoseconds).
    Gone(i64),
}

impl ShimView {
    /// A container's state; None when the shim answered without it.
    fn state_of(&self, sandbox_id: &str, id: &str) -> Option<RuntimeState> {
        match self {
            ShimView::Listed(m) => m.get(id).cloned(),
            ShimView::Silent(why) => Some(RuntimeState::not_answering(sandbox_id, why)),
            ShimView::Gone(at) => Some(RuntimeState::shim_gone(*at)),
        }
    }
}

/// Runtime facts of a container, from its shim.
#[derive(Clone, Debug, Default)]
pub struct RuntimeState {
    /// CRI state.
    pub state: i32,
    /// Init pid.
    pub pid: u32,
    /// Exit code.
    pub exit_code: i32,
    /// Unix nanoseconds.
    pub started_at: i64,
    /// Unix nanoseconds.
    pub finished_at: i64,
    /// CRI reason.
    pub reason: String,
    /// CRI message.
    pub message: String,
    /// Log record bytes written, and dropped.
    pub log_bytes: (u64, u64),
}

impl RuntimeState {
    fn from_shim(s: &api::ContainerState) -> Self {
        let status = s.status.enum_value_or_default();
        let state = match status {
            Status::CREATED => cri::ContainerState::ContainerCreated,
            Status::RUNNING => cri::ContainerState::ContainerRunning,
            Status::STOPPED => cri::ContainerState::ContainerExited,
            Status::UNKNOWN => cri::ContainerState::ContainerUnknown,
        } as i32;
        let reason = match status {
            Status::STOPPED if s.oom_killed => "OOMKilled",
            Status::STOPPED if s.exit_code == 0 => "Completed",
            Status::STOPPED => "Error",
            _ => "",
        };
        RuntimeState {
            state,
            pid: s.pid,
            exit_code: s.exit_code,
            started_at: s.started_at,
            finished_at: s.finished_at,
            log_bytes: (s.log_bytes_written, s.log_bytes_dropped),
            reason: reason.to_string(),
            message: s.message.clone(),
        }
    }

    /// The state of a container its shim does not know.
    fn unknown_to_shim() -> Self {
        RuntimeState {
            state: cri::ContainerState::ContainerUnknown as i32,
            reason: "Unknown".into(),
            message: "the shim does not know this container".into(),
            ..Default::default()
        }
    }

    /// The state of a container whose shim runs but does not answer.
    fn not_answering(sandbox_id: &str, why: &str) -> Self {
        RuntimeState {
            state: cri::ContainerState::ContainerUnknown as i32,
            reason: "ShimNotAnswering".into(),
            message: format!("the shim of pod sandbox {sandbox_id} does not answer: {why}"),
            ..Default::default()
        }
    }

    fn shim_gone(lost_at: i64) -> Self {
        RuntimeState {
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: 255,
            finished_at: lost_at,
            reason: "ShimGone".into(),
            message: "the sandbox's shim is not running; the container's real exit status is lost".into(),
            ..Default::default()
        }
    }
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

struct Sandbox {
    meta: Mutex<SandboxMeta>,
    shim: tokio::sync::Mutex<Option<Shim>>,
    /// Serializes lifecycle calls on one sandbox.
    op: tokio::sync::Mutex<()>,
    /// When its shim was found dead (Unix nanoseconds).
    lost: Mutex<Option<i64>>,
}

impl Sandbox {
    fn new(meta: SandboxMeta, shim: Option<Shim>) -> Arc<Self> {
        Arc::new(Sandbox {
            meta: Mutex::new(meta),
            shim: tokio::sync::Mutex::new(shim),
            op: Default::default(),
            lost: Mutex::new(None),
        })
    }

    fn lost_at(&self) -> Option<i64> {
        *lock(&self.lost)
    }

    /// Whether its shim still runs: by pid, checked to be this sandbox's
    /// berth-shim (a reused pid, another pod's shim too, is not).
    fn shim_running(&self) -> bool {
        let (pid, id) = {
            let m = lock(&self.meta);
            (m.shim_pid, m.id.clone())
        };
        running(pid) && crate::pidfd::is_shim_of(pid as i32, &id)
    }

    /// What a failed call to its shim means: a shim that still runs is
    /// silent (stopped, overloaded: nothing may be taken for exited); one
    /// that is gone is forgotten.
    async fn after_failed_call(&self, why: String) -> ShimView {
        if self.shim_running() {
            return ShimView::Silent(why);
        }
        *self.shim.lock().await = None;
        ShimView::Gone(now_nanos())
    }
}

/// What startup reconciliation found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Sandboxes whose shim answered.
    pub recovered: usize,
    /// Sandboxes whose shim is gone.
    pub lost: usize,
    /// Half-created objects rolled back.
    pub rolled_back: usize,
    /// Interrupted removals finished.
    pub finished_removals: usize,
    /// Leftover folders with no record, cleaned.
    pub orphans: usize,
}

/// The manager.
pub struct Manager {
    cfg: Config,
    log: Logger,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, ContainerMeta>>,
    names: Mutex<HashSet<String>>,
    /// Log-writing errors already reported, by container.
    log_errors: Mutex<HashMap<String, String>>,
    sandbox_store: Store,
    container_store: Store,
    /// The image store (blocking file work runs under this lock).
    pub images: Arc<tokio::sync::Mutex<ImageStore>>,
    /// Registry pulls.
    pub puller: Arc<crate::pull::Puller>,
    /// Container lifecycle events for CRI GetContainerEvents.
    events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
    /// Previous CPU samples, for CPU rates.
    cpu_rates: crate::stats::CpuRates,
    /// What the OCI runtime and kernel support (probed at start).
    features: crate::runtime_features::Features,
    /// berthd's metrics (CRI calls, pulls, recovery).
    metrics: Arc<crate::metrics::Metrics>,
    /// Disk usage of writable layers and the image store, walked in the
    /// background.
    usage: Arc<crate::usage_cache::UsageCache>,
    /// The image store's blob and snapshot folders, for ImageFsInfo.
    image_dirs: Vec<PathBuf>,
    /// This manager, for the shim watchers of new pods; set when the shim
    /// monitor starts (at the end of recovery, before any call is served).
    me: std::sync::OnceLock<std::sync::Weak<Manager>>,
    /// Admission: RunPodSandbox calls doing their work at once; more wait
    /// their turn, so a burst of pods cannot start hundreds of shims and
    /// CNI plugins together.
    pod_starts: tokio::sync::Semaphore,
}

/// RunPodSandbox calls past validation at once.
pub const MAX_CONCURRENT_POD_STARTS: usize = 8;

/// Watches one sandbox's shim: through a pidfd, whose exit wakes this task
/// at once (no polling; a pid reused by any other process, another pod's
/// shim too, is never taken for this shim), or, where pidfds are missing
/// (Linux before 5.3), by looking every [`SHIM_CHECK`]. A shim that ends
/// while its pod is Ready is lost; one ended by RemovePodSandbox is not.
fn watch_shim(manager: std::sync::Weak<Manager>, sb: Arc<Sandbox>) {
    tokio::spawn(async move {
        let (pid, id) = {
            let meta = lock(&sb.meta);
            (meta.shim_pid as i32, meta.id.clone())
        };
        match crate::pidfd::Pidfd::open(pid) {
            // Pinned first, checked second: the pidfd is this shim's.
            Ok(fd) if sb.shim_running() => {
                let _ = fd.exited().await;
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(_) => {
                while sb.shim_running() {
                    tokio::time::sleep(SHIM_CHECK).await;
                }
            }
        }
        let Some(m) = manager.upgrade() else { return };
        let current = lock(&m.sandboxes).get(&id).is_some_and(|s| Arc::ptr_eq(s, &sb));
        if current && lock(&sb.meta).phase == Phase::Ready && sb.lost_at().is_none() {
            m.shim_lost(&sb).await;
        }
    });
}

/// Removes folders on a blocking thread: a writable layer can hold
/// millions of files.
async fn remove_trees(dirs: Vec<PathBuf>) {
    let _ = tokio::task::spawn_blocking(move || {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sandbox_key(m: &cri::PodSandboxMetadata) -> String {
    format!("pod/{}/{}/{}/{}", m.name, m.namespace, m.uid, m.attempt)
}

fn container_key(sandbox_id: &str, m: &cri::ContainerMetadata) -> String {
    format!("ctr/{sandbox_id}/{}/{}", m.name, m.attempt)
}

/// The signal a container asks to be stopped with.
fn stop_signal(config: &cri::ContainerConfig, image: &serde_json::Value) -> i32 {
    // CRI Signal enum values 1.. map to names; RUNTIME_DEFAULT uses the image.
    let by_cri = cri::Signal::try_from(config.stop_signal).ok().filter(|s| *s != cri::Signal::RuntimeDefault);
    let name = match by_cri {
        Some(s) => s.as_str_name().to_string(),
        None => image["config"]["StopSignal"].as_str().unwrap_or("SIGTERM").to_string(),
    };
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>().map(|s| s as i32).unwrap_or(libc::SIGTERM)
}

impl Manager {
    /// Opens the manager's stores under `cfg.root` and `cfg.state`.
    pub fn open(cfg: Config, log: Logger) -> Result<Self> {
        use crate::dir_modes::{ensure_dir, PRIVATE, TOP};
        for (d, mode) in [
            (cfg.root.clone(), TOP),
            (cfg.state.clone(), TOP),
            (cfg.root.join("containers"), PRIVATE),
            (cfg.root.join("images"), PRIVATE),
            (cfg.state.join("sandboxes"), PRIVATE),
            (cfg.state.join("containers"), PRIVATE),
            (cfg.state.join("runc"), PRIVATE),
        ] {
            ensure_dir(&d, mode)?;
        }
        let db = Db::open(&cfg.root.join("metadata.redb"))?;
        crate::dir_modes::set(&cfg.root.join("metadata.redb"), crate::dir_modes::FILE)?;
        let sandbox_store = Store::open(&db, "sandboxes")?;
        let container_store = Store::open(&db, "containers")?;
        let images = ImageStore::open(&cfg.root, &db)?;
        let image_dirs = images.usage_dirs();
        let content = images.content().clone();
        let images = Arc::new(tokio::sync::Mutex::new(images));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let puller = Arc::new(crate::pull::Puller::new(
            cfg.file.clone(),
            images.clone(),
            content,
            metrics.clone(),
            log.new(slog::o!("component" => "pull")),
        ));
        let features = crate::runtime_features::Features::probe(&cfg.runtime);
        let m = Manager {
            cfg,
            log,
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            names: Mutex::new(HashSet::new()),
            log_errors: Mutex::new(HashMap::new()),
            sandbox_store,
            container_store,
            images,
            puller,
            events: tokio::sync::broadcast::channel(EVENT_BACKLOG).0,
            cpu_rates: Default::default(),
            features,
            metrics,
            usage: crate::usage_cache::UsageCache::new(USAGE_MAX_AGE),
            image_dirs,
            pod_starts: tokio::sync::Semaphore::new(MAX_CONCURRENT_POD_STARTS),
            me: std::sync::OnceLock::new(),
        };
        for s in m.sandbox_store.load_all::<SandboxMeta>()? {
            lock(&m.names).insert(sandbox_key(&s.config.metadata.clone().unwrap_or_default()));
            lock(&m.sandboxes).insert(s.id.clone(), Sandbox::new(s, None));
        }
        for c in m.container_store.load_all::<ContainerMeta>()? {
            lock(&m.names).insert(container_key(&c.sandbox_id, &c.config.metadata.clone().unwrap_or_default()));
            lock(&m.containers).insert(c.id.clone(), c);
        }
        Ok(m)
    }

    /// Reconciles with what runs, before berthd serves: reconnects to every
    /// shim, rolls back objects a crash left half-created, finishes
    /// interrupted removals, cleans folders no record owns, and starts
    /// watching exits and shims.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery> {
        let mut r = Recovery::default();
        let sandboxes: Vec<_> = lock(&self.sandboxes).values().cloned().collect();
        for sb in &sandboxes {
            let meta = lock(&sb.meta).clone();
            if meta.phase == Phase::Creating {
                self.rollback_sandbox(&meta).await;
                r.rolled_back += 1;
                continue;
            }
            match Shim::connect(&meta.dir).await {
                Ok(s) => {
                    *sb.shim.lock().await = Some(s);
                    r.recovered += 1;
                }
                Err(e) if e.kind == Kind::FailedPrecondition => {
                    // A shim this berthd cannot speak to: left alone, and
                    // every call on its pod says why.
                    error!(self.log, "sandbox shim refused"; "sandbox_id" => &meta.id, "error" => %e);
                    r.lost += 1;
                }
                Err(e) => {
                    warn!(self.log, "sandbox shim unreachable"; "sandbox_id" => &meta.id, "error" => %e);
                    self.shim_lost(sb).await;
                    r.lost += 1;
                }
            }
        }
        let containers: Vec<ContainerMeta> = lock(&self.containers).values().cloned().collect();
        for c in &containers {
            match c.phase {
                Phase::Creating => {
                    self.rollback_container(c).await;
                    r.rolled_back += 1;
                }
                Phase::Removing => match self.remove_container(&c.id).await {
                    Ok(()) => r.finished_removals += 1,
                    // Left visible (phase Removing) for the client to retry;
                    // one stuck object must not keep berthd from serving.
                    Err(e) => warn!(self.log, "finishing a removal failed"; "container_id" => &c.id, "error" => %e),
                },
                Phase::Ready => {}
            }
        }
        for sb in &sandboxes {
            let (id, phase) = {
                let m = lock(&sb.meta);
                (m.id.clone(), m.phase)
            };
            if phase == Phase::Removing {
                match self.remove_pod_sandbox(&id).await {
                    Ok(()) => r.finished_removals += 1,
                    Err(e) => warn!(self.log, "finishing a removal failed"; "sandbox_id" => &id, "error" => %e),
                }
            }
        }
        r.orphans = self.clean_orphans().await;
        self.resume_interrupted_rotations().await;
        // A pull or import cut short leaves temp entries, and a removal cut
        // short leaves blobs and snapshots no image owns.
        self.with_image_store_in_use(|store, in_use| {
            store.clean_temp();
            Ok(store.collect(in_use))
        })
        .await?
        .discard()
        .await;
        for c in lock(&self.containers).values() {
            self.watch_exit(&c.sandbox_id, &c.id);
        }
        Arc::clone(self).spawn_shim_monitor();
        if let Some(policy) = self.cfg.log_rotation {
            Arc::clone(self).spawn_log_rotation(policy);
        }
        Ok(r)
    }

    /// A running container whose log file is gone had its log renamed by a
    /// rotation that berthd died in before the shim reopened it: the shim
    /// still writes to the rotated file, so it is told to reopen now.
    async fn resume_interrupted_rotations(&self) {
        let missing: Vec<ContainerMeta> = lock(&self.containers)
            .values()
            .filter(|c| c.phase == Phase::Ready && c.log_path.as_deref().is_some_and(|p| !p.exists()))
            .cloned()
            .collect();
        for c in missing {
            if self.runtime_state(&c).await.state != cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            match self.reopen_container_log(&c.id).await {
                Ok(()) => {
                    info!(self.log, "container log reopened after an interrupted rotation"; "container_id" => &c.id)
                }
                Err(e) => warn!(self.log, "reopening a container log failed"; "container_id" => &c.id, "error" => %e),
            }
        }
    }

    /// Folders under the state and root dirs that no record owns: left by
    /// a crash between a record's deletion and its files' removal.
    async fn clean_orphans(&self) -> usize {
        let mut n = 0;
        let known_sb: HashSet<String> = lock(&self.sandboxes).keys().cloned().collect();
        let known_c: HashSet<String> = lock(&self.containers).keys().cloned().collect();
        for (dir, known, sandbox) in [
            (self.cfg.state.join("sandboxes"), &known_sb, true),
            (self.cfg.state.join("containers"), &known_c, false),
            (self.cfg.root.join("containers"), &known_c, false),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if known.contains(&name) {
                    continue;
                }
                warn!(self.log, "removing leftover folder"; "path" => e.path().display().to_string());
                if sandbox {
                    self.teardown_sandbox_dir(&e.path(), 0).await;
                } else {
                    self.force_delete_in_runtime(&name).await;
                    let _ = rootfs::unmount(&e.path().join("rootfs"));
                    let _ = std::fs::remove_dir_all(e.path());
                }
                n += 1;
            }
        }
        n
    }

    /// Undoes a sandbox a crash left half-created.
    async fn rollback_sandbox(&self, meta: &SandboxMeta) {
        warn!(self.log, "rolling back half-created pod sandbox"; "sandbox_id" => &meta.id);
        // The crash may have come after CNI ADD; DEL is idempotent.
        if let Err(e) = self.release_network(meta).await {
            warn!(self.log, "CNI DEL failed"; "sandbox_id" => &meta.id, "error" => %e);
        }
        self.teardown_sandbox_dir(&meta.dir, meta.pod_init_pid).await;
        let _ = self.sandbox_store.delete(&meta.id).await;
        lock(&self.sandboxes).remove(&meta.id);
        self.release(&sandbox_key(&meta.config.metadata.clone().unwrap_or_default()));
    }

    /// Undoes a container a crash left half-created.
    async fn rollback_container(&self, meta: &ContainerMeta) {
        warn!(self.log, "rolling back half-created container"; "container_id" => &meta.id, "sandbox_id" => &meta.sandbox_id);
        if let Err(e) = self.delete_in_shim(meta).await {
            warn!(self.log, "shim delete failed"; "container_id" => &meta.id, "error" => %e);
        }
        let _ = rootfs::unmount(&meta.bundle.join("rootfs"));
        remove_trees(vec![meta.bundle.clone(), self.cfg.root.join("containers").join(&meta.id)]).await;
        let _ = self.container_store.delete(&meta.id).await;
        lock(&self.containers).remove(&meta.id);
        self.release(&container_key(&meta.sandbox_id, &meta.config.metadata.clone().unwrap_or_default()));
    }

    /// Removes a container from its shim, or from the OCI runtime directly
    /// when the shim is gone. The shim's error (the runtime's, when its
    /// delete failed or hung) is returned: until the runtime has let the
    /// container go, its cgroup and state are still there.
    async fn delete_in_shim(&self, meta: &ContainerMeta) -> Result<()> {
        let shim = match self.sandbox(&meta.sandbox_id) {
            Ok(sb) if sb.lost_at().is_none() => self.shim_of(&sb).await.ok(),
            _ => None,
        };
        match shim {
            Some(shim) => {
                shim.api().delete(shim.runtime_ctx(), &shim_client::req(&meta.id)).await?;
            }
            None => self.force_delete_in_runtime(&meta.id).await,
        }
        Ok(())
    }

    /// Watches for dead shims: a shim that is gone is noticed within a
    /// fraction of a second, not at the next call.
    fn spawn_shim_monitor(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let _ = self.me.set(weak.clone());
        for sb in lock(&self.sandboxes).values() {
            watch_shim(weak.clone(), sb.clone());
        }
    }

    /// A sandbox's shim is gone: its containers have lost their monitor and
    /// their log reader, so they are ended (through the OCI runtime) and
    /// reported Exited; the pod's init is ended too. Its namespaces stay
    /// pinned until the sandbox is removed.
    async fn shim_lost(&self, sb: &Sandbox) {
        {
            let mut lost = lock(&sb.lost);
            if lost.is_some() {
                return;
            }
            *lost = Some(now_nanos());
        }
        *sb.shim.lock().await = None;
        let meta = lock(&sb.meta).clone();
        warn!(self.log, "shim is gone: pod is NotReady, its containers are ended"; "sandbox_id" => &meta.id, "shim_pid" => meta.shim_pid);
        for c in self.containers_of(&meta.id) {
            self.runtime_cmd(&["kill", "--all", &c.id, "KILL"]).await;
        }
        kill_pod_init(meta.pod_init_pid, &meta.id);
    }

    /// Rotates running containers' logs by size (kubelet's semantics), for
    /// nodes where kubelet does not.
    fn spawn_log_rotation(self: Arc<Self>, policy: crate::log_rotation::Policy) {
        let weak = Arc::downgrade(&self);
        let interval = self.cfg.log_check_interval;
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                let candidates: Vec<ContainerMeta> = lock(&m.containers)
                    .values()
                    .filter(|c| {
                        c.phase == Phase::Ready
                            && c.log_path.as_deref().is_some_and(|p| crate::log_rotation::due(p, policy))
                    })
                    .cloned()
                    .collect();
                for c in candidates {
                    if m.runtime_state(&c).await.state != cri::ContainerState::ContainerRunning as i32 {
                        continue;
                    }
                    let Some(log) = c.log_path.clone() else { continue };
                    let id = c.id.clone();
                    let mgr = Arc::clone(&m);
                    let r = crate::log_rotation::rotate(&log, policy, chrono::Utc::now(), || async move {
                        mgr.reopen_container_log(&id).await
                    })
                    .await;
                    match r {
                        Ok(Some(to)) => {
                            debug!(m.log, "container log rotated"; "container_id" => &c.id, "rotated_to" => to.display().to_string())
                        }
                        Ok(None) => {}
                        Err(e) => warn!(m.log, "container log rotation failed"; "container_id" => &c.id, "error" => %e),
                    }
                }
            }
        });
    }

    /// The cgroup driver berthd is configured with.
    pub fn cgroup_driver(&self) -> crate::settings::CgroupDriver {
        self.cfg.cgroup_driver
    }

    /// berthd's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The node's pods and containers by state, the shims that answer and
    /// every container's log bytes, for a metrics scrape (asked of the shims
    /// as ListContainers asks them).
    pub async fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let sandboxes: Vec<SandboxMeta> = lock(&self.sandboxes)
            .values()
            .map(|sb| lock(&sb.meta).clone())
            .filter(|m| m.phase != Phase::Creating)
            .collect();
        let metas: Vec<ContainerMeta> =
            lock(&self.containers).values().filter(|c| c.phase != Phase::Creating).cloned().collect();
        let sids: Vec<String> = sandboxes.iter().map(|m| m.id.clone()).collect();
        let views = self.shim_views(&sids).await;
        let mut snap = crate::metrics::Snapshot::default();
        let (mut ready, mut notready) = (0, 0);
        for meta in &sandboxes {
            let listed = matches!(views.get(&meta.id), Some(ShimView::Listed(_)));
            snap.shims_alive += i64::from(listed);
            if meta.stopped || !listed {
                notready += 1;
            } else {
                ready += 1;
            }
        }
        snap.pods = vec![("ready".into(), ready), ("notready".into(), notready)];
        let mut by_state: BTreeMap<&str, i64> =
            ["created", "running", "exited", "unknown"].into_iter().map(|s| (s, 0)).collect();
        for m in &metas {
            let st = match views.get(&m.sandbox_id) {
                Some(ShimView::Listed(states)) => states.get(&m.id),
                _ => None,
            };
            let name = match st.map(|s| s.state) {
                Some(s) if s == cri::ContainerState::ContainerCreated as i32 => "created",
                Some(s) if s == cri::ContainerState::ContainerRunning as i32 => "running",
                Some(s) if s == cri::ContainerState::ContainerExited as i32 => "exited",
                _ => "unknown",
            };
            *by_state.entry(name).or_default() += 1;
            if let Some(s) = st {
                snap.logs.push((m.id.clone(), m.sandbox_id.clone(), s.log_bytes.0, s.log_bytes.1));
            }
        }
        snap.containers = by_state.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        snap.logs.sort();
        snap
    }

    /// What the OCI runtime and kernel support, as the runtime handlers advertise it.
    pub fn features(&self) -> crate::runtime_features::Features {
        self.features
    }

    /// Subscribes to container lifecycle events.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Publishes an event with the pod's status and its containers' statuses
    /// as they are now. Best effort: with no subscriber it costs nothing.
    /// A pod's own events carry its id as `container_id`, as containerd's do.
    async fn emit(&self, sandbox_id: &str, container_id: &str, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let pod_sandbox_status = self.pod_sandbox_status(sandbox_id, false).await.ok().map(|(s, _)| s);
        self.emit_with(pod_sandbox_status, sandbox_id, container_id, kind).await;
    }

    /// [`Self::emit`] with the pod's status given (a removed pod has none to ask).
    async fn emit_with(
        &self,
        pod_sandbox_status: Option<cri::PodSandboxStatus>,
        sandbox_id: &str,
        container_id: &str,
        kind: cri::ContainerEventType,
    ) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let containers_statuses = self.pod_container_statuses(sandbox_id).await;
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }

    /// Follows a container until it exits, so its exit reaches berthd (and
    /// its log) as it happens. Best effort: the shim's state stays the truth.
    fn watch_exit(self: &Arc<Self>, sandbox_id: &str, container_id: &str) {
        let Ok(sb) = self.sandbox(sandbox_id) else { return };
        let weak = Arc::downgrade(self);
        let (sid, id) = (sandbox_id.to_string(), container_id.to_string());
        tokio::spawn(async move {
            let Some(shim) = sb.shim.lock().await.clone() else { return };
            if let Ok(st) = shim.api().wait(shim_client::ctx(None), &shim_client::req(&id)).await {
                let Some(m) = weak.upgrade() else { return };
                info!(m.log, "container exited"; "container_id" => &id, "exit_code" => st.exit_code, "signal" => st.exit_signal);
                m.emit(&sid, &id, cri::ContainerEventType::ContainerStoppedEvent).await;
            }
        });
    }

    fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>> {
        ids::check_id("pod sandbox id", id)?;
        lock(&self.sandboxes)
            .get(id)
            .filter(|s| lock(&s.meta).phase != Phase::Creating)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("pod sandbox {id} not found")))
    }

    fn container(&self, id: &str) -> Result<ContainerMeta> {
        ids::check_id("container id", id)?;
        lock(&self.containers)
            .get(id)
            .filter(|c| c.phase != Phase::Creating)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("container {id} not found")))
    }

    /// The sandbox's shim, connecting if needed.
    async fn shim_of(&self, sb: &Sandbox) -> Result<Shim> {
        if sb.lost_at().is_some() {
            let id = lock(&sb.meta).id.clone();
            return Err(Error::precondition(format!("the shim of pod sandbox {id} is gone; remove the pod")));
        }
        let mut guard = sb.shim.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let dir = lock(&sb.meta).dir.clone();
        let s = Shim::connect(&dir).await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    fn reserve(&self, key: String, what: &str) -> Result<()> {
        if !lock(&self.names).insert(key) {
            return Err(Error::exists(format!("{what} is already in use")));
        }
        Ok(())
    }

    fn release(&self, key: &str) {
        lock(&self.names).remove(key);
    }

    // ---- sandboxes ----

    /// RunPodSandbox.
    pub async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, handler: &str) -> Result<String> {
        if !handler.is_empty() && handler != "runc" {
            return Err(Error::invalid(format!(
                "unknown runtime handler {handler:?}; Berth has \"runc\" (the default)"
            )));
        }
        let md = config.metadata.clone().ok_or_else(|| Error::invalid("pod sandbox config has no metadata"))?;
        ids::check_name("pod sandbox name", &md.name)?;
        // CNI_ARGS is `K=V;K=V`: these would inject arguments into every
        // plugin call (Kubernetes names never contain them).
        for (what, v) in [("name", &md.name), ("namespace", &md.namespace), ("uid", &md.uid)] {
            if v.contains([';', '=']) {
                return Err(Error::invalid(format!(
                    "pod sandbox {what} {v:?} may not contain ';' or '=' (Kubernetes names never do)"
                )));
            }
        }
        if !md.namespace.is_empty() {
            ids::check_name("pod sandbox namespace", &md.namespace)?;
        }
        if !md.uid.is_empty() {
            ids::check_name("pod sandbox uid", &md.uid)?;
        }
        if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
            return Err(Error::invalid(format!("log_directory {:?} must be an absolute path", config.log_directory)));
        }
        let linux = config.linux.clone().unwrap_or_default();
        crate::pod_cgroup::check_parent(&linux.cgroup_parent, self.cfg.cgroup_driver)?;
        let ns = linux.security_context.clone().unwrap_or_default().namespace_options.unwrap_or_default();
        let host_network = ns.network == cri::NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
        let pod_pid = ns.pid == cri::NamespaceMode::Pod as i32;
        let hostname = if host_network {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().to_string()).unwrap_or_default()
        } else if !config.hostname.is_empty() {
            config.hostname.clone()
        } else {
            md.name.chars().take(63).collect::<String>().to_ascii_lowercase()
        };
        if !host_network {
            pod_files::check_hostname(&hostname)?;
        }
        pod_files::resolv_conf(config.dns_config.as_ref())?;
        spec::check_sysctls(&linux.sysctls, host_network, host_ipc)?;

        let key = sandbox_key(&md);
        self.reserve(
            key.clone(),
            &format!("pod sandbox name {:?} (namespace {:?}, attempt {})", md.name, md.namespace, md.attempt),
        )?;
        let _admitted = match self.pod_starts.acquire().await {
            Ok(p) => p,
            Err(_) => {
                self.release(&key);
                return Err(Error::new(Kind::Unavailable, "berthd is shutting down"));
            }
        };
        let id = ids::new_id();
        let dir = self.cfg.state.join("sandboxes").join(&id);
        let mut pinned = Vec::new();
        for (name, on) in [("net", !host_network), ("ipc", !host_ipc), ("uts", !host_network), ("pid", pod_pid)] {
            if on {
                pinned.push(name.to_string());
            }
        }
        let mut meta = SandboxMeta {
            id: id.clone(),
            config: config.clone(),
            created_at: now_nanos(),
            runtime_handler: handler.to_string(),
            stopped: false,
            dir: dir.clone(),
            pinned,
            hostname: hostname.clone(),
            shim_pid: 0,
            pod_init_pid: 0,
            phase: Phase::Creating,
            network: None,
            network_config: None,
            ips: Vec::new(),
            network_released: false,
        };
        let result = async {
            self.sandbox_store.put(&id, &meta).await?;
            failpoint::hit("run-pod-sandbox/recorded");
            std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
            pod_files::write(&dir, &hostname, host_network, config.dns_config.as_ref())?;
            failpoint::hit("run-pod-sandbox/files-written");
            let launch = ShimLaunch {
                binary: self.cfg.shim_binary.clone(),
                id: id.clone(),
                dir: dir.clone(),
                runtime: self.cfg.runtime.clone(),
                runtime_root: self.cfg.state.join("runc"),
                hostname: (!host_network).then(|| hostname.clone()),
                host_network,
                host_ipc,
                pod_pid,
                systemd_cgroup: self.cfg.cgroup_driver == crate::settings::CgroupDriver::Systemd,
                max_log_line: self.cfg.max_log_line,
                runtime_timeout: self.cfg.runtime_timeout,
            };
            meta.shim_pid = shim_client::start(&launch).await?;
            failpoint::hit("run-pod-sandbox/shim-started");
            let shim = Shim::connect(&dir).await?;
            meta.pod_init_pid = shim.info.pod_init_pid;
            if !host_network {
                if let Some(net) = self.cfg.cni.load()? {
                    let md = config.metadata.clone().unwrap_or_default();
                    let netns = dir.join("ns/net");
                    let pod =
                        crate::cni::PodRef { id: &id, netns: &netns, metadata: &md, ports: &config.port_mappings };
                    meta.network_config = Some(net.clone());
                    let result = self.cfg.cni.add(&net, &pod).await?;
                    meta.ips = crate::cni::result_ips(&result);
                    meta.network = Some(result);
                    failpoint::hit("run-pod-sandbox/network-added");
                }
            }
            meta.phase = Phase::Ready;
            self.sandbox_store.put(&id, &meta).await?;
            let sb = Sandbox::new(meta.clone(), Some(shim));
            lock(&self.sandboxes).insert(id.clone(), sb.clone());
            if let Some(me) = self.me.get() {
                watch_shim(me.clone(), sb);
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            warn!(self.log, "run pod sandbox failed, cleaning up"; "sandbox_id" => &id, "error" => %e);
            if let Err(e) = self.release_network(&meta).await {
                warn!(self.log, "CNI DEL failed"; "sandbox_id" => &id, "error" => %e);
            }
            self.teardown_sandbox_dir(&dir, meta.pod_init_pid).await;
            let _ = self.sandbox_store.delete(&id).await;
            self.release(&key);
            return Err(e);
        }
        info!(self.log, "pod sandbox ready"; "sandbox_id" => &id, "name" => &md.name, "namespace" => &md.namespace);
        self.emit(&id, &id, cri::ContainerEventType::ContainerCreatedEvent).await;
        self.emit(&id, &id, cri::ContainerEventType::ContainerStartedEvent).await;
        Ok(id)
    }

    /// Stops a shim (if one answers) and removes everything in a sandbox
    /// folder: pinned namespaces, sockets, files.
    async fn teardown_sandbox_dir(&self, dir: &Path, pod_init_pid: u32) {
        if let Ok(shim) = Shim::connect(dir).await {
            let pid = shim.info.shim_pid;
            let _ = shim.api().shutdown(shim_client::ctx(Some(CALL_TIMEOUT)), &api::Empty::new()).await;
            drop(shim);
            wait_gone(pid, Duration::from_secs(5)).await;
        } else if let Some(pid) =
            std::fs::read_to_string(dir.join("shim.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())
        {
            // A shim that does not answer but still runs is ended by pid,
            // if the pid is still this pod's shim.
            let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if crate::pidfd::kill_shim_of(pid, id) {
                wait_gone(pid as u32, Duration::from_secs(5)).await;
            }
        }
        // The shim ends the pod init on Shutdown; a killed shim could not.
        if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
            kill_pod_init(pod_init_pid, id);
        }
        release_ns_dir(&dir.join("ns"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// StopPodSandbox: kills every container; idempotent.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let Some(sb) = absent_ok(self.sandbox(id))? else { return Ok(()) };
        let _op = sb.op.lock().await;
        for c in self.containers_of(id) {
            self.stop_container(&c.id, 0).await?;
        }
        failpoint::hit("stop-pod-sandbox/containers-stopped");
        let current = lock(&sb.meta).clone();
        if !current.network_released {
            self.release_network(&current).await?;
            failpoint::hit("stop-pod-sandbox/network-released");
        }
        let (was_stopped, meta) = {
            let mut m = lock(&sb.meta);
            let was = m.stopped;
            m.stopped = true;
            m.network_released = true;
            (was, m.clone())
        };
        self.sandbox_store.put(id, &meta).await?;
        info!(self.log, "pod sandbox stopped"; "sandbox_id" => id);
        if !was_stopped {
            self.emit(id, id, cri::ContainerEventType::ContainerStoppedEvent).await;
        }
        Ok(())
    }

    /// CNI DEL for a pod (nothing for host-network pods or without a CNI
    /// configuration).
    async fn release_network(&self, meta: &SandboxMeta) -> Result<()> {
        let host_network = !meta.pinned.iter().any(|p| p == "net");
        if host_network {
            return Ok(());
        }
        // A record from before ADD-time configurations were kept (or a
        // crash between ADD and its record) falls back to today's.
        let net = match &meta.network_config {
            Some(n) => n.clone(),
            None => match self.cfg.cni.load()? {
                Some(n) => n,
                None => return Ok(()),
            },
        };
        let md = meta.config.metadata.clone().unwrap_or_default();
        let pin = meta.dir.join("ns/net");
        // A pin that is gone (unmounted by hand, a crash between steps) is no
        // namespace: the CNI spec lets DEL run with an empty CNI_NETNS, and
        // plugins still release what they hold (IPs, port mappings).
        let netns = if crate::cni::is_netns(&pin) { pin } else { PathBuf::new() };
        let pod = crate::cni::PodRef { id: &meta.id, netns: &netns, metadata: &md, ports: &meta.config.port_mappings };
        self.cfg
            .cni
            .del(&net, &pod, meta.network.as_ref())
            .await
            .map_err(|e| e.context(format!("releasing the network of pod sandbox {}", meta.id)))
    }

    /// Whether pods get CNI networking (a configuration is there).
    pub fn network_ready(&self) -> std::result::Result<(), String> {
        match self.cfg.cni.load() {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("no CNI configuration in {}", self.cfg.cni.conf_dir.display())),
            Err(e) => Err(e.message),
        }
    }

    /// RemovePodSandbox: stops and removes its containers, ends its shim and
    /// removes everything it had; idempotent.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let Some(sb) = absent_ok(self.sandbox(id))? else { return Ok(()) };
        let meta = {
            let mut m = lock(&sb.meta);
            m.phase = Phase::Removing;
            m.clone()
        };
        self.sandbox_store.put(id, &meta).await?;
        failpoint::hit("remove-pod-sandbox/recorded");
        self.stop_pod_sandbox(id).await?;
        let _op = sb.op.lock().await;
        for c in self.containers_of(id) {
            self.remove_container(&c.id).await?;
        }
        failpoint::hit("remove-pod-sandbox/containers-removed");
        let last_status = if self.events.receiver_count() > 0 {
            self.pod_sandbox_status(id, false).await.ok().map(|(s, _)| s)
        } else {
            None
        };
        *sb.shim.lock().await = None;
        self.teardown_sandbox_dir(&meta.dir, meta.pod_init_pid).await;
        failpoint::hit("remove-pod-sandbox/dir-removed");
        crate::pod_cgroup::remove(
            meta.config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
            id,
            self.cfg.cgroup_driver,
        );
        failpoint::hit("remove-pod-sandbox/shim-stopped");
        self.sandbox_store.delete(id).await?;
        lock(&self.sandboxes).remove(id);
        self.release(&sandbox_key(&meta.config.metadata.clone().unwrap_or_default()));
        info!(self.log, "pod sandbox removed"; "sandbox_id" => id);
        self.emit_with(last_status, id, id, cri::ContainerEventType::ContainerDeletedEvent).await;
        Ok(())
    }

    /// The statuses of a pod's containers, oldest first: what evented PLEG
    /// reads from PodSandboxStatus and from every event.
    pub async fn pod_container_statuses(&self, sandbox_id: &str) -> Vec<cri::ContainerStatus> {
        let mut metas: Vec<ContainerMeta> =
            self.containers_of(sandbox_id).into_iter().filter(|c| c.phase != Phase::Creating).collect();
        if metas.is_empty() {
            return Vec::new();
        }
        metas.sort_by_key(|c| c.created_at);
        // One List call for the pod, not a State call per container: kubelet
        // asks for this with every pod status.
        let views = self.shim_views(&[sandbox_id.to_string()]).await;
        let view = views.get(sandbox_id);
        metas
            .iter()
            .map(|m| {
                let st = view.and_then(|v| v.state_of(sandbox_id, &m.id)).unwrap_or_else(RuntimeState::unknown_to_shim);
                Self::to_status(m, &st)
            })
            .collect()
    }

    fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerMeta> {
        lock(&self.containers).values().filter(|c| c.sandbox_id == sandbox_id).cloned().collect()
    }

    /// PodSandboxStatus (and the pieces ListPodSandbox needs).
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let sb = self.sandbox(id)?;
        let meta = lock(&sb.meta).clone();
        let shim_ok = sb.lost_at().is_none() && self.shim_of(&sb).await.is_ok();
        let state = if meta.stopped || !shim_ok {
            cri::PodSandboxState::SandboxNotready
        } else {
            cri::PodSandboxState::SandboxReady
        };
        let ns = meta
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let status = cri::PodSandboxStatus {
            id: meta.id.clone(),
            metadata: meta.config.metadata.clone(),
            state: state as i32,
            created_at: meta.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: meta.ips.first().cloned().unwrap_or_default(),
                additional_ips: meta.ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus { namespaces: Some(cri::Namespace { options: Some(ns) }) }),
            labels: meta.config.labels.clone(),
            annotations: meta.config.annotations.clone(),
            runtime_handler: meta.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "pid": meta.shim_pid,
                "stateDir": meta.dir,
                "pinnedNamespaces": meta.pinned,
                "hostname": meta.hostname,
                "podInitPid": meta.pod_init_pid,
                "shimLost": sb.lost_at().is_some(),
                "config": meta.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((status, info))
    }

    /// ListPodSandbox.
    pub async fn list_pod_sandboxes(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>> {
        let f = filter.unwrap_or_default();
        let ids: Vec<String> = lock(&self.sandboxes)
            .values()
            .filter(|s| lock(&s.meta).phase != Phase::Creating)
            .map(|s| lock(&s.meta).id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if !f.id.is_empty() && !id.starts_with(&f.id) {
                continue;
            }
            let Ok((s, _)) = self.pod_sandbox_status(&id, false).await else { continue };
            if let Some(st) = &f.state {
                if st.state != s.state {
                    continue;
                }
            }
            if !f.label_selector.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
                continue;
            }
            out.push(cri::PodSandbox {
                id: s.id,
                metadata: s.metadata,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                runtime_handler: s.runtime_handler,
            });
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    // ---- containers ----

    /// CreateContainer.
    pub async fn create_container(&self, sandbox_id: &str, config: cri::ContainerConfig) -> Result<String> {
        let sb = self.sandbox(sandbox_id)?;
        let _op = sb.op.lock().await;
        let smeta = lock(&sb.meta).clone();
        if smeta.stopped {
            return Err(Error::precondition(format!("pod sandbox {sandbox_id} is stopped; create a new one")));
        }
        let md = config.metadata.clone().ok_or_else(|| Error::invalid("container config has no metadata"))?;
        ids::check_name("container name", &md.name)?;
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::invalid("container config names no image"));
        }
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
            if !self.features.recursive_read_only_mounts {
                return Err(Error::invalid(format!(
                    "mount at {}: recursive read-only mounts need an OCI runtime with the rro option and Linux 5.12 or later, which this node lacks",
                    m.container_path
                )));
            }
        }
        let image = self
            .images
            .lock()
            .await
            .resolve(&image_name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("image {image_name:?} not found; pull or import it first")))?;
        let (shown_name, image_ref) = image.container_names(&image_name);
        let log_path = if !config.log_path.is_empty() && !smeta.config.log_directory.is_empty() {
            Some(ids::log_path(&smeta.config.log_directory, &config.log_path)?)
        } else if config.log_path.starts_with('/') || config.log_path.contains("..") {
            return Err(Error::invalid(format!(
                "log_path {:?} must be relative to the sandbox's log_directory",
                config.log_path
            )));
        } else {
            None
        };
        let shim = self.shim_of(&sb).await?;

        let key = container_key(sandbox_id, &md);
        self.reserve(
            key.clone(),
            &format!("container name {:?} (attempt {}) in pod sandbox {sandbox_id}", md.name, md.attempt),
        )?;
        let id = ids::new_id();
        let bundle = self.cfg.state.join("containers").join(&id);
        let mut meta = ContainerMeta {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            config: config.clone(),
            image_id: image.id.clone(),
            image_name: shown_name,
            image_ref,
            layers: image.layers.clone(),
            created_at: now_nanos(),
            log_path: log_path.clone(),
            bundle: bundle.clone(),
            stop_signal: stop_signal(&config, &image.config),
            phase: Phase::Creating,
            user: None,
        };
        let result = async {
            self.container_store.put(&id, &meta).await?;
            failpoint::hit("create-container/recorded");
            let lowers = {
                // Under the store lock: from here the container's layers
                // count as in use for every collection, and one that ran
                // since the image was resolved (RemoveImage) shows as a
                // missing snapshot, not as a failed mount.
                let store = self.images.lock().await;
                lock(&self.containers).insert(id.clone(), meta.clone());
                let lowers = image.layers.iter().map(|l| store.snapshot_path(l)).collect::<Result<Vec<_>>>()?;
                if lowers.iter().any(|p| !p.is_dir()) {
                    return Err(Error::not_found(format!(
                        "image {image_name:?} was removed while the container was being created; pull it again"
                    )));
                }
                lowers
            };
            let layer_root = self.cfg.root.join("containers").join(&id);
            let rootfs_dir = bundle.join("rootfs");
            rootfs::mount_overlay(&lowers, &layer_root.join("upper"), &layer_root.join("work"), &rootfs_dir)?;
            failpoint::hit("create-container/rootfs-mounted");
            let view = SandboxView {
                dir: smeta.dir.clone(),
                pinned: smeta.pinned.clone(),
                hostname: smeta.hostname.clone(),
                cgroup_parent: crate::pod_cgroup::parent(
                    smeta.config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
                    &smeta.id,
                    self.cfg.cgroup_driver,
                ),
                cgroup_driver: self.cfg.cgroup_driver,
                sysctls: smeta.config.linux.as_ref().map(|l| l.sysctls.clone()).unwrap_or_default(),
                namespace_options: smeta
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone())
                    .unwrap_or_default(),
            };
            let defaults = ImageDefaults::from_config(&image.config);
            // It reads the image's /etc/passwd and /etc/group (bounded, but
            // still file work): off the async workers.
            let spec = {
                let (id, config, rootfs_dir) = (id.clone(), config.clone(), rootfs_dir.clone());
                tokio::task::spawn_blocking(move || spec::build(&id, &config, &view, &defaults, &rootfs_dir))
                    .await
                    .map_err(|e| Error::internal(format!("building the OCI spec: {e}")))??
            };
            meta.user = spec.process().as_ref().map(|p| {
                let u = p.user();
                // As kubelet shows them: the primary group among the groups.
                let mut groups = vec![u.gid()];
                groups.extend(u.additional_gids().iter().flatten().filter(|g| **g != u.gid()));
                (u.uid(), u.gid(), groups)
            });
            crate::dir_modes::write_private(
                &bundle.join("config.json"),
                &serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("encoding config.json: {e}")))?,
            )?;
            failpoint::hit("create-container/bundle-written");
            let mut req = api::CreateRequest::new();
            req.id = id.clone();
            req.bundle = bundle.display().to_string();
            req.log_path = log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            if log_path.is_some() {
                req.log_root = smeta.config.log_directory.clone();
            }
            req.terminal = config.tty;
            req.stdin = config.stdin;
            req.stdin_once = config.stdin_once;
            shim.api().create(shim.runtime_ctx(), &req).await?;
            failpoint::hit("create-container/shim-created");
            meta.phase = Phase::Ready;
            self.container_store.put(&id, &meta).await?;
            lock(&self.containers).insert(id.clone(), meta.clone());
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            warn!(self.log, "create container failed, cleaning up"; "container_id" => &id, "sandbox_id" => sandbox_id, "error" => %e);
            self.rollback_container(&meta).await;
            return Err(e);
        }
        info!(self.log, "container created"; "container_id" => &id, "sandbox_id" => sandbox_id, "name" => &md.name);
        self.emit(sandbox_id, &id, cri::ContainerEventType::ContainerCreatedEvent).await;
        Ok(id)
    }

    /// StartContainer.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let meta = self.container(id)?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        failpoint::hit("start-container/before-start");
        shim.api().start(shim.runtime_ctx(), &shim_client::req(id)).await?;
        self.watch_exit(&meta.sandbox_id, id);
        info!(self.log, "container started"; "container_id" => id, "sandbox_id" => &meta.sandbox_id);
        self.emit(&meta.sandbox_id, id, cri::ContainerEventType::ContainerStartedEvent).await;
        Ok(())
    }

    /// Runtime state of a container, from its shim.
    async fn runtime_state(&self, meta: &ContainerMeta) -> RuntimeState {
        let Ok(sb) = self.sandbox(&meta.sandbox_id) else { return RuntimeState::shim_gone(now_nanos()) };
        if let Some(at) = sb.lost_at() {
            return RuntimeState::shim_gone(at);
        }
        let Ok(shim) = self.shim_of(&sb).await else { return RuntimeState::shim_gone(now_nanos()) };
        match shim.state(&meta.id).await {
            Ok(s) => {
                self.note_log_error(&meta.id, &s.message);
                RuntimeState::from_shim(&s)
            }
            Err(e) if e.kind == Kind::NotFound => RuntimeState::unknown_to_shim(),
            Err(e) => sb
                .after_failed_call(e.message)
                .await
                .state_of(&meta.sandbox_id, &meta.id)
                .unwrap_or_else(RuntimeState::unknown_to_shim),
        }
    }

    /// Logs a container's log-writing trouble once when it starts and once
    /// when it ends (the shim reports it in the container's state).
    fn note_log_error(&self, id: &str, message: &str) {
        let mut seen = lock(&self.log_errors);
        match (message.is_empty(), seen.get(id)) {
            (false, Some(m)) if m == message => {}
            (false, _) => {
                warn!(self.log, "container output cannot be logged"; "container_id" => id, "error" => message);
                seen.insert(id.to_string(), message.to_string());
            }
            (true, Some(_)) => {
                info!(self.log, "container logging resumed"; "container_id" => id);
                seen.remove(id);
            }
            (true, None) => {}
        }
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(meta) = absent_ok(self.container(id))? else { return Ok(()) };
        let st = self.runtime_state(&meta).await;
        if st.reason == "ShimNotAnswering" {
            // Stopped is what the shim or runc confirms, never a guess.
            return Err(Error::new(Kind::Unavailable, format!("container {id} cannot be stopped now: {}", st.message)));
        }
        if st.state != cri::ContainerState::ContainerRunning as i32 {
            return Ok(());
        }
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        if timeout > 0 {
            shim.kill(id, meta.stop_signal, false).await?;
            failpoint::hit("stop-container/signalled");
            if shim.wait(id, Duration::from_secs(timeout as u64)).await? {
                info!(self.log, "container stopped"; "container_id" => id, "signal" => meta.stop_signal);
                return Ok(());
            }
        }
        shim.kill(id, libc::SIGKILL, true).await?;
        if !shim.wait(id, KILL_WAIT).await? {
            return Err(Error::new(
                Kind::DeadlineExceeded,
                format!("container {id} did not stop within {}s of SIGKILL", KILL_WAIT.as_secs()),
            ));
        }
        info!(self.log, "container killed"; "container_id" => id);
        Ok(())
    }

    /// RemoveContainer: forcibly, as CRI asks; idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(meta) = absent_ok(self.container(id))? else { return Ok(()) };
        if meta.phase != Phase::Removing {
            let mut m = meta.clone();
            m.phase = Phase::Removing;
            self.container_store.put(id, &m).await?;
            lock(&self.containers).insert(id.to_string(), m);
        }
        failpoint::hit("remove-container/recorded");
        self.stop_container(id, 0).await?;
        failpoint::hit("remove-container/stopped");
        // A failed delete keeps the record (Removing): the retry finishes it.
        self.delete_in_shim(&meta).await.map_err(|e| e.context(format!("removing container {id}")))?;
        failpoint::hit("remove-container/deleted");
        rootfs::unmount(&meta.bundle.join("rootfs"))?;
        remove_trees(vec![meta.bundle.clone(), self.cfg.root.join("containers").join(id)]).await;
        failpoint::hit("remove-container/files-removed");
        self.container_store.delete(id).await?;
        lock(&self.containers).remove(id);
        self.cpu_rates.forget(id);
        self.usage.forget(&self.upper_dir(id));
        self.release(&container_key(&meta.sandbox_id, &meta.config.metadata.clone().unwrap_or_default()));
        // Layers of an image removed while this container ran go now (only
        // then: a collection walks the whole store).
        if !self.images.lock().await.holds_layers(&meta.layers) {
            if let Ok(trash) = self.with_image_store_in_use(|store, in_use| Ok(store.collect(in_use))).await {
                trash.discard().await;
            }
        }
        info!(self.log, "container removed"; "container_id" => id, "sandbox_id" => &meta.sandbox_id);
        self.emit(&meta.sandbox_id, id, cri::ContainerEventType::ContainerDeletedEvent).await;
        Ok(())
    }

    /// With the shim gone, the OCI runtime may still hold the container.
    async fn force_delete_in_runtime(&self, id: &str) {
        self.runtime_cmd(&["delete", "--force", id]).await;
    }

    /// Runs the OCI runtime directly (only for containers whose shim is
    /// gone), with a timeout; failures are logged with its stderr.
    async fn runtime_cmd(&self, args: &[&str]) {
        let mut cmd = tokio::process::Command::new(&self.cfg.runtime);
        cmd.arg("--root").arg(self.cfg.state.join("runc"));
        if self.cfg.cgroup_driver == crate::settings::CgroupDriver::Systemd {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        cmd.kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let what = args.join(" ");
        match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
            Ok(Ok(o)) if !o.status.success() => {
                let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                if !err.contains("does not exist") && !err.contains("not running") {
                    warn!(self.log, "OCI runtime call failed"; "args" => what, "stderr" => err);
                }
            }
            Ok(Err(e)) => warn!(self.log, "OCI runtime call failed"; "args" => what, "error" => %e),
            Err(_) => warn!(self.log, "OCI runtime call timed out"; "args" => what),
            _ => {}
        }
    }

    fn to_status(meta: &ContainerMeta, st: &RuntimeState) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: meta.id.clone(),
            metadata: meta.config.metadata.clone(),
            state: st.state,
            created_at: meta.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            image: Some(cri::ImageSpec { image: meta.image_name.clone(), ..Default::default() }),
            image_ref: if meta.image_ref.is_empty() { meta.image_id.clone() } else { meta.image_ref.clone() },
            reason: st.reason.clone(),
            message: st.message.clone(),
            labels: meta.config.labels.clone(),
            annotations: meta.config.annotations.clone(),
            mounts: meta.config.mounts.clone(),
            log_path: meta.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            resources: meta
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources { linux: Some(r), windows: None }),
            image_id: meta.image_id.clone(),
            user: meta.user.as_ref().map(|(uid, gid, groups)| cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: *uid as i64,
                    gid: *gid as i64,
                    supplemental_groups: groups.iter().map(|g| *g as i64).collect(),
                }),
            }),
            stop_signal: meta.config.stop_signal,
        }
    }

    /// ContainerStatus.
    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::ContainerStatus, HashMap<String, String>)> {
        let meta = self.container(id)?;
        let st = self.runtime_state(&meta).await;
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "pid": st.pid,
                "sandboxID": meta.sandbox_id,
                "bundle": meta.bundle,
                "stopSignal": meta.stop_signal,
                "config": meta.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((Self::to_status(&meta, &st), info))
    }

    /// What the shims of `sandbox_ids` say of their containers: one List
    /// call per pod rather than one State call per container, every shim
    /// asked at once (a hung one costs its QUICK_TIMEOUT once, not once per
    /// pod after it).
    async fn shim_views(&self, sandbox_ids: &[String]) -> HashMap<String, ShimView> {
        let views = sandbox_ids.iter().map(|sid| async move {
            let view = match self.sandbox(sid) {
                Err(_) => ShimView::Gone(now_nanos()),
                Ok(sb) => match sb.lost_at() {
                    Some(at) => ShimView::Gone(at),
                    None => match self.shim_of(&sb).await {
                        Err(_) => ShimView::Gone(now_nanos()),
                        Ok(shim) => match shim.list().await {
                            Ok(list) => ShimView::Listed(
                                list.iter().map(|s| (s.id.clone(), RuntimeState::from_shim(s))).collect(),
                            ),
                            Err(e) => sb.after_failed_call(e.message).await,
                        },
                    },
                },
            };
            (sid.clone(), view)
        });
        futures::future::join_all(views).await.into_iter().collect()
    }

    /// ListContainers.
    pub async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>> {
        let f = filter.unwrap_or_default();
        let metas: Vec<ContainerMeta> = lock(&self.containers)
            .values()
            .filter(|c| c.phase != Phase::Creating)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| f.label_selector.iter().all(|(k, v)| c.config.labels.get(k) == Some(v)))
            .cloned()
            .collect();
        let sids: Vec<String> =
            metas.iter().map(|m| m.sandbox_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let views = self.shim_views(&sids).await;
        let mut out = Vec::new();
        for meta in metas {
            let st = views
                .get(&meta.sandbox_id)
                .and_then(|v| v.state_of(&meta.sandbox_id, &meta.id))
                .unwrap_or_else(|| RuntimeState::shim_gone(now_nanos()));
            if let Some(want) = &f.state {
                if want.state != st.state {
                    continue;
                }
            }
            let s = Self::to_status(&meta, &st);
            out.push(cri::Container {
                id: s.id,
                pod_sandbox_id: meta.sandbox_id.clone(),
                metadata: s.metadata,
                image: s.image,
                image_ref: s.image_ref,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                image_id: s.image_id,
            });
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    /// ExecSync. A command still running at `timeout` seconds is killed and
    /// the call fails with DeadlineExceeded.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<cri::ExecSyncResponse> {
        if cmd.is_empty() {
            return Err(Error::invalid("exec needs a command"));
        }
        let meta = self.container(id)?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        let mut req = api::ExecSyncRequest::new();
        req.id = id.to_string();
        req.args = cmd.clone();
        req.timeout_ms = timeout.max(0) * 1000;
        // The shim enforces the timeout; the call's own deadline only guards
        // against a shim that stops answering.
        let deadline = (timeout > 0).then(|| Duration::from_secs(timeout as u64) + CALL_TIMEOUT);
        let resp = shim.api().exec_sync(shim_client::ctx(deadline), &req).await?;
        if resp.timed_out {
            return Err(Error::new(
                Kind::DeadlineExceeded,
                format!("command {cmd:?} timed out after {timeout}s and was killed"),
            ));
        }
        Ok(cri::ExecSyncResponse { stdout: resp.stdout, stderr: resp.stderr, exit_code: resp.exit_code })
    }

    /// ReopenContainerLog: the shim reopens the log file by path, so a
    /// rotated (renamed) file keeps what it had and a new one gets the rest.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let meta = self.container(id)?;
        let st = self.runtime_state(&meta).await;
        if st.state != cri::ContainerState::ContainerRunning as i32 {
            // CRI: after an error the runtime must not create the file.
            return Err(Error::precondition(format!("container {id} is not running; its log is not reopened")));
        }
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        shim.api().reopen_log(shim_client::ctx(Some(CALL_TIMEOUT)), &shim_client::req(id)).await?;
        Ok(())
    }

    /// ImageFsInfo's figures: the image store's blobs and snapshots, from
    /// the background walks (never under the image-store lock). None while
    /// the first walk of a big store runs.
    pub async fn image_fs_usage(&self) -> Option<crate::usage_cache::Usage> {
        let mut total = crate::usage_cache::Usage { bytes: 0, inodes: 0, at: i64::MAX };
        for d in &self.image_dirs {
            let u = self.usage.get(d).await?;
            total = crate::usage_cache::Usage {
                bytes: total.bytes + u.bytes,
                inodes: total.inodes + u.inodes,
                at: total.at.min(u.at),
            };
        }
        Some(total)
    }

    /// A container's writable layer.
    fn upper_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id).join("upper")
    }

    /// The folder ImageFsInfo names.
    pub fn image_fs_mountpoint(&self) -> PathBuf {
        self.cfg.root.join("images")
    }

    /// Stats of one container: CPU and memory from its cgroups (through the
    /// shim) while it runs, and its writable layer's disk usage.
    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let meta = self.container(id)?;
        let now = now_nanos();
        let md = meta.config.metadata.clone();
        let attributes = cri::ContainerAttributes {
            id: meta.id.clone(),
            metadata: md,
            labels: meta.config.labels.clone(),
            annotations: meta.config.annotations.clone(),
        };
        let upper = self.upper_dir(id);
        let usage = self.usage.get(&upper).await;
        let writable_layer = cri::FilesystemUsage {
            timestamp: usage.map(|u| u.at).unwrap_or(now),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: upper.display().to_string() }),
            used_bytes: usage.map(|u| cri::UInt64Value { value: u.bytes }),
            inodes_used: usage.map(|u| cri::UInt64Value { value: u.inodes }),
        };
        let mut stats = cri::ContainerStats {
            attributes: Some(attributes),
            writable_layer: Some(writable_layer),
            ..Default::default()
        };
        let sb = self.sandbox(&meta.sandbox_id)?;
        if let Ok(shim) = self.shim_of(&sb).await {
            if let Ok(r) = shim.api().stats(shim_client::ctx(Some(CALL_TIMEOUT)), &shim_client::req(id)).await {
                stats.cpu = Some(self.cpu_rates.usage(id, now, r.cpu_nanos));
                stats.memory = Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(cri::UInt64Value { value: r.memory_working_set }),
                    usage_bytes: Some(cri::UInt64Value { value: r.memory_usage }),
                    ..Default::default()
                });
            }
        }
        Ok(stats)
    }

    /// ListPodSandboxMetrics: every ready pod with its running containers'
    /// metrics under cAdvisor's names.
    pub async fn list_pod_sandbox_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>> {
        let pods = self
            .list_pod_sandboxes(Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::new();
        for pod in pods {
            let listed = self
                .list_containers(Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                    ..Default::default()
                }))
                .await?;
            let mut container_metrics = Vec::new();
            for c in listed {
                let (Ok(stats), Ok((status, _))) =
                    (self.container_stats(&c.id).await, self.container_status(&c.id, false).await)
                else {
                    continue;
                };
                let facts = crate::pod_metrics::ContainerFacts {
                    stats: &stats,
                    name: c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
                    image: c.image.as_ref().map(|i| i.image.as_str()).unwrap_or(""),
                    started_at: status.started_at,
                    now: now_nanos(),
                };
                container_metrics.push(crate::pod_metrics::container_metrics(&facts));
            }
            out.push(cri::PodSandboxMetrics { pod_sandbox_id: pod.id, metrics: Vec::new(), container_metrics });
        }
        Ok(out)
    }

    /// ListContainerStats: running containers matching the filter.
    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let f = filter.unwrap_or_default();
        let listed = self
            .list_containers(Some(cri::ContainerFilter {
                id: f.id,
                state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                pod_sandbox_id: f.pod_sandbox_id,
                label_selector: f.label_selector,
            }))
            .await?;
        let mut out = Vec::new();
        for c in listed {
            if let Ok(s) = self.container_stats(&c.id).await {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// PodSandboxStats: the sum of its running containers, and each of them.
    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let (status, _) = self.pod_sandbox_status(id, false).await?;
        let containers = self
            .list_container_stats(Some(cri::ContainerStatsFilter {
                pod_sandbox_id: id.to_string(),
                ..Default::default()
            }))
            .await?;
        let now = now_nanos();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> Option<cri::UInt64Value> {
            let vals: Vec<u64> = containers.iter().filter_map(f).collect();
            (!vals.is_empty()).then(|| cri::UInt64Value { value: vals.iter().sum() })
        };
        let cpu = cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: sum(&|c| c.cpu.as_ref()?.usage_core_nano_seconds.as_ref().map(|v| v.value)),
            usage_nano_cores: sum(&|c| c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)),
            psi: None,
        };
        let memory = cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: sum(&|c| c.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value)),
            usage_bytes: sum(&|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value)),
            ..Default::default()
        };
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: status.id,
                metadata: status.metadata,
                labels: status.labels,
                annotations: status.annotations,
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu),
                memory: Some(memory),
                containers,
                ..Default::default()
            }),
            windows: None,
        })
    }

    /// ListPodSandboxStats: ready pods matching the filter.
    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let f = filter.unwrap_or_default();
        let pods = self
            .list_pod_sandboxes(Some(cri::PodSandboxFilter {
                id: f.id,
                state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
                label_selector: f.label_selector,
            }))
            .await?;
        let mut out = Vec::new();
        for p in pods {
            if let Ok(s) = self.pod_sandbox_stats(&p.id).await {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// UpdateContainerResources: new CPU and memory limits for a running
    /// container; the stored config follows, so ContainerStatus shows them.
    pub async fn update_container_resources(&self, id: &str, res: cri::LinuxContainerResources) -> Result<()> {
        let mut meta = self.container(id)?;
        let json = serde_json::to_vec(&spec::resources(&res)?)
            .map_err(|e| Error::internal(format!("encoding resources: {e}")))?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        let mut req = api::UpdateRequest::new();
        req.id = id.to_string();
        req.resources = json;
        shim.api().update(shim.runtime_ctx(), &req).await?;
        failpoint::hit("update-container/applied");
        meta.config.linux.get_or_insert_with(Default::default).resources = Some(res);
        self.container_store.put(id, &meta).await?;
        lock(&self.containers).insert(id.to_string(), meta);
        Ok(())
    }

    /// Layers used by existing containers (kept by image removal).
    /// Where an interactive exec in a running container connects: the io
    /// socket of the container's shim. Checks the request as CRI Exec must.
    pub async fn exec_target(&self, req: &cri::ExecRequest) -> Result<PathBuf> {
        if req.cmd.is_empty() {
            return Err(Error::invalid("Exec needs a command"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::invalid("Exec needs at least one of stdin, stdout and stderr"));
        }
        if req.tty && req.stderr {
            return Err(Error::invalid("Exec with a tty has no separate stderr: set tty or stderr, not both"));
        }
        let meta = self.container(&req.container_id)?;
        if self.runtime_state(&meta).await.state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Error::precondition(format!("container {} is not running", req.container_id)));
        }
        Ok(self.cfg.state.join("sandboxes").join(&meta.sandbox_id).join("io.sock"))
    }

    /// Where an attach to a running container connects, and whether the
    /// container has a terminal (its own setting decides, not the request's).
    pub async fn attach_target(&self, req: &cri::AttachRequest) -> Result<(PathBuf, bool)> {
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::invalid("Attach needs at least one of stdin, stdout and stderr"));
        }
        let meta = self.container(&req.container_id)?;
        if req.stdin && !meta.config.stdin {
            return Err(Error::precondition(format!(
                "container {} was not created with stdin: nothing to attach stdin to",
                req.container_id
            )));
        }
        if self.runtime_state(&meta).await.state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Error::precondition(format!("container {} is not running", req.container_id)));
        }
        let sock = self.cfg.state.join("sandboxes").join(&meta.sandbox_id).join("io.sock");
        Ok((sock, meta.config.tty))
    }

    /// The network namespace a port-forward to pod `id` connects in: its
    /// pinned one, or None for a host-network pod (the host's).
    pub fn port_forward_target(&self, id: &str) -> Result<Option<PathBuf>> {
        let sb = self.sandbox(id)?;
        let m = lock(&sb.meta).clone();
        if m.stopped || sb.lost_at().is_some() {
            return Err(Error::precondition(format!("pod sandbox {id} is not ready")));
        }
        Ok(m.pinned.iter().any(|n| n == "net").then(|| m.dir.join("ns/net")))
    }

    /// Layer digests the containers use (kept when their images go).
    pub fn layers_in_use(&self) -> BTreeSet<String> {
        lock(&self.containers).values().flat_map(|c| c.layers.iter().cloned()).collect()
    }

    /// Runs blocking work on the image store (commits, renames, walks) on a
    /// blocking thread, holding the store's lock only for that work.
    pub async fn with_image_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ImageStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        crate::images::with_store(&self.images, work).await
    }

    /// As [`Self::with_image_store`], with the layers containers use taken
    /// under the store's lock: CreateContainer marks its layers in use
    /// under that lock, so a collection never takes a layer from a
    /// container being created.
    async fn with_image_store_in_use<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ImageStore, &BTreeSet<String>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let guard = self.images.clone().lock_owned().await;
        let in_use = self.layers_in_use();
        crate::images::run_locked(guard, move |store| work(store, &in_use)).await
    }

    /// RemoveImage: the image and its names go; its blobs and snapshots
    /// that no other image and no container needs are deleted after the
    /// store lock is let go, so other image calls go on meanwhile.
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        let trash = self
            .with_image_store_in_use(move |store, in_use| match store.resolve(&name).map(|r| r.id.clone()) {
                Some(id) => store.remove(&id, in_use),
                None => Ok(Default::default()),
            })
            .await?;
        trash.discard().await;
        Ok(())
    }
}

/// Stop and remove of something already gone succeed (kubelet relies on
/// it): NotFound becomes None.
fn absent_ok<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind == Kind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Ends a pod's init process, if that pid still is one (its command line
/// names the sandbox, so a reused pid is never signalled).
fn kill_pod_init(pid: u32, sandbox_id: &str) {
    crate::pidfd::kill_shim_of(pid as i32, sandbox_id);
}

/// Whether `pid` still runs. A zombie has finished: whoever reaps it (the
/// host's init, for a shim) may take its time.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while running(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Unmounts pinned namespace files left by a shim that could not release
/// them itself, and the private mount of their folder.
fn release_ns_dir(dir: &Path) {
    use nix::mount::{umount2, MntFlags};
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
    let _ = umount2(dir, MntFlags::MNT_DETACH);
}
