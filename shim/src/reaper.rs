//! The one place that waits for children. The shim is a child subreaper, so
//! container inits, exec processes and orphans all end up as its children;
//! `waitpid(-1)` here would steal exit statuses from anyone else waiting, so no
//! other code in the shim calls wait. Callers subscribe to a pid (atomically
//! with spawning it, so an instant exit is never missed) and get its status.
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code as a shell reports it (128 + signal when killed).
    pub code: i32,
    /// Signal that killed the process, 0 when it exited.
    pub signal: i32,
    /// When the shim reaped it.
    pub at: SystemTime,
}

/// Exits of pids nobody subscribed to yet are kept this long, for a
/// subscriber that learns the pid only after the process ended (a container
/// init whose pid runc writes to a file).
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Inner {
    subscribers: HashMap<i32, oneshot::Sender<ExitStatus>>,
    unclaimed: HashMap<i32, ExitStatus>,
}

/// Reaps every child of the shim and hands exit statuses to subscribers.
#[derive(Default, Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // (each operation is one insert or remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and subscribes to its exit while holding the reaper lock,
    /// so the reaper cannot collect it before the subscription exists.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        inner.subscribers.insert(pid_of(&child), tx);
        Ok((child, rx))
    }

    /// Subscribes to a pid that is (or was) a child of the shim but was not
    /// spawned through [`Reaper::spawn`] (container inits, exec processes).
    pub fn subscribe(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        match inner.unclaimed.remove(&pid) {
            // An exit kept for a pid that is again a live child of the shim
            // belongs to an earlier process with the same pid: handing it on
            // would report the new one as exited. (Under the lock no reap
            // runs, so a child's exit cannot slip in between.)
            Some(status) if !is_my_child(pid) => {
                let _ = tx.send(status);
            }
            _ => {
                inner.subscribers.insert(pid, tx);
            }
        }
        rx
    }

    /// Collects every child that has exited. Called on each SIGCHLD.
    pub fn reap(&self) {
        let mut inner = self.lock();
        loop {
            let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code, 0),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32, sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            let status = ExitStatus { code, signal, at: SystemTime::now() };
            match inner.subscribers.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    let now = SystemTime::now();
                    inner.unclaimed.retain(|_, s| now.duration_since(s.at).map(|d| d < UNCLAIMED_TTL).unwrap_or(true));
                    inner.unclaimed.insert(pid, status);
                }
            }
        }
    }
}

/// Whether `pid` is now a process (running or not yet reaped) whose parent
/// is this shim.
fn is_my_child(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
    ppid == Some(std::process::id())
}

/// A child's pid as the kernel's calls take it (a Linux pid fits in an
/// i32: pid_max is at most 2^22).
pub fn pid_of(child: &std::process::Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

/// waitpid(-1) collects any child of the test process, so the unit tests
/// that reap (here and the service's) take this lock and run one at a time.
#[cfg(test)]
pub(crate) static REAP_SERIAL: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    use super::REAP_SERIAL as SERIAL;

    fn wait_for(reaper: &Reaper, rx: &mut oneshot::Receiver<ExitStatus>) -> ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            reaper.reap();
            if let Ok(s) = rx.try_recv() {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "child never reaped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An exit kept from an earlier process with the same pid is not handed
    /// to the subscriber of a live child: it gets the child's own exit.
    #[test]
    #[allow(clippy::zombie_processes)] // the reaper under test reaps it
    fn a_stale_exit_of_a_reused_pid_is_not_handed_on() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let reaper = Reaper::default();
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = pid_of(&child);
        let stale = ExitStatus { code: 3, signal: 0, at: SystemTime::now() };
        reaper.lock().unclaimed.insert(pid, stale);
        let mut rx = reaper.subscribe(pid);
        assert!(rx.try_recv().is_err(), "the stale exit was handed on");
        let _ = child.kill();
        let status = wait_for(&reaper, &mut rx);
        assert_eq!((status.code, status.signal), (137, 9));
    }

    #[test]
    fn instant_exit_is_seen_by_spawn_subscriber() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let reaper = Reaper::default();
        let (_child, mut rx) = reaper.spawn(Command::new("/bin/sh").args(["-c", "exit 7"])).unwrap();
        let status = wait_for(&reaper, &mut rx);
        assert_eq!((status.code, status.signal), (7, 0));
    }

    #[test]
    // The reaper, not the Child, collects the exit: that is what is tested.
    #[allow(clippy::zombie_processes)]
    fn late_subscriber_gets_unclaimed_exit() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let reaper = Reaper::default();
        let child = Command::new("/bin/sh").args(["-c", "kill -9 $$"]).spawn().unwrap();
        let pid = pid_of(&child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !reaper.lock().unclaimed.contains_key(&pid) {
            assert!(std::time::Instant::now() < deadline, "child never reaped");
            reaper.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut rx = reaper.subscribe(pid);
        let status = rx.try_recv().unwrap();
        assert_eq!(status.signal, 9);
        assert_eq!(status.code, 137);
    }
}
