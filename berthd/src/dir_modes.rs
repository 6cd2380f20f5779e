//! The modes of what Berth keeps on disk. A container's writable layer
//! holds whatever it wrote, setuid binaries and device nodes included; its
//! bundle holds its env (Secrets); the metadata store holds both configs.
//! So, as containerd and moby settled after CVE-2021-41103 and
//! CVE-2021-41091: the root and state folders are 0711 (traversable, not
//! listable), and so are the state folders of bundles and sandboxes (a
//! user namespaced container's root, no root of the node, must reach its
//! own bundle and pod files, which are 0710 to its group alone); every
//! folder holding container or image content 0700,
//! metadata and bundle files 0600, whatever the umask. Folders an older
//! berthd left looser are tightened at start.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use berth_core::error::{Error, Result};

/// The root and state folders.
pub const TOP: u32 = 0o711;
/// Folders with container or image content, sockets, bundles.
pub const PRIVATE: u32 = 0o700;
/// Metadata and bundle files.
pub const FILE: u32 = 0o600;

/// Creates `dir` (and its parents) and sets its mode exactly.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    set(dir, mode)
}

/// Sets the mode of an existing file or folder.
pub fn set(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::internal(format!("setting the mode of {}: {e}", path.display())))
}

/// Writes a file created 0600 (the env it may hold never is readable by others).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| Error::internal(format!("writing {}: {e}", path.display()));
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(FILE).open(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    // An older file keeps its mode through O_CREAT: set it.
    set(path, FILE)
}
