//! StopPodSandbox: containers stopped, network released; idempotent.
use super::*;

impl Manager {
    /// StopPodSandbox: kills every container; idempotent.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let Some(sb) = absent_ok(self.sandbox(id))? else { return Ok(()) };
        let _op = sb.op.lock().await;
        let mut steps = crate::step_times::StepTimes::start();
        for c in self.containers_of(id) {
            self.stop_container(&c.id, 0).await?;
        }
        steps.mark("containers");
        failpoint::hit("stop-pod-sandbox/containers-stopped");
        let current = lock(&sb.meta).clone();
        if !current.network_released {
            self.release_network(&current).await?;
            steps.mark("network");
            failpoint::hit("stop-pod-sandbox/network-released");
        }
        let (was_stopped, meta) = {
            let mut m = lock(&sb.meta);
            let was = m.stopped;
            m.stopped = true;
            m.network_released = true;
            (was, m.clone())
        };
        self.sandbox_store.put(id, &meta).await?;
        steps.mark("recorded");
        if !was_stopped {
            self.nri_pod_event(protocol::nri::Event::STOP_POD_SANDBOX, &meta).await?;
        }
        info!(self.log, "pod sandbox stopped"; "sandbox_id" => id, "steps_ms" => %steps);
        if !was_stopped {
            self.emit(id, id, cri::ContainerEventType::ContainerStoppedEvent).await;
        }
        Ok(())
    }

    /// CNI DEL for a pod (nothing for host-network pods or without a CNI
    /// configuration).
    pub(super) async fn release_network(&self, meta: &SandboxMeta) -> Result<()> {
        if meta.host_network() {
            return Ok(());
        }
        // A record from before ADD-time configurations were kept (or a
        // crash between ADD and its record) falls back to today's.
        let net = match &meta.network_config {
            Some(n) => n.clone(),
            None => match self.network.load()? {
                Some(n) => n,
                None => return Ok(()),
            },
        };
        let md = meta.config.metadata.clone().unwrap_or_default();
        let pin = meta.dir.join(NS_DIR).join(NS_NET);
        // A pin that is gone (unmounted by hand, a crash between steps) is no
        // namespace: the CNI spec lets DEL run with an empty CNI_NETNS, and
        // plugins still release what they hold (IPs, port mappings).
        let netns = if crate::cni::is_netns(&pin) { pin } else { PathBuf::new() };
        let pod = crate::cni::PodRef { id: &meta.id, netns: &netns, metadata: &md, ports: &meta.config.port_mappings };
        self.network
            .del(&net, &pod, meta.network.as_ref())
            .await
            .map_err(|e| Error::from(e).context(format!("releasing the network of pod sandbox {}", meta.id)))
    }
}
