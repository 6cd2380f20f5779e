//! RemovePodSandbox: containers removed, shim stopped, the pod's folders,
//! namespaces and cgroup released.
use super::*;

impl Manager {
    /// RemovePodSandbox: stops and removes its containers, ends its shim and
    /// removes everything it had; idempotent.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let Some(sb) = absent_ok(self.sandbox(id))? else { return Ok(()) };
        let meta = {
            let mut m = lock(&sb.meta);
            m.phase = Phase::Removing;
            m.clone()
        };
        let mut steps = crate::step_times::StepTimes::start();
        self.sandbox_store.put(id, &meta).await?;
        steps.mark("recorded");
        failpoint::hit("remove-pod-sandbox/recorded");
        self.stop_pod_sandbox(id).await?;
        steps.mark("stopped");
        let _op = sb.op.lock().await;
        for c in self.containers_of(id) {
            self.remove_container(&c.id).await?;
        }
        steps.mark("containers");
        failpoint::hit("remove-pod-sandbox/containers-removed");
        let last_status = if self.events.receiver_count() > 0 {
            self.pod_sandbox_status(id, false).await.ok().map(|(s, _)| s)
        } else {
            None
        };
        *sb.shim.lock().await = None;
        self.teardown_sandbox_dir(&meta.dir, meta.pod_init_pid).await;
        steps.mark("shim");
        failpoint::hit("remove-pod-sandbox/dir-removed");
        crate::pod_cgroup::remove(
            meta.config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
            id,
            self.cfg.cgroup_driver,
        );
        steps.mark("cgroup");
        failpoint::hit("remove-pod-sandbox/shim-stopped");
        self.sandbox_store.delete(id).await?;
        steps.mark("deleted");
        lock(&self.sandboxes).remove(id);
        self.release(&sandbox_key(&meta.config.metadata.clone().unwrap_or_default()));
        info!(self.log, "pod sandbox removed"; "sandbox_id" => id, "steps_ms" => %steps);
        self.nri_pod_event(protocol::nri::Event::REMOVE_POD_SANDBOX, &meta).await?;
        self.emit_with(last_status, id, id, cri::ContainerEventType::ContainerDeletedEvent).await;
        Ok(())
    }
}
