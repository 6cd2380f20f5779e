//! CRI's ListMetricDescriptors and ListPodSandboxMetrics: container
//! metrics under the cAdvisor names kubelet re-exports
//! (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`,
//! `container_processes`, ...), with CRI-O's label keys (`id`, `name`,
//! `image`), built from the same stats ContainerStats reports and the
//! shim's counts; and each pod's network counters, per interface, as pod
//! metrics (every container of a pod shares its network).
use protocol::cri;
use protocol::shim::{InterfaceStats, StatsResponse};

const BASE: &[&str] = &["id", "name", "image"];

/// (name, help, extra label keys, type) of every metric Berth reports.
const METRICS: &[(&str, &str, &[&str], cri::MetricType)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        &["cpu"],
        cri::MetricType::Counter,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        &[],
        cri::MetricType::Gauge,
    ),
    ("container_memory_working_set_bytes", "Current working set in bytes.", &[], cri::MetricType::Gauge),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container's writable layer.",
        &["device"],
        cri::MetricType::Gauge,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        &[],
        cri::MetricType::Gauge,
    ),
    (
        "container_last_seen",
        "Last time the container was seen by the runtime, in seconds since unix epoch.",
        &[],
        cri::MetricType::Gauge,
    ),
    ("container_processes", "Number of processes running inside the container.", &[], cri::MetricType::Gauge),
    ("container_threads", "Number of threads running inside the container.", &[], cri::MetricType::Gauge),
    ("container_file_descriptors", "Number of open file descriptors for the container.", &[], cri::MetricType::Gauge),
    ("container_sockets", "Number of open sockets for the container.", &[], cri::MetricType::Gauge),
    (
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        &[],
        cri::MetricType::Gauge,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        &["interface"],
        cri::MetricType::Counter,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        &["interface"],
        cri::MetricType::Counter,
    ),
];

/// One metric `name` (of [`METRICS`]) with its label values; None for a
/// name that is not there (a bug caught by the tests).
fn metric(name: &str, labels: Vec<String>, value: u64, now: i64) -> Option<cri::Metric> {
    let (_, _, _, kind) = METRICS.iter().find(|m| m.0 == name)?;
    Some(cri::Metric {
        name: name.to_string(),
        timestamp: now,
        metric_type: *kind as i32,
        label_values: labels,
        value: Some(cri::UInt64Value { value }),
    })
}

/// A pod's network counters: every interface of its network namespace
/// (without lo), labelled with the pod's id and name.
pub fn pod_network_metrics(pod_id: &str, pod_name: &str, interfaces: &[InterfaceStats], now: i64) -> Vec<cri::Metric> {
    let mut out = Vec::new();
    for i in interfaces {
        let labels = vec![pod_id.to_string(), pod_name.to_string(), String::new(), i.name.clone()];
        for (name, value) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            ("container_network_receive_packets_dropped_total", i.rx_dropped),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            ("container_network_transmit_packets_dropped_total", i.tx_dropped),
            ("container_network_transmit_errors_total", i.tx_errors),
        ] {
            out.extend(metric(name, labels.clone(), value, now));
        }
    }
    out
}

/// Every descriptor, as ListMetricDescriptors answers.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|(name, help, extra, _)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: BASE.iter().chain(extra.iter()).map(|s| s.to_string()).collect(),
        })
        .collect()
}

/// What one container contributes, from its stats.
pub struct ContainerFacts<'a> {
    /// Its stats (ContainerStats).
    pub stats: &'a cri::ContainerStats,
    /// Its metadata name.
    pub name: &'a str,
    /// Its image as ContainerStatus names it.
    pub image: &'a str,
    /// Started, unix nanoseconds.
    pub started_at: i64,
    /// Now, unix nanoseconds.
    pub now: i64,
    /// What the shim counted, while the container runs.
    pub counts: Option<&'a StatsResponse>,
}

