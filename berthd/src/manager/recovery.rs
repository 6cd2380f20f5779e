//! Start-up after a crash or restart: records reloaded, shims reconnected,
//! half-done calls rolled back or finished, orphans cleaned; then the watchers
//! that notice a shim that dies.
use super::*;

/// What startup reconciliation found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Sandboxes whose shim answered.
    pub recovered: usize,
    /// Sandboxes whose shim is gone.
    pub lost: usize,
    /// Half-created objects rolled back.
    pub rolled_back: usize,
    /// Interrupted removals finished.
    pub finished_removals: usize,
    /// Leftover folders with no record, cleaned.
    pub orphans: usize,
}

/// Watches one sandbox's shim until it ends ([`crate::host::Host::shim_exited`]:
/// a pidfd on a node, so nothing polls and a reused pid is never taken for
/// the shim). A shim that ends while its pod is Ready is lost; one ended by
/// RemovePodSandbox is not.
pub(super) fn watch_shim(manager: std::sync::Weak<Manager>, sb: Arc<Sandbox>) {
    tokio::spawn(async move {
        let (pid, id) = {
            let meta = lock(&sb.meta);
            (meta.shim_pid, meta.id.clone())
        };
        let Some(host) = manager.upgrade().map(|m| Arc::clone(&m.host)) else { return };
        host.shim_exited(pid, &id).await;
        drop(host);
        let Some(m) = manager.upgrade() else { return };
        let current = lock(&m.sandboxes).get(&id).is_some_and(|s| Arc::ptr_eq(s, &sb));
        if current && lock(&sb.meta).phase == Phase::Ready && sb.lost_at().is_none() {
            m.shim_lost(&sb).await;
        }
    });
}

