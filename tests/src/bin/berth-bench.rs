//! berth-bench: Berth and containerd (CRI plugin, containerd-shim-runc-v2)
//! side by side on this machine, driven through the same CRI client code
//! (berthctl's, in-process, and the berthctl binary as a process per call,
//! as a user or crictl drives a runtime), with the same runc, the same images (built locally) and the
//! same CNI network; lifecycle rounds alternate A B A B. Prints a table of
//! medians, p90s and ratios and writes it as JSON. Run through
//! scripts/bench.sh, which installs containerd and builds release binaries.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::containerd::{containerd_available, Containerd};
use berth_tests::registry::{build_image, layer_from_tar, registry_available, tar_of, Auth, Compression, Registry};
use berth_tests::Daemon;
use protocol::cri::{self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use serde_json::json;
use tonic::transport::Channel;

const BRIDGE: &str = "bbench0";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Median and p90 of samples.
fn median_p90(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn proc_kb(pid: i32, field: &str, file: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds a process has used.
#[allow(unsafe_code)] // sysconf
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name).
    let ticks: f64 = fields.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

enum Engine {
    Berth(Daemon),
    Containerd(Containerd),
}

/// One runtime under test.
struct Target {
    name: &'static str,
    engine: Engine,
    logs: PathBuf,
}

impl Target {
    fn rt(&self) -> RuntimeServiceClient<Channel> {
        match &self.engine {
            Engine::Berth(d) => d.rt.clone(),
            Engine::Containerd(c) => c.rt.clone(),
        }
    }

    fn socket(&self) -> PathBuf {
        match &self.engine {
            Engine::Berth(d) => d.socket.clone(),
            Engine::Containerd(c) => c.socket.clone(),
        }
    }

    fn img(&self) -> ImageServiceClient<Channel> {
        match &self.engine {
            Engine::Berth(d) => d.img.clone(),
            Engine::Containerd(c) => c.img.clone(),
        }
    }

    /// What berthd logged so far (None for containerd).
    fn berthd_log(&self) -> Option<String> {
        match &self.engine {
            Engine::Berth(d) => Some(d.log()),
            Engine::Containerd(_) => None,
        }
    }

    fn daemon_pid(&self) -> i32 {
        match &self.engine {
            Engine::Berth(d) => d.pid() as i32,
            Engine::Containerd(c) => c.pid(),
        }
    }

    async fn restart(&mut self) {
        match &mut self.engine {
            Engine::Berth(d) => {
                d.kill9();
                d.restart().await
            }
            Engine::Containerd(c) => c.restart().await,
        }
    }

    /// The processes the runtime adds per pod.
    async fn pod_pids(&mut self, pod: &str) -> Vec<i32> {
        match &mut self.engine {
            // The shim, and the pod's pid 1 when the pod shares a pid
            // namespace (kubelet's default for a pod is one per container;
            // the bench's pods share one, as crictl's do).
            Engine::Berth(d) => {
                let info = d.pod_info(pod).await;
                let pids = [info["pid"].as_i64(), info["podInitPid"].as_i64()];
                pids.into_iter().flatten().filter(|p| *p > 0).filter_map(|p| i32::try_from(p).ok()).collect()
            }
            Engine::Containerd(c) => c.pod_pids(pod).await,
        }
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        berth_tests::plain_pod_config(name, "bench", &self.logs)
    }
}

async fn run_pod(rt: &mut RuntimeServiceClient<Channel>, cfg: &cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

async fn create(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    cfg: &cri::PodSandboxConfig,
    cmd: &[&str],
) -> String {
    create_with_mounts(rt, pod, cfg, cmd, Vec::new()).await
}

async fn create_with_mounts(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    cfg: &cri::PodSandboxConfig,
    cmd: &[&str],
    mounts: Vec<cri::Mount>,
) -> String {
    let mut config = berth_tests::container_config("c", cmd);
    config.linux = Some(cri::LinuxContainerConfig::default());
    config.mounts = mounts;
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(cfg.clone()),
    })
    .await
    .expect("CreateContainer")
    .into_inner()
    .container_id
}

async fn state(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status")
}

async fn wait_state(rt: &mut RuntimeServiceClient<Channel>, id: &str, want: cri::ContainerState, poll: Duration) {
    loop {
        if state(rt, id).await.state == want as i32 {
            return;
        }
        tokio::time::sleep(poll).await;
    }
}

async fn start_running(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.start_container(cri::StartContainerRequest { container_id: id.into() }).await.expect("StartContainer");
    wait_state(rt, id, cri::ContainerState::ContainerRunning, Duration::from_millis(1)).await;
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, pod: &str) {
    // What kubelet does: stop, then remove.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("StopPodSandbox");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("RemovePodSandbox");
}

async fn remove_all(t: &Target) {
    let mut rt = t.rt();
    let pods = rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.expect("list").into_inner().items;
    for p in pods {
        remove_pod(&mut rt, &p.id).await;
    }
}

/// A container that exits at once on SIGTERM.
const TERM_EXITS: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"];

#[derive(Default)]
struct Lifecycle {
    run_pod: Vec<f64>,
    start: Vec<f64>,
    exec: Vec<f64>,
    stop: Vec<f64>,
    remove: Vec<f64>,
}

async fn lifecycle_round(t: &Target, i: usize, out: &mut Lifecycle) {
    let mut rt = t.rt();
    let cfg = t.pod_config(&format!("life-{i}"));
    let s = Instant::now();
    let pod = run_pod(&mut rt, &cfg).await;
    out.run_pod.push(ms(s.elapsed()));

    let s = Instant::now();
    let c = create(&mut rt, &pod, &cfg, TERM_EXITS).await;
    start_running(&mut rt, &c).await;
    out.start.push(ms(s.elapsed()));

    for _ in 0..5 {
        let s = Instant::now();
        let r = rt
            .exec_sync(cri::ExecSyncRequest { container_id: c.clone(), cmd: vec!["true".into()], timeout: 10 })
            .await
            .expect("ExecSync")
            .into_inner();
        out.exec.push(ms(s.elapsed()));
        assert_eq!(r.exit_code, 0);
    }

    let s = Instant::now();
    rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 10 }).await.expect("StopContainer");
    out.stop.push(ms(s.elapsed()));

    let s = Instant::now();
    remove_pod(&mut rt, &pod).await;
    out.remove.push(ms(s.elapsed()));
}

