//! What a real kubelet needs of the CRI socket and of a node runtime.
use berth_tests::Daemon;

/// gRPC-Go 1.33 (Debian's, what kubelet 1.28 links) dialing the bare socket
/// path sends that path as `:authority`, as do other clients in other
/// spellings; every one must reach the handlers.
#[tokio::test]
async fn grpc_go_clients_with_any_authority_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let Some(peer) = berth_tests::go_peer("grpc_version", dir.path()) else {
        berth_tests::skip(false, "go or golang-google-grpc-dev missing (scripts/setup.sh --test installs them)");
        return;
    };
    let d = Daemon::start().await;
    let socket = d.socket.display().to_string();
    let encoded = socket.replace('/', "%2F");
    // No authority given: gRPC-Go uses the dial target, the bare path.
    for authority in [None, Some("-"), Some("localhost"), Some(encoded.as_str()), Some("unix:///x.sock"), Some("[bad")]
    {
        let mut cmd = std::process::Command::new(&peer);
        cmd.arg(&socket);
        if let Some(a) = authority {
            cmd.arg(a);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "authority {authority:?}: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
        // Two calls on one connection: the second one's headers come from
        // the HPACK dynamic table.
        assert_eq!(stdout.matches("runtime_name=berth").count(), 2, "authority {authority:?}: {stdout}");
    }
    // And tonic's own client (berthctl's) still works on the same socket.
    let mut rt = d.rt.clone();
    let v = rt.version(protocol::cri::VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "berth");
}

/// The streaming server (HTTP/1.1) takes any Host too: kubelet proxies to it
/// with its own, and a client on a unix-socket setup may send a path.
#[tokio::test]
async fn the_streaming_server_takes_any_host() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("any-host");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "c", &["sleep", "100000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, protocol::cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    for host in ["/run/berth/berth.sock", "%2Frun%2Fx.sock", ""] {
        let url = d.exec_url(&c, &["true"], false).await;
        let rest = url.trim_start_matches("http://");
        let (addr, path) = rest.split_at(rest.find('/').unwrap());
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 101", "Host {host:?}");
    }
}

