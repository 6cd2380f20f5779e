//! What this node's cgroup hierarchy offers the OCI runtime: cgroup v2
//! (unified) or v1, and which controllers it can use.
use std::path::Path;

/// Whether the node runs the cgroup v2 unified hierarchy (what runc then
/// uses); a hybrid host, with v2 mounted beside v1 controllers, does not.
pub fn unified_hierarchy() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Whether the runtime can use controller `name`: listed in the v2 root's
/// `cgroup.controllers`, or mounted as a v1 hierarchy (a controller that
/// sits in the v2 tree of a hybrid host is out of runc's reach).
pub fn has_controller(name: &str) -> bool {
    if unified_hierarchy() {
        return std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|s| s.split_whitespace().any(|c| c == name));
    }
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| {
        let Some((_, right)) = l.split_once(" - ") else { return false };
        let mut f = right.split(' ');
        f.next() == Some("cgroup") && f.nth(1).is_some_and(|opts| opts.split(',').any(|o| o == name))
    }) || Path::new("/sys/fs/cgroup").join(name).join("tasks").exists()
}
