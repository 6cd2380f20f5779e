//! Pod networking through CNI plugins (containernetworking-plugins: bridge,
//! host-local, portmap, ...). The first network configuration in the conf
//! folder (`*.conflist`, or a single-plugin `*.conf`) is run against the
//! sandbox's pinned network namespace: ADD when the pod runs, DEL (with the
//! ADD result as prevResult, as chained plugins like portmap need) when it
//! stops, with the configuration ADD ran with. Every plugin runs with a
//! timeout; its error message is kept.
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::cri;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use berth_core::error::Error;

/// A CNI configuration or plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration file cannot be read or used.
    #[error("{0}")]
    Config(String),
    /// A plugin named in the configuration cannot be run.
    #[error("{0}")]
    Plugin(String),
    /// A plugin ran past cni.plugin_timeout and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {after:?} (cni.plugin_timeout)")]
    TimedOut {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        command: String,
        /// The limit.
        after: Duration,
    },
    /// A plugin exited non-zero.
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Failed {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        command: String,
        /// Its CNI error (msg, details) and stderr.
        message: String,
    },
    /// A plugin succeeded but printed no CNI result.
    #[error("CNI plugin {plugin} printed no valid result: {detail}")]
    BadResult {
        /// The plugin type.
        plugin: String,
        /// Why.
        detail: String,
    },
}

/// Result with [`CniError`].
pub type Result<T> = std::result::Result<T, CniError>;

impl From<CniError> for Error {
    fn from(e: CniError) -> Self {
        // Every CNI failure is the node's, never the caller's.
        Error::internal(e.to_string())
    }
}

/// Where configurations and plugins are.
#[derive(Clone, Debug)]
pub struct Cni {
    /// Configuration folder.
    pub conf_dir: PathBuf,
    /// Folders searched for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin may run before it is killed (cni.plugin_timeout).
    pub timeout: Duration,
}

/// A loaded network configuration list. A pod keeps the one its ADD ran
/// with, and DEL runs with that (as libcni caches it), so a changed or
/// removed configuration still releases the pod's addresses and ports.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Network {
    /// Network name.
    pub name: String,
    /// CNI spec version of the list.
    pub cni_version: String,
    /// Plugin configurations, in order.
    pub plugins: Vec<Value>,
}

/// The pod a call is for.
pub struct PodRef<'a> {
    /// Sandbox id (CNI_CONTAINERID).
    pub id: &'a str,
    /// Pinned network namespace (CNI_NETNS).
    pub netns: &'a Path,
    /// Pod metadata (for CNI_ARGS).
    pub metadata: &'a cri::PodSandboxMetadata,
    /// Port mappings (the portMappings capability).
    pub ports: &'a [cri::PortMapping],
}

