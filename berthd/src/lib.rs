//! berthd, Berth's manager daemon: the CRI server and the manager behind it,
//! which keeps the records of pods and containers, launches one shim per
//! pod and asks it for everything that happens inside the pod.
pub mod calls;
pub mod cgroup_host;
pub mod cni;
pub mod cri_server;
pub mod dir_modes;
pub mod h2_authority;
pub mod host;
pub mod idmapped;
pub mod log_rotation;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod metrics_server;
pub mod nri;
pub mod pidfd;
pub mod pod_cgroup;
pub mod pod_files;
pub mod pod_metrics;
pub mod rootfs;
pub mod runtime_features;
pub mod sd_notify;
pub mod seccomp;
pub mod server;
pub mod settings;
pub mod shim_client;
pub mod spec;
pub mod stats;
pub mod step_times;
pub mod usage_cache;
pub mod user_namespaces;
pub mod users;
