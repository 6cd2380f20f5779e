//! Namespace options and security context take effect inside the container.
use std::time::Duration;

use berth_tests::{container_config, Daemon};
use protocol::cri;

fn host_ns(ns: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap().display().to_string()
}

async fn running(d: &mut Daemon, pod: &str, cfg: &cri::PodSandboxConfig, cc: cri::ContainerConfig) -> String {
    let c = d.create_with(pod, cfg, cc).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    c
}

#[tokio::test]
async fn host_namespaces_are_the_hosts() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("hostns");
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options = Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Node as i32,
        ..Default::default()
    });
    let pod = d.run_pod(&cfg).await;
    let c = running(&mut d, &pod, &cfg, container_config("h", &["sleep", "1000"])).await;
    for ns in ["net", "pid", "ipc", "uts"] {
        assert_eq!(d.exec_out(&c, &["readlink", &format!("/proc/self/ns/{ns}")]).await, host_ns(ns), "{ns}");
    }
    // Host network pods get no CNI and no pod IP.
    assert_eq!(d.pod_status(&pod).await.network.unwrap().ip, "");
}

#[tokio::test]
async fn security_context_takes_effect() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("secctx");
    cfg.linux.as_mut().unwrap().sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    let pod = d.run_pod(&cfg).await;

    // run_as_user: the process runs as 1000.
    let mut cc = container_config("uid", &["sleep", "1000"]);
    cc.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        ..Default::default()
    });
    let c = running(&mut d, &pod, &cfg, cc).await;
    assert_eq!(d.exec_out(&c, &["id", "-u"]).await, "1000");
    // run_as_username resolves in the image, with its groups.
    let mut cc = container_config("named", &["sleep", "1000"]);
    cc.linux.as_mut().unwrap().security_context =
        Some(cri::LinuxContainerSecurityContext { run_as_username: "app".into(), ..Default::default() });
    let c = running(&mut d, &pod, &cfg, cc).await;
    assert_eq!(d.exec_out(&c, &["id", "-u"]).await, "1000");
    assert!(d.exec_out(&c, &["id", "-G"]).await.split(' ').any(|g| g == "2000"));

    // A read-only root filesystem refuses writes.
    let mut cc = container_config("ro", &["sleep", "1000"]);
    cc.linux.as_mut().unwrap().security_context =
        Some(cri::LinuxContainerSecurityContext { readonly_rootfs: true, ..Default::default() });
    let c = running(&mut d, &pod, &cfg, cc).await;
    let r = d.exec(&c, &["touch", "/newfile"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "wrote to a read-only rootfs");

    // Dropped and added capabilities show in CapEff.
    let mut cc = container_config("caps", &["sleep", "1000"]);
    cc.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            drop_capabilities: vec!["NET_RAW".into()],
            add_capabilities: vec!["SYS_TIME".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = running(&mut d, &pod, &cfg, cc).await;
    let status = d.exec_out(&c, &["cat", "/proc/self/status"]).await;
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_string();
    let eff = u64::from_str_radix(&eff, 16).unwrap();
    assert_eq!(eff & (1 << 13), 0, "CAP_NET_RAW (13) was not dropped: {eff:x}");
    assert_ne!(eff & (1 << 25), 0, "CAP_SYS_TIME (25) was not added: {eff:x}");
    assert_ne!(eff & (1 << 0), 0, "CAP_CHOWN (0) should stay: {eff:x}");

    // Masked paths read empty; sysctls of the pod apply.
    let c = running(&mut d, &pod, &cfg, container_config("plain", &["sleep", "1000"])).await;
    assert_eq!(d.exec_out(&c, &["sh", "-c", "cat /proc/kcore | wc -c"]).await, "0");
    assert_eq!(d.exec_out(&c, &["cat", "/proc/sys/net/ipv4/ip_forward"]).await, "1");

    // Privileged: the host's devices are there.
    let host_dev = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| std::path::Path::new("/dev").join(n).exists());
    if let Some(dev) = host_dev {
        let mut cfg_p = d.pod_config("privileged");
        cfg_p.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
        let pod_p = d.run_pod(&cfg_p).await;
        let mut cc = container_config("priv", &["sleep", "1000"]);
        cc.linux.as_mut().unwrap().security_context =
            Some(cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() });
        let c = running(&mut d, &pod_p, &cfg_p, cc).await;
        d.exec_out(&c, &["test", "-e", &format!("/dev/{dev}")]).await;
        let plain = running(&mut d, &pod, &cfg, container_config("unpriv", &["sleep", "1000"])).await;
        let r = d.exec(&plain, &["test", "-e", &format!("/dev/{dev}")], 10).await.unwrap();
        assert_ne!(r.exit_code, 0, "an unprivileged container sees /dev/{dev}");
    }

    // A sysctl outside the pod's namespaces is refused.
    let mut bad = d.pod_config("badsysctl");
    bad.linux.as_mut().unwrap().sysctls.insert("kernel.panic".into(), "1".into());
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(bad), runtime_handler: String::new() })
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn seccomp_profiles_apply_and_bad_configs_are_refused() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("seccomp");
    let pod = d.run_pod(&cfg).await;
    let with = |name: &str, t: cri::security_profile::ProfileType, r: &str| {
        let mut cc = container_config(name, &["sleep", "1000"]);
        cc.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: r.into() }),
            ..Default::default()
        });
        cc
    };
    // unshare(2) is allowed unconfined (a user namespace needs no capability)
    // and denied by the default profile.
    let free = running(&mut d, &pod, &cfg, with("free", cri::security_profile::ProfileType::Unconfined, "")).await;
    let r = d.exec(&free, &["unshare", "-U", "true"], 10).await.unwrap();
    assert_eq!(r.exit_code, 0, "unconfined unshare failed: {}", String::from_utf8_lossy(&r.stderr));
    let confined =
        running(&mut d, &pod, &cfg, with("confined", cri::security_profile::ProfileType::RuntimeDefault, "")).await;
    let r = d.exec(&confined, &["unshare", "-U", "true"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "the default profile let unshare through");
    // A localhost profile (OCI format) that denies mkdir.
    let profile = d.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let local = running(
        &mut d,
        &pod,
        &cfg,
        with("local", cri::security_profile::ProfileType::Localhost, &profile.display().to_string()),
    )
    .await;
    let r = d.exec(&local, &["mkdir", "/tmp/x"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "the localhost profile did not apply");

    // Invalid configs: InvalidArgument, and nothing left behind.
    let before = std::fs::read_dir(d.dir.path().join("s/containers")).unwrap().count();
    let missing = with("missing", cri::security_profile::ProfileType::Localhost, "/no/such/profile.json");
    let mut no_host_path = container_config("nohostpath", &["true"]);
    no_host_path.mounts =
        vec![cri::Mount { container_path: "/data".into(), host_path: "/no/such/dir".into(), ..Default::default() }];
    let mut bad_cap = container_config("badcap", &["true"]);
    bad_cap.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability { add_capabilities: vec!["NOT_A_CAP".into()], ..Default::default() }),
        ..Default::default()
    });
    for cc in [missing, no_host_path, bad_cap] {
        let name = cc.metadata.as_ref().unwrap().name.clone();
        let e = d.create_with(&pod, &cfg, cc).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
    }
    assert_eq!(
        std::fs::read_dir(d.dir.path().join("s/containers")).unwrap().count(),
        before,
        "a refused create left a bundle"
    );
    assert!(d.mounts().iter().filter(|m| m.ends_with("/rootfs")).count() == before, "a refused create left a mount");
}

