//! Resolves a user spec (`uid`, `uid:gid`, `name`, `name:group`) against the
//! container's own /etc/passwd and /etc/group, never the host's.
use std::path::Path;

use crate::error::{Error, Result};

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

fn read_db(rootfs: &Path, file: &str) -> String {
    // The rootfs is the container's; a symlinked /etc/passwd must not make
    // Berth read a host file, so only regular files are read.
    let p = rootfs.join("etc").join(file);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_file() => std::fs::read_to_string(&p).unwrap_or_default(),
        _ => String::new(),
    }
}

/// Resolves `spec` (empty means root).
pub fn resolve(rootfs: &Path, spec: &str) -> Result<Identity> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(rootfs, "passwd");
    let groups = read_db(rootfs, "group");
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
