//! Resource limits take effect and their consequences are reported.
use std::time::Duration;

use berth_tests::{container_config, Daemon};
use protocol::cri;

#[tokio::test]
async fn an_oom_kill_is_reported_as_oomkilled_with_137() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("oom");
    let pod = d.run_pod(&cfg).await;
    // `tail /dev/zero` keeps one endless line in memory: it hits the limit
    // within milliseconds of starting.
    let mut cc = container_config("hog", &["tail", "/dev/zero"]);
    cc.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources { memory_limit_in_bytes: 16 << 20, ..Default::default() });
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    let st = d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(30)).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    // A container killed by a plain SIGKILL is not OOMKilled.
    let c2 = d.create(&pod, &cfg, "killed", &["sleep", "1000"]).await;
    d.start_container(&c2).await;
    d.rt.stop_container(cri::StopContainerRequest { container_id: c2.clone(), timeout: 0 }).await.unwrap();
    let st = d.status(&c2).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "Error"));
}