#[tokio::test]
async fn mounts_and_devices() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("mounts");
    let pod = d.run_pod(&cfg).await;
    // A host folder with a mount inside it.
    let host = d.dir.path().join("hostdir");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    nix::mount::mount(Some("tmpfs"), &host.join("sub"), Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
        .unwrap();
    // Through a symlink: the real folder is mounted.
    let link = d.dir.path().join("hostlink");
    std::os::unix::fs::symlink(&host, &link).unwrap();
    let m = |path: &str, ro: bool, rro: bool| cri::Mount {
        container_path: path.into(),
        host_path: link.display().to_string(),
        readonly: ro,
        recursive_read_only: rro,
        ..Default::default()
    };
    let mut cc = container_config("mounter", &["sleep", "1000"]);
    cc.mounts = vec![m("/rw", false, false), m("/ro", true, false), m("/rro", true, true)];
    cc.devices = vec![cri::Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let ok = |r: cri::ExecSyncResponse| r.exit_code == 0;
    assert!(ok(d.exec(&c, &["touch", "/rw/a"], 10).await.unwrap()));
    assert!(host.join("a").exists(), "the write did not reach the host folder");
    assert!(!ok(d.exec(&c, &["touch", "/ro/b"], 10).await.unwrap()), "wrote through a read-only mount");
    assert!(!ok(d.exec(&c, &["touch", "/rro/sub/c"], 10).await.unwrap()), "wrote below a recursive read-only mount");
    assert!(ok(d.exec(&c, &["test", "-c", "/dev/mynull"], 10).await.unwrap()), "the device is missing");
    assert!(ok(d.exec(&c, &["sh", "-c", "echo x > /dev/mynull"], 10).await.unwrap()), "the device is not writable");
    // recursive_read_only without readonly is refused.
    let mut bad = container_config("badrro", &["true"]);
    bad.mounts = vec![m("/x", false, true)];
    assert_eq!(d.create_with(&pod, &cfg, bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn mount_propagation_private_and_rslave() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("propagation");
    let pod = d.run_pod(&cfg).await;
    // The host side must be a shared mount for anything to propagate (this
    // host mounts / private, so the test makes its own shared mount).
    let host = d.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    nix::mount::mount(Some(&host), &host, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
    nix::mount::mount(None::<&str>, &host, None::<&str>, nix::mount::MsFlags::MS_SHARED, None::<&str>).unwrap();
    let m = |path: &str, propagation: cri::MountPropagation| cri::Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    };
    let mut cc = container_config("watcher", &["sleep", "1000"]);
    cc.mounts = vec![
        m("/private", cri::MountPropagation::PropagationPrivate),
        m("/slave", cri::MountPropagation::PropagationHostToContainer),
    ];
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    // A mount the host makes after the container started.
    std::fs::create_dir_all(host.join("late")).unwrap();
    nix::mount::mount(Some("tmpfs"), &host.join("late"), Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
        .unwrap();
    std::fs::write(host.join("late/marker"), b"x").unwrap();
    assert_eq!(
        d.exec(&c, &["test", "-e", "/slave/late/marker"], 10).await.unwrap().exit_code,
        0,
        "rslave did not receive the host's new mount"
    );
    assert_ne!(
        d.exec(&c, &["test", "-e", "/private/late/marker"], 10).await.unwrap().exit_code,
        0,
        "a private mount received the host's new mount"
    );
}

/// The capability sets of a container's process are what was asked: the
/// bounding, effective and permitted sets from the request (containerd's
/// defaults, add, drop, privileged), inheritable and ambient empty (as
/// containerd leaves them), so a non-root process holds none and dropping
/// ALL works.
#[tokio::test]
async fn capability_sets_are_what_was_asked() {
    fn mask(names: &[u32]) -> u64 {
        names.iter().fold(0, |m, b| m | (1u64 << b))
    }
    // containerd's defaults: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID
    // SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    let defaults = mask(&[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]);
    let host_bnd = u64::from_str_radix(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .unwrap()
            .trim(),
        16,
    )
    .unwrap();
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("caps");
    let pod = d.run_pod(&cfg).await;
    let cases: Vec<(&str, cri::LinuxContainerSecurityContext, [u64; 5])> = vec![
        ("root", Default::default(), [defaults, defaults, defaults, 0, 0]),
        (
            "nonroot",
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                ..Default::default()
            },
            [defaults, 0, 0, 0, 0],
        ),
        (
            "addall",
            cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability { add_capabilities: vec!["ALL".into()], ..Default::default() }),
                ..Default::default()
            },
            [host_bnd, host_bnd, host_bnd, 0, 0],
        ),
        (
            "dropall",
            cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() }),
                ..Default::default()
            },
            [0, 0, 0, 0, 0],
        ),
        (
            "privileged",
            cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() },
            [host_bnd, host_bnd, host_bnd, 0, 0],
        ),
    ];
    for (name, sc, want) in cases {
        let mut cc = container_config(name, &["sleep", "100000"]);
        cc.linux.as_mut().unwrap().security_context = Some(sc);
        let c = d.create_with(&pod, &cfg, cc).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        d.start_container(&c).await;
        d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
        let pid = d.container_pid(&c).await;
        // Until runc's init has exec'd the command, the process holds runc's sets.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(b"sleep\0") {
            assert!(std::time::Instant::now() < deadline, "{name}: the command never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let get =
            |k: &str| u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim(), 16).unwrap();
        let got = [get("CapBnd:"), get("CapEff:"), get("CapPrm:"), get("CapInh:"), get("CapAmb:")];
        assert_eq!(got, want, "{name}: [Bnd, Eff, Prm, Inh, Amb] as {got:x?}, want {want:x?}");
    }
}

