//! TCP sockets made inside a pod's network namespace without an OS thread
//! per connection. A socket belongs to the namespace it was created in, and
//! setns changes only the calling thread, so one helper thread (started on
//! first use) enters the pod's namespace, creates the socket and returns to
//! its own; the socket is then connected from tokio like any other. A
//! helper that cannot return to its namespace ends, and the next request
//! starts a fresh one.
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

struct Job {
    netns: PathBuf,
    v6: bool,
    reply: tokio::sync::oneshot::Sender<io::Result<OwnedFd>>,
}

static HELPER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

fn socket_in(netns: &Path, v6: bool, home: &File) -> (io::Result<OwnedFd>, bool) {
    use nix::sched::{setns, CloneFlags};
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let target = match File::open(netns) {
        Ok(f) => f,
        Err(e) => return (Err(e), true),
    };
    if let Err(e) = setns(&target, CloneFlags::CLONE_NEWNET) {
        return (Err(e.into()), true);
    }
    let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let made = socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from);
    let back = setns(home, CloneFlags::CLONE_NEWNET).is_ok();
    (made, back)
}

fn helper(rx: mpsc::Receiver<Job>) {
    let Ok(home) = File::open("/proc/thread-self/ns/net") else { return };
    for job in rx {
        let (r, back) = socket_in(&job.netns, job.v6, &home);
        let _ = job.reply.send(r);
        if !back {
            // This thread is in the wrong namespace now: it must not serve more.
            return;
        }
    }
}

/// A non-blocking, unconnected TCP socket (IPv6 when `v6`) inside `netns`.
pub async fn tcp_socket_in(netns: &Path, v6: bool) -> io::Result<OwnedFd> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let mut job = Job { netns: netns.to_path_buf(), v6, reply };
    for _ in 0..2 {
        let sender = {
            let mut h = HELPER.lock().unwrap_or_else(|e| e.into_inner());
            if h.is_none() {
                let (tx, rx) = mpsc::channel();
                std::thread::Builder::new().name("berth-netns".into()).spawn(move || helper(rx))?;
                *h = Some(tx);
            }
            h.clone()
        };
        let Some(sender) = sender else { break };
        match sender.send(job) {
            Ok(()) => return rx.await.map_err(|_| io::Error::other("the namespace helper ended"))?,
            Err(mpsc::SendError(j)) => {
                // The helper ended (see above): start another.
                job = j;
                *HELPER.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }
    Err(io::Error::other("no namespace helper could be started"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_are_made_in_the_namespace_asked_for() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped as a normal user: setns into a network namespace needs root (CI runs it as root)");
            return;
        }
        // This process's own namespace, by path: the socket works from tokio.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = tcp_socket_in(Path::new("/proc/self/ns/net"), false).await.unwrap();
        let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let _conn = sock.connect(addr).await.unwrap();
        listener.accept().await.unwrap();
        // A path that is no namespace is an error, and the helper serves on.
        assert!(tcp_socket_in(Path::new("/nonexistent"), false).await.is_err());
        assert!(tcp_socket_in(Path::new("/proc/self/ns/net"), true).await.is_ok());
    }
}
