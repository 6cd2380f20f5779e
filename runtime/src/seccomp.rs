//! Seccomp profiles for containers: `runtime/default`, `unconfined`, and
//! `localhost/<path>` (an OCI seccomp JSON file on the node).
//!
//! Berth's default profile allows everything except the syscalls that
//! containerd's default profile withholds from unprivileged containers:
//! kernel modules and keyrings, mounting and namespace changes, clock and
//! system settings, BPF and perf, and raw kernel interfaces. They fail with
//! EPERM. (containerd's profile is an allow-list; this deny-list is smaller
//! and does not filter clone flags.)
use protocol::cri;
use serde_json::json;

use crate::error::{Error, Result};

/// Syscalls the default profile denies.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => vec![],
    }
}

/// The `runtime/default` profile.
pub fn default_profile() -> Result<oci_spec::runtime::LinuxSeccomp> {
    let v = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": [{ "names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM }],
    });
    serde_json::from_value(v).map_err(|e| Error::internal(format!("default seccomp profile: {e}")))
}

fn localhost(path: &str) -> Result<oci_spec::runtime::LinuxSeccomp> {
    if !path.starts_with('/') {
        return Err(Error::invalid(format!("seccomp profile path {path:?} must be absolute")));
    }
    let data = std::fs::read(path).map_err(|e| Error::invalid(format!("seccomp profile {path}: {e}")))?;
    serde_json::from_slice(&data)
        .map_err(|e| Error::invalid(format!("seccomp profile {path} is not an OCI seccomp profile: {e}")))
}

/// The profile a container asks for; None means unconfined.
pub fn for_container(sc: &cri::LinuxContainerSecurityContext) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    if sc.privileged {
        return Ok(None);
    }
    if let Some(p) = &sc.seccomp {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => default_profile().map(Some),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(&p.localhost_ref).map(Some),
            Err(_) => Err(Error::invalid(format!("unknown seccomp profile type {}", p.profile_type))),
        };
    }
    // The deprecated string form, which older clients still send.
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    match legacy {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => default_profile().map(Some),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path).map(Some),
            None => Err(Error::invalid(format!("unknown seccomp profile {other:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_by_kind() {
        let sc = |t: cri::security_profile::ProfileType, r: &str| cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: r.into() }),
            ..Default::default()
        };
        assert!(for_container(&sc(cri::security_profile::ProfileType::RuntimeDefault, "")).unwrap().is_some());
        assert!(for_container(&sc(cri::security_profile::ProfileType::Unconfined, "")).unwrap().is_none());
        let e = for_container(&sc(cri::security_profile::ProfileType::Localhost, "/no/such/profile.json")).unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::InvalidArgument);
        assert!(for_container(&cri::LinuxContainerSecurityContext::default()).unwrap().is_none());
        let p = default_profile().unwrap();
        let names: Vec<String> = p.syscalls().as_ref().unwrap()[0].names().to_vec();
        assert!(names.contains(&"unshare".to_string()));
    }
}
