//! NRI: a plugin written for the tests (tests/src/nri_plugin.rs, the same
//! protocol as containerd/nri's) connects to berthd's NRI socket, is
//! synchronized, gets every lifecycle event in order with the objects'
//! metadata, and adjusts the containers it is asked about; a hook's error
//! fails the CRI call and leaves nothing; a plugin that hangs is dropped;
//! one that joins while pods are being made sees each once.
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use berth_tests::nri_plugin::{Behaviour, TestPlugin};
use berth_tests::{container_config, counts, Daemon};
use protocol::cri;
use protocol::nri as api;
use tonic::Code;

fn socket(d: &Daemon) -> std::path::PathBuf {
    d.dir.path().join("nri").join("nri.sock")
}

fn kv(key: &str, value: &str) -> api::KeyValue {
    let mut k = api::KeyValue::new();
    k.key = key.into();
    k.value = value.into();
    k
}

/// Env, an annotation, a read-only bind mount, a memory limit, a device,
/// an rlimit and an OCI hook.
fn adjustment(host_dir: &std::path::Path) -> api::ContainerAdjustment {
    let mut a = api::ContainerAdjustment::new();
    a.env.push(kv("NRI_ADDED", "yes"));
    a.annotations.insert("nri.berth.test/adjusted".into(), "true".into());
    let mut m = api::Mount::new();
    m.destination = "/mnt/nri".into();
    m.type_ = "bind".into();
    m.source = host_dir.display().to_string();
    m.options = vec!["rbind".into(), "ro".into()];
    a.mounts.push(m);
    let mut mem = api::LinuxMemory::new();
    let mut limit = api::OptionalInt64::new();
    limit.value = 96 << 20;
    mem.limit = Some(limit).into();
    let mut res = api::LinuxResources::new();
    res.memory = Some(mem).into();
    let mut linux = api::LinuxContainerAdjustment::new();
    linux.resources = Some(res).into();
    // /dev/null again, at a name of the plugin's.
    let mut dev = api::LinuxDevice::new();
    dev.path = "/dev/nri-null".into();
    dev.type_ = "c".into();
    dev.major = 1;
    dev.minor = 3;
    linux.devices.push(dev);
    a.linux = Some(linux).into();
    let mut nofile = api::POSIXRlimit::new();
    nofile.type_ = "RLIMIT_NOFILE".into();
    nofile.hard = 4321;
    nofile.soft = 4321;
    a.rlimits.push(nofile);
    // An OCI hook runc runs on the node before the container starts.
    let mut hook = api::Hook::new();
    hook.path = "/bin/sh".into();
    hook.args = vec!["sh".into(), "-c".into(), format!("echo hooked > {}/hooked", host_dir.display())];
    let mut hooks = api::Hooks::new();
    hooks.create_runtime.push(hook);
    a.hooks = Some(hooks).into();
    a
}

fn names(told: &[(String, String)], id: &str) -> Vec<String> {
    told.iter().filter(|(_, i)| i == id).map(|(e, _)| e.clone()).collect()
}