/// A local user on the host reaches nothing of a container's: not its env
/// (a Secret) in config.json or metadata.redb, not a file it wrote in its
/// upper dir, not a setuid-root binary it made (through the upper dir or the
/// merged rootfs). The class of moby CVE-2021-41091 and containerd
/// CVE-2021-41103. Folders left loose are tightened at start.
#[tokio::test]
async fn local_users_reach_no_container_content() {
    use std::os::unix::fs::PermissionsExt;
    if !berth_tests::have_commands(&["setpriv"]) {
        berth_tests::skip(false, "setpriv (util-linux) missing");
        return;
    }
    let mut d = Daemon::start().await;
    // The test's own temp folder is 0700; open it, as /var/lib and /run are.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = format!("hunter2-{}", std::process::id());
    let cfg = d.pod_config("modes");
    let pod = d.run_pod(&cfg).await;
    let mut cc = container_config(
        "writer",
        &["sh", "-c", "cp /bin/busybox /tmp/suid && chmod 4755 /tmp/suid && echo private > /tmp/file && sleep 100000"],
    );
    cc.envs = vec![cri::KeyValue { key: "SECRET".into(), value: secret.clone() }];
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    for _ in 0..100 {
        if d.exec(&c, &["test", "-f", "/tmp/file"], 5).await.unwrap().exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let root = d.dir.path().join("r");
    let state = d.dir.path().join("s");
    let upper = root.join("containers").join(&c).join("upper");
    let rootfs = state.join("containers").join(&c).join("rootfs");
    assert!(upper.join("tmp/suid").exists(), "the container's binary is not where the test looks");
    let nobody = |cmd: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .args(cmd)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    for path in [
        state.join("containers").join(&c).join("config.json"),
        root.join("metadata.redb"),
        upper.join("tmp/file"),
        rootfs.join("tmp/file"),
    ] {
        let (ok, _) = nobody(&["cat", path.to_str().unwrap()]);
        assert!(!ok, "nobody read {}", path.display());
    }
    for bin in [upper.join("tmp/suid"), rootfs.join("tmp/suid")] {
        let (ok, out) = nobody(&[bin.to_str().unwrap(), "id"]);
        assert!(!ok, "nobody ran the container's setuid binary {}: {out}", bin.display());
    }
    let (_, found) = nobody(&["sh", "-c", &format!("grep -rl {secret} {} 2>/dev/null", d.dir.path().display())]);
    assert!(found.trim().is_empty(), "nobody found the secret in {found}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&root) & 0o066, 0, "root is {:o}", mode(&root));
    assert_eq!(mode(&state) & 0o066, 0, "state is {:o}", mode(&state));
    assert_eq!(mode(&root.join("metadata.redb")), 0o600);
    assert_eq!(mode(&state.join("containers").join(&c).join("config.json")), 0o600);
    // The folders of bundles and sandboxes are traversable (a user
    // namespaced container's root must reach its own); each one is private.
    assert_eq!(mode(&state.join("containers").join(&c)), 0o700);
    assert_eq!(mode(&state.join("sandboxes").join(&pod)), 0o700);

    // Loose folders from an older berthd are tightened at start.
    for p in [&root, &state, &root.join("containers"), &state.join("containers")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d.restart().await;
    assert_eq!(mode(&root), 0o711);
    assert_eq!(mode(&state), 0o711);
    assert_eq!(mode(&root.join("containers")), 0o700);
    assert_eq!(mode(&state.join("containers")), 0o711);
    let (ok, _) = nobody(&["cat", upper.join("tmp/file").to_str().unwrap()]);
    assert!(!ok);
}

/// RuntimeDefault is containerd's allow-list: clone with namespace flags
/// (the door to unprivileged user and network namespaces), clone3, unshare,
/// setns, mount, keyctl and io_uring are refused; a busybox workload and a
/// Python one still run. The probe is the host's Python, its /usr mounted
/// read-only into the container.
#[tokio::test]
async fn runtime_default_seccomp_refuses_what_containerd_refuses() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        berth_tests::skip(false, "/usr/bin/python3 missing (the probe runs the host's Python in the container)");
        return;
    }
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("seccomp");
    let pod = d.run_pod(&cfg).await;
    let ro = |host: &str, ctr: &str| cri::Mount {
        container_path: ctr.into(),
        host_path: host.into(),
        readonly: true,
        ..Default::default()
    };
    let mut cc = container_config("probe", &["sleep", "100000"]);
    cc.mounts = vec![ro("/usr", "/usr"), ro("/lib64", "/lib64"), ro("/lib", "/lib")];
    cc.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    // Each line: name=errno (0 when the call succeeded).
    let probe = r#"
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    if r == 0 and name.startswith('clone'):
        os._exit(0)
    e = 0 if r >= 0 else ctypes.get_errno()
    if r > 0 and name.startswith('clone'):
        os.waitpid(r, 0)
    print(f"{name}={e}")
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
call('clone_newuser_newnet', 56, CLONE_NEWUSER | CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)
call('clone_plain', 56, SIGCHLD, 0, 0, 0, 0)
args = (ctypes.c_uint64 * 11)(CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
r = libc.syscall(435, ctypes.byref(args), ctypes.c_long(88))
print(f"clone3={0 if r >= 0 else ctypes.get_errno()}")
if r == 0: os._exit(0)
call('unshare_newuser', 272, CLONE_NEWUSER)
call('setns', 308, 0, 0)
call('keyctl', 250, 0, 0, 0, 0, 0)
call('io_uring_setup', 425, 1, 0)
call('getpid', 39)
"#;
    let out = d.exec_out(&c, &["/usr/bin/python3", "-c", probe]).await;
    let got: std::collections::HashMap<&str, i32> =
        out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k, v.parse().unwrap_or(-1))).collect();
    let eperm = libc::EPERM;
    let want = [
        ("clone_newuser_newnet", eperm),
        ("clone_plain", 0),
        ("clone3", libc::ENOSYS),
        ("unshare_newuser", eperm),
        ("setns", eperm),
        ("keyctl", eperm),
        ("io_uring_setup", eperm),
        ("getpid", 0),
    ];
    for (name, errno) in want {
        assert_eq!(got.get(name), Some(&errno), "{name}: {out}");
    }
    // Busybox's everyday tools still work.
    let ps = d.exec_out(&c, &["sh", "-c", "mkdir -p /tmp/w && echo ok > /tmp/w/f && cat /tmp/w/f && ps | head -1 && date +%Y >/dev/null && echo done"]).await;
    assert!(ps.ends_with("done") && ps.starts_with("ok"), "{ps}");
}

