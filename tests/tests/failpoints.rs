//! berthd killed between any two side effects of a lifecycle call, a pull,
//! an image removal, a resource update or a log rotation: after a restart
//! no half object is visible, a retry succeeds, and removing everything
//! leaves nothing behind.
use std::path::PathBuf;
use std::time::Duration;

use berth_tests::registry::{
    build_image, busybox_layer, layer_from_tar, registry_available, tar_of, Compression, Registry,
};
use berth_tests::{container_config, pod_cgroups, Daemon};
use protocol::cri;

/// The steps that run CNI plugins, and so need a network.
const NETWORK_STEPS: [&str; 2] = ["run-pod-sandbox/network-added", "stop-pod-sandbox/network-released"];

/// The calls of a pod's life, in order; each failpoint sits in one of them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    RunPod,
    Create,
    Start,
    Stop,
    StopPod,
    Remove,
    RemovePod,
}

const OPS: [Op; 7] = [Op::RunPod, Op::Create, Op::Start, Op::Stop, Op::StopPod, Op::Remove, Op::RemovePod];

fn op_of(step: &str) -> Op {
    match step.split('/').next().unwrap() {
        "run-pod-sandbox" => Op::RunPod,
        "create-container" => Op::Create,
        "start-container" => Op::Start,
        "stop-container" => Op::Stop,
        "stop-pod-sandbox" => Op::StopPod,
        "remove-container" => Op::Remove,
        "remove-pod-sandbox" => Op::RemovePod,
        other => panic!("no op for {other}"),
    }
}

struct Run {
    cfg: cri::PodSandboxConfig,
    pod: String,
    ctr: String,
}

async fn perform(d: &mut Daemon, run: &mut Run, op: Op) -> Result<(), tonic::Status> {
    match op {
        Op::RunPod => {
            run.pod =
                d.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(run.cfg.clone()),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id
        }
        Op::Create => {
            let cc = container_config("app", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]);
            run.ctr = d.create_with(&run.pod, &run.cfg, cc).await?
        }
        Op::Start => {
            d.rt.start_container(cri::StartContainerRequest { container_id: run.ctr.clone() }).await?;
            d.wait_state(&run.ctr, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
            // Let the shell install its trap before anyone signals it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Op::Stop => {
            d.rt.stop_container(cri::StopContainerRequest { container_id: run.ctr.clone(), timeout: 5 }).await?;
        }
        Op::StopPod => {
            d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: run.pod.clone() }).await?;
        }
        Op::Remove => {
            d.rt.remove_container(cri::RemoveContainerRequest { container_id: run.ctr.clone() }).await?;
        }
        Op::RemovePod => {
            d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: run.pod.clone() }).await?;
        }
    }
    Ok(())
}

