//! berth-soak: churn against a running berthd. N pod slots each loop: run a
//! pod, create and start a container that floods its log, exec into it, now
//! and then attach to it, stop and remove the pod. Every 10 s it prints
//! berthd's fds, threads and RSS, the shims, mounts, container cgroups and
//! state folders; at the end it waits for things to settle and checks each
//! against the baseline taken before the churn. Exits 1 on any failed call
//! or anything left behind. Run through scripts/soak.sh.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_streaming::client::{Channels, Event, ExecStream};
use protocol::cri::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

/// Lines each container writes before it idles; the soak waits for the last.
const FLOOD_LINES: u32 = 20_000;
/// Slack over the baseline that is not a leak: tokio's blocking threads
/// (which linger 10 s), an fd or two held by a connection being closed.
const FD_SLACK: usize = 4;
const THREAD_SLACK: usize = 4;
/// RSS the allocator may keep after the churn.
const RSS_SLACK_KB: u64 = 32 * 1024;

struct Args {
    socket: PathBuf,
    minutes: f64,
    pods: usize,
    berthd: i32,
    root: PathBuf,
    state: PathBuf,
    logs: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        socket: PathBuf::new(),
        minutes: 2.0,
        pods: 50,
        berthd: 0,
        root: PathBuf::new(),
        state: PathBuf::new(),
        logs: PathBuf::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{k} {v}: {e}"));
        match k.as_str() {
            "--socket" => a.socket = v.into(),
            "--minutes" => a.minutes = num(&v)?,
            "--pods" => a.pods = num(&v)? as usize,
            "--berthd-pid" => a.berthd = num(&v)? as i32,
            "--root" => a.root = v.into(),
            "--state" => a.state = v.into(),
            "--logs" => a.logs = v.into(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.socket.as_os_str().is_empty() || a.berthd == 0 || a.root.as_os_str().is_empty() {
        return Err(
            "usage: berth-soak --socket S --berthd-pid P --root R --state S --logs L [--minutes M] [--pods N]".into()
        );
    }
    Ok(a)
}

/// One look at everything that must come back to its baseline.
#[derive(Clone, Debug, Default)]
struct Sample {
    fds: usize,
    threads: usize,
    rss_kb: u64,
    shims: usize,
    mounts: usize,
    cgroups: usize,
    folders: usize,
}

fn status_field(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// Shims of this berthd: processes started with `--dir <state>/sandboxes/...`.
fn shims(state: &Path) -> usize {
    let want = format!("--dir\0{}/sandboxes/", state.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&want)))
        .count()
}

fn count_dir(p: &Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

/// Cgroup folders of the soak's pods (their own pod cgroups), in every hierarchy.
fn cgroups(pods: &BTreeSet<String>) -> usize {
    let points = berth_tests::cgroup_mount_points();
    pods.iter().map(|id| points.iter().filter(|p| p.join("berth").join(id).exists()).count()).sum()
}

fn sample(a: &Args, pods: &BTreeSet<String>) -> Sample {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (root, state) = (a.root.display().to_string(), a.state.display().to_string());
    Sample {
        fds: count_dir(&PathBuf::from(format!("/proc/{}/fd", a.berthd))),
        threads: status_field(a.berthd, "Threads:") as usize,
        rss_kb: status_field(a.berthd, "VmRSS:"),
        shims: shims(&a.state),
        mounts: mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root) || m.starts_with(&state))
            .count(),
        cgroups: cgroups(pods),
        folders: count_dir(&a.state.join("sandboxes"))
            + count_dir(&a.state.join("containers"))
            + count_dir(&a.root.join("containers")),
    }
}

