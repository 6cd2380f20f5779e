//! Test harness: a real berthd (and its real shims, runc and namespaces) in
//! its own temp root, state folder and socket per test, with the test image
//! imported. Dropping a [`Daemon`] removes every pod through CRI, ends the
//! daemon by pid, unmounts whatever is left under its folder and deletes it.
pub mod containerd;
pub mod faults;
pub mod nri_plugin;
pub mod registry;
pub mod streams;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use protocol::cri::{self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use protocol::images::images_client::ImagesClient;
use tonic::transport::Channel;

/// The image the tests run.
pub const TEST_IMAGE: &str = "docker.io/library/berth-test:latest";

/// Workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Folder with berthd, berth-shim and berthctl.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
    target.join("debug")
}

/// The test image's OCI layout: `$BERTH_TEST_IMAGE`, else
/// `target/test-image` (what scripts/test.sh builds), built there with
/// scripts/build-test-image.sh when missing: one image for every test
/// process, nothing left in /tmp.
pub fn test_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("BERTH_TEST_IMAGE") {
                return PathBuf::from(p);
            }
            let dir = workspace().join("target/test-image");
            if dir.join("index.json").exists() {
                return dir;
            }
            // Built aside and renamed, so a test process running at the same
            // time never sees half an image.
            let tmp = workspace().join(format!("target/test-image.tmp-{}", std::process::id()));
            let st = Command::new("bash")
                .arg(workspace().join("scripts/build-test-image.sh"))
                .arg(&tmp)
                .stdout(Stdio::null())
                .status()
                .expect("run build-test-image.sh");
            assert!(st.success(), "building the test image failed");
            if std::fs::rename(&tmp, &dir).is_err() {
                // Another process put its image there first.
                let _ = std::fs::remove_dir_all(&tmp);
            }
            dir
        })
        .clone()
}

/// A running berthd in its own folders.
pub struct Daemon {
    /// Temp folder holding everything.
    pub dir: tempfile::TempDir,
    /// CRI socket.
    pub socket: PathBuf,
    /// Folder for pod logs.
    pub logs: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    /// RuntimeService client.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService client.
    pub img: ImageServiceClient<Channel>,
}

