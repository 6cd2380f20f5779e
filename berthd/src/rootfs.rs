//! A container's root filesystem: an overlay of its image's layer snapshots
//! (read-only) and its own writable layer, mounted in its bundle.
#![allow(unsafe_code)] // syscalls libc and nix do not wrap safely; each block has its SAFETY note
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use berth_core::error::Error;

/// A mount or unmount of a container's filesystem failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The image gives nothing to mount.
    #[error("image has no layers")]
    NoLayers,
    /// More layers than one classic mount takes, where Berth has no other way.
    #[error("an image volume of {0} layers does not fit one mount; at most about 40 layers")]
    TooManyLayers(usize),
    /// A mount point could not be made.
    #[error("creating {}: {source}", .path.display())]
    MountPoint {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel refused the mount or unmount.
    #[error("{what} {}: {source}{hint}", .target.display())]
    Kernel {
        /// What was being done ("mounting rootfs at", ...).
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        source: std::io::Error,
        /// A hint for the user ("" for none).
        hint: &'static str,
    },
}

/// Result with [`MountError`].
pub type Result<T> = std::result::Result<T, MountError>;

impl From<MountError> for Error {
    fn from(e: MountError) -> Self {
        match e {
            MountError::NoLayers | MountError::TooManyLayers(_) => Error::invalid(e.to_string()),
            _ => Error::internal(e.to_string()),
        }
    }
}

fn kernel(what: impl Into<String>, target: &Path, source: impl Into<std::io::Error>) -> MountError {
    MountError::Kernel { what: what.into(), target: target.to_path_buf(), source: source.into(), hint: "" }
}

fn mount_point(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint { path: path.to_path_buf(), source })
}

/// Mount options must fit in one page; past this, layers go one at a time.
const MAX_MOUNT_OPTIONS: usize = 4000;

/// Mounts the overlay at `target`. `lowers` is bottom layer first.
///
/// Classic mount(2) takes every lower dir in one option string of at most
/// a page: with absolute snapshot paths that is about 40 layers. When they
/// do not fit, the new mount API takes them one `lowerdir+` at a time
/// (Linux 6.8+), so images of hundreds of layers run (overlayfs stacks up
/// to 500).
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lowers.is_empty() {
        return Err(MountError::NoLayers);
    }
    for d in [upper, work, target] {
        mount_point(d)?;
    }
    // overlayfs lists the top layer first.
    let lower: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
    if opts.len() <= MAX_MOUNT_OPTIONS {
        return mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
            .map_err(|e| kernel("mounting rootfs at", target, e));
    }
    new_api::mount_overlay(&lower, upper, work, target).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) {
            " (taking layers one by one needs Linux 6.8 or later)"
        } else {
            ""
        };
        let what = format!("mounting rootfs of {} layers at", lowers.len());
        MountError::Kernel { what, target: target.to_path_buf(), source: e, hint }
    })
}

/// Mounts image layers (bottom first) read-only at `target`, for an image
/// volume: one layer is bound read-only; several are an overlay with no
/// upper layer, which overlayfs serves read-only.
pub fn mount_read_only(lowers: &[PathBuf], target: &Path) -> Result<()> {
    mount_point(target)?;
    let failed = |e: nix::Error| kernel("mounting an image volume at", target, e);
    match lowers {
        [] => Err(MountError::NoLayers),
        [only] => {
            mount(Some(only.as_path()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(failed)?;
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, ro, None::<&str>).map_err(|e| {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                failed(e)
            })
        }
        _ => {
            let lower: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
            let opts = format!("lowerdir={}", lower.join(":"));
            if opts.len() > MAX_MOUNT_OPTIONS {
                return Err(MountError::TooManyLayers(lowers.len()));
            }
            mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_RDONLY, Some(opts.as_str())).map_err(failed)
        }
    }
}

/// The new mount API (fsopen, fsconfig, fsmount, move_mount), which nix
/// does not wrap yet.
pub(crate) mod new_api {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    // From linux/mount.h.
    const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

    fn cstr(s: &str) -> io::Result<CString> {
        CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a mount argument"))
    }

    /// The fd a mount syscall returned (-1: its error).
    pub(crate) fn fd(r: libc::c_long) -> io::Result<OwnedFd> {
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = i32::try_from(r).map_err(|_| io::Error::other("the mount call returned no fd"))?;
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }

    fn set(fs: &OwnedFd, key: &str, value: &str) -> io::Result<()> {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: fsconfig reads the two NUL-terminated strings, which live
        // until it returns; the fd is ours.
        let r = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Mounts an overlay of `lower` (top first) with `upper` and `work` at `target`.
    pub fn mount_overlay(lower: &[String], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
        let name = cstr("overlay")?;
        // SAFETY: fsopen reads the NUL-terminated name; returns an fd or -1.
        let fs = fd(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
        for l in lower {
            set(&fs, "lowerdir+", l)?;
        }
        set(&fs, "upperdir", &upper.display().to_string())?;
        set(&fs, "workdir", &work.display().to_string())?;
        // SAFETY: FSCONFIG_CMD_CREATE takes no key or value (null pointers).
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fsmount takes our configured fs fd and flags; returns an fd or -1.
        let mnt = fd(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
        attach(&mnt, target)
    }

    /// A path as the mount syscalls take it.
    pub(crate) fn c_path(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
    }

    /// Attaches the detached mount `mnt` (from fsmount or open_tree) at `target`.
    pub(crate) fn attach(mnt: &OwnedFd, target: &Path) -> io::Result<()> {
        let to = c_path(target)?;
        let empty = cstr("")?;
        // SAFETY: move_mount reads the two NUL-terminated paths (the empty
        // one with MOVE_MOUNT_F_EMPTY_PATH means the mount fd itself).
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
pub fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The mount points at or under `dir` in a mountinfo text, deepest first.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Unmounts whatever is mounted at or under `dir`, deepest first: before a
/// folder is removed, no mount in it may remain, or the removal would
/// reach into what is mounted (a volume's host folder).
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    let Ok(dir) = std::fs::canonicalize(dir) else { return Ok(()) };
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| kernel("reading the mounts under", &dir, e))?;
    let points = mount_points_under(&info, &dir);
    if points.is_empty() {
        // The common case (the rootfs is already unmounted): one read.
        return Ok(());
    }
    for p in points {
        // Mounted over more than once: each unmount takes the top one.
        while umount2(&p, MntFlags::MNT_DETACH).is_ok() {}
    }
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| kernel("reading the mounts under", &dir, e))?;
    match mount_points_under(&info, &dir).first() {
        None => Ok(()),
        Some(p) => Err(kernel("unmounting", p, std::io::Error::from_raw_os_error(libc::EBUSY))),
    }
}

/// Unmounts `target` if it is mounted; a target that is not is fine.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(kernel("unmounting", target, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_folder_deepest_first() {
        let info = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/vda rw
30 22 0:40 / /run/berth/containers/a/rootfs rw - overlay overlay rw
31 22 8:1 /srv/v /run/berth/containers/a/idmapped/volume-0 rw - ext4 /dev/vda rw,idmapped
32 22 8:1 /srv/x /run/berth/containers/a\\040b rw - ext4 /dev/vda rw
33 22 8:1 /srv/y /run/berth/containers/ab rw - ext4 /dev/vda rw
";
        let got = mount_points_under(info, Path::new("/run/berth/containers/a"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/berth/containers/a/idmapped/volume-0"),
                PathBuf::from("/run/berth/containers/a/rootfs"),
            ]
        );
        assert_eq!(mount_points_under(info, Path::new("/run/berth/containers/a b")).len(), 1);
    }
}