fn show(t: Duration, running: usize, s: &Sample, done: &Counters) -> String {
    format!(
        "soak: t={:>4}s pods_running={running:>3} rounds={} execs={} attaches={} | berthd fds={} threads={} rss={}KiB | shims={} mounts={} cgroups={} folders={}",
        t.as_secs(),
        done.rounds.load(Ordering::Relaxed),
        done.execs.load(Ordering::Relaxed),
        done.attaches.load(Ordering::Relaxed),
        s.fds,
        s.threads,
        s.rss_kb,
        s.shims,
        s.mounts,
        s.cgroups,
        s.folders
    )
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    execs: AtomicU64,
    attaches: AtomicU64,
    running: AtomicU64,
}

fn pod_config(logs: &Path, slot: usize, round: u64) -> cri::PodSandboxConfig {
    berth_tests::plain_pod_config(&format!("soak-{slot}-{round}"), "soak", logs)
}

fn flood_container() -> cri::ContainerConfig {
    let script = format!("trap 'exit 0' TERM; seq 1 {FLOOD_LINES}; while true; do sleep 0.2; done");
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "flood".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "berth-test".into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), script],
        log_path: "flood.log".into(),
        ..Default::default()
    }
}

/// Waits for the flood's last line, as a whole record, in the log.
async fn flood_logged(log: &Path) -> Result<(), String> {
    let want = format!(" stdout F {FLOOD_LINES}\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{}: the flood's last line never arrived", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Attaches to the container's stdout, reads one burst, hangs up.
async fn attach_once(rt: &mut RuntimeServiceClient<Channel>, c: &str) -> Result<(), String> {
    let url = rt
        .attach(cri::AttachRequest { container_id: c.into(), stdout: true, ..Default::default() })
        .await
        .map_err(|e| format!("Attach: {e}"))?
        .into_inner()
        .url;
    let ch = Channels { stdout: true, ..Default::default() };
    let mut s = ExecStream::connect(&url, berth_streaming::server::EXEC_PROTOCOLS, ch)
        .await
        .map_err(|e| format!("attach stream: {e}"))?;
    // The container is idle by now; hanging up right away is the point.
    let _ = tokio::time::timeout(Duration::from_millis(300), s.next()).await.map(|e| matches!(e, Some(Event::Closed)));
    Ok(())
}

async fn round(
    rt: &mut RuntimeServiceClient<Channel>,
    logs: &Path,
    slot: usize,
    n: u64,
    pods: &Mutex<BTreeSet<String>>,
    done: &Counters,
) -> Result<(), String> {
    let cfg = pod_config(logs, slot, n);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    pods.lock().unwrap_or_else(|e| e.into_inner()).insert(pod.clone());
    done.running.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let c = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(flood_container()),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .map_err(|e| format!("CreateContainer: {e}"))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: c.clone() })
            .await
            .map_err(|e| format!("StartContainer: {e}"))?;
        for _ in 0..3 {
            let r = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: c.clone(),
                    cmd: vec!["echo".into(), "exec-ok".into()],
                    timeout: 30,
                })
                .await
                .map_err(|e| format!("ExecSync: {e}"))?
                .into_inner();
            if r.exit_code != 0 || String::from_utf8_lossy(&r.stdout).trim() != "exec-ok" {
                return Err(format!("ExecSync gave exit {} and {:?}", r.exit_code, String::from_utf8_lossy(&r.stdout)));
            }
            done.execs.fetch_add(1, Ordering::Relaxed);
        }
        flood_logged(&Path::new(&cfg.log_directory).join("flood.log")).await?;
        if (slot as u64 + n).is_multiple_of(5) {
            attach_once(rt, &c).await?;
            done.attaches.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    // Stopped and removed whatever happened above.
    let stop = rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
    let remove = rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
    done.running.fetch_sub(1, Ordering::Relaxed);
    result?;
    stop.map_err(|e| format!("StopPodSandbox: {e}"))?;
    remove.map_err(|e| format!("RemovePodSandbox: {e}"))?;
    let _ = std::fs::remove_dir_all(&cfg.log_directory);
    done.rounds.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The ways the final sample is not back at the baseline.
fn leaks(base: &Sample, end: &Sample) -> Vec<String> {
    let mut out = Vec::new();
    if end.shims > 0 {
        out.push(format!("{} shims still running", end.shims));
    }
    if end.cgroups > 0 {
        out.push(format!("{} pod cgroups left", end.cgroups));
    }
    if end.mounts > base.mounts {
        out.push(format!("mounts {} (baseline {})", end.mounts, base.mounts));
    }
    if end.folders > base.folders {
        out.push(format!("state folders {} (baseline {})", end.folders, base.folders));
    }
    if end.fds > base.fds + FD_SLACK {
        out.push(format!("berthd fds {} (baseline {}, slack {FD_SLACK})", end.fds, base.fds));
    }
    if end.threads > base.threads + THREAD_SLACK {
        out.push(format!("berthd threads {} (baseline {}, slack {THREAD_SLACK})", end.threads, base.threads));
    }
    if end.rss_kb > base.rss_kb + RSS_SLACK_KB {
        out.push(format!("berthd RSS {} KiB (baseline {} KiB, slack {RSS_SLACK_KB} KiB)", end.rss_kb, base.rss_kb));
    }
    out
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("berth-soak: {e}");
            std::process::exit(2);
        }
    };
    let ch = match protocol::cri_client::connect(&args.socket.display().to_string(), Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-soak: {e}");
            std::process::exit(2);
        }
    };
    let pods = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(Counters::default());
    // One warm-up round, so the baseline has berthd's lazily made state.
    let mut rt = RuntimeServiceClient::new(ch.clone());
    if let Err(e) = round(&mut rt, &args.logs, 0, 0, &pods, &done).await {
        eprintln!("berth-soak: warm-up round failed: {e}");
        std::process::exit(1);
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let base = sample(&args, &pods.lock().unwrap_or_else(|e| e.into_inner()));
    let started = Instant::now();
    println!("{}", show(Duration::ZERO, 0, &base, &done).replacen("soak:", "soak: baseline", 1));
    let deadline = started + Duration::from_secs_f64(args.minutes * 60.0);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for slot in 0..args.pods {
        let (args, pods, done, errors, ch) = (args.clone(), pods.clone(), done.clone(), errors.clone(), ch.clone());
        workers.push(tokio::spawn(async move {
            let mut rt = RuntimeServiceClient::new(ch);
            let mut n = 1;
            while Instant::now() < deadline {
                if let Err(e) = round(&mut rt, &args.logs, slot, n, &pods, &done).await {
                    eprintln!("soak: slot {slot} round {n}: {e}");
                    errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                }
                n += 1;
            }
        }));
    }
    let sampler = {
        let (args, pods, done) = (args.clone(), pods.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = sample(&args, &pods.lock().unwrap_or_else(|e| e.into_inner()));
                println!("{}", show(started.elapsed(), done.running.load(Ordering::Relaxed) as usize, &s, &done));
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    sampler.abort();
    // Settle: reaped processes, closed connections, idle blocking threads.
    let settle = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let s = sample(&args, &pods.lock().unwrap_or_else(|e| e.into_inner()));
        if leaks(&base, &s).is_empty() || Instant::now() > settle {
            break s;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("{}", show(started.elapsed(), 0, &end, &done).replacen("soak:", "soak: after", 1));
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let leaked = leaks(&base, &end);
    println!(
        "soak: {} rounds of {} pods in {:.1} min, {} failed calls, {}",
        done.rounds.load(Ordering::Relaxed),
        args.pods,
        started.elapsed().as_secs_f64() / 60.0,
        errors.len(),
        if leaked.is_empty() { "everything back at its baseline".to_string() } else { leaked.join("; ") }
    );
    if !errors.is_empty() || !leaked.is_empty() || done.rounds.load(Ordering::Relaxed) == 0 {
        std::process::exit(1);
    }
}
