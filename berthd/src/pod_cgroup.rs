//! The cgroups of a pod and its containers, in either driver's spelling.
//! With cgroupfs a parent is a path (`/kubepods/burstable/pod<uid>`) and a
//! container's cgroup is `<parent>/<id>`; with systemd a parent is a slice
//! (`kubepods-burstable-pod<uid>.slice`) and a container's cgroup is runc's
//! `<slice>:berth:<id>` (a `berth-<id>.scope` in that slice). When the pod
//! config names no parent (kubelet always names one), Berth makes a pod
//! cgroup of its own: `/berth/<sandbox id>` or `berth-<sandbox id>.slice`.
use std::path::PathBuf;

use crate::settings::CgroupDriver;
use berth_core::error::{Error, Result};

/// The prefix runc gives a container's systemd scope.
const SCOPE_PREFIX: &str = "berth";

/// Checks a pod's cgroup parent against the configured driver: a parent
/// spelled for the other driver is a kubelet/berthd mismatch to fix in
/// one of their configs, not something to guess about.
pub fn check_parent(parent: &str, driver: CgroupDriver) -> Result<()> {
    if parent.is_empty() {
        return Ok(());
    }
    let mismatch = |looks: &str, want: &str| {
        Err(Error::invalid(format!(
            "cgroup parent {parent:?} is {looks}, but berthd's cgroup_driver is {:?}, which takes {want}; \
             make kubelet's cgroupDriver and berthd's cgroup_driver agree",
            driver.name()
        )))
    };
    if parent.len() > 1024 || parent.contains(['\0', '\n']) {
        return Err(Error::invalid("cgroup parent is too long or has control characters"));
    }
    match driver {
        CgroupDriver::Cgroupfs => {
            if parent.ends_with(".slice") && !parent.contains('/') {
                return mismatch("a systemd slice", "a path like /kubepods/burstable/pod<uid>");
            }
            if !parent.starts_with('/') || parent.split('/').any(|c| c == "..") {
                return Err(Error::invalid(format!(
                    "cgroup parent {parent:?} must be an absolute path without '..' (cgroupfs driver)"
                )));
            }
        }
        CgroupDriver::Systemd => {
            if parent.starts_with('/') || !parent.ends_with(".slice") {
                return mismatch("not a systemd slice", "a slice like kubepods-burstable-pod<uid>.slice");
            }
            let stem = &parent[..parent.len() - ".slice".len()];
            if stem.is_empty()
                || stem.starts_with('-')
                || stem.ends_with('-')
                || stem.contains("--")
                || !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:\\".contains(&b))
            {
                return Err(Error::invalid(format!("cgroup parent {parent:?} is not a valid systemd slice name")));
            }
        }
    }
    Ok(())
}

/// The cgroup parent of a pod's containers.
pub fn parent(config_parent: &str, sandbox_id: &str, driver: CgroupDriver) -> String {
    match (config_parent.is_empty(), driver) {
        (false, _) => config_parent.to_string(),
        (true, CgroupDriver::Cgroupfs) => format!("/{SCOPE_PREFIX}/{sandbox_id}"),
        (true, CgroupDriver::Systemd) => format!("{SCOPE_PREFIX}-{sandbox_id}.slice"),
    }
}

/// The OCI `cgroupsPath` of a container under `parent`.
pub fn container_path(parent: &str, container_id: &str, driver: CgroupDriver) -> String {
    match driver {
        CgroupDriver::Cgroupfs => format!("{}/{container_id}", parent.trim_end_matches('/')),
        CgroupDriver::Systemd => format!("{parent}:{SCOPE_PREFIX}:{container_id}"),
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
/// A slice of Berth's own is left to systemd, which unloads it once empty
/// and unreferenced.
pub fn remove(config_parent: &str, sandbox_id: &str, driver: CgroupDriver) {
    if !config_parent.is_empty() || driver == CgroupDriver::Systemd {
        return;
    }
    let rel = parent("", sandbox_id, driver);
    for m in mount_points() {
        let _ = std::fs::remove_dir(m.join(rel.trim_start_matches('/')));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_checked_against_the_driver() {
        use CgroupDriver::*;
        assert!(check_parent("", Cgroupfs).is_ok());
        assert!(check_parent("/kubepods/burstable/pod1", Cgroupfs).is_ok());
        let e = check_parent("kubepods-burstable-pod1.slice", Cgroupfs).unwrap_err();
        assert!(e.message.contains("cgroup_driver is \"cgroupfs\""), "{}", e.message);
        assert!(check_parent("/a/../../etc", Cgroupfs).is_err());
        assert!(check_parent("relative", Cgroupfs).is_err());
        assert!(check_parent("kubepods-burstable-pod1.slice", Systemd).is_ok());
        let e = check_parent("/kubepods/pod1", Systemd).unwrap_err();
        assert!(e.message.contains("cgroup_driver is \"systemd\""), "{}", e.message);
        for bad in [".slice", "-a.slice", "a--b.slice", "a/b.slice", "a b.slice"] {
            assert!(check_parent(bad, Systemd).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_paths_in_each_spelling() {
        use CgroupDriver::*;
        assert_eq!(container_path(&parent("", "p1", Cgroupfs), "c1", Cgroupfs), "/berth/p1/c1");
        assert_eq!(container_path(&parent("", "p1", Systemd), "c1", Systemd), "berth-p1.slice:berth:c1");
        assert_eq!(container_path("kubepods-pod2.slice", "c1", Systemd), "kubepods-pod2.slice:berth:c1");
    }
}