/// SupplementalGroupsPolicy (KEP-3619): Merge keeps the image's /etc/group
/// memberships beside the requested groups, Strict drops them; the status
/// reports the identity the process runs with, and the feature is advertised.
#[tokio::test]
async fn supplemental_groups_policy_merge_and_strict() {
    let mut d = Daemon::start().await;
    let status = d.rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    assert!(status.features.is_some_and(|f| f.supplemental_groups_policy), "the feature is not advertised");
    let cfg = d.pod_config("groups");
    let pod = d.run_pod(&cfg).await;
    for (name, policy, want) in [
        ("merge", cri::SupplementalGroupsPolicy::Merge, vec![1000, 2000, 3000]),
        ("strict", cri::SupplementalGroupsPolicy::Strict, vec![1000, 3000]),
    ] {
        let mut cc = berth_tests::container_config(name, &["sleep", "100000"]);
        // uid 1000 is "app" in the test image, a member of group 2000 there.
        cc.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![3000],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = running(&mut d, &pod, &cfg, cc).await;
        let mut groups: Vec<i64> =
            d.exec_out(&c, &["id", "-G"]).await.split_whitespace().map(|g| g.parse().unwrap()).collect();
        groups.sort_unstable();
        assert_eq!(groups, want, "{name}: the process's groups");
        let user = d.status(&c).await.user.and_then(|u| u.linux).expect("ContainerStatus.user");
        assert_eq!((user.uid, user.gid), (1000, 1000), "{name}");
        let mut reported = user.supplemental_groups.clone();
        reported.sort_unstable();
        assert_eq!(reported, want, "{name}: ContainerStatus.user's groups");
    }
}

