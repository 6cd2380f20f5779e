//! A container's root filesystem: an overlay of its image's layer snapshots
//! (read-only) and its own writable layer, mounted in its bundle.
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Mounts the overlay at `target`. `lowers` is bottom layer first.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lowers.is_empty() {
        return Err(Error::invalid("image has no layers"));
    }
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(|e| Error::internal(format!("creating {}: {e}", d.display())))?;
    }
    // overlayfs lists the top layer first.
    let lower: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| Error::internal(format!("mounting rootfs at {}: {e}", target.display())))
}

/// Unmounts `target` if it is mounted; a target that is not is fine.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::internal(format!("unmounting {}: {e}", target.display()))),
    }
}
