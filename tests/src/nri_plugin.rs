//! An NRI plugin for the tests, speaking containerd/nri's protocol to
//! berthd's NRI socket (the multiplexed connection, RegisterPlugin,
//! Configure, Synchronize, the events). What it was told is kept in order;
//! how it answers (adjustments, an error, a hang) is set per test.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::nri as api;

/// One thing the plugin was told: the event's name and the object's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Told {
    /// `RunPodSandbox`, `CreateContainer`, ...
    pub event: String,
    /// The pod's or container's id.
    pub id: String,
}

/// How the plugin answers.
#[derive(Default)]
pub struct Behaviour {
    /// The events it subscribes to (NRI's mask; 0: all).
    pub events: i32,
    /// Its CreateContainer adjustment.
    pub adjust: Option<api::ContainerAdjustment>,
    /// An event it answers with this error, the next `fail_times` times.
    pub fail: Option<(String, String)>,
    /// How many times `fail` applies.
    pub fail_times: usize,
    /// An event it never answers.
    pub hang: Option<String>,
    /// An event in which it stops: it notifies the first, then waits for
    /// the second (to look at berthd while a hook runs).
    pub pause: Option<(String, Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
}

/// What the plugin saw.
#[derive(Default)]
pub struct Seen {
    /// Events, in order.
    pub told: Vec<Told>,
    /// The pods and containers it was synchronized with (ids).
    pub synced: Option<(Vec<String>, Vec<String>)>,
    /// The parts of a split synchronization so far.
    pub sync_parts: Option<(Vec<String>, Vec<String>)>,
    /// The pods and containers of every event, whole.
    pub pods: Vec<api::PodSandbox>,
    /// The containers of every event, whole.
    pub containers: Vec<api::Container>,
}

struct Service {
    behaviour: Mutex<Behaviour>,
    seen: Arc<Mutex<Seen>>,
}

fn err(msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, msg.to_string()))
}

impl Service {
    /// Records an event; fails or hangs if told to.
    async fn event(&self, event: &str, pod: Option<&api::PodSandbox>, c: Option<&api::Container>) -> ttrpc::Result<()> {
        let id = c.map(|c| c.id.clone()).or_else(|| pod.map(|p| p.id.clone())).unwrap_or_default();
        {
            let mut seen = self.seen.lock().unwrap();
            seen.told.push(Told { event: event.into(), id });
            seen.pods.extend(pod.cloned());
            seen.containers.extend(c.cloned());
        }
        let (hang, fail, pause) = {
            let mut b = self.behaviour.lock().unwrap();
            let pause = b.pause.as_ref().filter(|(e, _, _)| e == event).map(|(_, a, b)| (a.clone(), b.clone()));
            let hang = b.hang.as_deref() == Some(event);
            let fail = match &b.fail {
                Some((e, msg)) if e == event && b.fail_times > 0 => Some(msg.clone()),
                _ => None,
            };
            if fail.is_some() {
                b.fail_times -= 1;
            }
            (hang, fail, pause)
        };
        if let Some((entered, release)) = pause {
            entered.notify_one();
            release.notified().await;
        }
        if hang {
            std::future::pending::<()>().await;
        }
        match fail {
            Some(msg) => Err(err(&msg)),
            None => Ok(()),
        }
    }
}

type Ctx<'a> = &'a ttrpc::r#async::TtrpcContext;

