//! berthd as a systemd service: Type=notify readiness once recovery is done
//! and the socket serves, `systemctl reload` (SIGHUP) re-reading the config,
//! and a notify socket no child inherits. The test plays systemd's part
//! with a datagram socket of its own.
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::registry::{build_image, busybox_layer, registry_available, Auth, Registry};
use berth_tests::{bin_dir, Daemon};
use protocol::cri;

/// What systemd would receive, one datagram per call (at most `limit`).
fn receive(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    sock.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
}

fn environ_has(pid: i32, var: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|e| e.starts_with(format!("{var}=").as_bytes()))
}

#[tokio::test]
async fn ready_is_sent_and_no_child_inherits_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut d = Daemon::start_with(&[("NOTIFY_SOCKET", path.to_str().unwrap())]).await;
    let msg = receive(&sock, Duration::from_secs(10)).expect("no READY=1");
    assert!(msg.starts_with("READY=1\n"), "{msg:?}");
    // runc, given NOTIFY_SOCKET, would make `runc start` wait for the
    // container's own READY=1: the container starts, and nothing under
    // berthd carries the variable.
    let cfg = d.pod_config("notify");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "c", &["sleep", "100000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    assert!(environ_has(d.pid() as i32, "PATH"), "environ unreadable");
    assert!(!environ_has(d.shim_pid(&pod).await, "NOTIFY_SOCKET"), "the shim inherited NOTIFY_SOCKET");
    assert!(!environ_has(d.container_pid(&c).await, "NOTIFY_SOCKET"), "the container inherited NOTIFY_SOCKET");
}

struct Berthd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Berthd {
    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("c.sock")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }
    async fn log_contains(&self, text: &str) -> bool {
        berth_tests::file_contains(&self.dir.path().join("berthd.log"), text).await
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// berthd with only a config file (no --log-level: the file decides).
fn spawn(config: &Path, notify: &Path) -> Berthd {
    let dir = tempfile::Builder::new().prefix("b").tempdir_in("/tmp").unwrap();
    let log = std::fs::File::create(dir.path().join("berthd.log")).unwrap();
    let mut cmd = berthd_in(dir.path());
    cmd.arg("--config").arg(config).env("NOTIFY_SOCKET", notify).stdout(log.try_clone().unwrap()).stderr(log);
    Berthd { child: cmd.spawn().unwrap(), dir }
}

/// berthd on its own folders below `dir` (stdio left to the caller).
fn berthd_in(dir: &Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("berthd"));
    cmd.arg("--root")
        .arg(dir.join("r"))
        .arg("--state")
        .arg(dir.join("s"))
        .arg("--listen")
        .arg(dir.join("c.sock"))
        .arg("--cni-conf-dir")
        .arg(dir.join("cni"))
        // Its own NRI socket: the node's default is shared.
        .arg("--nri-socket")
        .arg(dir.join("nri.sock"))
        .stdin(Stdio::null());
    cmd
}

fn hup(b: &Berthd) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.child.id() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
}

/// RELOADING=1 then READY=1, as systemd expects of a reload.
fn reloaded(sock: &UnixDatagram) {
    let m = receive(sock, Duration::from_secs(10)).expect("no RELOADING=1");
    assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m:?}");
    let m = receive(sock, Duration::from_secs(10)).expect("no READY=1 after the reload");
    assert!(m.starts_with("READY=1\n"), "{m:?}");
}

