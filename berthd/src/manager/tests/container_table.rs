//! Containers across a crash, and CreateContainer failing in its last
//! step: a container left Creating is rolled back and one left Removing is
//! removed, whether its pod's shim answers, hangs or is gone; a Ready one keeps
//! its state, or is Exited (ShimGone) with its shim gone. A failed create
//! leaves no record, mount, bundle, writable layer or name.
use std::sync::atomic::Ordering;

use super::super::{ContainerMeta, Phase};
use super::doubles::Mode;
use super::*;

const IMAGE: &str = "docker.io/tables/img:1";

struct Row {
    phase: Phase,
    shim: Mode,
    /// The container's state afterwards; None: it is gone.
    after: Option<cri::ContainerState>,
    /// Recovery's rolled back and finished removals.
    counts: [usize; 2],
    /// How it was deleted: through the shim, or runc run directly.
    shim_delete: bool,
    runtime_delete: bool,
}

use cri::ContainerState::{ContainerCreated as Created, ContainerExited as Exited};
use Mode::{Answering, Dead, Hung};

#[rustfmt::skip]
const ROWS: &[Row] = &[
    Row { phase: Phase::Creating, shim: Answering, after: None, counts: [1, 0], shim_delete: true, runtime_delete: false },
    Row { phase: Phase::Creating, shim: Dead, after: None, counts: [1, 0], shim_delete: false, runtime_delete: true },
    Row { phase: Phase::Creating, shim: Hung, after: None, counts: [1, 0], shim_delete: false, runtime_delete: true },
    Row { phase: Phase::Ready, shim: Answering, after: Some(Created), counts: [0, 0], shim_delete: false, runtime_delete: false },
    Row { phase: Phase::Ready, shim: Dead, after: Some(Exited), counts: [0, 0], shim_delete: false, runtime_delete: false },
    Row { phase: Phase::Ready, shim: Hung, after: Some(Exited), counts: [0, 0], shim_delete: false, runtime_delete: false },
    Row { phase: Phase::Removing, shim: Answering, after: None, counts: [0, 1], shim_delete: true, runtime_delete: false },
    Row { phase: Phase::Removing, shim: Dead, after: None, counts: [0, 1], shim_delete: false, runtime_delete: true },
    Row { phase: Phase::Removing, shim: Hung, after: None, counts: [0, 1], shim_delete: false, runtime_delete: true },
];