async fn crash_at(step: &str) {
    let mut d = Daemon::start_with(&[("BERTH_FAILPOINT", step)]).await;
    let net = (NETWORK_STEPS.contains(&step) && berth_tests::cni_available()).then(|| berth_tests::TestNet::new(&d));
    if NETWORK_STEPS.contains(&step) && net.is_none() {
        berth_tests::skip(false, "containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    }
    let mut run = Run { cfg: d.pod_config("fp"), pod: String::new(), ctr: String::new() };
    let target = op_of(step);
    let mut pods_made = Vec::new();
    for op in OPS {
        if op == Op::Create {
            pods_made.push(run.pod.clone());
        }
        let r = perform(&mut d, &mut run, op).await;
        if op != target {
            r.unwrap_or_else(|e| panic!("{op:?} failed before the failpoint: {e:?}"));
            continue;
        }
        assert!(r.is_err(), "{op:?} returned although berthd should have died at {step}");
        assert!(d.wait_exited(Duration::from_secs(5)).await, "berthd did not die at {step}");
        d.restart().await;
        let pods = d.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
        let cs =
            d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
        // No half object: whatever is listed is whole (its status answers).
        for p in &pods {
            d.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: p.id.clone(), verbose: false })
                .await
                .unwrap();
        }
        for c in &cs {
            d.status(&c.id).await;
        }
        match op {
            Op::RunPod => assert!(pods.is_empty(), "{step}: half-made pod visible: {pods:?}"),
            Op::Create => assert!(cs.is_empty(), "{step}: half-made container visible: {cs:?}"),
            Op::Remove => assert!(cs.is_empty(), "{step}: removal not finished: {cs:?}"),
            Op::RemovePod => assert!(pods.is_empty(), "{step}: pod removal not finished: {pods:?}"),
            _ => assert_eq!((pods.len(), cs.len()), (1, 1)),
        }
        // The retry succeeds.
        perform(&mut d, &mut run, op).await.unwrap_or_else(|e| panic!("retry of {op:?} after {step}: {e:?}"));
    }
    let pods = d.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert!(pods.is_empty());
    assert!(d.leftovers().is_empty(), "{step}: state left: {:?}", d.leftovers());
    assert!(d.mounts().is_empty(), "{step}: mounts left: {:?}", d.mounts());
    assert!(std::fs::read_dir(d.dir.path().join("s/runc")).unwrap().next().is_none(), "{step}: runc state left");
    for pod in pods_made.iter().filter(|p| !p.is_empty()) {
        assert!(pod_cgroups(pod).is_empty(), "{step}: pod cgroups left: {:?}", pod_cgroups(pod));
    }
    if let Some(net) = net {
        assert!(net.leases().is_empty(), "{step}: IP leases left: {:?}", net.leases());
    }
}

macro_rules! failpoint_tests {
    ($($name:ident => $step:literal),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                crash_at($step).await;
            }
        )*

        #[test]
        fn every_failpoint_has_a_test() {
            let mut tested = vec![$($step),*];
            tested.extend(OTHER_STEPS);
            assert_eq!(tested, berth_core::failpoint::STEPS.to_vec());
        }
    };
}

/// The failpoints outside a pod's life, each with its own test below.
const OTHER_STEPS: [&str; 6] = [
    "update-container/applied",
    "rotate-log/renamed",
    "pull-image/blob-stored",
    "pull-image/layers-unpacked",
    "remove-image/recorded",
    "remove-image/collecting",
];

/// A running container in a fresh pod.
async fn running(d: &mut Daemon, cmd: &[&str]) -> (cri::PodSandboxConfig, String, String) {
    let cfg = d.pod_config("fp");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "app", cmd).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    (cfg, pod, c)
}

/// Removes every pod and checks nothing is left.
async fn remove_everything(d: &mut Daemon, what: &str) {
    for p in d.pods().await {
        d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await.unwrap();
        d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id }).await.unwrap();
    }
    assert!(d.leftovers().is_empty(), "{what}: state left: {:?}", d.leftovers());
    assert!(d.mounts().is_empty(), "{what}: mounts left: {:?}", d.mounts());
}

#[tokio::test]
async fn update_applied() {
    let step = "update-container/applied";
    let mut d = Daemon::start_with(&[("BERTH_FAILPOINT", step)]).await;
    let (_, _, c) = running(&mut d, &["sleep", "100000"]).await;
    let upd = || cri::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 48 << 20, ..Default::default() }),
        ..Default::default()
    };
    assert!(d.rt.update_container_resources(upd()).await.is_err());
    assert!(d.wait_exited(Duration::from_secs(5)).await, "berthd did not die at {step}");
    d.restart().await;
    // The retry succeeds and the record then says what the cgroup has.
    d.rt.update_container_resources(upd()).await.expect("update after the crash");
    let st = d.status(&c).await;
    assert_eq!(st.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes), Some(48 << 20));
    remove_everything(&mut d, step).await;
}

