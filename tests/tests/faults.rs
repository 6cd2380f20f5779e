//! Every OCI runtime and CNI plugin call that fails or hangs: the CRI call
//! that made it returns a clear error within its deadline, leaves no half
//! object (process, mount, cgroup, record, folder, IP lease), and its retry
//! succeeds. The runtime and plugin are the real ones behind wrappers that
//! fail or hang at one chosen call (tests/src/faults.rs).
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_tests::faults::{cni_plugins, Faults, How};
use berth_tests::{container_config, Daemon, TestNet};
use protocol::cri;

/// What the daemons are given: a hung call is killed after this.
const RUNTIME_TIMEOUT: &str = "2s";
/// A hung call's CRI call ends within this (the timeout, a cleanup run, slack).
const ANSWER_WITHIN: Duration = Duration::from_secs(12);

/// Every process below `pid`.
fn descendants(pid: i32) -> BTreeSet<i32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() {
            if berth_tests::alive(p) {
                parent.insert(p, berth_tests::parent_pid(p));
            }
        }
    }
    let mut out = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (&c, &pp) in &parent {
            if pp == p && out.insert(c) {
                todo.push(c);
            }
        }
    }
    out
}

/// Waits (a killed call's process is reaped asynchronously) until the
/// processes below the shim are `want`.
async fn settle(shim: i32, want: &BTreeSet<i32>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = descendants(shim);
        if &now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: processes left below the shim: {:?}", now.difference(want));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The container cgroups under a pod's own cgroup, in every hierarchy.
fn container_cgroups(pod: &str) -> BTreeSet<String> {
    berth_tests::pod_cgroups(pod)
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

/// What an error caused by `how` says.
fn why(how: How) -> &'static str {
    match how {
        How::Fail => "berth-fault: injected failure",
        How::Hang => "timed out",
    }
}

/// The CRI call failed, in time, saying what failed.
fn failed(r: Result<impl std::fmt::Debug, tonic::Status>, at: &str, how: How, started: Instant) {
    let e = r.expect_err(&format!("{at} {how:?}: the call succeeded"));
    assert!(started.elapsed() < ANSWER_WITHIN, "{at} {how:?}: answered after {:?}", started.elapsed());
    assert!(e.message().contains(why(how)), "{at} {how:?}: the error does not say why: {e:?}");
    assert_ne!(e.code(), tonic::Code::Ok);
}

async fn containers(d: &mut Daemon, pod: &str) -> Vec<cri::Container> {
    let filter = cri::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() };
    d.rt.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await.unwrap().into_inner().containers
}

fn memory(mib: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources { memory_limit_in_bytes: mib << 20, ..Default::default() }
}

#[tokio::test]
async fn every_oci_runtime_call_that_fails_or_hangs_is_reported_and_undone() {
    let faults = Faults::new();
    let runtime = faults.runtime().display().to_string();
    let mut d = Daemon::start_full(&[], &["--oci-runtime", &runtime, "--oci-runtime-timeout", RUNTIME_TIMEOUT]).await;
    let cfg = d.pod_config("faults");
    let pod = d.run_pod(&cfg).await;
    let shim = d.shim_pid(&pod).await;
    let pod_only = descendants(shim);
    let pod_mounts = d.mounts();
    let pod_folders = d.leftovers();
    for how in [How::Fail, How::Hang] {
        let cc = container_config("victim", &["sleep", "100000"]);
        // create: the runtime creates the container at StartContainer. A
        // create that fails or hangs fails the start and ends the container
        // (StartError, exit 128), leaving nothing of it in the runtime.
        let c = d.create_with(&pod, &cfg, cc.clone()).await.expect("create");
        faults.set("create", how);
        let t = Instant::now();
        failed(d.rt.start_container(cri::StartContainerRequest { container_id: c.clone() }).await, "create", how, t);
        faults.clear();
        settle(shim, &pod_only, "create").await;
        let st = d.status(&c).await;
        assert_eq!(
            (st.state, st.reason.as_str(), st.exit_code),
            (cri::ContainerState::ContainerExited as i32, "StartError", 128),
            "create {how:?}: {st:?}"
        );
        assert!(st.message.contains(why(how)), "create {how:?}: the status does not say why: {st:?}");
        assert!(container_cgroups(&pod).is_empty(), "create {how:?}: cgroups left: {:?}", container_cgroups(&pod));
        d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.expect("remove");
        assert!(containers(&mut d, &pod).await.is_empty(), "create {how:?}: a record is left");
        assert_eq!(d.mounts(), pod_mounts, "create {how:?}: mounts left");
        assert_eq!(d.leftovers(), pod_folders, "create {how:?}: folders left");
        let c = d.create_with(&pod, &cfg, cc.clone()).await.expect("create again");

        // start
        faults.set("start", how);
        let t = Instant::now();
        failed(d.rt.start_container(cri::StartContainerRequest { container_id: c.clone() }).await, "start", how, t);
        faults.clear();
        assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerCreated as i32, "start {how:?}");
        d.start_container(&c).await;
        d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
        let running = descendants(shim);

        // exec
        faults.set("exec", how);
        let t = Instant::now();
        failed(d.exec(&c, &["echo", "hi"], 30).await, "exec", how, t);
        faults.clear();
        settle(shim, &running, "exec").await;
        let out = d.exec(&c, &["echo", "hi"], 30).await.expect("exec again");
        assert_eq!((out.exit_code, String::from_utf8_lossy(&out.stdout).trim()), (0, "hi"));

        // update: nothing is recorded of a refused change.
        faults.set("update", how);
        let t = Instant::now();
        let upd = |mib| cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(memory(mib)),
            ..Default::default()
        };
        failed(d.rt.update_container_resources(upd(64)).await, "update", how, t);
        faults.clear();
        let limit = |st: cri::ContainerStatus| st.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
        assert_ne!(limit(d.status(&c).await), Some(64 << 20), "update {how:?}: the refused limit was recorded");
        d.rt.update_container_resources(upd(64)).await.expect("update again");
        assert_eq!(limit(d.status(&c).await), Some(64 << 20));

        // kill: the container is not reported stopped.
        faults.set("kill", how);
        let t = Instant::now();
        failed(
            d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 1 }).await,
            "kill",
            how,
            t,
        );
        faults.clear();
        assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerRunning as i32, "kill {how:?}");

        // delete: the shim has the runtime delete a container when it
        // exits; failing there, and again at RemoveContainer, the container
        // stays until the runtime has let it go.
        faults.set("delete", how);
        d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 1 }).await.expect("stop");
        assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerExited as i32);
        let t = Instant::now();
        failed(d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await, "delete", how, t);
        faults.clear();
        assert_eq!(containers(&mut d, &pod).await.len(), 1, "delete {how:?}: the record went first");
        d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.expect("remove again");
        settle(shim, &pod_only, "delete").await;
        assert!(containers(&mut d, &pod).await.is_empty());
        assert_eq!(d.mounts(), pod_mounts, "delete {how:?}: mounts left");
        assert_eq!(d.leftovers(), pod_folders, "delete {how:?}: folders left");
        assert!(container_cgroups(&pod).is_empty(), "delete {how:?}: cgroups left: {:?}", container_cgroups(&pod));
    }
}

