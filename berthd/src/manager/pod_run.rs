//! RunPodSandbox: record, files, shim, network, each step undone if a later one
//! fails.
use super::*;

impl Manager {
    // ---- sandboxes ----

    /// RunPodSandbox.
    pub async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, handler: &str) -> Result<String> {
        if !handler.is_empty() && handler != "runc" {
            return Err(Error::invalid(format!(
                "unknown runtime handler {handler:?}; Berth has \"runc\" (the default)"
            )));
        }
        let md = config.metadata.clone().ok_or_else(|| Error::invalid("pod sandbox config has no metadata"))?;
        ids::check_name("pod sandbox name", &md.name)?;
        // CNI_ARGS is `K=V;K=V`: these would inject arguments into every
        // plugin call (Kubernetes names never contain them).
        for (what, v) in [("name", &md.name), ("namespace", &md.namespace), ("uid", &md.uid)] {
            if v.contains([';', '=']) {
                return Err(Error::invalid(format!(
                    "pod sandbox {what} {v:?} may not contain ';' or '=' (Kubernetes names never do)"
                )));
            }
        }
        if !md.namespace.is_empty() {
            ids::check_name("pod sandbox namespace", &md.namespace)?;
        }
        if !md.uid.is_empty() {
            ids::check_name("pod sandbox uid", &md.uid)?;
        }
        if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
            return Err(Error::invalid(format!("log_directory {:?} must be an absolute path", config.log_directory)));
        }
        let linux = config.linux.clone().unwrap_or_default();
        crate::pod_cgroup::check_parent(&linux.cgroup_parent, self.cfg.cgroup_driver)?;
        let ns = linux.security_context.clone().unwrap_or_default().namespace_options.unwrap_or_default();
        let user = crate::user_namespaces::of_pod(
            Some(&ns),
            &format!("pod sandbox {:?}", md.name),
            self.features.user_namespaces,
        )?;
        let host_network = ns.network == cri::NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
        let pod_pid = ns.pid == cri::NamespaceMode::Pod as i32;
        let hostname = if host_network {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().to_string()).unwrap_or_default()
        } else if !config.hostname.is_empty() {
            config.hostname.clone()
        } else {
            md.name.chars().take(63).collect::<String>().to_ascii_lowercase()
        };
        if !host_network {
            pod_files::check_hostname(&hostname)?;
        }
        pod_files::resolv_conf(config.dns_config.as_ref())?;
        spec::check_sysctls(&linux.sysctls, host_network, host_ipc)?;

        let key = sandbox_key(&md);
        let name = self.reserve(
            key.clone(),
            &format!("pod sandbox name {:?} (namespace {:?}, attempt {})", md.name, md.namespace, md.attempt),
        )?;
        let _admitted =
            self.pod_starts.acquire().await.map_err(|_| Error::new(Kind::Unavailable, "berthd is shutting down"))?;
        let id = ids::new_id();
        let dir = self.cfg.state.join("sandboxes").join(&id);
        let launch = ShimLaunch {
            binary: self.cfg.shim_binary.clone(),
            args: shim_client::ShimArgs {
                id: id.clone(),
                dir: dir.clone(),
                runtime: self.cfg.runtime.clone(),
                runtime_root: self.cfg.state.join("runc"),
                hostname: (!host_network).then(|| hostname.clone()),
                host_network,
                host_ipc,
                pod_pid,
                user,
                systemd_cgroup: self.cfg.cgroup_driver == crate::settings::CgroupDriver::Systemd,
                max_log_line: self.cfg.max_log_line,
                runtime_timeout: self.cfg.runtime_timeout,
            },
        };
        let pinned = launch.args.pins().into_iter().map(String::from).collect();
        let mut meta = SandboxMeta {
            id: id.clone(),
            config: config.clone(),
            created_at: now_nanos(),
            runtime_handler: handler.to_string(),
            stopped: false,
            dir: dir.clone(),
            pinned,
            hostname: hostname.clone(),
            shim_pid: 0,
            pod_init_pid: 0,
            phase: Phase::Creating,
            network: None,
            network_config: None,
            ips: Vec::new(),
            network_released: false,
        };
        let mut nri_told = false;
        let mut steps = crate::step_times::StepTimes::start();
        let result = async {
            self.sandbox_store.put(&id, &meta).await?;
            steps.mark("recorded");
            failpoint::hit("run-pod-sandbox/recorded");
            crate::dir_modes::ensure_dir(&dir, crate::dir_modes::PRIVATE)?;
            if let Some(user) = &user {
                super::user_namespace_mounts::open_to_pod_root(&dir, user)?;
            }
            pod_files::write(&dir, &hostname, host_network, config.dns_config.as_ref())?;
            steps.mark("files");
            failpoint::hit("run-pod-sandbox/files-written");
            meta.shim_pid = self.shims.start(&launch).await?;
            steps.mark("shim_start");
            failpoint::hit("run-pod-sandbox/shim-started");
            let shim = Shim::connect(&dir).await?;
            steps.mark("shim_connect");
            meta.pod_init_pid = shim.info.pod_init_pid;
            if !host_network {
                if let Some(net) = self.network.load()? {
                    let md = config.metadata.clone().unwrap_or_default();
                    let netns = dir.join(NS_DIR).join(NS_NET);
                    let pod =
                        crate::cni::PodRef { id: &id, netns: &netns, metadata: &md, ports: &config.port_mappings };
                    meta.network_config = Some(net.clone());
                    let result = self.network.add(&net, &pod).await?;
                    meta.ips = crate::cni::result_ips(&result);
                    meta.network = Some(result);
                    steps.mark("cni_add");
                    failpoint::hit("run-pod-sandbox/network-added");
                }
            }
            // Plugins see the pod whole, before any client can: no
            // container of it is made before their hooks end.
            nri_told = self.nri.wants(protocol::nri::Event::RUN_POD_SANDBOX);
            self.nri_pod_event(protocol::nri::Event::RUN_POD_SANDBOX, &meta).await?;
            steps.mark("nri");
            meta.phase = Phase::Ready;
            self.sandbox_store.put(&id, &meta).await?;
            steps.mark("committed");
            let sb = Sandbox::new(meta.clone(), Some(shim));
            lock(&self.sandboxes).insert(id.clone(), sb.clone());
            if let Some(me) = self.me.get() {
                watch_shim(me.clone(), sb);
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            warn!(self.log, "run pod sandbox failed, cleaning up"; "sandbox_id" => &id, "error" => %e);
            if nri_told {
                // Plugins asked before the one that failed forget it.
                let _ = self.nri_pod_event(protocol::nri::Event::REMOVE_POD_SANDBOX, &meta).await;
            }
            if let Err(e) = self.release_network(&meta).await {
                warn!(self.log, "CNI DEL failed"; "sandbox_id" => &id, "error" => %e);
            }
            self.teardown_sandbox_dir(&dir, meta.pod_init_pid).await;
            let _ = self.sandbox_store.delete(&id).await;
            return Err(e);
        }
        name.keep();
        info!(self.log, "pod sandbox ready"; "sandbox_id" => &id, "name" => &md.name, "namespace" => &md.namespace,
              "steps_ms" => %steps);
        self.emit(&id, &id, cri::ContainerEventType::ContainerCreatedEvent).await;
        self.emit(&id, &id, cri::ContainerEventType::ContainerStartedEvent).await;
        Ok(id)
    }

    /// Stops a shim (if one answers) and removes everything in a sandbox
    /// folder: pinned namespaces, sockets, files.
    pub(super) async fn teardown_sandbox_dir(&self, dir: &Path, pod_init_pid: u32) {
        let sandbox_id = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Ok(shim) = Shim::connect(dir).await {
            let pid = shim.info.shim_pid;
            let _ = shim.shutdown().await;
            drop(shim);
            let _ = tokio::time::timeout(SHIM_EXIT_WAIT, self.host.shim_exited(pid, sandbox_id)).await;
        } else if let Some(pid) =
            std::fs::read_to_string(dir.join("shim.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok())
        {
            // A shim that does not answer but still runs is ended by pid,
            // if the pid is still this pod's shim.
            if self.host.kill_shim_of(pid, sandbox_id) {
                let _ = tokio::time::timeout(SHIM_EXIT_WAIT, self.host.shim_exited(pid, sandbox_id)).await;
            }
        }
        // The shim ends the pod init on Shutdown; a killed shim could not.
        self.host.kill_shim_of(pod_init_pid, sandbox_id);
        self.host.release_ns_dir(&dir.join(NS_DIR));
        let _ = std::fs::remove_dir_all(dir);
    }
}