/// A bidirectional mount needs a shared host source and a host-to-container
/// one a shared or slave source: on a private one nothing would propagate,
/// so it is refused with what to do (as containerd refuses it). The test
/// makes its own private and shared mounts (whatever `/` is on this host).
#[tokio::test]
async fn propagating_mounts_need_a_propagating_source() {
    use nix::mount::{mount, MsFlags};
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("needs-shared");
    let pod = d.run_pod(&cfg).await;
    let private = d.dir.path().join("private-src");
    std::fs::create_dir_all(&private).unwrap();
    mount(Some(&private), &private, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    mount(None::<&str>, &private, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).unwrap();
    let with = |name: &str, src: &std::path::Path, p: cri::MountPropagation| {
        let mut cc = container_config(name, &["sleep", "1000"]);
        cc.mounts = vec![cri::Mount {
            container_path: "/shared".into(),
            host_path: src.display().to_string(),
            propagation: p as i32,
            ..Default::default()
        }];
        cc
    };
    for (p, want) in [
        (cri::MountPropagation::PropagationBidirectional, "which is not shared"),
        (cri::MountPropagation::PropagationHostToContainer, "which is not shared or a slave"),
    ] {
        let e = d.create_with(&pod, &cfg, with("refused", &private, p)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{p:?}: {e:?}");
        assert!(e.message().contains(want) && e.message().contains("--make-rshared"), "{p:?}: {e:?}");
    }
    assert!(
        d.leftovers().iter().all(|p| !p.starts_with(d.dir.path().join("s/containers"))),
        "a refused create left state"
    );
    mount(None::<&str>, &private, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
    let c =
        d.create_with(&pod, &cfg, with("accepted", &private, cri::MountPropagation::PropagationBidirectional)).await;
    c.expect("a shared source is accepted for bidirectional propagation");
}

/// Bidirectional propagation both ways: a mount the host makes under the
/// shared source shows in the container, and one the (privileged)
/// container makes under its mount point shows on the host.
#[tokio::test]
async fn bidirectional_mounts_propagate_both_ways() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("bidirectional");
    let pod = d.run_pod(&cfg).await;
    // This host mounts / private: the test makes its own shared mount.
    let host = d.dir.path().join("bidi");
    std::fs::create_dir_all(host.join("from-host")).unwrap();
    std::fs::create_dir_all(host.join("from-pod")).unwrap();
    mount(Some(&host), &host, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    mount(None::<&str>, &host, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
    let mut cc = container_config("publisher", &["sleep", "1000"]);
    cc.mounts = vec![cri::Mount {
        container_path: "/bidi".into(),
        host_path: host.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    cc.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() }),
        ..Default::default()
    });
    let c = running(&mut d, &pod, &cfg, cc).await;
    // Host to container.
    mount(Some("tmpfs"), &host.join("from-host"), Some("tmpfs"), MsFlags::empty(), Some("size=1m")).unwrap();
    std::fs::write(host.join("from-host/marker"), b"h").unwrap();
    assert_eq!(
        d.exec(&c, &["test", "-e", "/bidi/from-host/marker"], 10).await.unwrap().exit_code,
        0,
        "the container did not receive the host's mount"
    );
    // Container to host.
    let r =
        d.exec(&c, &["sh", "-c", "mount -t tmpfs tmpfs /bidi/from-pod && echo p > /bidi/from-pod/marker"], 10).await;
    assert_eq!(r.as_ref().map(|r| r.exit_code).ok(), Some(0), "mounting in the container failed: {r:?}");
    let seen = std::fs::read_to_string(host.join("from-pod/marker"));
    // Unmount what propagated before asserting, so a failure leaves nothing.
    let _ = umount2(&host.join("from-pod"), MntFlags::MNT_DETACH);
    let _ = umount2(&host.join("from-host"), MntFlags::MNT_DETACH);
    assert_eq!(seen.ok().as_deref(), Some("p\n"), "the host did not receive the container's mount");
}
