//! Containers from create to remove: states, exit codes, reasons, stop
//! with a grace period.
use std::time::{Duration, Instant};

use berth_tests::{alive, wait_gone, Daemon};
use protocol::cri;

#[tokio::test]
async fn create_start_exit_codes_and_reasons() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("life");
    let pod = d.run_pod(&cfg).await;

    let c = d.create(&pod, &cfg, "runner", &["sleep", "1000"]).await;
    let st = d.status(&c).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    assert!(st.created_at > 0);
    assert_eq!(st.started_at, 0);
    d.start_container(&c).await;
    let st = d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    assert!(st.started_at >= st.created_at);
    let pid = d.container_pid(&c).await;
    assert!(alive(pid), "container init {pid} is not alive");

    let fail = d.create(&pod, &cfg, "fails", &["sh", "-c", "exit 3"]).await;
    d.start_container(&fail).await;
    let st = d.wait_state(&fail, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.finished_at >= st.started_at && st.started_at > 0);

    let okc = d.create(&pod, &cfg, "succeeds", &["true"]).await;
    d.start_container(&okc).await;
    let st = d.wait_state(&okc, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 0);
    assert_eq!(st.reason, "Completed");

    // ListContainers: filters by state and sandbox.
    let running =
        d.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(running.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![c.clone()]);

    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
    for id in [&c, &fail, &okc] {
        d.rt.remove_container(cri::RemoveContainerRequest { container_id: id.to_string() }).await.unwrap();
    }
    let all = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    assert!(all.is_empty());
    let e = d.rt.container_status(cri::ContainerStatusRequest { container_id: c, verbose: false }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn stop_honours_the_grace_period() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("grace");
    let pod = d.run_pod(&cfg).await;
    // Exits promptly on SIGTERM.
    let polite =
        d.create(&pod, &cfg, "polite", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]).await;
    // Ignores SIGTERM.
    let stubborn =
        d.create(&pod, &cfg, "stubborn", &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]).await;
    for c in [&polite, &stubborn] {
        d.start_container(c).await;
        d.wait_state(c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    }
    // Give the shells time to install their traps.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    d.rt.stop_container(cri::StopContainerRequest { container_id: polite.clone(), timeout: 10 }).await.unwrap();
    let took = t.elapsed();
    let st = d.status(&polite).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 0, "the trap's exit code, not SIGKILL's");
    assert!(took < Duration::from_secs(10), "stop waited the whole grace period: {took:?}");

    let t = Instant::now();
    d.rt.stop_container(cri::StopContainerRequest { container_id: stubborn.clone(), timeout: 2 }).await.unwrap();
    let took = t.elapsed();
    let st = d.status(&stubborn).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137, "killed by SIGKILL");
    assert!(took >= Duration::from_secs(2), "SIGKILL came before the grace period ended: {took:?}");

    // Stopping again, or something gone, succeeds.
    d.rt.stop_container(cri::StopContainerRequest { container_id: stubborn, timeout: 2 }).await.unwrap();
    d.rt.stop_container(cri::StopContainerRequest { container_id: "0".repeat(64), timeout: 2 }).await.unwrap();
}

#[tokio::test]
async fn container_events_stream_the_lifecycle() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("events");
    let pod = d.run_pod(&cfg).await;
    let mut events = d.rt.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
    let c = d.create(&pod, &cfg, "brief", &["sh", "-c", "sleep 0.2"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&cri::ContainerEventType::ContainerDeletedEvent) {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .unwrap()
            .expect("stream open");
        assert_eq!(e.container_id, c);
        assert!(e.created_at > 0);
        let kind = cri::ContainerEventType::try_from(e.container_event_type).unwrap();
        if kind != cri::ContainerEventType::ContainerDeletedEvent {
            assert_eq!(e.pod_sandbox_status.as_ref().unwrap().id, pod);
            let me = e.containers_statuses.iter().find(|s| s.id == c).expect("the container's own status");
            if kind == cri::ContainerEventType::ContainerStoppedEvent {
                assert_eq!(me.state, cri::ContainerState::ContainerExited as i32);
            }
        }
        seen.push(kind);
    }
    use cri::ContainerEventType::*;
    assert_eq!(seen, vec![ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent, ContainerDeletedEvent]);
}
