//! The connection berthctl drives: its CRI clients, crictl's config file,
//! and the requests every command sends (timeouts, --debug, id prefixes).
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use protocol::cri;
use protocol::cri::{image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use protocol::images::images_client::ImagesClient;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::log_printer;
use crate::output::unique;

pub(crate) struct Ctl {
    pub(crate) rt: RuntimeServiceClient<Channel>,
    pub(crate) img: ImageServiceClient<Channel>,
    pub(crate) berth: ImagesClient<Channel>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream_ca: Option<PathBuf>,
    pub(crate) debug: bool,
}

/// crictl's config file (`/etc/crictl.yaml`); keys it does not know are
/// ignored, as crictl ignores them.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default, rename_all = "kebab-case")]
pub(crate) struct CrictlConfig {
    pub(crate) runtime_endpoint: Option<String>,
    pub(crate) image_endpoint: Option<String>,
    pub(crate) timeout: Option<u64>,
    pub(crate) debug: Option<bool>,
}

impl CrictlConfig {
    /// The file, or nothing when it does not exist.
    pub(crate) fn load(path: &Path) -> Result<CrictlConfig> {
        match std::fs::read(path) {
            Ok(data) if data.len() > 1 << 20 => bail!("{} is larger than 1 MiB", path.display()),
            Ok(data) if data.iter().all(u8::is_ascii_whitespace) => Ok(CrictlConfig::default()),
            Ok(data) => serde_norway::from_slice(&data).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CrictlConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Shows a response with --debug.
pub(crate) fn got<T: std::fmt::Debug>(debug: bool, r: T) -> T {
    if debug {
        eprintln!("DEBUG response: {r:?}");
    }
    r
}

/// A `--timeout` value: a duration (2s, 1m) or whole seconds.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    berth_core::duration::parse_duration(s)
        .with_context(|| format!("--timeout {s:?}: give a duration like 2s or seconds"))
}

pub(crate) fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_slice(&data).with_context(|| format!("parsing {} as JSON", path.display()))
    } else {
        serde_norway::from_slice(&data).with_context(|| format!("parsing {} as YAML", path.display()))
    }
}

impl Ctl {
    pub(crate) fn req<T: std::fmt::Debug>(&self, msg: T) -> tonic::Request<T> {
        if self.debug {
            eprintln!("DEBUG request: {msg:?}");
        }
        let mut r = tonic::Request::new(msg);
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }

    pub(crate) async fn pod_id(&mut self, prefix: &str) -> Result<String> {
        let filter = cri::PodSandboxFilter { id: prefix.to_string(), ..Default::default() };
        let r = self.rt.list_pod_sandbox(self.req(cri::ListPodSandboxRequest { filter: Some(filter) })).await?;
        unique(prefix, r.into_inner().items.into_iter().map(|p| p.id).collect(), "pod sandboxes")
    }

    pub(crate) async fn container_id(&mut self, prefix: &str) -> Result<String> {
        let filter = cri::ContainerFilter { id: prefix.to_string(), ..Default::default() };
        let r = self.rt.list_containers(self.req(cri::ListContainersRequest { filter: Some(filter) })).await?;
        unique(prefix, r.into_inner().containers.into_iter().map(|c| c.id).collect(), "containers")
    }

    pub(crate) async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        self.rt
            .container_status(self.req(cri::ContainerStatusRequest { container_id: id.to_string(), verbose: false }))
            .await?
            .into_inner()
            .status
            .context("runtime returned no status")
    }

    pub(crate) async fn logs(&mut self, container: &str, follow: bool, opts: log_printer::Options) -> Result<()> {
        let id = self.container_id(container).await?;
        let st = self.container_status(&id).await?;
        if st.log_path.is_empty() {
            bail!("container {id} has no log file (its pod has no log_directory or it has no log_path)");
        }
        let path = PathBuf::from(&st.log_path);
        let mut follower =
            log_printer::Follower::open(&path, opts.tail).with_context(|| format!("opening {}", path.display()))?;
        let mut printer = log_printer::Printer::new(opts, std::io::stdout().lock(), std::io::stderr().lock());
        loop {
            // Whether it runs is asked before reading, so the last read after
            // it stopped sees everything it wrote.
            let running = follow
                && self
                    .container_status(&id)
                    .await
                    .map(|s| s.state != cri::ContainerState::ContainerExited as i32)
                    .unwrap_or(false);
            follower.poll(|l| if printer.done() { Ok(()) } else { printer.line(l) })?;
            printer.flush()?;
            if !running || printer.done() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
