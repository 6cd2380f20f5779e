//! Creates and pins a pod sandbox's namespaces, before the shim starts any
//! threads (forking from a multi-threaded process is unsafe).
//!
//! A short-lived child unshares net, ipc and uts (and pid when the pod shares
//! one), sets the hostname and brings loopback up; for a pod with a user
//! namespace of its own it unshares that first, waits for the shim to write
//! its id maps, becomes the namespace's root and makes the others inside
//! it, so that they belong to the pod's root (no root of the node); the
//! shim bind-mounts its
//! `/proc/<pid>/ns/*` files into `<sandbox>/ns/`, which containers join by
//! path. With a pod pid namespace, the child's own child stays as its pid 1
//! (reaping orphans, as a pause process would) for as long as the sandbox
//! lives: it execs the freestanding pod init the shim carries
//! (`pod-init/pod_init.c`, from a sealed memfd), so it keeps no copy of the
//! shim's memory. The `ns` folder is a private bind mount of itself so the
//! pins never propagate to other mount namespaces, where they would keep the
//! namespaces alive after removal.
#![allow(unsafe_code)] // syscalls libc and nix do not wrap safely; each block has its SAFETY note
use protocol::shim_launch::{UserNamespace, NS_IPC, NS_NET, NS_PID, NS_USER, NS_UTS};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe, sethostname, ForkResult, Pid};

/// What the sandbox needs.
#[derive(Clone, Debug, Default)]
pub struct NamespaceOptions {
    /// New network namespace (false: host network).
    pub network: bool,
    /// New ipc namespace (false: host ipc).
    pub ipc: bool,
    /// New uts namespace with this hostname (None: host uts).
    pub hostname: Option<String>,
    /// A pid namespace shared by the pod's containers.
    pub pod_pid: bool,
    /// A user namespace of the pod's own, owning the others.
    pub user: Option<UserNamespace>,
}

/// Pinned namespaces of one sandbox.
#[derive(Debug, Default)]
pub struct Pinned {
    /// Folder holding the pin files.
    pub dir: PathBuf,
    /// Names of the pinned namespaces (`net`, `ipc`, `uts`, `pid`).
    pub names: Vec<&'static str>,
    /// pid 1 of the pod pid namespace, as seen from the shim.
    pub pod_init: Option<i32>,
}

/// Namespace setup failed.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// A syscall failed.
    #[error("{what}: {source}")]
    Sys {
        /// The step that failed.
        what: String,
        /// The error.
        source: nix::Error,
    },
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The namespace holder reported a failure.
    #[error("namespace holder: {0}")]
    Child(String),
}

fn sys<T>(r: nix::Result<T>, what: impl Into<String>) -> Result<T, NsError> {
    r.map_err(|source| NsError::Sys { what: what.into(), source })
}

fn io<T>(r: std::io::Result<T>, what: impl Into<String>) -> Result<T, NsError> {
    r.map_err(|source| NsError::Io { what: what.into(), source })
}

/// Creates and pins the namespaces. Must run while the process is single-threaded.
pub fn create(dir: &Path, opts: &NamespaceOptions) -> Result<Pinned, NsError> {
    let mut flags = CloneFlags::empty();
    let mut names = Vec::new();
    if opts.user.is_some() {
        // Pinned first: the others are made inside it.
        names.push(NS_USER);
    }
    if opts.network {
        flags |= CloneFlags::CLONE_NEWNET;
        names.push(NS_NET);
    }
    if opts.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
        names.push(NS_IPC);
    }
    if opts.hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
        names.push(NS_UTS);
    }
    if opts.pod_pid {
        flags |= CloneFlags::CLONE_NEWPID;
        names.push(NS_PID);
    }
    let mut pinned = Pinned { dir: dir.to_path_buf(), names: Vec::new(), pod_init: None };
    if names.is_empty() {
        return Ok(pinned);
    }
    io(std::fs::create_dir_all(dir), format!("create {}", dir.display()))?;
    sys(mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>), "bind ns folder")?;
    if let Err(e) =
        sys(mount(None::<&str>, dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>), "make ns folder private")
    {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        return Err(e);
    }

    // Made before the fork, so the pod init needs nothing from the shim but
    // the descriptor. Without it the fork itself reaps (see `pod_init`).
    let init_program = if opts.pod_pid { PodInitProgram::load().ok() } else { None };
    let (ready_r, ready_w) = sys(pipe(), "pipe")?;
    let (go_r, go_w) = sys(pipe(), "pipe")?;
    let (mapped_r, mapped_w) = sys(pipe(), "pipe")?;
    // SAFETY: the shim calls this before it starts any thread (see main), so
    // the child is a full copy of a single-threaded process and may run any code.
    match sys(unsafe { fork() }, "fork namespace holder")? {
        ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            drop(mapped_w);
            let code = match holder(flags, opts, init_program.as_ref(), ready_w, go_r, mapped_r) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            // SAFETY: _exit skips atexit handlers and destructors that belong
            // to the parent's copy of the process.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(init_program);
            drop(ready_w);
            drop(go_r);
            drop(mapped_r);
            let mut ready = File::from(ready_r);
            let result = match &opts.user {
                Some(user) => map_ids(child, user, &mut ready, mapped_w),
                None => Ok(()),
            }
            .and_then(|()| pin(dir, &names, ready, &mut pinned));
            // Either way the holder may go now: the pins (and the pod init)
            // keep the namespaces.
            let _ = File::from(go_w).write_all(b"g");
            let _ = waitpid(child, None);
            if let Err(e) = result {
                release(&pinned);
                return Err(e);
            }
            Ok(pinned)
        }
    }
}

