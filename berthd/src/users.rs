//! Resolves a user spec (`uid`, `uid:gid`, `name`, `name:group`) against the
//! container's own /etc/passwd and /etc/group, never the host's: the files
//! are opened inside the rootfs as if it were `/` (openat2 RESOLVE_IN_ROOT,
//! so an image's symlinks cannot point Berth at host files), must be regular
//! files, and are read up to [`MAX_DB`] bytes (an image may ship a 2 GiB
//! /etc/group).
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use berth_core::error::{Error, Result};

/// A resolved identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Groups from /etc/group that list the user.
    pub additional_gids: Vec<u32>,
}

/// Largest /etc/passwd or /etc/group read.
pub const MAX_DB: u64 = 4 << 20;

/// The image's `/etc/<file>`, resolved inside `rootfs`; empty when it has
/// none (or not a regular file).
fn read_db(rootfs: &Path, file: &str) -> Result<String> {
    let Some(f) = open_in_root(rootfs, &format!("etc/{file}"))? else { return Ok(String::new()) };
    let f = std::fs::File::from(f);
    match f.metadata() {
        Ok(m) if m.file_type().is_file() => {}
        _ => return Ok(String::new()),
    }
    let mut data = Vec::new();
    f.take(MAX_DB + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::internal(format!("reading the image's /etc/{file}: {e}")))?;
    if data.len() as u64 > MAX_DB {
        return Err(Error::invalid(format!(
            "the image's /etc/{file} is larger than {} MiB, which Berth does not read; give the user as a uid",
            MAX_DB >> 20
        )));
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}

/// Opens `rel` under `root` with symlinks resolved inside it (never above
/// it, never through /proc magic links). None when it does not exist.
fn open_in_root(root: &Path, rel: &str) -> Result<Option<OwnedFd>> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let dir = std::fs::File::open(root).map_err(|e| Error::internal(format!("opening {}: {e}", root.display())))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match nix::fcntl::openat2(dir.as_fd(), rel, how) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => Ok(None),
        Err(nix::errno::Errno::ENOSYS) => {
            // Before Linux 5.6: no symlink anywhere on the path is followed.
            let p = root.join(rel);
            let mut cur = root.to_path_buf();
            for c in Path::new(rel).components() {
                cur.push(c);
                if std::fs::symlink_metadata(&cur).map(|m| m.file_type().is_symlink()).unwrap_or(true) {
                    return Ok(None);
                }
            }
            Ok(std::fs::File::open(&p).ok().map(OwnedFd::from))
        }
        Err(e) => Err(Error::internal(format!("opening the image's /{rel}: {e}"))),
    }
}

/// Resolves `spec` (empty means root).
pub fn resolve(rootfs: &Path, spec: &str) -> Result<Identity> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(rootfs, "passwd")?;
    let groups = read_db(rootfs, "group")?;
    let mut name = None;
    let (uid, mut gid) = if user.is_empty() {
        (0, 0)
    } else if let Ok(uid) = user.parse::<u32>() {
        let gid = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[2] == user)
            .map(|f| {
                name = Some(f[0].to_string());
                f[3].parse().unwrap_or(0)
            })
            .unwrap_or(0);
        (uid, gid)
    } else {
        let f = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[0] == user)
            .ok_or_else(|| Error::invalid(format!("user {user:?} is not in the image's /etc/passwd")))?;
        name = Some(user.to_string());
        (
            f[2].parse().map_err(|_| Error::invalid(format!("bad uid for {user} in /etc/passwd")))?,
            f[3].parse().map_err(|_| Error::invalid(format!("bad gid for {user} in /etc/passwd")))?,
        )
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| Error::invalid(format!("group {g:?} is not in the image's /etc/group")))?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(n) = &name {
        for f in groups.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4 && f[3].split(',').any(|m| m == n) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !additional_gids.contains(&g) {
                        additional_gids.push(g);
                    }
                }
            }
        }
    }
    Ok(Identity { uid, gid, additional_gids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_from_image_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\n").unwrap();
        assert_eq!(resolve(d.path(), "").unwrap(), Identity { uid: 0, gid: 0, additional_gids: vec![] });
        assert_eq!(resolve(d.path(), "app").unwrap(), Identity { uid: 1000, gid: 1000, additional_gids: vec![2000] });
        assert_eq!(resolve(d.path(), "1000").unwrap().additional_gids, vec![2000]);
        assert_eq!(resolve(d.path(), "1234:5").unwrap(), Identity { uid: 1234, gid: 5, additional_gids: vec![] });
        assert_eq!(resolve(d.path(), "app:extra").unwrap().gid, 2000);
        assert!(resolve(d.path(), "nobody").is_err());
    }
}