/// One lifecycle as a user drives it: a berthctl process per CRI call (as
/// crictl would be), each timed from spawn to exit.
#[derive(Default)]
struct ClientSteps {
    run_pod: Vec<f64>,
    create: Vec<f64>,
    start: Vec<f64>,
    stop_pod: Vec<f64>,
    remove_pod: Vec<f64>,
    whole: Vec<f64>,
}

/// Runs `berthctl --runtime-endpoint SOCKET args...`; its stdout and how long
/// it took.
async fn berthctl(socket: &Path, args: &[&str]) -> (String, f64) {
    let s = Instant::now();
    let out = tokio::process::Command::new(berth_tests::bin_dir().join("berthctl"))
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .await
        .expect("berthctl runs");
    let took = ms(s.elapsed());
    assert!(out.status.success(), "berthctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), took)
}

async fn client_round(t: &Target, i: usize, dir: &Path, out: &mut ClientSteps) {
    let name = format!("cli-{i}");
    let pod_json = dir.join(format!("{}-{name}-pod.json", t.name));
    let ctr_json = dir.join(format!("{}-{name}-ctr.json", t.name));
    let pod_cfg = json!({
        "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}"), "attempt": 0},
        "hostname": name, "log_directory": t.logs.join(&name).display().to_string(), "linux": {},
    });
    let ctr_cfg = json!({
        "metadata": {"name": "c", "attempt": 0}, "image": {"image": berth_tests::TEST_IMAGE},
        "command": TERM_EXITS, "log_path": "c.log", "linux": {},
    });
    std::fs::write(&pod_json, pod_cfg.to_string()).expect("pod config");
    std::fs::write(&ctr_json, ctr_cfg.to_string()).expect("container config");
    let (sock, pj, cj) = (t.socket(), pod_json.display().to_string(), ctr_json.display().to_string());
    let (pod, a) = berthctl(&sock, &["runp", &pj]).await;
    let (c, b) = berthctl(&sock, &["create", &pod, &cj, &pj]).await;
    let (_, s) = berthctl(&sock, &["start", &c]).await;
    let (_, st) = berthctl(&sock, &["stopp", &pod]).await;
    let (_, r) = berthctl(&sock, &["rmp", &pod]).await;
    for (v, x) in [
        (&mut out.run_pod, a),
        (&mut out.create, b),
        (&mut out.start, s),
        (&mut out.stop_pod, st),
        (&mut out.remove_pod, r),
        (&mut out.whole, a + b + s + st + r),
    ] {
        v.push(x);
    }
}

