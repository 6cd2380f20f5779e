//! The API edge: CRI v1 RuntimeService and ImageService (and Berth's Images
//! service) over gRPC. Requests are handed to the [`Manager`]; its typed
//! errors become gRPC statuses here and nowhere else.
use std::pin::Pin;
use std::sync::Arc;

use protocol::cri::{self, image_service_server::ImageService, runtime_service_server::RuntimeService};
use protocol::images::{
    images_server::Images, ImportRequest, ImportResponse, LayerProgress, PullProgress, PullRequest,
};
use slog::{debug, Logger};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::calls::detached;
use crate::manager::{now_nanos, Manager};
use berth_core::error::Error;

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Version Berth reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn unimplemented(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented by Berth yet"))
}

fn once<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(tokio_stream::iter(vec![Ok(item)]))
}

/// Serves CRI for a manager.
#[derive(Clone)]
pub struct CriServer {
    mgr: Arc<Manager>,
    stream: Arc<berth_streaming::server::StreamServer>,
    /// RunPodSandbox and CreateContainer calls a retry may join.
    retries: Arc<crate::calls::Retries>,
    log: Logger,
}

impl CriServer {
    /// A server for `mgr`, handing streaming calls to `stream`.
    pub fn new(mgr: Arc<Manager>, stream: Arc<berth_streaming::server::StreamServer>, log: Logger) -> Self {
        CriServer { mgr, stream, retries: Arc::default(), log }
    }
}

/// What makes a retry the same call: its kind and the whole request.
fn retry_key(kind: &str, msg: &impl prost::Message) -> String {
    use sha2::Digest;
    format!("{kind}/{}", hex::encode(sha2::Sha256::digest(msg.encode_to_vec())))
}

