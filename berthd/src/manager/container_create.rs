//! CreateContainer: record, writable layer, bundle, then the container
//! prepared in its pod's shim. The OCI runtime creates it at StartContainer,
//! as containerd does: a spec the runtime refuses fails StartContainer, and
//! the container is then Exited with reason StartError.
use super::*;

/// The signal a container asks to be stopped with.
pub(super) fn stop_signal(config: &cri::ContainerConfig, image: &serde_json::Value) -> i32 {
    // CRI Signal enum values 1.. map to names; RUNTIME_DEFAULT uses the image.
    let by_cri = cri::Signal::try_from(config.stop_signal).ok().filter(|s| *s != cri::Signal::RuntimeDefault);
    let name = match by_cri {
        Some(s) => s.as_str_name().to_string(),
        None => image["config"]["StopSignal"].as_str().unwrap_or("SIGTERM").to_string(),
    };
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>().map(|s| s as i32).unwrap_or(libc::SIGTERM)
}

impl Manager {
    // ---- containers ----

    /// CreateContainer.
    pub async fn create_container(&self, sandbox_id: &str, config: cri::ContainerConfig) -> Result<String> {
        let sb = self.sandbox(sandbox_id)?;
        let _op = sb.op.lock().await;
        let smeta = lock(&sb.meta).clone();
        if smeta.stopped {
            return Err(Error::precondition(format!("pod sandbox {sandbox_id} is stopped; create a new one")));
        }
        let md = config.metadata.clone().ok_or_else(|| Error::invalid("container config has no metadata"))?;
        ids::check_name("container name", &md.name)?;
        let own_ns = config.linux.as_ref().and_then(|l| l.security_context.as_ref()?.namespace_options.as_ref());
        let pod_user = smeta.user_namespace();
        crate::user_namespaces::of_container(own_ns, pod_user.as_ref(), &format!("container {:?}", md.name))?;
        if pod_user.is_some() {
            super::user_namespace_mounts::check_mounts(&config)?;
        }
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::invalid("container config names no image"));
        }
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
            if !self.features.recursive_read_only_mounts {
                return Err(Error::invalid(format!(
                    "mount at {}: recursive read-only mounts need an OCI runtime with the rro option and Linux 5.12 or later, which this node lacks",
                    m.container_path
                )));
            }
        }
        let image = self
            .images
            .lock()
            .await
            .resolve(&image_name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("image {image_name:?} not found; pull or import it first")))?;
        let (shown_name, image_ref) = image.container_names(&image_name);
        let volumes = self.image_volumes(&config).await?;
        let mut layers = image.layers.clone();
        for l in volumes.iter().flat_map(|v| v.image.layers.iter()) {
            if !layers.contains(l) {
                layers.push(l.clone());
            }
        }
        let log_path = if !config.log_path.is_empty() && !smeta.config.log_directory.is_empty() {
            Some(ids::log_path(&smeta.config.log_directory, &config.log_path)?)
        } else if config.log_path.starts_with('/') || config.log_path.contains("..") {
            return Err(Error::invalid(format!(
                "log_path {:?} must be relative to the sandbox's log_directory",
                config.log_path
            )));
        } else {
            None
        };
        let shim = self.shim_of(&sb).await?;

        let key = container_key(sandbox_id, &md);
        let name = self.reserve(
            key.clone(),
            &format!("container name {:?} (attempt {}) in pod sandbox {sandbox_id}", md.name, md.attempt),
        )?;
        let id = ids::new_id();
        let bundle = self.cfg.state.join("containers").join(&id);
        let mut meta = ContainerMeta {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            config: config.clone(),
            image_id: image.id.clone(),
            image_name: shown_name,
            image_ref,
            layers,
            created_at: now_nanos(),
            log_path: log_path.clone(),
            bundle: bundle.clone(),
            stop_signal: stop_signal(&config, &image.config),
            phase: Phase::Creating,
            user: None,
        };
        let mut steps = crate::step_times::StepTimes::start();
        let mut nri_told = false;
        let result = async {
            self.container_store.put(&id, &meta).await?;
            steps.mark("recorded");
            failpoint::hit("create-container/recorded");
            let (lowers, volume_lowers) = {
                // Under the store lock: from here the container's layers
                // count as in use for every collection, and one that ran
                // since the image was resolved (RemoveImage) shows as a
                // missing snapshot, not as a failed mount.
                let store = self.images.lock().await;
                lock(&self.containers).insert(id.clone(), meta.clone());
                let snapshots = |layers: &[String], what: String| -> Result<Vec<PathBuf>> {
                    let paths =
                        layers.iter().map(|l| store.snapshot_path(l)).collect::<std::result::Result<Vec<_>, _>>()?;
                    if paths.iter().any(|p| !p.is_dir()) {
                        return Err(Error::not_found(format!(
                            "{what} was removed while the container was being created; pull it again"
                        )));
                    }
                    Ok(paths)
                };
                let lowers = snapshots(&image.layers, format!("image {image_name:?}"))?;
                let volume_lowers = volumes
                    .iter()
                    .map(|v| snapshots(&v.image.layers, format!("image {:?} of a volume", v.name)))
                    .collect::<Result<Vec<_>>>()?;
                (lowers, volume_lowers)
            };
            let layer_root = self.cfg.root.join("containers").join(&id);
            let rootfs_dir = bundle.join("rootfs");
            crate::dir_modes::ensure_dir(&bundle, crate::dir_modes::PRIVATE)?;
            let (upper, work) = (layer_root.join("upper"), layer_root.join("work"));
            match &pod_user {
                None => self.host.mount_overlay(&lowers, &upper, &work, &rootfs_dir)?,
                Some(user) => {
                    super::user_namespace_mounts::open_to_pod_root(&bundle, user)?;
                    let staging = bundle.join(super::user_namespace_mounts::IDMAPPED_DIR).join("rootfs");
                    let pin = smeta.user_namespace_pin();
                    let root = (user.uids.host_id, user.gids.host_id);
                    self.host.mount_overlay_idmapped(&lowers, &upper, &work, &rootfs_dir, &pin, root, &staging)?;
                }
            }
            steps.mark("rootfs");
            failpoint::hit("create-container/rootfs-mounted");
            let mut spec_config = config.clone();
            self.mount_image_volumes(&bundle, &volumes, &volume_lowers, &mut spec_config)?;
            if pod_user.is_some() {
                self.idmap_volumes(&bundle, &smeta, &mut spec_config)?;
            }
            let view = SandboxView {
                dir: smeta.dir.clone(),
                pinned: smeta.pinned.clone(),
                hostname: smeta.hostname.clone(),
                cgroup_parent: crate::pod_cgroup::parent(
                    smeta.config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
                    &smeta.id,
                    self.cfg.cgroup_driver,
                ),
                cgroup_driver: self.cfg.cgroup_driver,
                user: pod_user,
                sysctls: smeta.config.linux.as_ref().map(|l| l.sysctls.clone()).unwrap_or_default(),
                namespace_options: smeta
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone())
                    .unwrap_or_default(),
            };
            let defaults = ImageDefaults::from_config(&image.config);
            // It reads the image's /etc/passwd and /etc/group (bounded, but
            // still file work): off the async workers.
            let mut spec = {
                let (id, config, rootfs_dir) = (id.clone(), spec_config, rootfs_dir.clone());
                tokio::task::spawn_blocking(move || spec::build(&id, &config, &view, &defaults, &rootfs_dir))
                    .await
                    .map_err(|e| Error::internal(format!("building the OCI spec: {e}")))??
            };
            // NRI plugins adjust the spec before it is written; resources
            // they change are the container's from then on.
            let mut res = meta.config.linux.as_ref().and_then(|l| l.resources.clone()).unwrap_or_default();
            let before = res.clone();
            nri_told = self.nri.wants(protocol::nri::Event::CREATE_CONTAINER);
            self.nri_create_container(&smeta, &meta, &mut spec, &mut res).await?;
            if res != before {
                meta.config.linux.get_or_insert_with(Default::default).resources = Some(res);
            }
            steps.mark("nri");
            meta.user = spec.process().as_ref().map(|p| {
                let u = p.user();
                // As kubelet shows them: the primary group among the groups.
                let mut groups = vec![u.gid()];
                groups.extend(u.additional_gids().iter().flatten().filter(|g| **g != u.gid()));
                (u.uid(), u.gid(), groups)
            });
            crate::dir_modes::write_private(
                &bundle.join("config.json"),
                &serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("encoding config.json: {e}")))?,
            )?;
            steps.mark("bundle");
            failpoint::hit("create-container/bundle-written");
            let mut req = api::CreateRequest::new();
            req.id = id.clone();
            req.bundle = bundle.display().to_string();
            req.log_path = log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            if log_path.is_some() {
                req.log_root = smeta.config.log_directory.clone();
            }
            req.terminal = config.tty;
            req.stdin = config.stdin;
            req.stdin_once = config.stdin_once;
            shim.create(&req).await?;
            steps.mark("runtime");
            failpoint::hit("create-container/shim-created");
            meta.phase = Phase::Ready;
            self.container_store.put(&id, &meta).await?;
            steps.mark("committed");
            lock(&self.containers).insert(id.clone(), meta.clone());
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            warn!(self.log, "create container failed, cleaning up"; "container_id" => &id, "sandbox_id" => sandbox_id, "error" => %e);
            self.rollback_container(&meta).await;
            if nri_told {
                // Plugins asked before the failure forget the container.
                let gone = protocol::nri::ContainerState::CONTAINER_STOPPED;
                let _ = self.nri_container_event(protocol::nri::Event::REMOVE_CONTAINER, &meta, gone, None).await;
            }
            return Err(e);
        }
        name.keep();
        info!(self.log, "container created"; "container_id" => &id, "sandbox_id" => sandbox_id, "name" => &md.name,
              "steps_ms" => %steps);
        self.emit(sandbox_id, &id, cri::ContainerEventType::ContainerCreatedEvent).await;
        let created = protocol::nri::ContainerState::CONTAINER_CREATED;
        self.nri_container_event(protocol::nri::Event::POST_CREATE_CONTAINER, &meta, created, None).await?;
        Ok(id)
    }
}
