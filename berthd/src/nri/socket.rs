//! The NRI socket: where plugins connect. A plugin can change every
//! container (mounts, devices, hooks run as root), so only the node's root
//! may connect: the socket is 0600 in a folder of root's that nobody else
//! can write, and a peer that is not uid 0 is hung up on.
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use slog::{info, warn};

use berth_core::error::{Error, IoContext, Result};

use super::Nri;

/// Plugins being registered at once; more wait to be accepted.
const MAX_CONNECTING: usize = 8;

/// Binds `path` for plugins. The folder is made 0700 if missing; an
/// existing one must be berthd's user's (root) and writable by nobody else, and a stale
/// socket is replaced (nothing but a socket is).
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).ctx(|| format!("reading {}", dir.display()))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(Error::invalid(format!(
            "NRI socket folder {} must be berthd's user's and writable by no one else (it is uid {} mode {:o}): \
             another user could put their own socket there",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => remove(path),
        Ok(_) => {
            return Err(Error::invalid(format!(
                "{} is there and is no socket; remove it or choose another --nri-socket",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::internal(format!("reading {}: {e}", path.display()))),
    }
    let listener = protocol::socket_path::SocketPath::new(path)
        .and_then(|p| tokio::net::UnixListener::bind(p.path()))
        .ctx(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .ctx(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Accepts plugins until the listener fails; each is registered on a task
/// of its own, at most [`MAX_CONNECTING`] at once.
pub async fn serve(nri: Arc<Nri>, listener: tokio::net::UnixListener) {
    let connecting = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTING));
    loop {
        let Ok(permit) = connecting.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(nri.log, "NRI socket accept failed"; "error" => %e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == 0 => {}
            Ok(c) => {
                warn!(nri.log, "NRI connection refused: not root"; "uid" => c.uid(), "pid" => c.pid());
                continue;
            }
            Err(e) => {
                warn!(nri.log, "NRI connection refused: no peer credentials"; "error" => %e);
                continue;
            }
        }
        let nri = nri.clone();
        tokio::spawn(async move {
            if let Err(e) = nri.add_plugin(stream).await {
                warn!(nri.log, "NRI plugin not added"; "error" => %e);
            }
            drop(permit);
        });
    }
}

/// Removes the socket at `path` (nothing but a socket).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Binds the socket of `nri`'s settings (if any) and serves it on a task.
pub fn start(nri: &Arc<Nri>) -> Result<()> {
    let Some(path) = nri.settings().socket.clone() else { return Ok(()) };
    let listener = bind(&path)?;
    info!(nri.log, "NRI socket ready"; "socket" => %path.display());
    tokio::spawn(serve(nri.clone(), listener));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_roots_alone_and_only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nri").join("nri.sock");
        let l = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        drop(l);
        bind(&path).unwrap();
        let file = dir.path().join("nri").join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file).unwrap_err().message.contains("no socket"));
        std::fs::set_permissions(path.parent().unwrap(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(bind(&path).unwrap_err().message.contains("writable by no one else"));
    }
}