#[tokio::test]
async fn rotate_renamed() {
    let step = "rotate-log/renamed";
    let mut d = Daemon::start_full(
        &[("BERTH_FAILPOINT", step)],
        &[
            "--container-log-max-size",
            "2Ki",
            "--container-log-max-files",
            "3",
            "--container-log-check-interval",
            "100ms",
        ],
    )
    .await;
    let (cfg, _, _) =
        running(&mut d, &["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done"]).await;
    assert!(d.wait_exited(Duration::from_secs(20)).await, "berthd did not die at {step}");
    let log = PathBuf::from(&cfg.log_directory).join("app.log");
    assert!(!log.exists(), "the failpoint is after the rename");
    d.restart().await;
    // The shim writes to the live file again, not to the renamed one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < 100 {
        assert!(std::time::Instant::now() < deadline, "nothing was written to {} after the restart", log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.log().contains("after an interrupted rotation"), "{}", d.log());
    remove_everything(&mut d, step).await;
}

/// An image of the test image's layer and one of its own.
fn image_with_own_layer(content: &[u8]) -> (berth_tests::registry::BuiltImage, String) {
    let own = layer_from_tar(tar_of(&[("own.txt", tar::EntryType::Regular, content, None)]), Compression::Gzip);
    let digest = berth_tests::registry::sha256(&own.data);
    (build_image(vec![busybox_layer(), own], "amd64", "X=1"), digest)
}

fn stored(d: &Daemon, sub: &str, digest: &str) -> bool {
    d.dir.path().join("r/images").join(sub).join(digest.trim_start_matches("sha256:")).exists()
}

async fn pull(d: &mut Daemon, name: &str) -> Result<String, tonic::Status> {
    let spec = cri::ImageSpec { image: name.into(), ..Default::default() };
    let r = d.img.pull_image(cri::PullImageRequest { image: Some(spec), auth: None, sandbox_config: None }).await?;
    Ok(r.into_inner().image_ref)
}