impl Manager {
    /// Reconciles with what runs, before berthd serves: reconnects to every
    /// shim, rolls back objects a crash left half-created, finishes
    /// interrupted removals, cleans folders no record owns, and starts
    /// watching exits and shims.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery> {
        let mut r = Recovery::default();
        let sandboxes: Vec<_> = lock(&self.sandboxes).values().cloned().collect();
        for sb in &sandboxes {
            let meta = lock(&sb.meta).clone();
            if meta.phase == Phase::Creating {
                self.rollback_sandbox(&meta).await;
                r.rolled_back += 1;
                continue;
            }
            match Shim::connect(&meta.dir).await {
                Ok(s) => {
                    *sb.shim.lock().await = Some(s);
                    r.recovered += 1;
                }
                Err(e @ crate::shim_client::ShimCallError::OtherVersion { .. }) => {
                    // A shim this berthd cannot speak to: left alone, and
                    // every call on its pod says why.
                    error!(self.log, "sandbox shim refused"; "sandbox_id" => &meta.id, "error" => %e);
                    r.lost += 1;
                }
                Err(e) => {
                    warn!(self.log, "sandbox shim unreachable"; "sandbox_id" => &meta.id, "error" => %e);
                    self.shim_lost(sb).await;
                    r.lost += 1;
                }
            }
        }
        let containers: Vec<ContainerMeta> = lock(&self.containers).values().cloned().collect();
        for c in &containers {
            match c.phase {
                Phase::Creating => {
                    self.rollback_container(c).await;
                    r.rolled_back += 1;
                }
                Phase::Removing => match self.remove_container(&c.id).await {
                    Ok(()) => r.finished_removals += 1,
                    // Left visible (phase Removing) for the client to retry;
                    // one stuck object must not keep berthd from serving.
                    Err(e) => warn!(self.log, "finishing a removal failed"; "container_id" => &c.id, "error" => %e),
                },
                Phase::Ready => {}
            }
        }
        for sb in &sandboxes {
            let (id, phase) = {
                let m = lock(&sb.meta);
                (m.id.clone(), m.phase)
            };
            if phase == Phase::Removing {
                match self.remove_pod_sandbox(&id).await {
                    Ok(()) => r.finished_removals += 1,
                    Err(e) => warn!(self.log, "finishing a removal failed"; "sandbox_id" => &id, "error" => %e),
                }
            }
        }
        r.orphans = self.clean_orphans().await;
        self.resume_interrupted_rotations().await;
        // A pull or import cut short leaves temp entries, and a removal cut
        // short leaves blobs and snapshots no image owns.
        self.with_image_store_in_use(|store, in_use| {
            store.clean_temp();
            Ok(store.collect(in_use))
        })
        .await?
        .discard()
        .await;
        for c in lock(&self.containers).values() {
            self.watch_exit(&c.sandbox_id, &c.id);
        }
        Arc::clone(self).spawn_shim_monitor();
        if let Some(policy) = self.cfg.log_rotation {
            Arc::clone(self).spawn_log_rotation(policy);
        }
        Ok(r)
    }

    /// A running container whose log file is gone had its log renamed by a
    /// rotation that berthd died in before the shim reopened it: the shim
    /// still writes to the rotated file, so it is told to reopen now.
    pub(super) async fn resume_interrupted_rotations(&self) {
        let missing: Vec<ContainerMeta> = lock(&self.containers)
            .values()
            .filter(|c| c.phase == Phase::Ready && c.log_path.as_deref().is_some_and(|p| !p.exists()))
            .cloned()
            .collect();
        for c in missing {
            if self.runtime_state(&c).await.state != cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            match self.reopen_container_log(&c.id).await {
                Ok(()) => {
                    info!(self.log, "container log reopened after an interrupted rotation"; "container_id" => &c.id)
                }
                Err(e) => warn!(self.log, "reopening a container log failed"; "container_id" => &c.id, "error" => %e),
            }
        }
    }

    /// Folders under the state and root dirs that no record owns: left by
    /// a crash between a record's deletion and its files' removal.
    pub(super) async fn clean_orphans(&self) -> usize {
        let mut n = 0;
        let known_sb: HashSet<String> = lock(&self.sandboxes).keys().cloned().collect();
        let known_c: HashSet<String> = lock(&self.containers).keys().cloned().collect();
        for (dir, known, sandbox) in [
            (self.cfg.state.join("sandboxes"), &known_sb, true),
            (self.cfg.state.join("containers"), &known_c, false),
            (self.cfg.root.join("containers"), &known_c, false),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if known.contains(&name) {
                    continue;
                }
                warn!(self.log, "removing leftover folder"; "path" => e.path().display().to_string());
                if sandbox {
                    self.teardown_sandbox_dir(&e.path(), 0).await;
                } else {
                    self.force_delete_in_runtime(&name).await;
                    if self.unmount_bundle(&e.path()).is_ok() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
                n += 1;
            }
        }
        n
    }

    /// Undoes a sandbox a crash left half-created.
    pub(super) async fn rollback_sandbox(&self, meta: &SandboxMeta) {
        warn!(self.log, "rolling back half-created pod sandbox"; "sandbox_id" => &meta.id);
        // The crash may have come after CNI ADD; DEL is idempotent.
        if let Err(e) = self.release_network(meta).await {
            warn!(self.log, "CNI DEL failed"; "sandbox_id" => &meta.id, "error" => %e);
        }
        self.teardown_sandbox_dir(&meta.dir, meta.pod_init_pid).await;
        let _ = self.sandbox_store.delete(&meta.id).await;
        lock(&self.sandboxes).remove(&meta.id);
        self.release(&sandbox_key(&meta.config.metadata.clone().unwrap_or_default()));
    }

    /// Undoes a container a crash left half-created.
    pub(super) async fn rollback_container(&self, meta: &ContainerMeta) {
        warn!(self.log, "rolling back half-created container"; "container_id" => &meta.id, "sandbox_id" => &meta.sandbox_id);
        if let Err(e) = self.delete_in_shim(meta).await {
            warn!(self.log, "shim delete failed"; "container_id" => &meta.id, "error" => %e);
        }
        let mut trees = vec![self.cfg.root.join("containers").join(&meta.id)];
        match self.unmount_bundle(&meta.bundle) {
            Ok(()) => trees.push(meta.bundle.clone()),
            Err(e) => warn!(self.log, "bundle kept: a mount in it remains"; "container_id" => &meta.id, "error" => %e),
        }
        remove_trees(trees).await;
        let _ = self.container_store.delete(&meta.id).await;
        lock(&self.containers).remove(&meta.id);
        self.release(&container_key(&meta.sandbox_id, &meta.config.metadata.clone().unwrap_or_default()));
    }

    /// Removes a container from its shim, or from the OCI runtime directly
    /// when the shim is gone. The shim's error (the runtime's, when its
    /// delete failed or hung) is returned: until the runtime has let the
    /// container go, its cgroup and state are still there.
    pub(super) async fn delete_in_shim(&self, meta: &ContainerMeta) -> Result<()> {
        let shim = match self.sandbox(&meta.sandbox_id) {
            Ok(sb) if sb.lost_at().is_none() => self.shim_of(&sb).await.ok(),
            _ => None,
        };
        match shim {
            Some(shim) => {
                shim.delete(&meta.id).await?;
            }
            None => self.force_delete_in_runtime(&meta.id).await,
        }
        Ok(())
    }

    /// Watches for dead shims: a shim that is gone is noticed within a
    /// fraction of a second, not at the next call.
    pub(super) fn spawn_shim_monitor(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let _ = self.me.set(weak.clone());
        for sb in lock(&self.sandboxes).values() {
            watch_shim(weak.clone(), sb.clone());
        }
    }

    /// A sandbox's shim is gone: its containers have lost their monitor and
    /// their log reader, so they are ended (through the OCI runtime) and
    /// reported Exited; the pod's init is ended too. Its namespaces stay
    /// pinned until the sandbox is removed.
    pub(super) async fn shim_lost(&self, sb: &Sandbox) {
        {
            let mut lost = lock(&sb.lost);
            if lost.is_some() {
                return;
            }
            *lost = Some(now_nanos());
        }
        *sb.shim.lock().await = None;
        let meta = lock(&sb.meta).clone();
        warn!(self.log, "shim is gone: pod is NotReady, its containers are ended"; "sandbox_id" => &meta.id, "shim_pid" => meta.shim_pid);
        for c in self.containers_of(&meta.id) {
            self.host.oci_runtime(&["kill", "--all", &c.id, "KILL"]).await;
        }
        self.host.kill_shim_of(meta.pod_init_pid, &meta.id);
    }

    /// Rotates running containers' logs by size (kubelet's semantics), for
    /// nodes where kubelet does not.
    pub(super) fn spawn_log_rotation(self: Arc<Self>, policy: crate::log_rotation::Policy) {
        let weak = Arc::downgrade(&self);
        let interval = self.cfg.log_check_interval;
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                let candidates: Vec<ContainerMeta> = lock(&m.containers)
                    .values()
                    .filter(|c| {
                        c.phase == Phase::Ready
                            && c.log_path.as_deref().is_some_and(|p| crate::log_rotation::due(p, policy))
                    })
                    .cloned()
                    .collect();
                for c in candidates {
                    if m.runtime_state(&c).await.state != cri::ContainerState::ContainerRunning as i32 {
                        continue;
                    }
                    let Some(log) = c.log_path.clone() else { continue };
                    let id = c.id.clone();
                    let mgr = Arc::clone(&m);
                    let r = crate::log_rotation::rotate(&log, policy, chrono::Utc::now(), || async move {
                        mgr.reopen_container_log(&id).await
                    })
                    .await;
                    match r {
                        Ok(Some(to)) => {
                            debug!(m.log, "container log rotated"; "container_id" => &c.id, "rotated_to" => to.display().to_string())
                        }
                        Ok(None) => {}
                        Err(e) => warn!(m.log, "container log rotation failed"; "container_id" => &c.id, "error" => %e),
                    }
                }
            }
        });
    }
}
