//! RunPodSandbox failing at each step: whatever step fails, no record, no
//! folder, no name and no network is left, the shim that was started is
//! ended, and the same pod can be run again at once.
use std::sync::atomic::Ordering;

use berth_core::error::Kind;

use super::*;

#[derive(Clone, Copy, Debug)]
enum Fault {
    ShimStart,
    ShimRefuses,
    NetworkAdd,
}

struct Row {
    fault: Fault,
    kind: Kind,
    /// What the pod network saw, in order (DEL runs whether or not ADD
    /// did: it is idempotent, and a crash could have come after ADD).
    network: &'static [&'static str],
    /// Whether the shim was asked to shut down (else it is ended by pid,
    /// or there was none).
    shutdown: bool,
    /// Whether its pid was killed.
    killed: bool,
}

const ROWS: &[Row] = &[
    Row { fault: Fault::ShimStart, kind: Kind::Internal, network: &["DEL"], shutdown: false, killed: false },
    Row { fault: Fault::ShimRefuses, kind: Kind::FailedPrecondition, network: &["DEL"], shutdown: false, killed: true },
    Row { fault: Fault::NetworkAdd, kind: Kind::Internal, network: &["ADD", "DEL"], shutdown: true, killed: false },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_pod_sandbox_leaves_nothing_behind() {
    for row in ROWS {
        let rig = Rig::new();
        let (m, _) = rig.open().await;
        let flag = match row.fault {
            Fault::ShimStart => &rig.shims.fail_start,
            Fault::ShimRefuses => &rig.shims.refuse_new,
            Fault::NetworkAdd => &rig.net.fail_add,
        };
        flag.store(true, Ordering::SeqCst);
        let err = m.run_pod_sandbox(pod("p"), "").await.expect_err("the step fails");
        assert_eq!(err.kind, row.kind, "{:?}: {}", row.fault, err.message);

        let net: Vec<String> = rig.net.calls().iter().map(|c| c.split(' ').next().unwrap_or("").to_string()).collect();
        assert_eq!(net, row.network, "{:?}: network calls", row.fault);
        assert!(m.list_pod_sandboxes(None).await.expect("list").is_empty(), "{:?}: a pod is listed", row.fault);
        assert!(
            m.sandbox_store.load_all::<super::super::SandboxMeta>().expect("records").is_empty(),
            "{:?}",
            row.fault
        );
        assert_eq!(rig.sandbox_dirs(), 0, "{:?}: a sandbox folder is left", row.fault);
        let host = rig.host.calls();
        assert!(
            host.iter().any(|c| c.starts_with("release ")),
            "{:?}: namespace pins not released: {host:?}",
            row.fault
        );
        assert_eq!(host.iter().any(|c| c.starts_with("kill ")), row.killed, "{:?}: {host:?}", row.fault);
        if !matches!(row.fault, Fault::ShimStart) {
            let shim_calls: Vec<String> = rig.shims.all().into_iter().flat_map(|s| s.calls()).collect();
            assert_eq!(shim_calls.iter().any(|c| c == "Shutdown"), row.shutdown, "{:?}: {shim_calls:?}", row.fault);
        }

        // The name is free and nothing blocks a retry.
        flag.store(false, Ordering::SeqCst);
        let id = m.run_pod_sandbox(pod("p"), "").await.expect("the retry runs the pod");
        assert_eq!(m.list_pod_sandboxes(None).await.expect("list").len(), 1);
        m.stop_pod_sandbox(&id).await.expect("stop");
        m.remove_pod_sandbox(&id).await.expect("remove");
        assert_eq!(rig.sandbox_dirs(), 0);
    }
}