/// Longest line the holder sends before its pid.
const MAX_HOLDER_LINE: usize = 4096;

/// Writes the holder's id maps once it has unshared its user namespace,
/// then lets it go on. Written by the shim, root of the node's user
/// namespace: the holder has no rights there to write them itself.
fn map_ids(child: Pid, user: &UserNamespace, ready: &mut File, mapped: OwnedFd) -> Result<(), NsError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_HOLDER_LINE {
        match ready.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return io(Err(e), "read namespace holder"),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line != "user" {
        return Err(NsError::Child(line.trim().to_string()));
    }
    for (file, range) in [("uid_map", user.uids), ("gid_map", user.gids)] {
        let path = format!("/proc/{child}/{file}");
        io(std::fs::write(&path, range.map_line()), format!("write {path} ({})", range.map_line().trim()))?;
    }
    io(File::from(mapped).write_all(b"m"), "tell the namespace holder its ids are mapped")
}

fn pin(dir: &Path, names: &[&'static str], mut ready: File, pinned: &mut Pinned) -> Result<(), NsError> {
    let mut msg = String::new();
    io(ready.read_to_string(&mut msg), "read namespace holder")?;
    let msg = msg.trim();
    let pid: i32 = match msg.strip_prefix("ok ") {
        Some(p) => p.parse().map_err(|_| NsError::Child(format!("bad reply {msg:?}")))?,
        None => return Err(NsError::Child(msg.to_string())),
    };
    if names.contains(&NS_PID) {
        pinned.pod_init = Some(pid);
    }
    for name in names {
        let target = dir.join(name);
        io(File::create(&target), format!("create {}", target.display()))?;
        let source = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        sys(
            mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>),
            format!("pin {name} namespace"),
        )?;
        pinned.names.push(name);
    }
    Ok(())
}

/// Runs in the forked holder: enters the new namespaces and reports the pid
/// whose namespace files the parent should pin.
fn holder(
    flags: CloneFlags,
    opts: &NamespaceOptions,
    init_program: Option<&PodInitProgram>,
    ready: OwnedFd,
    go: OwnedFd,
    mapped: OwnedFd,
) -> Result<(), ()> {
    let mut ready = File::from(ready);
    let setup = || -> Result<(), String> {
        if opts.user.is_some() {
            enter_user_namespace(&mut ready, mapped)?;
        }
        unshare(flags).map_err(|e| format!("unshare: {e}"))?;
        if let Some(h) = &opts.hostname {
            sethostname(h).map_err(|e| format!("sethostname: {e}"))?;
        }
        if opts.network {
            loopback_up().map_err(|e| format!("loopback up: {e}"))?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = ready.write_all(format!("err {e}").as_bytes());
        return Err(());
    }
    if opts.pod_pid {
        // The first child after unshare(CLONE_NEWPID) is pid 1 there.
        // SAFETY: still single-threaded (forked from a single-threaded shim).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(ready);
                drop(go);
                if let Some(program) = init_program {
                    program.exec();
                }
                pod_init()
            }
            Ok(ForkResult::Parent { child }) => {
                let _ = ready.write_all(format!("ok {child}").as_bytes());
                Ok(())
            }
            Err(e) => {
                let _ = ready.write_all(format!("err fork pod init: {e}").as_bytes());
                Err(())
            }
        }
    } else {
        let _ = ready.write_all(format!("ok {}", std::process::id()).as_bytes());
        drop(ready);
        // Stay in the namespaces until the parent has pinned them.
        let mut b = [0u8; 1];
        let _ = File::from(go).read(&mut b);
        Ok(())
    }
}

