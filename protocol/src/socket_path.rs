//! Unix socket paths of any length. `sun_path` holds 107 bytes, and a
//! sandbox's sockets live under `<state>/sandboxes/<64-hex id>/`, which
//! leaves little room for the state folder. A longer path is reached through
//! an `O_PATH` descriptor of its folder, as `/proc/self/fd/N/<name>` (or
//! `/proc/<pid>/fd/N/<name>` for another process, such as the OCI runtime
//! dialing a console socket): the same file, a short name. Every side that
//! binds or dials a Berth socket goes through [`SocketPath`].
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest path `sun_path` takes (108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A path to bind or dial, valid while this value lives.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    /// Keeps the folder's descriptor (and so the short name) alive.
    _dir: Option<File>,
}

impl SocketPath {
    /// A path to `socket` usable by this process.
    pub fn new(socket: &Path) -> io::Result<Self> {
        Self::build(socket, "self")
    }

    /// A path to `socket` usable by any process of the same user while this
    /// one (`std::process::id()`) keeps the value.
    pub fn for_others(socket: &Path) -> io::Result<Self> {
        Self::build(socket, &std::process::id().to_string())
    }

    fn build(socket: &Path, proc_self: &str) -> io::Result<Self> {
        if socket.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok(SocketPath { path: socket.to_path_buf(), _dir: None });
        }
        let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is no socket path", socket.display())));
        };
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?;
        let short = PathBuf::from(format!("/proc/{proc_self}/fd/{}", dir.as_raw_fd())).join(name);
        if short.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket name {:?} is too long", OsStr::from_bytes(name.as_bytes())),
            ));
        }
        Ok(SocketPath { path: short, _dir: Some(dir) })
    }

    /// The path to hand to bind, connect or another process.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_bound_and_dialed_through_the_folder() {
        let base = tempfile_dir();
        let mut dir = base.clone();
        while dir.as_os_str().len() < 200 {
            dir = dir.join("a-rather-long-folder-name");
        }
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("shim.sock");
        assert!(sock.as_os_str().len() > MAX_SOCKET_PATH);
        let bind = SocketPath::new(&sock).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(bind.path()).unwrap();
        assert!(sock.exists(), "the socket is at its real path");
        let dial = SocketPath::for_others(&sock).unwrap();
        assert!(dial.path().starts_with(format!("/proc/{}/fd", std::process::id())));
        let _c = std::os::unix::net::UnixStream::connect(dial.path()).unwrap();
        listener.accept().unwrap();
        let short = base.join("s.sock");
        assert_eq!(SocketPath::new(&short).unwrap().path(), short);
        std::fs::remove_dir_all(&base).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-sp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