/// Memory of the per-pod processes at `levels` idle pods, the daemon's RSS at
/// the last level, then daemon restart times with those pods running.
struct Memory {
    per_level: Vec<(usize, f64, f64)>,
    daemon_rss_kb: u64,
    /// The daemon's CPU use (percent of a core) over 10 s with every pod idle.
    daemon_idle_cpu: f64,
}

async fn memory(t: &mut Target, levels: &[usize]) -> Memory {
    let mut rt = t.rt();
    let mut pids: Vec<Vec<i32>> = Vec::new();
    let mut per_level = Vec::new();
    for &level in levels {
        while pids.len() < level {
            let cfg = t.pod_config(&format!("idle-{}", pids.len()));
            let pod = run_pod(&mut rt, &cfg).await;
            let c = create(&mut rt, &pod, &cfg, &["sleep", "1000000"]).await;
            start_running(&mut rt, &c).await;
            pids.push(t.pod_pids(&pod).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all: Vec<i32> = pids.iter().flatten().copied().collect();
        let pss: u64 = all.iter().map(|p| proc_kb(*p, "Pss:", "smaps_rollup")).sum();
        let rss: u64 = all.iter().map(|p| proc_kb(*p, "VmRSS:", "status")).sum();
        per_level.push((level, pss as f64 / level as f64, rss as f64 / level as f64));
    }
    let before = cpu_seconds(t.daemon_pid());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let daemon_idle_cpu = (cpu_seconds(t.daemon_pid()) - before) / 10.0 * 100.0;
    Memory { per_level, daemon_rss_kb: proc_kb(t.daemon_pid(), "VmRSS:", "status"), daemon_idle_cpu }
}

/// Kills the daemon and times a new one from spawn until ListContainers
/// returns all `want` containers.
async fn recovery(t: &mut Target, want: usize) -> f64 {
    let s = Instant::now();
    t.restart().await;
    let mut rt = t.rt();
    loop {
        let n = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .map(|r| r.into_inner().containers.len())
            .unwrap_or(0);
        if n >= want {
            return ms(s.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Pods per second: `n` pods run, created and started at once.
async fn throughput(t: &Target, round: usize, n: usize) -> f64 {
    let s = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut rt = t.rt();
            let cfg = t.pod_config(&format!("burst-{round}-{i}"));
            tokio::spawn(async move {
                let pod = run_pod(&mut rt, &cfg).await;
                let c = create(&mut rt, &pod, &cfg, &["sleep", "1000000"]).await;
                start_running(&mut rt, &c).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("pod task");
    }
    let rate = n as f64 / s.elapsed().as_secs_f64();
    remove_all(t).await;
    rate
}

/// `bytes` of 100-byte lines in a file on the node, for a producer faster
/// than busybox's `yes | head` (busybox `cat`, which sends the file into
/// its stdout pipe with sendfile).
fn write_log_lines(bytes: u64) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new_in("target").expect("log lines file");
    let mut chunk = Vec::with_capacity(1 << 20);
    while chunk.len() + 100 <= 1 << 20 {
        chunk.extend_from_slice(&[b'x'; 99]);
        chunk.push(b'\n');
    }
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).expect("chunk size");
        f.write_all(&chunk[..n]).expect("writing log lines");
        left -= n as u64;
    }
    f.flush().expect("flush");
    f
}

/// MB/s into the log file and CPU seconds per GiB outside the container
/// (the daemon and the pod's runtime processes), for `bytes` of 100-byte
/// lines from `yes | head`, or from `cat` of `lines` (bind-mounted).
async fn log_throughput(t: &mut Target, bytes: u64, lines: Option<&Path>) -> (f64, f64) {
    let mut rt = t.rt();
    let cfg = t.pod_config(if lines.is_some() { "logs-cat" } else { "logs" });
    let pod = run_pod(&mut rt, &cfg).await;
    let line = "x".repeat(99);
    let c = match lines {
        None => {
            let script = format!("yes {line} | head -c {bytes}");
            create(&mut rt, &pod, &cfg, &["sh", "-c", &script]).await
        }
        Some(file) => {
            let mount = cri::Mount {
                container_path: "/lines".into(),
                host_path: file.display().to_string(),
                readonly: true,
                ..Default::default()
            };
            create_with_mounts(&mut rt, &pod, &cfg, &["cat", "/lines"], vec![mount]).await
        }
    };
    let mut pids = t.pod_pids(&pod).await;
    pids.push(t.daemon_pid());
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let s = Instant::now();
    rt.start_container(cri::StartContainerRequest { container_id: c.clone() }).await.expect("start");
    wait_state(&mut rt, &c, cri::ContainerState::ContainerExited, Duration::from_millis(20)).await;
    let secs = s.elapsed().as_secs_f64();
    let cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let log = state(&mut rt, &c).await.log_path;
    let _ = std::fs::remove_file(&log);
    remove_pod(&mut rt, &pod).await;
    (bytes as f64 / 1e6 / secs, cpu / (bytes as f64 / (1u64 << 30) as f64))
}

/// Bare runc on a bundle of the test image: create+start until running (then
/// delete), and `runc run` of `true` (create, start, wait, delete).
fn runc_floor(rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("rootfs");
    let image = berth_tests::test_image();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("index.json")).expect("index")).expect("json");
    let blob = |d: &str| image.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().expect("d"))).expect("m"))
            .expect("json");
    let layer = blob(manifest["layers"][0]["digest"].as_str().expect("layer"));
    assert!(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&rootfs).status().expect("tar").success());
    assert!(Command::new("runc").arg("spec").current_dir(&bundle).status().expect("runc spec").success());
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path).expect("spec")).expect("json");
    spec["process"]["terminal"] = json!(false);
    let root = dir.path().join("runc-root");
    let errors = dir.path().join("runc.err");
    let runc = |args: &[&str]| {
        // The container inherits runc's stdio: no pipes, or waiting for
        // their end would wait for the container.
        let err = std::fs::File::create(&errors).expect("runc.err");
        let st = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .status()
            .expect("runc");
        assert!(st.success(), "runc {args:?}: {}", std::fs::read_to_string(&errors).unwrap_or_default());
    };
    let (mut start, mut run) = (Vec::new(), Vec::new());
    let b = bundle.display().to_string();
    for i in 0..rounds {
        spec["process"]["args"] = json!(["sleep", "1000"]);
        std::fs::write(&spec_path, spec.to_string()).expect("spec");
        let id = format!("floor-{}-{i}", std::process::id());
        let s = Instant::now();
        runc(&["create", "--bundle", &b, &id]);
        runc(&["start", &id]);
        start.push(ms(s.elapsed()));
        runc(&["delete", "--force", &id]);

        spec["process"]["args"] = json!(["true"]);
        std::fs::write(&spec_path, spec.to_string()).expect("spec");
        let s = Instant::now();
        runc(&["run", "--bundle", &b, &id]);
        run.push(ms(s.elapsed()));
    }
    (start, run)
}