#[tokio::test]
async fn every_cni_call_that_fails_or_hangs_is_reported_and_undone() {
    let Some(plugins) = cni_plugins() else {
        berth_tests::skip(false, "containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    };
    let faults = Faults::new();
    let bins = format!("{}:{}", faults.bin_dir().display(), plugins.display());
    let mut d = Daemon::start_full(&[], &["--cni-bin-dir", &bins, "--cni-plugin-timeout", RUNTIME_TIMEOUT]).await;
    let net = TestNet::new(&d);
    let conf = d.dir.path().join("cni/10-test.conflist");
    let text =
        std::fs::read_to_string(&conf).unwrap().replacen("\"type\": \"bridge\"", "\"type\": \"faulty-bridge\"", 1);
    assert!(text.contains("faulty-bridge"));
    std::fs::write(&conf, text).unwrap();
    let leases = || net.leases();
    let req = |cfg: &cri::PodSandboxConfig| cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    };
    for how in [How::Fail, How::Hang] {
        let cfg = d.pod_config(&format!("net-{how:?}").to_lowercase());
        faults.set("ADD", how);
        let t = Instant::now();
        failed(d.rt.run_pod_sandbox(req(&cfg)).await, "ADD", how, t);
        faults.clear();
        assert!(d.pods().await.is_empty(), "ADD {how:?}: a pod is left");
        assert!(d.leftovers().is_empty(), "ADD {how:?}: folders left: {:?}", d.leftovers());
        assert!(d.mounts().is_empty(), "ADD {how:?}: mounts left (netns pins): {:?}", d.mounts());
        assert!(leases().is_empty(), "ADD {how:?}: IP leases left: {:?}", leases());
        let pod = d.rt.run_pod_sandbox(req(&cfg)).await.expect("run again").into_inner().pod_sandbox_id;
        let shim = d.shim_pid(&pod).await;
        assert_eq!(leases().len(), 1);

        faults.set("DEL", how);
        let t = Instant::now();
        failed(d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await, "DEL", how, t);
        faults.clear();
        assert_eq!(leases().len(), 1, "DEL {how:?}: the lease went though DEL failed");
        d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop again");
        assert!(leases().is_empty(), "DEL {how:?}: the IP was not released: {:?}", leases());
        d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("remove");
        assert!(berth_tests::wait_gone(shim, Duration::from_secs(10)).await, "DEL {how:?}: the shim stayed");
        assert!(d.pods().await.is_empty());
        assert!(d.leftovers().is_empty(), "DEL {how:?}: folders left: {:?}", d.leftovers());
        assert!(d.mounts().is_empty(), "DEL {how:?}: mounts left: {:?}", d.mounts());
    }
}
