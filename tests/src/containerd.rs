//! containerd (with its CRI plugin, containerd-shim-runc-v2 and the same
//! runc) in its own temp root, state, socket and CNI folder, for the
//! side-by-side benchmark. Never touches the system's containerd folders.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::cri::{self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

/// The sandbox image containerd's pods use (scripts/build-test-image.sh --pause).
pub const PAUSE_IMAGE: &str = "berth.local/pause:bench";

/// A running containerd.
pub struct Containerd {
    /// Temp folder with config, root, state, socket and logs.
    pub dir: tempfile::TempDir,
    /// CRI socket.
    pub socket: PathBuf,
    child: Option<Child>,
    /// RuntimeService client.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService client.
    pub img: ImageServiceClient<Channel>,
}

/// True when containerd and ctr are installed.
pub fn containerd_available() -> bool {
    crate::have_commands(&["containerd", "ctr", "containerd-shim-runc-v2"])
}

fn config(dir: &Path, cni_conf_dir: &Path, cni_bin_dir: &str, runc: &str) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Like Berth, never ask for an oom_score_adj below containerd's own: a
  # host without CAP_SYS_RESOURCE refuses that.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
"#,
        cni = cni_conf_dir.display()
    )
}

impl Containerd {
    /// Starts containerd with `cni_conf_dir` and imports the OCI layouts in
    /// `images` (the pause image among them) into its k8s.io namespace.
    pub async fn start(cni_conf_dir: &Path, cni_bin_dir: &str, runc: &str, images: &[&Path]) -> Containerd {
        let dir = tempfile::Builder::new().prefix("ctrd").tempdir_in("/tmp").expect("temp dir");
        std::fs::write(dir.path().join("config.toml"), config(dir.path(), cni_conf_dir, cni_bin_dir, runc))
            .expect("containerd config");
        let socket = dir.path().join("c.sock");
        let child = Self::spawn(dir.path());
        let ch = connect(&socket).await;
        let mut c = Containerd {
            dir,
            socket,
            child: Some(child),
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
        };
        for layout in images {
            c.import(layout);
        }
        c
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log")).expect("log");
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd")
    }

    fn import(&mut self, layout: &Path) {
        let tar = self.dir.path().join("import.tar");
        let st = Command::new("tar").arg("-C").arg(layout).arg("-cf").arg(&tar).arg(".").status().expect("tar");
        assert!(st.success());
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&tar)
            .output()
            .expect("ctr import");
        assert!(out.status.success(), "ctr import: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_file(&tar);
    }

    /// Lets pulls from `host` use plain http (containerd's hosts.toml,
    /// read at each pull).
    pub fn allow_plain_http(&self, host: &str) {
        let dir = self.dir.path().join("certs.d").join(host);
        std::fs::create_dir_all(&dir).expect("certs.d");
        let toml =
            format!("server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        std::fs::write(dir.join("hosts.toml"), toml).expect("hosts.toml");
    }

    /// containerd's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILLs containerd (shims and containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts containerd again on the same folders.
    pub async fn restart(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.socket);
        self.child = Some(Self::spawn(self.dir.path()));
        let ch = connect(&self.socket).await;
        self.rt = RuntimeServiceClient::new(ch.clone());
        self.img = ImageServiceClient::new(ch);
    }

    /// The per-pod processes containerd adds: the pod's shim and its pause.
    pub async fn pod_pids(&mut self, pod: &str) -> Vec<i32> {
        let info = crate::pod_info(&mut self.rt, pod).await;
        let pause = info["pid"].as_i64().expect("pause pid") as i32;
        vec![crate::parent_pid(pause), pause]
    }
}

async fn connect(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists() {
            if let Ok(ch) = protocol::cri_client::connect(&socket.display().to_string(), Duration::from_secs(2)).await {
                let mut rt = RuntimeServiceClient::new(ch.clone());
                if rt.version(cri::VersionRequest::default()).await.is_ok() {
                    return ch;
                }
            }
        }
        assert!(Instant::now() < deadline, "containerd did not come up on {}", socket.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            crate::remove_all_pods(&self.socket, true);
        }
        self.kill9();
        let mut mounts = crate::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