/// The metrics of one container.
pub fn container_metrics(c: &ContainerFacts<'_>) -> cri::ContainerMetrics {
    let id = c.stats.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default();
    let base = vec![id.clone(), c.name.to_string(), c.image.to_string()];
    let mut metrics = Vec::new();
    let mut push = |name: &str, value: Option<u64>, extra: &[&str]| {
        let Some(value) = value else { return };
        let mut labels = base.clone();
        labels.extend(extra.iter().map(|s| s.to_string()));
        metrics.extend(metric(name, labels, value, c.now));
    };
    let cpu = c.stats.cpu.as_ref().and_then(|u| u.usage_core_nano_seconds.as_ref()).map(|v| v.value / 1_000_000_000);
    push("container_cpu_usage_seconds_total", cpu, &["total"]);
    let mem = c.stats.memory.as_ref();
    push("container_memory_usage_bytes", mem.and_then(|m| m.usage_bytes.as_ref()).map(|v| v.value), &[]);
    push("container_memory_working_set_bytes", mem.and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value), &[]);
    let fs = c.stats.writable_layer.as_ref();
    let device = fs.and_then(|f| f.fs_id.as_ref()).map(|d| d.mountpoint.clone()).unwrap_or_default();
    push("container_fs_usage_bytes", fs.and_then(|f| f.used_bytes.as_ref()).map(|v| v.value), &[device.as_str()]);
    push(
        "container_start_time_seconds",
        u64::try_from(c.started_at).ok().filter(|t| *t > 0).map(|t| t / 1_000_000_000),
        &[],
    );
    push("container_last_seen", Some(u64::try_from(c.now).unwrap_or(0) / 1_000_000_000), &[]);
    if let Some(r) = c.counts {
        push("container_processes", Some(r.processes), &[]);
        push("container_threads", Some(r.threads), &[]);
        push("container_file_descriptors", Some(r.file_descriptors), &[]);
        push("container_sockets", Some(r.sockets), &[]);
        push("container_threads_max", Some(r.threads_max), &[]);
    }
    cri::ContainerMetrics { container_id: id, metrics }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_their_descriptors() {
        let stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes { id: "c1".into(), ..Default::default() }),
            cpu: Some(cri::CpuUsage {
                usage_core_nano_seconds: Some(cri::UInt64Value { value: 3_500_000_000 }),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                working_set_bytes: Some(cri::UInt64Value { value: 10 }),
                usage_bytes: Some(cri::UInt64Value { value: 20 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut counts = StatsResponse::new();
        (counts.processes, counts.threads, counts.file_descriptors, counts.sockets) = (2, 5, 9, 1);
        let m = container_metrics(&ContainerFacts {
            stats: &stats,
            name: "app",
            image: "busybox",
            started_at: 5_000_000_000,
            now: 9_000_000_000,
            counts: Some(&counts),
        });
        let d = descriptors();
        for metric in &m.metrics {
            let desc = d.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(desc.label_keys.len(), metric.label_values.len(), "{}", metric.name);
        }
        let cpu = m.metrics.iter().find(|x| x.name == "container_cpu_usage_seconds_total").unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 3);
        assert_eq!(cpu.label_values, ["c1", "app", "busybox", "total"]);
        assert!(m
            .metrics
            .iter()
            .any(|x| x.name == "container_start_time_seconds" && x.value.as_ref().unwrap().value == 5));
        let threads = m.metrics.iter().find(|x| x.name == "container_threads").unwrap();
        assert_eq!(threads.value.as_ref().unwrap().value, 5);

        let mut eth0 = InterfaceStats::new();
        eth0.name = "eth0".into();
        (eth0.rx_bytes, eth0.tx_errors) = (1500, 3);
        let net = pod_network_metrics("p1", "web", &[eth0], 9);
        assert_eq!(net.len(), 8);
        for metric in &net {
            let desc = d.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(desc.label_keys.len(), metric.label_values.len(), "{}", metric.name);
            assert_eq!(metric.label_values, ["p1", "web", "", "eth0"]);
        }
        let rx = net.iter().find(|x| x.name == "container_network_receive_bytes_total").unwrap();
        assert_eq!((rx.value.as_ref().unwrap().value, rx.metric_type), (1500, cri::MetricType::Counter as i32));
    }
}
