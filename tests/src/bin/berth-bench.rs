//! berth-bench: times Berth's lifecycle calls against a real berthd (in its
//! own temp folders) and prints medians. Run through scripts/bench.sh, which
//! builds release binaries and points BERTH_BIN_DIR at them.
use std::time::{Duration, Instant};

use berth_tests::Daemon;
use protocol::cri;

fn median_p90(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[(v.len() * 9 / 10).min(v.len() - 1)]))
}

fn mem_kb(pid: i32, field: &str, file: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut d = Daemon::start().await;
    let (mut run_pod, mut start, mut exec, mut remove) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut shim_rss = Vec::new();
    let mut shim_pss = Vec::new();
    for i in 0..n {
        let cfg = d.pod_config(&format!("bench-{i}"));
        let t = Instant::now();
        let pod = d.run_pod(&cfg).await;
        run_pod.push(t.elapsed());

        let t = Instant::now();
        let c = d.create(&pod, &cfg, "c", &["sleep", "1000"]).await;
        d.start_container(&c).await;
        d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
        start.push(t.elapsed());

        for _ in 0..5 {
            let t = Instant::now();
            let r = d.exec(&c, &["true"], 10).await.expect("exec");
            exec.push(t.elapsed());
            assert_eq!(r.exit_code, 0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shim = d.shim_pid(&pod).await;
        shim_rss.push(mem_kb(shim, "VmRSS:", "status"));
        shim_pss.push(mem_kb(shim, "Pss:", "smaps_rollup"));

        let t = Instant::now();
        d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("remove");
        remove.push(t.elapsed());
    }
    shim_rss.sort();
    shim_pss.sort();
    println!("Berth lifecycle benchmark ({n} pods, busybox test image, runc, release build)");
    println!("{:<44} {:>10} {:>10}", "metric", "median", "p90");
    for (name, v) in [
        ("RunPodSandbox (ms)", run_pod),
        ("CreateContainer+StartContainer to Running (ms)", start),
        ("ExecSync `true` round trip (ms)", exec),
        ("RemovePodSandbox with one container (ms)", remove),
    ] {
        let (m, p) = median_p90(v);
        println!("{name:<44} {m:>10.1} {p:>10.1}");
    }
    println!(
        "{:<44} {:>10} {:>10}",
        "idle shim RSS (KiB), 1 pod",
        shim_rss[shim_rss.len() / 2],
        shim_rss[shim_rss.len() * 9 / 10]
    );
    println!(
        "{:<44} {:>10} {:>10}",
        "idle shim PSS (KiB), 1 pod",
        shim_pss[shim_pss.len() / 2],
        shim_pss[shim_pss.len() * 9 / 10]
    );

    // Recovery: berthd restart until ListContainers returns every container.
    let pods: usize = std::env::var("BENCH_PODS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let empty = recovery_time(&mut d, 0).await;
    let mut shims = Vec::new();
    for i in 0..pods {
        let cfg = d.pod_config(&format!("idle-{i}"));
        let pod = d.run_pod(&cfg).await;
        let c = d.create(&pod, &cfg, "c", &["sleep", "100000"]).await;
        d.start_container(&c).await;
        shims.push(d.shim_pid(&pod).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss: u64 = shims.iter().map(|p| mem_kb(*p, "VmRSS:", "status")).sum();
    let pss: u64 = shims.iter().map(|p| mem_kb(*p, "Pss:", "smaps_rollup")).sum();
    let full = recovery_time(&mut d, pods).await;
    let berthd_rss = mem_kb(d.pid() as i32, "VmRSS:", "status");
    println!("{:<44} {:>10}", format!("idle shim RSS per pod (KiB), {pods} pods"), rss / pods.max(1) as u64);
    println!("{:<44} {:>10}", format!("idle shim PSS per pod (KiB), {pods} pods"), pss / pods.max(1) as u64);
    println!("{:<44} {:>10}", format!("berthd RSS after recovery (KiB), {pods} pods"), berthd_rss);
    println!("{:<44} {:>10.1}", "berthd restart to full list (ms), 0 pods", empty);
    println!("{:<44} {:>10.1}", format!("berthd restart to full list (ms), {pods} pods"), full);

    // Log throughput: a container writing 100-byte lines as fast as it can.
    let bytes: u64 = std::env::var("BENCH_LOG_BYTES").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 30);
    let cfg = d.pod_config("logbench");
    let pod = d.run_pod(&cfg).await;
    let line = "x".repeat(99);
    let script = format!("yes {line} | head -c {bytes}");
    let c = d.create(&pod, &cfg, "writer", &["sh", "-c", &script]).await;
    let shim = d.shim_pid(&pod).await;
    let cpu0 = cpu_seconds(shim);
    let t = Instant::now();
    d.start_container(&c).await;
    let st = d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(3600)).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(shim) - cpu0;
    let file = std::fs::metadata(&st.log_path).map(|m| m.len()).unwrap_or(0);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{:<44} {:>10.1}",
        format!("log throughput, {:.2} GiB of 100-byte lines (MB/s)", gib),
        bytes as f64 / 1e6 / secs
    );
    println!("{:<44} {:>10.2}", "shim CPU seconds per GiB of output", cpu / gib);
    println!("{:<44} {:>10.1}", "log file bytes per output byte", file as f64 / bytes as f64);
    let _ = std::fs::remove_file(&st.log_path);

    pull_bench(&mut d).await;
}

/// Pulls of a ~50 MiB image of 5 layers from a local registry: cold (no
/// layer stored) and again with every layer stored.
async fn pull_bench(d: &mut Daemon) {
    use berth_tests::registry::{build_image, layer_from_tar, registry_available, tar_of, Auth, Compression, Registry};
    if !registry_available() {
        println!("pull benchmark skipped: docker-registry, openssl or htpasswd missing (scripts/setup.sh --test)");
        return;
    }
    let rounds: usize = std::env::var("BENCH_PULLS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let reg = Registry::start(Auth::None, false);
    let mut x: u64 = 0x2545f4914f6cdd1d;
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
            layer_from_tar(tar_of(&[(&format!("layer{i}"), tar::EntryType::Regular, &data, None)]), Compression::Gzip)
        })
        .collect();
    let img = build_image(layers, "amd64", "BENCH=pull");
    let size: usize = img.layers.iter().map(|l| l.data.len()).sum();
    reg.push("bench/pull", "v1", &img).await;
    let name = format!("{}/bench/pull:v1", reg.host);
    let pull = |d: &mut Daemon| {
        let mut img = d.img.clone();
        let name = name.clone();
        async move {
            let t = Instant::now();
            img.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: name, ..Default::default() }),
                ..Default::default()
            })
            .await
            .expect("pull");
            t.elapsed()
        }
    };
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Removing the image collects its layers: the next pull is cold.
        d.img
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec { image: name.clone(), ..Default::default() }),
            })
            .await
            .expect("remove image");
        cold.push(pull(d).await);
        cached.push(pull(d).await);
    }
    let (cm, cp) = median_p90(cold);
    let (hm, hp) = median_p90(cached);
    let mib = size as f64 / (1 << 20) as f64;
    println!("{:<44} {cm:>10.1} {cp:>10.1}", format!("pull {mib:.0} MiB, 5 layers, cold (ms)"));
    println!("{:<44} {hm:>10.1} {hp:>10.1}", "pull again, every layer stored (ms)");
    println!("{:<44} {:>10.1}", "cold pull throughput (MiB/s)", mib / (cm / 1000.0));
}

/// User plus system CPU seconds a process has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name).
    let ticks: f64 = fields.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Kills berthd and times a new one from spawn until ListContainers returns
/// all `want` containers.
async fn recovery_time(d: &mut Daemon, want: usize) -> f64 {
    d.kill9();
    let t = Instant::now();
    d.restart().await;
    loop {
        let n =
            d.rt.list_containers(cri::ListContainersRequest { filter: None })
                .await
                .map(|r| r.into_inner().containers.len())
                .unwrap_or(0);
        if n >= want {
            return t.elapsed().as_secs_f64() * 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
