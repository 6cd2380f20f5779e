//! What the manager does to the host itself, beside what it asks of shims
//! and runc: signalling and waiting for a pod's processes by pid, removing
//! trees off the async workers, unmounting a pod's pinned namespaces.
use super::*;

/// Removes folders on a blocking thread: a writable layer can hold
/// millions of files.
pub(super) async fn remove_trees(dirs: Vec<PathBuf>) {
    let _ = tokio::task::spawn_blocking(move || {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await;
}

/// Ends a pod's init process, if that pid still is one (its command line
/// names the sandbox, so a reused pid is never signalled).
pub(super) fn kill_pod_init(pid: u32, sandbox_id: &str) {
    crate::pidfd::kill_shim_of(pid as i32, sandbox_id);
}

/// Whether `pid` still runs. A zombie has finished: whoever reaps it (the
/// host's init, for a shim) may take its time.
pub(super) fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

pub(super) async fn wait_gone(pid: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while running(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Unmounts pinned namespace files left by a shim that could not release
/// them itself, and the private mount of their folder.
pub(super) fn release_ns_dir(dir: &Path) {
    use nix::mount::{umount2, MntFlags};
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
    let _ = umount2(dir, MntFlags::MNT_DETACH);
}
