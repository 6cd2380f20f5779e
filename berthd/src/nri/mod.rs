//! NRI, the runtime side (containerd/nri's protocol): plugins connect to
//! berthd's NRI socket, register, are configured and synchronized with
//! every pod and container, then get the lifecycle events they subscribed
//! to, in plugin order. What owns what:
//! - [`Nri`] keeps the plugins and sends events; it knows pods and
//!   containers only as the NRI messages the manager gives it.
//! - A plugin's unsolicited updates and evictions, and the updates its
//!   answers ask for, leave as [`Unsolicited`] on a channel the daemon
//!   drains into the manager: nothing here calls back into it.
//! - The gate: every CRI call that changes pods or containers holds it
//!   shared ([`Nri::enter`]) from start to end; synchronizing a new plugin
//!   holds it alone. So a plugin sees each object once, in the sync or as
//!   an event, never both and never neither.
pub mod adjust;
pub mod plugin;
pub mod socket;
pub mod sync;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use protocol::nri as api;
use slog::{info, warn, Logger};
use tokio::sync::{mpsc, oneshot};

use berth_core::error::Result;

use plugin::{Answer, Plugin};

/// Where NRI plugins connect, and how long they get.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The socket (None: NRI off).
    pub socket: Option<PathBuf>,
    /// How long a connected plugin has to register.
    pub registration_timeout: Duration,
    /// How long a plugin has to answer one request.
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        // NRI's own defaults.
        Settings { socket: None, registration_timeout: Duration::from_secs(5), request_timeout: Duration::from_secs(2) }
    }
}

/// Container updates and evictions a plugin asked for, for the manager to
/// carry out; `reply` (if any) takes the updates that failed.
pub struct Unsolicited {
    /// The plugin that asked.
    pub plugin: String,
    /// Resource updates of existing containers.
    pub updates: Vec<api::ContainerUpdate>,
    /// Containers to stop.
    pub evictions: Vec<api::ContainerEviction>,
    /// Where the failed updates go.
    pub reply: Option<oneshot::Sender<Vec<api::ContainerUpdate>>>,
}

/// Gives a newly registered plugin the pods and containers there are.
#[async_trait::async_trait]
pub trait StateSource: Send + Sync {
    /// Every ready pod and container, as NRI describes them.
    async fn state(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>);
}

/// Unsolicited requests queued at once; a plugin sending more is told so.
const UNSOLICITED_QUEUE: usize = 64;

/// The NRI adaptation: berthd's plugins and the events they get.
pub struct Nri {
    log: Logger,
    settings: Settings,
    plugins: Mutex<Vec<Arc<Plugin>>>,
    gate: tokio::sync::RwLock<()>,
    /// One event at a time goes out, so every plugin sees them in one order.
    order: tokio::sync::Mutex<()>,
    source: OnceLock<Arc<dyn StateSource>>,
    unsolicited: mpsc::Sender<Unsolicited>,
}

/// Held by a CRI call that changes pods or containers (see the module doc).
pub struct Gate<'a>(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>);

/// What the plugins answered to CreateContainer, merged.
#[derive(Default)]
pub struct Created {
    /// The adjustments, in plugin order (each checked against the others).
    pub adjustments: adjust::Adjustments,
}