async fn listed(d: &mut Daemon, name: &str) -> bool {
    let spec = cri::ImageSpec { image: name.into(), ..Default::default() };
    d.img
        .image_status(cri::ImageStatusRequest { image: Some(spec), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .image
        .is_some()
}

/// A pull cut short: no image, nothing of it kept (its blobs and the temp
/// entries a crash leaves are removed at start), and the retry runs.
async fn crash_in_pull(step: &str) {
    if !registry_available() {
        berth_tests::skip(false, "docker-registry missing (scripts/test.sh installs it)");
        return;
    }
    let reg = Registry::start(berth_tests::registry::Auth::None, false);
    let (img, own) = image_with_own_layer(step.as_bytes());
    reg.push("fp/app", "v1", &img).await;
    let name = format!("{}/fp/app:v1", reg.host);
    let mut d = Daemon::start_with(&[("BERTH_FAILPOINT", step)]).await;
    assert!(pull(&mut d, &name).await.is_err());
    assert!(d.wait_exited(Duration::from_secs(10)).await, "berthd did not die at {step}");
    assert!(stored(&d, "blobs/sha256", &own), "the failpoint is after the blob is stored");
    // What a crash in the middle of a download or an unpack leaves.
    let images = d.dir.path().join("r/images");
    std::fs::write(images.join("blobs/sha256/.tmp-cut-short"), b"half a blob").unwrap();
    std::fs::create_dir_all(images.join("snapshots/.tmp-cut-short/usr")).unwrap();
    d.restart().await;
    assert!(!listed(&mut d, &name).await, "{step}: an image nobody committed is listed");
    assert!(!stored(&d, "blobs/sha256", &own) && !stored(&d, "snapshots", &own), "{step}: the cut pull's layer kept");
    for t in ["blobs/sha256/.tmp-cut-short", "snapshots/.tmp-cut-short"] {
        assert!(!images.join(t).exists(), "{step}: {t} left after the restart");
    }
    assert_eq!(pull(&mut d, &name).await.expect("pull after the crash"), img.id());
    let cfg = d.pod_config("pulled");
    let pod = d.run_pod(&cfg).await;
    let mut cc = container_config("c", &["cat", "/own.txt"]);
    cc.image = Some(cri::ImageSpec { image: name.clone(), ..Default::default() });
    let c = d.create_with(&pod, &cfg, cc).await.expect("create from the pulled image");
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    remove_everything(&mut d, step).await;
}

#[tokio::test]
async fn pull_blob_stored() {
    crash_in_pull("pull-image/blob-stored").await;
}

#[tokio::test]
async fn pull_layers_unpacked() {
    crash_in_pull("pull-image/layers-unpacked").await;
}

/// An image removal cut short: the image is gone after the restart, so is
/// what only it used, and the test image (which shares a layer) still runs.
async fn crash_in_image_removal(step: &str) {
    if !registry_available() {
        berth_tests::skip(false, "docker-registry missing (scripts/test.sh installs it)");
        return;
    }
    let reg = Registry::start(berth_tests::registry::Auth::None, false);
    let (img, own) = image_with_own_layer(step.as_bytes());
    reg.push("fp/gone", "v1", &img).await;
    let name = format!("{}/fp/gone:v1", reg.host);
    let mut d = Daemon::start_with(&[("BERTH_FAILPOINT", step)]).await;
    pull(&mut d, &name).await.expect("pull");
    let spec = cri::ImageSpec { image: name.clone(), ..Default::default() };
    assert!(d.img.remove_image(cri::RemoveImageRequest { image: Some(spec.clone()) }).await.is_err());
    assert!(d.wait_exited(Duration::from_secs(10)).await, "berthd did not die at {step}");
    d.restart().await;
    assert!(!listed(&mut d, &name).await, "{step}: the removed image is listed");
    assert!(!stored(&d, "blobs/sha256", &own) && !stored(&d, "snapshots", &own), "{step}: its own layer kept");
    assert!(!stored(&d, "blobs/sha256", &img.id()), "{step}: its config kept");
    d.img.remove_image(cri::RemoveImageRequest { image: Some(spec) }).await.expect("remove again");
    let (_, _, c) = running(&mut d, &["sleep", "100000"]).await;
    assert_eq!(d.exec_out(&c, &["echo", "still here"]).await.trim(), "still here");
    remove_everything(&mut d, step).await;
}

#[tokio::test]
async fn remove_image_recorded() {
    crash_in_image_removal("remove-image/recorded").await;
}

#[tokio::test]
async fn remove_image_collecting() {
    crash_in_image_removal("remove-image/collecting").await;
}

failpoint_tests! {
    run_pod_recorded => "run-pod-sandbox/recorded",
    run_pod_files_written => "run-pod-sandbox/files-written",
    run_pod_shim_started => "run-pod-sandbox/shim-started",
    run_pod_network_added => "run-pod-sandbox/network-added",
    create_recorded => "create-container/recorded",
    create_rootfs_mounted => "create-container/rootfs-mounted",
    create_bundle_written => "create-container/bundle-written",
    create_shim_created => "create-container/shim-created",
    start_before_start => "start-container/before-start",
    stop_signalled => "stop-container/signalled",
    stop_pod_containers_stopped => "stop-pod-sandbox/containers-stopped",
    stop_pod_network_released => "stop-pod-sandbox/network-released",
    remove_recorded => "remove-container/recorded",
    remove_stopped => "remove-container/stopped",
    remove_deleted => "remove-container/deleted",
    remove_files_removed => "remove-container/files-removed",
    remove_pod_recorded => "remove-pod-sandbox/recorded",
    remove_pod_containers_removed => "remove-pod-sandbox/containers-removed",
    remove_pod_dir_removed => "remove-pod-sandbox/dir-removed",
    remove_pod_shim_stopped => "remove-pod-sandbox/shim-stopped",
}
