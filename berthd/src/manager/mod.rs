//! The manager: Berth's view of sandboxes and containers. It validates
//! requests, keeps durable metadata, prepares bundles and root filesystems,
//! and forwards lifecycle calls to each sandbox's shim, which is the source
//! of truth for what runs. Data flows one way: request → manager → shim.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::cri;
use protocol::shim::{self as api, Status};
use serde::{Deserialize, Serialize};
use slog::{debug, error, info, warn, Logger};

use crate::pod_files;
use crate::shim_client::{self, Shim, ShimLaunch, CALL_TIMEOUT};
use crate::spec::{self, ImageDefaults, SandboxView};
use berth_core::error::{Error, IoContext, Kind, Result};
use berth_core::failpoint;
use berth_core::ids;
use berth_images::images::ImageStore;
use berth_store::{Db, Store};
use protocol::shim_launch::{NS_DIR, NS_NET};

mod container_create;
mod container_io;
mod container_remove;
mod container_start;
mod container_status;
mod container_stop;
mod container_update;
mod events;
mod host;
mod image_use;
mod image_volumes;
mod live;
mod names;
mod nri_events;
mod pod_remove;
mod pod_run;
mod pod_status;
mod pod_stop;
mod records;
mod recovery;
mod stats;
#[cfg(test)]
mod tests;
mod user_namespace_mounts;

use host::remove_trees;
pub use live::RuntimeState;
use live::{Sandbox, ShimView};
pub use records::{ContainerMeta, Phase, SandboxMeta};
use recovery::watch_shim;
pub use recovery::Recovery;

/// Events kept for a slow GetContainerEvents client before it misses some
/// (it must then resync by listing, as kubelet does).
const EVENT_BACKLOG: usize = 1024;

/// How old a disk usage figure may get before it is walked again (kubelet
/// asks for stats every 10 s or so).
const USAGE_MAX_AGE: Duration = Duration::from_secs(10);

/// How long a pod's teardown waits for its ended shim to go.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(5);

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
    /// CNI configuration and plugins (the pod network of [`Seams::real`]).
    pub cni: crate::cni::Cni,
    /// Registry settings.
    pub file: berth_images::registry_config::FileConfig,
    /// How container cgroups are named (kubelet's cgroupDriver).
    pub cgroup_driver: crate::settings::CgroupDriver,
    /// NRI: its socket and timeouts.
    pub nri: crate::nri::Settings,
}

/// What the manager reaches outside itself besides its stores and the shims'
/// sockets: the host, the pod network and how shims are started. Real on a
/// node ([`Seams::real`]); doubles in the manager's unit tests.
#[derive(Clone)]
pub struct Seams {
    /// Processes, mounts, the OCI runtime run directly.
    pub host: Arc<dyn crate::host::Host>,
    /// CNI.
    pub network: Arc<dyn crate::cni::PodNetwork>,
    /// berth-shim processes.
    pub shims: Arc<dyn shim_client::ShimLauncher>,
}

impl Seams {
    /// The node's own: /proc and mount(2), the CNI plugins of `cfg.cni`,
    /// berth-shim processes.
    pub fn real(cfg: &Config, log: &Logger) -> Self {
        Seams {
            host: Arc::new(crate::host::RealHost {
                runtime: cfg.runtime.clone(),
                runtime_root: cfg.state.join("runc"),
                systemd_cgroup: cfg.cgroup_driver == crate::settings::CgroupDriver::Systemd,
                runtime_timeout: cfg.runtime_timeout,
                log: log.new(slog::o!("component" => "host")),
            }),
            network: Arc::new(cfg.cni.clone()),
            shims: Arc::new(shim_client::ProcessShims),
        }
    }
}

/// Longest timeout or grace period berthd honours, in seconds (about 136
/// years): a client's larger i64 means the same, and the sums and
/// nanosecond deadlines built on it cannot overflow.
const MAX_CLIENT_SECONDS: i64 = u32::MAX as i64;

/// A client's timeout in seconds as a duration: negative is none, the
/// largest are [`MAX_CLIENT_SECONDS`].
fn client_seconds(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs.clamp(0, MAX_CLIENT_SECONDS)).unwrap_or(0))
}

pub use protocol::cri_time::now_nanos;

