//! Signalling a process berthd knows only by a recorded pid (a shim, a pod
//! init), safe against pid reuse: a pidfd pins the process first, then its
//! /proc entry must show it is the shim of that very sandbox (`berth-shim`
//! with `--id <sandbox id>`; the pod init is a fork of it), and the signal
//! goes through the pidfd. A pid reused by another process, even another
//! pod's shim, is never signalled.
#![allow(unsafe_code)] // syscalls libc and nix do not wrap safely; each block has its SAFETY note
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A process pinned by a pidfd.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Pins `pid` (ESRCH when it is gone).
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned no fd"))?;
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `signal` to the pinned process (ESRCH once it has exited).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal takes our fd, a signal number, a null
        // siginfo (allowed: the kernel fills a default one) and flags 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the pinned process has exited: a pidfd turns readable
    /// then, whoever its parent is. Nothing polls meanwhile.
    pub async fn exited(self) -> io::Result<()> {
        // SAFETY: the OwnedFd is an open pidfd that the AsyncFd owns for its
        // whole life, and an OwnedFd always gives the same raw fd.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(self.0, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let _ready = fd.readable().await?;
        Ok(())
    }
}

/// Whether `pid` is the berth-shim of `sandbox_id` (or its pod init).
pub fn is_shim_of(pid: i32, sandbox_id: &str) -> bool {
    if pid <= 0 || sandbox_id.is_empty() {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "berth-shim" {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w[0] == b"--id" && w[1] == sandbox_id.as_bytes())
}

/// SIGKILLs `pid` if it is still the shim (or pod init) of `sandbox_id`;
/// whether a signal was sent.
pub fn kill_shim_of(pid: i32, sandbox_id: &str) -> bool {
    // Pinned before the check, so the process checked is the one signalled.
    let Ok(fd) = Pidfd::open(pid) else { return false };
    is_shim_of(pid, sandbox_id) && fd.signal(libc::SIGKILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_process_is_signalled() {
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Not a shim: never signalled.
        assert!(!kill_shim_of(pid, "abc"));
        let fd = Pidfd::open(pid).unwrap();
        fd.signal(libc::SIGKILL).unwrap();
        child.wait().unwrap();
        // Gone (and reaped): the pidfd says so rather than hitting a reused pid.
        assert_eq!(fd.signal(libc::SIGKILL).unwrap_err().raw_os_error(), Some(libc::ESRCH));
        assert!(Pidfd::open(0).is_err());
    }
}