/// Cold pulls (a new 50 MiB 5-layer image each time) and re-pulls with
/// every layer stored, from a registry on loopback.
async fn pulls(t: &Target, reg: &Registry, images: &[String]) -> (Vec<f64>, Vec<f64>) {
    let mut img = t.img();
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for name in images {
        for out in [&mut cold, &mut cached] {
            let s = Instant::now();
            img.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: name.clone(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{}: pulling {name} from {}: {e}", t.name, reg.host));
            out.push(ms(s.elapsed()));
        }
    }
    (cold, cached)
}

async fn push_pull_images(reg: &Registry, count: usize) -> Vec<String> {
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut names = Vec::new();
    for n in 0..count {
        let layers = (0..5)
            .map(|i| {
                // Incompressible, so the bytes on the wire are the image's size.
                let mut data = vec![0u8; 10 << 20];
                for chunk in data.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
                let name = format!("layer{i}");
                layer_from_tar(tar_of(&[(&name, tar::EntryType::Regular, &data, None)]), Compression::Gzip)
            })
            .collect();
        let image = build_image(layers, berth_images::images::host_arch(), &format!("BENCH={n}"));
        reg.push("bench/pull", &format!("v{n}"), &image).await;
        names.push(format!("{}/bench/pull:v{n}", reg.host));
    }
    names
}

/// One line of the table.
/// Version round trips (ms), 50 a second for 10 s, while four clients
/// poll ContainerStats of a container whose writable layer holds `files`
/// files (kubelet and a metrics agent ask for stats all the time).
async fn version_under_stats(t: &Target, files: usize) -> (Vec<f64>, u64) {
    let mut rt = t.rt();
    let cfg = t.pod_config("bigfs");
    let pod = run_pod(&mut rt, &cfg).await;
    let dirs = files.div_ceil(1000);
    let script = format!(
        "i=0; while [ $i -lt {dirs} ]; do mkdir -p /many/$i && cd /many/$i && seq 1 1000 | xargs touch; i=$((i+1)); done; touch /made; exec sleep 100000"
    );
    let c = create(&mut rt, &pod, &cfg, &["sh", "-c", &script]).await;
    start_running(&mut rt, &c).await;
    let made = Instant::now();
    loop {
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["test".into(), "-f".into(), "/made".into()],
                timeout: 10,
            })
            .await
            .expect("ExecSync");
        if r.into_inner().exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("  {}: {files} files made in {:.0} s", t.name, made.elapsed().as_secs_f64());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let (mut rt, c, stop, calls) = (t.rt(), c.clone(), stop.clone(), calls.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = rt.container_stats(cri::ContainerStatsRequest { container_id: c.clone() }).await;
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let t0 = Instant::now();
        rt.version(cri::VersionRequest::default()).await.expect("Version");
        samples.push(ms(t0.elapsed()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        let _ = p.await;
    }
    remove_pod(&mut rt, &pod).await;
    (samples, calls.load(std::sync::atomic::Ordering::Relaxed))
}

struct Row {
    metric: String,
    unit: &'static str,
    berth: (f64, f64),
    containerd: Option<(f64, f64)>,
}

fn row(metric: impl Into<String>, unit: &'static str, berth: Vec<f64>, containerd: Option<Vec<f64>>) -> Row {
    Row { metric: metric.into(), unit, berth: median_p90(berth), containerd: containerd.map(median_p90) }
}

fn write_cni(dir: &Path) {
    std::fs::create_dir_all(dir).expect("cni dir");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "berth-bench",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.231.0.0/16"}]],
                      "dataDir": dir.join("ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(dir.join("10-bench.conflist"), serde_json::to_vec_pretty(&conf).expect("json")).expect("conflist");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_num("BENCH_N", 20);
    let mut levels: Vec<usize> = [1, 10, env_num("BENCH_PODS", 50)].into_iter().filter(|l| *l > 0).collect();
    levels.sort_unstable();
    levels.dedup();
    let log_bytes = env_num("BENCH_LOG_BYTES", 1 << 30) as u64;
    let pull_rounds = env_num("BENCH_PULLS", 3);
    let burst = env_num("BENCH_BURST", 20);
    let out_path = std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench-results.json".into());
    // BENCH_ONLY=memory,logs runs just those sections (for iterating on one
    // target); a full run, the one BENCHMARKS.md quotes, runs them all.
    let only: Option<Vec<String>> =
        std::env::var("BENCH_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let on = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == section));

    let _bridge = BridgeGuard;
    let mut d = Daemon::start().await;
    let cni = d.dir.path().join("cni");
    write_cni(&cni);
    // Berth reads its CNI folder at each pod start; restart anyway so both
    // daemons start with the same network configuration.
    d.restart().await;
    let logs = d.logs.clone();
    let mut targets = vec![Target { name: "Berth", engine: Engine::Berth(d), logs }];
    // BENCH_BERTH_ONLY=1 leaves containerd out (for iterating on Berth).
    if containerd_available() && std::env::var_os("BENCH_BERTH_ONLY").is_none() {
        let pause =
            PathBuf::from(std::env::var("BENCH_PAUSE_IMAGE").expect("BENCH_PAUSE_IMAGE (scripts/bench.sh sets it)"));
        let image = berth_tests::test_image();
        let c = Containerd::start(&cni, "/usr/lib/cni", "runc", &[&pause, &image]).await;
        let logs = c.dir.path().join("logs");
        targets.push(Target { name: "containerd", engine: Engine::Containerd(c), logs });
    } else {
        eprintln!("containerd is not installed: Berth only (scripts/bench.sh installs it)");
    }
    let versions: Vec<String> = {
        let mut v = Vec::new();
        for t in &targets {
            let r = t.rt().version(cri::VersionRequest::default()).await.expect("version").into_inner();
            v.push(format!("{} {}", r.runtime_name, r.runtime_version));
        }
        v
    };
    eprintln!("benchmarking {} ({n} lifecycle rounds, A B A B)", versions.join(" vs "));

    let mut life: Vec<Lifecycle> = targets.iter().map(|_| Lifecycle::default()).collect();
    let (mut floor_start, mut floor_run) = (Vec::new(), Vec::new());
    if on("lifecycle") {
        for i in 0..n {
            for (t, l) in targets.iter().zip(life.iter_mut()) {
                lifecycle_round(t, i, l).await;
            }
        }
        (floor_start, floor_run) = runc_floor(n);
    }

    let configs = tempfile::tempdir().expect("temp dir");
    let mut clients: Vec<ClientSteps> = targets.iter().map(|_| ClientSteps::default()).collect();
    let mut breakdown = Vec::new();
    if on("clients") {
        eprintln!("the same lifecycle through a berthctl process per call, {n} rounds, A B A B");
        let before = targets[0].berthd_log().map_or(0, |l| l.len());
        for i in 0..n {
            for (t, c) in targets.iter().zip(clients.iter_mut()) {
                client_round(t, i, configs.path(), c).await;
            }
        }
        if let Some(log) = targets[0].berthd_log() {
            breakdown = step_breakdown(log.get(before..).unwrap_or_default());
        }
    }

    let mut rates: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    if on("burst") {
        eprintln!("throughput: {burst} pods at once");
        for round in 0..3 {
            for (t, r) in targets.iter().zip(rates.iter_mut()) {
                r.push(throughput(t, round, burst).await);
            }
        }
    }

    let mut mems = Vec::new();
    let pods = *levels.last().unwrap_or(&0);
    let mut restarts: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    if on("memory") {
        eprintln!("memory at {levels:?} idle pods, then restarts");
        for t in targets.iter_mut() {
            mems.push(memory(t, &levels).await);
        }
        for _ in 0..3 {
            for (t, r) in targets.iter_mut().zip(restarts.iter_mut()) {
                r.push(recovery(t, pods).await);
            }
        }
        for t in &targets {
            remove_all(t).await;
        }
    }

    let mut logs_out = Vec::new();
    let mut cat_out = Vec::new();
    if on("logs") {
        eprintln!("logs: {log_bytes} bytes of 100-byte lines, from busybox `yes | head`, then `cat` of a file");
        let lines = write_log_lines(log_bytes);
        for t in targets.iter_mut() {
            logs_out.push(log_throughput(t, log_bytes, None).await);
            cat_out.push(log_throughput(t, log_bytes, Some(lines.path())).await);
        }
    }

    let files = env_num("BENCH_FILES", 1_000_000);
    let mut under_stats = Vec::new();
    if files > 0 && on("stats") {
        eprintln!("Version while ContainerStats polls a container with {files} files");
        for t in &targets {
            under_stats.push(version_under_stats(t, files).await);
        }
    }

    let mut pull_out: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    if registry_available() && pull_rounds > 0 && on("pulls") {
        eprintln!("pulls: {pull_rounds} cold + cached per runtime");
        let reg = Registry::start(Auth::None, false);
        if let Engine::Containerd(c) = &targets.last().expect("targets").engine {
            c.allow_plain_http(&reg.host);
        }
        let names = push_pull_images(&reg, pull_rounds * targets.len()).await;
        for (i, t) in targets.iter().enumerate() {
            pull_out.push(pulls(t, &reg, &names[i * pull_rounds..(i + 1) * pull_rounds]).await);
        }
    }

    // The table.
    let other = targets.len() > 1;
    let pick = |v: &Vec<Vec<f64>>| (v[0].clone(), other.then(|| v[1].clone()));
    let mut rows = Vec::new();
    let lifes = |f: fn(&Lifecycle) -> &Vec<f64>| (f(&life[0]).clone(), other.then(|| f(&life[1]).clone()));
    for (name, (b, c)) in [
        ("RunPodSandbox", lifes(|l| &l.run_pod)),
        ("CreateContainer+StartContainer until Running", lifes(|l| &l.start)),
        ("ExecSync `true` round trip", lifes(|l| &l.exec)),
        ("StopContainer (exits on SIGTERM)", lifes(|l| &l.stop)),
        ("StopPodSandbox+RemovePodSandbox", lifes(|l| &l.remove)),
    ] {
        rows.push(row(name, "ms", b, c));
    }
    let steps = |f: fn(&ClientSteps) -> &Vec<f64>| (f(&clients[0]).clone(), other.then(|| f(&clients[1]).clone()));
    for (name, (b, c)) in [
        ("berthctl process: RunPodSandbox", steps(|l| &l.run_pod)),
        ("berthctl process: CreateContainer", steps(|l| &l.create)),
        ("berthctl process: StartContainer", steps(|l| &l.start)),
        ("berthctl process: StopPodSandbox", steps(|l| &l.stop_pod)),
        ("berthctl process: RemovePodSandbox", steps(|l| &l.remove_pod)),
        ("berthctl process: the whole lifecycle", steps(|l| &l.whole)),
    ] {
        rows.push(row(name, "ms", b, c));
    }
    rows.push(row("bare runc create+start (floor of container start)", "ms", floor_start, None));
    rows.push(row("bare runc run `true` (create+start+wait+delete)", "ms", floor_run, None));
    let (b, c) = pick(&rates);
    rows.push(row(format!("{burst} pods run+create+start at once"), "pods/s", b, c));
    for (i, (level, _, _)) in mems.first().map(|m| m.per_level.as_slice()).unwrap_or_default().iter().enumerate() {
        let get = |m: &Memory, pss: bool| {
            let (_, p, r) = m.per_level[i];
            vec![if pss { p } else { r }]
        };
        rows.push(row(
            format!("per-pod processes PSS, {level} idle pods"),
            "KiB/pod",
            get(&mems[0], true),
            other.then(|| get(&mems[1], true)),
        ));
        rows.push(row(
            format!("per-pod processes RSS, {level} idle pods"),
            "KiB/pod",
            get(&mems[0], false),
            other.then(|| get(&mems[1], false)),
        ));
    }
    if !mems.is_empty() {
        rows.push(row(
            format!("daemon RSS, {pods} pods"),
            "KiB",
            vec![mems[0].daemon_rss_kb as f64],
            other.then(|| vec![mems[1].daemon_rss_kb as f64]),
        ));
        rows.push(row(
            format!("daemon CPU over 10 s, {pods} idle pods"),
            "% core",
            vec![mems[0].daemon_idle_cpu],
            other.then(|| vec![mems[1].daemon_idle_cpu]),
        ));
    }
    let (b, c) = pick(&restarts);
    rows.push(row(format!("daemon restart until all {pods} containers listed"), "ms", b, c));
    for (name, out) in [("", &logs_out), (", `cat` of a file", &cat_out)] {
        if out.is_empty() {
            continue;
        }
        rows.push(row(
            format!("log throughput into the file{name}"),
            "MB/s",
            vec![out[0].0],
            other.then(|| vec![out[1].0]),
        ));
        rows.push(row(
            format!("CPU outside the container per GiB of log{name}"),
            "s",
            vec![out[0].1],
            other.then(|| vec![out[1].1]),
        ));
    }
    if !under_stats.is_empty() {
        let lat: Vec<Vec<f64>> = under_stats.iter().map(|u| u.0.clone()).collect();
        let (b, c) = pick(&lat);
        rows.push(row(format!("Version while ContainerStats polls {files} files"), "ms", b, c));
        let worst: Vec<Vec<f64>> = under_stats.iter().map(|u| vec![u.0.iter().copied().fold(0.0, f64::max)]).collect();
        let (b, c) = pick(&worst);
        rows.push(row("  the slowest of those Version calls", "ms", b, c));
        let polls: Vec<Vec<f64>> = under_stats.iter().map(|u| vec![u.1 as f64 / 10.0]).collect();
        let (b, c) = pick(&polls);
        rows.push(row("  ContainerStats answered meanwhile", "calls/s", b, c));
    }
    if !pull_out.is_empty() {
        let cold: Vec<Vec<f64>> = pull_out.iter().map(|p| p.0.clone()).collect();
        let cached: Vec<Vec<f64>> = pull_out.iter().map(|p| p.1.clone()).collect();
        let (b, c) = pick(&cold);
        rows.push(row("PullImage 50 MiB, 5 layers, cold", "ms", b, c));
        let (b, c) = pick(&cached);
        rows.push(row("PullImage again, every layer stored", "ms", b, c));
    }

    println!("{}", versions.join(" vs "));
    println!(
        "{:<52} {:>8} {:>10} {:>10} {:>12} {:>12} {:>7}",
        "metric", "unit", "Berth", "p90", "containerd", "p90", "ratio"
    );
    let mut json_rows = Vec::new();
    // A section BENCH_ONLY left out has no samples.
    rows.retain(|r| !r.berth.0.is_nan());
    for r in &rows {
        let (bm, bp) = r.berth;
        let (cm, cp) = r.containerd.unwrap_or((f64::NAN, f64::NAN));
        let ratio = bm / cm;
        let f = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.1}") };
        let ratio_s = if ratio.is_nan() { "-".to_string() } else { format!("{ratio:.2}") };
        println!(
            "{:<52} {:>8} {:>10} {:>10} {:>12} {:>12} {:>7}",
            r.metric,
            r.unit,
            f(bm),
            f(bp),
            f(cm),
            f(cp),
            ratio_s
        );
        json_rows.push(json!({
            "metric": r.metric, "unit": r.unit,
            "berth": {"median": bm, "p90": bp},
            "containerd": r.containerd.map(|(m, p)| json!({"median": m, "p90": p})),
            "ratio": if ratio.is_nan() { serde_json::Value::Null } else { json!(ratio) },
        }));
    }
    if !breakdown.is_empty() {
        println!("\nwhere Berth's time goes in the berthctl-driven calls (berthd's own steps_ms, medians, ms):");
    }
    let mut json_steps = serde_json::Map::new();
    for (call, steps) in &breakdown {
        let line: Vec<String> = steps.iter().map(|(step, ms)| format!("{step} {ms:.1}")).collect();
        println!("  {call:<17} {}", line.join(", "));
        json_steps.insert(call.clone(), steps.iter().map(|(step, ms)| json!({"step": step, "ms": ms})).collect());
    }
    let doc = json!({"runtimes": versions, "rounds": n, "rows": json_rows, "berth_steps_ms": json_steps});
    if let Err(e) = std::fs::write(&out_path, serde_json::to_vec_pretty(&doc).expect("json")) {
        eprintln!("writing {out_path}: {e}");
    } else {
        eprintln!("results written to {out_path}");
    }
    drop(targets);
}

/// Medians of each step berthd logged (`steps_ms`) in `log`, per CRI
/// call, in the order the steps ran.
fn step_breakdown(log: &str) -> Vec<(String, Vec<(String, f64)>)> {
    let calls = [
        ("pod sandbox ready", "RunPodSandbox"),
        ("container created", "CreateContainer"),
        ("container started", "StartContainer"),
        ("pod sandbox stopped", "StopPodSandbox"),
        ("pod sandbox removed", "RemovePodSandbox"),
    ];
    let mut out = Vec::new();
    for (message, call) in calls {
        // `name=ms` pairs, one list a call.
        let lines: Vec<Vec<(&str, f64)>> = log
            .lines()
            .filter(|l| l.contains(&format!(" {message},")))
            .filter_map(|l| l.split_once("steps_ms: ").map(|(_, rest)| rest.split(", ").next().unwrap_or("")))
            .map(|steps| {
                steps
                    .split(' ')
                    .filter_map(|p| p.split_once('='))
                    .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                    .collect()
            })
            .collect();
        // Only the calls that did every step: RemovePodSandbox's own stop of
        // a pod already stopped logs a shorter "pod sandbox stopped".
        let most = lines.iter().map(Vec::len).max().unwrap_or(0);
        let full: Vec<&Vec<(&str, f64)>> = lines.iter().filter(|l| l.len() == most).collect();
        let Some(first) = full.first() else { continue };
        let steps =
            (0..most).map(|i| (first[i].0.to_string(), median_p90(full.iter().map(|l| l[i].1).collect()).0)).collect();
        out.push((call.to_string(), steps));
    }
    out
}

/// Deletes the bench's bridge at the end, also after a panic.
struct BridgeGuard;

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
}
