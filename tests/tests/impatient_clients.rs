//! Clients that give up: a RunPodSandbox or StartContainer whose client's
//! deadline passes while the work is still going on (a slow CNI plugin, a
//! slow OCI runtime) finishes or rolls back by itself, and kubelet's retry
//! of the same RunPodSandbox gets its answer, not AlreadyExists.
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use berth_tests::{cni_available, Daemon, TestNet};
use protocol::cri;

fn script(path: &std::path::Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The client's own deadline passed (tonic says Cancelled, gRPC-Go DeadlineExceeded).
fn gave_up(e: &tonic::Status) -> bool {
    matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
}

fn with_deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

#[tokio::test]
async fn a_client_that_gives_up_leaks_nothing_and_its_retry_succeeds() {
    if !cni_available() {
        berth_tests::skip(false, "containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    }
    let plugins =
        ["/usr/lib/cni", "/opt/cni/bin"].into_iter().find(|d| std::path::Path::new(d).join("bridge").exists()).unwrap();
    // A bridge plugin that takes 3 s to ADD, and a runc that takes 3 s to create.
    let tools = tempfile::Builder::new().prefix("slow").tempdir_in("/tmp").unwrap();
    let bin = tools.path().to_path_buf();
    script(
        &bin.join("slowbridge"),
        &format!("[ \"$CNI_COMMAND\" = ADD ] && sleep 3\n[ \"$CNI_COMMAND\" = DEL ] && sleep 2\nexec {plugins}/bridge"),
    );
    let runc =
        String::from_utf8(std::process::Command::new("sh").args(["-c", "command -v runc"]).output().unwrap().stdout)
            .unwrap();
    script(
        &bin.join("slow-runc"),
        &format!("for a in \"$@\"; do [ \"$a\" = create ] && sleep 3; done\nexec {} \"$@\"", runc.trim()),
    );
    let mut d = Daemon::start_full(
        &[],
        &[
            "--cni-bin-dir",
            &format!("{}:{plugins}", bin.display()),
            "--oci-runtime",
            bin.join("slow-runc").to_str().unwrap(),
        ],
    )
    .await;
    let net = TestNet::new(&d);
    let conf = d.dir.path().join("cni/10-test.conflist");
    let text = std::fs::read_to_string(&conf).unwrap().replacen("\"type\": \"bridge\"", "\"type\": \"slowbridge\"", 1);
    assert!(text.contains("slowbridge"));
    std::fs::write(&conf, text).unwrap();

    let cfg = d.pod_config("impatient");
    let req = || cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() };
    let e = d.rt.run_pod_sandbox(with_deadline(req(), Duration::from_secs(1))).await.unwrap_err();
    assert!(gave_up(&e), "{e}");
    // kubelet's retry of the same attempt: the pod, not AlreadyExists.
    let pod = d.rt.run_pod_sandbox(req()).await.unwrap().into_inner().pod_sandbox_id;
    let pods = d.pods().await;
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [pod.as_str()]);
    let ip = d.pod_status(&pod).await.network.unwrap().ip;
    assert!(ip.starts_with(&net.prefix), "{ip}");

    let cc = berth_tests::container_config("slow", &["sleep", "100000"]);
    let creq = || cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(cc.clone()),
        sandbox_config: Some(cfg.clone()),
    };
    // The runtime creates the container at StartContainer: CreateContainer
    // does not wait for it, so a 1 s deadline is enough.
    let ctr = d.rt.create_container(with_deadline(creq(), Duration::from_secs(1))).await.unwrap().into_inner();
    let ctr = ctr.container_id;
    let sreq = || cri::StartContainerRequest { container_id: ctr.clone() };
    let e = d.rt.start_container(with_deadline(sreq(), Duration::from_secs(1))).await.unwrap_err();
    assert!(gave_up(&e), "{e}");
    // The start goes on without its client.
    d.wait_state(&ctr, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let list = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    assert_eq!(list.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [ctr.as_str()]);

    // A removal whose client gives up still happens, all of it.
    let e =
        d.rt.remove_pod_sandbox(with_deadline(
            cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() },
            Duration::from_millis(500),
        ))
        .await
        .unwrap_err();
    assert!(gave_up(&e), "{e}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !d.pods().await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the removal did not finish on its own");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
}

