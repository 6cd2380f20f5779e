//! Containers survive berthd crashes and restarts; a dead shim is noticed
//! and cleaned up; damaged metadata stops berthd with a clear message.
use std::time::{Duration, Instant, SystemTime};

use berth_tests::{alive, wait_gone, Daemon};
use protocol::cri;
use protocol::cri_log::split_streams;

fn nanos_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// What clients see: pods and containers with ids, names, labels,
/// annotations and created times (states for running ones).
async fn snapshot(d: &mut Daemon) -> (serde_json::Value, serde_json::Value) {
    let mut pods = d.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    pods.sort_by(|a, b| a.id.cmp(&b.id));
    let mut cs =
        d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    cs.sort_by(|a, b| a.id.cmp(&b.id));
    (serde_json::to_value(pods).unwrap(), serde_json::to_value(cs).unwrap())
}

fn ticker_cmd() -> Vec<&'static str> {
    vec!["sh", "-c", "i=0; while true; do echo n-$i; i=$((i+1)); sleep 0.05; done"]
}

#[tokio::test]
async fn containers_keep_running_and_logging_through_a_berthd_crash() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("crash");
    cfg.labels.insert("tier".into(), "web".into());
    cfg.annotations.insert("a".into(), "b".into());
    let pod = d.run_pod(&cfg).await;
    let mut cc = berth_tests::container_config("ticker", &ticker_cmd());
    cc.labels.insert("role".into(), "ticker".into());
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let pid = d.container_pid(&c).await;
    let before = snapshot(&mut d).await;
    let status_before = d.status(&c).await;

    d.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.restart().await;

    assert_eq!(d.container_pid(&c).await, pid, "the container was restarted");
    assert!(alive(pid));
    assert_eq!(snapshot(&mut d).await, before, "lists changed across the restart");
    let status_after = d.status(&c).await;
    assert_eq!(serde_json::to_value(&status_after).unwrap(), serde_json::to_value(&status_before).unwrap());

    tokio::time::sleep(Duration::from_millis(300)).await;
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    let data = std::fs::read(&status_after.log_path).unwrap();
    let (out, _) = split_streams(&data);
    let out = String::from_utf8(out).unwrap();
    let numbers: Vec<usize> = out.lines().map(|l| l.strip_prefix("n-").unwrap().parse().unwrap()).collect();
    assert!(numbers.len() > 40, "too few lines: {}", numbers.len());
    assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>(), "a line was lost, repeated or reordered");
}

#[tokio::test]
async fn an_exit_while_berthd_is_down_is_reported_after_restart() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("away");
    let pod = d.run_pod(&cfg).await;
    let quitter = d.create(&pod, &cfg, "quitter", &["sh", "-c", "sleep 0.5; exit 7"]).await;
    let stayer =
        d.create(&pod, &cfg, "stayer", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]).await;
    d.start_container(&stayer).await;
    d.start_container(&quitter).await;
    d.kill9();
    let down_at = nanos_now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let up_at = nanos_now();
    d.restart().await;

    let st = d.status(&quitter).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 7);
    assert!(st.finished_at > down_at && st.finished_at < up_at, "finished_at {} not within the outage", st.finished_at);

    // The recovered pod works.
    assert_eq!(d.exec_out(&stayer, &["echo", "still here"]).await, "still here");
    d.rt.stop_container(cri::StopContainerRequest { container_id: stayer.clone(), timeout: 5 }).await.unwrap();
    assert_eq!(d.status(&stayer).await.exit_code, 0);
    let shim = d.shim_pid(&pod).await;
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert!(wait_gone(shim, Duration::from_secs(5)).await);
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
}

#[tokio::test]
async fn a_killed_shim_is_noticed_and_its_pod_cleans_up() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("orphaned");
    // A pod pid namespace, so there is a pod init to clean up as well.
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid =
        cri::NamespaceMode::Pod as i32;
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "victim", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let ctr_pid = d.container_pid(&c).await;
    let info = d.pod_info(&pod).await;
    let shim = info["pid"].as_i64().unwrap() as i32;
    let pod_init = info["podInitPid"].as_i64().unwrap() as i32;
    assert!(pod_init > 0 && alive(pod_init));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t = Instant::now();
    loop {
        let st = d.pod_status(&pod).await;
        if st.state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        // The monitor checks every 200 ms; allow for a loaded machine.
        assert!(t.elapsed() < Duration::from_secs(3), "dead shim not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = d.status(&c).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "ShimGone");
    assert!(!st.message.is_empty());
    assert!(wait_gone(ctr_pid, Duration::from_secs(5)).await, "the orphaned container still runs");

    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert!(wait_gone(pod_init, Duration::from_secs(5)).await, "the pod init survived");
    assert!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
    assert!(d.leftovers().is_empty(), "state left: {:?}", d.leftovers());
    assert!(std::fs::read_dir(d.dir.path().join("s/runc")).unwrap().next().is_none(), "runc state left");
}

#[tokio::test]
async fn ten_restarts_change_nothing() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("steady");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "steady", &ticker_cmd()).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let pid = d.container_pid(&c).await;
    let before = snapshot(&mut d).await;
    for _ in 0..10 {
        d.restart().await;
        assert_eq!(snapshot(&mut d).await, before);
        assert_eq!(d.container_pid(&c).await, pid);
    }
    assert!(alive(pid));
}

