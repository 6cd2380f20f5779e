//! What NRI plugins are told of pods and containers: NRI's messages made
//! from the manager's records and the containers' OCI specs, the listing a
//! new plugin is synchronized with, each verb's event, and the plugins'
//! updates and evictions carried out.
use super::*;

use crate::nri::{Nri, StateSource, Unsolicited};
use oci_spec::runtime::Spec;
use protocol::nri as napi;

/// The most of a bundle's config.json read for an event.
const MAX_SPEC: u64 = 4 << 20;

/// A bundle's OCI spec, if it is there and sane.
pub(super) async fn bundle_spec(bundle: &Path) -> Option<Spec> {
    let path = bundle.join("config.json");
    let meta = tokio::fs::metadata(&path).await.ok()?;
    if meta.len() > MAX_SPEC {
        return None;
    }
    serde_json::from_slice(&tokio::fs::read(&path).await.ok()?).ok()
}

fn name_of<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn opt_i64(v: i64) -> protobuf::MessageField<napi::OptionalInt64> {
    let mut o = napi::OptionalInt64::new();
    o.value = v;
    Some(o).into()
}

fn opt_u64(v: u64) -> protobuf::MessageField<napi::OptionalUInt64> {
    let mut o = napi::OptionalUInt64::new();
    o.value = v;
    Some(o).into()
}

/// The NRI view of OCI resources (memory, CPU, pids, hugepages).
fn resources_of(r: &oci_spec::runtime::LinuxResources) -> napi::LinuxResources {
    let mut out = napi::LinuxResources::new();
    if let Some(m) = r.memory() {
        let mut nm = napi::LinuxMemory::new();
        if let Some(l) = m.limit() {
            nm.limit = opt_i64(l);
        }
        if let Some(s) = m.swap() {
            nm.swap = opt_i64(s);
        }
        out.memory = Some(nm).into();
    }
    if let Some(c) = r.cpu() {
        let mut nc = napi::LinuxCPU::new();
        if let Some(s) = c.shares() {
            nc.shares = opt_u64(s);
        }
        if let Some(q) = c.quota() {
            nc.quota = opt_i64(q);
        }
        if let Some(p) = c.period() {
            nc.period = opt_u64(p);
        }
        nc.cpus = c.cpus().clone().unwrap_or_default();
        nc.mems = c.mems().clone().unwrap_or_default();
        out.cpu = Some(nc).into();
    }
    if let Some(p) = r.pids() {
        let mut np = napi::LinuxPids::new();
        np.limit = p.limit();
        out.pids = Some(np).into();
    }
    for h in r.hugepage_limits().iter().flatten() {
        let mut nh = napi::HugepageLimit::new();
        nh.page_size = h.page_size().clone();
        nh.limit = u64::try_from(h.limit()).unwrap_or(0);
        out.hugepage_limits.push(nh);
    }
    out.unified = r.unified().clone().unwrap_or_default();
    out
}

/// A pod as NRI describes it.
pub(super) fn nri_pod(meta: &SandboxMeta, cgroup_driver: crate::settings::CgroupDriver) -> napi::PodSandbox {
    let md = meta.config.metadata.clone().unwrap_or_default();
    let mut p = napi::PodSandbox::new();
    p.id = meta.id.clone();
    p.name = md.name;
    p.uid = md.uid;
    p.namespace = md.namespace;
    p.labels = meta.config.labels.clone();
    p.annotations = meta.config.annotations.clone();
    p.runtime_handler = meta.runtime_handler.clone();
    p.pid = meta.pod_init_pid;
    p.ips = meta.ips.clone();
    let mut l = napi::LinuxPodSandbox::new();
    let parent = meta.config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or("");
    l.cgroup_parent = crate::pod_cgroup::parent(parent, &meta.id, cgroup_driver);
    for name in &meta.pinned {
        let mut n = napi::LinuxNamespace::new();
        n.type_ = match name.as_str() {
            "net" => "network".to_string(),
            other => other.to_string(),
        };
        n.path = meta.dir.join(NS_DIR).join(name).display().to_string();
        l.namespaces.push(n);
    }
    p.linux = Some(l).into();
    p
}