/// The whole lifecycle through one plugin: the socket is root's alone, the
/// events come in order with metadata, the pod is not listed while its
/// hook runs, and the container runs with the plugin's adjustments.
#[tokio::test]
async fn a_plugin_sees_every_event_in_order_and_adjusts_containers() {
    let mut d = Daemon::start().await;
    let sock = socket(&d);
    let meta = std::fs::metadata(&sock).expect("the NRI socket is there");
    assert_eq!(meta.mode() & 0o777, 0o600, "only root may connect");
    assert_eq!(std::fs::metadata(sock.parent().unwrap()).unwrap().mode() & 0o777, 0o700);

    let host_dir = d.dir.path().join("from-plugin");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("file"), "mounted by NRI\n").unwrap();
    let (entered, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let behaviour = Behaviour {
        adjust: Some(adjustment(&host_dir)),
        pause: Some(("RunPodSandbox".into(), entered.clone(), release.clone())),
        ..Default::default()
    };
    let plugin = TestPlugin::connect(&sock, "10", "berth-test", behaviour).await;
    assert_eq!(plugin.seen.lock().unwrap().synced, Some((vec![], vec![])));
    let info = d.rt.status(cri::StatusRequest { verbose: true }).await.expect("status").into_inner().info;
    let nri: serde_json::Value = serde_json::from_str(&info["nri"]).unwrap();
    assert_eq!(nri["plugins"], serde_json::json!(["10-berth-test"]), "Status names the connected plugins");
    assert_eq!(nri["socket"], sock.display().to_string());

    let mut cfg = d.pod_config("nri-pod");
    cfg.labels.insert("app".into(), "nri".into());
    let mut rt = d.rt.clone();
    let run = {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() }).await
        })
    };
    entered.notified().await;
    assert_eq!(d.pods().await.len(), 0, "a pod is not listed while its RunPodSandbox hook runs");
    release.notify_one();
    let pod = run.await.unwrap().expect("run pod").into_inner().pod_sandbox_id;

    let cc = container_config(
        "app",
        &[
            "sh",
            "-c",
            "echo env=$NRI_ADDED; cat /mnt/nri/file; echo nofile=$(ulimit -n); echo x > /dev/nri-null && echo dev=ok; sleep 1000",
        ],
    );
    let c = d.create_with(&pod, &cfg, cc).await.expect("create");
    d.start_container(&c).await;
    let log = d.logs.join("nri-pod").join("app.log");
    assert!(berth_tests::file_contains(&log, "env=yes").await, "the plugin's env is in the container");
    assert!(berth_tests::file_contains(&log, "mounted by NRI").await, "the plugin's mount is in the container");
    assert!(berth_tests::file_contains(&log, "nofile=4321").await, "the plugin's rlimit is the container's");
    assert!(berth_tests::file_contains(&log, "dev=ok").await, "the plugin's device is there and allowed");
    assert_eq!(std::fs::read_to_string(host_dir.join("hooked")).unwrap(), "hooked\n", "the plugin's hook ran");
    let status = d.status(&c).await;
    let limit = status.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
    assert_eq!(limit, Some(96 << 20), "the plugin's memory limit is the container's");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.dir.path().join("s/containers").join(&c).join("config.json")).unwrap())
            .unwrap();
    assert_eq!(spec["annotations"]["nri.berth.test/adjusted"], "true");
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 96 << 20);

    d.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 128 << 20, ..Default::default() }),
        ..Default::default()
    })
    .await
    .expect("update");
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.expect("stop");
    d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.expect("remove");
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop pod");
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("remove pod");

    let told = plugin.told();
    assert_eq!(names(&told, &pod), vec!["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]);
    assert_eq!(
        names(&told, &c),
        vec![
            "CreateContainer",
            "PostCreateContainer",
            "StartContainer",
            "PostStartContainer",
            "UpdateContainer",
            "PostUpdateContainer",
            "StopContainer",
            "RemoveContainer"
        ]
    );
    let pos = |e: &str, id: &str| told.iter().position(|t| t.0 == e && t.1 == id).unwrap();
    assert!(pos("RunPodSandbox", &pod) < pos("CreateContainer", &c));
    assert!(pos("RemoveContainer", &c) < pos("StopPodSandbox", &pod));

    let seen = plugin.seen.lock().unwrap();
    let p = &seen.pods[0];
    assert_eq!((p.name.as_str(), p.namespace.as_str()), ("nri-pod", "default"));
    assert_eq!(p.labels.get("app").map(String::as_str), Some("nri"));
    assert_eq!(p.id, pod);
    assert!(p.linux.namespaces.iter().any(|n| n.type_ == "network" && !n.path.is_empty()));
    let created = &seen.containers[0];
    assert_eq!(created.name, "app");
    assert_eq!(created.pod_sandbox_id, pod);
    assert_eq!(created.args[0], "sh");
    assert!(!created.env.iter().any(|e| e.starts_with("NRI_ADDED")), "CreateContainer sees the container unadjusted");
    // Events with a container come in order: the second is PostCreateContainer.
    let post = &seen.containers[1];
    assert!(post.env.iter().any(|e| e == "NRI_ADDED=yes"), "PostCreateContainer sees it adjusted");
    assert!(post.mounts.iter().any(|m| m.destination == "/mnt/nri"));
}

/// A peer that registers with a bad index, or speaks no NRI at all, is
/// refused and hung up on; berthd and the next plugin are unharmed.
#[tokio::test]
async fn bad_registrations_and_garbage_are_hung_up_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut d = Daemon::start().await;
    let stream = tokio::net::UnixStream::connect(socket(&d)).await.unwrap();
    let mux = protocol::nri_mux::split(stream);
    let runtime = api::RuntimeClient::new(ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(
        mux.runtime_service,
    )));
    let mut req = api::RegisterPluginRequest::new();
    req.plugin_name = "bad".into();
    req.plugin_idx = "7".into();
    let e = runtime.register_plugin(ttrpc::context::with_timeout(5_000_000_000), &req).await.unwrap_err();
    assert!(format!("{e:?}").contains("two digits"), "{e:?}");

    let mut raw = tokio::net::UnixStream::connect(socket(&d)).await.unwrap();
    // A frame far past the limit, then nothing.
    raw.write_all(&protocol::nri_mux::frame_header(1, u32::MAX)).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "berthd hangs up on an oversized frame: {read:?}");

    let plugin = TestPlugin::connect(&socket(&d), "10", "after-garbage", Behaviour::default()).await;
    let pod = d.run_pod(&d.pod_config("after-garbage")).await;
    assert_eq!(plugin.told(), vec![("RunPodSandbox".to_string(), pod)]);
}

