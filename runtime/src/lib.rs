//! Berth's manager library: what `berthd` runs (the CRI server and the
//! manager behind it) and what `berthctl` uses to reach a CRI socket.
pub mod cni;
pub mod cri_client;
pub mod cri_log_reader;
pub mod cri_server;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod images;
pub mod log_printer;
pub mod log_rotation;
pub mod logging;
pub mod manager;
pub mod pod_cgroup;
pub mod pod_files;
pub mod reference;
pub mod rootfs;
pub mod seccomp;
pub mod server;
pub mod shim_client;
pub mod spec;
pub mod stats;
pub mod store;
pub mod unpack;
pub mod users;
