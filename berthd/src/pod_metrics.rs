//! CRI's ListMetricDescriptors and ListPodSandboxMetrics: container
//! metrics under the cAdvisor names kubelet re-exports
//! (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`,
//! ...), with CRI-O's label keys (`id`, `name`, `image`), built from the
//! same stats ContainerStats reports.
use protocol::cri;

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
];

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
}

/// The metrics of one container.
pub fn container_metrics(c: &ContainerFacts<'_>) -> cri::ContainerMetrics {
    let id = c.stats.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default();
    let base = vec![id.clone(), c.name.to_string(), c.image.to_string()];
    let mut metrics = Vec::new();
    let mut push = |name: &str, value: Option<u64>, extra: &[&str]| {
        let Some(value) = value else { return };
        let Some((_, _, _, kind)) = METRICS.iter().find(|m| m.0 == name) else { return };
        let mut labels = base.clone();
        labels.extend(extra.iter().map(|s| s.to_string()));
        metrics.push(cri::Metric {
            name: name.to_string(),
            timestamp: c.now,
            metric_type: *kind as i32,
            label_values: labels,
            value: Some(cri::UInt64Value { value }),
        });
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
        let m = container_metrics(&ContainerFacts {
            stats: &stats,
            name: "app",
            image: "busybox",
            started_at: 5_000_000_000,
            now: 9_000_000_000,
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
    }
}
