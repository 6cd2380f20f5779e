//! A pod sandbox from run to remove, against real shims, runc and namespaces.
use std::time::Duration;

use berth_tests::{alive, wait_gone, Daemon};
use protocol::cri;

#[tokio::test]
async fn pod_runs_reports_stops_and_is_removed_without_leftovers() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("web.example");
    cfg.labels.insert("app".into(), "web".into());
    cfg.annotations.insert("note".into(), "kept as given".into());
    cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = d.run_pod(&cfg).await;

    let st = d.pod_status(&pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(st.created_at > 0);
    assert_eq!(st.labels["app"], "web");
    assert_eq!(st.annotations["note"], "kept as given");
    assert_eq!(st.metadata.unwrap().name, "web.example");

    let c = d.create(&pod, &cfg, "main", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    assert_eq!(d.exec_out(&c, &["hostname"]).await, "web-example");
    let resolv = d.exec_out(&c, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let container_pid = d.container_pid(&c).await;
    let shim_pid = d.shim_pid(&pod).await;
    assert!(alive(container_pid) && alive(shim_pid));

    // Listing by label and state.
    let mut sel = std::collections::HashMap::new();
    sel.insert("app".to_string(), "web".to_string());
    let listed =
        d.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: sel,
                state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, pod);

    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let st = d.pod_status(&pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerExited as i32);
    assert!(wait_gone(container_pid, Duration::from_secs(5)).await, "container process survived stop");
    // Stop is idempotent.
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();

    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let all = d.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert!(all.is_empty(), "{all:?}");
    let cs = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    assert!(cs.is_empty(), "{cs:?}");
    assert!(wait_gone(shim_pid, Duration::from_secs(5)).await, "shim survived remove");
    assert_eq!(d.mounts(), Vec::<String>::new(), "mounts left under the test folder");
    let leftovers: Vec<_> = std::fs::read_dir(d.dir.path().join("s/sandboxes")).unwrap().collect();
    assert!(leftovers.is_empty(), "sandbox state left: {leftovers:?}");
    let leftovers: Vec<_> = std::fs::read_dir(d.dir.path().join("s/containers")).unwrap().collect();
    assert!(leftovers.is_empty(), "bundles left: {leftovers:?}");
    // Remove is idempotent.
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
}

#[tokio::test]
async fn pod_pid_namespace_is_shared_when_asked() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("shared-pid");
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid =
        cri::NamespaceMode::Pod as i32;
    let pod = d.run_pod(&cfg).await;
    let a = d.create(&pod, &cfg, "a", &["sleep", "1000"]).await;
    let b = d.create(&pod, &cfg, "b", &["sleep", "1001"]).await;
    d.start_container(&a).await;
    d.start_container(&b).await;
    // Each sees the other's process, and pid 1 is the pod's init, not a container.
    let ps = d.exec_out(&a, &["ps", "-o", "pid,args"]).await;
    assert!(ps.contains("sleep 1001"), "{ps}");
    let one = d.exec_out(&b, &["cat", "/proc/1/cmdline"]).await;
    assert!(!one.contains("sleep"), "pid 1 should be the pod init: {one:?}");
    assert_eq!(
        d.exec_out(&a, &["readlink", "/proc/self/ns/pid"]).await,
        d.exec_out(&b, &["readlink", "/proc/self/ns/pid"]).await
    );
}