fn spawn_berthd(dir: &Path, socket: &Path, env: &[(&str, &str)], args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("berthd.log")).expect("berthd.log");
    let mut cmd = Command::new(bin_dir().join("berthd"));
    cmd.arg("--root").arg(dir.join("r"));
    if !args.iter().any(|a| a == "--state") {
        cmd.arg("--state").arg(dir.join("s"));
    }
    cmd.arg("--listen")
        .arg(socket)
        .arg("--log-level")
        .arg("debug")
        // No CNI unless a test writes a configuration into its own folder.
        .arg("--cni-conf-dir")
        .arg(dir.join("cni"))
        // Each daemon's own NRI socket: the node's default is shared.
        .arg("--nri-socket")
        .arg(dir.join("nri").join("nri.sock"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn berthd (run `cargo build --workspace` first)")
}

async fn connect(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if socket.exists() {
            if let Ok(ch) = protocol::cri_client::connect(&socket.display().to_string(), Duration::from_secs(2)).await {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "berthd did not come up on {}", socket.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Daemon {
    /// Starts berthd in a fresh temp folder and imports the test image.
    pub async fn start() -> Daemon {
        Self::start_with(&[]).await
    }

    /// Starts berthd with extra environment (for example a failpoint).
    pub async fn start_with(env: &[(&str, &str)]) -> Daemon {
        Self::start_full(env, &[]).await
    }

    /// Starts berthd with extra environment and extra flags (kept for
    /// restarts); `{dir}` in a flag is the daemon's temp folder.
    pub async fn start_full(env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new().prefix("b").tempdir_in("/tmp").expect("temp dir");
        let args: Vec<String> = args.iter().map(|s| s.replace("{dir}", &dir.path().display().to_string())).collect();
        let socket = dir.path().join("c.sock");
        let logs = dir.path().join("logs");
        let child = spawn_berthd(dir.path(), &socket, env, &args);
        let ch = connect(&socket).await;
        let mut d = Daemon {
            dir,
            socket,
            logs,
            child: Some(child),
            args,
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch.clone()),
        };
        let image = test_image();
        ImagesClient::new(ch)
            .import(protocol::images::ImportRequest { path: image.display().to_string(), name: String::new() })
            .await
            .expect("import test image");
        d.logs = d.dir.path().join("logs");
        d
    }

    /// berthd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILLs berthd (by pid) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts berthd again on the same folders.
    pub async fn restart(&mut self) {
        self.restart_with(&[]).await
    }

    /// Starts berthd again on the same folders, with extra environment.
    pub async fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        let _ = std::fs::remove_file(&self.socket);
        self.child = Some(spawn_berthd(self.dir.path(), &self.socket, env, &self.args));
        let ch = connect(&self.socket).await;
        self.rt = RuntimeServiceClient::new(ch.clone());
        self.img = ImageServiceClient::new(ch);
    }

    /// Whether berthd has exited (and reaps it if so).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Waits (up to `limit`) for berthd to exit by itself.
    pub async fn wait_exited(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Folders under the state and root dirs that hold per-object state.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in ["s/sandboxes", "s/containers", "r/containers"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.path().join(d)) {
                out.extend(entries.flatten().map(|e| e.path()));
            }
        }
        out
    }

    /// Waits (up to 5 s: berthd logs asynchronously) until its log contains `text`.
    pub async fn log_contains(&self, text: &str) -> bool {
        file_contains(&self.dir.path().join("berthd.log"), text).await
    }

    /// The pods berthd lists.
    pub async fn pods(&mut self) -> Vec<cri::PodSandbox> {
        self.rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list pods")
            .into_inner()
            .items
    }

    /// The largest resident size berthd reached, in kB (VmHWM).
    pub fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// What berthd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// A pod config with a log directory in the daemon's folder; pid
    /// namespace per container, as kubelet asks for v1 pods.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            hostname: name.replace('.', "-"),
            log_directory: self.logs.join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod; returns its id.
    pub async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> String {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .expect("run pod sandbox")
            .into_inner()
            .pod_sandbox_id
    }

    /// Creates a container running `cmd` (with `sh -c` when it is one string).
    pub async fn create(&mut self, pod: &str, pod_config: &cri::PodSandboxConfig, name: &str, cmd: &[&str]) -> String {
        let config = container_config(name, cmd);
        self.create_with(pod, pod_config, config).await.expect("create container")
    }

    /// Creates a container from a full config.
    pub async fn create_with(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// Starts a container.
    pub async fn start_container(&mut self, id: &str) {
        self.rt.start_container(cri::StartContainerRequest { container_id: id.into() }).await.expect("start container");
    }

    /// Status of a container.
    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await
            .expect("container status")
            .into_inner()
            .status
            .expect("status present")
    }

    /// The `info` JSON of a verbose ContainerStatus.
    pub async fn container_info(&mut self, id: &str) -> serde_json::Value {
        let r = self
            .rt
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true })
            .await
            .expect("container status")
            .into_inner();
        serde_json::from_str(&r.info["info"]).expect("info json")
    }

    /// The `info` JSON of a verbose PodSandboxStatus.
    pub async fn pod_info(&mut self, pod: &str) -> serde_json::Value {
        pod_info(&mut self.rt, pod).await
    }

    /// Status of a pod sandbox.
    pub async fn pod_status(&mut self, pod: &str) -> cri::PodSandboxStatus {
        self.rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
            .await
            .expect("pod status")
            .into_inner()
            .status
            .expect("status present")
    }

    /// pid of a container's init.
    pub async fn container_pid(&mut self, id: &str) -> i32 {
        self.container_info(id).await["pid"].as_i64().expect("pid") as i32
    }

    /// pid of a sandbox's shim.
    pub async fn shim_pid(&mut self, pod: &str) -> i32 {
        self.pod_info(pod).await["pid"].as_i64().expect("pid") as i32
    }

    /// Waits until the container reaches `state`.
    pub async fn wait_state(&mut self, id: &str, state: cri::ContainerState, limit: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status(id).await;
            if s.state == state as i32 {
                return s;
            }
            assert!(Instant::now() < deadline, "container {id} never reached {state:?}; last status {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// ExecSync.
    pub async fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, tonic::Status> {
        Ok(self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await?
            .into_inner())
    }

    /// The streaming URL of an Exec of `cmd` with stdout (and a terminal when `tty`).
    pub async fn exec_url(&mut self, id: &str, cmd: &[&str], tty: bool) -> String {
        self.rt
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdout: true,
                ..Default::default()
            })
            .await
            .expect("exec url")
            .into_inner()
            .url
    }

    /// stdout of an exec that must succeed.
    pub async fn exec_out(&mut self, id: &str, cmd: &[&str]) -> String {
        let r = self.exec(id, cmd, 30).await.expect("exec");
        assert_eq!(r.exit_code, 0, "exec {cmd:?} failed: {}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    }

    /// Mount points under the daemon's folder.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.dir.path())
    }

    fn cleanup(&mut self) {
        if self.child.is_some() && !self.exited() {
            remove_all_pods(&self.socket, false);
        }
        self.kill9();
        // Anything a failed test left: shims by their pid files, then mounts.
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("s/sandboxes")) {
            for e in entries.flatten() {
                if let Some(pid) =
                    std::fs::read_to_string(e.path().join("shim.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())
                {
                    kill_tree(pid);
                }
            }
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// How many pods and containers berthd lists.
pub async fn counts(d: &mut Daemon) -> (usize, usize) {
    let pods = d.pods().await.len();
    let cs =
        d.rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .expect("list containers")
            .into_inner()
            .containers
            .len();
    (pods, cs)
}

/// The `info` JSON of a verbose PodSandboxStatus, from any CRI runtime.
pub async fn pod_info(rt: &mut RuntimeServiceClient<Channel>, pod: &str) -> serde_json::Value {
    let r = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: true })
        .await
        .expect("pod status")
        .into_inner();
    serde_json::from_str(&r.info["info"]).expect("info json")
}

/// Removes every pod of the CRI runtime on `socket` (stopping each first when
/// `stop_first`), from a thread of its own: a Drop may run inside a test's
/// runtime, where blocking on another is not allowed.
pub fn remove_all_pods(socket: &Path, stop_first: bool) {
    let socket = socket.to_path_buf();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let Ok(ch) = protocol::cri_client::connect(&socket.display().to_string(), Duration::from_secs(2)).await
            else {
                return;
            };
            let mut c = RuntimeServiceClient::new(ch);
            let Ok(pods) = c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await else { return };
            for p in pods.into_inner().items {
                if stop_first {
                    let _ = c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await;
                }
                let _ = c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id }).await;
            }
        });
    })
    .join();
}

