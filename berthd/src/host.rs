//! The host as the manager touches it beside its shims: processes known by
//! a recorded pid (a shim, a pod init), overlay mounts, pinned namespace
//! files, and the OCI runtime run directly for containers whose shim is
//! gone. Behind one trait, so the manager's rollback and recovery logic runs
//! in unit tests against a recording double, as a normal user.
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::rootfs::Result;
use async_trait::async_trait;

/// What the manager asks of the host.
#[async_trait]
pub trait Host: Send + Sync {
    /// Whether `pid` still runs (a zombie has finished).
    fn running(&self, pid: u32) -> bool;
    /// Whether `pid` is the berth-shim of `sandbox_id` (or its pod init).
    fn is_shim_of(&self, pid: u32, sandbox_id: &str) -> bool;
    /// Whether `pid` still runs as the shim of `sandbox_id`.
    fn shim_alive(&self, pid: u32, sandbox_id: &str) -> bool {
        self.running(pid) && self.is_shim_of(pid, sandbox_id)
    }
    /// SIGKILLs `pid` if it still is the shim (or pod init) of
    /// `sandbox_id`; whether a signal was sent.
    fn kill_shim_of(&self, pid: u32, sandbox_id: &str) -> bool;
    /// Returns once `pid`, the shim of `sandbox_id`, has ended.
    async fn shim_exited(&self, pid: u32, sandbox_id: &str);
    /// Mounts an overlay of `lowers` (top first) with `upper` and `work` at
    /// `target`.
    fn mount_overlay(&self, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()>;
    /// [`Host::mount_overlay`] with each lower layer idmapped through the
    /// user namespace pinned at `userns` (staged in `staging`) and the
    /// upper layer owned by `root` (uid, gid on the node).
    #[allow(clippy::too_many_arguments)]
    fn mount_overlay_idmapped(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
        userns: &Path,
        root: (u32, u32),
        staging: &Path,
    ) -> Result<()>;
    /// Attaches at `target` a clone of `source` idmapped through the user
    /// namespace pinned at `userns`.
    fn bind_idmapped(&self, source: &Path, target: &Path, userns: &Path) -> Result<()>;
    /// Mounts `lowers` (bottom first) read-only at `target`: one layer
    /// bound, several as an overlay without an upper layer.
    fn mount_read_only(&self, lowers: &[PathBuf], target: &Path) -> Result<()>;
    /// Unmounts `target` if it is mounted.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Unmounts everything at or under `dir`; an error if a mount remains.
    fn unmount_all_under(&self, dir: &Path) -> Result<()>;
    /// Unmounts the pinned namespace files in `dir` and `dir` itself.
    fn release_ns_dir(&self, dir: &Path);
    /// Runs the OCI runtime with `args` (with a timeout; failures are
    /// logged, as the caller goes on either way).
    async fn oci_runtime(&self, args: &[&str]);
}

/// How often a shim is looked at where it cannot be watched through a
/// pidfd (Linux before 5.3).
const SHIM_CHECK: Duration = Duration::from_millis(200);

/// The real host: /proc, pidfds, mount(2), and the configured OCI runtime.
pub struct RealHost {
    /// The OCI runtime binary.
    pub runtime: PathBuf,
    /// Its `--root`.
    pub runtime_root: PathBuf,
    /// Whether runc takes `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// Longest a direct runtime call may take.
    pub runtime_timeout: Duration,
    /// Where failures are logged.
    pub log: slog::Logger,
}

#[async_trait]
impl Host for RealHost {
    fn running(&self, pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
            Err(_) => false,
        }
    }

    fn is_shim_of(&self, pid: u32, sandbox_id: &str) -> bool {
        i32::try_from(pid).is_ok_and(|p| crate::pidfd::is_shim_of(p, sandbox_id))
    }

    fn kill_shim_of(&self, pid: u32, sandbox_id: &str) -> bool {
        i32::try_from(pid).is_ok_and(|p| crate::pidfd::kill_shim_of(p, sandbox_id))
    }

    /// Through a pidfd, whose readiness wakes this at once (nothing polls;
    /// a reused pid is never taken for the shim), or by looking every
    /// [`SHIM_CHECK`] where pidfds are missing.
    async fn shim_exited(&self, pid: u32, sandbox_id: &str) {
        match crate::pidfd::Pidfd::open(i32::try_from(pid).unwrap_or(0)) {
            // Pinned first, checked second: the pidfd is this shim's.
            Ok(fd) if self.shim_alive(pid, sandbox_id) => {
                let _ = fd.exited().await;
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(_) => {
                while self.shim_alive(pid, sandbox_id) {
                    tokio::time::sleep(SHIM_CHECK).await;
                }
            }
        }
    }

    fn mount_overlay(&self, lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
        crate::rootfs::mount_overlay(lowers, upper, work, target)
    }

    fn mount_overlay_idmapped(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
        userns: &Path,
        root: (u32, u32),
        staging: &Path,
    ) -> Result<()> {
        crate::idmapped::mount_overlay(lowers, upper, work, target, userns, root, staging)
    }

    fn bind_idmapped(&self, source: &Path, target: &Path, userns: &Path) -> Result<()> {
        crate::idmapped::bind(source, target, userns)
    }

    fn mount_read_only(&self, lowers: &[PathBuf], target: &Path) -> Result<()> {
        crate::rootfs::mount_read_only(lowers, target)
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        crate::rootfs::unmount(target)
    }

    fn unmount_all_under(&self, dir: &Path) -> Result<()> {
        crate::rootfs::unmount_all_under(dir)
    }

    fn release_ns_dir(&self, dir: &Path) {
        use nix::mount::{umount2, MntFlags};
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
            }
        }
        let _ = umount2(dir, MntFlags::MNT_DETACH);
    }

    async fn oci_runtime(&self, args: &[&str]) {
        use slog::warn;
        let mut cmd = tokio::process::Command::new(&self.runtime);
        cmd.arg("--root").arg(&self.runtime_root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        cmd.kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let what = args.join(" ");
        match tokio::time::timeout(self.runtime_timeout, cmd.output()).await {
            Ok(Ok(o)) if !o.status.success() => {
                let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                // runc has no error codes; a container already gone or
                // stopped is what these direct calls expect to find often.
                if !err.contains("does not exist") && !err.contains("not running") {
                    warn!(self.log, "OCI runtime call failed"; "args" => what, "stderr" => err);
                }
            }
            Ok(Err(e)) => warn!(self.log, "OCI runtime call failed"; "args" => what, "error" => %e),
            Err(_) => warn!(self.log, "OCI runtime call timed out"; "args" => what),
            _ => {}
        }
    }
}
