//! berthd's Prometheus endpoint, scraped and parsed with the Prometheus
//! project's own text-format parser (Debian's python3-prometheus-client),
//! and CRI's ListMetricDescriptors / ListPodSandboxMetrics.
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::Daemon;
use protocol::cri;

/// Every sample of a scrape: (name, sorted labels) → value, and each family's type.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

fn parse(text: &str) -> Option<(Samples, HashMap<String, String>)> {
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {"samples": [], "types": {}}
for f in text_string_to_metric_families(sys.stdin.read()):
    out["types"][f.name] = f.type
    for s in f.samples:
        out["samples"].append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut samples = Samples::new();
    for s in v["samples"].as_array()? {
        let labels = s[1]
            .as_array()?
            .iter()
            .map(|kv| (kv[0].as_str().unwrap_or("").to_string(), kv[1].as_str().unwrap_or("").to_string()))
            .collect();
        samples.insert((s[0].as_str()?.to_string(), labels), s[2].as_f64()?);
    }
    let types =
        v["types"].as_object()?.iter().map(|(k, t)| (k.clone(), t.as_str().unwrap_or("").to_string())).collect();
    Some((samples, types))
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.sort();
    s.get(&(name.to_string(), l)).copied()
}

async fn scrape(addr: &str) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_are_served_and_parse() {
    if Command::new("/usr/bin/python3")
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        berth_tests::skip(false, "python3-prometheus-client missing (scripts/setup.sh --test installs it)");
        return;
    }
    let port = berth_tests::registry::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_full(&[], &["--metrics-address", &addr]).await;
    let cfg = d.pod_config("metrics");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "talker", &["sh", "-c", "echo hello from the metrics test; sleep 100000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let _ =
        d.rt.container_status(cri::ContainerStatusRequest { container_id: "0123456789ab".into(), verbose: false })
            .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = scrape(&addr).await;
    let (s, types) = parse(&text).expect("parse");
    assert_eq!(get(&s, "berth_pods", &[("state", "ready")]), Some(1.0), "{text}");
    assert_eq!(get(&s, "berth_containers", &[("state", "running")]), Some(1.0));
    assert_eq!(get(&s, "berth_shims_alive", &[]), Some(1.0));
    assert_eq!(get(&s, "berth_cri_requests_total", &[("method", "RunPodSandbox"), ("code", "OK")]), Some(1.0));
    assert_eq!(get(&s, "berth_cri_requests_total", &[("method", "ContainerStatus"), ("code", "NotFound")]), Some(1.0));
    assert!(
        get(&s, "berth_cri_request_duration_seconds_count", &[("method", "CreateContainer")]).unwrap_or(0.0) >= 1.0
    );
    assert_eq!(types.get("berth_cri_request_duration_seconds").map(String::as_str), Some("histogram"));
    assert_eq!(types.get("berth_cri_requests").map(String::as_str), Some("counter"));
    let written = get(&s, "berth_container_log_bytes_written_total", &[("container_id", &c), ("pod_sandbox_id", &pod)]);
    // One record: timestamp, stream, tag and the line.
    let line = "hello from the metrics test\n";
    assert!(written.unwrap_or(0.0) > line.len() as f64, "{text}");
    assert_eq!(
        get(&s, "berth_container_log_bytes_dropped_total", &[("container_id", &c), ("pod_sandbox_id", &pod)]),
        Some(0.0)
    );
    assert!(get(&s, "berth_recovery_duration_seconds", &[]).is_some());
    assert!(get(&s, "berth_image_pulls_total", &[("result", "success")]).is_none(), "no pull happened");

    // A killed shim shows: a pod not ready, no shim alive.
    let shim = d.shim_pid(&pod).await;
    berth_tests::kill_tree(shim);
    berth_tests::wait_gone(shim, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _) = parse(&scrape(&addr).await).unwrap();
    assert_eq!(get(&s, "berth_shims_alive", &[]), Some(0.0));
    assert_eq!(get(&s, "berth_pods", &[("state", "notready")]), Some(1.0));
    // Anything but GET /metrics is refused.
    let r = reqwest::get(format!("http://{addr}/other")).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn cri_pod_sandbox_metrics_use_cadvisor_names() {
    let mut d = Daemon::start().await;
    let desc =
        d.rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await.unwrap().into_inner().descriptors;
    let names: Vec<&str> = desc.iter().map(|d| d.name.as_str()).collect();
    for want in
        ["container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "container_memory_usage_bytes"]
    {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let cfg = d.pod_config("podmetrics");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "busy", &["sh", "-c", "head -c 4000000 /dev/zero > /tmp/x; sleep 100000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pods =
        d.rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].pod_sandbox_id, pod);
    let cm = &pods[0].container_metrics;
    assert_eq!(cm.len(), 1);
    assert_eq!(cm[0].container_id, c);
    for m in &cm[0].metrics {
        let d = desc.iter().find(|d| d.name == m.name).unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        assert_eq!(m.label_values[0], c);
        assert_eq!(m.label_values[1], "busy");
    }
    let ws = cm[0].metrics.iter().find(|m| m.name == "container_memory_working_set_bytes").expect("working set");
    assert!(ws.value.as_ref().unwrap().value > 0);
}

/// What kubelet's PodAndContainerStatsFromCRI path reads beyond CPU and
/// memory: each container's processes, threads, file descriptors and
/// sockets, and the pod's network counters per interface (its own network
/// namespace, not the node's); the streaming variant gives the same.
#[tokio::test]
async fn cri_pod_metrics_count_processes_and_the_pod_network() {
    if !berth_tests::cni_available() {
        berth_tests::skip(false, "no CNI plugins installed: the pod network metrics were not checked");
        return;
    }
    let mut d = Daemon::start().await;
    let net = berth_tests::TestNet::new(&d);
    let cfg = d.pod_config("netmetrics");
    let pod = d.run_pod(&cfg).await;
    // Three processes at least (nc and two sleeps; the shell, unless it
    // runs its last command in its own place), a listening socket held by nc, and packets sent to the bridge's gateway (a closed port: the
    // answer is a reset).
    let script =
        format!("nc -l -p 8080 & sleep 100000 & wget -q -T 2 http://{}.1:9/ 2>/dev/null; sleep 100000", net.prefix);
    let c = d.create(&pod, &cfg, "netbusy", &["sh", "-c", &script]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let desc =
        d.rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await.unwrap().into_inner().descriptors;
    let value = |ms: &[cri::Metric], name: &str| ms.iter().find(|m| m.name == name).and_then(|m| m.value);
    let mut last = None;
    for _ in 0..100 {
        let pods =
            d.rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
        assert_eq!(pods.len(), 1);
        let p = pods.into_iter().next().unwrap();
        let cm = &p.container_metrics[0].metrics;
        let ready = value(cm, "container_processes").is_some_and(|v| v.value >= 3)
            && value(cm, "container_sockets").is_some_and(|v| v.value >= 1)
            && value(&p.metrics, "container_network_transmit_packets_total").is_some_and(|v| v.value >= 1);
        last = Some(p);
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = last.unwrap();
    let cm = &p.container_metrics[0].metrics;
    // nc, sleep and sleep (wget has ended).
    assert!(value(cm, "container_processes").unwrap().value >= 3, "{cm:?}");
    assert!(value(cm, "container_threads").unwrap().value >= 3, "{cm:?}");
    assert!(value(cm, "container_file_descriptors").unwrap().value >= 4, "{cm:?}");
    assert!(value(cm, "container_sockets").unwrap().value >= 1, "{cm:?}");
    for name in ["container_network_transmit_packets_total", "container_network_transmit_bytes_total"] {
        assert!(value(&p.metrics, name).is_some_and(|v| v.value > 0), "{name}: {:?}", p.metrics);
    }
    for m in p.metrics.iter().chain(cm) {
        let d = desc.iter().find(|d| d.name == m.name).unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
    }
    for m in &p.metrics {
        assert_eq!(m.label_values[0], pod);
        assert_eq!(m.label_values[3], "eth0", "only the pod's own interfaces: {m:?}");
    }
    // PodSandboxStats carries the same (kubelet's summary reads it there).
    let ps =
        d.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
    let linux = ps.linux.unwrap();
    let nic = linux.network.expect("network usage").default_interface.expect("a default interface");
    assert_eq!(nic.name, "eth0");
    assert!(nic.tx_bytes.unwrap().value > 0);
    assert!(linux.process.expect("process usage").process_count.unwrap().value >= 3);
    let mut stream =
        d.rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
            .await
            .expect("StreamPodSandboxMetrics is served")
            .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        streamed.extend(msg.pod_sandbox_metrics);
    }
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0].pod_sandbox_id, pod);
    assert!(value(&streamed[0].metrics, "container_network_transmit_packets_total").is_some());
}

/// A pod on the node's network reports no network metrics of its own: the
/// node's interfaces are not the pod's.
#[tokio::test]
async fn a_host_network_pod_reports_no_network_metrics() {
    let mut d = Daemon::start().await;
    let mut cfg = d.pod_config("hostnetmetrics");
    let sc = cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).network = cri::NamespaceMode::Node as i32;
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "idle", &["sleep", "100000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let pods =
        d.rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
    assert_eq!(pods.len(), 1);
    assert!(pods[0].metrics.is_empty(), "{:?}", pods[0].metrics);
    let ps = d.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod }).await.unwrap().into_inner();
    let linux = ps.stats.unwrap().linux.unwrap();
    assert!(linux.network.is_none(), "{:?}", linux.network);
    assert!(linux.process.is_some());
    let cm = &pods[0].container_metrics[0].metrics;
    assert!(cm.iter().any(|m| m.name == "container_processes"), "{cm:?}");
}
