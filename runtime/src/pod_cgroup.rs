//! The pod-level cgroup Berth makes when the pod config names no cgroup
//! parent (kubelet always names one: its pod cgroup): `/berth/<sandbox id>`,
//! the parent of every container of the pod, removed with the pod.
use std::path::PathBuf;

/// cgroup parent (cgroupfs syntax) for a pod's containers.
pub fn parent(config_parent: &str, sandbox_id: &str) -> String {
    if config_parent.is_empty() {
        format!("/berth/{sandbox_id}")
    } else {
        config_parent.to_string()
    }
}

/// Every cgroup (v1 and v2) mount point on the host.
fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mountpoint = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// Removes the pod cgroup Berth made (nothing when kubelet gave the parent).
/// Its containers' cgroups are gone by then (the OCI runtime removes them).
pub fn remove(config_parent: &str, sandbox_id: &str) {
    if !config_parent.is_empty() {
        return;
    }
    let rel = parent("", sandbox_id);
    for m in mount_points() {
        let _ = std::fs::remove_dir(m.join(rel.trim_start_matches('/')));
    }
}
