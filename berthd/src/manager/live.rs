//! The live view of a pod: its record beside its shim handle, and what a shim
//! says (or cannot say) of a container's state.
use super::*;

/// What one pod's shim says of its containers.
pub(super) enum ShimView {
    /// It answered: its containers' states.
    Listed(HashMap<String, RuntimeState>),
    /// It runs but does not answer (the error it gave).
    Silent(String),
    /// It is gone (since then, unix nanoseconds).
    Gone(i64),
}

impl ShimView {
    /// A container's state; None when the shim answered without it.
    pub(super) fn state_of(&self, sandbox_id: &str, id: &str) -> Option<RuntimeState> {
        match self {
            ShimView::Listed(m) => m.get(id).cloned(),
            ShimView::Silent(why) => Some(RuntimeState::not_answering(sandbox_id, why)),
            ShimView::Gone(at) => Some(RuntimeState::shim_gone(*at)),
        }
    }
}

/// Runtime facts of a container, from its shim.
#[derive(Clone, Debug, Default)]
pub struct RuntimeState {
    /// CRI state.
    pub state: i32,
    /// Init pid.
    pub pid: u32,
    /// Exit code.
    pub exit_code: i32,
    /// Unix nanoseconds.
    pub started_at: i64,
    /// Unix nanoseconds.
    pub finished_at: i64,
    /// CRI reason.
    pub reason: String,
    /// CRI message.
    pub message: String,
    /// Log record bytes written, and dropped.
    pub log_bytes: (u64, u64),
}

impl RuntimeState {
    pub(super) fn from_shim(s: &api::ContainerState) -> Self {
        let status = s.status.enum_value_or_default();
        let state = match status {
            Status::CREATED => cri::ContainerState::ContainerCreated,
            Status::RUNNING => cri::ContainerState::ContainerRunning,
            Status::STOPPED => cri::ContainerState::ContainerExited,
            Status::UNKNOWN => cri::ContainerState::ContainerUnknown,
        } as i32;
        let reason = match status {
            Status::STOPPED if s.start_failed => "StartError",
            Status::STOPPED if s.oom_killed => "OOMKilled",
            Status::STOPPED if s.exit_code == 0 => "Completed",
            Status::STOPPED => "Error",
            _ => "",
        };
        RuntimeState {
            state,
            pid: s.pid,
            exit_code: s.exit_code,
            started_at: s.started_at,
            finished_at: s.finished_at,
            log_bytes: (s.log_bytes_written, s.log_bytes_dropped),
            reason: reason.to_string(),
            message: s.message.clone(),
        }
    }

    /// The state of a container its shim does not know.
    pub(super) fn unknown_to_shim() -> Self {
        RuntimeState {
            state: cri::ContainerState::ContainerUnknown as i32,
            reason: "Unknown".into(),
            message: "the shim does not know this container".into(),
            ..Default::default()
        }
    }

    /// The state of a container whose shim runs but does not answer.
    pub(super) fn not_answering(sandbox_id: &str, why: &str) -> Self {
        RuntimeState {
            state: cri::ContainerState::ContainerUnknown as i32,
            reason: "ShimNotAnswering".into(),
            message: format!("the shim of pod sandbox {sandbox_id} does not answer: {why}"),
            ..Default::default()
        }
    }

    pub(super) fn shim_gone(lost_at: i64) -> Self {
        RuntimeState {
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: 255,
            finished_at: lost_at,
            reason: "ShimGone".into(),
            message: "the sandbox's shim is not running; the container's real exit status is lost".into(),
            ..Default::default()
        }
    }
}

pub(super) struct Sandbox {
    pub(super) meta: Mutex<SandboxMeta>,
    pub(super) shim: tokio::sync::Mutex<Option<Shim>>,
    /// Serializes lifecycle calls on one sandbox.
    pub(super) op: tokio::sync::Mutex<()>,
    /// When its shim was found dead (Unix nanoseconds).
    pub(super) lost: Mutex<Option<i64>>,
}

impl Sandbox {
    pub(super) fn new(meta: SandboxMeta, shim: Option<Shim>) -> Arc<Self> {
        Arc::new(Sandbox {
            meta: Mutex::new(meta),
            shim: tokio::sync::Mutex::new(shim),
            op: Default::default(),
            lost: Mutex::new(None),
        })
    }

    pub(super) fn lost_at(&self) -> Option<i64> {
        *lock(&self.lost)
    }

    /// Whether its shim still runs: by pid, checked to be this sandbox's
    /// berth-shim (a reused pid, another pod's shim too, is not).
    pub(super) fn shim_running(&self, host: &dyn crate::host::Host) -> bool {
        let (pid, id) = {
            let m = lock(&self.meta);
            (m.shim_pid, m.id.clone())
        };
        host.shim_alive(pid, &id)
    }

    /// What a failed call to its shim means: a shim that still runs is
    /// silent (stopped, overloaded: nothing may be taken for exited); one
    /// that is gone is forgotten.
    pub(super) async fn after_failed_call(&self, host: &dyn crate::host::Host, why: String) -> ShimView {
        if self.shim_running(host) {
            return ShimView::Silent(why);
        }
        *self.shim.lock().await = None;
        ShimView::Gone(now_nanos())
    }
}
