//! Telling systemd (a `Type=notify` unit) that berthd is ready, reloading
//! or stopping, through the datagram socket named by `$NOTIFY_SOCKET`.
//!
//! The variable is taken out of berthd's environment at start, before any
//! thread exists: every child would inherit it otherwise, and runc, seeing
//! it, bind-mounts the socket into the container and makes `runc start`
//! wait for the container's own READY=1. (The sd-notify crate reads the
//! variable at each call, so it cannot both notify and keep it from children.)
use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;

/// Where to notify, taken from the environment once.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// Takes `$NOTIFY_SOCKET` out of the environment. Call before any
    /// thread is started (changing the environment is not thread-safe).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        std::env::remove_var("NOTIFY_SOCKET");
        Notifier { socket }
    }

    /// READY=1: the CRI socket serves.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1\nSTATUS=serving CRI\n")
    }

    /// RELOADING=1: the config is being read again.
    pub fn reloading(&self) -> io::Result<()> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
        let usec =
            u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"))
    }

    /// STOPPING=1.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\n")
    }

    fn send(&self, message: &str) -> io::Result<()> {
        let Some(path) = &self.socket else { return Ok(()) };
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        } else {
            sock.send_to(message.as_bytes(), std::path::Path::new(path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some(path.into_os_string()) };
        n.ready().unwrap();
        n.reloading().unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..len]).unwrap().starts_with("READY=1\n"));
        let len = server.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        assert!(Notifier::default().ready().is_ok(), "without a socket, nothing to do");
    }
}