#[async_trait::async_trait]
impl api::Plugin for Service {
    async fn configure(&self, _: Ctx<'_>, req: api::ConfigureRequest) -> ttrpc::Result<api::ConfigureResponse> {
        assert_eq!(req.runtime_name, "berth");
        let mut r = api::ConfigureResponse::new();
        r.events = self.behaviour.lock().unwrap().events;
        Ok(r)
    }
    async fn synchronize(&self, _: Ctx<'_>, req: api::SynchronizeRequest) -> ttrpc::Result<api::SynchronizeResponse> {
        // A split sync comes in parts, each but the last with `more`.
        let mut seen = self.seen.lock().unwrap();
        let part = seen.sync_parts.get_or_insert_with(Default::default);
        part.0.extend(req.pods.iter().map(|p| p.id.clone()));
        part.1.extend(req.containers.iter().map(|c| c.id.clone()));
        if !req.more {
            seen.synced = seen.sync_parts.take();
        }
        let mut r = api::SynchronizeResponse::new();
        r.more = req.more;
        Ok(r)
    }
    async fn run_pod_sandbox(
        &self,
        _: Ctx<'_>,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        self.event("RunPodSandbox", req.pod.as_ref(), None).await?;
        Ok(api::RunPodSandboxResponse::new())
    }
    async fn stop_pod_sandbox(
        &self,
        _: Ctx<'_>,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        self.event("StopPodSandbox", req.pod.as_ref(), None).await?;
        Ok(api::StopPodSandboxResponse::new())
    }
    async fn remove_pod_sandbox(
        &self,
        _: Ctx<'_>,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        self.event("RemovePodSandbox", req.pod.as_ref(), None).await?;
        Ok(api::RemovePodSandboxResponse::new())
    }
    async fn create_container(
        &self,
        _: Ctx<'_>,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.event("CreateContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        let mut r = api::CreateContainerResponse::new();
        r.adjust = self.behaviour.lock().unwrap().adjust.clone().into();
        Ok(r)
    }
    async fn post_create_container(
        &self,
        _: Ctx<'_>,
        req: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        self.event("PostCreateContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::PostCreateContainerResponse::new())
    }
    async fn start_container(
        &self,
        _: Ctx<'_>,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        self.event("StartContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::StartContainerResponse::new())
    }
    async fn post_start_container(
        &self,
        _: Ctx<'_>,
        req: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        self.event("PostStartContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::PostStartContainerResponse::new())
    }
    async fn update_container(
        &self,
        _: Ctx<'_>,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::UpdateContainerResponse> {
        self.event("UpdateContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::UpdateContainerResponse::new())
    }
    async fn post_update_container(
        &self,
        _: Ctx<'_>,
        req: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        self.event("PostUpdateContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::PostUpdateContainerResponse::new())
    }
    async fn stop_container(
        &self,
        _: Ctx<'_>,
        req: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        self.event("StopContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::StopContainerResponse::new())
    }
    async fn remove_container(
        &self,
        _: Ctx<'_>,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        self.event("RemoveContainer", req.pod.as_ref(), req.container.as_ref()).await?;
        Ok(api::RemoveContainerResponse::new())
    }
}

/// A connected plugin. Dropping it closes its connection.
pub struct TestPlugin {
    /// What it was told.
    pub seen: Arc<Mutex<Seen>>,
    /// berthd's runtime service (UpdateContainers).
    pub runtime: api::RuntimeClient,
    _server: ttrpc::r#async::Server,
    _pumps: protocol::nri_mux::Pumps,
}

impl TestPlugin {
    /// Connects to `socket`, registers as `<index>-<name>` and waits until
    /// berthd synchronized it.
    pub async fn connect(socket: &std::path::Path, index: &str, name: &str, behaviour: Behaviour) -> TestPlugin {
        let p = Self::connect_unsynced(socket, index, name, behaviour).await;
        p.wait_synced().await;
        p
    }

    /// Connects and registers, without waiting for the synchronization.
    pub async fn connect_unsynced(
        socket: &std::path::Path,
        index: &str,
        name: &str,
        behaviour: Behaviour,
    ) -> TestPlugin {
        let stream = tokio::net::UnixStream::connect(socket).await.expect("connect to the NRI socket");
        let mux = protocol::nri_mux::split(stream);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let service = Arc::new(Service { behaviour: Mutex::new(behaviour), seen: seen.clone() });
        let listener = ttrpc::r#async::transport::Listener::new(futures::stream::iter([Ok::<_, std::io::Error>(
            mux.plugin_service,
        )]));
        let mut server =
            ttrpc::r#async::Server::new().add_listener(listener).register_service(api::create_plugin(service));
        server.start().await.expect("serve the plugin");
        let runtime = api::RuntimeClient::new(ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(
            mux.runtime_service,
        )));
        let mut req = api::RegisterPluginRequest::new();
        req.plugin_name = name.into();
        req.plugin_idx = index.into();
        runtime.register_plugin(ttrpc::context::with_timeout(5_000_000_000), &req).await.expect("register");
        TestPlugin { seen, runtime, _server: server, _pumps: mux.pumps }
    }

    /// Waits until berthd synchronized the plugin.
    pub async fn wait_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.seen.lock().unwrap().synced.is_none() {
            assert!(Instant::now() < deadline, "the plugin was never synchronized");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The events so far, as (event, id).
    pub fn told(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().told.iter().map(|t| (t.event.clone(), t.id.clone())).collect()
    }
}
