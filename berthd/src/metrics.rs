//! Prometheus metrics of berthd, in the Prometheus text format on the
//! address of `[metrics] address` (off by default): CRI calls by method and
//! code with latency histograms, pulls (bytes, durations, results), recovery
//! time, and at each scrape the node's pods and containers by state, the
//! shims alive and every container's log bytes written and dropped.
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of one CRI call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

/// Labels of a CRI method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// Labels of a pull's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// What the node holds at a scrape, gathered by the manager.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Pods by CRI state name (`ready`, `notready`).
    pub pods: Vec<(String, i64)>,
    /// Containers by CRI state name (`created`, `running`, `exited`, `unknown`).
    pub containers: Vec<(String, i64)>,
    /// Shims that answer.
    pub shims_alive: i64,
    /// Per container: (container id, pod sandbox id, log bytes written, dropped).
    pub logs: Vec<(String, String, u64, u64)>,
}

/// The snapshot, encoded at scrape time.
#[derive(Debug, Default)]
struct SnapshotCollector(Mutex<Snapshot>);

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let gauge = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor("berth_pods", "Pod sandboxes by state.", None, gauge.metric_type())?;
        for (state, n) in &s.pods {
            ConstGauge::new(*n).encode(e.encode_family(&[("state", state.as_str())])?)?;
        }
        let mut e = encoder.encode_descriptor("berth_containers", "Containers by state.", None, gauge.metric_type())?;
        for (state, n) in &s.containers {
            ConstGauge::new(*n).encode(e.encode_family(&[("state", state.as_str())])?)?;
        }
        let e = encoder.encode_descriptor("berth_shims_alive", "Pod shims that answer.", None, gauge.metric_type())?;
        ConstGauge::new(s.shims_alive).encode(e)?;
        let counter = ConstCounter::new(0u64);
        let e = encoder.encode_descriptor(
            "berth_log_records_dropped",
            "berthd's own log records that could not be written (a full or broken log device).",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(crate::logging::dropped_records()).encode(e)?;
        for (name, help, pick) in [
            (
                "berth_container_log_bytes_written",
                "Bytes of CRI log records written to a container's log file.",
                2usize,
            ),
            (
                "berth_container_log_bytes_dropped",
                "Bytes of a container's output dropped because its log file could not take them.",
                3,
            ),
        ] {
            let mut e = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (ctr, pod, written, dropped) in &s.logs {
                let v = if pick == 2 { *written } else { *dropped };
                ConstCounter::new(v)
                    .encode(e.encode_family(&[("container_id", ctr.as_str()), ("pod_sandbox_id", pod.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// berthd's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    pull_bytes: Counter,
    pull_seconds: Histogram,
    pulls: Family<ResultLabels, Counter>,
    recovery_seconds: Gauge<f64, AtomicU64>,
    snapshot: std::sync::Arc<SnapshotCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("berth_cri_requests", "CRI calls by method and gRPC code.", calls.clone());
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register("berth_cri_request_duration_seconds", "CRI call latency by method.", latency.clone());
        let pull_bytes = Counter::default();
        registry.register("berth_image_pull_bytes", "Layer bytes downloaded by pulls.", pull_bytes.clone());
        let pull_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register("berth_image_pull_duration_seconds", "Duration of image pulls.", pull_seconds.clone());
        let pulls = Family::<ResultLabels, Counter>::default();
        registry.register("berth_image_pulls", "Image pulls by result (success, failure).", pulls.clone());
        let recovery_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "berth_recovery_duration_seconds",
            "How long berthd's recovery at start took.",
            recovery_seconds.clone(),
        );
        let snapshot = std::sync::Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(snapshot.clone()));
        Metrics { registry, calls, latency, pull_bytes, pull_seconds, pulls, recovery_seconds, snapshot }
    }
}

impl Metrics {
    /// Counts one CRI call (`method` is the gRPC path's last part).
    pub fn observe_call(&self, method: &str, code: &str, seconds: f64) {
        self.calls.get_or_create(&CallLabels { method: method.to_string(), code: code.to_string() }).inc();
        self.latency.get_or_create(&MethodLabels { method: method.to_string() }).observe(seconds);
    }

    /// Records how long recovery took.
    pub fn set_recovery_seconds(&self, seconds: f64) {
        self.recovery_seconds.set(seconds);
    }

    /// The text exposition, with `snapshot` as the node's current state.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        *self.snapshot.0.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The gRPC method of a request path (`/runtime.v1.RuntimeService/Version`
/// → `Version`); unknown paths count as one bucket, so a client cannot grow
/// the label set without bound.
pub fn method_of(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((service, m))
            if matches!(
                service,
                "/runtime.v1.RuntimeService" | "/runtime.v1.ImageService" | "/berth.images.v1.Images"
            ) && !m.is_empty()
                && m.len() <= 64
                && m.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            m
        }
        _ => "unknown",
    }
}

impl berth_images::PullObserver for Metrics {
    /// Counts layer bytes as they arrive.
    fn pulled_bytes(&self, n: u64) {
        self.pull_bytes.inc_by(n);
    }

    /// Counts one finished pull.
    fn observe_pull(&self, ok: bool, seconds: f64) {
        self.pulls.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" }.into() }).inc();
        if ok {
            self.pull_seconds.observe(seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_images::PullObserver;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::default();
        m.observe_call("Version", "OK", 0.001);
        m.pulled_bytes(10);
        m.observe_pull(true, 0.5);
        m.set_recovery_seconds(0.25);
        let text = m.encode(Snapshot {
            pods: vec![("ready".into(), 2)],
            containers: vec![("running".into(), 3)],
            shims_alive: 2,
            logs: vec![("c1".into(), "p1".into(), 100, 7)],
        });
        for want in [
            "berth_cri_requests_total{method=\"Version\",code=\"OK\"} 1",
            "berth_cri_request_duration_seconds_count{method=\"Version\"} 1",
            "berth_image_pull_bytes_total 10",
            "berth_image_pulls_total{result=\"success\"} 1",
            "berth_recovery_duration_seconds 0.25",
            "berth_pods{state=\"ready\"} 2",
            "berth_containers{state=\"running\"} 3",
            "berth_shims_alive 2",
            "berth_container_log_bytes_written_total{container_id=\"c1\",pod_sandbox_id=\"p1\"} 100",
            "berth_container_log_bytes_dropped_total{container_id=\"c1\",pod_sandbox_id=\"p1\"} 7",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(method_of("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method_of("/evil.Service/x"), "unknown");
        assert_eq!(method_of("/runtime.v1.RuntimeService/a b"), "unknown");
    }
}
