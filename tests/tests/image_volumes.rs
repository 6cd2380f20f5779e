//! Image volumes (KEP-4639): a CRI Mount naming an image mounts that
//! image's files read-only in the container, or one folder of them
//! (`image_sub_path`); what cannot work is refused and changes nothing.
use std::time::Duration;

use berth_tests::{container_config, Daemon, TEST_IMAGE};
use protocol::cri;
use tonic::Code;

fn volume(path: &str, image: &str, sub_path: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        image_sub_path: sub_path.into(),
        readonly,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_image_is_mounted_read_only_whole_or_by_sub_path() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("image-volumes");
    let pod = d.run_pod(&cfg).await;
    let mut cc = container_config("c", &["sleep", "100000"]);
    cc.mounts = vec![volume("/mnt/image", TEST_IMAGE, "", true), volume("/mnt/etc", TEST_IMAGE, "etc", true)];
    let c = d.create_with(&pod, &cfg, cc).await.expect("a container with image volumes is created");
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;

    assert!(d.exec_out(&c, &["cat", "/mnt/etc/passwd"]).await.contains("root:x:0:0"));
    assert_eq!(d.exec_out(&c, &["sh", "-c", "test -x /mnt/image/bin/busybox && echo yes"]).await, "yes");
    let w = d.exec(&c, &["touch", "/mnt/image/new-file"], 10).await.expect("exec");
    assert_ne!(w.exit_code, 0, "an image volume is read-only");
    assert!(String::from_utf8_lossy(&w.stderr).contains("Read-only"), "{}", String::from_utf8_lossy(&w.stderr));

    // ContainerStatus says which image and which folder of it.
    let st = d.status(&c).await;
    let m = st.mounts.iter().find(|m| m.container_path == "/mnt/etc").expect("the volume is in the status");
    assert_eq!(m.image.as_ref().map(|i| i.image.as_str()), Some(TEST_IMAGE));
    assert_eq!(m.image_sub_path, "etc");

    // Removed with the container: no mount of it is left.
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.expect("stop");
    d.rt.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.expect("remove");
    let left: Vec<String> = d.mounts().into_iter().filter(|m| m.contains(&c)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[tokio::test]
async fn image_volumes_that_cannot_work_are_refused() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("bad-image-volumes");
    let pod = d.run_pod(&cfg).await;
    let cases = [
        (volume("/mnt/v", TEST_IMAGE, "", false), Code::InvalidArgument, "read-only"),
        (volume("/mnt/v", TEST_IMAGE, "no/such/folder", true), Code::InvalidArgument, "no/such/folder"),
        (volume("/mnt/v", TEST_IMAGE, "../..", true), Code::InvalidArgument, "../.."),
        (volume("/mnt/v", TEST_IMAGE, "/etc", true), Code::InvalidArgument, "relative"),
        (volume("/mnt/v", "docker.io/library/never-pulled:1", "", true), Code::NotFound, "never-pulled"),
    ];
    for (m, code, says) in cases {
        let mut cc = container_config("c", &["sleep", "100000"]);
        cc.mounts = vec![m.clone()];
        let e = d.create_with(&pod, &cfg, cc).await.expect_err("refused");
        assert_eq!(e.code(), code, "{m:?}: {}", e.message());
        assert!(e.message().contains(says), "{m:?}: {}", e.message());
    }
    let listed = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.expect("list");
    assert!(listed.into_inner().containers.is_empty(), "a refused create left a container");
    let left: Vec<String> = d.mounts().into_iter().filter(|m| m.contains("/containers/")).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    // The name was not kept by any refusal.
    d.create(&pod, &cfg, "c", &["true"]).await;
}