/// ContainerStatus and ListContainers name the image as containerd does:
/// `image.image` the reference used at create (a repo tag when an id was
/// given), `image_ref` a repo digest, `image_id` the config digest.
#[tokio::test]
async fn container_image_fields_are_what_kubelet_shows() {
    use protocol::cri;
    let mut d = Daemon::start().await;
    let st = d
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: berth_tests::TEST_IMAGE.into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    let id = st.id.clone();
    let repo_digest = st.repo_digests[0].clone();
    assert!(repo_digest.starts_with("docker.io/library/berth-test@sha256:"), "{repo_digest}");
    let cfg = d.pod_config("image-fields");
    let pod = d.run_pod(&cfg).await;
    let short_tag = "berth-test".to_string();
    let by_id_prefix = id.trim_start_matches("sha256:")[..12].to_string();
    for (n, (asked, shown)) in [
        (short_tag.clone(), short_tag.clone()),
        (repo_digest.clone(), repo_digest.clone()),
        (id.clone(), berth_tests::TEST_IMAGE.to_string()),
        (by_id_prefix, berth_tests::TEST_IMAGE.to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = berth_tests::container_config(&format!("c{n}"), &["true"]);
        c.image = Some(cri::ImageSpec { image: asked.clone(), ..Default::default() });
        let ctr = d.create_with(&pod, &cfg, c).await.unwrap();
        let s = d.status(&ctr).await;
        assert_eq!(s.image.as_ref().unwrap().image, shown, "asked {asked}");
        assert_eq!(s.image_ref, repo_digest, "asked {asked}");
        assert_eq!(s.image_id, id, "asked {asked}");
        let l =
            d.rt.list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter { id: ctr.clone(), ..Default::default() }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(l[0].image.as_ref().unwrap().image, shown, "asked {asked}");
        assert_eq!(l[0].image_ref, repo_digest, "asked {asked}");
        assert_eq!(l[0].image_id, id, "asked {asked}");
    }
}

/// A `--state` of 200 characters: every socket under it (shim, io, console
/// sockets of a TTY container and of a terminal exec) is longer than
/// `sun_path` and still works, through a berthd restart.
#[tokio::test]
async fn a_200_character_state_folder_works() {
    use berth_streaming::client::{exit_code, Channels, ExecStream};
    use protocol::cri;
    use std::time::Duration;
    let probe = tempfile::Builder::new().prefix("b").tempdir_in("/tmp").unwrap();
    // The daemon's folder has the same length as this probe's.
    let pad = 200 - probe.path().as_os_str().len() - 1;
    drop(probe);
    let state = format!("{{dir}}/{}", "s".repeat(pad));
    let mut d = Daemon::start_full(&[], &["--state", &state]).await;
    let state = d.dir.path().join("s".repeat(pad));
    assert_eq!(state.as_os_str().len(), 200);
    let cfg = d.pod_config("long-state");
    let pod = d.run_pod(&cfg).await;
    let mut c = berth_tests::container_config("tty", &["sh", "-c", "echo up; sleep 100000"]);
    c.tty = true;
    c.stdin = true;
    let ctr = d.create_with(&pod, &cfg, c).await.unwrap();
    d.start_container(&ctr).await;
    d.wait_state(&ctr, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    assert!(state.join("sandboxes").join(&pod).join("shim.sock").exists());
    assert_eq!(d.exec_out(&ctr, &["echo", "sync"]).await, "sync");
    // A terminal exec: io.sock and an exec console socket.
    let url = d.exec_url(&ctr, &["sh", "-c", "tty >/dev/null && echo in-tty; exit 5"], true).await;
    let ch = Channels { stdout: true, tty: true, ..Default::default() };
    let (out, _, status) =
        ExecStream::connect(&url, berth_streaming::server::EXEC_PROTOCOLS, ch).await.unwrap().collect().await;
    assert!(String::from_utf8_lossy(&out).contains("in-tty"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(exit_code(&status), Some(5));
    // berthd finds its shims again.
    d.restart().await;
    assert_eq!(d.exec_out(&ctr, &["echo", "again"]).await, "again");
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
    assert_eq!(std::fs::read_dir(state.join("sandboxes")).unwrap().count(), 0);
}

/// Evented PLEG (kubelet's GetContainerEvents follower): every event carries
/// the pod's status with its metadata (kubelet drops it otherwise) and the
/// statuses of the pod's containers; the pod's own life comes as events with
/// its id; PodSandboxStatus, whenever it sets `timestamp`, lists the pod's
/// containers (kubelet then takes them from there instead of listing).
#[tokio::test]
async fn evented_pleg_sees_pods_and_containers_with_their_statuses() {
    use protocol::cri::{self, ContainerEventType as E, ContainerState as S};
    use std::time::Duration;
    let mut d = Daemon::start().await;
    let mut events = d.rt.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
    let cfg = d.pod_config("pleg");
    let pod = d.run_pod(&cfg).await;
    let ctr = d.create(&pod, &cfg, "c", &["sleep", "100000"]).await;
    d.start_container(&ctr).await;
    d.wait_state(&ctr, S::ContainerRunning, Duration::from_secs(10)).await;

    let r =
        d.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner();
    assert!(r.timestamp > 0);
    assert_eq!(r.containers_statuses.len(), 1, "{r:?}");
    assert_eq!(r.containers_statuses[0].id, ctr);
    assert_eq!(r.containers_statuses[0].state, S::ContainerRunning as i32);

    d.rt.stop_container(cri::StopContainerRequest { container_id: ctr.clone(), timeout: 0 }).await.unwrap();
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();

    let mut pod_events = Vec::new();
    let mut ctr_events = Vec::new();
    let mut last_at = 0;
    while !pod_events.contains(&(E::ContainerDeletedEvent as i32)) {
        let e = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("events stopped before the pod's deletion")
            .unwrap()
            .expect("event stream ended");
        let st = e.pod_sandbox_status.as_ref().expect("an event without the pod's status");
        assert_eq!(st.id, pod);
        assert_eq!(st.metadata.as_ref().expect("pod status without metadata").uid, "uid-pleg");
        assert!(e.created_at >= last_at, "events out of order");
        last_at = e.created_at;
        let listed: Vec<(String, i32)> = e.containers_statuses.iter().map(|c| (c.id.clone(), c.state)).collect();
        if e.container_id == pod {
            pod_events.push(e.container_event_type);
            if e.container_event_type == E::ContainerDeletedEvent as i32 {
                assert!(listed.is_empty(), "{listed:?}");
                assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
            }
        } else {
            assert_eq!(e.container_id, ctr);
            let t = e.container_event_type;
            let want = match t {
                t if t == E::ContainerCreatedEvent as i32 => Some(S::ContainerCreated),
                t if t == E::ContainerStartedEvent as i32 => Some(S::ContainerRunning),
                t if t == E::ContainerStoppedEvent as i32 => Some(S::ContainerExited),
                _ => None,
            };
            if let Some(want) = want {
                assert_eq!(listed, vec![(ctr.clone(), want as i32)], "event {t}");
            }
            ctr_events.push(t);
        }
    }
    assert_eq!(
        pod_events,
        [E::ContainerCreatedEvent, E::ContainerStartedEvent, E::ContainerStoppedEvent, E::ContainerDeletedEvent]
            .map(|e| e as i32)
    );
    assert_eq!(
        ctr_events,
        [E::ContainerCreatedEvent, E::ContainerStartedEvent, E::ContainerStoppedEvent, E::ContainerDeletedEvent]
            .map(|e| e as i32)
    );
}

/// Status advertises per runtime handler what works: recursive read-only
/// mounts when runc knows `rro` and the kernel has mount_setattr (5.12),
/// as containerd 2.x does; user namespaces when the kernel has overlayfs
/// on idmapped layers (5.19).
#[tokio::test]
async fn runtime_handlers_advertise_what_works() {
    let mut d = Daemon::start().await;
    let st = d.rt.status(protocol::cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let names: Vec<&str> = st.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "runc"]);
    let runc_rro = std::process::Command::new("runc")
        .arg("features")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"rro\""));
    let release = nix::sys::utsname::uname().unwrap().release().to_string_lossy().to_string();
    let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
    let kernel = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let kernel_ok = kernel >= (5, 12);
    for h in &st.runtime_handlers {
        let f = h.features.unwrap();
        assert_eq!(f.recursive_read_only_mounts, runc_rro && kernel_ok, "handler {:?}", h.name);
        assert_eq!(f.user_namespaces, kernel >= (5, 19), "handler {:?}", h.name);
    }
    // The handlers named there are the ones RunPodSandbox takes.
    for handler in names {
        let cfg = d.pod_config(&format!("handler-{}", if handler.is_empty() { "default" } else { handler }));
        d.rt.run_pod_sandbox(protocol::cri::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap();
    }
}

/// Both cgroup drivers: RuntimeConfig reports the configured one (kubelet
/// checks it against its own), a parent spelled for the other driver is
/// InvalidArgument saying which is configured, and with systemd the
/// container's cgroup is runc's `<slice>:berth:<id>` scope.
#[tokio::test]
async fn cgroup_drivers() {
    use protocol::cri;
    use std::time::Duration;
    let with_parent = |d: &Daemon, name: &str, parent: &str| {
        let mut cfg = d.pod_config(name);
        cfg.linux.as_mut().unwrap().cgroup_parent = parent.into();
        cfg
    };
    let mut d = Daemon::start().await;
    let rc = d.rt.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);
    let cfg = with_parent(&d, "slice-on-cgroupfs", "kubepods-besteffort-pod1.slice");
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("cgroup_driver is \"cgroupfs\""), "{e}");
    drop(d);

    let mut d = Daemon::start_full(&[], &["--cgroup-driver", "systemd"]).await;
    let rc = d.rt.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver, cri::CgroupDriver::Systemd as i32);
    let cfg = with_parent(&d, "path-on-systemd", "/kubepods/besteffort/pod1");
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("cgroup_driver is \"systemd\""), "{e}");
    assert!(d.pods().await.is_empty());

    let slice = format!("berthtest{}.slice", std::process::id());
    let cfg = with_parent(&d, "in-a-slice", &slice);
    let pod = d.run_pod(&cfg).await;
    let created = d.create_with(&pod, &cfg, berth_tests::container_config("c", &["sleep", "100000"])).await;
    if std::path::Path::new("/run/systemd/system").exists() {
        let c = created.unwrap();
        d.start_container(&c).await;
        d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
        let pid = d.container_pid(&c).await;
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.contains(&format!("{slice}/berth-{c}.scope")), "{cg}");
    } else {
        berth_tests::skip(true, "systemd is not running on this host, so containers in systemd slices were not started; checked that runc was asked for its systemd driver");
        // runc creates the container at StartContainer: the start fails and
        // ends the container, which then removes cleanly.
        let c = created.unwrap();
        let e = d.rt.start_container(cri::StartContainerRequest { container_id: c.clone() }).await.unwrap_err();
        assert!(e.message().to_lowercase().contains("systemd") || e.message().to_lowercase().contains("dbus"), "{e}");
        let st = d.status(&c).await;
        assert_eq!((st.state, st.reason.as_str()), (cri::ContainerState::ContainerExited as i32, "StartError"));
        d.rt.remove_container(cri::RemoveContainerRequest { container_id: c }).await.unwrap();
        let list = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner();
        assert!(list.containers.is_empty(), "a failed start left a container");
    }
}
