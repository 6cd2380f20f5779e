//! PodSandboxStatus and ListPodSandbox.
use super::*;

impl Manager {
    /// The statuses of a pod's containers, oldest first: what evented PLEG
    /// reads from PodSandboxStatus and from every event.
    pub async fn pod_container_statuses(&self, sandbox_id: &str) -> Vec<cri::ContainerStatus> {
        let mut metas: Vec<ContainerMeta> =
            self.containers_of(sandbox_id).into_iter().filter(|c| c.phase != Phase::Creating).collect();
        if metas.is_empty() {
            return Vec::new();
        }
        metas.sort_by_key(|c| c.created_at);
        // One List call for the pod, not a State call per container: kubelet
        // asks for this with every pod status.
        let views = self.shim_views(&[sandbox_id.to_string()]).await;
        let view = views.get(sandbox_id);
        metas
            .iter()
            .map(|m| {
                let st = view.and_then(|v| v.state_of(sandbox_id, &m.id)).unwrap_or_else(RuntimeState::unknown_to_shim);
                Self::to_status(m, &st)
            })
            .collect()
    }

    pub(super) fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerMeta> {
        lock(&self.containers).values().filter(|c| c.sandbox_id == sandbox_id).cloned().collect()
    }

    /// PodSandboxStatus (and the pieces ListPodSandbox needs).
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let sb = self.sandbox(id)?;
        let meta = lock(&sb.meta).clone();
        let shim_ok = sb.lost_at().is_none() && self.shim_of(&sb).await.is_ok();
        let state = if meta.stopped || !shim_ok {
            cri::PodSandboxState::SandboxNotready
        } else {
            cri::PodSandboxState::SandboxReady
        };
        let ns = meta
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let status = cri::PodSandboxStatus {
            id: meta.id.clone(),
            metadata: meta.config.metadata.clone(),
            state: state as i32,
            created_at: meta.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: meta.ips.first().cloned().unwrap_or_default(),
                additional_ips: meta.ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus { namespaces: Some(cri::Namespace { options: Some(ns) }) }),
            labels: meta.config.labels.clone(),
            annotations: meta.config.annotations.clone(),
            runtime_handler: meta.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "pid": meta.shim_pid,
                "stateDir": meta.dir,
                "pinnedNamespaces": meta.pinned,
                "hostname": meta.hostname,
                "podInitPid": meta.pod_init_pid,
                "shimLost": sb.lost_at().is_some(),
                "config": meta.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((status, info))
    }

    /// ListPodSandbox.
    pub async fn list_pod_sandboxes(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>> {
        let f = filter.unwrap_or_default();
        let ids: Vec<String> = lock(&self.sandboxes)
            .values()
            .filter(|s| lock(&s.meta).phase != Phase::Creating)
            .map(|s| lock(&s.meta).id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if !f.id.is_empty() && !id.starts_with(&f.id) {
                continue;
            }
            let Ok((s, _)) = self.pod_sandbox_status(&id, false).await else { continue };
            if let Some(st) = &f.state {
                if st.state != s.state {
                    continue;
                }
            }
            if !f.label_selector.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
                continue;
            }
            out.push(cri::PodSandbox {
                id: s.id,
                metadata: s.metadata,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                runtime_handler: s.runtime_handler,
            });
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }
}
