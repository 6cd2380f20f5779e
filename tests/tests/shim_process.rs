//! The shim is its own process, outside berthd's process group and session:
//! kill -9 of berthd leaves the shim and the container running.
use std::time::Duration;

use berth_tests::{alive, Daemon};
use protocol::cri;

fn stat_field(pid: i32, n: usize) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = s.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n).unwrap().parse().unwrap()
}

#[tokio::test]
async fn shim_and_container_survive_berthd_kill9() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("survivor");
    let pod = d.run_pod(&cfg).await;
    let c = d
        .create(&pod, &cfg, "ticker", &["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.05; done"])
        .await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let berthd = d.pid() as i32;
    let shim = d.shim_pid(&pod).await;
    let ctr = d.container_pid(&c).await;
    assert_ne!(shim, berthd);
    // Not berthd's child, not in its process group or session.
    assert_ne!(stat_field(shim, 1), berthd, "shim's parent is berthd");
    assert_ne!(stat_field(shim, 2), stat_field(berthd, 2), "shim shares berthd's process group");
    assert_ne!(stat_field(shim, 3), stat_field(berthd, 3), "shim shares berthd's session");
    assert_eq!(stat_field(ctr, 1), shim, "the container's parent is its shim");

    let log = d.status(&c).await.log_path;
    d.kill9();
    let size_then = std::fs::metadata(&log).unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(shim), "shim died with berthd");
    assert!(alive(ctr), "container died with berthd");
    assert!(std::fs::metadata(&log).unwrap().len() > size_then, "the container stopped logging without berthd");

    // A new berthd on the same folders knows the pod and the container.
    d.restart().await;
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerRunning as i32);
    assert!(d.log_contains("sandboxes_recovered: 1").await, "{}", d.log());
}