/// Unshares the user namespace, waits for the shim to map it and becomes
/// its root (a host id of the pod's range, with every capability there and
/// none on the node), without the node's supplementary groups.
fn enter_user_namespace(ready: &mut File, mapped: OwnedFd) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare user namespace: {e}"))?;
    ready.write_all(b"user\n").map_err(|e| format!("tell the shim: {e}"))?;
    let mut b = [0u8; 1];
    match File::from(mapped).read(&mut b) {
        Ok(1) => {}
        _ => return Err("the shim did not map the user namespace's ids".into()),
    }
    let root = nix::unistd::Gid::from_raw(0);
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(root, root, root).map_err(|e| format!("setresgid 0: {e}"))?;
    let root = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresuid(root, root, root).map_err(|e| format!("setresuid 0: {e}"))?;
    Ok(())
}

/// The pod init program (`pod-init/pod_init.c`, built by build.rs), in a
/// sealed memfd, with the argv it runs under: the shim's own, so berthd
/// knows the process as this sandbox's shim (`pidfd::is_shim_of`).
struct PodInitProgram {
    fd: OwnedFd,
    argv: Vec<std::ffi::CString>,
}

/// The pod init's executable (an ELF of one page).
const POD_INIT_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pod-init"));

impl PodInitProgram {
    fn load() -> Result<Self, NsError> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        // Executable by name (Linux 6.3+, where vm.memfd_noexec=1 would
        // otherwise make it noexec); older kernels refuse the flag.
        let fd = match memfd_create(c"berth-pod-init", flags | MFdFlags::from_bits_retain(libc::MFD_EXEC)) {
            Err(nix::errno::Errno::EINVAL) => memfd_create(c"berth-pod-init", flags),
            other => other,
        };
        let fd = sys(fd, "memfd for the pod init")?;
        let mut file = File::from(fd);
        io(file.write_all(POD_INIT_ELF), "write the pod init")?;
        // Sealed: nothing can change what pid 1 of a pod runs.
        let seals = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        sys(fcntl(&file, FcntlArg::F_ADD_SEALS(seals)), "seal the pod init")?;
        let argv = std::env::args_os()
            .filter_map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).ok())
            .collect();
        Ok(PodInitProgram { fd: file.into(), argv })
    }

    /// Replaces this (forked) process with the pod init; returns only if
    /// the exec failed.
    fn exec(&self) {
        let env: [&std::ffi::CStr; 0] = [];
        let _ = nix::unistd::fexecve(&self.fd, &self.argv, &env);
    }
}

/// pid 1 of the pod pid namespace, when the pod init program could not be
/// run: reaps orphans until told to stop, in this forked copy of the shim.
fn pod_init() -> ! {
    // Inherited descriptors (the launcher's readiness pipe, sockets) must not
    // be held open for the life of the pod.
    // SAFETY: close_range(2) on our own descriptor table; nothing in this
    // forked, single-threaded process uses descriptors above stderr.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(s) = nix::sys::wait::waitpid(Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    if s == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => {
                // SAFETY: leaving the process without running the parent's
                // destructors, which this forked copy does not own.
                unsafe { libc::_exit(0) }
            }
            Err(_) => {}
        }
    }
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned and closed by OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        // A C char of the same byte.
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own, sized as the kernel expects.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The two flags are bits 0 and 6: a short holds them.
    #[allow(clippy::cast_possible_truncation)]
    let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= up };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unpins every namespace, stops the pod init and removes the folder.
/// Safe to call more than once.
pub fn release(pinned: &Pinned) {
    if let Some(pid) = pinned.pod_init {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    release_dir(&pinned.dir);
}

/// Unmounts whatever is pinned in `dir` and removes it (also used when the
/// shim does not know what it pinned, for example after a crash).
pub fn release_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = umount2(dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(dir);
}
