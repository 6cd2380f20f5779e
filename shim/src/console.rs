//! TTY containers: the OCI runtime hands the pty master to the shim over a
//! console socket (runc's `--console-socket`, SCM_RIGHTS). The shim reads
//! the terminal output (logged as stdout), keeps the master for input and
//! sets its size on resize.
#![allow(unsafe_code)] // syscalls libc and nix do not wrap safely; each block has its SAFETY note
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

/// A console socket waiting for the runtime's pty master.
pub struct ConsoleSocket {
    path: std::path::PathBuf,
    /// The path the runtime dials (short, through this process's fd table,
    /// when the real one would not fit in `sun_path`).
    dial: protocol::socket_path::SocketPath,
    task: tokio::task::JoinHandle<std::io::Result<OwnedFd>>,
}

impl ConsoleSocket {
    /// Binds `path` (replacing a stale socket) and starts waiting.
    pub fn listen(path: &std::path::Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let dial = protocol::socket_path::SocketPath::for_others(path)?;
        let listener = tokio::net::UnixListener::bind(dial.path())?;
        Ok(ConsoleSocket { path: path.to_path_buf(), dial, task: tokio::spawn(receive_master(listener)) })
    }

    /// What to give the runtime as `--console-socket`.
    pub fn runtime_path(&self) -> String {
        self.dial.path().to_string_lossy().to_string()
    }

    /// The pty master, once the runtime has sent it (at most 10 s).
    pub async fn master(mut self) -> Result<OwnedFd, String> {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task)
            .await
            .map_err(|_| "the runtime sent no terminal".to_string())?
            .map_err(|e| format!("console: {e}"))?
            .map_err(|e| format!("receiving the terminal: {e}"));
        got
    }
}

impl Drop for ConsoleSocket {
    /// Stops waiting (the runtime failed, or the master arrived) and removes the socket.
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Stdout and stderr for a runtime call whose process gets a terminal: the
/// terminal replaces them, so they go nowhere.
pub fn null_stdio() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let null = || std::fs::File::options().write(true).open("/dev/null").map(OwnedFd::from);
    Ok((null()?, null()?))
}

/// Waits for the runtime to connect to `listener` and send the pty master.
async fn receive_master(listener: tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    let (stream, _) = listener.accept().await?;
    loop {
        stream.readable().await?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        if let Some(fd) = fds.first() {
                            // SAFETY: the kernel just installed this descriptor
                            // in our table for us; nothing else owns it.
                            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
                        }
                    }
                }
                return Err(std::io::Error::other("the runtime sent no terminal on the console socket"));
            }
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets the terminal size.
pub fn resize(master: &OwnedFd, width: u16, height: u16) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The pty master as an async reader. EIO (all slave ends closed: the
/// container and everything it started have exited) reads as end of file.
pub struct PtyReader {
    fd: AsyncFd<OwnedFd>,
}

impl PtyReader {
    /// Wraps a master, making it non-blocking.
    pub fn new(master: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays
        // open for as long as it is registered.
        let fd = unsafe { AsyncFd::register(master) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(PtyReader { fd })
    }
}

impl AsyncRead for PtyReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|inner| nix::unistd::read(inner.get_ref().as_fd(), unfilled).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
