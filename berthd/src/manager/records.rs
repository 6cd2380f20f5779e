//! Durable records of pods and containers: what berthd writes before each side
//! effect, and the phase that tells recovery how far a call got.
use super::*;

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

impl SandboxMeta {
    /// Whether the pod runs on the node's network (no network namespace of
    /// its own was pinned).
    pub fn host_network(&self) -> bool {
        !self.pinned.iter().any(|p| p == NS_NET)
    }
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