/// Sends one event to every plugin subscribed to it, one event at a time
/// and in plugin order: the plugins that answered, with their answers. The
/// first error status fails the call; later plugins are not asked.
macro_rules! each {
    ($self:ident, $event:expr, $what:literal, $method:ident, $req:expr) => {
        async {
            let plugins = $self.subscribed($event);
            let mut answers = Vec::new();
            if !plugins.is_empty() {
                let _order = $self.order.lock().await;
                for p in plugins {
                    let (c, ctx) = p.client();
                    if let Answer::Reply(r) = p.call($event, $what, c.$method(ctx, &$req)).await? {
                        answers.push((p.clone(), r));
                    }
                }
            }
            Ok::<_, berth_core::error::Error>(answers)
        }
        .await
    };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Nri {
    /// An adaptation with no plugins yet, and the receiving end of the
    /// plugins' unsolicited requests.
    pub fn new(log: Logger, settings: Settings) -> (Arc<Nri>, mpsc::Receiver<Unsolicited>) {
        let (tx, rx) = mpsc::channel(UNSOLICITED_QUEUE);
        let nri = Nri {
            log,
            settings,
            plugins: Mutex::new(Vec::new()),
            gate: tokio::sync::RwLock::new(()),
            order: tokio::sync::Mutex::new(()),
            source: OnceLock::new(),
            unsolicited: tx,
        };
        (Arc::new(nri), rx)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sets where a new plugin's synchronization comes from (once).
    pub fn set_state_source(&self, source: Arc<dyn StateSource>) {
        let _ = self.source.set(source);
    }

    /// Enters a CRI call that changes pods or containers.
    pub async fn enter(&self) -> Gate<'_> {
        Gate(self.gate.read().await)
    }

    /// The plugins connected now, in call order.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        let mut ps = lock(&self.plugins);
        ps.retain(|p| !p.is_closed());
        ps.clone()
    }

    /// Whether any plugin is subscribed to `event` (the manager builds the
    /// event's message only then).
    pub fn wants(&self, event: api::Event) -> bool {
        lock(&self.plugins).iter().any(|p| !p.is_closed() && p.subscribed(event))
    }

    /// Takes a connected plugin through registration, configuration and
    /// synchronization, then adds it to the plugins.
    pub async fn add_plugin(self: &Arc<Self>, stream: tokio::net::UnixStream) -> Result<()> {
        let timeouts = (self.settings.registration_timeout, self.settings.request_timeout);
        let (plugin, watcher) = Plugin::connect(
            stream,
            timeouts,
            ("berth", env!("CARGO_PKG_VERSION")),
            self.unsolicited.clone(),
            &self.log,
        )
        .await?;
        let me = Arc::downgrade(self);
        let (name, this) = (plugin.name.clone(), Arc::downgrade(&plugin));
        tokio::spawn(async move {
            watcher.await;
            if let Some(me) = me.upgrade() {
                // This connection only: a refused duplicate's end leaves the
                // plugin of the same name in place.
                lock(&me.plugins).retain(|p| !std::ptr::eq(Arc::as_ptr(p), this.as_ptr()));
                info!(me.log, "NRI plugin gone"; "plugin" => &name);
            }
        });
        let updates = {
            // No CRI call changes anything while the plugin learns what
            // there is and joins the plugins.
            let _alone = self.gate.write().await;
            if self.plugins().iter().any(|p| p.name == plugin.name) {
                plugin.close("a plugin of that index and name is already connected");
                return Err(berth_core::error::Error::new(
                    berth_core::error::Kind::AlreadyExists,
                    format!("NRI plugin {} is already connected", plugin.name),
                ));
            }
            let (pods, containers) = match self.source.get() {
                Some(s) => s.state().await,
                None => Default::default(),
            };
            let mut updates = Vec::new();
            for req in sync::requests(pods, containers, sync::MAX_SYNC_BYTES) {
                let (c, ctx) = plugin.client();
                let reply = match plugin.call_always("Synchronize", c.synchronize(ctx, &req)).await {
                    Ok(Answer::Reply(r)) => r,
                    Ok(_) => {
                        return Err(berth_core::error::Error::internal(format!(
                            "NRI plugin {} dropped in Synchronize",
                            plugin.name
                        )))
                    }
                    Err(e) => {
                        plugin.close("its Synchronize failed");
                        return Err(e);
                    }
                };
                // NRI's rule: a part of a split sync is acknowledged with
                // `more` and no updates; the last part's answer counts.
                if req.more && (!reply.more || !reply.update.is_empty()) {
                    plugin.close("it does not take a split Synchronize");
                    return Err(berth_core::error::Error::invalid(format!(
                        "NRI plugin {} does not take a Synchronize split in parts",
                        plugin.name
                    )));
                }
                updates = reply.update;
            }
            // Under the gate no other plugin joins: the check above holds.
            let mut ps = lock(&self.plugins);
            ps.push(plugin.clone());
            ps.sort_by(|a, b| (&a.index, &a.name).cmp(&(&b.index, &b.name)));
            updates
        };
        info!(self.log, "NRI plugin synchronized"; "plugin" => &plugin.name);
        self.forward(&plugin.name, updates, Vec::new());
        Ok(())
    }

    /// Queues updates and evictions a plugin's answer asked for.
    fn forward(&self, plugin: &str, updates: Vec<api::ContainerUpdate>, evictions: Vec<api::ContainerEviction>) {
        if updates.is_empty() && evictions.is_empty() {
            return;
        }
        let msg = Unsolicited { plugin: plugin.to_string(), updates, evictions, reply: None };
        if self.unsolicited.try_send(msg).is_err() {
            warn!(self.log, "NRI updates dropped: too many in flight"; "plugin" => plugin);
        }
    }

    /// The plugins subscribed to `event`, in call order.
    fn subscribed(&self, event: api::Event) -> Vec<Arc<Plugin>> {
        self.plugins().into_iter().filter(|p| p.subscribed(event)).collect()
    }

    /// RunPodSandbox: the pod is made but not yet shown to clients.
    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<()> {
        let mut req = api::RunPodSandboxRequest::new();
        req.pod = Some(pod.clone()).into();
        each!(self, api::Event::RUN_POD_SANDBOX, "RunPodSandbox", run_pod_sandbox, req).map(drop)
    }

    /// StopPodSandbox: its containers are stopped.
    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<()> {
        let mut req = api::StopPodSandboxRequest::new();
        req.pod = Some(pod.clone()).into();
        each!(self, api::Event::STOP_POD_SANDBOX, "StopPodSandbox", stop_pod_sandbox, req).map(drop)
    }

    /// RemovePodSandbox: the pod is gone.
    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<()> {
        let mut req = api::RemovePodSandboxRequest::new();
        req.pod = Some(pod.clone()).into();
        each!(self, api::Event::REMOVE_POD_SANDBOX, "RemovePodSandbox", remove_pod_sandbox, req).map(drop)
    }

    /// CreateContainer: the container's spec is built but not written; the
    /// plugins' adjustments are merged (two plugins changing one thing is
    /// an error) for the manager to apply.
    pub async fn create_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<Created> {
        let mut req = api::CreateContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        let answers = each!(self, api::Event::CREATE_CONTAINER, "CreateContainer", create_container, req)?;
        let mut created = Created::default();
        for (p, mut r) in answers {
            if let Some(a) = r.adjust.take() {
                created.adjustments.add(&p.name, a)?;
            }
            self.forward(&p.name, std::mem::take(&mut r.update), std::mem::take(&mut r.evict));
        }
        Ok(created)
    }

    /// PostCreateContainer: the container is created.
    pub async fn post_create_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<()> {
        let mut req = api::PostCreateContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        each!(self, api::Event::POST_CREATE_CONTAINER, "PostCreateContainer", post_create_container, req).map(drop)
    }

    /// StartContainer: about to start.
    pub async fn start_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<()> {
        let mut req = api::StartContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        each!(self, api::Event::START_CONTAINER, "StartContainer", start_container, req).map(drop)
    }

    /// PostStartContainer: started.
    pub async fn post_start_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<()> {
        let mut req = api::PostStartContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        each!(self, api::Event::POST_START_CONTAINER, "PostStartContainer", post_start_container, req).map(drop)
    }

    /// UpdateContainer: about to update the container's resources to
    /// `res`; what the plugins ask of other containers is queued.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
        res: &api::LinuxResources,
    ) -> Result<()> {
        let mut req = api::UpdateContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        req.linux_resources = Some(res.clone()).into();
        let answers = each!(self, api::Event::UPDATE_CONTAINER, "UpdateContainer", update_container, req)?;
        for (p, r) in answers {
            self.forward(&p.name, r.update, r.evict);
        }
        Ok(())
    }

    /// PostUpdateContainer: updated.
    pub async fn post_update_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<()> {
        let mut req = api::PostUpdateContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        each!(self, api::Event::POST_UPDATE_CONTAINER, "PostUpdateContainer", post_update_container, req).map(drop)
    }

    /// StopContainer: the container stopped.
    pub async fn stop_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<()> {
        let mut req = api::StopContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        let answers = each!(self, api::Event::STOP_CONTAINER, "StopContainer", stop_container, req)?;
        for (p, r) in answers {
            self.forward(&p.name, r.update, Vec::new());
        }
        Ok(())
    }

    /// RemoveContainer: the container is gone.
    pub async fn remove_container(&self, pod: &api::PodSandbox, ctr: &api::Container) -> Result<()> {
        let mut req = api::RemoveContainerRequest::new();
        req.pod = Some(pod.clone()).into();
        req.container = Some(ctr.clone()).into();
        each!(self, api::Event::REMOVE_CONTAINER, "RemoveContainer", remove_container, req).map(drop)
    }

    /// Tells every plugin berthd is going down, and removes the socket.
    pub async fn shutdown(&self) {
        for p in self.plugins() {
            p.shutdown().await;
        }
        if let Some(path) = &self.settings.socket {
            socket::remove(path);
        }
    }
}