#[tokio::test]
async fn reload_rereads_registries_and_the_log_level() {
    if !registry_available() {
        berth_tests::skip(false, "docker-registry missing (scripts/test.sh installs it)");
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let img = build_image(vec![busybox_layer()], "amd64", "X=reload");
    reg.push("team/app", "v1", &img).await;

    let conf_dir = tempfile::tempdir().unwrap();
    let config = conf_dir.path().join("config.toml");
    std::fs::write(&config, "version = 1\nlog_level = \"info\"\n").unwrap();
    let notify = conf_dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let mut b = spawn(&config, &notify);
    let msg = receive(&sock, Duration::from_secs(20)).unwrap_or_else(|| panic!("no READY=1:\n{}", b.log()));
    assert!(msg.starts_with("READY=1\n"), "{msg:?}");
    // READY means serving: one attempt, no retry.
    let ch = protocol::cri_client::connect(&b.socket().display().to_string(), Duration::from_secs(2)).await.unwrap();
    let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch.clone());
    rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap();
    assert!(b.log().contains("berthd ready"), "READY=1 before recovery was done");
    let mut img_client = cri::image_service_client::ImageServiceClient::new(ch);
    let name = "unreachable.invalid/team/app:v1";
    let pull = |c: &mut cri::image_service_client::ImageServiceClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: name.into(), ..Default::default() }),
                ..Default::default()
            })
            .await
        }
    };
    assert!(pull(&mut img_client).await.is_err(), "the registry's name does not resolve");
    assert!(!b.log().contains("DEBG"), "debug records at level info");

    // The operator adds a mirror in a drop-in and turns debug on; reload.
    std::fs::create_dir_all(conf_dir.path().join("config.d")).unwrap();
    std::fs::write(
        conf_dir.path().join("config.d/10-mirror.toml"),
        format!("log_level = \"debug\"\n[registries.\"unreachable.invalid\"]\nmirrors = [\"{}\"]\n", reg.host),
    )
    .unwrap();
    hup(&b);
    reloaded(&sock);
    assert!(b.log_contains("config reloaded").await, "{}", b.log());
    pull(&mut img_client).await.unwrap();
    assert!(b.log_contains("DEBG").await, "no debug records after the reload:\n{}", b.log());

    // A broken config changes nothing and does not stop berthd.
    std::fs::write(conf_dir.path().join("config.d/20-bad.toml"), "log_levle = \"trace\"\n").unwrap();
    hup(&b);
    reloaded(&sock);
    assert!(b.log_contains("config reload failed").await, "{}", b.log());
    assert!(b.log().contains("20-bad.toml"), "the error does not name the file:\n{}", b.log());
    assert!(b.child.try_wait().unwrap().is_none(), "berthd exited");
    rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap();

    // SIGTERM: STOPPING=1, and berthd ends (with clients still connected,
    // as kubelet always is).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let m = receive(&sock, Duration::from_secs(10)).expect("no STOPPING=1");
    assert!(m.starts_with("STOPPING=1"), "{m:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "berthd did not stop on SIGTERM:\n{}", b.log());
        // Not a blocking sleep: the clients' connections run on this thread.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `berthd config default` is the full default config; `config dump` the
/// effective one (files, drop-ins, flags); a bad file stops berthd with the
/// file, the key and the reason.
#[test]
fn config_default_dump_and_errors() {
    let out = Command::new(bin_dir().join("berthd")).args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let default = String::from_utf8(out.stdout).unwrap();
    for key in ["version = 1", "cgroup_driver = \"cgroupfs\"", "[logs]", "[cni]", "[stream]", "[metrics]"] {
        assert!(default.contains(key), "{key} missing:\n{default}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // The default config is a valid config file.
    std::fs::write(&config, &default).unwrap();
    std::fs::create_dir_all(dir.path().join("config.d")).unwrap();
    std::fs::write(dir.path().join("config.d/50-logs.toml"), "[logs]\nmax_files = 9\n").unwrap();
    let dump = |extra: &[&str]| {
        Command::new(bin_dir().join("berthd"))
            .arg("--config")
            .arg(&config)
            .args(extra)
            .args(["config", "dump"])
            .output()
            .unwrap()
    };
    let out = dump(&["--log-level", "warn"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max_files = 9"), "drop-in not merged:\n{text}");
    assert!(text.contains("log_level = \"warn\""), "flag not applied:\n{text}");
    std::fs::write(dir.path().join("config.d/60-bad.toml"), "[stream]\ntoken_ttl = \"forever\"\n").unwrap();
    let out = Command::new(bin_dir().join("berthd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("60-bad.toml") && err.contains("stream.token_ttl") && err.contains("forever"), "{err}");
}

/// berthd whose stdout and stderr are a full device (`/dev/full`) keeps
/// serving: failed log writes are counted (`berth_log_records_dropped_total`)
/// and dropped, not fatal.
#[tokio::test]
async fn a_full_log_device_does_not_stop_berthd() {
    let dir = tempfile::Builder::new().prefix("b").tempdir_in("/tmp").unwrap();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let port = berth_tests::registry::free_port();
    let mut child = berthd_in(dir.path())
        .args(["--log-level", "debug", "--metrics-address", &format!("127.0.0.1:{port}")])
        .stdout(full())
        .stderr(full())
        .spawn()
        .unwrap();
    let socket = dir.path().join("c.sock").display().to_string();
    let mut ch = None;
    for _ in 0..200 {
        if let Ok(c) = protocol::cri_client::connect(&socket, Duration::from_secs(1)).await {
            ch = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch.expect("berthd did not come up"));
    // Enough calls to log a good deal (debug level), then still answering.
    for _ in 0..50 {
        rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap();
        let _ = rt
            .container_status(cri::ContainerStatusRequest { container_id: "0123456789ab".into(), verbose: false })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "berthd died writing to a full device");
    rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap();
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    let dropped: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_log_records_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "no dropped records counted:\n{text}");
    let _ = child.kill();
    let _ = child.wait();
}