/// A second plugin of the same index and name is refused and leaves the
/// first in place.
#[tokio::test]
async fn a_duplicate_plugin_is_refused_and_the_first_stays() {
    let mut d = Daemon::start().await;
    let first = TestPlugin::connect(&socket(&d), "10", "twice", Behaviour::default()).await;
    let second = TestPlugin::connect_unsynced(&socket(&d), "10", "twice", Behaviour::default()).await;
    assert!(d.log_contains("is already connected").await);
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pod = d.run_pod(&d.pod_config("after-duplicate")).await;
    assert_eq!(first.told(), vec![("RunPodSandbox".to_string(), pod)], "the first plugin still gets events");
}

/// A plugin's error in RunPodSandbox or CreateContainer fails the call
/// with its message, leaves no pod, container or folder, and the retry
/// (the plugin no longer failing) works.
#[tokio::test]
async fn a_hook_error_fails_the_call_leaves_nothing_and_the_retry_works() {
    let mut d = Daemon::start().await;
    let behaviour =
        Behaviour { fail: Some(("RunPodSandbox".into(), "no pods today".into())), fail_times: 1, ..Default::default() };
    let plugin = TestPlugin::connect(&socket(&d), "10", "refuser", behaviour).await;
    let cfg = d.pod_config("refused");
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await
            .expect_err("the plugin refuses");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("10-refuser") && e.message().contains("no pods today"), "{}", e.message());
    assert_eq!(counts(&mut d).await, (0, 0));
    assert_eq!(d.leftovers(), Vec::<std::path::PathBuf>::new());
    let pod = d.run_pod(&cfg).await;
    drop(plugin);

    let behaviour = Behaviour {
        fail: Some(("CreateContainer".into(), "not this one".into())),
        fail_times: 1,
        ..Default::default()
    };
    let plugin = TestPlugin::connect(&socket(&d), "20", "refuser", behaviour).await;
    assert_eq!(plugin.seen.lock().unwrap().synced.as_ref().map(|s| s.0.clone()), Some(vec![pod.clone()]));
    let e = d.create_with(&pod, &cfg, container_config("c", &["sleep", "1000"])).await.expect_err("refused");
    assert!(e.message().contains("not this one"), "{}", e.message());
    assert_eq!(counts(&mut d).await, (1, 0), "a refused container is not listed");
    let bundles = std::fs::read_dir(d.dir.path().join("s/containers")).unwrap().count();
    assert_eq!(bundles, 0, "a refused container leaves no bundle");
    let c = d.create(&pod, &cfg, "c", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    let told = plugin.told();
    let first = told.iter().position(|t| t.0 == "CreateContainer").unwrap();
    assert_eq!(told[first + 1].0, "RemoveContainer", "the plugin is told the refused container is gone");
}

