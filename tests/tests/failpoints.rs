//! berthd killed between any two side effects of a lifecycle call: after a
//! restart no half object is visible, a retry succeeds, and removing
//! everything leaves nothing behind.
use std::time::Duration;

use berth_tests::{container_config, Daemon};
use protocol::cri;

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
    // The network step needs a network.
    let _net = (step == "run-pod-sandbox/network-added" && berth_tests::cni_available())
        .then(|| berth_tests::TestNet::new(&d));
    if step == "run-pod-sandbox/network-added" && _net.is_none() {
        eprintln!("skipped: containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    }
    let mut run = Run { cfg: d.pod_config("fp"), pod: String::new(), ctr: String::new() };
    let target = op_of(step);
    for op in OPS {
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
            let tested = [$($step),*];
            assert_eq!(tested.to_vec(), berth::failpoint::STEPS.to_vec());
        }
    };
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
    remove_recorded => "remove-container/recorded",
    remove_stopped => "remove-container/stopped",
    remove_deleted => "remove-container/deleted",
    remove_files_removed => "remove-container/files-removed",
    remove_pod_recorded => "remove-pod-sandbox/recorded",
    remove_pod_containers_removed => "remove-pod-sandbox/containers-removed",
    remove_pod_shim_stopped => "remove-pod-sandbox/shim-stopped",
}
