//! The manager's recovery and rollback as tables over its seams (see
//! `doubles.rs`): no root, no runc, no berth-shim; the real manager, the
//! real metadata store and the real ttrpc client against in-process shims.
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
