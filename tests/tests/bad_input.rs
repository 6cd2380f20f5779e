//! Bad input gets the right gRPC status and changes nothing; stop and
//! remove of what is gone succeed.
use std::time::Duration;

use berth_tests::{container_config, counts, Daemon};
use protocol::cri;
use tonic::Code;

#[tokio::test]
async fn bad_input_is_refused_with_the_right_status() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("good.pod.name");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "main", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    let before = counts(&mut d).await;
    let unknown = "f".repeat(64);

    // Unknown ids.
    let e =
        d.rt.container_status(cri::ContainerStatusRequest { container_id: unknown.clone(), verbose: false })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e =
        d.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: unknown.clone(), verbose: false })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = d.rt.start_container(cri::StartContainerRequest { container_id: unknown.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = d.exec(&unknown, &["true"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = d.create_with(&unknown, &cfg, container_config("x", &["true"])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Duplicate names.
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = d.create_with(&pod, &cfg, container_config("main", &["true"])).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // Bad names.
    for bad in ["", "a/b", "nul\0byte", &"x".repeat(254)] {
        let mut p = d.pod_config("placeholder");
        p.metadata.as_mut().unwrap().name = bad.to_string();
        let e =
            d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(p), runtime_handler: String::new() })
                .await
                .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "pod name {bad:?}: {e:?}");
        let e = d.create_with(&pod, &cfg, container_config(bad, &["true"])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "container name {bad:?}: {e:?}");
    }
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig::default()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = d
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(d.pod_config("h")), runtime_handler: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Log paths that leave the log directory.
    for bad in ["../escape.log", "a/../../escape.log", "/etc/escape.log"] {
        let mut cc = container_config("logger", &["true"]);
        cc.log_path = bad.to_string();
        let e = d.create_with(&pod, &cfg, cc).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "log path {bad:?}: {e:?}");
    }
    assert!(!d.logs.parent().unwrap().join("escape.log").exists());

    // A missing image.
    let mut cc = container_config("noimage", &["true"]);
    cc.image = Some(cri::ImageSpec { image: "docker.io/library/not-there:1".into(), ..Default::default() });
    let e = d.create_with(&pod, &cfg, cc).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Starting a running container.
    let e = d.rt.start_container(cri::StartContainerRequest { container_id: c.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Nothing changed, and nothing was left half-made.
    assert_eq!(counts(&mut d).await, before);
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerRunning as i32);
    let bundles = std::fs::read_dir(d.dir.path().join("s/containers")).unwrap().count();
    assert_eq!(bundles, 1, "a failed create left a bundle");

    // Stop and remove of things that are gone succeed.
    d.rt.stop_container(cri::StopContainerRequest { container_id: unknown.clone(), timeout: 1 }).await.unwrap();
    d.rt.remove_container(cri::RemoveContainerRequest { container_id: unknown.clone() }).await.unwrap();
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: unknown.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: unknown }).await.unwrap();
    // Images: status of a missing one is empty, removal of it succeeds.
    let r = d
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: "not-there".into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.image.is_none());
    d.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec { image: "not-there".into(), ..Default::default() }),
        })
        .await
        .unwrap();
}

/// Pod names, namespaces and uids with `;` or `=` would inject arguments into
/// CNI_ARGS (`K8S_POD_NAME=...;...`): refused before anything is made.
#[tokio::test]
async fn pod_metadata_that_would_inject_cni_args_is_refused() {
    let mut d = berth_tests::Daemon::start().await;
    for (name, namespace, uid) in
        [("a;IgnoreUnknown=0", "default", "u1"), ("web", "ns=x", "u2"), ("web2", "default", "u;3")]
    {
        let mut cfg = d.pod_config(name.split(';').next().unwrap());
        let md = cfg.metadata.as_mut().unwrap();
        md.name = name.into();
        md.namespace = namespace.into();
        md.uid = uid.into();
        let e =
            d.rt.run_pod_sandbox(protocol::cri::RunPodSandboxRequest { config: Some(cfg), ..Default::default() })
                .await
                .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name} {namespace} {uid}: {e}");
        assert!(e.message().contains("';' or '='"), "{e}");
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

/// Timeouts are a client's i64 seconds: the largest ones (kubelet never
/// sends them, a hostile client may) mean "no useful limit", not an
/// overflow. ExecSync and StopContainer with i64::MAX answer as with a long
/// timeout, and berthd keeps serving.
#[tokio::test]
async fn the_largest_timeouts_are_long_timeouts() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("huge-timeouts");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "c", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;

    let r = d.exec(&c, &["echo", "ok"], i64::MAX).await.expect("ExecSync with the largest timeout");
    assert_eq!((r.exit_code, String::from_utf8_lossy(&r.stdout).trim()), (0, "ok"));
    let started = std::time::Instant::now();
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: i64::MAX })
        .await
        .expect("StopContainer with the largest grace period");
    assert!(started.elapsed() < Duration::from_secs(30), "the TERM trap ends it at once");
    d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(5)).await;
    // Still serving.
    d.rt.version(cri::VersionRequest::default()).await.expect("berthd still answers");
}
