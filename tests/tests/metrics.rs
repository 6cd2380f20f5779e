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
