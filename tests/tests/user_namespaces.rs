//! User namespaces (KEP-127, kubelet's `hostUsers: false`): a pod with
//! mode POD runs in a user namespace of its own that owns its other
//! namespaces; its container's root is a host id of the pod's range, yet
//! sees its root filesystem and volumes as its own (idmapped mounts) and
//! writes them as the node's root would. What the CRI refuses is
//! InvalidArgument and changes nothing.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use berth_tests::{bin_dir, container_config, counts, skip, Daemon};
use protocol::cri;
use tonic::Code;

/// The pod's range on the node: kubelet hands out multiples of 65536.
const HOST_ID: u32 = 65536 * 7;

fn userns(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace { mode: mode as i32, uids, gids }
}

fn range(host_id: u32, container_id: u32, length: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping { host_id, container_id, length }]
}

fn pod_userns() -> cri::UserNamespace {
    userns(cri::NamespaceMode::Pod, range(HOST_ID, 0, 65536), range(HOST_ID, 0, 65536))
}

fn with_userns(cfg: &mut cri::PodSandboxConfig, u: cri::UserNamespace) {
    let sc = cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).userns_options = Some(u);
}

async fn advertised(d: &mut Daemon) -> bool {
    let st = d.rt.status(cri::StatusRequest { verbose: false }).await.expect("status").into_inner();
    st.runtime_handlers.iter().all(|h| h.features.is_some_and(|f| f.user_namespaces))
}

fn host_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("container status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    line.split_whitespace().nth(1).and_then(|u| u.parse().ok()).expect("a uid")
}

fn ns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).ino()
}

#[tokio::test]
async fn a_pod_runs_in_its_own_user_namespace_with_idmapped_root_and_volumes() {
    let mut d = Daemon::start().await;
    if !advertised(&mut d).await {
        skip(false, "this kernel lacks overlayfs on idmapped layers (Linux 5.19): user namespaced pods are refused");
        return;
    }
    // berthctl info shows what the runtime handlers advertise.
    let info = std::process::Command::new(bin_dir().join("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .arg("info")
        .output()
        .expect("run berthctl");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("berthctl info prints JSON");
    let handlers = info["runtimeHandlers"].as_array().cloned().unwrap_or_default();
    assert_eq!(handlers.len(), 2, "{info}");
    assert!(handlers.iter().all(|h| h["features"]["userNamespaces"] == true), "{info}");
    let volume = d.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(volume.join("from-node"), "node\n").unwrap();

    let mut cfg = d.pod_config("userns");
    with_userns(&mut cfg, pod_userns());
    let pod = d.run_pod(&cfg).await;

    // A volume that cannot be idmapped (sysfs) and a propagating one are
    // refused before anything is made.
    let refused = [
        (cri::Mount { container_path: "/sys-fs".into(), host_path: "/sys/fs".into(), ..Default::default() }, "/sys-fs"),
        (
            cri::Mount {
                container_path: "/shared".into(),
                host_path: volume.display().to_string(),
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            },
            "private",
        ),
    ];
    for (m, want) in refused {
        let mut cc = container_config("refused", &["true"]);
        cc.mounts = vec![m];
        let e = d.create_with(&pod, &cfg, cc).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }
    assert_eq!(counts(&mut d).await, (1, 0));
    assert!(d.mounts().iter().all(|m| !m.contains("/s/containers/")), "{:?}", d.mounts());

    let mut cc = container_config("c", &["sleep", "100000"]);
    cc.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: volume.display().to_string(),
        ..Default::default()
    }];
    // As kubelet sends it: the container's options name the pod's.
    let sc = cc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).userns_options = Some(pod_userns());
    sc.capabilities = Some(cri::Capability { add_capabilities: vec!["NET_ADMIN".into()], ..Default::default() });
    let c = d.create_with(&pod, &cfg, cc).await.expect("a user namespaced container is created");
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;

    // Root inside, a host id of the pod's range outside.
    assert_eq!(
        d.exec_out(&c, &["cat", "/proc/self/uid_map"]).await.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_ID.to_string(), "65536"]
    );
    assert_eq!(d.exec_out(&c, &["id", "-u"]).await, "0");
    let pid = d.container_pid(&c).await;
    assert_eq!(host_uid(pid), HOST_ID, "the container's root is no root of the node");

    // The pod's user namespace is the pinned one, and it owns the pod's
    // network namespace: the container's root, given NET_ADMIN (which
    // counts only in namespaces its user namespace owns), configures it.
    let pins = d.dir.path().join("s/sandboxes").join(&pod).join("ns");
    assert_eq!(ns_inode(Path::new(&format!("/proc/{pid}/ns/user"))), ns_inode(&pins.join("user")));
    assert_eq!(ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))), ns_inode(&pins.join("net")));
    assert_ne!(ns_inode(Path::new("/proc/self/ns/user")), ns_inode(&pins.join("user")));
    let r = d.exec(&c, &["ip", "link", "set", "lo", "mtu", "1500"], 10).await.expect("exec");
    assert_eq!(r.exit_code, 0, "root of the pod's namespace: {}", String::from_utf8_lossy(&r.stderr));

    // The root filesystem's layers are idmapped: the image's files are
    // root's; what root writes is kept with the pod's host ids, as
    // containerd keeps it.
    assert_eq!(d.exec_out(&c, &["stat", "-c", "%u:%g", "/etc/passwd"]).await, "0:0");
    assert_eq!(d.exec_out(&c, &["sh", "-c", "echo w > /written && stat -c %u /written"]).await, "0");
    let upper = d.dir.path().join("r/containers").join(&c).join("upper/written");
    assert_eq!(std::fs::metadata(&upper).expect("the write is in the upper layer").uid(), HOST_ID);

    // So is the volume: the node's root's files are the container's root's,
    // and ids inside map back to the same ids on disk.
    assert_eq!(d.exec_out(&c, &["stat", "-c", "%u", "/data/from-node"]).await, "0");
    d.exec_out(&c, &["sh", "-c", "echo c > /data/from-pod && chown 1000:1000 /data/from-pod"]).await;
    let written = std::fs::metadata(volume.join("from-pod")).expect("the container wrote the volume");
    assert_eq!((written.uid(), written.gid()), (1000, 1000));

    // The status says what the pod asked for.
    let st = d.pod_status(&pod).await;
    let options = st.linux.and_then(|l| l.namespaces).and_then(|n| n.options).unwrap_or_default();
    assert_eq!(options.userns_options.map(|u| u.mode), Some(cri::NamespaceMode::Pod as i32));

    // berthd restarts and knows the container; it still runs and execs.
    d.kill9();
    d.restart().await;
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(d.exec_out(&c, &["id", "-u"]).await, "0");

    // Removal leaves no mount, pin or folder, and the volume's files stay.
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop");
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("remove");
    assert_eq!(d.mounts(), Vec::<String>::new());
    assert_eq!(d.leftovers(), Vec::<std::path::PathBuf>::new());
    assert_eq!(std::fs::read_to_string(volume.join("from-node")).unwrap(), "node\n");
    assert_eq!(std::fs::read_to_string(volume.join("from-pod")).unwrap(), "c\n");
}

