//! Container events for GetContainerEvents (evented PLEG): emitted after each
//! state change, and from each container's exit.
use super::*;

impl Manager {
    /// Subscribes to container lifecycle events.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Publishes an event with the pod's status and its containers' statuses
    /// as they are now. Best effort: with no subscriber it costs nothing.
    /// A pod's own events carry its id as `container_id`, as containerd's do.
    pub(super) async fn emit(&self, sandbox_id: &str, container_id: &str, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let pod_sandbox_status = self.pod_sandbox_status(sandbox_id, false).await.ok().map(|(s, _)| s);
        self.emit_with(pod_sandbox_status, sandbox_id, container_id, kind).await;
    }

    /// [`Self::emit`] with the pod's status given (a removed pod has none to ask).
    pub(super) async fn emit_with(
        &self,
        pod_sandbox_status: Option<cri::PodSandboxStatus>,
        sandbox_id: &str,
        container_id: &str,
        kind: cri::ContainerEventType,
    ) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let containers_statuses = self.pod_container_statuses(sandbox_id).await;
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }

    /// Follows a container until it exits, so its exit reaches berthd (and
    /// its log) as it happens. Best effort: the shim's state stays the truth.
    pub(super) fn watch_exit(self: &Arc<Self>, sandbox_id: &str, container_id: &str) {
        let Ok(sb) = self.sandbox(sandbox_id) else { return };
        let weak = Arc::downgrade(self);
        let (sid, id) = (sandbox_id.to_string(), container_id.to_string());
        tokio::spawn(async move {
            let Some(shim) = sb.shim.lock().await.clone() else { return };
            if let Ok(st) = shim.wait_exit(&id).await {
                let Some(m) = weak.upgrade() else { return };
                info!(m.log, "container exited"; "container_id" => &id, "exit_code" => st.exit_code, "signal" => st.exit_signal);
                m.emit(&sid, &id, cri::ContainerEventType::ContainerStoppedEvent).await;
                // Under the gate, as a CRI call: a plugin being synchronized
                // sees the exit in its listing or as this event.
                let _gate = m.nri.enter().await;
                let _ = m.nri_tell_stopped(&id).await;
            }
        });
    }
}