#[tokio::test]
async fn garbage_metadata_stops_berthd_naming_the_file() {
    let mut d = Daemon::start().await;
    d.kill9();
    let store = d.dir.path().join("r/metadata.redb");
    std::fs::write(&store, vec![0x42u8; 16384]).unwrap();
    let out = std::process::Command::new(berth_tests::bin_dir().join("berthd"))
        .arg("--root")
        .arg(d.dir.path().join("r"))
        .arg("--state")
        .arg(d.dir.path().join("s"))
        .arg("--listen")
        .arg(d.dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&store.display().to_string()), "message does not name the file: {err}");
}

/// A stale shim.pid naming another live process (here another pod's shim,
/// as after pid reuse) never makes berthd signal it: removing the pod whose
/// shim died leaves the other pod running.
#[tokio::test]
async fn a_stale_shim_pid_never_signals_another_process() {
    let mut d = Daemon::start().await;
    let cfg_a = d.pod_config("stale-a");
    let a = d.run_pod(&cfg_a).await;
    let cfg_b = d.pod_config("stale-b");
    let b = d.run_pod(&cfg_b).await;
    let cb = d.create(&b, &cfg_b, "c", &["sleep", "100000"]).await;
    d.start_container(&cb).await;
    d.wait_state(&cb, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let shim_a = d.shim_pid(&a).await;
    let shim_b = d.shim_pid(&b).await;
    d.kill9();
    berth_tests::kill_tree(shim_a);
    assert!(berth_tests::wait_gone(shim_a, Duration::from_secs(5)).await);
    // Pod A's pid file now names pod B's shim.
    std::fs::write(d.dir.path().join("s/sandboxes").join(&a).join("shim.pid"), shim_b.to_string()).unwrap();
    d.restart().await;
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: a.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: a }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(berth_tests::alive(shim_b), "pod B's shim was killed through pod A's stale pid file");
    assert_eq!(d.status(&cb).await.state, cri::ContainerState::ContainerRunning as i32);
}

/// kill -9 of the shim in the middle of an interactive exec and of a log
/// flood: the pod turns NotReady, the exec's client is told (its stream
/// ends), the exec'd process and the container go, the log ends on a whole
/// record, and removing the pod leaves nothing.
#[tokio::test]
async fn a_shim_killed_during_an_exec_and_a_log_flood_cleans_up() {
    use berth_streaming::client::{Channels, ExecStream};
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("flood");
    let pod = d.run_pod(&cfg).await;
    let c = d
        .create(
            &pod,
            &cfg,
            "flood",
            &["sh", "-c", "while true; do echo 0123456789abcdefghijklmnopqrstuvwxyz0123456789; done"],
        )
        .await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let ctr_pid = d.container_pid(&c).await;
    let ch = Channels { stdout: true, stdin: true, ..Default::default() };
    let url =
        d.rt.exec(cri::ExecRequest {
            container_id: c.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo started; exec sleep 7391".into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut s = ExecStream::connect(&url, berth_streaming::server::EXEC_PROTOCOLS, ch).await.unwrap();
    assert!(matches!(s.next().await, Some(berth_streaming::client::Event::Stdout(_))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shim = d.shim_pid(&pod).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL).unwrap();
    // The exec's client hears the end.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(s.next().await, None | Some(berth_streaming::client::Event::Closed)) {}
    })
    .await;
    assert!(ended.is_ok(), "the exec stream outlived its shim");
    let t = Instant::now();
    while d.pod_status(&pod).await.state != cri::PodSandboxState::SandboxNotready as i32 {
        assert!(t.elapsed() < Duration::from_secs(3), "dead shim not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_gone(ctr_pid, Duration::from_secs(5)).await, "the container outlived its shim");
    // The log holds whole records only.
    let log = std::fs::read(d.status(&c).await.log_path).unwrap();
    assert!(log.len() > 1000 && log.ends_with(b"\n"), "the log does not end on a whole record");
    for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(protocol::cri_log::parse_line(line).is_some(), "a broken record: {:?}", String::from_utf8_lossy(line));
    }
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    let survivor = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x007391\x00"));
    assert!(!survivor, "the exec'd process survived");
    assert!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
    assert!(d.leftovers().is_empty(), "state left: {:?}", d.leftovers());
}