/// A shim that stops answering (SIGSTOP): StopContainer says so, naming the
/// pod, instead of reporting success without a kill; calls about other pods
/// are not held up; ListContainers answers within seconds, the stopped
/// pod's containers Unknown. After SIGCONT everything works again.
#[tokio::test]
async fn a_shim_that_does_not_answer_is_never_taken_for_stopped() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::time::Instant;
    let mut d = Daemon::start().await;
    let (cfg_a, cfg_b) = (d.pod_config("frozen"), d.pod_config("lively"));
    let (a, b) = (d.run_pod(&cfg_a).await, d.run_pod(&cfg_b).await);
    let ca = d.create(&a, &cfg_a, "c", &["sleep", "100000"]).await;
    let cb = d.create(&b, &cfg_b, "c", &["sleep", "100000"]).await;
    for c in [&ca, &cb] {
        d.start_container(c).await;
        d.wait_state(c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    }
    let shim = Pid::from_raw(d.shim_pid(&a).await);
    kill(shim, Signal::SIGSTOP).unwrap();
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let _resume = Resume(shim);

    let started = Instant::now();
    let e = d.rt.stop_container(cri::StopContainerRequest { container_id: ca.clone(), timeout: 2 }).await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded), "{e}");
    assert!(e.message().contains(&a), "the error does not name the pod: {e}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    // The other pod is not held up.
    let started = Instant::now();
    assert_eq!(d.status(&cb).await.state, cri::ContainerState::ContainerRunning as i32);
    assert!(started.elapsed() < Duration::from_secs(2), "another pod's status took {:?}", started.elapsed());
    let started = Instant::now();
    let list = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    assert!(started.elapsed() < Duration::from_secs(8), "ListContainers took {:?}", started.elapsed());
    let state = |id: &str| list.iter().find(|c| c.id == id).map(|c| c.state);
    assert_eq!(state(&cb), Some(cri::ContainerState::ContainerRunning as i32));
    assert_eq!(state(&ca), Some(cri::ContainerState::ContainerUnknown as i32));

    // Resumed: the container was never killed, and now stops for real.
    kill(shim, Signal::SIGCONT).unwrap();
    assert_eq!(d.status(&ca).await.state, cri::ContainerState::ContainerRunning as i32);
    d.rt.stop_container(cri::StopContainerRequest { container_id: ca.clone(), timeout: 2 }).await.unwrap();
    assert_eq!(d.status(&ca).await.state, cri::ContainerState::ContainerExited as i32);
}

/// A burst of RunPodSandbox calls is admitted a few at a time: never more
/// than berthd's limit run their CNI plugins at once, and each gets its pod.
#[tokio::test]
async fn a_burst_of_pods_is_admitted_a_few_at_a_time() {
    let Some(plugins) = berth_tests::faults::cni_plugins() else {
        berth_tests::skip(false, "containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    };
    let tools = tempfile::Builder::new().prefix("burst").tempdir_in("/tmp").unwrap();
    let t = tools.path().display().to_string();
    std::fs::create_dir(tools.path().join("active")).unwrap();
    // Counts the ADDs running at once (a folder each), then does the real one.
    script(
        &tools.path().join("countingbridge"),
        &format!(
            "if [ \"$CNI_COMMAND\" = ADD ]; then\n  mkdir {t}/active/$CNI_CONTAINERID\n  ls {t}/active | wc -l >> {t}/seen\n  sleep 0.3\n  rmdir {t}/active/$CNI_CONTAINERID\nfi\nexec {}/bridge",
            plugins.display()
        ),
    );
    let bins = format!("{t}:{}", plugins.display());
    let mut d = Daemon::start_full(&[], &["--cni-bin-dir", &bins]).await;
    let _net = TestNet::new(&d);
    let conf = d.dir.path().join("cni/10-test.conflist");
    let text =
        std::fs::read_to_string(&conf).unwrap().replacen("\"type\": \"bridge\"", "\"type\": \"countingbridge\"", 1);
    std::fs::write(&conf, text).unwrap();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut rt = d.rt.clone();
            let cfg = d.pod_config(&format!("burst-{i}"));
            tokio::spawn(async move {
                rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() })
                    .await
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("every pod of the burst runs");
    }
    let seen: Vec<usize> = std::fs::read_to_string(tools.path().join("seen"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(seen.len(), 20);
    let most = seen.iter().copied().max().unwrap_or(0);
    assert!(most <= berthd::manager::MAX_CONCURRENT_POD_STARTS, "{most} pods were started at once");
    assert!(most >= 2, "the burst was never concurrent, so it proves nothing: {seen:?}");
    assert_eq!(d.pods().await.len(), 20);
}