/// Whether every command is on PATH.
pub fn have_commands(names: &[&str]) -> bool {
    names.iter().all(|b| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Says why a test (or, with `part`, a part of it) did not check what it
/// is for. The reason goes to stderr and, when `BERTH_TEST_SKIP_LOG` names a
/// file (scripts/test.sh sets it), into that file, so a skip is counted and
/// listed in the run's summary instead of passing unseen.
pub fn skip(part: bool, reason: &str) {
    let line = format!("{}: {reason}", if part { "SKIP (part)" } else { "SKIP" });
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("BERTH_TEST_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            use std::io::Write;
            let _ = writeln!(f, "{test}: {line}");
        }
    }
}

/// The parent of a process (0 when it is gone).
pub fn parent_pid(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).and_then(|x| x.parse::<i32>().ok()))
        })
        .unwrap_or(0)
}

/// SIGKILLs a process and its descendants, found through /proc.
pub fn kill_tree(pid: i32) {
    let mut children = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if parent_pid(p) == pid {
                children.push(p);
            }
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    for c in children {
        kill_tree(c);
    }
}

/// Mount points below `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Whether a pid is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The plain pod users run: named `name` in `namespace`, its own hostname,
/// its logs in `log_root/<name>`, default Linux settings (a network when
/// the node has one).
pub fn plain_pod_config(name: &str, namespace: &str, log_root: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: namespace.into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_root.join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A container config running `cmd` from the test image, logging to `<name>.log`.
pub fn container_config(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: TEST_IMAGE.into(), ..Default::default() }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The test's network; deletes its bridge when dropped.
pub struct TestNet {
    /// Bridge name.
    pub bridge: String,
    /// First three octets of the /24.
    pub prefix: String,
    /// host-local's data folder.
    pub ipam: std::path::PathBuf,
    /// The network's name (host-local keeps its leases in `ipam/<name>/`).
    pub name: String,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// Every cgroup (v1 and v2) mount point.
pub fn cgroup_mount_points() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")).then_some(())?;
            Some(PathBuf::from(left.split(' ').nth(4)?))
        })
        .collect()
}

/// The cgroup folders of a pod without a cgroup parent (Berth's own
/// `berth/<pod>`), in every cgroup hierarchy that has one.
pub fn pod_cgroups(pod: &str) -> Vec<PathBuf> {
    cgroup_mount_points().into_iter().map(|m| m.join("berth").join(pod)).filter(|p| p.exists()).collect()
}

/// Whether Debian's CNI plugins are installed.
pub fn cni_available() -> bool {
    Path::new("/usr/lib/cni/bridge").exists() || Path::new("/opt/cni/bin/bridge").exists()
}

impl TestNet {
    /// The addresses host-local has leased on this network.
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam.join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Writes a bridge + host-local + portmap configuration unique to this daemon.
    pub fn new(d: &Daemon) -> TestNet {
        let tag: String =
            d.dir.path().file_name().unwrap().to_string_lossy().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let tag = tag.to_ascii_lowercase();
        let h = tag.bytes().fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
        let prefix = format!("10.{}.{}", 100 + h % 100, (h / 100) % 250);
        let bridge = format!("bt{}", &tag[tag.len().saturating_sub(8)..]);
        let ipam = d.dir.path().join("ipam");
        let name = format!("berth-test-{tag}");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{prefix}.0/24")}]], "dataDir": ipam}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let dir = d.dir.path().join("cni");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("10-test.conflist"), serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
        TestNet { bridge, prefix, ipam, name }
    }
}

/// Builds the Go program `tests/peers/NAME.go` into `dir` against Debian's
/// Go packages (GOPATH /usr/share/gocode); None when Go or a package it
/// imports is missing.
pub fn go_peer(name: &str, dir: &Path) -> Option<PathBuf> {
    let src = workspace().join(format!("tests/peers/{name}.go"));
    let out = dir.join(name);
    let ok = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(out)
}

/// Waits (up to 5 s) until the file at `path` contains `text`.
pub async fn file_contains(path: &Path, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).unwrap_or_default().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
