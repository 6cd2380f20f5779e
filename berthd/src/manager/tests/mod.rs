//! The manager's recovery and rollback as tables over its seams (see
//! `doubles.rs`): no root, no runc, no berth-shim; the real manager, the
//! real metadata store and the real ttrpc client against in-process shims.
mod container_table;
mod doubles;
mod recovery_table;
mod rollback_table;

use std::sync::Arc;
use std::time::Duration;

use doubles::{FakeHost, FakeNetwork, FakeShims};
use protocol::cri;

use super::{Config, Manager, Seams};

/// One node's worth of doubles and folders.
struct Rig {
    dir: tempfile::TempDir,
    host: Arc<FakeHost>,
    net: Arc<FakeNetwork>,
    shims: Arc<FakeShims>,
}

impl Rig {
    fn new() -> Rig {
        let host = Arc::new(FakeHost::default());
        Rig {
            dir: tempfile::tempdir().expect("temp dir"),
            shims: Arc::new(FakeShims::new(Arc::clone(&host))),
            host,
            net: Arc::new(FakeNetwork::default()),
        }
    }

    fn config(&self) -> Config {
        let d = self.dir.path();
        Config {
            root: d.join("root"),
            state: d.join("state"),
            shim_binary: d.join("no-berth-shim"),
            runtime: d.join("no-runc"),
            runtime_timeout: Duration::from_secs(5),
            max_log_line: 16 * 1024,
            log_rotation: None,
            log_check_interval: Duration::from_secs(10),
            cni: crate::cni::Cni { conf_dir: d.join("cni"), bin_dirs: Vec::new(), timeout: Duration::from_secs(5) },
            file: Default::default(),
            cgroup_driver: crate::settings::CgroupDriver::Cgroupfs,
            nri: Default::default(),
        }
    }

    /// A manager on this rig's folders and doubles, recovered.
    async fn open(&self) -> (Arc<Manager>, super::Recovery) {
        let seams = Seams { host: self.host.clone(), network: self.net.clone(), shims: self.shims.clone() };
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let m = Arc::new(Manager::open_with(self.config(), seams, log).expect("manager opens"));
        let r = m.recover().await.expect("recovery runs");
        (m, r)
    }

    /// Folders left under `<state>/sandboxes`.
    fn sandbox_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/sandboxes")).map(|d| d.count()).unwrap_or(0)
    }
}

/// Imports a one-layer image named `name` (an OCI layout written here, as
/// `berthctl image import` reads one).
async fn image(m: &Manager, dir: &std::path::Path, name: &str) {
    use sha2::Digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout folder");
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    h.set_size(passwd.len() as u64);
    h.set_mode(0o644);
    // Owned by whoever runs the test: unpacking keeps owners, and a normal
    // user can only give files to itself.
    h.set_uid(nix::unistd::geteuid().as_raw().into());
    h.set_gid(nix::unistd::getegid().as_raw().into());
    h.set_mtime(0);
    h.set_cksum();
    layer.append_data(&mut h.clone(), "etc/passwd", &passwd[..]).expect("layer entry");
    // A file of its own, so two images never share their layer.
    h.set_size(name.len() as u64);
    h.set_cksum();
    layer.append_data(&mut h, "image-name", name.as_bytes()).expect("layer entry");
    let layer = layer.into_inner().expect("layer");
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": berth_images::images::host_arch(), "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    m.with_image_store(move |s| Ok(s.import_layout(&dir, Some(&name))?)).await.expect("image imports");
}

/// A container config for `name` from `image`.
fn container(name: &str, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    }
}

/// A row's outcome: Ok, or one line naming the row and all it found wrong.
fn verdict(what: &str, wrong: Vec<String>) -> Result<(), String> {
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", wrong.join("; ")))
    }
}

/// Runs every row at once (a hung shim costs its Connect deadline, 5 s)
/// and fails naming every row that went wrong.
async fn all_rows<R, F>(rows: &'static [R], run: impl Fn(&'static R) -> F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let results = futures::future::join_all(rows.iter().map(run)).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

fn pod(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "tables".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        ..Default::default()
    }
}