/// What the CRI refuses (modes CONTAINER and TARGET, more than one
/// mapping, container id 0 unmapped) is InvalidArgument and leaves
/// nothing; so is a pod that would share the node's network, and a
/// container that asks for another user namespace than its pod's, or for
/// the node's pid namespace in a user namespaced pod. The node's (NODE)
/// runs.
#[tokio::test]
async fn user_namespaces_the_cri_refuses_are_invalid_argument() {
    let mut d = Daemon::start().await;
    let good = || range(HOST_ID, 0, 65536);
    let mut cases = vec![
        (userns(cri::NamespaceMode::Container, good(), good()), "mode CONTAINER"),
        (userns(cri::NamespaceMode::Target, good(), good()), "mode TARGET"),
        (
            userns(
                cri::NamespaceMode::Pod,
                vec![cri::IdMapping { host_id: HOST_ID, container_id: 0, length: 1 }; 2],
                good(),
            ),
            "exactly one uid mapping",
        ),
        (userns(cri::NamespaceMode::Pod, range(HOST_ID, 1, 65535), good()), "container id 0"),
        (userns(cri::NamespaceMode::Pod, good(), range(0, 0, 65536)), "node's root"),
    ];
    if !advertised(&mut d).await {
        cases.push((pod_userns(), "cannot give"));
    }
    for (i, (u, want)) in cases.into_iter().enumerate() {
        let mut cfg = d.pod_config(&format!("userns-{i}"));
        with_userns(&mut cfg, u);
        let e =
            d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() })
                .await
                .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }
    let mut cfg = d.pod_config("userns-host-network");
    with_userns(&mut cfg, pod_userns());
    let sc = cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.namespace_options.as_mut().unwrap().network = cri::NamespaceMode::Node as i32;
    let e = d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() }).await;
    assert_eq!(e.expect_err("refused").code(), Code::InvalidArgument);
    assert_eq!(counts(&mut d).await, (0, 0), "a refused pod left something");
    assert_eq!(d.leftovers(), Vec::<std::path::PathBuf>::new());

    let mut cfg = d.pod_config("userns-node");
    with_userns(&mut cfg, userns(cri::NamespaceMode::Node, vec![], vec![]));
    let pod = d.run_pod(&cfg).await;
    let mut cc = container_config("c", &["sleep", "1000"]);
    let sc = cc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).userns_options = Some(pod_userns());
    let e = d.create_with(&pod, &cfg, cc).await.expect_err("a container's own user namespace is refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("user namespace"), "{}", e.message());
    assert_eq!(counts(&mut d).await, (1, 0));
    let c = d.create(&pod, &cfg, "plain", &["sleep", "1000"]).await;
    d.start_container(&c).await;

    if !advertised(&mut d).await {
        return;
    }
    // A container of a user namespaced pod that asks for the node's pid
    // namespace is refused as its pod would be, not run with it.
    let mut cfg = d.pod_config("userns-pod");
    with_userns(&mut cfg, pod_userns());
    let pod = d.run_pod(&cfg).await;
    let mut cc = container_config("host-pid", &["sleep", "1000"]);
    let sc = cc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    let ns = sc.namespace_options.get_or_insert_with(Default::default);
    ns.userns_options = Some(pod_userns());
    ns.pid = cri::NamespaceMode::Node as i32;
    let e = d.create_with(&pod, &cfg, cc).await.expect_err("the node's pid namespace is refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("node's pid namespace"), "{}", e.message());
    assert_eq!(counts(&mut d).await, (2, 1), "a refused container left something");
}

/// berthd killed while a user namespaced container with a volume is being
/// created (its idmapped rootfs and volume mounted) or removed: after a
/// restart no half container is listed, no mount of it remains, the
/// volume's files are untouched (a removal never reaches through a mount
/// left in the bundle), and the retry works.
#[tokio::test]
async fn a_crash_mid_create_or_remove_leaves_no_idmapped_mount_and_the_volume_whole() {
    for step in ["create-container/bundle-written", "remove-container/deleted"] {
        let mut d = Daemon::start_with(&[("BERTH_FAILPOINT", step)]).await;
        if !advertised(&mut d).await {
            skip(false, "this kernel lacks overlayfs on idmapped layers (Linux 5.19)");
            return;
        }
        let volume = d.dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("keep"), "kept\n").unwrap();
        let mut cfg = d.pod_config("userns-crash");
        with_userns(&mut cfg, pod_userns());
        let pod = d.run_pod(&cfg).await;
        let config = || {
            let mut cc = container_config("c", &["sleep", "100000"]);
            cc.mounts = vec![cri::Mount {
                container_path: "/data".into(),
                host_path: volume.display().to_string(),
                ..Default::default()
            }];
            cc
        };
        let created = d.create_with(&pod, &cfg, config()).await;
        let c = if step.starts_with("create") {
            assert!(created.is_err(), "{step}: berthd should have died");
            assert!(d.wait_exited(Duration::from_secs(5)).await, "{step}: berthd did not die");
            d.restart().await;
            assert_eq!(counts(&mut d).await, (1, 0), "{step}: a half-made container is listed");
            assert!(d.mounts().iter().all(|m| !m.contains("/s/containers/")), "{step}: {:?}", d.mounts());
            d.create_with(&pod, &cfg, config()).await.expect("the retry creates it")
        } else {
            let c = created.expect("created");
            let r = d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await;
            assert!(r.is_err(), "{step}: berthd should have died");
            assert!(d.wait_exited(Duration::from_secs(5)).await, "{step}: berthd did not die");
            d.restart().await;
            assert_eq!(counts(&mut d).await, (1, 0), "{step}: the removal was not finished");
            c
        };
        assert_eq!(std::fs::read_to_string(volume.join("keep")).unwrap(), "kept\n", "{step}: the volume lost a file");
        let _ = d.rt.remove_container(cri::RemoveContainerRequest { container_id: c }).await;
        d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop");
        d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("remove");
        assert_eq!(d.mounts(), Vec::<String>::new(), "{step}");
        assert_eq!(d.leftovers(), Vec::<std::path::PathBuf>::new(), "{step}");
        assert_eq!(std::fs::read_to_string(volume.join("keep")).unwrap(), "kept\n", "{step}");
    }
}
