//! berth-shim's library: everything the `berth-shim` binary serves, so the
//! service logic can be unit-tested against a fake OCI runtime without root,
//! and the CRI log writer can be fuzzed against its reader.
pub mod cgroup;
pub mod console;
pub mod container;
pub mod cri_log;
pub mod error;
pub mod exec;
pub mod io_server;
pub mod launch;
pub mod log_forwarder;
pub mod namespaces;
pub mod oci_runtime;
pub mod process_stats;
pub mod reaper;
pub mod runc;
pub mod service;
