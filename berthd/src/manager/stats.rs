//! Stats and metrics: ContainerStats, PodSandboxStats, ListPodSandboxMetrics,
//! disk usage, berthd's own metrics.
use super::*;

impl Manager {
    /// berthd's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The node's pods and containers by state, the shims that answer and
    /// every container's log bytes, for a metrics scrape (asked of the shims
    /// as ListContainers asks them).
    pub async fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let sandboxes: Vec<SandboxMeta> = lock(&self.sandboxes)
            .values()
            .map(|sb| lock(&sb.meta).clone())
            .filter(|m| m.phase != Phase::Creating)
            .collect();
        let metas: Vec<ContainerMeta> =
            lock(&self.containers).values().filter(|c| c.phase != Phase::Creating).cloned().collect();
        let sids: Vec<String> = sandboxes.iter().map(|m| m.id.clone()).collect();
        let views = self.shim_views(&sids).await;
        let mut snap = crate::metrics::Snapshot::default();
        let (mut ready, mut notready) = (0, 0);
        for meta in &sandboxes {
            let listed = matches!(views.get(&meta.id), Some(ShimView::Listed(_)));
            snap.shims_alive += i64::from(listed);
            if meta.stopped || !listed {
                notready += 1;
            } else {
                ready += 1;
            }
        }
        snap.pods = vec![("ready".into(), ready), ("notready".into(), notready)];
        let mut by_state: BTreeMap<&str, i64> =
            ["created", "running", "exited", "unknown"].into_iter().map(|s| (s, 0)).collect();
        for m in &metas {
            let st = match views.get(&m.sandbox_id) {
                Some(ShimView::Listed(states)) => states.get(&m.id),
                _ => None,
            };
            let name = match st.map(|s| s.state) {
                Some(s) if s == cri::ContainerState::ContainerCreated as i32 => "created",
                Some(s) if s == cri::ContainerState::ContainerRunning as i32 => "running",
                Some(s) if s == cri::ContainerState::ContainerExited as i32 => "exited",
                _ => "unknown",
            };
            *by_state.entry(name).or_default() += 1;
            if let Some(s) = st {
                snap.logs.push((m.id.clone(), m.sandbox_id.clone(), s.log_bytes.0, s.log_bytes.1));
            }
        }
        snap.containers = by_state.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        snap.logs.sort();
        snap
    }

    /// ImageFsInfo's figures: the image store's blobs and snapshots, from
    /// the background walks (never under the image-store lock). None while
    /// the first walk of a big store runs.
    pub async fn image_fs_usage(&self) -> Option<crate::usage_cache::Usage> {
        let mut total = crate::usage_cache::Usage { bytes: 0, inodes: 0, at: i64::MAX };
        for d in &self.image_dirs {
            let u = self.usage.get(d).await?;
            total = crate::usage_cache::Usage {
                bytes: total.bytes + u.bytes,
                inodes: total.inodes + u.inodes,
                at: total.at.min(u.at),
            };
        }
        Some(total)
    }

    /// A container's writable layer.
    pub(super) fn upper_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id).join("upper")
    }

    /// The folder ImageFsInfo names.
    pub fn image_fs_mountpoint(&self) -> PathBuf {
        self.cfg.root.join("images")
    }

    /// Stats of one container: CPU and memory from its cgroups (through the
    /// shim) while it runs, and its writable layer's disk usage.
    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        Ok(self.container_stats_and_counts(id, false).await?.0)
    }

    /// [`Self::container_stats`], with the shim's answer while the container
    /// runs; with `counts`, that answer has its processes and interfaces.
    async fn container_stats_and_counts(
        &self,
        id: &str,
        counts: bool,
    ) -> Result<(cri::ContainerStats, Option<api::StatsResponse>)> {
        let meta = self.container(id)?;
        let now = now_nanos();
        let md = meta.config.metadata.clone();
        let attributes = cri::ContainerAttributes {
            id: meta.id.clone(),
            metadata: md,
            labels: meta.config.labels.clone(),
            annotations: meta.config.annotations.clone(),
        };
        let upper = self.upper_dir(id);
        let usage = self.usage.get(&upper).await;
        let writable_layer = cri::FilesystemUsage {
            timestamp: usage.map(|u| u.at).unwrap_or(now),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: upper.display().to_string() }),
            used_bytes: usage.map(|u| cri::UInt64Value { value: u.bytes }),
            inodes_used: usage.map(|u| cri::UInt64Value { value: u.inodes }),
        };
        let mut stats = cri::ContainerStats {
            attributes: Some(attributes),
            writable_layer: Some(writable_layer),
            ..Default::default()
        };
        let sb = self.sandbox(&meta.sandbox_id)?;
        let Ok(shim) = self.shim_of(&sb).await else { return Ok((stats, None)) };
        let Ok(r) = shim.stats(id, counts).await else { return Ok((stats, None)) };
        stats.cpu = Some(self.cpu_rates.usage(id, now, r.cpu_nanos));
        stats.memory = Some(cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: Some(cri::UInt64Value { value: r.memory_working_set }),
            usage_bytes: Some(cri::UInt64Value { value: r.memory_usage }),
            ..Default::default()
        });
        Ok((stats, Some(r)))
    }

    /// ListPodSandboxMetrics: every ready pod with its running containers'
    /// metrics under cAdvisor's names.
    pub async fn list_pod_sandbox_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>> {
        let pods = self
            .list_pod_sandboxes(Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::new();
        for pod in pods {
            let host_network = self.sandbox(&pod.id).is_ok_and(|sb| lock(&sb.meta).host_network());
            let mut interfaces = None;
            let listed = self
                .list_containers(Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                    ..Default::default()
                }))
                .await?;
            let mut container_metrics = Vec::new();
            for c in listed {
                let (Ok((stats, counts)), Ok((status, _))) =
                    (self.container_stats_and_counts(&c.id, true).await, self.container_status(&c.id, false).await)
                else {
                    continue;
                };
                // Every container of a pod sees the pod's interfaces; the
                // node's are not the pod's to report.
                if interfaces.is_none() && !host_network {
                    interfaces = counts.as_ref().map(|r| r.interfaces.clone()).filter(|i| !i.is_empty());
                }
                let facts = crate::pod_metrics::ContainerFacts {
                    stats: &stats,
                    name: c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
                    image: c.image.as_ref().map(|i| i.image.as_str()).unwrap_or(""),
                    started_at: status.started_at,
                    now: now_nanos(),
                    counts: counts.as_ref(),
                };
                container_metrics.push(crate::pod_metrics::container_metrics(&facts));
            }
            let pod_name = pod.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
            let metrics = crate::pod_metrics::pod_network_metrics(
                &pod.id,
                pod_name,
                interfaces.as_deref().unwrap_or_default(),
                now_nanos(),
            );
            out.push(cri::PodSandboxMetrics { pod_sandbox_id: pod.id, metrics, container_metrics });
        }
        Ok(out)
    }

    /// ListContainerStats: running containers matching the filter.
    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        Ok(self.list_container_stats_and_counts(filter, false).await?.into_iter().map(|(s, _)| s).collect())
    }

    /// [`Self::list_container_stats`] with each container's shim answer
    /// (with its processes and interfaces when `counts`).
    async fn list_container_stats_and_counts(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
        counts: bool,
    ) -> Result<Vec<(cri::ContainerStats, Option<api::StatsResponse>)>> {
        let f = filter.unwrap_or_default();
        let listed = self
            .list_containers(Some(cri::ContainerFilter {
                id: f.id,
                state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                pod_sandbox_id: f.pod_sandbox_id,
                label_selector: f.label_selector,
            }))
            .await?;
        let mut out = Vec::new();
        for c in listed {
            if let Ok(s) = self.container_stats_and_counts(&c.id, counts).await {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// PodSandboxStats: the sum of its running containers, and each of them.
    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let (status, _) = self.pod_sandbox_status(id, false).await?;
        let counted = self
            .list_container_stats_and_counts(
                Some(cri::ContainerStatsFilter { pod_sandbox_id: id.to_string(), ..Default::default() }),
                true,
            )
            .await?;
        let now = now_nanos();
        let counts: Vec<&api::StatsResponse> = counted.iter().filter_map(|(_, c)| c.as_ref()).collect();
        let process = (!counts.is_empty()).then(|| cri::ProcessUsage {
            timestamp: now,
            process_count: Some(cri::UInt64Value { value: counts.iter().map(|c| c.processes).sum() }),
        });
        let host_network = self.sandbox(id).is_ok_and(|sb| lock(&sb.meta).host_network());
        let network = counts
            .iter()
            .find(|c| !c.interfaces.is_empty())
            .filter(|_| !host_network)
            .map(|c| network_usage(&c.interfaces, now));
        let containers: Vec<cri::ContainerStats> = counted.into_iter().map(|(s, _)| s).collect();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> Option<cri::UInt64Value> {
            let vals: Vec<u64> = containers.iter().filter_map(f).collect();
            (!vals.is_empty()).then(|| cri::UInt64Value { value: vals.iter().sum() })
        };
        let cpu = cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: sum(&|c| c.cpu.as_ref()?.usage_core_nano_seconds.as_ref().map(|v| v.value)),
            usage_nano_cores: sum(&|c| c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)),
            psi: None,
        };
        let memory = cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: sum(&|c| c.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value)),
            usage_bytes: sum(&|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value)),
            ..Default::default()
        };
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: status.id,
                metadata: status.metadata,
                labels: status.labels,
                annotations: status.annotations,
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu),
                memory: Some(memory),
                network,
                process,
                containers,
                io: None,
            }),
            windows: None,
        })
    }

    /// ListPodSandboxStats: ready pods matching the filter.
    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let f = filter.unwrap_or_default();
        let pods = self
            .list_pod_sandboxes(Some(cri::PodSandboxFilter {
                id: f.id,
                state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
                label_selector: f.label_selector,
            }))
            .await?;
        let mut out = Vec::new();
        for p in pods {
            if let Ok(s) = self.pod_sandbox_stats(&p.id).await {
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// A pod's interfaces as CRI's NetworkUsage: `eth0` (CNI's interface) is the
/// default one when it is there, else the first.
fn network_usage(interfaces: &[protocol::shim::InterfaceStats], now: i64) -> cri::NetworkUsage {
    let usage = |i: &protocol::shim::InterfaceStats| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: Some(cri::UInt64Value { value: i.rx_bytes }),
        rx_errors: Some(cri::UInt64Value { value: i.rx_errors }),
        tx_bytes: Some(cri::UInt64Value { value: i.tx_bytes }),
        tx_errors: Some(cri::UInt64Value { value: i.tx_errors }),
    };
    let all: Vec<cri::NetworkInterfaceUsage> = interfaces.iter().map(usage).collect();
    let default_interface = all.iter().find(|i| i.name == "eth0").or_else(|| all.first()).cloned();
    cri::NetworkUsage { timestamp: now, default_interface, interfaces: all }
}