/// A container as NRI describes it: its record, its OCI spec (if built)
/// and its state.
pub(super) fn nri_container(
    meta: &ContainerMeta,
    spec: Option<&Spec>,
    state: napi::ContainerState,
    st: Option<&RuntimeState>,
) -> napi::Container {
    let mut c = napi::Container::new();
    c.id = meta.id.clone();
    c.pod_sandbox_id = meta.sandbox_id.clone();
    c.name = meta.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    c.state = state.into();
    c.labels = meta.config.labels.clone();
    c.annotations = meta.config.annotations.clone();
    c.created_at = meta.created_at;
    if let Some(st) = st {
        c.pid = st.pid;
        c.started_at = st.started_at;
        c.finished_at = st.finished_at;
        c.exit_code = st.exit_code;
        c.status_reason = st.reason.clone();
        c.status_message = st.message.clone();
    }
    let Some(spec) = spec else { return c };
    if let Some(p) = spec.process() {
        c.args = p.args().clone().unwrap_or_default();
        c.env = p.env().clone().unwrap_or_default();
        for r in p.rlimits().iter().flatten() {
            let mut nr = napi::POSIXRlimit::new();
            nr.type_ = name_of(&r.typ());
            nr.hard = r.hard();
            nr.soft = r.soft();
            c.rlimits.push(nr);
        }
        let mut u = napi::User::new();
        u.uid = p.user().uid();
        u.gid = p.user().gid();
        u.additional_gids = p.user().additional_gids().clone().unwrap_or_default();
        c.user = Some(u).into();
    }
    for m in spec.mounts().iter().flatten() {
        let mut nm = napi::Mount::new();
        nm.destination = m.destination().display().to_string();
        nm.type_ = m.typ().clone().unwrap_or_default();
        nm.source = m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default();
        nm.options = m.options().clone().unwrap_or_default();
        c.mounts.push(nm);
    }
    if let Some(l) = spec.linux() {
        let mut nl = napi::LinuxContainer::new();
        for n in l.namespaces().iter().flatten() {
            let mut nn = napi::LinuxNamespace::new();
            nn.type_ = name_of(&n.typ());
            nn.path = n.path().as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            nl.namespaces.push(nn);
        }
        for d in l.devices().iter().flatten() {
            let mut nd = napi::LinuxDevice::new();
            nd.path = d.path().display().to_string();
            nd.type_ = name_of(&d.typ());
            nd.major = d.major();
            nd.minor = d.minor();
            nl.devices.push(nd);
        }
        if let Some(r) = l.resources() {
            nl.resources = Some(resources_of(r)).into();
        }
        if let Some(o) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
            let mut no = napi::OptionalInt::new();
            no.value = i64::from(o);
            nl.oom_score_adj = Some(no).into();
        }
        nl.cgroups_path = l.cgroups_path().as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        nl.sysctl = l.sysctl().clone().unwrap_or_default();
        c.linux = Some(nl).into();
    }
    c
}

/// NRI's state for a CRI one.
fn nri_state(cri_state: i32) -> napi::ContainerState {
    match cri::ContainerState::try_from(cri_state) {
        Ok(cri::ContainerState::ContainerCreated) => napi::ContainerState::CONTAINER_CREATED,
        Ok(cri::ContainerState::ContainerRunning) => napi::ContainerState::CONTAINER_RUNNING,
        Ok(cri::ContainerState::ContainerExited) => napi::ContainerState::CONTAINER_STOPPED,
        _ => napi::ContainerState::CONTAINER_UNKNOWN,
    }
}

/// The manager as a plugin's synchronization sees it; weak, so the
/// adaptation holds no manager alive.
struct Listing(std::sync::Weak<Manager>);

#[async_trait::async_trait]
impl StateSource for Listing {
    async fn state(&self) -> (Vec<napi::PodSandbox>, Vec<napi::Container>) {
        let Some(m) = self.0.upgrade() else { return Default::default() };
        let pods: Vec<SandboxMeta> =
            lock(&m.sandboxes).values().map(|s| lock(&s.meta).clone()).filter(|s| s.phase == Phase::Ready).collect();
        let metas: Vec<ContainerMeta> =
            lock(&m.containers).values().filter(|c| c.phase == Phase::Ready).cloned().collect();
        // One List per pod's shim, as ListContainers asks, not a call per
        // container: the CRI calls wait on the gate while this runs.
        let sids: Vec<String> =
            metas.iter().map(|c| c.sandbox_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let views = m.shim_views(&sids).await;
        let mut containers = Vec::new();
        for meta in metas {
            let st = views
                .get(&meta.sandbox_id)
                .and_then(|v| v.state_of(&meta.sandbox_id, &meta.id))
                .unwrap_or_else(|| RuntimeState::shim_gone(now_nanos()));
            let spec = bundle_spec(&meta.bundle).await;
            containers.push(nri_container(&meta, spec.as_ref(), nri_state(st.state), Some(&st)));
        }
        (pods.iter().map(|p| nri_pod(p, m.cfg.cgroup_driver)).collect(), containers)
    }
}

impl Manager {
    /// NRI: its plugins and the gate CRI calls hold.
    pub fn nri(&self) -> &Arc<Nri> {
        &self.nri
    }

