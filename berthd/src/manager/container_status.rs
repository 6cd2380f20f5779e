//! ContainerStatus and ListContainers: records joined with what each pod's shim
//! says.
use super::*;

impl Manager {
    /// Runtime state of a container, from its shim.
    pub(super) async fn runtime_state(&self, meta: &ContainerMeta) -> RuntimeState {
        let Ok(sb) = self.sandbox(&meta.sandbox_id) else { return RuntimeState::shim_gone(now_nanos()) };
        if let Some(at) = sb.lost_at() {
            return RuntimeState::shim_gone(at);
        }
        let Ok(shim) = self.shim_of(&sb).await else { return RuntimeState::shim_gone(now_nanos()) };
        match shim.state(&meta.id).await {
            Ok(s) => {
                self.note_log_error(&meta.id, &s.message);
                RuntimeState::from_shim(&s)
            }
            Err(e) if e.is_not_found() => RuntimeState::unknown_to_shim(),
            Err(e) => sb
                .after_failed_call(&*self.host, e.to_string())
                .await
                .state_of(&meta.sandbox_id, &meta.id)
                .unwrap_or_else(RuntimeState::unknown_to_shim),
        }
    }

    /// Logs a container's log-writing trouble once when it starts and once
    /// when it ends (the shim reports it in the container's state).
    pub(super) fn note_log_error(&self, id: &str, message: &str) {
        let mut seen = lock(&self.log_errors);
        match (message.is_empty(), seen.get(id)) {
            (false, Some(m)) if m == message => {}
            (false, _) => {
                warn!(self.log, "container output cannot be logged"; "container_id" => id, "error" => message);
                seen.insert(id.to_string(), message.to_string());
            }
            (true, Some(_)) => {
                info!(self.log, "container logging resumed"; "container_id" => id);
                seen.remove(id);
            }
            (true, None) => {}
        }
    }

    pub(super) fn to_status(meta: &ContainerMeta, st: &RuntimeState) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: meta.id.clone(),
            metadata: meta.config.metadata.clone(),
            state: st.state,
            created_at: meta.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            image: Some(cri::ImageSpec { image: meta.image_name.clone(), ..Default::default() }),
            image_ref: if meta.image_ref.is_empty() { meta.image_id.clone() } else { meta.image_ref.clone() },
            reason: st.reason.clone(),
            message: st.message.clone(),
            labels: meta.config.labels.clone(),
            annotations: meta.config.annotations.clone(),
            mounts: meta.config.mounts.clone(),
            log_path: meta.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            resources: meta
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources { linux: Some(r), windows: None }),
            image_id: meta.image_id.clone(),
            user: meta.user.as_ref().map(|(uid, gid, groups)| cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: *uid as i64,
                    gid: *gid as i64,
                    supplemental_groups: groups.iter().map(|g| *g as i64).collect(),
                }),
            }),
            stop_signal: meta.config.stop_signal,
        }
    }

    /// ContainerStatus.
    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::ContainerStatus, HashMap<String, String>)> {
        let meta = self.container(id)?;
        let st = self.runtime_state(&meta).await;
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "pid": st.pid,
                "sandboxID": meta.sandbox_id,
                "bundle": meta.bundle,
                "stopSignal": meta.stop_signal,
                "config": meta.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((Self::to_status(&meta, &st), info))
    }

    /// What the shims of `sandbox_ids` say of their containers: one List
    /// call per pod rather than one State call per container, every shim
    /// asked at once (a hung one costs its QUICK_TIMEOUT once, not once per
    /// pod after it).
    pub(super) async fn shim_views(&self, sandbox_ids: &[String]) -> HashMap<String, ShimView> {
        let views = sandbox_ids.iter().map(|sid| async move {
            let view = match self.sandbox(sid) {
                Err(_) => ShimView::Gone(now_nanos()),
                Ok(sb) => match sb.lost_at() {
                    Some(at) => ShimView::Gone(at),
                    None => match self.shim_of(&sb).await {
                        Err(_) => ShimView::Gone(now_nanos()),
                        Ok(shim) => match shim.list().await {
                            Ok(list) => ShimView::Listed(
                                list.iter().map(|s| (s.id.clone(), RuntimeState::from_shim(s))).collect(),
                            ),
                            Err(e) => sb.after_failed_call(&*self.host, e.to_string()).await,
                        },
                    },
                },
            };
            (sid.clone(), view)
        });
        futures::future::join_all(views).await.into_iter().collect()
    }

    /// ListContainers.
    pub async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>> {
        let f = filter.unwrap_or_default();
        let metas: Vec<ContainerMeta> = lock(&self.containers)
            .values()
            .filter(|c| c.phase != Phase::Creating)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| f.label_selector.iter().all(|(k, v)| c.config.labels.get(k) == Some(v)))
            .cloned()
            .collect();
        let sids: Vec<String> =
            metas.iter().map(|m| m.sandbox_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let views = self.shim_views(&sids).await;
        let mut out = Vec::new();
        for meta in metas {
            let st = views
                .get(&meta.sandbox_id)
                .and_then(|v| v.state_of(&meta.sandbox_id, &meta.id))
                .unwrap_or_else(|| RuntimeState::shim_gone(now_nanos()));
            if let Some(want) = &f.state {
                if want.state != st.state {
                    continue;
                }
            }
            let s = Self::to_status(&meta, &st);
            out.push(cri::Container {
                id: s.id,
                pod_sandbox_id: meta.sandbox_id.clone(),
                metadata: s.metadata,
                image: s.image,
                image_ref: s.image_ref,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                image_id: s.image_id,
            });
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }
}