/// The manager.
pub struct Manager {
    cfg: Config,
    log: Logger,
    host: Arc<dyn crate::host::Host>,
    network: Arc<dyn crate::cni::PodNetwork>,
    shims: Arc<dyn shim_client::ShimLauncher>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, ContainerMeta>>,
    names: names::Names,
    /// Log-writing errors already reported, by container.
    log_errors: Mutex<HashMap<String, String>>,
    sandbox_store: Store,
    container_store: Store,
    /// The image store (blocking file work runs under this lock).
    images: Arc<tokio::sync::Mutex<ImageStore>>,
    /// Registry pulls.
    puller: Arc<berth_images::pull::Puller>,
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
    /// NRI plugins and the events they get.
    nri: Arc<crate::nri::Nri>,
    /// The plugins' updates and evictions, until [`Manager::start_nri`]
    /// takes them.
    nri_unsolicited: Mutex<Option<tokio::sync::mpsc::Receiver<crate::nri::Unsolicited>>>,
    /// Containers whose stop the plugins were told of (once each); held
    /// while telling, so no RemoveContainer overtakes a StopContainer.
    nri_stopped: tokio::sync::Mutex<HashSet<String>>,
}

/// RunPodSandbox calls past validation at once.
pub const MAX_CONCURRENT_POD_STARTS: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sandbox_key(m: &cri::PodSandboxMetadata) -> String {
    format!("pod/{}/{}/{}/{}", m.name, m.namespace, m.uid, m.attempt)
}

fn container_key(sandbox_id: &str, m: &cri::ContainerMetadata) -> String {
    format!("ctr/{sandbox_id}/{}/{}", m.name, m.attempt)
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

impl Manager {
    /// Opens the manager's stores under `cfg.root` and `cfg.state`, on the
    /// node's own host, network and shims.
    pub fn open(cfg: Config, log: Logger) -> Result<Self> {
        let seams = Seams::real(&cfg, &log);
        Self::open_with(cfg, seams, log)
    }

    /// [`Manager::open`] with the given seams.
    pub fn open_with(cfg: Config, seams: Seams, log: Logger) -> Result<Self> {
        use crate::dir_modes::{ensure_dir, PRIVATE, TOP};
        for (d, mode) in [
            (cfg.root.clone(), TOP),
            (cfg.state.clone(), TOP),
            (cfg.root.join("containers"), PRIVATE),
            (cfg.root.join("images"), PRIVATE),
            // Traversable: runc sets a user namespaced container up as the
            // pod's root, which must reach its bundle and pod files; each
            // sandbox folder and bundle in them is private.
            (cfg.state.join("sandboxes"), TOP),
            (cfg.state.join("containers"), TOP),
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
        let puller = Arc::new(berth_images::pull::Puller::new(
            cfg.file.clone(),
            images.clone(),
            content,
            metrics.clone(),
            log.new(slog::o!("component" => "pull")),
        ));
        let features = crate::runtime_features::Features::probe(&cfg.runtime);
        let (nri, nri_unsolicited) = crate::nri::Nri::new(log.new(slog::o!("component" => "nri")), cfg.nri.clone());
        let m = Manager {
            cfg,
            log,
            host: seams.host,
            network: seams.network,
            shims: seams.shims,
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            names: names::Names::default(),
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
            nri,
            nri_unsolicited: Mutex::new(Some(nri_unsolicited)),
            nri_stopped: tokio::sync::Mutex::new(HashSet::new()),
        };
        for s in m.sandbox_store.load_all::<SandboxMeta>()? {
            m.names.hold(sandbox_key(&s.config.metadata.clone().unwrap_or_default()));
            lock(&m.sandboxes).insert(s.id.clone(), Sandbox::new(s, None));
        }
        for c in m.container_store.load_all::<ContainerMeta>()? {
            m.names.hold(container_key(&c.sandbox_id, &c.config.metadata.clone().unwrap_or_default()));
            lock(&m.containers).insert(c.id.clone(), c);
        }
        Ok(m)
    }

    /// The cgroup driver berthd is configured with.
    pub fn cgroup_driver(&self) -> crate::settings::CgroupDriver {
        self.cfg.cgroup_driver
    }

    /// What the OCI runtime and kernel support, as the runtime handlers advertise it.
    pub fn features(&self) -> crate::runtime_features::Features {
        self.features
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

    fn reserve(&self, key: String, what: &str) -> Result<names::Reservation<'_>> {
        self.names.reserve(key).ok_or_else(|| Error::exists(format!("{what} is already in use")))
    }

    fn release(&self, key: &str) {
        self.names.release(key);
    }

    /// Whether pods get CNI networking (a configuration is there).
    pub fn network_ready(&self) -> std::result::Result<(), String> {
        match self.network.load() {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("no CNI configuration in {}", self.network.conf_dir().display())),
            Err(e) => Err(e.to_string()),
        }
    }
}