    /// Serves NRI's socket (when configured) and carries out the plugins'
    /// updates and evictions; after recovery, before CRI calls are served.
    pub fn start_nri(self: &Arc<Self>) -> Result<()> {
        self.nri.set_state_source(Arc::new(Listing(Arc::downgrade(self))));
        if let Some(mut rx) = lock(&self.nri_unsolicited).take() {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(u) = rx.recv().await {
                    let Some(m) = me.upgrade() else { return };
                    m.carry_out(u).await;
                }
            });
        }
        crate::nri::socket::start(&self.nri)
    }

    /// A plugin's updates (the failed ones go back to it) and evictions
    /// (stopped after the answer, so a plugin waiting for it is not part
    /// of the stop it causes).
    async fn carry_out(self: &Arc<Self>, u: Unsolicited) {
        let mut failed = Vec::new();
        for up in u.updates {
            let r = async {
                let meta = self.container(&up.container_id)?;
                let mut res = meta.config.linux.as_ref().and_then(|l| l.resources.clone()).unwrap_or_default();
                if let Some(r) = up.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                    crate::nri::adjust::merge_resources(r, &mut res);
                }
                self.apply_resources(&up.container_id, res).await
            }
            .await;
            if let Err(e) = r {
                warn!(self.log, "NRI update failed"; "plugin" => &u.plugin, "container_id" => &up.container_id, "error" => %e);
                if !up.ignore_failure {
                    failed.push(up);
                }
            }
        }
        if let Some(reply) = u.reply {
            let _ = reply.send(failed);
        }
        for ev in u.evictions {
            let me = self.clone();
            let plugin = u.plugin.clone();
            tokio::spawn(async move {
                info!(me.log, "NRI plugin evicts a container"; "plugin" => &plugin, "container_id" => &ev.container_id, "reason" => &ev.reason);
                let _gate = me.nri.enter().await;
                if let Err(e) = me.stop_container(&ev.container_id, 0).await {
                    warn!(me.log, "NRI eviction failed"; "container_id" => &ev.container_id, "error" => %e);
                }
            });
        }
    }

    /// Tells the plugins of a pod's event. Stop and remove are told, not
    /// asked: a plugin's error there is logged.
    pub(super) async fn nri_pod_event(&self, event: napi::Event, meta: &SandboxMeta) -> Result<()> {
        if !self.nri.wants(event) {
            return Ok(());
        }
        let pod = nri_pod(meta, self.cfg.cgroup_driver);
        let r = match event {
            napi::Event::RUN_POD_SANDBOX => return self.nri.run_pod_sandbox(&pod).await,
            napi::Event::STOP_POD_SANDBOX => self.nri.stop_pod_sandbox(&pod).await,
            _ => self.nri.remove_pod_sandbox(&pod).await,
        };
        if let Err(e) = r {
            warn!(self.log, "NRI plugin failed a pod event"; "sandbox_id" => &meta.id, "error" => %e);
        }
        Ok(())
    }

    /// Tells the plugins of a container's event (not CreateContainer, whose
    /// answers adjust it). StartContainer and UpdateContainer are asked:
    /// an error fails the call. The rest are told.
    pub(super) async fn nri_container_event(
        &self,
        event: napi::Event,
        meta: &ContainerMeta,
        state: napi::ContainerState,
        res: Option<&napi::LinuxResources>,
    ) -> Result<()> {
        if !self.nri.wants(event) {
            return Ok(());
        }
        let Some(pod) = lock(&self.sandboxes).get(&meta.sandbox_id).map(|s| lock(&s.meta).clone()) else {
            return Ok(());
        };
        let pod = nri_pod(&pod, self.cfg.cgroup_driver);
        let spec = bundle_spec(&meta.bundle).await;
        let c = nri_container(meta, spec.as_ref(), state, None);
        let r = match event {
            napi::Event::START_CONTAINER => return self.nri.start_container(&pod, &c).await,
            napi::Event::UPDATE_CONTAINER => {
                return self.nri.update_container(&pod, &c, &res.cloned().unwrap_or_default()).await
            }
            napi::Event::POST_CREATE_CONTAINER => self.nri.post_create_container(&pod, &c).await,
            napi::Event::POST_START_CONTAINER => self.nri.post_start_container(&pod, &c).await,
            napi::Event::POST_UPDATE_CONTAINER => self.nri.post_update_container(&pod, &c).await,
            napi::Event::STOP_CONTAINER => self.nri.stop_container(&pod, &c).await,
            _ => self.nri.remove_container(&pod, &c).await,
        };
        if let Err(e) = r {
            warn!(self.log, "NRI plugin failed a container event"; "container_id" => &meta.id, "error" => %e);
        }
        Ok(())
    }

    /// CreateContainer's plugins: told of the container about to be made
    /// from `spec`, their adjustments applied to it and to `res`.
    pub(super) async fn nri_create_container(
        &self,
        pod: &SandboxMeta,
        meta: &ContainerMeta,
        spec: &mut Spec,
        res: &mut cri::LinuxContainerResources,
    ) -> Result<()> {
        if !self.nri.wants(napi::Event::CREATE_CONTAINER) {
            return Ok(());
        }
        let p = nri_pod(pod, self.cfg.cgroup_driver);
        let c = nri_container(meta, Some(spec), napi::ContainerState::CONTAINER_CREATED, None);
        let created = self.nri.create_container(&p, &c).await?;
        if !created.adjustments.is_empty() {
            created.adjustments.apply(spec, res)?;
            info!(self.log, "NRI plugins adjusted the container"; "container_id" => &meta.id,
                  "plugins" => created.adjustments.plugins().join(","));
        }
        Ok(())
    }
}

/// NRI's message for CRI resources (what UpdateContainer tells plugins).
pub(super) fn nri_resources(res: &cri::LinuxContainerResources) -> napi::LinuxResources {
    spec::resources(res).map(|r| resources_of(&r)).unwrap_or_default()
}