async fn run(row: &Row) -> Result<(), String> {
    let what = format!("{:?} container, shim {:?}", row.phase, row.shim);
    let rig = Rig::new();
    let (m, _) = rig.open().await;
    image(&m, &rig.dir.path().join("layout"), IMAGE).await;
    let pod_id = m.run_pod_sandbox(pod("p"), "").await.map_err(|e| format!("{what}: RunPodSandbox: {e}"))?;
    let id = m.create_container(&pod_id, container("c", IMAGE)).await.map_err(|e| format!("{what}: create: {e}"))?;
    let mut meta: ContainerMeta = m.container(&id).map_err(|e| e.to_string())?;
    meta.phase = row.phase;
    m.container_store.put(&id, &meta).await.map_err(|e| e.to_string())?;
    drop(m);
    let shim = rig.shims.of(&pod_id);
    shim.set(row.shim);
    let before = shim.calls().len();

    let (m, r) = rig.open().await;
    let mut wrong = Vec::new();
    if [r.rolled_back, r.finished_removals] != row.counts {
        wrong.push(format!(
            "rolled back {}, removals finished {}, want {:?}",
            r.rolled_back, r.finished_removals, row.counts
        ));
    }
    match (row.after, m.container_status(&id, false).await) {
        (Some(want), Ok((st, _))) if st.state == want as i32 => {}
        (Some(want), Ok((st, _))) => wrong.push(format!("state {:?}, want {want:?}", st.state())),
        (Some(_), Err(e)) => wrong.push(format!("container gone: {e}")),
        (None, Ok(_)) => wrong.push("container still there".into()),
        (None, Err(_)) => {
            if !m.container_store.load_all::<ContainerMeta>().map_err(|e| e.to_string())?.is_empty() {
                wrong.push("its record is left".into());
            }
            let state_dir = rig.dir.path().join("state/containers").join(&id);
            let layer_dir = rig.dir.path().join("root/containers").join(&id);
            if state_dir.exists() || layer_dir.exists() {
                wrong.push("its bundle or writable layer is left".into());
            }
            if !rig.host.calls().iter().any(|c| *c == format!("unmount {}", state_dir.join("rootfs").display())) {
                wrong.push("its rootfs was not unmounted".into());
            }
        }
    }
    let calls = shim.calls()[before..].to_vec();
    if calls.iter().any(|c| *c == format!("Delete {id}")) != row.shim_delete {
        wrong.push(format!("shim calls {calls:?}, Delete expected: {}", row.shim_delete));
    }
    let direct = rig.host.calls().iter().any(|c| *c == format!("runtime delete --force {id}"));
    if direct != row.runtime_delete {
        wrong.push(format!("runc delete run directly: {direct}, want {}", row.runtime_delete));
    }
    verdict(&what, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_after_a_crash_in_every_phase() {
    all_rows(ROWS, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_container_leaves_nothing_behind() {
    let rig = Rig::new();
    let (m, _) = rig.open().await;
    image(&m, &rig.dir.path().join("layout"), IMAGE).await;
    let pod_id = m.run_pod_sandbox(pod("p"), "").await.expect("pod");
    let shim = rig.shims.of(&pod_id);
    shim.fail_create.store(true, Ordering::SeqCst);
    let e = m.create_container(&pod_id, container("c", IMAGE)).await.expect_err("runc create fails");
    assert!(e.message.contains("runc create failed"), "{}", e.message);
    assert!(m.list_containers(None).await.expect("list").is_empty());
    assert!(m.container_store.load_all::<ContainerMeta>().expect("records").is_empty());
    for d in ["state/containers", "root/containers"] {
        let left = std::fs::read_dir(rig.dir.path().join(d)).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{d} keeps a folder");
    }
    let host = rig.host.calls();
    let mounted: Vec<&String> = host.iter().filter(|c| c.starts_with("mount ")).collect();
    assert_eq!(mounted.len(), 1, "{host:?}");
    let target = mounted[0].trim_start_matches("mount ");
    assert!(host.iter().any(|c| *c == format!("unmount {target}")), "the rootfs stays mounted: {host:?}");
    // The name is free again.
    shim.fail_create.store(false, Ordering::SeqCst);
    m.create_container(&pod_id, container("c", IMAGE)).await.expect("the retry creates it");
}

/// An image mounted as a volume is the container's while it exists:
/// RemoveImage takes its name, not its layers; they go with the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_volume_keeps_its_layers_until_the_container_goes() {
    const VOLUME: &str = "docker.io/tables/volume:1";
    let rig = Rig::new();
    let (m, _) = rig.open().await;
    image(&m, &rig.dir.path().join("layout"), IMAGE).await;
    image(&m, &rig.dir.path().join("volume-layout"), VOLUME).await;
    let layer = m.image(VOLUME).await.expect("imported").layers[0].clone();
    let snapshot = m.with_image_store(move |s| Ok(s.snapshot_path(&layer)?)).await.expect("snapshot path");
    let pod_id = m.run_pod_sandbox(pod("p"), "").await.expect("pod");
    let mut cc = container("c", IMAGE);
    cc.mounts = vec![cri::Mount {
        container_path: "/mnt/v".into(),
        image: Some(cri::ImageSpec { image: VOLUME.into(), ..Default::default() }),
        readonly: true,
        ..Default::default()
    }];
    let id = m.create_container(&pod_id, cc).await.expect("created with an image volume");
    assert!(rig.host.calls().iter().any(|c| c.starts_with("mount-ro ") && c.contains(&id)), "{:?}", rig.host.calls());

    m.remove_image(VOLUME).await.expect("RemoveImage");
    assert!(m.image(VOLUME).await.is_none(), "the name is gone");
    assert!(snapshot.is_dir(), "the layer a container mounts was collected");

    m.remove_container(&id).await.expect("remove");
    assert!(!snapshot.exists(), "the layer outlived its last user");
    assert!(
        rig.host.calls().iter().any(|c| c.starts_with("unmount ") && c.contains("image-volumes")),
        "{:?}",
        rig.host.calls()
    );
}
