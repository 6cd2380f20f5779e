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
