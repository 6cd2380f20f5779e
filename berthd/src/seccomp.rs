//! Seccomp profiles for containers: `runtime/default`, `unconfined`, and
//! `localhost/<path>` (an OCI seccomp JSON file on the node).
//!
//! The default profile is containerd's: an allow-list (anything not named
//! fails with EPERM) of the syscalls ordinary programs make, the ones that
//! need a capability allowed only when the container's bounding set has it
//! (mount, setns, unshare and the new mount API with CAP_SYS_ADMIN; ptrace's
//! relatives with CAP_SYS_PTRACE; clock setting with CAP_SYS_TIME; ...), and
//! without CAP_SYS_ADMIN `clone` only with no namespace flags and `clone3`
//! answering ENOSYS (its flags live in memory a filter cannot read, so libc
//! falls back to `clone`). Unlike containerd 1.7 it does not allow
//! io_uring, which bypasses the filter. x86_64 and aarch64 have their own
//! extras.
use std::collections::HashSet;

use oci_spec::runtime::Capability;
use protocol::cri;
use serde_json::{json, Value};

use berth_core::error::{Error, Result};

/// Allowed for every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "ptrace",
];

/// Allowed on x86_64 only.
const X86_64: &[&str] = &["arch_prctl", "modify_ldt"];
/// Allowed on aarch64 (and 32-bit arm code on it) only.
const AARCH64: &[&str] =
    &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"];

/// Syscalls a capability in the bounding set adds.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysPtrace, &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev"]),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// `personality` values allowed (Linux, PER_LINUX32, and their
/// UNAME26 forms, and the query 0xffffffff).
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => vec![],
    }
}

fn allow(names: &[&str]) -> Value {
    json!({ "names": names, "action": "SCMP_ACT_ALLOW" })
}

/// The `runtime/default` profile for a container whose bounding set is `caps`.
pub fn default_profile(caps: &HashSet<Capability>) -> Result<oci_spec::runtime::LinuxSeccomp> {
    let mut rules = vec![allow(ALLOWED)];
    match std::env::consts::ARCH {
        "x86_64" => rules.push(allow(X86_64)),
        "aarch64" => rules.push(allow(AARCH64)),
        _ => {}
    }
    for p in PERSONALITIES {
        rules.push(json!({
            "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": p, "op": "SCMP_CMP_EQ" }],
        }));
    }
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            rules.push(allow(names));
        }
    }
    if !caps.contains(&Capability::SysAdmin) {
        // s390's clone takes its flags second; Berth builds for x86_64 and aarch64.
        rules.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": CLONE_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
        rules.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS }));
    }
    let v = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": architectures(),
        "syscalls": rules,
    });
    serde_json::from_value(v).map_err(|e| Error::internal(format!("default seccomp profile: {e}")))
}

/// Largest Localhost profile read.
const MAX_PROFILE: u64 = 1 << 20;

fn localhost(path: &str) -> Result<oci_spec::runtime::LinuxSeccomp> {
    use std::io::Read;
    if !path.starts_with('/') {
        return Err(Error::invalid(format!("seccomp profile path {path:?} must be absolute")));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::invalid(format!("seccomp profile {path}: {e}")))?;
    let mut data = Vec::new();
    f.take(MAX_PROFILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::invalid(format!("seccomp profile {path}: {e}")))?;
    if data.len() as u64 > MAX_PROFILE {
        return Err(Error::invalid(format!("seccomp profile {path} is larger than 1 MiB")));
    }
    serde_json::from_slice(&data)
        .map_err(|e| Error::invalid(format!("seccomp profile {path} is not an OCI seccomp profile: {e}")))
}

/// The profile a container asks for; None means unconfined.
pub fn for_container(
    sc: &cri::LinuxContainerSecurityContext,
    caps: &HashSet<Capability>,
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    if sc.privileged {
        return Ok(None);
    }
    if let Some(p) = &sc.seccomp {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => default_profile(caps).map(Some),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(&p.localhost_ref).map(Some),
            Err(_) => Err(Error::invalid(format!("unknown seccomp profile type {}", p.profile_type))),
        };
    }
    // The deprecated string form, which older clients still send.
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    match legacy {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => default_profile(caps).map(Some),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path).map(Some),
            None => Err(Error::invalid(format!("unknown seccomp profile {other:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &oci_spec::runtime::LinuxSeccomp, action: &str) -> Vec<String> {
        let v = serde_json::to_value(p).unwrap();
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["action"] == action
                    && r.get("args").map(|a| a.as_array().is_none_or(|a| a.is_empty())).unwrap_or(true)
            })
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn profiles_by_kind() {
        let caps = HashSet::new();
        let sc = |t: cri::security_profile::ProfileType, r: &str| cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: r.into() }),
            ..Default::default()
        };
        assert!(for_container(&sc(cri::security_profile::ProfileType::RuntimeDefault, ""), &caps).unwrap().is_some());
        assert!(for_container(&sc(cri::security_profile::ProfileType::Unconfined, ""), &caps).unwrap().is_none());
        let e = for_container(&sc(cri::security_profile::ProfileType::Localhost, "/no/such/profile.json"), &caps)
            .unwrap_err();
        assert_eq!(e.kind, berth_core::error::Kind::InvalidArgument);
        assert!(for_container(&cri::LinuxContainerSecurityContext::default(), &caps).unwrap().is_none());
    }

    #[test]
    fn the_default_is_an_allow_list_conditioned_on_capabilities() {
        let p = default_profile(&HashSet::new()).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed = names(&p, "SCMP_ACT_ALLOW");
        for n in ["read", "write", "execve", "futex", "rseq"] {
            assert!(allowed.contains(&n.to_string()), "{n}");
        }
        for n in ["mount", "unshare", "setns", "bpf", "keyctl", "io_uring_setup", "clone3"] {
            assert!(!allowed.contains(&n.to_string()), "{n} allowed without a capability");
        }
        assert!(names(&p, "SCMP_ACT_ERRNO").contains(&"clone3".to_string()));
        let admin = default_profile(&[Capability::SysAdmin].into_iter().collect()).unwrap();
        let allowed = names(&admin, "SCMP_ACT_ALLOW");
        for n in ["mount", "unshare", "setns", "clone", "clone3"] {
            assert!(allowed.contains(&n.to_string()), "{n} refused with CAP_SYS_ADMIN");
        }
    }
}