impl Cni {
    /// The first configuration in the folder; None when there is none.
    pub fn load(&self) -> Result<Option<Network>> {
        let Ok(entries) = std::fs::read_dir(&self.conf_dir) else { return Ok(None) };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
            .collect();
        files.sort();
        let Some(path) = files.first() else { return Ok(None) };
        let text =
            std::fs::read_to_string(path).map_err(|e| CniError::Config(format!("reading {}: {e}", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| CniError::Config(format!("CNI configuration {} is not JSON: {e}", path.display())))?;
        let name = v["name"].as_str().unwrap_or("").to_string();
        let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
        let plugins = match v["plugins"].as_array() {
            Some(p) => p.clone(),
            None => vec![v.clone()],
        };
        if name.is_empty() || plugins.iter().any(|p| p["type"].as_str().is_none()) {
            return Err(CniError::Config(format!(
                "CNI configuration {} needs a name and a type for every plugin",
                path.display()
            )));
        }
        Ok(Some(Network { name, cni_version, plugins }))
    }

    fn find(&self, plugin: &str) -> Result<PathBuf> {
        if plugin.contains('/') {
            return Err(CniError::Plugin(format!("CNI plugin type {plugin:?} must be a plain name")));
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::Plugin(format!("CNI plugin {plugin:?} not found in {:?}", self.bin_dirs)))
    }

    async fn exec(
        &self,
        command: &str,
        net: &Network,
        plugin: &Value,
        pod: &PodRef<'_>,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let kind = plugin["type"].as_str().unwrap_or("");
        let mut conf = plugin.clone();
        conf["name"] = json!(net.name);
        conf["cniVersion"] = json!(net.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["portMappings"].as_bool() == Some(true) {
            let ports: Vec<Value> = pod
                .ports
                .iter()
                .filter(|p| p.host_port > 0)
                .map(|p| {
                    let proto = match p.protocol {
                        1 => "udp",
                        2 => "sctp",
                        _ => "tcp",
                    };
                    json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto, "hostIP": p.host_ip})
                })
                .collect();
            conf["runtimeConfig"] = json!({ "portMappings": ports });
        }
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.metadata.namespace, pod.metadata.name, pod.id, pod.metadata.uid
        );
        let path = std::env::join_paths(&self.bin_dirs).map_err(|e| CniError::Plugin(format!("CNI path: {e}")))?;
        let mut cmd = tokio::process::Command::new(self.find(kind)?);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.id)
            .env("CNI_NETNS", pod.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| CniError::Plugin(format!("starting CNI plugin {kind}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let data = serde_json::to_vec(&conf).unwrap_or_default();
            let _ = stdin.write_all(&data).await;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CniError::TimedOut { plugin: kind.into(), command: command.into(), after: self.timeout })?
            .map_err(|e| CniError::Plugin(format!("CNI plugin {kind}: {e}")))?;
        if !out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let msg = v["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
            let details = v["details"].as_str().unwrap_or("");
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(CniError::Failed {
                plugin: kind.into(),
                command: command.into(),
                message: format!(
                    "{msg}{}{}",
                    if details.is_empty() { String::new() } else { format!(" ({details})") },
                    if stderr.trim().is_empty() { String::new() } else { format!("; stderr: {}", stderr.trim()) }
                ),
            });
        }
        if command == "DEL" || out.stdout.is_empty() {
            return Ok(prev.cloned().unwrap_or(Value::Null));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| CniError::BadResult { plugin: kind.into(), detail: e.to_string() })
    }

    /// Runs ADD through the list; returns the final result.
    pub async fn add(&self, net: &Network, pod: &PodRef<'_>) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for p in &net.plugins {
            prev = Some(self.exec("ADD", net, p, pod, prev.as_ref()).await?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// Runs DEL through the list in reverse; idempotent (plugins are).
    pub async fn del(&self, net: &Network, pod: &PodRef<'_>, result: Option<&Value>) -> Result<()> {
        for p in net.plugins.iter().rev() {
            self.exec("DEL", net, p, pod, result).await?;
        }
        Ok(())
    }
}

/// A pod's network as the manager sees it: CNI plugins on a node, a
/// recording double in unit tests.
#[async_trait::async_trait]
pub trait PodNetwork: Send + Sync {
    /// The configuration a new pod's ADD runs with; None when there is none.
    fn load(&self) -> Result<Option<Network>>;
    /// Where configurations are looked for (for messages).
    fn conf_dir(&self) -> &Path;
    /// ADD: the pod joins `net`; the result to keep for its DEL.
    async fn add(&self, net: &Network, pod: &PodRef<'_>) -> Result<Value>;
    /// DEL: the pod leaves `net` (idempotent).
    async fn del(&self, net: &Network, pod: &PodRef<'_>, result: Option<&Value>) -> Result<()>;
}

#[async_trait::async_trait]
impl PodNetwork for Cni {
    fn load(&self) -> Result<Option<Network>> {
        Cni::load(self)
    }
    fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }
    async fn add(&self, net: &Network, pod: &PodRef<'_>) -> Result<Value> {
        Cni::add(self, net, pod).await
    }
    async fn del(&self, net: &Network, pod: &PodRef<'_>, result: Option<&Value>) -> Result<()> {
        Cni::del(self, net, pod, result).await
    }
}

/// Whether `path` is a network namespace (an nsfs file), as a pin must be.
pub fn is_netns(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// The pod IPs of a CNI result (`ips[].address`, without the prefix length).
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_lists_and_single_plugins() {
        let d = tempfile::tempdir().unwrap();
        let cni = Cni { conf_dir: d.path().to_path_buf(), bin_dirs: vec![], timeout: Duration::from_secs(1) };
        assert!(cni.load().unwrap().is_none());
        std::fs::write(d.path().join("20-b.conf"), r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#)
            .unwrap();
        let n = cni.load().unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.plugins.len()), ("single", 1));
        std::fs::write(
            d.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"list","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let n = cni.load().unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.plugins.len(), n.cni_version.as_str()), ("list", 2, "1.0.0"));
    }

    #[test]
    fn ips_from_result() {
        let r = json!({"ips": [{"address": "10.88.0.5/16"}, {"address": "fd00::5/64"}]});
        assert_eq!(result_ips(&r), vec!["10.88.0.5", "fd00::5"]);
    }
}