/// A plugin that never answers is dropped after the request timeout
/// (NRI's 2s): the call goes on without it and later calls do not wait.
#[tokio::test]
async fn a_plugin_that_hangs_is_timed_out_and_dropped() {
    let mut d = Daemon::start().await;
    let behaviour = Behaviour { hang: Some("RunPodSandbox".into()), ..Default::default() };
    let plugin = TestPlugin::connect(&socket(&d), "10", "hangs", behaviour).await;
    let cfg = d.pod_config("waited-for");
    let pod = d.run_pod(&cfg).await;
    assert!(d.log_contains("closing NRI plugin").await, "the hanging plugin was closed");
    let c = d.create(&pod, &cfg, "c", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    assert_eq!(plugin.told(), vec![("RunPodSandbox".to_string(), pod.clone())], "a dropped plugin gets nothing more");
}

/// A plugin joining while pods are being made sees each pod once: in its
/// synchronization or as RunPodSandbox, never both, never neither.
#[tokio::test]
async fn a_plugin_joining_late_is_synchronized_without_a_race() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("before");
    let before = d.run_pod(&cfg).await;
    let c = d.create(&before, &cfg, "c", &["sleep", "1000"]).await;
    let mut makers = Vec::new();
    for i in 0..6 {
        let mut rt = d.rt.clone();
        let cfg = d.pod_config(&format!("racing-{i}"));
        makers.push(tokio::spawn(async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() })
                .await
                .expect("run")
                .into_inner()
                .pod_sandbox_id
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let plugin = TestPlugin::connect(&socket(&d), "10", "late", Behaviour::default()).await;
    let mut pods = vec![before.clone()];
    for m in makers {
        pods.push(m.await.unwrap());
    }
    let (synced, synced_containers) = plugin.seen.lock().unwrap().synced.clone().unwrap();
    assert!(synced.contains(&before) && synced_containers.contains(&c), "what was there is in the sync");
    let told = plugin.told();
    for p in &pods {
        let n = synced.iter().filter(|s| *s == p).count()
            + told.iter().filter(|t| t.0 == "RunPodSandbox" && &t.1 == p).count();
        assert_eq!(n, 1, "pod {p} seen {n} times (sync {synced:?}, events {told:?})");
    }
}

/// UpdateContainers from a plugin changes a running container's limits;
/// an eviction stops it.
#[tokio::test]
async fn a_plugin_updates_and_evicts_containers_unasked() {
    let mut d = Daemon::start().await;
    let plugin = TestPlugin::connect(&socket(&d), "10", "updater", Behaviour::default()).await;
    let cfg = d.pod_config("updated");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "c", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    let mut up = api::ContainerUpdate::new();
    up.container_id = c.clone();
    let mut mem = api::LinuxMemory::new();
    let mut limit = api::OptionalInt64::new();
    limit.value = 80 << 20;
    mem.limit = Some(limit).into();
    let mut res = api::LinuxResources::new();
    res.memory = Some(mem).into();
    let mut linux = api::LinuxContainerUpdate::new();
    linux.resources = Some(res).into();
    up.linux = Some(linux).into();
    let mut missing = api::ContainerUpdate::new();
    missing.container_id = "0123456789abcdef".into();
    let mut req = api::UpdateContainersRequest::new();
    req.update = vec![up, missing];
    let ctx = ttrpc::context::with_timeout(10_000_000_000);
    let resp = plugin.runtime.update_containers(ctx.clone(), &req).await.expect("update containers");
    assert_eq!(resp.failed.len(), 1, "the unknown container's update failed");
    assert_eq!(resp.failed[0].container_id, "0123456789abcdef");
    let limit = d.status(&c).await.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
    assert_eq!(limit, Some(80 << 20));

    let mut ev = api::ContainerEviction::new();
    ev.container_id = c.clone();
    ev.reason = "test".into();
    let mut req = api::UpdateContainersRequest::new();
    req.evict.push(ev);
    plugin.runtime.update_containers(ctx, &req).await.expect("evict");
    d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(20)).await;
}

/// A container that exits on its own is told stopped at its exit, once,
/// before it is told removed.
#[tokio::test]
async fn an_exit_is_told_as_stop_container_once() {
    let mut d = Daemon::start().await;
    let plugin = TestPlugin::connect(&socket(&d), "10", "exits", Behaviour::default()).await;
    let cfg = d.pod_config("exits");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "c", &["sh", "-c", "exit 3"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names(&plugin.told(), &c).contains(&"StopContainer".to_string()) {
        assert!(std::time::Instant::now() < deadline, "the exit was never told: {:?}", plugin.told());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.expect("stop");
    d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.expect("remove");
    let told = names(&plugin.told(), &c);
    assert_eq!(told.iter().filter(|e| *e == "StopContainer").count(), 1, "{told:?}");
    let at = |e: &str| told.iter().position(|t| t == e).unwrap();
    assert!(at("PostStartContainer") < at("StopContainer"), "started before stopped: {told:?}");
    assert_eq!(told.last().map(String::as_str), Some("RemoveContainer"), "{told:?}");
    let exited = plugin
        .seen
        .lock()
        .unwrap()
        .containers
        .iter()
        .find(|x| x.id == c && x.state.value() == api::ContainerState::CONTAINER_STOPPED as i32)
        .cloned();
    assert!(exited.is_some(), "the container is told as stopped");
}