fn ok<T>(r: Result<T, Error>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

/// The one way an error of Berth's (or of a library's, through its kinds)
/// becomes a gRPC status.
fn status(e: impl Into<Error>) -> Status {
    Status::from(e.into())
}

#[tonic::async_trait]
impl RuntimeService for CriServer {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: VERSION.into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> Reply<cri::RunPodSandboxResponse> {
        let r = req.into_inner();
        let key = retry_key("runp", &r);
        let config = r.config.ok_or_else(|| Status::invalid_argument("RunPodSandbox needs a config"))?;
        let mgr = Arc::clone(&self.mgr);
        let handler = r.runtime_handler;
        ok(self
            .retries
            .run(key, async move {
                let _gate = mgr.nri().enter().await;
                mgr.run_pod_sandbox(config, &handler).await
            })
            .await
            .map(|pod_sandbox_id| cri::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> Reply<cri::StopPodSandboxResponse> {
        let (mgr, id) = (Arc::clone(&self.mgr), req.into_inner().pod_sandbox_id);
        ok(detached(async move {
            let _gate = mgr.nri().enter().await;
            mgr.stop_pod_sandbox(&id).await
        })
        .await
        .map(|()| cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        let (mgr, id) = (Arc::clone(&self.mgr), req.into_inner().pod_sandbox_id);
        ok(detached(async move {
            let _gate = mgr.nri().enter().await;
            mgr.remove_pod_sandbox(&id).await
        })
        .await
        .map(|()| cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        let r = req.into_inner();
        let (status, info) = self.mgr.pod_sandbox_status(&r.pod_sandbox_id, r.verbose).await?;
        // Evented PLEG takes the pod's containers from here whenever the
        // timestamp is set.
        let containers_statuses = self.mgr.pod_container_statuses(&r.pod_sandbox_id).await;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(&self, req: Request<cri::ListPodSandboxRequest>) -> Reply<cri::ListPodSandboxResponse> {
        ok(self
            .mgr
            .list_pod_sandboxes(req.into_inner().filter)
            .await
            .map(|items| cri::ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = BoxStream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Reply<Self::StreamPodSandboxesStream> {
        let pod_sandboxes = self.mgr.list_pod_sandboxes(req.into_inner().filter).await?;
        Ok(Response::new(once(cri::StreamPodSandboxesResponse { pod_sandboxes })))
    }

    async fn create_container(&self, req: Request<cri::CreateContainerRequest>) -> Reply<cri::CreateContainerResponse> {
        let r = req.into_inner();
        let key = retry_key("create", &r);
        let config = r.config.ok_or_else(|| Status::invalid_argument("CreateContainer needs a config"))?;
        let (mgr, sandbox) = (Arc::clone(&self.mgr), r.pod_sandbox_id);
        ok(self
            .retries
            .run(key, async move {
                let _gate = mgr.nri().enter().await;
                mgr.create_container(&sandbox, config).await
            })
            .await
            .map(|container_id| cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> Reply<cri::StartContainerResponse> {
        let (mgr, id) = (Arc::clone(&self.mgr), req.into_inner().container_id);
        ok(detached(async move {
            let _gate = mgr.nri().enter().await;
            mgr.start_container(&id).await
        })
        .await
        .map(|()| cri::StartContainerResponse {}))
    }

    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> Reply<cri::StopContainerResponse> {
        let (mgr, r) = (Arc::clone(&self.mgr), req.into_inner());
        ok(detached(async move {
            let _gate = mgr.nri().enter().await;
            mgr.stop_container(&r.container_id, r.timeout).await
        })
        .await
        .map(|()| cri::StopContainerResponse {}))
    }

    async fn remove_container(&self, req: Request<cri::RemoveContainerRequest>) -> Reply<cri::RemoveContainerResponse> {
        let (mgr, id) = (Arc::clone(&self.mgr), req.into_inner().container_id);
        ok(detached(async move {
            let _gate = mgr.nri().enter().await;
            mgr.remove_container(&id).await
        })
        .await
        .map(|()| cri::RemoveContainerResponse {}))
    }

    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> Reply<cri::ListContainersResponse> {
        ok(self
            .mgr
            .list_containers(req.into_inner().filter)
            .await
            .map(|containers| cri::ListContainersResponse { containers }))
    }

    type StreamContainersStream = BoxStream<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Reply<Self::StreamContainersStream> {
        let containers = self.mgr.list_containers(req.into_inner().filter).await?;
        Ok(Response::new(once(cri::StreamContainersResponse { containers })))
    }

    async fn container_status(&self, req: Request<cri::ContainerStatusRequest>) -> Reply<cri::ContainerStatusResponse> {
        let r = req.into_inner();
        let (status, info) = self.mgr.container_status(&r.container_id, r.verbose).await?;
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(status), info }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        let r = req.into_inner();
        let res = r.linux.ok_or_else(|| Status::invalid_argument("UpdateContainerResources needs linux resources"))?;
        let _gate = self.mgr.nri().enter().await;
        ok(self
            .mgr
            .update_container_resources(&r.container_id, res)
            .await
            .map(|()| cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        ok(self
            .mgr
            .reopen_container_log(&req.into_inner().container_id)
            .await
            .map(|()| cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Reply<cri::ExecSyncResponse> {
        let r = req.into_inner();
        debug!(self.log, "exec sync"; "container_id" => &r.container_id, "timeout" => r.timeout);
        ok(self.mgr.exec_sync(&r.container_id, r.cmd, r.timeout).await)
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        let r = req.into_inner();
        let io_socket = self.mgr.exec_target(&r).await?;
        let url = self.stream.exec_url(berth_streaming::server::ExecRequest {
            container_id: r.container_id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            io_socket,
            attach: false,
        });
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        let r = req.into_inner();
        let (io_socket, tty) = self.mgr.attach_target(&r).await?;
        let url = self.stream.attach_url(berth_streaming::server::ExecRequest {
            container_id: r.container_id,
            cmd: Vec::new(),
            tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !tty,
            io_socket,
            attach: true,
        });
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(&self, req: Request<cri::PortForwardRequest>) -> Reply<cri::PortForwardResponse> {
        let r = req.into_inner();
        if let Some(p) = r.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!("port {p} is not a TCP port")));
        }
        let netns = self.mgr.port_forward_target(&r.pod_sandbox_id)?;
        let url = self
            .stream
            .port_forward_url(berth_streaming::server::PortForwardRequest { pod_id: r.pod_sandbox_id, netns });
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(&self, req: Request<cri::ContainerStatsRequest>) -> Reply<cri::ContainerStatsResponse> {
        ok(self
            .mgr
            .container_stats(&req.into_inner().container_id)
            .await
            .map(|s| cri::ContainerStatsResponse { stats: Some(s) }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        ok(self
            .mgr
            .list_container_stats(req.into_inner().filter)
            .await
            .map(|stats| cri::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = BoxStream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Reply<Self::StreamContainerStatsStream> {
        let container_stats = self.mgr.list_container_stats(req.into_inner().filter).await?;
        Ok(Response::new(once(cri::StreamContainerStatsResponse { container_stats })))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Reply<cri::PodSandboxStatsResponse> {
        ok(self
            .mgr
            .pod_sandbox_stats(&req.into_inner().pod_sandbox_id)
            .await
            .map(|s| cri::PodSandboxStatsResponse { stats: Some(s) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        ok(self
            .mgr
            .list_pod_sandbox_stats(req.into_inner().filter)
            .await
            .map(|stats| cri::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = BoxStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Reply<Self::StreamPodSandboxStatsStream> {
        let pod_sandbox_stats = self.mgr.list_pod_sandbox_stats(req.into_inner().filter).await?;
        Ok(Response::new(once(cri::StreamPodSandboxStatsResponse { pod_sandbox_stats })))
    }

    async fn update_runtime_config(
        &self,
        _req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        // kubelet sends the pod CIDR here; Berth's CNI configuration names its own ranges.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            match self.mgr.network_ready() {
                Ok(()) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err(why) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: format!("{why}: pods get their own network namespace with loopback only"),
                },
            },
        ];
        let features = self.mgr.features();
        let mut info = std::collections::HashMap::new();
        if req.into_inner().verbose {
            info.insert(
                "config".to_string(),
                serde_json::json!({ "runtime": "berth", "version": VERSION }).to_string(),
            );
            let nri = self.mgr.nri();
            info.insert(
                "nri".to_string(),
                serde_json::json!({
                    "socket": nri.settings().socket.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    "plugins": nri.plugins().iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
                })
                .to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: crate::runtime_features::HANDLERS
                .iter()
                .map(|name| cri::RuntimeHandler {
                    name: name.to_string(),
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: features.recursive_read_only_mounts,
                        user_namespaces: features.user_namespaces,
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures { supplemental_groups_policy: true, ..Default::default() }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream = BoxStream<cri::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        use tokio_stream::StreamExt;
        // A client too slow for the backlog misses events; like kubelet's
        // evented PLEG it must relist, which is what a lag means.
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(self.mgr.subscribe_events()).filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse { descriptors: crate::pod_metrics::descriptors() }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        ok(self
            .mgr
            .list_pod_sandbox_metrics()
            .await
            .map(|pod_metrics| cri::ListPodSandboxMetricsResponse { pod_metrics }))
    }

    type StreamPodSandboxMetricsStream = BoxStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Reply<Self::StreamPodSandboxMetricsStream> {
        let pods = self.mgr.list_pod_sandbox_metrics().await?;
        if pods.is_empty() {
            return Ok(Response::new(once(cri::StreamPodSandboxMetricsResponse::default())));
        }
        // A pod a message: a node's metrics need not fit one gRPC message.
        let messages =
            pods.into_iter().map(|p| Ok(cri::StreamPodSandboxMetricsResponse { pod_sandbox_metrics: vec![p] }));
        Ok(Response::new(Box::pin(tokio_stream::iter(messages.collect::<Vec<_>>()))))
    }

    async fn runtime_config(&self, _req: Request<cri::RuntimeConfigRequest>) -> Reply<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: match self.mgr.cgroup_driver() {
                    crate::settings::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
                    crate::settings::CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
                } as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Reply<cri::UpdatePodSandboxResourcesResponse> {
        Err(unimplemented("UpdatePodSandboxResources"))
    }
}

fn to_cri_image(r: &berth_images::images::ImageRecord) -> cri::Image {
    let user = r.config["config"]["User"].as_str().unwrap_or("");
    let user = user.split(':').next().unwrap_or("");
    let (uid, username) = match user.parse::<i64>() {
        Ok(u) => (Some(cri::Int64Value { value: u }), String::new()),
        Err(_) if user.is_empty() => (Some(cri::Int64Value { value: 0 }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid,
        username,
        spec: Some(cri::ImageSpec { image: r.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

impl CriServer {
    fn start_pull(
        &self,
        image: &str,
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<berth_images::pull::PullHandle, Status> {
        if image.is_empty() {
            return Err(Status::invalid_argument("PullImage needs an image"));
        }
        let reference = berth_images::reference::Reference::parse(image).map_err(status)?;
        let creds = berth_images::registry::Credentials::new(username, password, auth, identity_token, registry_token)
            .map_err(status)?;
        debug!(self.log, "pull"; "image" => image);
        Ok(self.mgr.pull(&reference, creds))
    }

    async fn images_matching(&self, filter: Option<cri::ImageFilter>) -> Vec<cri::Image> {
        let want = filter.and_then(|f| f.image).map(|i| i.image).filter(|s| !s.is_empty());
        match want {
            Some(name) => self.mgr.image(&name).await.map(|r| vec![to_cri_image(&r)]).unwrap_or_default(),
            None => self.mgr.images().await.iter().map(to_cri_image).collect(),
        }
    }
}

#[tonic::async_trait]
impl ImageService for CriServer {
    async fn list_images(&self, req: Request<cri::ListImagesRequest>) -> Reply<cri::ListImagesResponse> {
        Ok(Response::new(cri::ListImagesResponse { images: self.images_matching(req.into_inner().filter).await }))
    }

    type StreamImagesStream = BoxStream<cri::StreamImagesResponse>;
    async fn stream_images(&self, req: Request<cri::StreamImagesRequest>) -> Reply<Self::StreamImagesStream> {
        let images = self.images_matching(req.into_inner().filter).await;
        Ok(Response::new(once(cri::StreamImagesResponse { images })))
    }

    async fn image_status(&self, req: Request<cri::ImageStatusRequest>) -> Reply<cri::ImageStatusResponse> {
        let r = req.into_inner();
        let name = r.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("ImageStatus needs an image"));
        }
        let rec = self.mgr.image(&name).await;
        let mut info = std::collections::HashMap::new();
        if let (Some(rec), true) = (&rec, r.verbose) {
            info.insert(
                "info".to_string(),
                serde_json::json!({ "imageSpec": rec.config, "layers": rec.layers }).to_string(),
            );
        }
        Ok(Response::new(cri::ImageStatusResponse { image: rec.as_ref().map(to_cri_image), info }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> Reply<cri::PullImageResponse> {
        let r = req.into_inner();
        let image = r.image.map(|i| i.image).unwrap_or_default();
        let a = r.auth.unwrap_or_default();
        let handle =
            self.start_pull(&image, &a.username, &a.password, &a.auth, &a.identity_token, &a.registry_token)?;
        let rec = handle.wait().await.map_err(status)?;
        Ok(Response::new(cri::PullImageResponse { image_ref: rec.id }))
    }

    async fn remove_image(&self, req: Request<cri::RemoveImageRequest>) -> Reply<cri::RemoveImageResponse> {
        let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("RemoveImage needs an image"));
        }
        self.mgr.remove_image(&name).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _req: Request<cri::ImageFsInfoRequest>) -> Reply<cri::ImageFsInfoResponse> {
        let used = self.mgr.image_fs_usage().await;
        let usage = cri::FilesystemUsage {
            timestamp: used.map(|u| u.at).unwrap_or_else(now_nanos),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.mgr.image_fs_mountpoint().display().to_string() }),
            used_bytes: used.map(|u| cri::UInt64Value { value: u.bytes }),
            inodes_used: used.map(|u| cri::UInt64Value { value: u.inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse { image_filesystems: vec![usage], container_filesystems: vec![] }))
    }
}

fn to_progress(layers: Vec<berth_images::pull::LayerProgress>, image_id: String) -> PullProgress {
    let layers = layers
        .into_iter()
        .map(|l| LayerProgress { digest: l.digest, size: l.size, done: l.done, state: l.state.as_str().to_string() })
        .collect();
    PullProgress { layers, image_id }
}

#[tonic::async_trait]
impl Images for CriServer {
    type PullStream = BoxStream<PullProgress>;
    async fn pull(&self, req: Request<PullRequest>) -> Reply<Self::PullStream> {
        let r = req.into_inner();
        let handle =
            self.start_pull(&r.image, &r.username, &r.password, &r.auth, &r.identity_token, &r.registry_token)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut done = handle.wait();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            loop {
                tokio::select! {
                    r = &mut done => {
                        let msg = r.map(|rec| to_progress(handle.progress(), rec.id)).map_err(status);
                        let _ = tx.send(msg).await;
                        break;
                    }
                    _ = tick.tick() => {
                        if tx.send(Ok(to_progress(handle.progress(), String::new()))).await.is_err() {
                            break;
                        }
                    }
                    // The client went away: dropping `done` gives up its share.
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn import(&self, req: Request<ImportRequest>) -> Reply<ImportResponse> {
        let r = req.into_inner();
        let path = std::path::PathBuf::from(&r.path);
        if !path.is_absolute() {
            return Err(Status::invalid_argument(format!("import path {:?} must be absolute", r.path)));
        }
        let name = (!r.name.is_empty()).then_some(r.name);
        // Copying and unpacking are blocking file work: on a blocking thread.
        let rec = self.mgr.with_image_store(move |store| Ok(store.import_layout(&path, name.as_deref())?)).await?;
        slog::info!(self.log, "image imported"; "image_id" => &rec.id, "tags" => rec.repo_tags.join(","));
        Ok(Response::new(ImportResponse { id: rec.id, repo_tags: rec.repo_tags }))
    }
}
