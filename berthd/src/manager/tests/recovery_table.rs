//! Recovery after a crash, for a pod in each phase a crash can leave it in,
//! with its shim answering, dead, refusing (another API version) or hung.
use super::super::{Phase, SandboxMeta};
use super::doubles::Mode;
use super::*;

struct Row {
    phase: Phase,
    shim: Mode,
    /// Recovery's counts: recovered, lost, rolled back, removals finished.
    counts: [usize; 4],
    /// The pod's state afterwards; None: it is gone (record, folder, name).
    after: Option<cri::PodSandboxState>,
    /// Whether the shim was asked to shut down / its pid was killed.
    shutdown: bool,
    killed: bool,
    /// Whether CNI DEL ran.
    network_released: bool,
}

use cri::PodSandboxState::{SandboxNotready as NotReady, SandboxReady as Ready};
use Mode::{Answering, Dead, Hung, Refusing};

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // A pod half-created is rolled back, whatever its shim does.
    Row { phase: Phase::Creating, shim: Answering, counts: [0, 0, 1, 0], after: None, shutdown: true, killed: false, network_released: true },
    Row { phase: Phase::Creating, shim: Dead, counts: [0, 0, 1, 0], after: None, shutdown: false, killed: false, network_released: true },
    Row { phase: Phase::Creating, shim: Refusing, counts: [0, 0, 1, 0], after: None, shutdown: false, killed: true, network_released: true },
    Row { phase: Phase::Creating, shim: Hung, counts: [0, 0, 1, 0], after: None, shutdown: false, killed: true, network_released: true },
    // A ready pod keeps running with its shim; without one it is NotReady.
    Row { phase: Phase::Ready, shim: Answering, counts: [1, 0, 0, 0], after: Some(Ready), shutdown: false, killed: false, network_released: false },
    Row { phase: Phase::Ready, shim: Dead, counts: [0, 1, 0, 0], after: Some(NotReady), shutdown: false, killed: false, network_released: false },
    // Another berthd's shim is left alone, and its pod says why.
    Row { phase: Phase::Ready, shim: Refusing, counts: [0, 1, 0, 0], after: Some(NotReady), shutdown: false, killed: false, network_released: false },
    Row { phase: Phase::Ready, shim: Hung, counts: [0, 1, 0, 0], after: Some(NotReady), shutdown: false, killed: false, network_released: false },
    // A removal cut short is finished.
    Row { phase: Phase::Removing, shim: Answering, counts: [1, 0, 0, 1], after: None, shutdown: true, killed: false, network_released: true },
    Row { phase: Phase::Removing, shim: Dead, counts: [0, 1, 0, 1], after: None, shutdown: false, killed: false, network_released: true },
    Row { phase: Phase::Removing, shim: Hung, counts: [0, 1, 0, 1], after: None, shutdown: false, killed: true, network_released: true },
];

async fn run(row: &Row) -> Result<(), String> {
    let what = format!("{:?} pod, shim {:?}", row.phase, row.shim);
    let rig = Rig::new();
    let (m, _) = rig.open().await;
    let id = m.run_pod_sandbox(pod("p"), "").await.map_err(|e| format!("{what}: RunPodSandbox: {e}"))?;
    // The crash: the record says `phase`, the shim is as the row says.
    let mut meta: SandboxMeta = super::super::lock(&m.sandbox(&id).map_err(|e| e.to_string())?.meta).clone();
    meta.phase = row.phase;
    m.sandbox_store.put(&id, &meta).await.map_err(|e| e.to_string())?;
    drop(m);
    let shim = rig.shims.of(&id);
    shim.set(row.shim);
    let before_shim = shim.calls().len();
    let before_net = rig.net.calls().len();

    let (m, r) = rig.open().await;
    let counts = [r.recovered, r.lost, r.rolled_back, r.finished_removals];
    let mut wrong = Vec::new();
    if counts != row.counts {
        wrong.push(format!("counts {counts:?}, want {:?}", row.counts));
    }
    match (row.after, m.pod_sandbox_status(&id, false).await) {
        (Some(want), Ok((st, _))) if st.state == want as i32 => {}
        (Some(want), Ok((st, _))) => wrong.push(format!("state {:?}, want {want:?}", st.state())),
        (Some(_), Err(e)) => wrong.push(format!("pod gone: {e}")),
        (None, Ok(_)) => wrong.push("pod still there".into()),
        (None, Err(_)) => {
            if rig.sandbox_dirs() != 0 {
                wrong.push("its folder is left".into());
            }
            if !m.sandbox_store.load_all::<SandboxMeta>().map_err(|e| e.to_string())?.is_empty() {
                wrong.push("its record is left".into());
            }
            if m.run_pod_sandbox(pod("p"), "").await.is_err() {
                wrong.push("its name is still taken".into());
            }
        }
    }
    let shim_calls = shim.calls()[before_shim..].to_vec();
    if shim_calls.iter().any(|c| c == "Shutdown") != row.shutdown {
        wrong.push(format!("shim calls {shim_calls:?}, shutdown expected: {}", row.shutdown));
    }
    let killed = rig.host.calls().iter().any(|c| *c == format!("kill {}", meta.shim_pid));
    if killed != row.killed {
        wrong.push(format!("shim pid killed: {killed}, want {}", row.killed));
    }
    let released = rig.net.calls()[before_net..].iter().any(|c| *c == format!("DEL {id}"));
    if released != row.network_released {
        wrong.push(format!("CNI DEL: {released}, want {}", row.network_released));
    }
    verdict(&what, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_after_a_crash_in_every_phase_with_every_kind_of_shim() {
    all_rows(ROWS, run).await;
}
