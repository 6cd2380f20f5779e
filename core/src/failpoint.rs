//! Failpoints: `BERTH_FAILPOINT=<step>` makes berthd kill itself with
//! SIGKILL when it reaches that step, exactly as `kill -9` between two side
//! effects would. Tests use them to prove every step is recoverable.
use std::sync::OnceLock;

/// Every step a failpoint can name, in the order the calls reach them.
pub const STEPS: &[&str] = &[
    "run-pod-sandbox/recorded",
    "run-pod-sandbox/files-written",
    "run-pod-sandbox/shim-started",
    "run-pod-sandbox/network-added",
    "create-container/recorded",
    "create-container/rootfs-mounted",
    "create-container/bundle-written",
    "create-container/shim-created",
    "start-container/before-start",
    "stop-container/signalled",
    "stop-pod-sandbox/containers-stopped",
    "stop-pod-sandbox/network-released",
    "remove-container/recorded",
    "remove-container/stopped",
    "remove-container/deleted",
    "remove-container/files-removed",
    "remove-pod-sandbox/recorded",
    "remove-pod-sandbox/containers-removed",
    "remove-pod-sandbox/dir-removed",
    "remove-pod-sandbox/shim-stopped",
    "update-container/applied",
    "rotate-log/renamed",
    "pull-image/blob-stored",
    "pull-image/layers-unpacked",
    "remove-image/recorded",
    "remove-image/collecting",
];

fn configured() -> Option<&'static str> {
    static STEP: OnceLock<Option<String>> = OnceLock::new();
    STEP.get_or_init(|| std::env::var("BERTH_FAILPOINT").ok().filter(|s| !s.is_empty())).as_deref()
}

/// Dies here if the failpoint names `step`.
pub fn hit(step: &str) {
    debug_assert!(STEPS.contains(&step), "unknown failpoint {step}");
    if configured() == Some(step) {
        eprintln!("berthd: failpoint {step} reached, killing myself");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
