//! Containers of one pod share its net and ipc namespaces (pinned by the
//! shim), and not the host's.
use std::time::Duration;

use berth_tests::Daemon;
use protocol::cri;

#[tokio::test]
async fn containers_share_pod_net_and_ipc_not_hosts() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("ns");
    let pod = d.run_pod(&cfg).await;
    let a = d.create(&pod, &cfg, "a", &["sleep", "1000"]).await;
    let b = d.create(&pod, &cfg, "b", &["sleep", "1000"]).await;
    for c in [&a, &b] {
        d.start_container(c).await;
        d.wait_state(c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    }
    for ns in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{ns}");
        let in_a = d.exec_out(&a, &["readlink", &path]).await;
        let in_b = d.exec_out(&b, &["readlink", &path]).await;
        let host = std::fs::read_link(&path).unwrap().display().to_string();
        assert_eq!(in_a, in_b, "{ns} differs between containers of one pod");
        assert_ne!(in_a, host, "{ns} is the host's");
    }
    // pid namespace per container (kubelet's default for v1 pods).
    assert_ne!(
        d.exec_out(&a, &["readlink", "/proc/self/ns/pid"]).await,
        d.exec_out(&b, &["readlink", "/proc/self/ns/pid"]).await
    );
    // Loopback is up in the pod's network namespace.
    let lo = d.exec_out(&a, &["cat", "/sys/class/net/lo/operstate"]).await;
    assert!(lo == "unknown" || lo == "up", "loopback state {lo}");
    // A second pod gets other namespaces.
    let cfg2 = d.pod_config("ns2");
    let pod2 = d.run_pod(&cfg2).await;
    let c = d.create(&pod2, &cfg2, "c", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    assert_ne!(
        d.exec_out(&a, &["readlink", "/proc/self/ns/net"]).await,
        d.exec_out(&c, &["readlink", "/proc/self/ns/net"]).await
    );
}

/// In a pod sharing one pid namespace, a container's exit ends every process
/// it left behind (as its own pid namespace would), so nothing outlives it
/// and its log is complete at once.
#[tokio::test]
async fn a_container_exit_ends_its_leftovers_in_a_shared_pid_namespace() {
    let mut d = Daemon::start().await;
    let cfg = pod_pid_config(&d, "pidpod");
    let pod = d.run_pod(&cfg).await;
    let watcher = d.create(&pod, &cfg, "watcher", &["sleep", "1000"]).await;
    d.start_container(&watcher).await;
    d.wait_state(&watcher, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let leaver = d.create(&pod, &cfg, "leaver", &["sh", "-c", "sleep 4242 & echo started; exit 3"]).await;
    d.start_container(&leaver).await;
    let st = d.wait_state(&leaver, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 3);
    // The watcher sees the pod's processes: the leftover sleep is gone.
    let ps = d.exec_out(&watcher, &["ps", "-o", "args"]).await;
    assert!(!ps.contains("sleep 4242"), "the exited container left a process behind:\n{ps}");
    assert!(std::fs::read_to_string(&st.log_path).unwrap().contains("started"));
}

/// pid 1 of a pod's shared pid namespace is Berth's pod init: a one-page
/// program, not a copy of the shim (a fork kept ~500 KiB mapped and ~56 KiB
/// of the shim's memory per pod). It is known as the sandbox's shim (name
/// and arguments, so berthd can tell it from a reused pid), reaps what is
/// orphaned to it, and ends with the pod.
#[tokio::test]
async fn the_pod_init_is_small_reaps_orphans_and_ends_with_the_pod() {
    let mut d = Daemon::start().await;
    let cfg = pod_pid_config(&d, "podinit");
    let pod = d.run_pod(&cfg).await;
    let info = d.pod_info(&pod).await;
    let init = info["podInitPid"].as_i64().and_then(|p| i32::try_from(p).ok()).unwrap();
    assert!(init > 0, "no pod init: {info}");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(field("VmRSS:") <= 64, "the pod init maps {} kB: a copy of the shim?\n{status}", field("VmRSS:"));
    assert_eq!(std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap().trim(), "berth-shim");
    let cmdline = std::fs::read(format!("/proc/{init}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert!(args.windows(2).any(|w| w[0] == b"--id" && w[1] == pod.as_bytes()), "{args:?}");

    // A process orphaned inside the pod is reparented to the pod init (the
    // shim, a subreaper outside the pod's pid namespace, is not asked);
    // when it exits it must be reaped, not left a zombie.
    let c = d.create(&pod, &cfg, "parent", &["sh", "-c", "sh -c 'sleep 0.5 &'; exec sleep 1000"]).await;
    d.start_container(&c).await;
    let children = || std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    let t = std::time::Instant::now();
    let orphan = loop {
        let found = children()
            .split_whitespace()
            .find(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x000.5")))
            .map(str::to_string);
        if let Some(p) = found {
            break p;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no orphan reached the pod init: {}", children());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while children().split_whitespace().any(|p| p == orphan) {
        assert!(t.elapsed() < Duration::from_secs(5), "the pod init did not reap its orphan {orphan}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert!(berth_tests::wait_gone(init, Duration::from_secs(5)).await, "the pod init outlived its pod");
}

/// A pod whose containers share one pid namespace.
fn pod_pid_config(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    let mut cfg = d.pod_config(name);
    if let Some(ns) =
        cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
    cfg
}
