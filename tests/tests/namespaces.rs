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
    let mut cfg = d.pod_config("pidpod");
    if let Some(ns) =
        cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
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
