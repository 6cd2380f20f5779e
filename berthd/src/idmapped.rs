//! Idmapped mounts (Linux 5.12+; overlayfs layers 5.19+): a folder of the
//! node seen through a pod's user namespace, so that what the node's root
//! owns shows as owned by the pod's root, and what the pod's root writes in
//! a volume is kept on disk as the node's root. A container of a pod with a user
//! namespace gets its root filesystem and volumes this way; runc (before
//! 1.2) does not make idmapped mounts, so berthd makes them before it.
//!
//! A clone of the source is taken with open_tree(2), given the user
//! namespace's mapping with mount_setattr(2) and attached at a target with
//! move_mount(2). Overlayfs cannot itself be idmapped, but its lower layers
//! can: each is cloned idmapped into a staging folder, the overlay is
//! mounted from there, and the staged clones are let go at once, as
//! overlayfs keeps private copies of its layers' mounts. The upper layer is
//! not idmapped (overlayfs writes its work folder as the mounter, the
//! node's root, whom the mapping cannot name): it belongs to the pod's root
//! as the node sees it, and what the container writes is kept with the
//! pod's host ids, as containerd keeps it.
#![allow(unsafe_code)] // syscalls libc and nix do not wrap; each block has its SAFETY note
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::rootfs::new_api::{attach, c_path, fd};
use crate::rootfs::{MountError, Result};

// From linux/mount.h.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// struct mount_attr (linux/mount.h), version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn failed(what: &str, target: &Path, source: io::Error) -> MountError {
    let hint = match source.raw_os_error() {
        Some(libc::EINVAL) => {
            " (the filesystem cannot be idmapped, or the kernel is older than 5.12; a pod with its own user namespace needs both)"
        }
        Some(libc::ENOSYS) => " (idmapped mounts need Linux 5.12 or later)",
        _ => "",
    };
    MountError::Kernel { what: what.to_string(), target: target.to_path_buf(), source, hint }
}

/// Attaches a clone of `source` (not its submounts) at `target`, mapped
/// through the user namespace pinned at `userns`. `target` is made as a
/// folder or an empty file, as `source` is.
pub fn bind(source: &Path, target: &Path, userns: &Path) -> Result<()> {
    let ns = std::fs::File::open(userns).map_err(|e| failed("opening the pod's user namespace for", target, e))?;
    bind_through(source, target, &ns)
}

/// [`bind`] through the user namespace open as `ns`.
fn bind_through(source: &Path, target: &Path, ns: &std::fs::File) -> Result<()> {
    let make = |r: io::Result<()>| r.map_err(|source| MountError::MountPoint { path: target.to_path_buf(), source });
    if let Some(parent) = target.parent() {
        make(std::fs::create_dir_all(parent))?;
    }
    if source.is_dir() {
        make(std::fs::create_dir_all(target))?;
    } else {
        make(std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(target).map(drop))?;
    }
    let tree = open_tree(source).map_err(|e| failed(&format!("cloning {} for", source.display()), target, e))?;
    set_idmap(&tree, ns).map_err(|e| failed(&format!("idmapping {} for", source.display()), target, e))?;
    attach(&tree, target).map_err(|e| failed("attaching an idmapped mount at", target, e))
}

/// Mounts at `target` an overlay of `lowers` (bottom first), each seen
/// through the user namespace at `userns`, with `upper` and `work`; the
/// upper layer's root is given to `root` (the pod's root as the node sees
/// it: uid, gid). `staging` is an empty folder the layers are attached in
/// while the overlay is made; it is removed after.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    userns: &Path,
    root: (u32, u32),
    staging: &Path,
) -> Result<()> {
    for d in [upper, work] {
        std::fs::create_dir_all(d).map_err(|source| MountError::MountPoint { path: d.to_path_buf(), source })?;
    }
    std::os::unix::fs::lchown(upper, Some(root.0), Some(root.1))
        .map_err(|source| MountError::MountPoint { path: upper.to_path_buf(), source })?;
    // Opened once for every layer.
    let ns = std::fs::File::open(userns).map_err(|e| failed("opening the pod's user namespace for", target, e))?;
    let mut staged = Vec::new();
    let result = (|| {
        let mut mapped = Vec::new();
        for (i, l) in lowers.iter().enumerate() {
            let at = staging.join(format!("layer-{i}"));
            staged.push(at.clone());
            bind_through(l, &at, &ns)?;
            mapped.push(at);
        }
        crate::rootfs::mount_overlay(&mapped, upper, work, target).map_err(|e| match e {
            MountError::Kernel { what, target, source, hint: "" } if source.raw_os_error() == Some(libc::EINVAL) => {
                MountError::Kernel {
                    what,
                    target,
                    source,
                    hint: " (overlayfs on idmapped layers needs Linux 5.19 or later)",
                }
            }
            e => e,
        })
    })();
    // Mounted or not, the staged clones go: overlayfs holds its own.
    for at in staged.iter().rev() {
        let _ = umount2(at, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(at);
    }
    let _ = std::fs::remove_dir(staging);
    result
}

fn open_tree(source: &Path) -> io::Result<OwnedFd> {
    let path = c_path(source)?;
    // SAFETY: open_tree reads the NUL-terminated path; it returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    fd(r)
}

fn set_idmap(tree: &OwnedFd, userns: &std::fs::File) -> io::Result<()> {
    let fd = u64::try_from(userns.as_raw_fd()).map_err(|_| io::Error::other("bad user namespace fd"))?;
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: fd };
    let empty = c"";
    // SAFETY: mount_setattr reads `attr`, which lives until it returns, of
    // the size passed; the empty path with AT_EMPTY_PATH means the fd itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
